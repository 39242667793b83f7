// Package otlptest runs test services instrumented with the real OpenTelemetry Go SDK
// (go.opentelemetry.io/otel/sdk/metric) exporting over OTLP/HTTP or OTLP/gRPC, for the tests
// of herd's OTLP receiver. Each Instance is one process's MeterProvider: one resource with
// service.name, service.version and service.instance.id.
package otlptest

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// Names of the instruments an Instance records.
const (
	// Requests is an Int64Counter of requests with the attribute StatusCode.
	Requests = "app_requests"
	// Duration is a Float64Histogram of request durations in seconds, with StatusCode,
	// aggregated as an exponential histogram.
	Duration = "app_request_duration"
	// SemconvDuration is a Float64Histogram named as OpenTelemetry's HTTP semantic
	// conventions name it, with http.response.status_code, as explicit buckets.
	SemconvDuration = "http.server.request.duration"
	// StatusCode is the attribute of Requests and Duration.
	StatusCode = "status_code"
	// ClientDuration is a Float64Histogram named as OpenTelemetry's HTTP client conventions
	// name it (seconds), with server.address, server.port, http.request.method and
	// http.response.status_code (and error.type for a 4xx or 5xx), as explicit buckets.
	ClientDuration = "http.client.request.duration"
	// RPCClientDuration is a Float64Histogram named as the experimental RPC client
	// conventions name it (milliseconds), with rpc.system, rpc.service, rpc.method and
	// rpc.grpc.status_code, aggregated as an exponential histogram.
	RPCClientDuration = "rpc.client.duration"
	// Route and Method are the http.route and http.request.method of SemconvDuration in
	// SemconvOnly mode.
	Route, Method = "/cart/{id}", "GET"
)

// Config describes one instance.
type Config struct {
	// Transport is "http" or "grpc"; Endpoint host:port of the receiver.
	Transport, Endpoint string
	// Delta selects delta temporality for every instrument; the SDK's default is cumulative.
	Delta bool
	// Service, Version and Instance are the resource's service.name, service.version and
	// service.instance.id (none if empty).
	Service, Version, Instance string
	// Interval is the export interval (default 100 ms).
	Interval time.Duration
	// Token, if set, is sent as a bearer token.
	Token string
	// MaxScale bounds the exponential histogram's scale (default 20, the SDK's).
	MaxScale int32
	// SemconvOnly makes Serve record SemconvDuration alone, with http.route and
	// http.request.method as well: a service instrumented with OpenTelemetry's semantic
	// conventions only.
	SemconvOnly bool
}

// Instance is one instrumented process.
type Instance struct {
	mp          *sdkmetric.MeterProvider
	semconvOnly bool
	requests    metric.Int64Counter
	duration    metric.Float64Histogram
	semconv     metric.Float64Histogram
	client      metric.Float64Histogram
	rpc         metric.Float64Histogram
}

