package rollup

import "math/bits"

// reorderWindow is how many sequence numbers behind an instance's newest batch are still
// accepted (tolerating reordering). A missing sequence number that falls further behind is
// counted lost; a batch that old is refused as a duplicate, because a redelivery is far more
// likely than a batch delayed by reorderWindow intervals (whose window is closed anyway).
const reorderWindow = 64

// instance is the dedup state of one agent instance. It is owned by Rollup.insts and guarded
// by Rollup.mu.
type instance struct {
	service, version string
	start            int64 // InstanceStart of the incarnation this state belongs to

	// maxSeq is the newest sequence number seen; bit k of seen is set when maxSeq-k was seen.
	// firstSeq is the oldest one seen: numbers before it were sent before this worker knew
	// the instance, so they are accepted if they arrive but never counted lost.
	maxSeq, firstSeq uint64
	seen             uint64

	// wins records the windows the instance contributed to, so that Window.Instances counts
	// distinct instances even when one instance sends several batches into a window;
	// warmWins does the same for its warm batches (Window.BucketInstances).
	wins, warmWins winSet
	// bucket is proto.BucketOf(instance id): the Window.Buckets entry its warm batches go
	// to (and so the Window.Halves entry, bucket/(proto.NumBuckets/2)).
	bucket int

	lastSeen int64 // unix nanos of the last batch, any outcome
	stopped  bool  // a final batch was seen; the state is a tombstone that refuses redeliveries
	// unannounced is set until a batch of the instance is merged, which counts the instance
	// in that window's InstancesStarted.
	unannounced bool

	// clk estimates the instance's clock offset (see clock.go); held is set while one of
	// its batches waits in Rollup.held for the next arrival to tell skew from delay.
	clk  clock
	held bool

	// expG and expIdx are the group and window index its next batch is expected in; expG
	// is nil when it expects none (see complete.go).
	expG   *group
	expIdx int64
}

// reset makes in the state of a new instance whose first batch has sequence number seq and
// lands in window index idx.
func (in *instance) reset(service, version string, start int64, seq uint64, idx int64, bucket int, now int64) {
	*in = instance{
		service: service, version: version, start: start,
		maxSeq: seq, firstSeq: seq, seen: 1,
		wins: winSet{idx: idx}, warmWins: winSet{idx: idx},
		bucket:   bucket,
		lastSeen: now, unannounced: true,
		clk: newClock(),
	}
}

// dup reports whether seq was seen before or is too old to tell.
func (in *instance) dup(seq uint64) bool {
	if seq > in.maxSeq {
		return false
	}
	d := in.maxSeq - seq
	return d >= reorderWindow || in.seen&(1<<d) != 0
}

// mark records seq as seen (dup(seq) must be false) and returns how many missing sequence
// numbers fell out of the reorder window.
func (in *instance) mark(seq uint64) (lost uint64) {
	if seq <= in.maxSeq {
		in.seen |= 1 << (in.maxSeq - seq)
		in.firstSeq = min(in.firstSeq, seq)
		return 0
	}
	d := seq - in.maxSeq
	if d >= reorderWindow {
		lost = in.pending() + (d - reorderWindow)
		in.seen = 1
	} else {
		missing := ^in.seen & in.valid()
		lost = uint64(bits.OnesCount64(missing >> (reorderWindow - d)))
		in.seen = in.seen<<d | 1
	}
	in.maxSeq = seq
	return lost
}

// valid returns the bits of seen that stand for sequence numbers ≥ firstSeq.
func (in *instance) valid() uint64 {
	if k := in.maxSeq - in.firstSeq; k < reorderWindow-1 {
		return 1<<(k+1) - 1
	}
	return ^uint64(0)
}

// pending returns the number of missing sequence numbers still inside the reorder window.
func (in *instance) pending() uint64 {
	return uint64(bits.OnesCount64(^in.seen & in.valid()))
}

// winSet is a set of window indexes (start / window) near the newest one: bit k of bits is
// set when window idx-k is in the set.
type winSet struct {
	idx  int64
	bits uint64
}

// add puts window index i into the set and reports whether it was absent.
func (ws *winSet) add(i int64) bool {
	if i > ws.idx {
		d := i - ws.idx
		if d >= 64 {
			ws.bits = 1
		} else {
			ws.bits = ws.bits<<d | 1
		}
		ws.idx = i
		return true
	}
	d := ws.idx - i
	if d >= 64 {
		return true // far older than any open window; cannot be told apart
	}
	if ws.bits&(1<<d) != 0 {
		return false
	}
	ws.bits |= 1 << d
	return true
}
