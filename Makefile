# herd's everyday targets. `make test` is what CI runs (see .ci/run).
GO      ?= go
PKGS    ?= ./...
BENCH   ?= .
# Tests whose wall-clock bounds `make perf` enforces (internal/perftest).
PERF_TESTS ?= TestExactUnderChurn|TestFloodLeavesNewServiceExact|TestAgentHundredsOfPods|TestDashboardFreshness|TestRollupWorkersOnCluster|TestFailoverWorkerCrashDuringBadCanary|TestGroupFloodLeavesNewServiceExact|TestDemoScenarios|TestFanout|TestBrowserServiceLive|TestKillNode|TestAgentLifecycles|TestOTLPCanaryRollback
# Printed before and after the tests when the dashboard's browser tests cannot run.
CHROMIUM_NOTICE = command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	echo '!!!!! chromium not found: the dashboard browser tests are SKIPPED. Install it: apt-get install chromium !!!!!'
FUZZTIME ?= 30s

.PHONY: build test perf test-short bench fuzz vet screenshots clean

build:
	$(GO) build -o bin/herd ./cmd/herd

vet:
	$(GO) vet $(PKGS)

# Packages tested without the race detector: internal/deploytest decodes the manifests and the
# Helm chart (Helm and the Kubernetes API types are ~500 packages to build again with -race, and
# those tests run nothing concurrent of herd's).
NORACE_PKGS ?= ./internal/deploytest
# Tests run without the race detector, in NORACE_TEST_PKGS, by a go test of their own: seeded
# statistical simulations and a heap measurement (single goroutine and CPU-bound), and the
# demos of `herd demo`, whose whole pipeline runs under the race detector in node's tests and
# web's TestBrowserGraphDemoFanout (a live demo), but which the race detector made the costliest
# CPU of the suite (19 s of CPU with it, 2.8 s without). make perf runs them without it too.
NORACE_TESTS ?= ^(TestEdgeAAFalseRollbacks|TestShadowRateNearAlphaOnAA|TestBenchDetect.*|TestZeroFillBatchMemory|TestDemoScenarios)$$
NORACE_TEST_PKGS ?= ./alert ./sim ./rollup ./cmd/herd
# The demos wait for their story most of the time: all of them at once.
NORACE_PARALLEL ?= 8
# Packages and tests run two at a time (the default on two cores). Four at a time took 152 s
# instead of about 200 s, but starved the real-time tests of placement by arrival time (a
# restart, skewed clocks, an agent's last scrape) into failing one CI run in two.
TEST_P ?= 2
TEST_PARALLEL ?= 2
# Packages whose tests take their own slots (a heavy one at a time, a few light ones beside it;
# see node/helpers_test.go) and wait most of the time: run by a go test of their own, started
# first and beside the others, with a -parallel high enough for all their tests to wait for
# their slots at once.
SOLO_PKGS ?= ./node
SOLO_PARALLEL ?= 64
# The other slowest packages, started first so that none of them starts last.
FIRST_PKGS ?= ./cmd/herd ./web

# go vet and staticcheck run at a lower priority: they only compute, and take the CPU the
# real-time tests leave idle.
NICE ?= nice -n 10
# The other packages' race tests (linking their binaries included) yield to SOLO_PKGS, whose
# real-time tests need little CPU but need it on time.
RACE_NICE ?= nice -n 5
# Test binaries are linked without DWARF (-w): linking them is most of the CPU a warm
# make test spends before its first test; panics and race reports are symbolized all the same.
TEST_LDFLAGS ?= -w

