package deliver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// corruptRecords are stored values a Deliverer must refuse, by key. (A FileStore keeps values
// inside JSON, so they are JSON; a JetStream KV store also gets truncatedRecord.)
var corruptRecords = map[string]string{
	"wrong-type": `"not a record"`,
	"foreign-id": `{"id": "someone-else", "verdict": {}, "targets": []}`,
	"bad-state":  `{"id": "bad-state", "verdict": {}, "targets": [{"target": "webhook:x", "kind": "webhook", "state": "bogus"}]}`,
	"null":       `null`,
}

// TestLoadRefusesCorruptRecords stores corrupt decision records beside a good one whose
// delivery is unfinished: a restarted Deliverer refuses (counts and logs) the corrupt ones
// and still resumes the good one.
func TestLoadRefusesCorruptRecords(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"file", "jetstream-kv"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var store Store
			dir := t.TempDir()
			if kind == "file" {
				fs, err := NewFileStore(dir)
				if err != nil {
					t.Fatal(err)
				}
				store = fs
			} else {
				store = startJS(t, dir).kv
			}
			rc := &recorder{statuses: []int{503}}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			cfg := Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}}
			d := newTestDeliverer(t, cfg, store)
			stop := startRun(t, d)
			v := testVerdict(proto.StateRollback)
			if err := d.Decide(v); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if n := len(rc.requests()); n < 1 {
					return fmt.Errorf("got %d requests; want 1", n)
				}
				return nil
			})
			stop()

			ctx := t.Context()
			corrupt := maps.Clone(corruptRecords)
			wantGetErrors := uint64(0)
			if kind == "file" { // a file that is not even a stored value
				if err := os.WriteFile(filepath.Join(dir, "garbage.json"), []byte("\x00\x01"), 0o600); err != nil {
					t.Fatal(err)
				}
				wantGetErrors = 1
			} else {
				corrupt["truncated"] = `{"id": "truncated", "verdict": {`
			}
			for key, value := range corrupt {
				if _, err := store.Create(ctx, key, []byte(value)); err != nil {
					t.Fatal(err)
				}
			}

			rc.setStatuses(200)
			d = newTestDeliverer(t, cfg, store)
			startRun(t, d)
			<-d.loaded
			if n := d.set.GetOrCreateCounter(`herd_deliver_store_errors_total{reason="decode"}`).Get(); n != uint64(len(corrupt)) {
				t.Errorf("got %d decode errors; want %d", n, len(corrupt))
			}
			if n := d.set.GetOrCreateCounter(`herd_deliver_store_errors_total{reason="get"}`).Get(); n != wantGetErrors {
				t.Errorf("got %d get errors; want %d", n, wantGetErrors)
			}
			waitStatus(t, d, v.DecisionID, "delivered")
			if got := d.Decisions(); len(got) != 1 || got[0].ID != v.DecisionID {
				var ids []string
				for _, dec := range got {
					ids = append(ids, dec.ID)
				}
				t.Errorf("got decisions %q; want only %s", ids, v.DecisionID)
			}

			list, err := ListDecisions(ctx, store)
			if len(list) != 1 || list[0].ID != v.DecisionID {
				t.Errorf("ListDecisions: got %d decisions; want only %s", len(list), v.DecisionID)
			}
			if err == nil {
				t.Fatal("ListDecisions: got nil error; want the corrupt records named")
			}
			for key := range corrupt {
				if !strings.Contains(err.Error(), key) {
					t.Errorf("ListDecisions: error %q does not name %s", err, key)
				}
			}
		})
	}
}

func TestKVReader(t *testing.T) {
	t.Parallel()
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t, natstest.Options{JetStream: true})))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	r := NewKVReader(js)
	got, err := r.Decisions(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("before the bucket exists: got %d decisions, %v; want none, no error", len(got), err)
	}
	if _, err := js.KeyValue(ctx, KVBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("the reader created the bucket (or: %v)", err)
	}

	kv, err := OpenKVStore(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDeliverer(t, Config{}, kv)
	older, newer := testVerdict(proto.StateRollback), testVerdict(proto.StatePass)
	if err := d.Decide(older); err != nil {
		t.Fatal(err)
	}
	// CreatedMs has millisecond resolution: make the second decision surely newer.
	checkFor(t, time.Second, time.Millisecond, func() error {
		if d.Decisions()[0].CreatedMs == time.Now().UnixMilli() {
			return errors.New("same millisecond")
		}
		return nil
	})
	if err := d.Decide(newer); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "junk", []byte("{")); err != nil {
		t.Fatal(err)
	}
	got, err = r.Decisions(ctx)
	if err == nil || !strings.Contains(err.Error(), "junk") {
		t.Errorf("got error %v; want one naming the corrupt record junk", err)
	}
	if len(got) != 2 || got[0].ID != newer.DecisionID || got[1].ID != older.DecisionID {
		t.Fatalf("got %+v; want %s then %s", got, newer.DecisionID, older.DecisionID)
	}
	if got[0].Verdict.State != proto.StatePass || got[0].Status != "none" {
		t.Errorf("got %s with status %q; want the stored pass decision with status none", got[0].Verdict.State, got[0].Status)
	}
}

func TestStoredDecisionsCaches(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		var next []proto.Decision
		var nextErr error
		list := func(ctx context.Context) ([]proto.Decision, error) {
			calls++
			if _, ok := ctx.Deadline(); !ok {
				t.Error("list called without a deadline")
			}
			return next, nextErr
		}
		f := StoredDecisions(list, time.Second, nil)
		dec := func(id string) []proto.Decision { return []proto.Decision{{ID: id}} }
		ids := func(ds []proto.Decision) string {
			var s []string
			for _, d := range ds {
				s = append(s, d.ID)
			}
			return strings.Join(s, ",")
		}
		step := func(name string, wait time.Duration, want string, wantCalls int) {
			t.Helper()
			time.Sleep(wait)
			if got := ids(f()); got != want || calls != wantCalls {
				t.Errorf("%s: got [%s] after %d listings; want [%s] after %d", name, got, calls, want, wantCalls)
			}
		}
		next = dec("a")
		step("first call lists", 0, "a", 1)
		next = dec("b")
		step("within the ttl: cached", 999*time.Millisecond, "a", 1)
		step("after the ttl: listed again", time.Millisecond, "b", 2)
		next, nextErr = nil, errors.New("store down")
		step("failing: the previous list stays", time.Second, "b", 3)
		step("failing: retried once per ttl only", 500*time.Millisecond, "b", 3)
		next, nextErr = dec("c"), errors.New("one corrupt record")
		step("partly failing: what was read replaces the cache", time.Second, "c", 4)
		next, nextErr = []proto.Decision{}, nil
		step("all gone", time.Second, "", 5)
	})
}
