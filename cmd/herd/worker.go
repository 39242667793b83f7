package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
)

// workerConfig configures `herd rollup`, a partitioned rollup worker.
type workerConfig struct {
	// NATSURL lists the NATS servers (comma-separated); the servers must carry herd's
	// partition mapping (embednats.MappingConfig).
	NATSURL string
	// HTTPListen is host:port of the optional /metrics, /livez and /readyz listener; empty
	// serves no HTTP.
	HTTPListen string
	// DrainTimeout bounds how long a partition's intake drains when it stops.
	DrainTimeout time.Duration
	Leases       rollup.LeaseConfig
	Rollup       rollup.Config
}

func (c *workerConfig) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats", "nats://127.0.0.1:4222", "NATS server `URL`s, comma-separated (the servers must carry herd's partition mapping)")
	fs.StringVar(&c.HTTPListen, "http", "", "HTTP listener for /metrics, /livez and /readyz (`host:port`; default none)")
	fs.DurationVar(&c.DrainTimeout, "intake.drain-timeout", time.Second, "how long a partition's intake drains when the partition moves or the worker stops (duration)")
	c.Leases.RegisterFlags(fs)
	c.Rollup.RegisterFlags(fs)
}

func (c *workerConfig) validate() error {
	if c.NATSURL == "" {
		return fmt.Errorf("%w: -nats is required", errUsage)
	}
	if c.HTTPListen != "" {
		if _, _, err := splitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("%w: -http: %v", errUsage, err)
		}
	}
	if c.DrainTimeout < 0 {
		return fmt.Errorf("%w: -intake.drain-timeout %s must be ≥ 0", errUsage, c.DrainTimeout)
	}
	if c.Leases.WorkerID == "" {
		c.Leases.WorkerID = rollup.DefaultWorkerID()
	}
	if err := c.Leases.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if c.Leases.Partitions != embednats.Partitions {
		return fmt.Errorf("%w: -leases.partitions %d must equal the subject mapping's %d", errUsage, c.Leases.Partitions, embednats.Partitions)
	}
	if err := c.Rollup.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

func rollupCommand() command {
	return command{
		name:  "rollup",
		usage: "--nats URL[,URL...] [--worker.id ID] [--http host:port] [flags]",
		short: "run a partitioned rollup worker: own partitions by lease, merge them, publish windows",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var cfg workerConfig
			cfg.registerFlags(fs)
			return func(ctx context.Context) error {
				if err := cfg.validate(); err != nil {
					return err
				}
				w, err := newWorker(cfg, e.logger)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "herd rollup: worker %s on NATS %s\n", cfg.Leases.WorkerID, redactURLs(cfg.NATSURL))
				err = w.run(ctx)
				fmt.Fprintln(e.stdout, "herd rollup: stopped")
				return err
			}
		},
	}
}

// worker is a partitioned rollup worker: Leases decide which partitions it owns; for each,
// an intake subscribed to herd.p.<n>.> feeds that partition's rollup, and closed windows are
// published on herd.rollup.<service>.<version>.
type worker struct {
	cfg    workerConfig
	logger *slog.Logger
	nc     *nats.Conn
	leases *rollup.Leases
	parts  *rollup.Partitioned

	httpLn  net.Listener
	httpSrv *http.Server
	ready   atomic.Bool
	crashed atomic.Bool

	metrics     *metrics.Set
	windowsSent *metrics.Counter
	publishErrs *metrics.Counter
	// intakeMetrics is shared by every partition's intake.
	intakeMetrics *ingest.IntakeMetrics
}

// newWorker connects to NATS and opens the HTTP listener (if any). Nothing flows until run.
func newWorker(cfg workerConfig, logger *slog.Logger) (*worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := &worker{cfg: cfg, logger: logger, metrics: metrics.NewSet()}
	w.intakeMetrics = ingest.NewIntakeMetrics(w.metrics)
	w.windowsSent = w.metrics.NewCounter("herd_worker_windows_published_total")
	w.publishErrs = w.metrics.NewCounter("herd_worker_window_publish_errors_total")
	nc, err := connectNATS(cfg.NATSURL, "herd-rollup-"+cfg.Leases.WorkerID, logger)
	if err != nil {
		return nil, err
	}
	w.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot use JetStream: %w", err)
	}
	w.parts, err = rollup.NewPartitioned(cfg.Rollup, w.source, w.emit, logger.With("component", "rollup"))
	if err != nil {
		nc.Close()
		return nil, err
	}
	w.leases, err = rollup.NewLeases(cfg.Leases, js, w.parts.Acquire, w.parts.Release, logger.With("component", "leases"))
	if err != nil {
		nc.Close()
		return nil, err
	}
	if cfg.HTTPListen != "" {
		ln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("cannot listen for HTTP on %s: %w", cfg.HTTPListen, err)
		}
		w.httpLn = ln
		mux := http.NewServeMux()
		mux.HandleFunc("GET /metrics", w.serveMetrics)
		mux.HandleFunc("GET /livez", func(rw http.ResponseWriter, _ *http.Request) { fmt.Fprintln(rw, "ok") })
		mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
			if !w.ready.Load() {
				http.Error(rw, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(rw, "ok")
		})
		w.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return w, nil
}

