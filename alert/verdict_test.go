package alert

import (
	"testing"

	"github.com/google/uuid"

	"github.com/herd-dev/herd/proto"
)

func TestDecisionIDDeterministic(t *testing.T) {
	t.Parallel()
	a := decisionID("checkout", "1.4.2", "1.5.0", 1795656982750, proto.StateRollback)
	if b := decisionID("checkout", "1.4.2", "1.5.0", 1795656982750, proto.StateRollback); a != b {
		t.Errorf("same comparison gave ids %s and %s; want equal", a, b)
	}
	for _, other := range []string{
		decisionID("checkout", "1.4.2", "1.5.0", 1795656982750, proto.StatePass),
		decisionID("checkout", "1.4.2", "1.5.0", 1795656983000, proto.StateRollback),
		decisionID("checkout", "1.4.2", "1.5.1", 1795656982750, proto.StateRollback),
	} {
		if other == a {
			t.Errorf("different comparisons share id %s", a)
		}
	}
	if _, err := uuid.Parse(a); err != nil {
		t.Errorf("id %q is not a UUID: %v", a, err)
	}
}
