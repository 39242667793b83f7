package deploytest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/proto"
)

// isProbe reports whether m is one of the interest probes (last token "probe").
func isProbe(m *nats.Msg) bool { return strings.HasSuffix(m.Subject, ".probe") }

// waitInterest publishes probeSubject on pub until sub receives it: then the subscription's
// interest has reached pub's server over the routes.
func waitInterest(t *testing.T, pub *nats.Conn, sub *nats.Subscription, probeSubject string) {
	t.Helper()
	checkFor(t, 10*time.Second, 0, func() error {
		if err := pub.Publish(probeSubject, nil); err != nil {
			return err
		}
		if _, err := sub.NextMsg(50 * time.Millisecond); err != nil {
			return fmt.Errorf("probe %s not received: %w", probeSubject, err)
		}
		return nil
	})
}

// nextMsg returns the next message on sub that is not a probe.
func nextMsg(sub *nats.Subscription, timeout time.Duration) (*nats.Msg, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return nil, err
		}
		if !isProbe(m) {
			return m, nil
		}
	}
}

// TestClusterFromConfig starts the 3-node cluster of deploy/nats and checks the mapping, the
// permissions and JetStream on it.
func TestClusterFromConfig(t *testing.T) {
	c := startCluster(t)

	t.Run("mapping", func(t *testing.T) {
		// Subscriber on node 3, publisher on node 1: the mapped subject crosses a route.
		sc := connect(t, c.url(2, herdUser, herdPassword))
		sub, err := sc.SubscribeSync("herd.>")
		if err != nil {
			t.Fatal(err)
		}
		pc := connect(t, c.url(0, herdUser, herdPassword))
		waitInterest(t, pc, sub, "herd.probe")

		type group struct{ service, version string }
		var groups []group
		for _, s := range []string{"checkout", "search", "cart", "payments"} {
			for _, v := range []string{"1_2e4_2e2", "1_2e5_2e0", "2026-11-26_2e3"} {
				groups = append(groups, group{s, v})
			}
		}
		seen := map[int]bool{}
		for i, g := range groups {
			if err := pc.Publish("herd.in."+g.service+"."+g.version, []byte(itoa(i))); err != nil {
				t.Fatal(err)
			}
			seen[proto.PartitionOf(g.service, g.version)] = true
		}
		if len(seen) < 2 {
			t.Fatalf("got %d distinct partitions for %d groups; want a sample that spreads", len(seen), len(groups))
		}
		// One publisher, one subscriber: messages arrive in order, and the original
		// herd.in subject must never arrive (the mapping rewrites, it does not copy).
		for i, g := range groups {
			m, err := nextMsg(sub, 5*time.Second)
			if err != nil {
				t.Fatalf("group %d (%s, %s): %v", i, g.service, g.version, err)
			}
			want := fmt.Sprintf("herd.p.%d.%s.%s", proto.PartitionOf(g.service, g.version), g.service, g.version)
			if m.Subject != want || string(m.Data) != itoa(i) {
				t.Fatalf("got %s %q; want %s %q", m.Subject, m.Data, want, itoa(i))
			}
		}
	})

	t.Run("permissions", func(t *testing.T) {
		sc := connect(t, c.url(1, herdUser, herdPassword))
		sub, err := sc.SubscribeSync("herd.>")
		if err != nil {
			t.Fatal(err)
		}
		errs := make(errRecorder, 16)
		agent := connect(t, c.url(0, checkoutUser, checkoutPass), nats.ErrorHandler(errs.handler))
		waitInterest(t, agent, sub, "herd.in.checkout.probe")

		seq := 0
		// expectOwn publishes one batch of checkout and expects it, mapped, as the next
		// message: anything a denied publish let through would arrive before it.
		expectOwn := func() {
			t.Helper()
			seq++
			if err := agent.Publish("herd.in.checkout.1_2e4_2e2", []byte(itoa(seq))); err != nil {
				t.Fatal(err)
			}
			m, err := nextMsg(sub, 5*time.Second)
			if err != nil {
				t.Fatalf("own batch %d: %v", seq, err)
			}
			want := fmt.Sprintf("herd.p.%d.checkout.1_2e4_2e2", proto.PartitionOf("checkout", "1_2e4_2e2"))
			if m.Subject != want || string(m.Data) != itoa(seq) {
				t.Fatalf("got %s %q; want %s %q", m.Subject, m.Data, want, itoa(seq))
			}
		}
		expectOwn()

		denied := []struct{ subject, reported string }{
			// Another service's batch: checked after the mapping, so the error names the
			// partitioned subject.
			{"herd.in.search.1_2e4_2e2", fmt.Sprintf("herd.p.%d.search.1_2e4_2e2", proto.PartitionOf("search", "1_2e4_2e2"))},
			// Straight to another service's partition, bypassing the mapping.
			{"herd.p.3.search.1_2e4_2e2", "herd.p.3.search.1_2e4_2e2"},
			// Forged windows and verdicts, even for its own service.
			{"herd.rollup.checkout.1_2e4_2e2", "herd.rollup.checkout.1_2e4_2e2"},
			{"herd.verdict.checkout", "herd.verdict.checkout"},
			{"herd.deploy.checkout", "herd.deploy.checkout"},
			// JetStream: agents have none.
			{"$JS.API.INFO", "$JS.API.INFO"},
		}
		for _, d := range denied {
			if err := agent.Publish(d.subject, []byte("forged")); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errs:
				want := fmt.Sprintf("permissions violation for publish to %q", d.reported)
				if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
					t.Fatalf("publish %s: got async error %q; want one containing %q", d.subject, err, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("publish %s: got no permissions violation within 5s; want one", d.subject)
			}
			expectOwn()
		}

		// Agents subscribe to nothing.
		if _, err := agent.SubscribeSync("herd.>"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation for subscription") {
				t.Fatalf("subscribe herd.>: got %q; want a subscription permissions violation", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("subscribe herd.>: got no permissions violation within 5s; want one")
		}

		// The other service's agent may publish its own batches.
		other := connect(t, c.url(2, searchUser, searchPass), nats.ErrorHandler(errs.handler))
		if err := other.Publish("herd.in.search.2_2e0", []byte("s")); err != nil {
			t.Fatal(err)
		}
		if err := other.Flush(); err != nil {
			t.Fatal(err)
		}
		m, err := nextMsg(sub, 10*time.Second)
		if err != nil {
			t.Fatalf("search batch: %v", err)
		}
		if want := fmt.Sprintf("herd.p.%d.search.2_2e0", proto.PartitionOf("search", "2_2e0")); m.Subject != want {
			t.Fatalf("got %s; want %s", m.Subject, want)
		}

		// A wrong password is refused at connect.
		if nc, err := nats.Connect(c.url(0, checkoutUser, "wrong")); err == nil {
			nc.Close()
			t.Fatal("connect with a wrong password: got nil error; want an authorization violation")
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("connect with a wrong password: got %v; want an authorization violation", err)
		}
		select {
		case err := <-errs:
			t.Fatalf("got unexpected async error %v", err)
		default:
		}
	})

	t.Run("jetstream", func(t *testing.T) {
		nc := connect(t, c.url(0, herdUser, herdPassword)+","+c.url(1, herdUser, herdPassword)+","+c.url(2, herdUser, herdPassword))
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		// Before the cluster has a meta leader, API calls get no reply: retry with short
		// per-call timeouts.
		var kv jetstream.KeyValue
		checkFor(t, 20*time.Second, 100*time.Millisecond, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "herd_leases", Replicas: 3, History: 1})
			return err
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Workers watch the leases: the herd user's permissions must allow a watch (an
		// ordered consumer delivering to an inbox).
		w, err := kv.Watch(ctx, "partition.*", jetstream.UpdatesOnly())
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		defer w.Stop()
		rev, err := kv.Create(ctx, "partition.7", []byte("worker-a"))
		if err != nil {
			t.Fatalf("first create: %v", err)
		}
		select {
		case e := <-w.Updates():
			if e == nil || e.Key() != "partition.7" || string(e.Value()) != "worker-a" {
				t.Fatalf("watch: got %v; want partition.7 = worker-a", e)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("watch: got no update within 5s; want partition.7 = worker-a")
		}
		if _, err := kv.Create(ctx, "partition.7", []byte("worker-b")); !errors.Is(err, jetstream.ErrKeyExists) {
			t.Fatalf("second create: got %v; want %v", err, jetstream.ErrKeyExists)
		}
		if _, err := kv.Update(ctx, "partition.7", []byte("worker-a"), rev); err != nil {
			t.Fatalf("update at revision %d: %v", rev, err)
		}
		if _, err := kv.Update(ctx, "partition.7", []byte("worker-b"), rev); err == nil {
			t.Fatalf("update at stale revision %d: got nil error; want a wrong-sequence error", rev)
		}
		checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			st, err := kv.Status(ctx)
			if err != nil {
				return err
			}
			ci := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Cluster
			if ci == nil || ci.Leader == "" {
				return errors.New("bucket stream has no leader")
			}
			current := 0
			for _, r := range ci.Replicas {
				if r.Current {
					current++
				}
			}
			if current != 2 {
				return fmt.Errorf("bucket stream has %d current followers; want 2", current)
			}
			return nil
		})
	})
}

func itoa(i int) string { return fmt.Sprint(i) }