# The README's test command: go vet, staticcheck and every test with the race detector (but
# NORACE_PKGS and NORACE_TESTS, run without it), all at the same time: the tests wait far
# more than they compute (the parts that only compute run at a lower priority, see NICE).
# Each part's output is printed once it is over, the race part's (but SOLO_PKGS) as it goes.
# Wall-clock bounds are only logged here; `make perf` enforces them and runs the slowest
# real-time scenarios at full size.
test:
	@$(CHROMIUM_NOTICE)
	@norace="$$($(GO) list $(NORACE_PKGS))"; solo="$$($(GO) list $(SOLO_PKGS))"; \
	first="$$($(GO) list $(FIRST_PKGS))"; all="$$($(GO) list $(PKGS))"; \
	plain="$$(echo "$$all" | grep -x -F "$$norace" || true)"; \
	race="$$(echo "$$all" | grep -v -x -F "$$norace" || true)"; \
	solo="$$(echo "$$race" | grep -x -F "$$solo" || true)"; \
	race="$$(echo "$$race" | grep -v -x -F "$$solo" || true)"; \
	race="$$(echo "$$race" | grep -x -F "$$first" || true; echo "$$race" | grep -v -x -F "$$first" || true)"; \
	checkout="$$(mktemp)"; out="$$(mktemp)"; soloout="$$(mktemp)"; trap 'rm -f "$$checkout" "$$out" "$$soloout"' EXIT; \
	echo "$(GO) vet $(PKGS); $(GO) tool staticcheck $(PKGS)  (output below)"; \
	{ $(NICE) $(GO) vet $(PKGS) && $(NICE) $(GO) tool staticcheck $(PKGS); } >"$$checkout" 2>&1 & checkpid=$$!; \
	echo "$(GO) test -count=1 -ldflags=$(TEST_LDFLAGS) -parallel $(NORACE_PARALLEL) -run '$(NORACE_TESTS)' $(NORACE_TEST_PKGS); $(GO) test -count=1 $(NORACE_PKGS)  (output below)"; \
	( $(GO) test -count=1 -ldflags=$(TEST_LDFLAGS) -parallel $(NORACE_PARALLEL) -timeout 20m -run '$(NORACE_TESTS)' $(NORACE_TEST_PKGS); a=$$?; \
	  { [ -z "$$plain" ] || $(GO) test -count=1 -timeout 20m $$plain; }; b=$$?; [ $$a -eq 0 ] && [ $$b -eq 0 ] ) >"$$out" 2>&1 & plainpid=$$!; \
	echo "$(GO) test -race -count=1 -ldflags=$(TEST_LDFLAGS) -parallel $(SOLO_PARALLEL) -timeout 20m -skip '$(NORACE_TESTS)' $(SOLO_PKGS)  (output below)"; \
	{ [ -z "$$solo" ] || $(GO) test -race -count=1 -ldflags=$(TEST_LDFLAGS) -parallel $(SOLO_PARALLEL) -timeout 20m -skip '$(NORACE_TESTS)' $$solo; } >"$$soloout" 2>&1 & solopid=$$!; \
	echo "$(GO) test -race -count=1 -ldflags=$(TEST_LDFLAGS) -p $(TEST_P) -parallel $(TEST_PARALLEL) -timeout 20m -skip '$(NORACE_TESTS)' <$$(echo "$$race" | wc -l) packages, $(FIRST_PKGS) first>"; \
	$(RACE_NICE) $(GO) test -race -count=1 -ldflags=$(TEST_LDFLAGS) -p $(TEST_P) -parallel $(TEST_PARALLEL) -timeout 20m -skip '$(NORACE_TESTS)' $$race; rs=$$?; \
	wait $$solopid; ss=$$?; echo "-- $(SOLO_PKGS):"; cat "$$soloout"; \
	wait $$plainpid; ps=$$?; echo "-- without the race detector:"; cat "$$out"; \
	wait $$checkpid; cs=$$?; echo "-- go vet, staticcheck:"; cat "$$checkout"; \
	[ $$rs -eq 0 ] && [ $$ss -eq 0 ] && [ $$ps -eq 0 ] && [ $$cs -eq 0 ]
	@$(CHROMIUM_NOTICE)
	@echo "make perf runs the latency bounds and the full-size scenarios (the graph's good demo, floods of 50,000, 10,000 pod lifecycles)."

# The performance step: the tests that measure latencies, with their bounds enforced
# (HERD_PERF=1), one package at a time and without the race detector. CI runs it after `make test`.
perf:
	HERD_PERF=1 $(GO) test -count=1 -p 1 -timeout 20m -run '$(PERF_TESTS)' $(PKGS)

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
