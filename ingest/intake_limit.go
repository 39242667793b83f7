package ingest

import "fmt"

// Limiter bounds how many intake handlers run at once over every Intake sharing it (see
// IntakeConfig.Limiter). A process with many intakes, such as a rollup worker with one per
// owned partition, would otherwise have one runnable goroutine per intake worker when it is
// busy; the Go scheduler has no priorities, so the goroutines that must stay timely (lease
// renewals, the NATS client's read loop) would each wait behind all of them. With a Limiter
// sized to the cores, the handlers waiting for a slot are parked, not runnable: the
// throughput is the same and everything else waits behind a few goroutines at most. A
// message whose handler waits stays in its subscription's bounded buffer, whose overflow is
// counted as slow_consumer as before.
type Limiter struct {
	slots chan struct{}
}

// NewLimiter returns a Limiter letting n handlers run at once.
func NewLimiter(n int) (*Limiter, error) {
	if n < 1 {
		return nil, fmt.Errorf("cannot create intake limiter: %d slots; want at least 1", n)
	}
	return &Limiter{slots: make(chan struct{}, n)}, nil
}

// acquire waits for a slot; a nil Limiter has one at once.
func (l *Limiter) acquire() {
	if l != nil {
		l.slots <- struct{}{}
	}
}

// release returns a slot taken by acquire.
func (l *Limiter) release() {
	if l != nil {
		<-l.slots
	}
}
