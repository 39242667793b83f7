//go:build unix

package otlp

import (
	"syscall"
	"time"
)

// cpuTime returns the process's user and system CPU time so far: on a machine whose cores
// are shared, ops per CPU-second is the per-core figure that wall time is not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
