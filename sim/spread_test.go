package sim

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestSpread(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cfg  SpreadConfig
		want string // service/version:instances …
	}{
		{"defaults", SpreadConfig{Instances: 200, CanaryShare: 0.2}, "checkout/1.4.2:160 checkout/1.5.0:40"},
		{"remainder to the first services", SpreadConfig{Services: []string{"a", "b", "c"}, Instances: 11, CanaryShare: 0.3},
			"a/1.4.2:3 a/1.5.0:1 b/1.4.2:3 b/1.5.0:1 c/1.4.2:2 c/1.5.0:1"},
		{"three versions", SpreadConfig{Versions: []string{"1", "2", "3"}, Instances: 10, CanaryShare: 0.2},
			"checkout/1:4 checkout/2:4 checkout/3:2"},
		{"at least one canary", SpreadConfig{Instances: 4, CanaryShare: 0.01}, "checkout/1.4.2:3 checkout/1.5.0:1"},
		{"one version", SpreadConfig{Versions: []string{"2.0.1"}, Instances: 7}, "checkout/2.0.1:7"},
	} {
		groups, err := Spread(c.cfg)
		if err != nil {
			t.Errorf("%s: got %v; want no error", c.name, err)
			continue
		}
		var got []string
		for _, g := range groups {
			got = append(got, fmt.Sprintf("%s/%s:%d", g.Service, g.Version, g.Instances))
		}
		if s := strings.Join(got, " "); s != c.want {
			t.Errorf("%s: got %s; want %s", c.name, s, c.want)
		}
	}
	groups, _ := Spread(SpreadConfig{Instances: 2, CanaryShare: 0.5, RPS: 20, ErrorRate: 0.01,
		LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond})
	want := Group{Service: "checkout", Version: "1.5.0", Instances: 1, RPS: 20, ErrorRate: 0.01,
		LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond}
	if len(groups) != 2 || groups[1] != want {
		t.Errorf("traffic: got %+v; want every group to carry it, e.g. %+v", groups, want)
	}
}

func TestSpreadRejects(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cfg  SpreadConfig
		want string
	}{
		{"fewer than one per group", SpreadConfig{Services: []string{"a", "b"}, Instances: 3, CanaryShare: 0.2}, "fewer than one per group"},
		{"share 0", SpreadConfig{Instances: 10}, "canary share"},
		{"share 1", SpreadConfig{Instances: 10, CanaryShare: 1}, "canary share"},
	} {
		if _, err := Spread(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error containing %q", c.name, err, c.want)
		}
	}
}
