package proto

import (
	"bytes"
	"testing"
)

// FuzzDecode checks that Decode never panics, and that whatever it accepts re-encodes to a
// batch that decodes to the same content.
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
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Decoder
		var b Batch
		if err := d.Decode(data, &b); err != nil {
			if Reason(err) == "other" {
				t.Fatalf("decode error without a reason: %v", err)
			}
			return
		}
		var e Encoder
		again, err := e.Append(nil, &b)
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
