package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	gproto "google.golang.org/protobuf/proto"
)

// PathMetrics is the OTLP/HTTP path of metrics exports.
const PathMetrics = "/v1/metrics"

// Content types of OTLP/HTTP.
const (
	contentProto = "application/x-protobuf"
	contentJSON  = "application/json"
)

// HTTP server timeouts of the OTLP/HTTP listener.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	// stopTimeout bounds how long Run waits for requests in flight when it stops.
	stopTimeout = 5 * time.Second
)

// listen opens the configured listeners and builds their servers.
func (r *Receiver) listen() error {
	if r.cfg.HTTPListen != "" {
		ln, err := net.Listen("tcp", r.cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("cannot listen for OTLP/HTTP on %s: %w", r.cfg.HTTPListen, err)
		}
		r.httpLn = r.limit(ln)
		r.httpSrv = &http.Server{
			Handler:           r.HTTPHandler(),
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    64 << 10,
		}
	}
	if r.cfg.GRPCListen != "" {
		ln, err := net.Listen("tcp", r.cfg.GRPCListen)
		if err != nil {
			r.Close()
			return fmt.Errorf("cannot listen for OTLP/gRPC on %s: %w", r.cfg.GRPCListen, err)
		}
		r.grpcLn = r.limit(ln)
		r.grpcSrv = grpc.NewServer(
			grpc.MaxRecvMsgSize(r.cfg.MaxRequestBytes),
			grpc.StatsHandler(grpcStats{r}),
		)
		pmetricotlp.RegisterGRPCServer(r.grpcSrv, &grpcServer{r: r})
	}
	return nil
}

// limit bounds a listener's connections by the shared MaxConns.
func (r *Receiver) limit(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, open: &r.conns, max: int64(r.cfg.MaxConns), drop: func() {
		r.refuseRequest(ReasonConnections, ln.Addr().String(), fmt.Errorf("%d connections open (-otlp.max-conns)", r.cfg.MaxConns))
	}}
}

// HTTPAddr is the address of the OTLP/HTTP listener, or "" without one.
func (r *Receiver) HTTPAddr() string {
	if r.httpLn == nil {
		return ""
	}
	return r.httpLn.Addr().String()
}

// GRPCAddr is the address of the OTLP/gRPC listener, or "" without one.
func (r *Receiver) GRPCAddr() string {
	if r.grpcLn == nil {
		return ""
	}
	return r.grpcLn.Addr().String()
}

// Close closes the listeners of a receiver whose Run was never called.
func (r *Receiver) Close() {
	for _, ln := range []net.Listener{r.httpLn, r.grpcLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Run serves the listeners and forgets idle instances until ctx is done, then stops taking
// requests, waits up to 5 s for those in flight (each is published whole) and returns. Every
// goroutine it started has exited when it returns.
func (r *Receiver) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if r.httpSrv != nil {
		wg.Go(func() {
			if err := r.httpSrv.Serve(r.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("OTLP/HTTP: %w", err)
			}
		})
	}
	if r.grpcSrv != nil {
		wg.Go(func() {
			if err := r.grpcSrv.Serve(r.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("OTLP/gRPC: %w", err)
			}
		})
	}
	r.log.Info("OTLP receiver listening", "http", r.HTTPAddr(), "grpc", r.GRPCAddr())
	sweep := time.NewTicker(max(r.cfg.InstanceTTL/4, time.Second))
	defer sweep.Stop()
	var err error
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case err = <-errc:
			done = true
		case now := <-sweep.C:
			r.sweep(now)
		}
	}
	r.stop()
	wg.Wait()
	r.log.Info("OTLP receiver stopped")
	return err
}

// stop shuts both servers down, gracefully up to stopTimeout.
func (r *Receiver) stop() {
	if r.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		if err := r.httpSrv.Shutdown(ctx); err != nil {
			r.httpSrv.Close()
		}
		cancel()
	}
	if r.grpcSrv != nil {
		done := make(chan struct{})
		go func() {
			r.grpcSrv.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			r.grpcSrv.Stop()
			<-done
		}
	}
}

