package embednats_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// The agent password of service "search" in secureServer, stored there only as this bcrypt
// hash (cost 4).
const (
	searchPassword = "agent-search-pw"
	searchHash     = "$2a$04$H90Q9HRreajthFhhfb73xeq6L7D2veDwuKbPqs744Fy5x5VEBf3fS"
)

// secured is a running server with TLS (client certificates required) and identities: the
// internal user herd, an nkey agent of service a, and a bcrypt-password agent of service
// search.
type secured struct {
	s     *server.Server
	files natstest.TLSFiles
	agent nkeys.KeyPair // the agent of service a
}

func startSecured(t *testing.T) *secured {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	files := natstest.WriteTLSFiles(t)
	s, err := embednats.Start(embednats.Config{Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Security: embednats.Security{
			Auth: &embednats.Auth{
				Internal: &embednats.Identity{User: "herd", Password: "herd-pw"},
				Agents: []embednats.Agent{
					{Service: "a", Identity: embednats.Identity{NKey: pub}},
					{Service: "search", Identity: embednats.Identity{User: "agent-search", Password: searchHash}},
				},
			},
			TLS: embednats.TLS{Cert: files.ServerCert, Key: files.ServerKey, CA: files.CA},
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embednats.Shutdown(s) })
	if err := embednats.ApplyMapping(s); err != nil {
		t.Fatal(err)
	}
	return &secured{s: s, files: files, agent: kp}
}

// tlsOpts are the options of a client with the CA and a client certificate.
func (sv *secured) tlsOpts() []nats.Option {
	return []nats.Option{nats.RootCAs(sv.files.CA), nats.ClientCert(sv.files.ClientCert, sv.files.ClientKey)}
}

// connect connects over TCP and TLS with the extra options, sending async errors to errs.
func (sv *secured) connect(t *testing.T, errs chan<- error, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append(sv.tlsOpts(), opts...)
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	return natstest.Connect(t, sv.s, opts...)
}

func (sv *secured) internal(t *testing.T) *nats.Conn {
	t.Helper()
	return sv.connect(t, nil, nats.UserInfo("herd", "herd-pw"))
}

func (sv *secured) agentA(t *testing.T, errs chan<- error) *nats.Conn {
	t.Helper()
	pub, _ := sv.agent.PublicKey()
	return sv.connect(t, errs, nats.Nkey(pub, sv.agent.Sign))
}

// expectViolation waits for the permission violation on subject among errs.
func expectViolation(t *testing.T, errs <-chan error, subject string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.Contains(strings.ToLower(err.Error()), "permissions violation") && strings.Contains(err.Error(), `"`+subject+`"`) {
				return
			}
			t.Logf("other async error: %v", err)
		case <-timeout:
			t.Fatalf("got no permissions violation for %s", subject)
		}
	}
}

func TestAgentPublishesOnlyItsOwnBatches(t *testing.T) {
	t.Parallel()
	sv := startSecured(t)
	in := sv.internal(t)
	all, err := in.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Flush(); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	agent := sv.agentA(t, errs)
	partA := proto.PartitionSubjectPrefix(proto.PartitionOf("a", "1_0")) + "a.1_0"

	if err := agent.Publish("herd.in.a.1_0", []byte("ok-1")); err != nil {
		t.Fatal(err)
	}
	m, err := all.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("the internal subscriber got no batch: %v", err)
	}
	if m.Subject != partA || string(m.Data) != "ok-1" {
		t.Fatalf("got %s %q; want %s %q", m.Subject, m.Data, partA, "ok-1")
	}

	// Each refused publication names the subject the server checked: after the agents'
	// mapping for herd.in and herd.p, as it is for the others.
	wrongPart := 3
	if wrongPart == proto.PartitionOf("a", "1_0") {
		wrongPart = 4
	}
	refused := []struct{ subject, checked string }{
		{"herd.in.b.1_0", proto.PartitionSubjectPrefix(proto.PartitionOf("b", "1_0")) + "b.1_0"},
		{"herd.in.a.1_0.x", "herd.in.a.1_0.x"},
		{"herd.rollup.a.1_0", "herd.rollup.a.1_0"},
		{"herd.verdict.a", "herd.verdict.a"},
		{"herd.deploy.a", "herd.deploy.a"},
		{fmt.Sprintf("herd.p.%d.a.1_0", wrongPart), fmt.Sprintf("herd.refused.p.%d.a.1_0", wrongPart)},
		{partA, "herd.refused." + strings.TrimPrefix(partA, "herd.")},
		{"$JS.API.INFO", "$JS.API.INFO"},
		{"$KV.herd_leases.p.1", "$KV.herd_leases.p.1"},
	}
	for _, r := range refused {
		if err := agent.Publish(r.subject, []byte("refused")); err != nil {
			t.Fatal(err)
		}
		if err := agent.Flush(); err != nil {
			t.Fatal(err)
		}
		expectViolation(t, errs, r.checked)
		if le := agent.LastError(); le == nil || !strings.Contains(le.Error(), r.checked) {
			t.Errorf("got LastError %v; want the violation for %s", le, r.checked)
		}
	}
	if _, err := agent.SubscribeSync("herd.>"); err != nil {
		t.Fatal(err)
	}
	if err := agent.Flush(); err != nil {
		t.Fatal(err)
	}
	expectViolation(t, errs, "herd.>")

	// Messages from one connection arrive in order: the marker coming next proves that
	// nothing refused got through.
	if err := agent.Publish("herd.in.a.1_0", []byte("ok-2")); err != nil {
		t.Fatal(err)
	}
	m, err = all.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("the internal subscriber got no marker: %v", err)
	}
	if string(m.Data) != "ok-2" {
		t.Fatalf("got %s %q; want the marker ok-2 only", m.Subject, m.Data)
	}
	if !agent.IsConnected() {
		t.Errorf("the agent was disconnected; want only its publications refused")
	}
}

