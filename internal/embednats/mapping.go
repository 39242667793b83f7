package embednats

import (
	"fmt"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/herd-dev/herd/proto"
)

// The partition mapping, built from proto's partition scheme: agents publish on
// mappingSource; the server rewrites each message to mappingDest, so nobody receives the
// original subject. nats-server's partition(n, 1, 2) hashes the two wildcard tokens as
// proto.PartitionOf does.
const mappingSource = proto.PrefixIn + "*.*"

var mappingDest = proto.PrefixPartition + "{{partition(" + strconv.Itoa(proto.Partitions) + ",1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"

// ApplyMapping adds the partition mapping (herd.in.<service>.<version> →
// herd.p.<proto.PartitionOf(service, version)>.<service>.<version>) to the global account of
// s, the account clients use when no accounts are configured. Every server of a cluster needs
// it: a message is rewritten by the server its publisher is connected to.
func ApplyMapping(s *server.Server) error {
	if err := s.GlobalAccount().AddMapping(mappingSource, mappingDest); err != nil {
		return fmt.Errorf("cannot add subject mapping %s → %s: %w", mappingSource, mappingDest, err)
	}
	return nil
}

// MappingConfig returns the partition mapping as a nats-server configuration snippet, for
// an external server or cluster: put it at the top level (no accounts configured) or inside
// the account the agents and workers use. Every server of the cluster needs the same
// snippet.
func MappingConfig() string {
	return "# herd: route every (service, version) to one of " + strconv.Itoa(proto.Partitions) + " partitions.\n" +
		"# Never change the partition count of a running deployment.\n" +
		"mappings = {\n" +
		"  \"" + mappingSource + "\": \"" + mappingDest + "\"\n" +
		"}\n"
}
