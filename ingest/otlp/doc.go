// Package otlp is herd's OpenTelemetry metrics receiver: OTLP over HTTP (protobuf and JSON,
// POST /v1/metrics) and gRPC (MetricsService/Export), decoded with the OpenTelemetry
// Collector's pdata.
//
// Every resource of a request is one instance of one group: the resource attributes
// service.name, service.version and service.instance.id (keys configurable) name the service,
// the version and the instance. The receiver turns each instance's data points into herd's
// own per-instance delta batches (proto.Batch), one per distinct data point timestamp, and
// publishes them on herd.in.<service>.<version> like an agent does, so the intake and the
// rollup apply the same limits, clock and lateness rules to them as to any batch: a batch's
// interval ends at its data points' own timestamp, which places it in its window.
//
// Conversion:
//   - Monotonic sums become counters. Cumulative ones are turned into deltas per (instance,
//     series), with reset detection (a value that decreases, or a new start time, starts
//     again from zero); delta ones are taken as they are.
//   - Gauges and non-monotonic cumulative sums become gauges.
//   - Exponential histograms map onto herd's buckets (proto.Gamma = 2^(1/32), OpenTelemetry
//     scale 5): at scale 5 bucket k is herd bucket k; above scale 5, 2^(scale-5) buckets tile
//     one herd bucket exactly (k >> (scale-5)); below scale 5 one bucket spans 2^(5-scale)
//     herd buckets and its count goes to the middle one (the geometric midpoint). Counts are
//     exact at every scale; only the placement inside a coarse bucket is approximate.
//     Cumulative exponential histograms are subtracted at the coarser of the two scales, so a
//     scale change of the SDK loses nothing.
//   - Explicit-bucket histograms are placed like classic Prometheus ones (each bucket's count
//     at a representative value of its bounds, as `herd agent` does).
//   - Summaries and non-monotonic delta sums are refused (reason "unsupported_type").
//   - OpenTelemetry's client duration histograms (http.client.request.duration,
//     rpc.client.duration, …) become the caller group's request-flow edges
//     (proto.SeriesEdgeCalls, …) by callee, bounded per group (edges.go); the client series
//     themselves are not published.
//
// Refusals are answered with the OTLP partial-success fields (rejected_data_points and a
// message), counted in herd_otlp_points_refused_total{reason} or, for a whole request,
// herd_otlp_requests_refused_total{reason}, and logged at most every 10 s.
//
// Cumulative state is kept per instance in the receiver, so all of an instance's exports must
// reach the same receiver (one `herd serve`, or a Collector that routes by resource); an
// instance silent for longer than Config.InstanceTTL is forgotten.
package otlp
