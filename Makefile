# herd's everyday targets. `make test` is what CI runs (see .ci/run).
GO      ?= go
PKGS    ?= ./...
BENCH   ?= .
FUZZTIME ?= 30s

.PHONY: build test test-short bench fuzz vet screenshots clean

build:
	$(GO) build -o bin/herd ./cmd/herd

vet:
	$(GO) vet $(PKGS)

# The README's test command: every test, with the race detector. Packages run one at a time:
# the real-time tests (NATS clusters, fleets, the browser) measure latencies that another
# package's tests on the same two cores would disturb.
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -p 1 -timeout 20m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

# Benchmarks of every hot path; compare runs with benchstat (see docs/BENCHMARKS.md).
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -count=6 ./proto ./ingest ./rollup | tee bench.txt

# Run every fuzz target of PKGS, one after the other, each for FUZZTIME (go test fuzzes one
# target per run). Packages without a Fuzz function in their tests are skipped unlisted.
fuzz:
	@set -e; for dir in $$($(GO) list -f '{{.Dir}}' $(PKGS)); do \
	  grep -qs '^func Fuzz' $$dir/*_test.go || continue; \
	  for target in $$(cd $$dir && $(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
	    echo "== $$dir $$target"; \
	    (cd $$dir && $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) .); \
	  done; \
	done

# Refresh docs/screenshots from a live `herd demo` (needs chromium).
screenshots: build
	bin/herd demo --http 127.0.0.1:18123 > /tmp/herd-shots-demo.log 2>&1 & pid=$$!; \
	sleep 25; \
	$(GO) run ./web/internal/shots -url http://127.0.0.1:18123 -out docs/screenshots; rc=$$?; \
	kill -INT $$pid; wait $$pid; exit $$rc

clean:
	rm -rf bin bench.txt
