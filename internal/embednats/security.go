package embednats

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/herd-dev/herd/proto"
)

// AgentsAccount is the account of the agent identities of an Auth. Agents publish there, and
// only their batches leave it: the account maps herd.in.<service>.<version> to the partition
// subject, as ApplyMapping does for the global account, and exports herd.p.> to the global
// account, where herd's own identities live.
//
// The separate account is what lets an agent publish herd.in.<service>.<version> and not
// herd.p.<n>.<service>.<version>: nats-server checks a publish permission against the subject
// after the account's mapping, so an agent's allow list has to name the partition subject
// herd.p.*.<service>.*, and within one account a batch sent straight to a (wrong) partition
// would look the same. In the agents' account every subject under herd.p. that a client
// publishes is mapped to refusedPartitions, which no agent may publish to, so only batches
// that came through the herd.in mapping are allowed.
const AgentsAccount = "HERD_AGENTS"

// refusedPartitions is where the agents' account maps partition subjects that an agent
// publishes directly; no agent may publish there, so the server refuses them.
const refusedPartitions = "herd.refused.p.>"

// Security is the embedded server's client security. The zero value is herd's default: any
// client that reaches the listener may connect and publish anything, without TLS, and there
// is no monitoring listener.
type Security struct {
	// AuthFile is a JSON auth file (see Auth and LoadAuth); Validate reads it into Auth when
	// Auth is nil.
	AuthFile string
	// Auth, if set, requires every client to authenticate as one of its identities.
	Auth *Auth
	// TLS secures the client listener.
	TLS TLS
	// MonitorListen is host:port of the server's HTTP monitoring listener (/varz, /connz, …;
	// port 0 picks a free one); empty serves none. The host must be a loopback address or
	// localhost: the endpoints show every connection and need no credentials.
	MonitorListen string
}

// TLS is the client listener's TLS: with Cert and Key every TCP client must use TLS; with CA
// too, every client must also present a certificate signed by one of CA's certificates.
// In-process clients (nats.InProcessServer) skip TLS.
type TLS struct {
	// Cert and Key are PEM files of the server's certificate (chain) and key.
	Cert, Key string
	// CA is a PEM file of the CA certificates that verify client certificates.
	CA string
}

// enabled reports whether t turns TLS on.
func (t TLS) enabled() bool { return t.Cert != "" }

// Validate checks s, naming the offending flag, and reads AuthFile into Auth when Auth is nil.
func (s *Security) Validate() error {
	if s.Auth == nil && s.AuthFile != "" {
		a, err := LoadAuth(s.AuthFile)
		if err != nil {
			return fmt.Errorf("-nats.auth: %w", err)
		}
		s.Auth = a
	}
	if s.Auth != nil {
		if err := s.Auth.Validate(); err != nil {
			return fmt.Errorf("-nats.auth: %w", err)
		}
	}
	t := s.TLS
	if (t.Cert == "") != (t.Key == "") {
		return errors.New("-nats.listen.tls.cert and -nats.listen.tls.key go together")
	}
	if t.CA != "" && !t.enabled() {
		return errors.New("-nats.listen.tls.ca needs -nats.listen.tls.cert and -nats.listen.tls.key")
	}
	for flag, f := range map[string]string{"-nats.listen.tls.cert": t.Cert, "-nats.listen.tls.key": t.Key, "-nats.listen.tls.ca": t.CA} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	if s.MonitorListen != "" {
		if _, _, err := monitorHostPort(s.MonitorListen); err != nil {
			return fmt.Errorf("-nats.monitor: %w", err)
		}
	}
	return nil
}

// monitorHostPort parses a monitoring listen address and refuses a host that is not
// loopback. Port 0 becomes -1, nats-server's "pick a free port".
func monitorHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("cannot parse %q as host:port: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hp)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", 0, fmt.Errorf("host %q is not a loopback address: the monitoring endpoints need no credentials and show every connection", host)
	}
	if port == 0 {
		port = -1
	}
	return host, port, nil
}

