package node

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/internal/promhelp"
)

// newHTTP opens the HTTP listener and builds its routes: /metrics, /livez and /readyz on
// every node; the dashboard and the API with the web role; the decisions and Flagger
// endpoints with the detect role. Without an HTTP address it does nothing.
func (n *Node) newHTTP() (err error) {
	if n.cfg.HTTPListen == "" {
		return nil
	}
	mux := http.NewServeMux()
	protect := func(h http.Handler) http.Handler { return h }
	if n.web != nil {
		protect = n.web.Protect
		n.web.SetAnnounce(n.Announce)
		switch {
		case n.dl != nil:
			n.web.SetDecisions(n.dl.Decisions)
		case n.js != nil:
			n.web.SetDecisions(deliver.StoredDecisions(deliver.NewKVReader(n.js).Decisions, time.Second, n.logger))
		}
		mux.Handle("/", n.web.Handler())
	}
	if n.dl != nil {
		decisions := protect(n.dl.HTTPHandler())
		mux.Handle("/api/v1/decisions", decisions)
		mux.Handle("/api/v1/decisions/", decisions)
		mux.Handle("/api/v1/flagger/", protect(n.dl.FlaggerHandler(n.det.Latest)))
	}
	mux.HandleFunc("GET /metrics", n.serveMetrics)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
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
	})
	if n.httpLn, err = net.Listen("tcp", n.cfg.HTTPListen); err != nil {
		return fmt.Errorf("cannot listen for HTTP on %s: %w", n.cfg.HTTPListen, err)
	}
	n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// serveMetrics writes every family of the node in Prometheus text format.
func (n *Node) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	promhelp.WritePrometheus(w, n.metrics)
	metrics.WriteProcessMetrics(w)
}
