package deliver

import (
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	for _, kind := range []string{"file", "jetstream-kv"} {
		t.Run(kind, func(t *testing.T) {
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

		})
	}
}
