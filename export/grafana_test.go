package export

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"

	"github.com/herd-dev/herd/proto"
)

// dashboardFile is the Grafana dashboard herd ships for the export.
const dashboardFile = "../deploy/grafana/herd-dashboard.json"

// selectorRE finds herd series in a PromQL expression, with their label matchers if any.
var selectorRE = regexp.MustCompile(`\b(herd_[a-z0-9_]+)\b(\{[^}]*\})?`)

// matcherRE finds the label names of a matcher list.
var matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)

// exportedSeries returns every series name the export writes, with its label names.
func exportedSeries(t *testing.T) map[string]map[string]bool {
	t.Helper()
	e := New(DefaultConfig(), metrics.NewSet())
	e.AddWindow(testWindow("s", "v1", 1000, 1, 10, 1, []float64{0.1}))
	e.SetVerdict(proto.Verdict{Service: "s", Baseline: "v0", Canary: "v1", State: proto.StatePending})
	out := map[string]map[string]bool{}
	for name, mf := range parse(t, e) {
		names := []string{name}
		if mf.GetType().String() == "HISTOGRAM" {
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		}
		for _, n := range names {
			out[n] = map[string]bool{}
			for _, m := range mf.Metric {
				for _, l := range m.Label {
					out[n][l.GetName()] = true
				}
			}
		}
		if mf.GetType().String() == "HISTOGRAM" {
			out[name+"_bucket"]["le"] = true
		}
	}
	return out
}

// buildErr returns err unless it is an empty cog.BuildErrors: the SDK's strict decoder
// returns its (nil) error list as a non-nil error interface.
func buildErr(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

// TestGrafanaDashboard decodes the shipped dashboard strictly with Grafana's schema types
// (grafana-foundation-sdk: unknown fields, wrong types and missing required fields fail) and
// checks that every query, variable and annotation reads only series and labels the export
// writes.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	plugins.RegisterDefaultPlugins()
	//lint:ignore SA1019 the shipped dashboard is the classic JSON model that Grafana's import takes, not the v2 resource
	var d dashboard.Dashboard
	if err := buildErr(d.UnmarshalJSONStrict(raw)); err != nil {
		t.Fatalf("strict decode of %s: %v", dashboardFile, err)
	}
	if err := buildErr(d.Validate()); err != nil {
		t.Fatalf("validate %s: %v", dashboardFile, err)
	}
	series := exportedSeries(t)
	var exprs []string
	// The SDK's PanelOrRowPanel drops a panel whose strict decode returned its empty error
	// list (see buildErr), so decode each panel on its own as well.
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Panels) != len(d.Panels) {
		t.Fatalf("got %d panels from the SDK; the file has %d", len(d.Panels), len(doc.Panels))
	}
	for i, rp := range doc.Panels {
		var p dashboard.Panel
		if err := buildErr(p.UnmarshalJSONStrict(rp)); err != nil {
			t.Fatalf("strict decode of panel %d: %v", i, err)
		}
		if p.Type == "row" || p.Title == nil {
			t.Fatalf("panel %d: a row or an untitled panel; the dashboard has none", i)
		}
		// Its targets too: the SDK drops them the same way.
		var pt struct {
			Targets []json.RawMessage `json:"targets"`
		}
		if err := json.Unmarshal(rp, &pt); err != nil {
			t.Fatal(err)
		}
		if len(pt.Targets) == 0 {
			t.Errorf("panel %q has no query", *p.Title)
		}
		for j, rq := range pt.Targets {
			var q prometheus.Dataquery
			if err := buildErr(q.UnmarshalJSONStrict(rq)); err != nil {
				t.Fatalf("panel %q: strict decode of query %d as a Prometheus query: %v", *p.Title, j, err)
			}
			exprs = append(exprs, q.Expr)
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr == nil {
			t.Errorf("annotation %q has no expression", a.Name)
			continue
		}
		exprs = append(exprs, *a.Expr)
	}
	for _, v := range d.Templating.List {
		if v.Type == dashboard.VariableTypeQuery {
			exprs = append(exprs, *v.Query.String)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("got %d queries; want the panels', annotations' and variables' (at least 10)", len(exprs))
	}
	for _, x := range exprs {
		ms := selectorRE.FindAllStringSubmatch(x, -1)
		if len(ms) == 0 {
			t.Errorf("query %q names no herd series", x)
		}
		for _, m := range ms {
			labels, ok := series[m[1]]
			if !ok {
				t.Errorf("query %q: the export writes no series %s", x, m[1])
				continue
			}
			for _, l := range matcherRE.FindAllStringSubmatch(m[2], -1) {
				if !labels[l[1]] {
					t.Errorf("query %q: series %s has no label %s", x, m[1], l[1])
				}
			}
		}
		for _, by := range regexp.MustCompile(`(?:by|on) \(([^)]*)\)`).FindAllStringSubmatch(x, -1) {
			for _, l := range strings.Split(by[1], ",") {
				l = strings.TrimSpace(l)
				found := false
				for _, m := range ms {
					found = found || series[m[1]][l]
				}
				if !found {
					t.Errorf("query %q groups by %s, a label of none of its series", x, l)
				}
			}
		}
	}
}
