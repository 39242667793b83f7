package traffic

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/herd-dev/herd/proto"
)

var testModel = LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}

// TestBins checks that every bin counts into the herd bucket whose lower bound is its edge and
// that the probabilities of a model are a distribution.
func TestBins(t *testing.T) {
	t.Parallel()
	b := NewBins(testModel)
	if got, want := b.Len(), len(b.edges)+1; got != want {
		t.Fatalf("Len: got %d; want %d (one bin per edge and one below)", got, want)
	}
	for j, e := range b.edges {
		if j > 0 && !(e > b.edges[j-1]) {
			t.Errorf("edge %d: got %g after %g; want ascending", j, e, b.edges[j-1])
		}
		if got := proto.BucketIndex(e * (1 + 1e-9)); got != b.idx[j+1] {
			t.Errorf("bin %d [%g, …): got bucket %d; want %d", j+1, e, b.idx[j+1], got)
		}
	}
	if got, want := b.idx[0], b.idx[1]-1; got != want {
		t.Errorf("bin 0: got bucket %d; want %d, just below the first edge", got, want)
	}
	for _, m := range []LatencyModel{testModel, {Median: 0.05, Sigma: 0.5, Scale: 3, TailFrac: 0.05, TailShift: 0.3}} {
		var sum float64
		for j, p := range b.Probs(m) {
			if p < 0 {
				t.Errorf("%+v bin %d: got probability %g; want ≥ 0", m, j, p)
			}
			sum += p
		}
		if math.Abs(sum-1) > 1e-12 {
			t.Errorf("%+v: probabilities sum to %g; want 1", m, sum)
		}
	}
}

// TestMeans checks that Means spreads perWindow requests over the bins, and that instances of
// equal scale are one model.
func TestMeans(t *testing.T) {
	t.Parallel()
	b := NewBins(testModel)
	one := b.Means(testModel, 500, nil)
	same := b.Means(testModel, 500, []float64{1, 1, 1, 1})
	mixed := b.Means(testModel, 500, []float64{0.5, 2})
	for name, ms := range map[string][]float64{"nil": one, "equal": same, "mixed": mixed} {
		var sum float64
		for _, m := range ms {
			sum += m
		}
		if math.Abs(sum-500) > 1e-9 {
			t.Errorf("%s scales: means sum to %g; want 500", name, sum)
		}
	}
	for j := range one {
		if math.Abs(one[j]-same[j]) > 1e-9 {
			t.Errorf("bin %d: got %g with four instances of scale 1; want %g as with nil", j, same[j], one[j])
		}
	}
	if mixed[0] <= one[0] {
		t.Errorf("bin 0: got %g with a half-scale instance; want more than %g", mixed[0], one[0])
	}
}

// TestFill checks one group's windows: identity, counters consistent with the histogram, and
// counts with the configured means and error rates in each regime.
func TestFill(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	b := NewBins(testModel)
	g := NewWindowGroup("shop", "v2", b)
	g.Instances, g.InstancesStarted = 4, 1
	g.Means[Normal] = b.Means(testModel, 200, nil)
	g.Means[Outage] = b.Means(testModel, 50, nil)
	g.ErrorRate = [2]float64{Normal: 0.01, Outage: 0.5}
	for _, c := range []struct {
		reg             Regime
		load, errFrac   float64
		wantN, wantErrs float64 // per window
	}{
		{Normal, 1, 0, 200, 2},
		{Normal, 0.5, 0, 100, 1},
		{Outage, 1, 0, 50, 25},
		{Normal, 1, 0.9, 200, 180},
	} {
		const windows = 2000
		var n, errs float64
		for k := range windows {
			start := int64(k) * 250
			w := g.Fill(r, start, start+250, c.load, c.reg, c.errFrac)
			if w.Service != "shop" || w.Version != "v2" || w.Instances != 4 || w.InstancesStarted != 1 {
				t.Fatalf("window identity: got %s/%s with %d instances (%d started); want shop/v2 with 4 (1)",
					w.Service, w.Version, w.Instances, w.InstancesStarted)
			}
			if w.StartMs != start || w.EndMs != start+250 || w.ClosedMs != start+250 {
				t.Fatalf("window times: got [%d, %d) closed %d; want [%d, %d) closed %d", w.StartMs, w.EndMs, w.ClosedMs, start, start+250, start+250)
			}
			req, fail, lat := w.Series[0], w.Series[1], w.Series[2]
			var hn uint64
			for _, cnt := range lat.Hist.Positive.Counts {
				hn += cnt
			}
			if lat.Count != hn || lat.Hist.Count != hn || req.Value != float64(hn) {
				t.Fatalf("window %d: got %g requests, latency count %d, histogram %d / %d; want all equal", k, req.Value, lat.Count, lat.Hist.Count, hn)
			}
			if fail.Value > req.Value {
				t.Fatalf("window %d: got %g errors of %g requests; want at most all", k, fail.Value, req.Value)
			}
			n += req.Value
			errs += fail.Value
		}
		n, errs = n/windows, errs/windows
		if math.Abs(n-c.wantN) > 4*math.Sqrt(c.wantN/windows) {
			t.Errorf("%+v: got %.2f requests per window; want ≈ %g", c, n, c.wantN)
		}
		if math.Abs(errs-c.wantErrs) > 0.05*c.wantErrs+4*math.Sqrt(c.wantErrs/windows) {
			t.Errorf("%+v: got %.3f errors per window; want ≈ %g", c, errs, c.wantErrs)
		}
	}
}

// TestFillSeeded pins the draws of one seed: the detector benchmark's reports and the
// detector's tests depend on a seed giving the same windows from one herd version to the next.
func TestFillSeeded(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	b := NewBins(testModel)
	g := NewWindowGroup("shop", "v1", b)
	g.Means[Normal] = b.Means(testModel, 500, nil)
	g.ErrorRate[Normal] = 0.01
	for k, want := range [][2]float64{{513, 10}, {498, 9}, {490, 5}} {
		w := g.Fill(r, int64(k)*250, int64(k+1)*250, 1, Normal, 0)
		if got := [2]float64{w.Series[0].Value, w.Series[1].Value}; got != want {
			t.Errorf("window %d: got %v requests and errors; want %v", k, got, want)
		}
	}
	if got, want := [2]float64{Poisson(r, 3), Poisson(r, 40)}, [2]float64{4, 38}; got != want {
		t.Errorf("Poisson(3), Poisson(40) after the windows: got %v; want %v", got, want)
	}
}

// BenchmarkFill measures one simulated window of 500 requests.
func BenchmarkFill(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	bins := NewBins(testModel)
	g := NewWindowGroup("shop", "v1", bins)
	g.Means[Normal] = bins.Means(testModel, 500, nil)
	g.ErrorRate[Normal] = 0.005
	b.ReportAllocs()
	for i := int64(0); b.Loop(); i++ {
		g.Fill(r, i*250, i*250+250, 1, Normal, 0)
	}
}
