package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/herd-dev/herd/sim/loadbench"
)

// loadFlags are the flags of `herd bench load`.
type loadFlags struct {
	gen          loadbench.GenConfig
	procs        int
	serveMetrics string
	lagLimit     time.Duration
	child        bool
	cpuProfile   string
}

func benchLoadCommand() command {
	return command{
		name:  "bench load",
		usage: "--nats URL [--instances N] [--conns C] [--procs P] [--duration D] [--serve-metrics URL]",
		short: "drive a running herd serve with a churning fleet over many connections; report whether the generator or herd fell behind, as JSON",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var l loadFlags
			g := &l.gen
			natsFlags(fs, &g.NATS, defaultNATSURL)
			fs.IntVar(&g.Instances, "instances", 5000, "instances alive at any time, over all processes (count)")
			fs.IntVar(&g.Conns, "conns", 8, "NATS connections per process; each publishes the instances of one shard (count)")
			fs.IntVar(&l.procs, "procs", 1, "generator processes; more than 1 runs copies of this binary, each with its share of the instances (count)")
			fs.Float64Var(&g.RPS, "rps", 20, "requests per second of each instance (rate)")
			fs.DurationVar(&g.Duration, "duration", 30*time.Second, "how long the fleet publishes (duration)")
			fs.DurationVar(&g.LifetimeMin, "lifetime-min", 20*time.Second, "shortest instance lifetime (duration)")
			fs.DurationVar(&g.LifetimeMax, "lifetime-max", 60*time.Second, "longest instance lifetime (duration)")
			fs.Uint64Var(&g.Seed, "seed", 1, "random seed of the traffic (process i uses seed+i)")
			fs.StringVar(&l.serveMetrics, "serve-metrics", "", "`URL` of the herd serve's /metrics, scraped every second for its CPU, RSS and refusals (optional)")
			fs.DurationVar(&l.lagLimit, "lag-limit", 100*time.Millisecond, "publish lag (boundary → last batch of the interval handed to NATS) beyond which the generator counts as behind, at p99 (duration)")
			fs.StringVar(&l.cpuProfile, "cpuprofile", "", "write the generator's CPU profile to this `file` (with -procs 1)")
			fs.IntVar(&g.Templates, "templates", 64, "batch bodies encoded once per group and reused (sim/load); 0 draws and encodes every batch through a client like herd sim (count)")
			fs.BoolVar(&l.child, "child", false, "run as one of --procs processes: publish and print what was sent, without collecting windows")
			return func(ctx context.Context) error { return benchLoad(ctx, e, l) }
		},
	}
}

// benchLoad runs loadbench.Load (or, as a child, one generator) and prints its report.
func benchLoad(ctx context.Context, e *env, l loadFlags) error {
	if l.gen.Instances < 1 || l.gen.Conns < 1 || l.procs < 1 || l.gen.Duration <= 0 {
		return fmt.Errorf("%w: -instances, -conns, -procs must be ≥ 1 and -duration > 0", errUsage)
	}
	if err := l.gen.NATS.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if l.cpuProfile != "" {
		f, err := os.Create(l.cpuProfile)
		if err != nil {
			return fmt.Errorf("cannot write the CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cannot start the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	l.gen.Logger = e.logger
	if l.child {
		r, err := loadbench.Generate(ctx, l.gen)
		return printReport(e, r, err)
	}
	cfg := loadbench.LoadConfig{Gen: l.gen, Procs: l.procs, ServeMetrics: l.serveMetrics, LagLimit: l.lagLimit}
	if l.procs > 1 {
		cfg.Generate = func(ctx context.Context) ([]loadbench.GenReport, error) { return generateProcs(ctx, e, l) }
	}
	r, err := loadbench.Load(ctx, cfg)
	return printReport(e, r, err)
}

// generateProcs runs the fleet in l.procs child processes of this binary and returns each
// one's report.
func generateProcs(ctx context.Context, e *env, l loadFlags) ([]loadbench.GenReport, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find this binary to run generator processes: %w", err)
	}
	g, c := l.gen, l.gen.NATS
	reports := make([]loadbench.GenReport, l.procs)
	errs := make([]error, l.procs)
	var wg sync.WaitGroup
	for i := range l.procs {
		n := g.Instances / l.procs
		if i < g.Instances%l.procs {
			n++
		}
		args := []string{"bench", "load", "-child", "-cpuprofile", "", "-serve-metrics", "", "-nats", c.URLs, "-instances", strconv.Itoa(n),
			"-conns", strconv.Itoa(g.Conns), "-rps", fmt.Sprint(g.RPS), "-duration", g.Duration.String(),
			"-lifetime-min", g.LifetimeMin.String(), "-lifetime-max", g.LifetimeMax.String(),
			"-seed", strconv.FormatUint(g.Seed+uint64(i), 10), "-templates", strconv.Itoa(g.Templates)}
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, exe, args...)
			cmd.Stderr = e.stderr
			// The credentials go by environment (a password on a command line is visible to
			// every user of the machine), the files by flag.
			cmd.Env = append(os.Environ(), "HERD_NATS_USER="+c.User, "HERD_NATS_PASSWORD="+c.Password,
				"HERD_NATS_CREDS="+c.CredsFile, "HERD_NATS_NKEY="+c.NKeyFile, "HERD_NATS_TLS_CA="+c.TLSCA,
				"HERD_NATS_TLS_CERT="+c.TLSCert, "HERD_NATS_TLS_KEY="+c.TLSKey)
			out, err := cmd.Output()
			if err != nil {
				errs[i] = fmt.Errorf("generator process %d: %w", i, err)
				return
			}
			if err := json.Unmarshal(lastLine(out), &reports[i]); err != nil {
				errs[i] = fmt.Errorf("cannot read generator process %d's report: %w", i, err)
			}
		})
	}
	wg.Wait()
	return reports, errors.Join(errs...)
}

func lastLine(b []byte) []byte {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return []byte(s)
}
