package web

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// TestGroupTableFlood floods the dashboard with groups: a service's versions beyond its quota
// are refused while the table has room; a full table refuses new groups until some are idle,
// then they take the idle groups' places; the groups of a pending comparison keep their
// charts, however idle.
func TestGroupTableFlood(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxGroups, cfg.MaxVersionsPerService = 20, 4
		srv, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		add := func(service, version string) {
			srv.apply(input{w: window(service, version, time.Now().UnixMilli(), 1)})
		}
		add("shop", "v1")
		add("shop", "v2")
		srv.apply(input{v: &proto.Verdict{Service: "shop", Baseline: "v1", Canary: "v2", State: proto.StatePending}})
		for v := range 10 {
			add("flood", fmt.Sprint(v))
		}
		if got := srv.m.inputsRefused[ReasonTooManyVersions].Get(); got != 6 {
			t.Fatalf("too_many_versions: got %d; want 6", got)
		}
		for i := range 15 { // 2 + 4 + 14 fill the table
			add(fmt.Sprint("one-", i), "1")
		}
		add("real", "1")
		if got := srv.m.inputsRefused[ReasonMaxGroups].Get(); got != 2 {
			t.Fatalf("max_groups with nothing idle: got %d; want 2 (one-14, real)", got)
		}
		// Everything idles; then real takes the place of the group idle longest that no
		// pending verdict names (flood/0), and a flood version that of flood/1.
		time.Sleep(evictIdle)
		add("real", "1")
		add("flood", "new")
		for _, k := range [][2]string{{"real", "1"}, {"flood", "new"}, {"shop", "v1"}, {"shop", "v2"}} {
			if sv := srv.services[k[0]]; sv == nil || sv.groups[k[1]] == nil {
				t.Errorf("group %s/%s: not held; want held", k[0], k[1])
			}
		}
		for _, v := range []string{"0", "1"} {
			if srv.services["flood"].groups[v] != nil {
				t.Errorf("group flood/%s: held; want evicted, idle longest", v)
			}
		}
		if srv.ngroups != cfg.MaxGroups || srv.m.groupsEvicted[groupIdle].Get() != 2 {
			t.Errorf("got %d groups, %d evicted; want %d, 2", srv.ngroups, srv.m.groupsEvicted[groupIdle].Get(), cfg.MaxGroups)
		}
		// Once shop's comparison is final, its idle groups make room too.
		srv.apply(input{v: &proto.Verdict{Service: "shop", Baseline: "v1", Canary: "v2", State: proto.StatePass}})
		time.Sleep(time.Millisecond)
		for i := range 14 {
			add(fmt.Sprint("one-", i), "1")
		}
		add("flood", "2")
		add("flood", "3")
		add("late", "1")
		if srv.services["shop"].groups["v1"] != nil || srv.services["late"].groups["1"] == nil {
			t.Errorf("after shop's verdict: shop/v1 held %v, late held %v; want false, true",
				srv.services["shop"].groups["v1"] != nil, srv.services["late"] != nil)
		}
		if srv.lru.Len() != srv.ngroups {
			t.Errorf("list holds %d groups; want %d", srv.lru.Len(), srv.ngroups)
		}
	})
}

// TestRingGrowsAsItFills checks that a ring holds memory for the points it holds, up to its
// size, and keeps its order once full.
func TestRingGrowsAsItFills(t *testing.T) {
	t.Parallel()
	r := newRing(3600)
	r.add(point{EndMs: 1})
	if cap(r.buf) > 16 {
		t.Errorf("one point: capacity %d; want at most 16", cap(r.buf))
	}
	for i := range 5000 {
		r.add(point{EndMs: int64(i + 2)})
	}
	if r.n != 3600 || cap(r.buf) != 3600 || r.at(0).EndMs != 5001-3600+1 || r.last().EndMs != 5001 {
		t.Errorf("got n %d, capacity %d, oldest %d, newest %d; want 3600, 3600, %d, 5001",
			r.n, cap(r.buf), r.at(0).EndMs, r.last().EndMs, 5001-3600+1)
	}
}

// TestOneShotGroupsMakeRoomSooner: a group that had a single window with instances makes room
// half a second later; one that had more only after evictIdle; an empty window never makes
// room.
func TestOneShotGroupsMakeRoomSooner(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxGroups = 3
		srv, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		endMs := int64(1_700_000_000_000)
		add := func(service string, endMs int64, instances int) {
			w := window(service, "1", endMs, 1)
			w.Instances = instances
			srv.apply(input{w: w})
		}
		add("twice", endMs, 1)
		add("once", endMs, 1)
		add("once-more", endMs, 1)
		add("twice", endMs+250, 1)
		time.Sleep(oneShotIdle)
		add("empty", endMs+250, 0)
		for _, s := range []string{"new", "newer", "newest"} {
			add(s, endMs+250, 1)
		}
		if got := srv.m.inputsRefused[ReasonMaxGroups].Get(); got != 2 {
			t.Errorf("max_groups: got %d; want 2 (empty, newest)", got)
		}
		for _, s := range []string{"twice", "new", "newer"} {
			if sv := srv.services[s]; sv == nil || sv.groups["1"] == nil {
				t.Errorf("group %s/1: not held; want held", s)
			}
		}
	})
}
