// Package node assembles herd's roles into one process and runs them: the embedded (or an
// external) NATS server, the intake and rollup (all partitions, or the partitions a worker
// holds by lease), the detector with rollback delivery, the dashboard, and the operational
// HTTP endpoints /metrics, /livez and /readyz. `herd serve`, `herd rollup`, `herd detect`,
// `herd web` and `herd demo` are nodes with different roles; cmd/herd only parses flags
// into a Config.
//
// The components never import each other: the node connects them with function values.
// Data flows NATS → intake → rollup → windows (published on herd.rollup.*, and handed to a
// local detector and dashboard) → detector → verdicts (published on herd.verdict.*) →
// delivery. A role that is not local gets its input from NATS instead.
//
// Run starts the outputs first, subscribes, starts the inputs, opens the embedded server's
// client listener once the intake has subscribed (so an agent that connects the moment the
// port opens loses nothing), replays the history stream into the outputs while the inputs'
// windows are held, then lets them through; on cancellation it stops in data-flow order: not ready → stop the
// inputs (drain the intake, release the leases and let released partitions close their
// windows) → flush open windows → unsubscribe → stop detector, delivery and dashboard →
// stop HTTP → drain NATS → stop the embedded server. Every goroutine it starts has exited
// when Run returns.
package node
