package main

import (
	"io"
	"log/slog"
	"testing"
)

// testLogger logs to the test's output with -v and nowhere otherwise.
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
