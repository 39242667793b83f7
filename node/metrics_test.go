package node

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/herd-dev/herd/internal/natstest"
)

// scrape parses a node's /metrics as Prometheus does and returns its families by name.
func scrape(t *testing.T, base string) map[string]string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics of %s is not Prometheus text: %v", base, err)
	}
	out := map[string]string{}
	for name, f := range fams {
		if strings.HasPrefix(name, "herd_") && (f.GetHelp() == "" || f.GetHelp() == name) {
			t.Errorf("%s: family %s has no # HELP text", base, name)
		}
		out[name] = f.GetType().String()
	}
	return out
}

// TestServeAndRollupExportTheSameFamilies checks that a partitioned rollup worker exports
// every ingest, rollup and bus family that serve's ingest role does, under the same name
// and type, so one dashboard reads both.
func TestServeAndRollupExportTheSameFamilies(t *testing.T) {
	lightParallel(t)
	serveCfg := DefaultConfig()
	serveCfg.NATSListen, serveCfg.HTTPListen, serveCfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	serve := startRoles(t, serveCfg, Roles{Ingest: true, Detect: true, Web: true})

	ns := natstest.RunServer(t, natstest.Options{JetStream: true, Mapping: true})
	workerCfg := DefaultConfig()
	workerCfg.NATS.URLs, workerCfg.HTTPListen = ns.ClientURL(), "127.0.0.1:0"
	worker := startRoles(t, workerCfg, Roles{Rollup: true})

	served, rolled := scrape(t, serve.HTTPURL()), scrape(t, worker.HTTPURL())
	shared := []string{"herd_ingest_", "herd_rollup_", "herd_bus_", "herd_nats_"}
	n := 0
	for name, typ := range served {
		if !hasAnyPrefix(name, shared) {
			continue
		}
		n++
		if got, ok := rolled[name]; !ok {
			t.Errorf("herd rollup does not export %s (%s), which herd serve does", name, typ)
		} else if got != typ {
			t.Errorf("%s: herd rollup exports it as %s, herd serve as %s", name, got, typ)
		}
	}
	if n < 10 {
		t.Errorf("herd serve exports %d ingest/rollup/bus families; want the full set", n)
	}
	var hist bool
	for name, typ := range served {
		if typ == "HISTOGRAM" && strings.HasPrefix(name, "herd_rollup_") {
			hist = true
		}
	}
	if !hist {
		t.Error("no herd_rollup_ latency histogram with le buckets on herd serve's /metrics")
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
