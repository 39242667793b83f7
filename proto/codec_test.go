package proto

import (
	"errors"
	"math"
	"reflect"
	"testing"
)

func testBatch() *Batch {
	b := &Batch{
		Service:       "checkout",
		Version:       "1.4.2",
		Instance:      [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		InstanceStart: 1_790_000_000_000_000_000,
		Seq:           42,
		Start:         1_790_000_001_000_000_000,
		End:           1_790_000_001_250_000_000,
		Series: []Series{
			{Name: SeriesRequests, Kind: KindCounter, Value: 120},
			{Name: SeriesErrors, Labels: []Label{{"code", "500"}, {"route", "/pay"}}, Kind: KindCounter, Value: 3},
			{Name: "inflight", Kind: KindGauge, Value: -2.5},
		},
	}
	var h Histogram
	for _, v := range []float64{0.001, 0.0012, 0.002, 0.25, 0.25, 3, 0} {
		h.Observe(v, 1)
	}
	h.Observe(-1, 2)
	b.Series = append(b.Series, Series{Name: SeriesLatency, Kind: KindHistogram, Hist: h})
	return b
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, final := range []bool{false, true} {
		in := testBatch()
		in.Final = final
		var e Encoder
		data, err := e.Append(nil, in)
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		var d Decoder
		var out Batch
		if err := d.Decode(data, &out); err != nil {
			t.Fatalf("Decode: %v", err)
		}
		// Dense bucket runs decode to the same dense form.
		if !reflect.DeepEqual(in, &out) {
			t.Fatalf("round trip changed the batch:\n got %+v\nwant %+v", out, *in)
		}
	}
}

func TestDecodeRefusals(t *testing.T) {
	t.Parallel()
	var e Encoder
	good, err := e.Append(nil, testBatch())
	if err != nil {
		t.Fatal(err)
	}
	future := append([]byte(nil), good...)
	future[2] = FormatVersion + 1
	cases := map[string][]byte{
		"truncated":       good[:len(good)/2],
		"bad_magic":       append([]byte("xx"), good[2:]...),
		"unknown_version": future,
		"oversized":       make([]byte, MaxBatchBytes+1),
		"trailing_bytes":  append(append([]byte(nil), good...), 0),
	}
	for want, data := range cases {
		var d Decoder
		var b Batch
		err := d.Decode(data, &b)
		var de *DecodeError
		if !errors.As(err, &de) || de.Reason != want {
			t.Errorf("%s: got error %v; want reason %s", want, err, want)
		}
	}
	// Every prefix of a good batch is refused, never accepted or panicking.
	for n := range len(good) {
		var d Decoder
		var b Batch
		if err := d.Decode(good[:n], &b); err == nil {
			t.Fatalf("prefix of %d bytes decoded without error", n)
		}
	}
}

func TestHistogramQuantileMatchesSketch(t *testing.T) {
	t.Parallel()
	s := NewSketch()
	var h Histogram
	sum := 0.0
	for i := 1; i <= 1000; i++ {
		v := float64(i) / 1000
		s.Add(v)
		h.Observe(v, 1)
		sum += v
	}
	var fromSketch Histogram
	fromSketch.FromSketch(s, sum)
	if !reflect.DeepEqual(fromSketch, h) {
		t.Fatalf("FromSketch differs from Observe")
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
		want, _ := s.GetValueAtQuantile(q)
		if got := h.Quantile(q); math.Abs(got-want) > 1e-12 {
			t.Errorf("Quantile(%v) = %v; want %v", q, got, want)
		}
	}
}

func TestVersionEscaping(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"1.4.2", "2026-11-26.3", "v2", "V2_rc+build.7", "a_2e"} {
		tok, err := EscapeVersion(v)
		if err != nil {
			t.Fatalf("EscapeVersion(%q): %v", v, err)
		}
		if err := ValidService(tok); err != nil && tok[0] != '_' {
			t.Errorf("token %q of %q is not a plain subject token: %v", tok, v, err)
		}
		back, err := UnescapeVersion(tok)
		if err != nil || back != v {
			t.Errorf("UnescapeVersion(%q) = %q, %v; want %q", tok, back, err, v)
		}
	}
	if tok, _ := EscapeVersion("1.4.2"); tok != "1_2e4_2e2" {
		t.Errorf("EscapeVersion(1.4.2) = %q; want 1_2e4_2e2", tok)
	}
	for _, bad := range []string{"", "has space", "tab\t", string(make([]byte, 65))} {
		if _, err := EscapeVersion(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("EscapeVersion(%q) = %v; want ErrBadToken", bad, err)
		}
	}
	for _, bad := range []string{"1_2", "1_zz", "1_61", "A", "1.2"} {
		if _, err := UnescapeVersion(bad); err == nil {
			t.Errorf("UnescapeVersion(%q) accepted", bad)
		}
	}
}
