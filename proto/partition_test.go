package proto

import (
	"fmt"
	"hash/fnv"
	"testing"
)

// TestPartitionOfPinned pins the hash to values computed by hand from the FNV-1a definition,
// so that the mapping checks elsewhere do not merely compare the function with itself.
func TestPartitionOfPinned(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		service, version string
		want             int
	}{
		{"", "", 5},   // the offset basis 2166136261 mod 64
		{"a", "", 44}, // FNV-1a("a") = 0xe40c292c; 0x2c = 44
		{"", "a", 44}, // the tokens are joined without a separator
	} {
		if got := PartitionOf(tc.service, tc.version); got != tc.want {
			t.Errorf("PartitionOf(%q, %q) = %d; want %d", tc.service, tc.version, got, tc.want)
		}
	}
	if a, b := PartitionOf("ab", "c"), PartitionOf("a", "bc"); a != b {
		t.Errorf("PartitionOf(ab, c) = %d, PartitionOf(a, bc) = %d; want equal", a, b)
	}
}

// TestPartitionOfMatchesFNV compares PartitionOf with the standard library's FNV-1a over
// many groups and checks that the groups spread over the partitions.
func TestPartitionOfMatchesFNV(t *testing.T) {
	t.Parallel()
	seen := map[int]bool{}
	for i := range 1000 {
		svc := fmt.Sprintf("svc-%d", i%37)
		tok, err := EscapeVersion(fmt.Sprintf("1.%d.%d", i/37, i))
		if err != nil {
			t.Fatal(err)
		}
		h := fnv.New32a()
		h.Write([]byte(svc + tok))
		want := int(h.Sum32() % Partitions)
		got := PartitionOf(svc, tok)
		if got != want {
			t.Fatalf("PartitionOf(%q, %q) = %d; want %d", svc, tok, got, want)
		}
		if got < 0 || got >= Partitions {
			t.Fatalf("PartitionOf(%q, %q) = %d; want in [0, %d)", svc, tok, got, Partitions)
		}
		seen[got] = true
	}
	if len(seen) != Partitions {
		t.Errorf("got %d distinct partitions for 1000 groups; want all %d", len(seen), Partitions)
	}
}

func TestPartitionSubjects(t *testing.T) {
	t.Parallel()
	if got, want := PartitionSubject(17), "herd.p.17.>"; got != want {
		t.Errorf("PartitionSubject(17) = %q; want %q", got, want)
	}
	if got, want := PartitionSubjectPrefix(17), "herd.p.17."; got != want {
		t.Errorf("PartitionSubjectPrefix(17) = %q; want %q", got, want)
	}
	if SubjectPartitionAll != "herd.p.>" {
		t.Errorf("SubjectPartitionAll = %q; want herd.p.>", SubjectPartitionAll)
	}
	// A partition subject parses as a group subject once its prefix is removed.
	subj := PartitionSubjectPrefix(PartitionOf("checkout", "1_2e4_2e2")) + "checkout.1_2e4_2e2"
	svc, ver, err := ParseGroupSubject(PartitionSubjectPrefix(PartitionOf("checkout", "1_2e4_2e2")), subj)
	if err != nil || svc != "checkout" || ver != "1.4.2" {
		t.Errorf("ParseGroupSubject(%q) = %q, %q, %v; want checkout, 1.4.2, nil", subj, svc, ver, err)
	}
}

func ExamplePartitionOf() {
	tok, _ := EscapeVersion("1.4.2")
	p := PartitionOf("checkout", tok)
	fmt.Println(PartitionSubjectPrefix(p) + "checkout." + tok)
	fmt.Println(PartitionSubject(p))
	// Output:
	// herd.p.26.checkout.1_2e4_2e2
	// herd.p.26.>
}

func BenchmarkPartitionOf(b *testing.B) {
	b.ReportAllocs()
	n := 0
	for range b.N {
		n += PartitionOf("checkout", "1_2e4_2e2")
	}
	_ = n
}
