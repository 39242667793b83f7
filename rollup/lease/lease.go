package lease

import (
	"sync/atomic"
	"time"
)

// Lease is one worker's ownership of one partition. A Manager creates it and hands it to
// its onAcquire callback; its methods are goroutine-safe. It satisfies rollup.Lease.
type Lease struct {
	partition int
	epoch     uint64
	from      time.Time
	previous  time.Time

	until    atomic.Int64 // unix nanos: Expires while held, the end after
	released atomic.Bool
	done     chan struct{}

	// Owned by the Manager's Run goroutine.
	rev      uint64
	sent     time.Time // when the last successful write was sent (monotonic)
	deadline time.Time // sent + TTL − Margin
}

// Partition returns the partition owned.
func (l *Lease) Partition() int { return l.partition }

// Epoch returns the number of owners the partition had, this one included.
func (l *Lease) Epoch() uint64 { return l.epoch }

// From returns when the ownership began: no earlier than the previous owner's Until.
func (l *Lease) From() time.Time { return l.from }

// Previous returns the previous owner's Until as recorded in the store (zero for a
// partition never owned before).
func (l *Lease) Previous() time.Time { return l.previous }

// Until returns the end of the ownership: while the lease is held, the instant it expires
// unless renewed (it moves forward with every renewal); after Done, the final end. No later
// owner's From is before it.
func (l *Lease) Until() time.Time { return time.Unix(0, l.until.Load()) }

// Released reports whether the lease has ended (released or lost).
func (l *Lease) Released() bool { return l.released.Load() }

// Done is closed when the lease has ended; Until is final from then on.
func (l *Lease) Done() <-chan struct{} { return l.done }

// end marks the lease ended at until.
func (l *Lease) end(until time.Time) {
	if l.released.Swap(true) {
		return
	}
	l.until.Store(until.UnixNano())
	close(l.done)
}

// leaseValue is what key p.<n> holds. Worker is empty for a released lease.
type leaseValue struct {
	Worker    string `json:"worker"`
	Epoch     uint64 `json:"epoch"`
	ExpiresMs int64  `json:"expires_unix_ms"`
}

// keyView is a worker's view of one key, from the watch and its own writes.
type keyView struct {
	exists bool
	rev    uint64
	val    leaseValue
	seen   time.Time // when rev was first observed (monotonic)
}
