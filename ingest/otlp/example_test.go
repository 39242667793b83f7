package otlp_test

import (
	"context"
	"log"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// Example_sdk sets up the OpenTelemetry Go SDK to export to herd's OTLP/HTTP listener: delta
// temporality, an export every 250 ms (one herd window), exponential histograms, and the
// resource attributes herd takes the group and the instance from. docs/ingest.md shows the
// same code.
func Example_sdk() {
	ctx := context.Background()
	exp, err := otlpmetrichttp.New(ctx,
		otlpmetrichttp.WithEndpoint("127.0.0.1:4318"), // herd serve's -otlp.http
		otlpmetrichttp.WithInsecure(),
		// otlpmetrichttp.WithHeaders(map[string]string{"Authorization": "Bearer " + token}),
		otlpmetrichttp.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality {
			return metricdata.DeltaTemporality
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(250*time.Millisecond))),
		sdkmetric.WithResource(resource.NewSchemaless(
			attribute.String("service.name", "checkout"),
			attribute.String("service.version", "1.4.2"),
			attribute.String("service.instance.id", uuid.NewString()),
		)),
		// Exponential histograms at scale 5 are herd's buckets exactly; 512 buckets keep scale 5
		// over a range of 2^16 (100 µs to 6.5 s) before the SDK coarsens them.
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 512, MaxScale: 5}})),
	)
	defer func() {
		// Flush first: Shutdown cancels a periodic export in flight, and with delta
		// temporality its deltas are lost.
		_ = mp.ForceFlush(ctx)
		_ = mp.Shutdown(ctx)
	}()

	meter := mp.Meter("checkout")
	requests, _ := meter.Int64Counter("app_requests")
	duration, _ := meter.Float64Histogram("app_request_duration", metric.WithUnit("s"))

	start := time.Now()
	code := 200 // serve a request
	attrs := metric.WithAttributes(attribute.Int("status_code", code))
	requests.Add(ctx, 1, attrs)
	duration.Record(ctx, time.Since(start).Seconds(), attrs)
}
