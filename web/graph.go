package web

import (
	"cmp"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// The live dependency graph: the dashboard's /graph page draws the edges (caller group →
// callee) that closed windows carry (proto.SeriesEdgeCalls, …), with their call rates and
// error ratios, beside each group's request rate, so that a canary's edges can be set beside
// its baseline's. GET /api/v1/graph returns it.
const (
	// maxGraphEdges bounds the edges the graph holds; windows naming more are counted
	// (herd_web_graph_edges_refused_total) and their extra edges skipped.
	maxGraphEdges = 20_000
	// maxGraphGroups bounds the groups whose request rates the graph holds.
	maxGraphGroups = 10_000
	// graphTau is the time constant of the rates (exponentially weighted per window).
	graphTau = 2 * time.Second
	// graphIdle drops an edge or a group not seen for this long.
	graphIdle = 2 * time.Minute
)

// flowGraph holds the decayed rates of the edges and groups seen in windows. Safe for
// concurrent use.
type flowGraph struct {
	mu      sync.Mutex // Guards the fields below.
	groups  map[[2]string]*graphGroup
	nedges  int // edges over all groups
	refused *metrics.Counter
}

// graphGroup is one (service, version) group: its request rate and its edges' rates. Every
// window of the group updates all of them (an edge missing from a window called nothing),
// so a group that stops decays its edges with its requests.
type graphGroup struct {
	rate  graphRate
	edges map[proto.EdgeKey]*graphRate
}

// graphRate is an exponentially weighted rate of events and errors per second.
type graphRate struct {
	perSec, errPerSec float64
	lastMs            int64
}

// add folds one window's counts over widthMs into r.
func (r *graphRate) add(n, e float64, endMs, widthMs int64) {
	if endMs <= r.lastMs {
		r.perSec += n / graphTau.Seconds() // a late window: add its counts, no decay
		r.errPerSec += e / graphTau.Seconds()
		return
	}
	dt := float64(endMs-r.lastMs) / 1000
	if r.lastMs == 0 {
		dt = float64(widthMs) / 1000
	}
	a := 1 - math.Exp(-dt/graphTau.Seconds())
	w := float64(widthMs) / 1000
	r.perSec += a * (n/w - r.perSec)
	r.errPerSec += a * (e/w - r.errPerSec)
	r.lastMs = endMs
}

func newFlowGraph(set *metrics.Set) *flowGraph {
	promhelp.Describe(map[string]string{"herd_web_graph_edges_refused_total": "Edges of windows the dependency graph " +
		"skipped because it holds its limit of 20000 edges."})
	return &flowGraph{groups: map[[2]string]*graphGroup{},
		refused: set.NewCounter("herd_web_graph_edges_refused_total")}
}

// addWindow folds a closed window's edges, and its requests and errors (as the service's
// signals read them), into the graph.
func (g *flowGraph) addWindow(w *proto.Window, requests, errors float64) {
	width := w.EndMs - w.StartMs
	if width <= 0 {
		return
	}
	type counts struct{ n, e float64 }
	req := counts{requests, errors}
	var es map[proto.EdgeKey]*counts
	for i := range w.Series {
		s := &w.Series[i]
		if s.Kind != proto.KindCounter || (s.Name != proto.SeriesEdgeCalls && s.Name != proto.SeriesEdgeErrors) {
			continue
		}
		k, ok := proto.EdgeOf(s.Name, s.Labels)
		if !ok {
			continue
		}
		if es == nil {
			es = map[proto.EdgeKey]*counts{}
		}
		c := es[k]
		if c == nil {
			c = &counts{}
			es[k] = c
		}
		if s.Name == proto.SeriesEdgeCalls {
			c.n += s.Value
		} else {
			c.e += s.Value
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gk := [2]string{w.Service, w.Version}
	gr := g.groups[gk]
	if gr == nil {
		if len(g.groups) >= maxGraphGroups {
			return
		}
		gr = &graphGroup{edges: map[proto.EdgeKey]*graphRate{}}
		g.groups[gk] = gr
	}
	gr.rate.add(req.n, req.e, w.EndMs, width)
	for k, r := range gr.edges {
		if es[k] == nil {
			r.add(0, 0, w.EndMs, width)
		}
	}
	for k, c := range es {
		r := gr.edges[k]
		if r == nil {
			if g.nedges >= maxGraphEdges {
				g.refused.Inc()
				continue
			}
			r = &graphRate{}
			gr.edges[k] = r
			g.nedges++
		}
		r.add(c.n, c.e, w.EndMs, width)
	}
}

// prune drops what was not seen for graphIdle.
func (g *flowGraph) prune(nowMs int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	cut := nowMs - graphIdle.Milliseconds()
	for k, gr := range g.groups {
		if gr.rate.lastMs < cut {
			g.nedges -= len(gr.edges)
			delete(g.groups, k)
		}
	}
}

// GraphEdge is one edge of GET /api/v1/graph: a caller group's calls to a callee.
type GraphEdge struct {
	Caller    string  `json:"caller"`
	Version   string  `json:"version"`
	Callee    string  `json:"callee"`
	Operation string  `json:"operation,omitempty"`
	RPS       float64 `json:"rps"`
	// ErrorRatio is failed calls per call.
	ErrorRatio float64 `json:"error_ratio"`
}

// GraphGroup is one group of GET /api/v1/graph with its request rate.
type GraphGroup struct {
	Version    string  `json:"version"`
	RPS        float64 `json:"rps"`
	ErrorRatio float64 `json:"error_ratio"`
}

// GraphService is one service of GET /api/v1/graph.
type GraphService struct {
	Name string `json:"name"`
	// Domain groups services: the name up to its first '-' (e.g. "shop" of "shop-api").
	Domain string       `json:"domain"`
	Groups []GraphGroup `json:"groups"`
	// Baseline and Canary name the latest deployment, State its latest verdict ("" when
	// none is known).
	Baseline string `json:"baseline,omitempty"`
	Canary   string `json:"canary,omitempty"`
	State    string `json:"state,omitempty"`
}

// Graph is the body of GET /api/v1/graph.
type Graph struct {
	NowMs    int64          `json:"now_unix_ms"`
	Services []GraphService `json:"services"`
	Edges    []GraphEdge    `json:"edges"`
}

func domainOf(service string) string {
	d, _, _ := strings.Cut(service, "-")
	return d
}

// serveGraph answers GET /api/v1/graph.
func (s *Server) serveGraph(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	g := s.graph
	g.prune(now.UnixMilli())
	out := Graph{NowMs: now.UnixMilli(), Services: []GraphService{}, Edges: []GraphEdge{}}
	byName := map[string]*GraphService{}
	svc := func(name string) *GraphService {
		if sv := byName[name]; sv != nil {
			return sv
		}
		out.Services = append(out.Services, GraphService{Name: name, Domain: domainOf(name), Groups: []GraphGroup{}})
		sv := &out.Services[len(out.Services)-1]
		byName[name] = sv
		return sv
	}
	g.mu.Lock()
	groups := make(map[[2]string]graphRate, len(g.groups))
	for gk, gr := range g.groups {
		groups[gk] = gr.rate
		for k, r := range gr.edges {
			ratio := 0.0
			if r.perSec > 0 {
				ratio = min(r.errPerSec/r.perSec, 1)
			}
			out.Edges = append(out.Edges, GraphEdge{Caller: gk[0], Version: gk[1], Callee: k.Callee,
				Operation: k.Operation, RPS: round3(r.perSec), ErrorRatio: round3(ratio)})
		}
	}
	g.mu.Unlock()
	slices.SortFunc(out.Edges, func(a, b GraphEdge) int {
		return cmp.Or(cmp.Compare(a.Caller, b.Caller), cmp.Compare(a.Callee, b.Callee), cmp.Compare(a.Version, b.Version),
			cmp.Compare(a.Operation, b.Operation))
	})
	// Services: every caller and callee, and every group with a rate (pointers into
	// out.Services are taken only after it stops growing).
	names := map[string]bool{}
	for _, e := range out.Edges {
		names[e.Caller], names[e.Callee] = true, true
	}
	for k := range groups {
		names[k[0]] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	slices.Sort(sorted)
	out.Services = make([]GraphService, 0, len(sorted))
	for _, n := range sorted {
		svc(n)
	}
	for k, r := range groups {
		ratio := 0.0
		if r.perSec > 0 {
			ratio = min(r.errPerSec/r.perSec, 1)
		}
		sv := byName[k[0]]
		sv.Groups = append(sv.Groups, GraphGroup{Version: k[1], RPS: round3(r.perSec), ErrorRatio: round3(ratio)})
	}
	s.mu.RLock()
	for i := range out.Services {
		sv := &out.Services[i]
		slices.SortFunc(sv.Groups, func(a, b GraphGroup) int { return cmp.Compare(a.Version, b.Version) })
		st := s.services[sv.Name]
		if st == nil || len(st.deployments) == 0 {
			continue
		}
		d := st.deployments[len(st.deployments)-1]
		sv.Baseline, sv.Canary = d.Baseline, d.Canary
		for j := len(st.verdicts) - 1; j >= 0; j-- {
			if st.verdicts[j].Canary == d.Canary {
				sv.State = string(st.verdicts[j].State)
				break
			}
		}
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, out)
}

// round3 rounds v to 3 significant decimals for the wire.
func round3(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	p := math.Pow(10, 3-math.Ceil(math.Log10(math.Abs(v))))
	return math.Round(v*p) / p
}