// authorized checks an Authorization header value against the token; without a token it
// takes requests from loopback addresses only.
func (r *Receiver) authorized(header string, remote net.Addr) bool {
	if r.cfg.Token == "" {
		return isLoopback(remote)
	}
	tok, ok := strings.CutPrefix(header, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(r.cfg.Token)) == 1
}

// unauthorized says why a request was not authorized.
func (r *Receiver) unauthorized(remote net.Addr) error {
	if r.cfg.Token == "" {
		return fmt.Errorf("OTLP from %v refused: without -otlp.token only loopback clients may send", remote)
	}
	return errors.New("no or a wrong bearer token")
}

// refuseRequest counts and logs a request refused whole.
func (r *Receiver) refuseRequest(reason, transport string, err error) {
	r.m.requestRefused[reason].Inc()
	if ok, suppressed := r.m.shouldLog(r.now()); ok {
		r.log.Warn("OTLP request refused", "reason", reason, "transport", transport, "err", err, "suppressed_since_last_log", suppressed)
	}
}

// HTTPHandler returns the OTLP/HTTP handler: POST /v1/metrics, protobuf or JSON, optionally
// gzip-compressed.
func (r *Receiver) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PathMetrics, r.serveHTTP)
	return mux
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	r.m.requests["http"].Inc()
	ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if ct != contentJSON {
		ct = contentProto // errors before the type is known are answered in protobuf
	}
	if req.Method != http.MethodPost {
		r.refuseRequest(ReasonBadRequest, "http", fmt.Errorf("method %s", req.Method))
		w.Header().Set("Allow", http.MethodPost)
		writeStatus(w, ct, http.StatusMethodNotAllowed, codes.InvalidArgument, "OTLP metrics are POSTed")
		return
	}
	var remote net.Addr
	if a, err := net.ResolveTCPAddr("tcp", req.RemoteAddr); err == nil {
		remote = a
	}
	if !r.authorized(req.Header.Get("Authorization"), remote) {
		err := r.unauthorized(remote)
		r.refuseRequest(ReasonUnauthorized, "http", err)
		writeStatus(w, ct, http.StatusUnauthorized, codes.Unauthenticated, err.Error())
		return
	}
	if t, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); t != contentProto && t != contentJSON {
		r.refuseRequest(ReasonMediaType, "http", fmt.Errorf("content type %q", clip(req.Header.Get("Content-Type"))))
		writeStatus(w, ct, http.StatusUnsupportedMediaType, codes.InvalidArgument, "send application/x-protobuf or application/json")
		return
	}
	body, reason, err := r.readBody(w, req)
	if err != nil {
		r.refuseRequest(reason, "http", err)
		code := http.StatusBadRequest
		if reason == ReasonOversized {
			code = http.StatusRequestEntityTooLarge
		}
		writeStatus(w, ct, code, codes.InvalidArgument, err.Error())
		return
	}
	er := pmetricotlp.NewExportRequest()
	if ct == contentJSON {
		err = er.UnmarshalJSON(body)
	} else {
		err = er.UnmarshalProto(body)
	}
	if err != nil {
		err = fmt.Errorf("cannot decode the OTLP request: %w", err)
		r.refuseRequest(ReasonMalformed, "http", err)
		writeStatus(w, ct, http.StatusBadRequest, codes.InvalidArgument, err.Error())
		return
	}
	res := r.Export(er.Metrics())
	resp := pmetricotlp.NewExportResponse()
	if res.Rejected > 0 {
		resp.PartialSuccess().SetRejectedDataPoints(res.Rejected)
		resp.PartialSuccess().SetErrorMessage(res.Message)
	}
	var out []byte
	if ct == contentJSON {
		out, err = resp.MarshalJSON()
	} else {
		out, err = resp.MarshalProto()
	}
	if err != nil {
		http.Error(w, "cannot encode the response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// readBody reads a request body, decompressing gzip, bounded by MaxRequestBytes.
func (r *Receiver) readBody(w http.ResponseWriter, req *http.Request) ([]byte, string, error) {
	limit := int64(r.cfg.MaxRequestBytes)
	if req.ContentLength > limit {
		return nil, ReasonOversized, fmt.Errorf("request body of %d bytes is over the limit of %d (-otlp.max-request-bytes)", req.ContentLength, limit)
	}
	var src io.Reader = http.MaxBytesReader(w, req.Body, limit+1)
	switch enc := req.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, ReasonMalformed, fmt.Errorf("cannot read the gzip body: %w", err)
		}
		defer zr.Close()
		src = zr
	default:
		return nil, ReasonBadRequest, fmt.Errorf("content encoding %q: send gzip or none", clip(enc))
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(src, limit+1))
	var mbe *http.MaxBytesError
	switch {
	case n > limit || errors.As(err, &mbe):
		return nil, ReasonOversized, fmt.Errorf("request body is over the limit of %d bytes (-otlp.max-request-bytes)", limit)
	case err != nil:
		return nil, ReasonBadRequest, fmt.Errorf("cannot read the request body: %w", err)
	}
	return buf.Bytes(), "", nil
}