// HTTPURL is the base URL of the HTTP listener, or "" without one.
func (w *worker) HTTPURL() string {
	if w.httpLn == nil {
		return ""
	}
	return "http://" + w.httpLn.Addr().String()
}

// source runs an intake on partition p's subject until ctx is done (rollup.Source).
func (w *worker) source(ctx context.Context, p int, add func(*proto.Batch)) error {
	cfg := ingest.DefaultIntakeConfig()
	cfg.Subject = embednats.PartitionSubject(p)
	cfg.Prefix = embednats.PartitionSubjectPrefix(p)
	cfg.DrainTimeout = w.cfg.DrainTimeout
	in, err := ingest.NewIntake(cfg, w.intakeMetrics, w.nc, add, w.logger.With("component", "intake", "partition", p))
	if err != nil {
		return err
	}
	return in.Run(ctx)
}

// emit publishes a closed window, as the all-in-one stack does.
func (w *worker) emit(win *proto.Window) {
	if subj, err := proto.RollupSubject(win.Service, win.Version); err != nil {
		w.publishErrs.Inc()
	} else if data, err := proto.MarshalWindow(win); err != nil {
		w.publishErrs.Inc()
	} else if err := w.nc.Publish(subj, data); err != nil {
		w.publishErrs.Inc()
	} else {
		w.windowsSent.Inc()
	}
}

func (w *worker) serveMetrics(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "text/plain; version=0.0.4")
	promhelp.WritePrometheus(rw, w.metrics, w.leases.Metrics(), w.parts.Metrics(), natsMetrics)
	metrics.WriteProcessMetrics(rw)
}

// crash makes the worker stop as if its process died: leases are abandoned (they expire
// after the TTL) and the NATS connection closes without draining, so nothing more is
// published. run then returns promptly. Tests use it.
func (w *worker) crash() {
	w.crashed.Store(true)
	w.leases.Abandon()
	w.nc.Close()
}

// run works until ctx is done, then stops in data-flow order: not ready → release the leases
// (others take over at once) → let the partitions publish the windows of their spans and
// stop their intakes → close HTTP → drain NATS.
func (w *worker) run(ctx context.Context) error {
	partsCtx, stopParts := context.WithCancel(context.Background())
	leasesCtx, stopLeases := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	leasesDone := make(chan struct{})
	wg.Go(func() { _ = w.parts.Run(partsCtx) })
	wg.Go(func() {
		defer close(leasesDone)
		if err := w.leases.Run(leasesCtx); err != nil {
			errc <- fmt.Errorf("leases: %w", err)
		}
	})
	if w.httpSrv != nil {
		wg.Go(func() {
			if err := w.httpSrv.Serve(w.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("http: %w", err)
			}
		})
	}
	w.ready.Store(true)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	w.ready.Store(false)
	stopLeases()
	<-leasesDone
	if !w.crashed.Load() {
		// A released partition keeps merging its span's windows until they close.
		wait := w.cfg.Rollup.Window + w.cfg.Rollup.Lateness + w.cfg.DrainTimeout + 2*time.Second
		wctx, cancel := context.WithTimeout(context.Background(), wait)
		if err := w.parts.Wait(wctx); err != nil {
			w.logger.Warn("partitions did not wind down in time", "running", w.parts.Running(), "waited", wait)
		}
		cancel()
	}
	stopParts()
	if w.httpSrv != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = w.httpSrv.Shutdown(shutCtx)
		cancel()
	}
	wg.Wait()
	if err := drain(w.nc, 5*time.Second); err != nil {
		w.logger.Warn("cannot stop cleanly", "err", err)
	}
	return runErr
}
