package embednats

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/proto"
)

// checkRouting publishes herd.in.<svc>.<ver> for many groups through pub and checks that
// each arrives, on sub's server, only as herd.p.<proto.PartitionOf(svc, ver)>.<svc>.<ver>.
func checkRouting(t *testing.T, pub, sub *nats.Conn) {
	t.Helper()
	s, err := sub.SubscribeSync("herd.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	// In a cluster the interest reaches the publisher's server asynchronously: probe first.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := pub.Publish("herd.in.probe.1", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.NextMsg(50 * time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the subscriber's interest never reached the publisher's server")
		}
	}
	next := func() (*nats.Msg, error) {
		for {
			m, err := s.NextMsg(5 * time.Second)
			if err != nil || !strings.Contains(m.Subject, ".probe.") {
				return m, err
			}
		}
	}
	type group struct{ svc, ver string }
	var groups []group
	for i := range 200 {
		groups = append(groups, group{"svc-" + strconv.Itoa(i%13), "1_2e" + strconv.Itoa(i)})
	}
	groups = append(groups, group{"a", "bc"}, group{"ab", "c"}) // same hash input: same partition
	seen := map[int]bool{}
	for _, g := range groups {
		want := proto.PartitionOf(g.svc, g.ver)
		seen[want] = true
		if err := pub.Publish("herd.in."+g.svc+"."+g.ver, nil); err != nil {
			t.Fatal(err)
		}
		m, err := next()
		if err != nil {
			t.Fatalf("%s/%s: no message: %v", g.svc, g.ver, err)
		}
		if wantSubj := proto.PartitionSubjectPrefix(want) + g.svc + "." + g.ver; m.Subject != wantSubj {
			t.Fatalf("got subject %s; want %s", m.Subject, wantSubj)
		}
	}
	if len(seen) < proto.Partitions/2 {
		t.Errorf("got %d distinct partitions for %d groups; want a spread over most of %d", len(seen), len(groups), proto.Partitions)
	}
	if proto.PartitionOf("a", "bc") != proto.PartitionOf("ab", "c") {
		t.Errorf("got different partitions for a/bc and ab/c; want the server's token concatenation")
	}
}

func TestApplyMappingMatchesPartitionOf(t *testing.T) {
	t.Parallel()
	s, err := Start(Config{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(s)
	if err := ApplyMapping(s); err != nil {
		t.Fatal(err)
	}
	nc, err := Connect(s)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	checkRouting(t, nc, nc)
}

func TestMappingConfigMatchesPartitionOf(t *testing.T) {
	t.Parallel()
	opts := &server.Options{}
	if err := opts.ProcessConfigString(MappingConfig()); err != nil {
		t.Fatalf("cannot parse the mapping snippet: %v\n%s", err, MappingConfig())
	}
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	defer Shutdown(s)
	nc, err := Connect(s)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	checkRouting(t, nc, nc)
	if !strings.Contains(MappingConfig(), fmt.Sprintf("partition(%d,1,2)", proto.Partitions)) {
		t.Errorf("got snippet without partition(%d,1,2):\n%s", proto.Partitions, MappingConfig())
	}
}

func TestStartClusterRoutesMappedSubjects(t *testing.T) {
	t.Parallel()
	servers, err := StartCluster(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			Shutdown(s)
		}
	})
	if got := len(servers); got != 3 {
		t.Fatalf("got %d servers; want 3", got)
	}
	pub, err := nats.Connect(servers[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub, err := nats.Connect(servers[2].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	checkRouting(t, pub, sub)
	if got := ClientURLs(servers); strings.Count(got, ",") != 2 {
		t.Errorf("got ClientURLs %q; want 3 URLs", got)
	}
}
