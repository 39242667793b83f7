package deliver

import (
	"encoding/json"
	"testing"

	"github.com/herd-dev/herd/proto"
)

// FuzzDecodeRecord checks that decoding a stored decision record never panics, and that what
// it accepts is the record of its key with known target states.
func FuzzDecodeRecord(f *testing.F) {
	v := testVerdict(proto.StateRollback)
	v.DecisionID = "k"
	good, err := json.Marshal(&record{Decision: proto.Decision{ID: "k", Verdict: v, Status: "delivering"},
		Targets: []TargetState{{Target: "webhook:https://deploy.example/hook", Kind: KindWebhook, State: statePending}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	for _, s := range corruptRecords {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord("k", data)
		if err != nil {
			return
		}
		if r.ID != "k" {
			t.Fatalf("accepted a record of %q for key k", r.ID)
		}
		for _, ts := range r.Targets {
			switch ts.State {
			case statePending, stateSending, stateDone, stateSkipped, stateFailed, stateUnknown:
			default:
				t.Fatalf("accepted target state %q", ts.State)
			}
		}
	})
}
