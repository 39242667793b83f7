package web

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/herd-dev/herd/proto"
)

// event is one numbered message of the stream, encoded once and shared by every client.
type event struct {
	seq     uint64
	service string
	at      time.Time
	data    []byte // one JSON object, no trailing newline
}

// maxReplayEvents bounds the replay ring whatever Config.Replay says.
const maxReplayEvents = 1 << 16

// replayRing keeps the most recent events, at most max of them and none older than age, so
// a client reconnecting with ?since= resumes without a gap.
type replayRing struct {
	max  int
	age  time.Duration
	buf  []event
	head int
	n    int
}

func (r *replayRing) add(e event, now time.Time) {
	if r.age <= 0 || r.max <= 0 {
		return
	}
	if r.n == r.max {
		*r.at(0) = event{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	if r.n == len(r.buf) {
		nb := make([]event, min(max(2*len(r.buf), 64), r.max))
		for i := range r.n {
			nb[i] = *r.at(i)
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
	r.expire(now)
}

func (r *replayRing) at(i int) *event { return &r.buf[(r.head+i)%len(r.buf)] }

// expire drops events older than age.
func (r *replayRing) expire(now time.Time) {
	cutoff := now.Add(-r.age)
	for r.n > 0 && r.at(0).at.Before(cutoff) {
		*r.at(0) = event{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
}

// since returns the kept events after seq for service ("" = all), and false when the ring
// no longer holds every event after seq (the client must start over from a snapshot).
// last is the newest sequence number assigned.
func (r *replayRing) since(seq, last uint64, service string) ([][]byte, bool) {
	if seq > last {
		return nil, false // a sequence from another server life
	}
	if seq == last {
		return nil, true
	}
	if r.n == 0 || r.at(0).seq > seq+1 {
		return nil, false
	}
	var out [][]byte
	for i := range r.n {
		e := r.at(i)
		if e.seq > seq && (service == "" || e.service == service) {
			out = append(out, e.data)
		}
	}
	return out, true
}

// appendString appends s as a JSON string. Service and version tokens are printable ASCII,
// so escaping quotes, backslashes and control bytes is enough; other bytes pass through.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// encodeWindowEvent encodes {"type":"window","seq":N,"service":S,"version":V,"p":[…]}.
func encodeWindowEvent(seq uint64, service, version string, p *point) []byte {
	b := make([]byte, 0, 192)
	b = append(b, `{"type":"window","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"service":`...)
	b = appendString(b, service)
	b = append(b, `,"version":`...)
	b = appendString(b, version)
	b = append(b, `,"p":`...)
	b = p.appendJSON(b)
	return append(b, '}')
}

// encodeSignalsEvent encodes {"type":"signals","seq":N,"service":S,"signals":{…}}: the
// service's signal definition changed (a profile was detected).
func encodeSignalsEvent(seq uint64, sv *service) []byte {
	b, _ := json.Marshal(struct {
		Type    string         `json:"type"`
		Seq     uint64         `json:"seq"`
		Service string         `json:"service"`
		Signals SignalsSummary `json:"signals"`
	}{"signals", seq, sv.name, signalsSummary(sv)})
	return b
}

func encodeVerdictEvent(seq uint64, v *proto.Verdict) []byte {
	b, _ := json.Marshal(struct {
		Type    string         `json:"type"`
		Seq     uint64         `json:"seq"`
		Verdict *proto.Verdict `json:"verdict"`
	}{"verdict", seq, v})
	return b
}

func encodeDeploymentEvent(seq uint64, d *proto.Deployment) []byte {
	b, _ := json.Marshal(struct {
		Type       string            `json:"type"`
		Seq        uint64            `json:"seq"`
		Deployment *proto.Deployment `json:"deployment"`
	}{"deployment", seq, d})
	return b
}

// snapshot is the state a client starts from, copied under Server.mu.
type snapshot struct {
	seq       uint64
	reset     bool
	nowMs     int64
	historyMs int64
	service   string
	services  []snapService
}

type snapService struct {
	name        string
	signals     SignalsSummary
	groups      []snapGroup
	verdicts    []proto.Verdict
	deployments []proto.Deployment
}

type snapGroup struct {
	version string
	points  []point
}

// snapshotLocked copies the state of service ("" = all) with points newer than historyMs.
// The caller holds s.mu (read or write).
func (s *Server) snapshotLocked(only string, historyMs int64, now time.Time) snapshot {
	sn := snapshot{seq: s.seq, nowMs: now.UnixMilli(), historyMs: historyMs, service: only}
	since := sn.nowMs - historyMs
	add := func(sv *service) {
		ss := snapService{name: sv.name, signals: signalsSummary(sv),
			verdicts:    stampAges(append([]proto.Verdict(nil), sv.verdicts...), now),
			deployments: append([]proto.Deployment(nil), sv.deployments...)}
		for _, g := range sv.sortedGroups() {
			ss.groups = append(ss.groups, snapGroup{version: g.version, points: g.ring.since(nil, since)})
		}
		sn.services = append(sn.services, ss)
	}
	if only != "" {
		if sv := s.services[only]; sv != nil {
			add(sv)
		}
		return sn
	}
	for _, name := range sortedKeys(s.services) {
		add(s.services[name])
	}
	return sn
}

// encode writes the snapshot message:
//
//	{"type":"snapshot","seq":N,"reset":B,"now_unix_ms":T,"window_ms":W,"history_ms":H,
//	 "service":S,"fields":[…],"services":[{"service":S,"signals":{…},
//	 "groups":[{"version":V,"points":[[…]…]}],"verdicts":[…],"deployments":[…]}]}
func (sn *snapshot) encode(windowMs int64) []byte {
	b := make([]byte, 0, 4096)
	b = append(b, `{"type":"snapshot","seq":`...)
	b = strconv.AppendUint(b, sn.seq, 10)
	b = append(b, `,"reset":`...)
	b = strconv.AppendBool(b, sn.reset)
	b = append(b, `,"now_unix_ms":`...)
	b = strconv.AppendInt(b, sn.nowMs, 10)
	b = append(b, `,"window_ms":`...)
	b = strconv.AppendInt(b, windowMs, 10)
	b = append(b, `,"history_ms":`...)
	b = strconv.AppendInt(b, sn.historyMs, 10)
	b = append(b, `,"service":`...)
	b = appendString(b, sn.service)
	b = append(b, `,"fields":`...)
	f, _ := json.Marshal(pointFields)
	b = append(b, f...)
	b = append(b, `,"services":[`...)
	for i, sv := range sn.services {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"service":`...)
		b = appendString(b, sv.name)
		b = append(b, `,"signals":`...)
		b = appendJSON(b, sv.signals)
		b = append(b, `,"groups":[`...)
		for j, g := range sv.groups {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"version":`...)
			b = appendString(b, g.version)
			b = append(b, `,"points":[`...)
			for k := range g.points {
				if k > 0 {
					b = append(b, ',')
				}
				b = g.points[k].appendJSON(b)
			}
			b = append(b, "]}"...)
		}
		b = append(b, `],"verdicts":`...)
		b = appendJSON(b, nonNil(sv.verdicts))
		b = append(b, `,"deployments":`...)
		b = appendJSON(b, nonNil(sv.deployments))
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

func appendJSON(b []byte, v any) []byte {
	j, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, j...)
}

func nonNil[T any](xs []T) []T {
	if xs == nil {
		return []T{}
	}
	return xs
}
