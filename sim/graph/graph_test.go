package graph

import (
	"testing"
)

func TestNewShape(t *testing.T) {
	for _, c := range []struct {
		cfg      Config
		minEdges int
	}{
		{Config{}, 25},
		{Config{Services: 450, Callees: 13, Seed: 3}, 3000},
	} {
		g, err := New(c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		want := c.cfg.Services
		if want == 0 {
			want = 30
		}
		if len(g.Services) != want {
			t.Errorf("got %d services; want %d", len(g.Services), want)
		}
		t.Logf("%d services, %d edges", len(g.Services), g.Edges())
		if g.Edges() < c.minEdges {
			t.Errorf("got %d edges; want at least %d", g.Edges(), c.minEdges)
		}
		names := map[string]bool{}
		callers := map[string]int{}
		for _, s := range g.Services {
			if names[s.Name] {
				t.Errorf("service %s twice", s.Name)
			}
			names[s.Name] = true
			if s.Instances < 1 || !(s.RPS > 0) {
				t.Errorf("service %s: %d instances at %g rps; want ≥ 1 and > 0", s.Name, s.Instances, s.RPS)
			}
		}
		for caller, es := range g.Calls {
			from := g.Service(caller)
			for _, e := range es {
				to := g.Service(e.Callee)
				if from == nil || to == nil || to.Tier <= from.Tier {
					t.Fatalf("edge %s → %s does not go down the tiers", caller, e.Callee)
				}
				callers[e.Callee]++
			}
		}
		for _, s := range g.Services {
			if s.Tier > 0 && callers[s.Name] == 0 {
				t.Errorf("service %s (tier %d) has no caller", s.Name, s.Tier)
			}
		}
	}
	a, _ := New(Config{Seed: 5})
	b, _ := New(Config{Seed: 5})
	if a.Edges() != b.Edges() || a.Services[7] != b.Services[7] {
		t.Errorf("one seed gave two graphs")
	}
}

func TestNewRefuses(t *testing.T) {
	for _, cfg := range []Config{{Services: 2}, {Services: 20_000}, {Callees: -1}, {EntryRPS: -5}, {MaxInstances: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): got no error; want one", cfg)
		}
	}
}