// writeStatus answers an OTLP/HTTP error with a google.rpc.Status in the request's format.
func writeStatus(w http.ResponseWriter, ct string, httpCode int, code codes.Code, msg string) {
	st := status.New(code, msg).Proto()
	var out []byte
	var err error
	if ct == contentJSON {
		out, err = protojson.Marshal(st)
	} else {
		out, err = gproto.Marshal(st)
	}
	if err != nil {
		http.Error(w, msg, httpCode)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(httpCode)
	_, _ = w.Write(out)
}

// grpcServer is the OTLP/gRPC MetricsService.
type grpcServer struct {
	pmetricotlp.UnimplementedGRPCServer
	r *Receiver
}

// Export implements pmetricotlp.GRPCServer.
func (s *grpcServer) Export(ctx context.Context, req pmetricotlp.ExportRequest) (pmetricotlp.ExportResponse, error) {
	r := s.r
	r.m.requests["grpc"].Inc()
	md, _ := metadata.FromIncomingContext(ctx)
	auth := ""
	if v := md.Get("authorization"); len(v) > 0 {
		auth = v[0]
	}
	var remote net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr
	}
	if !r.authorized(auth, remote) {
		err := r.unauthorized(remote)
		r.refuseRequest(ReasonUnauthorized, "grpc", err)
		return pmetricotlp.NewExportResponse(), status.Error(codes.Unauthenticated, err.Error())
	}
	res := r.Export(req.Metrics())
	resp := pmetricotlp.NewExportResponse()
	if res.Rejected > 0 {
		resp.PartialSuccess().SetRejectedDataPoints(res.Rejected)
		resp.PartialSuccess().SetErrorMessage(res.Message)
	}
	return resp, nil
}

// grpcStats counts the requests gRPC itself refuses before Export sees them: a message over
// the size limit (ResourceExhausted) and one that cannot be decoded (Internal).
type grpcStats struct{ r *Receiver }

func (grpcStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (grpcStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (grpcStats) HandleConn(context.Context, stats.ConnStats)                       {}

func (g grpcStats) HandleRPC(_ context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.Error == nil {
		return
	}
	switch status.Code(end.Error) {
	case codes.ResourceExhausted:
		g.r.m.requests["grpc"].Inc()
		g.r.refuseRequest(ReasonOversized, "grpc", end.Error)
	case codes.Internal:
		g.r.m.requests["grpc"].Inc()
		g.r.refuseRequest(ReasonMalformed, "grpc", end.Error)
	}
}
