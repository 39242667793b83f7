package lease

import (
	"sync"
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

	// renewing is set while the renewer has a renewal of the lease in flight.
	renewing atomic.Bool
	// write serializes this worker's writes of the lease's key: a renewal and the release
	// are never in flight together. It is held across the KV call.
	write sync.Mutex

	mu sync.Mutex // Guards the fields below; held briefly by Run's goroutine and the renewer.
	// rev is the key's revision last written or observed by this worker.
	rev uint64
	// sent is when the last successful renewal (or the claim) was sent (monotonic).
	sent time.Time
	// deadline is sent + TTL − Margin: the owner counts on the lease until then.
	deadline time.Time
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

// end marks the lease ended at until. After it, renewals no longer move Until.
func (l *Lease) end(until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released.Swap(true) {
		return
	}
	l.until.Store(until.UnixNano())
	close(l.done)
}

// renewed records a successful renewal sent at sent with revision rev, unless the lease has
// ended (its Until is final) or a later revision was already adopted. It returns the time
// since the previous successful renewal was sent.
func (l *Lease) renewed(rev uint64, sent, wall, deadline time.Time) (gap time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	gap = sent.Sub(l.sent)
	if l.released.Load() || rev < l.rev {
		return gap
	}
	l.rev, l.sent, l.deadline = rev, sent, deadline
	l.until.Store(wall.UnixNano())
	return gap
}

// state returns the revision, the send time of the last renewal and the deadline.
func (l *Lease) state() (rev uint64, sent, deadline time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev, l.sent, l.deadline
}

// adopt takes revision rev of the key, written by this worker for this lease (a renewal
// whose answer was lost or not yet applied). Until and the deadline stay at the earlier,
// safe values.
func (l *Lease) adopt(rev uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if rev > l.rev {
		l.rev = rev
	}
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
