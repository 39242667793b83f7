package otlp

import (
	"fmt"
	"math"
	"slices"

	"github.com/herd-dev/herd/proto"
)

// emit publishes the staged points of an instance: one batch per timestamp, in order. A
// batch covers [end of the instance's previous batch, timestamp); the first one starts at
// its points' start time.
func (r *Receiver) emit(w *work, in *instance) {
	if len(w.staged) == 0 {
		return
	}
	slices.SortStableFunc(w.staged, func(a, b staged) int { return cmpInt64(a.t, b.t) })
	for lo := 0; lo < len(w.staged); {
		hi := lo + 1
		for hi < len(w.staged) && w.staged[hi].t == w.staged[lo].t {
			hi++
		}
		r.publishBatch(w, in, w.staged[lo:hi])
		lo = hi
	}
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// publishBatch encodes and publishes one batch of points sharing a timestamp.
func (r *Receiver) publishBatch(w *work, in *instance, pts []staged) {
	end := pts[0].t
	start := int64(math.MaxInt64)
	for _, p := range pts {
		if p.start > 0 && p.start < start {
			start = p.start
		}
	}
	switch {
	case in.lastEnd > 0 && in.lastEnd < end:
		start = in.lastEnd
	case start >= end:
		start = end - 1
	}
	if end-start > proto.MaxInterval {
		start = end - proto.MaxInterval
	}
	if in.start == 0 {
		in.start = start
	}
	in.lastEnd = max(in.lastEnd, end)
	b := &w.batch
	b.Service, b.Version, b.Instance, b.InstanceStart = in.service, in.version, in.id, in.start
	b.Seq, b.Start, b.End, b.Final = in.seq, start, end, false
	in.seq++
	b.Series = b.Series[:0]
	clear(w.edgeIdx)
	points := 0
	for i := range pts {
		p := &pts[i]
		if !p.extra {
			points++
		}
		if p.s.Kind == 0 {
			continue
		}
		if p.edge {
			// Points of several client series (status codes, methods …) that name one
			// callee add up to one edge series.
			w.key = append(append(append(w.key[:0], p.s.Name...), 0xff), p.s.Labels[0].Value...)
			if j, ok := w.edgeIdx[string(w.key)]; ok {
				if p.s.Kind == proto.KindCounter {
					b.Series[j].Value += p.s.Value
				} else if !b.Series[j].Hist.Merge(&p.s.Hist) {
					r.unaccept(w, ReasonBadHistogram, 1, in, fmt.Errorf("%s: the edge's buckets exceed herd's range", clip(proto.SeriesString(p.s.Name, p.s.Labels))))
				}
				continue
			}
			w.edgeIdx[string(w.key)] = len(b.Series)
		}
		b.Series = append(b.Series, p.s)
	}
	var err error
	w.buf, err = w.enc.Append(w.buf[:0], b)
	if err != nil {
		r.unaccept(w, ReasonEncode, points, in, fmt.Errorf("cannot encode batch of %s/%s: %w", in.service, in.version, err))
		return
	}
	if err := r.publish(in.subject, w.buf); err != nil {
		r.unaccept(w, ReasonPublish, points, in, fmt.Errorf("cannot publish batch on %s: %w", in.subject, err))
		return
	}
	r.m.batches.Inc()
}

// unaccept turns n accepted points into refused ones.
func (r *Receiver) unaccept(w *work, reason string, n int, in *instance, err error) {
	w.res.Accepted -= int64(n)
	r.refuse(w, reason, n, in.service, err)
}
