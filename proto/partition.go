package proto

import "strconv"

// The partition scheme spreads agent batches over a fixed number of partitions, so that
// rollup workers can share the work without ever splitting one group: NATS rewrites every
// agent subject herd.in.<service>.<version> to herd.p.<n>.<service>.<version>, with n =
// PartitionOf(service, version), and each partition has exactly one owner at a time.
//
// The servers carry the rewrite as a subject mapping (nats-server's partition() transform);
// workers subscribe to PartitionSubject(n) for each partition they own. Both sides, and an
// agent that publishes on a partition subject directly, must agree on Partitions and on the
// hash, which is why they are defined here.

// Partitions is the fixed number of partitions. It never changes in a running deployment:
// workers move the ownership of partitions instead, so that the mapping stays the same on
// every server.
const Partitions = 64

// PrefixPartition precedes the partition number in partition subjects:
// herd.p.<n>.<service>.<escaped version>.
const PrefixPartition = "herd.p."

// SubjectPartitionAll matches the subjects of every partition.
const SubjectPartitionAll = PrefixPartition + ">"

// FNV-1a (32 bit) parameters, as nats-server's partition() uses them.
const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// PartitionOf returns the partition of the group whose subject tokens are service and
// versionToken (the escaped version, see EscapeVersion): FNV-1a (32 bit) of the two tokens
// concatenated without a separator, modulo Partitions, exactly as nats-server's
// partition(Partitions, 1, 2) transform computes it for herd.in.<service>.<versionToken>.
// It does not validate the tokens and does not allocate.
func PartitionOf(service, versionToken string) int {
	h := uint32(fnvOffset32)
	for i := 0; i < len(service); i++ {
		h ^= uint32(service[i])
		h *= fnvPrime32
	}
	for i := 0; i < len(versionToken); i++ {
		h ^= uint32(versionToken[i])
		h *= fnvPrime32
	}
	return int(h % Partitions)
}

// PartitionSubject returns herd.p.<p>.>, the subject the owner of partition p subscribes to.
func PartitionSubject(p int) string { return PrefixPartition + strconv.Itoa(p) + ".>" }

// PartitionSubjectPrefix returns herd.p.<p>., the prefix before <service>.<escaped version>
// in the subjects of partition p.
func PartitionSubjectPrefix(p int) string { return PrefixPartition + strconv.Itoa(p) + "." }
