package signals

import (
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
)

func TestParseSelectorBad(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, wantErr string }{
		{``, "empty selector"},
		{`{code="5"}`, "want a metric name"},
		{`9metric`, "want a metric name"},
		{`m{`, "missing '}'"},
		{`m{code}`, "want one of = != =~ !~"},
		{`m{code=5}`, "want a quoted label value"},
		{`m{code="5}`, "unterminated quoted value"},
		{`m{code="5\`, "unterminated escape"},
		{`m{code="\x"}`, "unknown escape"},
		{`m{code=~"5(.."}`, "bad regular expression"},
		{`m{code="5" code="6"}`, "want ',' or '}'"},
		{`m{code="5",code="6"}`, "given twice"},
		{`m{__name__="x"}`, "__name__ matchers are not supported"},
		{`m{code="5"} x`, "unexpected"},
		{`m x`, "want '{' or the end"},
		{`m{,}`, "want a label name"},
		{`m{1a="x"}`, "want a label name"},
		{`m{a="x"`, "missing '}'"},
		{`{""}`, "empty metric name"},
		{`{"m" x}`, "want ',' or '}' after the quoted metric name"},
		{`{"m",""="x"}`, "empty label name"},
		{`.m`, "want a metric name"},
		{`{`, "want a metric name"},
	} {
		_, err := ParseSelector(c.in)
		if err == nil {
			t.Errorf("ParseSelector(%q): got no error; want %q", c.in, c.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "cannot parse selector") {
			t.Errorf("ParseSelector(%q): got %q; want it to contain %q", c.in, err, c.wantErr)
		}
	}
}

func TestParseSelectorGood(t *testing.T) {
	t.Parallel()
	s, err := ParseSelector(` http_requests_total { code =~ "5..", job!="x", path!~'/health.*', env="a\"b" , } `)
	if err != nil {
		t.Fatalf("ParseSelector: got %v; want no error", err)
	}
	if s.Name != "http_requests_total" || len(s.Matchers) != 4 {
		t.Fatalf("got name %q with %d matchers; want http_requests_total with 4", s.Name, len(s.Matchers))
	}
	if m := s.Matchers[3]; m.Name != "env" || m.Op != MatchEqual || m.Value != `a"b` {
		t.Fatalf("matcher 3: got %+v; want env=\"a\\\"b\"", m)
	}
	if _, err := ParseSelector("ns:metric_total"); err != nil {
		t.Fatalf("ParseSelector(ns:metric_total): got %v; want no error", err)
	}
	// OpenTelemetry names: bare with dots, or quoted as in Prometheus 3.
	for _, in := range []string{
		`http.server.request.duration{http.response.status_code=~"5.."}`,
		`{"http.server.request.duration", "http.response.status_code"=~"5.."}`,
		`{'http.server.request.duration',"http.response.status_code"=~"5..",}`,
	} {
		s, err := ParseSelector(in)
		if err != nil {
			t.Fatalf("ParseSelector(%s): got %v; want no error", in, err)
		}
		if s.Name != "http.server.request.duration" || len(s.Matchers) != 1 || s.Matchers[0].Name != "http.response.status_code" {
			t.Fatalf("ParseSelector(%s): got %q %+v; want the OpenTelemetry name and label", in, s.Name, s.Matchers)
		}
		if !s.Matches("http.server.request.duration", proto.Labels{{Name: "http.response.status_code", Value: "503"}}) {
			t.Fatalf("ParseSelector(%s): does not match a 503", in)
		}
	}
	if s, err := ParseSelector(`{"a b"}`); err != nil || s.Name != "a b" || len(s.Matchers) != 0 {
		t.Fatalf(`ParseSelector({"a b"}): got %v, %v; want the name "a b"`, s, err)
	}
}

func TestSelectorMatches(t *testing.T) {
	t.Parallel()
	s := MustSelector(`http_requests_total{code=~"5..",job!="batch",path!~"/health.*"}`)
	ls := func(kv ...string) proto.Labels {
		var out proto.Labels
		for i := 0; i < len(kv); i += 2 {
			out = append(out, proto.Label{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		name   string
		labels proto.Labels
		want   bool
	}{
		{"http_requests_total", ls("code", "503"), true},
		{"http_requests_total", ls("code", "200"), false},
		{"http_requests_total", ls("code", "5000"), false}, // anchored
		{"http_requests_total", nil, false},                // missing code is ""
		{"http_requests_total", ls("code", "500", "job", "batch"), false},
		{"http_requests_total", ls("code", "500", "path", "/healthz"), false},
		{"http_requests_total", ls("code", "500", "path", "/api"), true},
		{"other_total", ls("code", "500"), false},
	} {
		if got := s.Matches(c.name, c.labels); got != c.want {
			t.Errorf("Matches(%s%v): got %v; want %v", c.name, c.labels, got, c.want)
		}
	}
}

func TestSelectorSumAndMerge(t *testing.T) {
	t.Parallel()
	h1, h2 := &proto.Histogram{}, &proto.Histogram{}
	h1.Observe(0.1, 3)
	h2.Observe(0.2, 2)
	w := &proto.Window{Series: []proto.WindowSeries{
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 90},
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "500"}}, Kind: proto.KindCounter, Value: 7},
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "503"}}, Kind: proto.KindGauge, Value: 1},
		{Name: "dur", Labels: proto.Labels{{Name: "route", Value: "a"}}, Kind: proto.KindHistogram, Hist: h1},
		{Name: "dur", Labels: proto.Labels{{Name: "route", Value: "b"}}, Kind: proto.KindHistogram, Hist: h2},
	}}
	if sum, bad := MustSelector("http_requests_total").Sum(w.Series); sum != 97 || bad != 1 {
		t.Fatalf("all requests: got sum %g, skipped %d; want 97, 1", sum, bad)
	}
	if sum, bad := MustSelector(`http_requests_total{code=~"5.."}`).Sum(w.Series); sum != 7 || bad != 1 {
		t.Fatalf("errors: got sum %g, skipped %d; want 7, 1", sum, bad)
	}
	var dst proto.Histogram
	found, bad := MustSelector("dur").Merge(w.Series, &dst)
	if !found || bad != 0 || dst.Count != 5 {
		t.Fatalf("latency: got found=%v skipped=%d count=%d; want true, 0, 5", found, bad, dst.Count)
	}
	// A histogram counts its observations as requests (OpenTelemetry's conventions).
	if sum, bad := MustSelector(`dur{route="a"}`).Sum(w.Series); sum != 3 || bad != 0 {
		t.Fatalf("histogram count: got sum %g, skipped %d; want 3, 0", sum, bad)
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{`m`, `m{a="b"}`, `m{a=~"x|y",b!~'z'}`, `m{`, `{}`, `m{a="\"}`, `{"a.b","c.d"="e"}`, `a.b{c.d!~"x"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err == nil && sel.Name == "" {
			t.Fatalf("ParseSelector(%q): got a selector without a name", s)
		}
	})
}
