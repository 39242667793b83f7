// Package web is herd's HTTP API, websocket hub and embedded browser dashboard.
//
// A Server keeps, per (service, version) group, a ring buffer of compact window summaries
// (request rate, error ratio, p50/p90/p99, instance counts) for Config.History, the latest
// verdict of every canary, and recent deploy announcements. cmd/herd feeds it with AddWindow,
// SetVerdict and AddDeployment, which never block: they enqueue to the hub goroutine started
// by Run, which numbers every event with a global sequence number, keeps a bounded replay
// ring, and fans the event out to websocket clients through per-client bounded queues.
//
// Handler serves the JSON API under /api/v1/, the websocket at /api/v1/stream and the
// dashboard (plain ES modules and the vendored uPlot library, embedded in the binary) at /.
// A Guard protects the routes: bearer tokens with a read or a read+write scope, and without
// tokens writes only as same-origin JSON from loopback (see Guard). Everything the Server
// stores or renders is checked against its schema first, and the dashboard escapes all text.
// HTTPConfig and LimitListener configure and cap the node's HTTP listener.
// See docs/dashboard.md for the pages, the protocol, the routes and the security rules.
package web