func TestBcryptPasswordAgent(t *testing.T) {
	t.Parallel()
	sv := startSecured(t)
	in := sv.internal(t)
	sub, err := in.SubscribeSync("herd.p.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Flush(); err != nil {
		t.Fatal(err)
	}
	agent := sv.connect(t, nil, nats.UserInfo("agent-search", searchPassword))
	if err := agent.Publish("herd.in.search.2_0", []byte("x")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("got no batch: %v", err)
	}
	if want := proto.PartitionSubjectPrefix(proto.PartitionOf("search", "2_0")) + "search.2_0"; m.Subject != want {
		t.Fatalf("got %s; want %s", m.Subject, want)
	}
	if _, err := nats.Connect(sv.s.ClientURL(), append(sv.tlsOpts(), nats.UserInfo("agent-search", searchHash))...); err == nil {
		t.Fatal("connected with the hash as password; want refused")
	}
}

func TestInternalPublishesEverything(t *testing.T) {
	t.Parallel()
	sv := startSecured(t)
	sub := sv.internal(t)
	all, err := sub.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	pub := sv.connect(t, errs, nats.UserInfo("herd", "herd-pw"))
	for _, subj := range []string{"herd.in.b.1_0", "herd.rollup.a.1_0", "herd.verdict.a", "herd.deploy.a", "herd.p.3.a.1_0"} {
		if err := pub.Publish(subj, []byte(subj)); err != nil {
			t.Fatal(err)
		}
		m, err := all.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("%s: got nothing: %v", subj, err)
		}
		want := subj
		if strings.HasPrefix(subj, proto.PrefixIn) {
			want = proto.PartitionSubjectPrefix(proto.PartitionOf("b", "1_0")) + "b.1_0"
		}
		if m.Subject != want || string(m.Data) != subj {
			t.Fatalf("got %s %q; want %s %q", m.Subject, m.Data, want, subj)
		}
	}
	// JetStream: the internal identity creates and uses a bucket.
	js, err := jetstream.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "herd_test"})
	if err != nil {
		t.Fatalf("cannot create a bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatalf("got async error %v; want none", err)
	default:
	}
}

func TestUnauthenticatedRefused(t *testing.T) {
	t.Parallel()
	sv := startSecured(t)
	stranger, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	strangerPub, _ := stranger.PublicKey()
	for name, opt := range map[string]nats.Option{
		"no credentials": func(*nats.Options) error { return nil },
		"wrong password": nats.UserInfo("herd", "not-the-password"),
		"unknown user":   nats.UserInfo("mallory", "herd-pw"),
		"unknown nkey":   nats.Nkey(strangerPub, stranger.Sign),
	} {
		nc, err := nats.Connect(sv.s.ClientURL(), append(sv.tlsOpts(), opt, nats.NoReconnect())...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected; want refused", name)
			continue
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: got %v; want %v", name, err, nats.ErrAuthorization)
		}
	}
}

