// Package sim is herd's simulator: it makes up the traffic that the rest of herd measures.
//
// It owns:
//
//   - the fleet (Fleet): groups (Group) of instances that start, serve requests and end on their
//     lifetimes (churn), each one a real agent library client (ingest.Client) publishing batches,
//     with live knobs per group (GroupState: target instances, error rate, latency factor, crash
//     loop) and exact totals of what was published (Totals);
//   - Spread, which spreads a number of instances over services and versions, the last version
//     being the canary;
//   - the detector benchmark (BenchDetect): seeded trials on simulated time that generate closed
//     windows for a baseline and a canary and feed a real alert.Detector through its exported
//     API, measuring false rollbacks and detection times.
//
// The random traffic itself (Poisson arrivals, Bernoulli errors, log-normal latency and the
// simulated closed windows) comes from the leaf package sim/traffic, which the detector's own
// tests share: one Poisson sampler and one window generator for all of herd.
//
// A seed fixes the draws: every fleet shard and every benchmark trial owns its random source, so
// one seed gives the same traffic whatever the goroutine scheduling (a fleet in real time still
// follows the clock: a boundary missed on a busy machine is skipped). Instance identities are
// random, like a real fleet's. `herd sim`, `herd demo` and `herd bench` wire this
// package to NATS; tests use it to drive the real pipeline.
package sim
