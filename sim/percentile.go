package sim

import (
	"slices"
	"time"
)

// Percentile returns the q-quantile (0 ≤ q ≤ 1) of ds, the element at rank q·len(ds) of the
// sorted durations (the largest for q = 1), or 0 when ds is empty. ds is not modified. The
// benchmarks report their delays and overheads with it.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	slices.Sort(s)
	return s[min(len(s)-1, max(0, int(q*float64(len(s)))))]
}
