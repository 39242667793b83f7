package node

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// ingestConfig is a node with the ingest role only on an embedded server on a random port.
func ingestConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Roles = Roles{Ingest: true}
	cfg.NATSListen, cfg.HTTPListen, cfg.DataDir = "127.0.0.1:0", "", t.TempDir()
	return cfg
}

// TestNodeEndToEndWithSecurity runs a node on an embedded server without security, with
// identities, and with identities and mutual TLS: an agent publishes batches for its service
// with its own identity, and closed windows come out on herd.rollup.> for a subscriber with
// the internal identity.
func TestNodeEndToEndWithSecurity(t *testing.T) {
	t.Parallel() // each case takes a light slot of its own
	for _, tc := range []struct {
		name      string
		auth, tls bool
	}{{"open", false, false}, {"auth", true, false}, {"auth+tls", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			lightParallel(t)
			cfg := ingestConfig(t)
			var internal, agent []nats.Option
			if tc.auth {
				kp, err := nkeys.CreateUser()
				if err != nil {
					t.Fatal(err)
				}
				pub, _ := kp.PublicKey()
				// Through the file, as `herd serve --nats.auth` reads it.
				file := filepath.Join(t.TempDir(), "auth.json")
				data := fmt.Sprintf(`{"internal": {"user": "herd", "password": "herd-pw"},
				  "agents": [{"service": "checkout", "nkey": %q}, {"service": "search", "user": "agent-search", "password": "pw"}]}`, pub)
				if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
				cfg.Embedded.AuthFile = file
				internal = append(internal, nats.UserInfo("herd", "herd-pw"))
				agent = append(agent, nats.Nkey(pub, kp.Sign))
			}
			if tc.tls {
				f := natstest.WriteTLSFiles(t)
				cfg.Embedded.TLS = embednats.TLS{Cert: f.ServerCert, Key: f.ServerKey, CA: f.CA}
				tlsOpts := []nats.Option{nats.RootCAs(f.CA), nats.ClientCert(f.ClientCert, f.ClientKey)}
				internal, agent = append(internal, tlsOpts...), append(agent, tlsOpts...)
			}
			n := startNode(t, cfg)
			if tc.tls && !strings.HasPrefix(n.NATSURL(), "tls://") {
				t.Errorf("got NATS URL %s; want tls://", n.NATSURL())
			}

			in := natstest.Connect(t, n.ns, internal...)
			windows, err := in.SubscribeSync(proto.SubjectRollupAll)
			if err != nil {
				t.Fatal(err)
			}
			if err := in.Flush(); err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, 8)
			ag := natstest.Connect(t, n.ns, append(agent, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				select {
				case errs <- err:
				default:
				}
			}))...)
			client, err := ingest.NewClient(ingest.ClientConfig{Service: "checkout", Version: "1.4.2", Publish: ag.Publish})
			if err != nil {
				t.Fatal(err)
			}
			client.Counter("requests_total").Add(7)
			if err := client.Flush(time.Now(), false); err != nil {
				t.Fatal(err)
			}
			subject, err := proto.RollupSubject("checkout", "1.4.2")
			if err != nil {
				t.Fatal(err)
			}
			var requests float64
			checkfor.Within(t, 15*time.Second, 20*time.Millisecond, func() error {
				// Keep the instance reporting so that windows keep closing.
				if err := client.Flush(time.Now(), false); err != nil {
					return err
				}
				for {
					m, err := windows.NextMsg(time.Millisecond)
					if err != nil {
						break
					}
					if m.Subject != subject {
						return fmt.Errorf("got a window on %s; want %s", m.Subject, subject)
					}
					w, err := proto.UnmarshalWindow(m.Data)
					if err != nil {
						return err
					}
					if s := w.Find("requests_total"); s != nil {
						requests += s.Value
					}
				}
				if requests != 7 {
					return fmt.Errorf("got %v requests in the windows so far; want 7", requests)
				}
				return nil
			})
			select {
			case err := <-errs:
				t.Errorf("the agent got async error %v; want none", err)
			default:
			}
			if tc.auth {
				// The agent of checkout cannot speak for search, nor publish a window.
				if err := ag.Publish("herd.in.search.1_0", []byte("x")); err != nil {
					t.Fatal(err)
				}
				if err := ag.Publish(subject, []byte("{}")); err != nil {
					t.Fatal(err)
				}
				if err := ag.Flush(); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					select {
					case err := <-errs:
						if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
							t.Errorf("got %v; want a permissions violation", err)
						}
					case <-time.After(5 * time.Second):
						t.Fatal("got no permissions violation")
					}
				}
				if _, err := nats.Connect(n.NATSURL(), append(agent[1:], nats.NoReconnect())...); err == nil {
					t.Error("connected without credentials; want refused")
				}
			}
		})
	}
}

func TestNodeMonitor(t *testing.T) {
	lightParallel(t)
	n := startNode(t, ingestConfig(t))
	if u := n.MonitorURL(); u != "" {
		t.Errorf("got monitoring on %s by default; want none", u)
	}

	cfg := ingestConfig(t)
	cfg.Embedded.MonitorListen = "127.0.0.1:0"
	n = startNode(t, cfg)
	if n.MonitorURL() == "" {
		t.Fatal("got no monitoring URL; want one")
	}
	resp, err := http.Get(n.MonitorURL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: got %d; want 200", resp.StatusCode)
	}
}

func TestValidateEmbeddedSecurity(t *testing.T) {
	lightParallel(t)
	for name, c := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"monitor on all interfaces": {func(c *Config) { c.Embedded.MonitorListen = "0.0.0.0:8222" }, "-nats.monitor"},
		"auth file missing":         {func(c *Config) { c.Embedded.AuthFile = filepath.Join(t.TempDir(), "none.json") }, "-nats.auth"},
		"tls key without cert":      {func(c *Config) { c.Embedded.TLS.Key = "key.pem" }, "-nats.listen.tls.cert"},
		"with an external NATS": {func(c *Config) {
			c.NATS.URLs = "nats://127.0.0.1:4222"
			c.Embedded.MonitorListen = "127.0.0.1:8222"
		}, "not with -nats"},
	} {
		cfg := ingestConfig(t)
		c.edit(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error with %q", name, err, c.want)
		}
	}
}
