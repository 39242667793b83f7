// Package lease gives each partition of herd's partition scheme (proto.Partitions) exactly
// one owner at a time among a pool of rollup workers, recorded as a lease in a JetStream KV
// bucket, and moves ownership when workers join, leave or die.
//
// NATS maps every agent subject herd.in.<service>.<version> to one of the partition
// subjects herd.p.<n>.<service>.<version> (see proto.PartitionOf). A Manager runs the leases
// of one worker: it reports each Lease it acquires and each lease that ended to callbacks,
// with which the worker starts and stops the rollup of that partition (rollup.Partitioned).
//
// # Leases
//
// Key p.<n> holds the lease of partition n: the owner's worker id, an epoch incremented on every
// change of owner, and Expires, the wall-clock instant the owner's lease ends unless renewed.
// A worker claims a free or expired key with a compare-and-set on the revision it observed
// (Create for a key never written, Update otherwise): of two claimers, the second gets a
// revision mismatch. The owner renews each lease every Config.Heartbeat with the same
// compare-and-set.
//
// Expiry is judged on each worker's own monotonic clock, never by comparing two machines'
// clocks: a claimer treats a lease as expired once it has seen no new revision for
// Config.TTL since it first observed the current one. The owner stops counting on a lease at
// TTL − Config.Margin after it sent its last successful renewal, which was before any claimer
// observed it, so the owner has let go (by at least Margin) before anyone can claim. If a
// renewal is still in flight at that deadline (a slow server), the owner waits for it, at most
// TTL longer, publishing nothing beyond the Expires last acknowledged: if the renewal's
// compare-and-set succeeds, nobody wrote the key in between and the lease goes on; if a claim
// came first, the renewal fails and the claimer's From is at least that Expires.
//
// Key w.<id> is a worker's heartbeat; a worker counts the heartbeats renewed within TTL (itself
// included) and aims at ⌈partitions / workers⌉ leases: it claims free and expired partitions
// below that and releases the excess above it, so that leases rebalance when workers join or
// leave. A worker that stops cleanly releases its leases (an Update to a free value) and
// deletes its heartbeat, so others take over at once. A release is a compare-and-set on the
// revision of the lease's last write: a renewal records its revision before the release may
// be sent, and if a renewal whose answer was lost (timed out, or canceled on stopping) was
// applied, the key read back still holds the lease and the release is sent again on its
// revision. A worker whose heartbeat is silent for
// Config.ProbeAfter is probed on NATS: if its connection is gone ("no responders"), its leases
// are claimed at once; the leases of a worker still connected but stuck are taken over TTL
// after their last renewal. The owner renews from a goroutine of its own, so a worker whose
// claims, callbacks or processing are slow keeps its leases.
//
// # Exactness across a change of owner
//
// Every lease has a span of windows it may publish, [FromCut, UntilCut): FromCut is
// Lease.From rounded up to the window grid, where From ≥ the previous lease's Until; UntilCut
// is Lease.Until rounded up, where Until is the lease's current Expires while held and the
// release instant (or, for a lost lease, the last Expires written) after. No Expires a lease
// writes is before its From or its Until so far: a claim writes at least the Expires it
// replaces, a renewal at least the Until acknowledged, and a lease released before its From
// (taken over from a dead owner whose Expires lay ahead) ends at its From, with an empty
// span. So From_next ≥ Until_prev, and the spans of successive owners of a partition never
// overlap, whatever the clocks of the two workers: both read the same number from the KV
// store. A window (group,
// start) is therefore published by at most one owner and no batch is counted twice, even if
// a worker that lost its lease without noticing (a paused or partitioned process) keeps
// running: its span stops growing when it can no longer renew.
//
// After a release the old owner keeps receiving and merging the windows of its span (start <
// UntilCut) until they close (UntilCut + lateness), while the new owner merges windows from
// FromCut on: a clean hand-over within one window interval loses nothing. Windows between the
// two cuts, and the open windows of a worker that died, are lost; they are missing from the
// output, never partial duplicates. rollup.Partitioned applies the cuts; this package only
// provides From and Until.
package lease