// apply sets s's authentication, TLS and monitoring on opts. s has passed Validate. With Auth,
// it adds the agents' account to opts; configureAgents completes it once the server exists.
func (s *Security) apply(opts *server.Options) error {
	if s.MonitorListen != "" {
		host, port, err := monitorHostPort(s.MonitorListen)
		if err != nil {
			return fmt.Errorf("-nats.monitor: %w", err)
		}
		opts.HTTPHost, opts.HTTPPort = host, port
	}
	if t := s.TLS; t.enabled() {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.Cert, KeyFile: t.Key, CaFile: t.CA, Verify: t.CA != ""})
		if err != nil {
			return fmt.Errorf("cannot load the embedded nats-server's TLS certificate: %w", err)
		}
		opts.TLSConfig, opts.TLSVerify = tc, t.CA != ""
	}
	a := s.Auth
	if a == nil {
		return nil
	}
	agents := server.NewAccount(AgentsAccount)
	opts.Accounts = append(opts.Accounts, agents)
	// Internal identities have no Permissions (everything allowed) and no Account (the global
	// one, which holds herd's JetStream data with or without authentication).
	if id := a.Internal; id != nil {
		if id.NKey != "" {
			opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: id.NKey})
		} else {
			opts.Users = append(opts.Users, &server.User{Username: id.User, Password: id.Password})
		}
	}
	for _, k := range a.InternalNKeys {
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: k})
	}
	for _, ag := range a.Agents {
		if ag.NKey != "" {
			opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: ag.NKey, Account: agents, Permissions: agentPermissions(ag.Service)})
		} else {
			opts.Users = append(opts.Users, &server.User{Username: ag.User, Password: ag.Password, Account: agents, Permissions: agentPermissions(ag.Service)})
		}
	}
	return nil
}

// agentPermissions lets an agent publish its service's batches, as the server sees them after
// the agents' account's mapping (herd.p.<n>.<service>.<version>), and subscribe to nothing.
func agentPermissions(service string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{proto.PrefixPartition + "*." + service + ".*"}},
		Subscribe: &server.SubjectPermission{Deny: []string{">"}},
	}
}

// configureAgents gives the agents' account of s its mappings and exports its partition
// subjects to the global account.
func configureAgents(s *server.Server) error {
	agents, err := s.LookupAccount(AgentsAccount)
	if err != nil {
		return fmt.Errorf("cannot find account %s: %w", AgentsAccount, err)
	}
	if err := agents.AddMapping(mappingSource, mappingDest); err != nil {
		return fmt.Errorf("cannot add subject mapping %s → %s to %s: %w", mappingSource, mappingDest, AgentsAccount, err)
	}
	if err := agents.AddMapping(proto.SubjectPartitionAll, refusedPartitions); err != nil {
		return fmt.Errorf("cannot add subject mapping %s → %s to %s: %w", proto.SubjectPartitionAll, refusedPartitions, AgentsAccount, err)
	}
	if err := agents.AddStreamExport(proto.SubjectPartitionAll, []*server.Account{s.GlobalAccount()}); err != nil {
		return fmt.Errorf("cannot export %s from %s: %w", proto.SubjectPartitionAll, AgentsAccount, err)
	}
	if err := s.GlobalAccount().AddStreamImport(agents, proto.SubjectPartitionAll, ""); err != nil {
		return fmt.Errorf("cannot import %s from %s: %w", proto.SubjectPartitionAll, AgentsAccount, err)
	}
	return nil
}

// NewNKeyIdentity creates a user nkey for a connection of this process. The public key goes
// into Auth.InternalNKeys (or an Agent); the option makes a client sign the server's
// challenge with the seed, which stays in this process's memory.
func NewNKeyIdentity() (publicKey string, opt nats.Option, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, fmt.Errorf("cannot create an nkey: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", nil, fmt.Errorf("cannot create an nkey: %w", err)
	}
	return pub, nats.Nkey(pub, kp.Sign), nil
}
