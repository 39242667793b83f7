// Package ingest is herd's agent side and the worker side's NATS intake.
//
// Agent side: a Client holds the instruments of one instance (Counter, Gauge, sketch-backed
// Histogram and the RED helper) for one service and version, and publishes one batch of
// deltas per interval (Flush, Run). A Scraper feeds a Client from a local Prometheus or
// OpenMetrics endpoint, turning cumulative counters and histograms into deltas; a Rewriter
// (package ingest/mesh) turns a mesh proxy's request metrics into herd's RED first. Agent
// wires both for `herd agent`; package ingest/kube runs one per pod of a Kubernetes node for
// `herd agent --kubernetes`.
//
// Worker side: Intake subscribes to agent batches on NATS, decodes and checks them and hands
// each good batch to a function (the rollup), counting every refusal by reason.
//
// The package publishes through a function value (PublishFunc), so the library needs no NATS
// connection of its own; cmd/herd passes nats.Conn.Publish. See docs/agent.md.
package ingest
