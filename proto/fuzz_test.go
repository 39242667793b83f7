package proto

import (
	"bytes"
	"encoding/binary"
	"math"
	"runtime"
	"testing"
)

// allocated returns the bytes allocated on the heap while f runs.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// farSpans returns a batch of n histograms, each with two one-bucket spans MaxBuckets-1
// buckets apart on its positive side (package prototest builds larger ones for other
// packages' tests).
func farSpans(n int) []byte {
	data := []byte{'h', 'b', FormatVersion, 0}
	data = append(data, make([]byte, 16)...)
	data = binary.AppendVarint(data, 1)  // instance start
	data = binary.AppendUvarint(data, 0) // seq
	data = binary.AppendVarint(data, 1)  // start
	data = binary.AppendUvarint(data, 1) // length
	data = binary.AppendUvarint(data, 3)
	for _, s := range []string{"a", "1", "x"} {
		data = binary.AppendUvarint(data, uint64(len(s)))
		data = append(data, s...)
	}
	data = append(data, 0, 1) // service, version
	data = binary.AppendUvarint(data, uint64(n))
	for range n {
		data = append(data, 2, 0, byte(KindHistogram), 2)
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(0))
		data = append(data, 0, 2) // zero count, positive spans
		data = binary.AppendVarint(data, 0)
		data = append(data, 1, 2) // length 1, count 1
		data = binary.AppendVarint(data, MaxBuckets-2)
		data = append(data, 1, 0, 0) // length 1, count 1, no negative spans
	}
	return data
}

// FuzzDecode checks that Decode never panics, that it allocates no more than
// DecodeAllocPerByte × len(data) + DecodeAllocBase bytes, and that whatever it accepts
// re-encodes to a batch that decodes to the same content.
func FuzzDecode(f *testing.F) {
	var e Encoder
	good, err := e.Append(nil, testBatch())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Add([]byte("hb\x01\x00"))
	f.Add([]byte("hb\x02\x00garbage"))
	empty, _ := e.Append(nil, &Batch{Service: "a", Version: "1", Start: 1, End: 2})
	f.Add(empty)
	f.Add(farSpans(3))
	f.Add(farSpans(40))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Decoder
		var b Batch
		var err error
		alloc := allocated(func() { err = d.Decode(data, &b) })
		if limit := uint64(DecodeAllocPerByte*len(data) + DecodeAllocBase); alloc > limit {
			t.Fatalf("decoding %d bytes allocated %d bytes; want at most %d (err %v)", len(data), alloc, limit, err)
		}
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("decode error without a reason: %v", err)
			}
			return
		}
		var e Encoder
		again, err := e.Append(nil, &b)
		if Reason(err) == "histogram_span" {
			// The canonical encoding can be shorter than data (zero counts written out),
			// and so have a smaller bucket budget.
			return
		}
		if err != nil {
			t.Fatalf("decoded batch does not re-encode: %v", err)
		}
		var b2 Batch
		if err := d.Decode(again, &b2); err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		var e2 Encoder
		third, _ := e2.Append(nil, &b2)
		if !bytes.Equal(again, third) {
			t.Fatalf("encoding is not stable after a round trip")
		}
	})
}

// FuzzUnmarshalWindow checks that UnmarshalWindow never panics, and that a window it accepts
// encodes to JSON it accepts again, stable from then on.
func FuzzUnmarshalWindow(f *testing.F) {
	good, err := MarshalWindow(testWindow())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"service":"a","version":"1","series":[{"name":"x","kind":"histogram","hist":{"count":1,"zero":1}}]}`))
	f.Add([]byte(`{"service":"a","version":"1","series":[{"name":"x"}]}`))
	f.Add([]byte(`{"service":"a","version":"1","halves":[[],[{"name":"x","kind":"gauge","labels":{"b":"2","a":"1"}}]]}`))
	f.Add([]byte(`{"service":"a","version":"1","series":[{"name":"x","hist":{"count":1,"positive":{"offset":-2147483648,"counts":[1]}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		w, err := UnmarshalWindow(data)
		if err != nil {
			return
		}
		roundTrip(t, w, MarshalWindow, UnmarshalWindow)
	})
}

// FuzzUnmarshalVerdict checks that UnmarshalVerdict never panics, and that a verdict it
// accepts encodes to JSON it accepts again, stable from then on.
func FuzzUnmarshalVerdict(f *testing.F) {
	good, err := MarshalVerdict(testVerdict())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/3])
	f.Add([]byte(`{"service":"a","state":"pass","evidence":{"tests":null}}`))
	f.Add([]byte(`{"service":"a","evidence":{"e_value":1e308,"tests":[{"name":"\u00ff"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := UnmarshalVerdict(data)
		if err != nil {
			return
		}
		roundTrip(t, v, MarshalVerdict, UnmarshalVerdict)
	})
}

// FuzzUnmarshalDeployment checks that UnmarshalDeployment never panics, that what it accepts
// is valid, and that it encodes to JSON it accepts again, stable from then on.
func FuzzUnmarshalDeployment(f *testing.F) {
	f.Add([]byte(`{"service":"checkout","baseline":"1.4.1","canary":"1.4.2","unix_ms":1700000000000}`))
	f.Add([]byte(`{"service":"checkout","baseline":"1.4.1","canary":"1.4.1"}`))
	f.Add([]byte(`{"service":"checkout","baseline":"v1","canary":"v2","extra":[1,2,3]}`))
	f.Add([]byte(`{"service":"checkout","baseline":"v1","canary":"v2","unix_ms":-1}`))
	f.Add([]byte(`{"service":`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := UnmarshalDeployment(data)
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("accepted an invalid deployment %+v: %v", d, err)
		}
		roundTrip(t, d, MarshalDeployment, UnmarshalDeployment)
	})
}

// roundTrip checks that v, just decoded, encodes to data that decodes and encodes to the
// same bytes again.
func roundTrip[T any](t *testing.T, v *T, marshal func(*T) ([]byte, error), unmarshal func([]byte) (*T, error)) {
	t.Helper()
	again, err := marshal(v)
	if err != nil {
		t.Fatalf("decoded value does not encode: %v", err)
	}
	v2, err := unmarshal(again)
	if err != nil {
		t.Fatalf("encoded value %s does not decode: %v", again, err)
	}
	third, err := marshal(v2)
	if err != nil {
		t.Fatalf("re-decoded value does not encode: %v", err)
	}
	if !bytes.Equal(again, third) {
		t.Fatalf("encoding is not stable after a round trip:\n%s\n%s", again, third)
	}
}