// Start starts an instance exporting to cfg.Endpoint.
func Start(ctx context.Context, cfg Config) (*Instance, error) {
	if cfg.Interval == 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.MaxScale == 0 {
		cfg.MaxScale = 20
	}
	temporality := sdkmetric.DefaultTemporalitySelector
	if cfg.Delta {
		temporality = func(sdkmetric.InstrumentKind) metricdata.Temporality { return metricdata.DeltaTemporality }
	}
	var headers map[string]string
	if cfg.Token != "" {
		headers = map[string]string{"Authorization": "Bearer " + cfg.Token}
	}
	var exp sdkmetric.Exporter
	var err error
	switch cfg.Transport {
	case "http":
		exp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(cfg.Endpoint), otlpmetrichttp.WithInsecure(),
			otlpmetrichttp.WithTemporalitySelector(temporality), otlpmetrichttp.WithHeaders(headers),
			otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false}))
	case "grpc":
		exp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(cfg.Endpoint), otlpmetricgrpc.WithInsecure(),
			otlpmetricgrpc.WithTemporalitySelector(temporality), otlpmetricgrpc.WithHeaders(headers),
			otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}))
	default:
		return nil, fmt.Errorf("unknown transport %q", cfg.Transport)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create the OTLP exporter: %w", err)
	}
	var attrs []attribute.KeyValue
	for _, kv := range [][2]string{{"service.name", cfg.Service}, {"service.version", cfg.Version}, {"service.instance.id", cfg.Instance}} {
		if kv[1] != "" {
			attrs = append(attrs, attribute.String(kv[0], kv[1]))
		}
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(cfg.Interval))),
		sdkmetric.WithResource(resource.NewSchemaless(attrs...)),
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: Duration},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: cfg.MaxScale}})),
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: RPCClientDuration},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: cfg.MaxScale}})),
	)
	m := mp.Meter("herd-otlptest")
	in := &Instance{mp: mp, semconvOnly: cfg.SemconvOnly}
	if in.requests, err = m.Int64Counter(Requests); err == nil {
		if in.duration, err = m.Float64Histogram(Duration, metric.WithUnit("s")); err == nil {
			if in.semconv, err = m.Float64Histogram(SemconvDuration, metric.WithUnit("s")); err == nil {
				if in.client, err = m.Float64Histogram(ClientDuration, metric.WithUnit("s")); err == nil {
					in.rpc, err = m.Float64Histogram(RPCClientDuration, metric.WithUnit("ms"))
				}
			}
		}
	}
	if err != nil {
		_ = mp.Shutdown(ctx)
		return nil, fmt.Errorf("cannot create the instruments: %w", err)
	}
	return in, nil
}

// Serve records one request: Requests, Duration and SemconvDuration, with its status code
// (SemconvDuration alone, with Route and Method, in SemconvOnly mode).
func (in *Instance) Serve(ctx context.Context, code int, seconds float64) {
	if in.semconvOnly {
		in.semconv.Record(ctx, seconds, metric.WithAttributes(attribute.Int("http.response.status_code", code),
			attribute.String("http.route", Route), attribute.String("http.request.method", Method)))
		return
	}
	a := metric.WithAttributes(attribute.Int(StatusCode, code))
	in.requests.Add(ctx, 1, a)
	in.duration.Record(ctx, seconds, a)
	in.semconv.Record(ctx, seconds, metric.WithAttributes(attribute.Int("http.response.status_code", code)))
}

// Shutdown exports what was recorded since the last export and stops the instance. The
// caller has stopped recording. It flushes before shutting down: the SDK's Shutdown cancels
// a periodic export in flight, whose deltas (with delta temporality) are then lost; a flush
// waits for it, and a periodic export starting after the flush carries nothing.
func (in *Instance) Shutdown(ctx context.Context) error {
	if err := in.mp.ForceFlush(ctx); err != nil {
		_ = in.mp.Shutdown(ctx)
		return fmt.Errorf("cannot flush: %w", err)
	}
	return in.mp.Shutdown(ctx)
}

// Call records one outbound HTTP call to callee (server.address
// <callee>.shop.svc.cluster.local) answered with code, as OpenTelemetry's HTTP client
// instrumentation does: ClientDuration, with error.type for a 4xx or 5xx.
func (in *Instance) Call(ctx context.Context, callee string, code int, seconds float64) {
	attrs := []attribute.KeyValue{attribute.String("server.address", callee+".shop.svc.cluster.local"),
		attribute.Int("server.port", 8080), attribute.String("http.request.method", "GET"),
		attribute.Int("http.response.status_code", code)}
	if code >= 400 {
		attrs = append(attrs, attribute.String("error.type", strconv.Itoa(code)))
	}
	in.client.Record(ctx, seconds, metric.WithAttributes(attrs...))
}

// RPC records one outbound gRPC call of service.Method ending with the gRPC status code, as
// the experimental RPC client conventions do: RPCClientDuration in milliseconds.
func (in *Instance) RPC(ctx context.Context, service string, code int, ms float64) {
	in.rpc.Record(ctx, ms, metric.WithAttributes(attribute.String("rpc.system", "grpc"),
		attribute.String("rpc.service", service), attribute.String("rpc.method", "Get"),
		attribute.Int("rpc.grpc.status_code", code)))
}
