package alert

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// floodWindow is a window of one instance of service/version ending at endMs.
func floodWindow(service, version string, endMs int64) *proto.Window {
	return &proto.Window{Service: service, Version: version, StartMs: endMs - 250, EndMs: endMs, Instances: 1}
}

// TestDetectorGroupTableFlood floods the detector with groups: a service's versions beyond
// its quota are dropped while the table has room; a full table drops new groups until some
// are idle, then they take the idle groups' places; the groups of a comparison are never
// evicted, however idle.
func TestDetectorGroupTableFlood(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxGroups, cfg.MaxVersionsPerService = 20, 4
		f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
		f.step(40, true, false, 1, 0, 0)
		f.announce()
		f.step(4, true, true, 1, 0, 0) // shop v1 and v2 are compared
		d := f.d
		for v := range 10 {
			d.AddWindow(floodWindow("flood", fmt.Sprint(v), f.nowMs))
		}
		if got := d.m.tooManyVersions.Get(); got != 6 {
			t.Fatalf("too_many_versions: got %d; want 6", got)
		}
		for i := range 15 { // 2 + 4 + 14 fill the table
			d.AddWindow(floodWindow(fmt.Sprint("one-", i), "1", f.nowMs))
		}
		d.AddWindow(floodWindow("real", "1", f.nowMs))
		if got := d.m.tooManyGroups.Get(); got != 2 {
			t.Fatalf("too_many_groups with nothing idle: got %d; want 2 (one-14, real)", got)
		}

		// Everything idles, shop included; then real takes the place of the group idle longest
		// that no comparison names (flood/0), and a flood version that of the next (flood/1).
		time.Sleep(evictIdle)
		f.nowMs += evictIdle.Milliseconds()
		d.AddWindow(floodWindow("real", "1", f.nowMs))
		d.AddWindow(floodWindow("flood", "new", f.nowMs))
		d.mu.Lock()
		for _, k := range [][2]string{{"real", "1"}, {"flood", "new"}, {"shop", "v1"}, {"shop", "v2"}} {
			if s := d.services[k[0]]; s == nil || s.groups[k[1]] == nil {
				t.Errorf("group %s/%s: not held; want held", k[0], k[1])
			}
		}
		for _, v := range []string{"0", "1"} {
			if d.services["flood"].groups[v] != nil {
				t.Errorf("group flood/%s: held; want evicted, idle longest", v)
			}
		}
		n := d.groups
		d.mu.Unlock()
		if n != cfg.MaxGroups || d.m.groupsForgotten[groupEvicted].Get() != 2 {
			t.Errorf("got %d groups, %d evicted; want %d, 2", n, d.m.groupsForgotten[groupEvicted].Get(), cfg.MaxGroups)
		}
		// Active groups stay: the one-* groups report again, flood's versions too; only
		// shop is idle, and compared, so a new group finds no room.
		for i := range 14 {
			d.AddWindow(floodWindow(fmt.Sprint("one-", i), "1", f.nowMs+250))
		}
		for _, v := range []string{"2", "3"} {
			d.AddWindow(floodWindow("flood", v, f.nowMs+250))
		}
		d.AddWindow(floodWindow("late", "1", f.nowMs+250))
		if got := d.m.tooManyGroups.Get(); got != 3 {
			t.Errorf("too_many_groups with only compared groups idle: got %d; want 3", got)
		}
		if got := d.m.groupsForgotten[groupEvicted].Get(); got != 2 {
			t.Errorf("evicted: got %d; want 2", got)
		}
		// After ten minutes without a window every group expires.
		f.d.Tick(time.UnixMilli(f.nowMs).Add(11 * time.Minute))
		if got := d.m.groupsForgotten[groupExpired].Get(); got != uint64(cfg.MaxGroups) {
			t.Errorf("expired: got %d; want %d", got, cfg.MaxGroups)
		}
		d.mu.Lock()
		if d.groups != 0 || d.lru.Len() != 0 {
			t.Errorf("after expiry: %d groups, %d in the list; want 0, 0", d.groups, d.lru.Len())
		}
		d.mu.Unlock()
	})
}

// TestDetectorAnnouncedCanaryBeyondQuota: a version beyond its service's quota is dropped,
// unless a deployment announced it as a canary.
func TestDetectorAnnouncedCanaryBeyondQuota(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxVersionsPerService = 2
		d, err := New(cfg, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		endMs := int64(1_700_000_000_000)
		for _, v := range []string{"v1", "v2", "v3"} {
			d.AddWindow(floodWindow("svc", v, endMs))
		}
		if got := d.m.tooManyVersions.Get(); got != 1 {
			t.Fatalf("too_many_versions: got %d; want 1", got)
		}
		if err := d.Announce(proto.Deployment{Service: "svc", Baseline: "v1", Canary: "v3", UnixMs: endMs}); err != nil {
			t.Fatal(err)
		}
		d.AddWindow(floodWindow("svc", "v3", endMs+250))
		d.AddWindow(floodWindow("svc", "v4", endMs+250))
		d.mu.Lock()
		defer d.mu.Unlock()
		if got := d.m.tooManyVersions.Get(); got != 2 || d.services["svc"].groups["v3"] == nil {
			t.Errorf("got %d too_many_versions, v3 held %v; want 2 (v3 before, v4), true", got, d.services["svc"].groups["v3"] != nil)
		}
	})
}

// TestDetectorOneShotGroupsMakeRoomSooner: a group that had a single window with instances
// makes room half a second later; one that had more only after evictIdle; an empty window
// never makes room.
func TestDetectorOneShotGroupsMakeRoomSooner(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxGroups = 3
		d, err := New(cfg, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		endMs := int64(1_700_000_000_000)
		d.AddWindow(floodWindow("twice", "1", endMs))
		d.AddWindow(floodWindow("once", "1", endMs))
		d.AddWindow(floodWindow("once-more", "1", endMs))
		d.AddWindow(floodWindow("twice", "1", endMs+250))
		time.Sleep(oneShotIdle)
		empty := floodWindow("empty", "1", endMs+250)
		empty.Instances = 0
		d.AddWindow(empty)
		for _, s := range []string{"new", "newer", "newest"} {
			d.AddWindow(floodWindow(s, "1", endMs+250))
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if got := d.m.tooManyGroups.Get(); got != 2 {
			t.Errorf("too_many_groups: got %d; want 2 (empty, newest)", got)
		}
		for _, s := range []string{"twice", "new", "newer"} {
			if d.services[s] == nil {
				t.Errorf("group %s/1: not held; want held", s)
			}
		}
	})
}
