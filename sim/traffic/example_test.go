package traffic_test

import (
	"fmt"
	"math/rand/v2"

	"github.com/herd-dev/herd/sim/traffic"
)

// The closed windows of a baseline serving 475 requests per window and a canary serving 25
// with ten times its error rate, as a detector test or benchmark feeds them to alert.Detector.
func Example() {
	r := rand.New(rand.NewPCG(1, 2)) // one source per trial: a seed fixes the windows
	m := traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}
	bins := traffic.NewBins(m)
	base, canary := traffic.NewWindowGroup("shop", "v1", bins), traffic.NewWindowGroup("shop", "v2", bins)
	base.Means[traffic.Normal], canary.Means[traffic.Normal] = bins.Means(m, 475, nil), bins.Means(m, 25, nil)
	base.ErrorRate[traffic.Normal], canary.ErrorRate[traffic.Normal] = 0.005, 0.05
	for k := range int64(2) {
		for _, g := range []*traffic.WindowGroup{base, canary} {
			w := g.Fill(r, k*250, k*250+250, 1, traffic.Normal, 0)
			// The window is g's until the next Fill: use it (or copy it) now.
			fmt.Printf("%s [%d, %d): %g requests, %g errors, %d latencies\n",
				w.Version, w.StartMs, w.EndMs, w.Series[0].Value, w.Series[1].Value, w.Series[2].Count)
		}
	}
	// Output:
	// v1 [0, 250): 488 requests, 6 errors, 488 latencies
	// v2 [0, 250): 24 requests, 2 errors, 24 latencies
	// v1 [250, 500): 485 requests, 4 errors, 485 latencies
	// v2 [250, 500): 19 requests, 0 errors, 19 latencies
}
