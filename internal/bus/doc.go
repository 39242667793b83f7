// Package bus is herd's NATS plumbing, shared by every role that talks to NATS (serve, the
// rollup workers, detect, web, demo, sim, tail, agent):
//
//   - Connect and Drain: a client connection with herd's settings (endless reconnects, a
//     bounded reconnect buffer, asynchronous errors counted by reason) and an orderly close;
//   - Publisher: closed windows on herd.rollup.<service>.<version>, verdicts on
//     herd.verdict.<service> and deployment announcements on herd.deploy.<service>, each
//     failure counted by kind and reason, never dropped silently;
//   - Subscribe: the same three kinds in, decoded, undecodable messages counted, and the
//     windows a group skipped (a gap in its window starts) counted as missing;
//   - History: the JetStream stream that keeps windows, verdicts and deployments for a
//     restart, created or updated at start and replayed into the same handlers.
//
// Every counter is registered in the *metrics.Set the caller passes, so a process exports
// each family once whatever roles it runs.
package bus
