package embednats

import (
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"
)

// Partitions is the fixed number of partitions agent subjects are mapped to. It never
// changes at run time: workers move partition ownership instead (see rollup.Leases).
const Partitions = 64

// Subjects of the partition mapping. Agents publish on MappingSource; the server rewrites
// each message to MappingDest, so nobody receives the original subject.
const (
	MappingSource = "herd.in.*.*"
	MappingDest   = "herd.p.{{partition(64,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
	// PartitionPrefix precedes the partition number in mapped subjects.
	PartitionPrefix = "herd.p."
)

// ApplyMapping adds the partition mapping (MappingSource → MappingDest) to the global
// account of s, the account clients use when no accounts are configured. Every server of a
// cluster needs it: a message is rewritten by the server its publisher is connected to.
func ApplyMapping(s *server.Server) error {
	if err := s.GlobalAccount().AddMapping(MappingSource, MappingDest); err != nil {
		return fmt.Errorf("cannot add subject mapping %s → %s: %w", MappingSource, MappingDest, err)
	}
	return nil
}

// MappingConfig returns the partition mapping as a nats-server configuration snippet, for
// an external server or cluster: put it at the top level (no accounts configured) or inside
// the account the agents and workers use. Every server of the cluster needs the same
// snippet.
func MappingConfig() string {
	return "# herd: route every (service, version) to one of " + strconv.Itoa(Partitions) + " partitions.\n" +
		"# Never change the partition count of a running deployment.\n" +
		"mappings = {\n" +
		"  \"" + MappingSource + "\": \"" + MappingDest + "\"\n" +
		"}\n"
}

// PartitionOf returns the partition the mapping routes herd.in.<service>.<escapedVersion>
// to: FNV-1a (32 bit) of the two tokens concatenated without separator, modulo Partitions,
// exactly as nats-server's partition() does.
func PartitionOf(service, escapedVersion string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(service))
	_, _ = h.Write([]byte(escapedVersion))
	return int(h.Sum32() % Partitions)
}

// PartitionSubject returns the subject a worker owning partition p subscribes to:
// herd.p.<p>.>.
func PartitionSubject(p int) string { return PartitionPrefix + strconv.Itoa(p) + ".>" }

// PartitionSubjectPrefix returns herd.p.<p>., the prefix before <service>.<version> in the
// subjects of partition p.
func PartitionSubjectPrefix(p int) string { return PartitionPrefix + strconv.Itoa(p) + "." }
