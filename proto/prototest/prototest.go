// Package prototest builds hostile agent batches for tests: encodings that proto.Encoder
// refuses to write but that anyone who can publish on herd.in.> can send. They are written by
// hand, following docs/wire-format.md.
package prototest

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/herd-dev/herd/proto"
)

// FarSpans returns an encoded batch with the header of tmpl (service, version, instance,
// instance start, sequence, interval, final flag; tmpl's series are ignored) whose series are
// histograms with two one-bucket spans proto.MaxBuckets-1 buckets apart on each side: a few
// dozen bytes on the wire that decode to 2 × proto.MaxBuckets dense buckets each. Series are
// added, each with its own label set, until the batch is about size bytes long or holds
// proto.MaxSeries series. A decoder that fills the gaps without counting them allocates about
// 128 KiB per series.
func FarSpans(tmpl *proto.Batch, size int) []byte {
	// Label values: two labels of 64 values each name 4096 distinct series with 128 strings.
	const values = 64
	strs := []string{tmpl.Service, tmpl.Version, "far_spans_seconds", "a", "b"}
	const (
		sService, sVersion, sName, sLabelA, sLabelB = 0, 1, 2, 3, 4
		sValues                                     = 5
	)
	for i := range values {
		strs = append(strs, fmt.Sprintf("v%02d", i))
	}

	// One series, as appended for series number k; pad more buckets in each side's first
	// span, to reach size with at most MaxSeries series.
	appendSeries := func(dst []byte, k, pad int) []byte {
		dst = binary.AppendUvarint(dst, sName)
		dst = binary.AppendUvarint(dst, 2)
		dst = binary.AppendUvarint(dst, sLabelA)
		dst = binary.AppendUvarint(dst, uint64(sValues+k/values))
		dst = binary.AppendUvarint(dst, sLabelB)
		dst = binary.AppendUvarint(dst, uint64(sValues+k%values))
		dst = append(dst, byte(proto.KindHistogram))
		dst = binary.AppendUvarint(dst, uint64(2*(pad+2))) // count: every bucket holds 1
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(0))
		dst = binary.AppendUvarint(dst, 0) // zero count
		for range 2 {                      // positive, then negative side
			dst = binary.AppendUvarint(dst, 2)                  // spans
			dst = binary.AppendVarint(dst, -proto.MaxBuckets/2) // first span's absolute offset
			dst = binary.AppendUvarint(dst, uint64(pad+1))      // length
			dst = binary.AppendVarint(dst, 1)                   // count 1, then deltas 0
			for range pad {
				dst = binary.AppendVarint(dst, 0)
			}
			dst = binary.AppendVarint(dst, int64(proto.MaxBuckets-2-pad)) // empty buckets before span 2
			dst = binary.AppendUvarint(dst, 1)                            // length
			dst = binary.AppendVarint(dst, 0)                             // count 1
		}
		return dst
	}

	head := []byte{'h', 'b', proto.FormatVersion, 0}
	if tmpl.Final {
		head[3] = 1
	}
	head = append(head, tmpl.Instance[:]...)
	head = binary.AppendVarint(head, tmpl.InstanceStart)
	head = binary.AppendUvarint(head, tmpl.Seq)
	head = binary.AppendVarint(head, tmpl.Start)
	head = binary.AppendUvarint(head, uint64(tmpl.End-tmpl.Start))
	head = binary.AppendUvarint(head, uint64(len(strs)))
	for _, s := range strs {
		head = binary.AppendUvarint(head, uint64(len(s)))
		head = append(head, s...)
	}
	head = binary.AppendUvarint(head, sService)
	head = binary.AppendUvarint(head, sVersion)

	const maxN = min(proto.MaxSeries, values*values)
	base := len(appendSeries(nil, maxN-1, 0))
	pad := 0
	if room := size - len(head) - 3; room > maxN*base {
		pad = min((room/maxN-base)/2, 100)
	}
	per := len(appendSeries(nil, maxN-1, pad))
	var body []byte
	n := 0
	for n < maxN && len(head)+len(body)+per+3 <= size {
		body = appendSeries(body, n, pad)
		n++
	}
	out := binary.AppendUvarint(head, uint64(n))
	return append(out, body...)
}
