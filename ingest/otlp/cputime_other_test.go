//go:build !unix

package otlp

import "time"

// cpuTime is not measured here: the benchmark reports no CPU-time figure.
func cpuTime() time.Duration { return 0 }
