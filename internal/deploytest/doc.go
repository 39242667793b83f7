// Package deploytest checks herd's deployment files against real servers. It holds only
// tests: they start a 3-node nats-server cluster from deploy/nats/nats-{1,2,3}.conf and verify
// the partition mapping, the per-service publish permissions, JetStream (R3 KV) and what a
// node failure costs a stream of agent batches.
//
// The configuration files are loaded with the nats-server Go API (server.ProcessConfigFile)
// and only what a test on one machine must change is rewritten: listeners on 127.0.0.1 with a
// random client port, free cluster ports picked outside the ephemeral range, route URLs
// pointed at those ports (host nats-<i> becomes 127.0.0.1:<port of node i>, the route
// credentials kept), the JetStream store in a temporary directory with small limits, and the
// monitoring listener off. Accounts, users, permissions, the mapping, the cluster name and
// route authorization are used exactly as written.
package deploytest