func TestTLSRefusesClientsWithoutCAOrCertificate(t *testing.T) {
	t.Parallel()
	sv := startSecured(t)
	user := nats.UserInfo("herd", "herd-pw")
	for name, opts := range map[string][]nats.Option{
		"no CA":                 {user, nats.ClientCert(sv.files.ClientCert, sv.files.ClientKey)},
		"no client certificate": {user, nats.RootCAs(sv.files.CA)},
	} {
		nc, err := nats.Connect(sv.s.ClientURL(), append(opts, nats.NoReconnect(), nats.Timeout(2*time.Second))...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected; want refused", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	// nats.go always upgrades when the server asks for TLS; a client that speaks plain NATS
	// regardless is cut off.
	addr := strings.TrimPrefix(sv.s.ClientURL(), "tls://")
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("got INFO %q, %v; want tls_required", info, err)
	}
	if _, err := conn.Write([]byte("CONNECT {\"user\":\"herd\",\"pass\":\"herd-pw\"}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if strings.Contains(string(rest), "PONG") {
		t.Fatalf("a plain client got %q; want the connection closed without PONG", rest)
	}
	// With both, the same identity connects: the refusals above were TLS's.
	natstest.Connect(t, sv.s, append(sv.tlsOpts(), user)...)
}

func TestInProcessSkipsTLS(t *testing.T) {
	t.Parallel()
	files := natstest.WriteTLSFiles(t)
	pub, opt, err := embednats.NewNKeyIdentity()
	if err != nil {
		t.Fatal(err)
	}
	s, err := embednats.Start(embednats.Config{Port: -1, Security: embednats.Security{
		Auth: &embednats.Auth{InternalNKeys: []string{pub}},
		TLS:  embednats.TLS{Cert: files.ServerCert, Key: files.ServerKey, CA: files.CA},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(s)
	nc, err := embednats.Connect(s, opt)
	if err != nil {
		t.Fatalf("in-process with the generated nkey: %v", err)
	}
	nc.Close()
	// (An in-process client without credentials is refused too, but only after the server's
	// 10 s write deadline: the synchronous pipe blocks its error reply. TCP clients are
	// checked in TestUnauthenticatedRefused.)
}

// TestAuthKeepsJetStreamData checks that turning authentication on keeps what JetStream
// stored without it: herd's streams and buckets stay in the global account.
func TestAuthKeepsJetStreamData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := embednats.Start(embednats.Config{Port: -1, JetStream: true, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := embednats.Connect(s)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "herd_test", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	embednats.Shutdown(s)

	pub, opt, err := embednats.NewNKeyIdentity()
	if err != nil {
		t.Fatal(err)
	}
	s, err = embednats.Start(embednats.Config{Port: -1, JetStream: true, StoreDir: dir,
		Security: embednats.Security{Auth: &embednats.Auth{InternalNKeys: []string{pub}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(s)
	nc, err = embednats.Connect(s, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = jetstream.New(nc)
	if kv, err = js.KeyValue(ctx, "herd_test"); err != nil {
		t.Fatalf("the bucket is gone after turning authentication on: %v", err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != "before" {
		t.Fatalf("got %q; want before", e.Value())
	}
}

func TestMonitor(t *testing.T) {
	t.Parallel()
	s, err := embednats.Start(embednats.Config{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	if a := s.MonitorAddr(); a != nil {
		t.Errorf("got a monitoring listener on %s by default; want none", a)
	}
	embednats.Shutdown(s)

	s, err = embednats.Start(embednats.Config{Port: -1, Security: embednats.Security{MonitorListen: "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(s)
	a := s.MonitorAddr()
	if a == nil {
		t.Fatal("got no monitoring listener; want one on 127.0.0.1")
	}
	resp, err := http.Get("http://" + a.String() + "/varz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"server_id"`) {
		t.Fatalf("GET /varz: got %d %.100s; want 200 with server_id", resp.StatusCode, body)
	}

	for _, hp := range []string{"0.0.0.0:8222", ":8222", "[::]:0", "192.0.2.1:8222", "example.com:8222", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"} {
		s, err := embednats.Start(embednats.Config{Port: -1, Security: embednats.Security{MonitorListen: hp}})
		if err == nil {
			embednats.Shutdown(s)
			t.Errorf("%q: started; want refused", hp)
			continue
		}
		if !strings.Contains(err.Error(), "-nats.monitor") {
			t.Errorf("%q: got %v; want an error naming -nats.monitor", hp, err)
		}
	}
}

func TestSecurityValidate(t *testing.T) {
	t.Parallel()
	files := natstest.WriteTLSFiles(t)
	for name, c := range map[string]struct {
		sec  embednats.Security
		want string
	}{
		"cert without key": {embednats.Security{TLS: embednats.TLS{Cert: files.ServerCert}}, "-nats.listen.tls.key"},
		"CA without cert":  {embednats.Security{TLS: embednats.TLS{CA: files.CA}}, "-nats.listen.tls.ca"},
		"missing cert":     {embednats.Security{TLS: embednats.TLS{Cert: "/nonexistent.pem", Key: files.ServerKey}}, "-nats.listen.tls.cert"},
		"missing file":     {embednats.Security{AuthFile: "/nonexistent.json"}, "-nats.auth"},
		"empty auth":       {embednats.Security{Auth: &embednats.Auth{}}, "no identity"},
	} {
		err := c.sec.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error with %q", name, err, c.want)
		}
	}
	if _, err := embednats.Start(embednats.Config{Port: -1, Security: embednats.Security{
		TLS: embednats.TLS{Cert: files.ClientKey, Key: files.ServerKey}}}); err == nil {
		t.Error("started with a key as certificate; want an error")
	}
}

func TestInternalNKeyIdentity(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	s, err := embednats.Start(embednats.Config{Port: -1, Security: embednats.Security{
		Auth: &embednats.Auth{Internal: &embednats.Identity{NKey: pub}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(s)
	nc := natstest.Connect(t, s, nats.Nkey(pub, kp.Sign))
	sub, err := nc.SubscribeSync("herd.rollup.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("herd.rollup.a.1_0", []byte("w")); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the internal nkey identity got no window back: %v", err)
	}
}
