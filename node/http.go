package node

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/web"
)

// newHTTP opens the HTTP listener and builds its routes: /metrics, /debug/pprof/, /livez and
// /readyz on every node; the dashboard and the API with the web role; the decisions and Flagger
// endpoints with the detect role; /metrics/groups (per-version rollups and verdicts, see
// package export) with either. Without an HTTP address it does nothing.
//
// Every route but /livez, /readyz and the dashboard's static page goes through one Guard
// (the web server's, else a Guard of its own) configured by Config.Web.HTTP: with tokens,
// reads need one and writes the read+write token; without, writes are accepted only as
// same-origin JSON from loopback. The listener holds at most Config.Web.HTTP.MaxConns
// connections, and the server's timeouts close idle and slow ones; the websocket stream,
// once upgraded, runs on its own deadlines.
func (n *Node) newHTTP() (err error) {
	if n.cfg.HTTPListen == "" {
		return nil
	}
	hc := n.cfg.Web.HTTP
	if err := hc.Validate(); err != nil {
		return fmt.Errorf("cannot serve HTTP: %w", err)
	}
	mux := http.NewServeMux()
	var protect func(http.Handler) http.Handler
	if n.web != nil {
		protect = n.web.Protect
		n.web.SetAnnounce(n.Announce)
		switch {
		case n.dl != nil:
			n.web.SetDecisions(n.dl.Decisions)
			n.web.SetDecisionLookup(n.dl.Decision)
		case n.js != nil:
			n.web.SetDecisions(deliver.StoredDecisions(deliver.NewKVReader(n.js).Decisions, time.Second, n.logger))
		}
		mux.Handle("/", n.web.Handler())
	} else {
		protect = web.NewGuard(hc, n.metrics).Protect
	}
	if n.dl != nil {
		decisions := protect(n.dl.HTTPHandler())
		mux.Handle("/api/v1/decisions", decisions)
		mux.Handle("/api/v1/decisions/", decisions)
		mux.Handle("/api/v1/flagger/", protect(n.dl.FlaggerHandler(n.det.Latest, n.Announce)))
	}
	mux.Handle("GET /metrics", protect(http.HandlerFunc(n.serveMetrics)))
	if n.exp != nil {
		mux.Handle("GET /metrics/groups", protect(n.exp))
	}
	// Profiles, behind the same Guard as /metrics: with tokens, a token is required.
	mux.Handle("GET /debug/pprof/", protect(http.HandlerFunc(pprof.Index)))
	mux.Handle("GET /debug/pprof/cmdline", protect(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("GET /debug/pprof/profile", protect(http.HandlerFunc(pprof.Profile)))
	mux.Handle("GET /debug/pprof/symbol", protect(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("GET /debug/pprof/trace", protect(http.HandlerFunc(pprof.Trace)))
	mux.HandleFunc("GET /livez", n.serveLive)
	mux.HandleFunc("GET /readyz", n.serveReady)
	if err := n.newOpsHTTP(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", n.cfg.HTTPListen)
	if err != nil {
		n.closeOps()
		return fmt.Errorf("cannot listen for HTTP on %s: %w", n.cfg.HTTPListen, err)
	}
	n.httpLn = web.LimitListener(ln, hc.MaxConns, n.metrics, "http")
	n.httpSrv = n.httpServer(mux)
	return nil
}

// newOpsHTTP opens the optional operations listener (Config.MetricsListen): /metrics,
// /metrics/groups, /livez and /readyz without a token, for a Prometheus scrape and probes inside a cluster
// while the main listener requires one.
func (n *Node) newOpsHTTP() error {
	if n.cfg.MetricsListen == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", n.serveMetrics)
	if n.exp != nil {
		mux.Handle("GET /metrics/groups", n.exp)
	}
	mux.HandleFunc("GET /livez", n.serveLive)
	mux.HandleFunc("GET /readyz", n.serveReady)
	ln, err := net.Listen("tcp", n.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("cannot listen for metrics on %s: %w", n.cfg.MetricsListen, err)
	}
	n.opsLn = web.LimitListener(ln, 64, n.metrics, "ops")
	n.opsSrv = n.httpServer(mux)
	return nil
}

func (n *Node) closeOps() {
	if n.opsLn != nil {
		n.opsLn.Close()
	}
}

// httpServer returns an http.Server for h with the configured timeouts and limits.
func (n *Node) httpServer(h http.Handler) *http.Server {
	hc := n.cfg.Web.HTTP
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: hc.ReadHeaderTimeout,
		ReadTimeout:       hc.ReadTimeout,
		WriteTimeout:      hc.WriteTimeout,
		IdleTimeout:       hc.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(n.logger.With("component", "http").Handler(), slog.LevelWarn),
	}
}

func (n *Node) serveLive(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }

func (n *Node) serveReady(w http.ResponseWriter, _ *http.Request) {
	if !n.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	// Serving goes on while the history cannot be written (the dashboard and the
	// detector still work): ready, and saying what is degraded.
	if err := n.pub.HistoryFailing(time.Minute); err != nil {
		fmt.Fprintf(w, "degraded: history stream writes failing (a restart will miss recent windows and verdicts): %v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// maxHeaderBytes bounds a request's headers: herd's requests carry a token and little else.
const maxHeaderBytes = 64 << 10

// serveMetrics writes every family of the node in Prometheus text format.
func (n *Node) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	promhelp.WritePrometheus(w, n.metrics)
	metrics.WriteProcessMetrics(w)
}
