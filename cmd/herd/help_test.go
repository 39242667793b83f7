package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestHelpGolden compares every command's --help with testdata/help/<command>.txt (go test
// -run TestHelpGolden -update ./cmd/herd/ rewrites them). Each default is printed once.
func TestHelpGolden(t *testing.T) {
	t.Parallel()
	names := []string{""}
	for _, c := range commands() {
		names = append(names, c.name)
	}
	names = append(names, "bench ingest", "bench load", "bench detect")
	for _, name := range names {
		args := append(strings.Fields(name), "--help")
		code, out, errOut := runHerd(t, nil, args...)
		if code != 0 || errOut != "" {
			t.Errorf("herd %s: exit %d, stderr %q; want 0 and nothing on stderr", strings.Join(args, " "), code, errOut)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Count(line, "default") > 1 {
				t.Errorf("herd %s: a default is printed twice: %q", strings.Join(args, " "), strings.TrimSpace(line))
			}
		}
		file := "top"
		if name != "" {
			file = strings.ReplaceAll(name, " ", "-")
		}
		path := filepath.Join("testdata", "help", file+".txt")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if out != string(want) {
			t.Errorf("herd %s: --help differs from %s (run with -update after checking the change):\n%s", strings.Join(args, " "), path, out)
		}
	}
}
