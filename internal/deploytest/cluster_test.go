package deploytest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/checkfor"
)

// Credentials of the example users in deploy/nats/herd-accounts.conf.
const (
	herdUser     = "herd"
	herdPassword = "EXAMPLE-herd-password"
	checkoutUser = "agent-checkout"
	checkoutPass = "EXAMPLE-agent-checkout-password"
	searchUser   = "agent-search"
	searchPass   = "EXAMPLE-agent-search-password"
)

// confDir is deploy/nats relative to this package.
var confDir = filepath.Join("..", "..", "deploy", "nats")

// cluster is a 3-node nats-server cluster started from deploy/nats/nats-{1,2,3}.conf.
type cluster struct {
	servers []*server.Server
}

// startCluster loads the three node configurations, rewrites them for the test (see the
// package comment), starts the servers and waits until every node has routes to the two
// others. The servers are shut down when the test ends.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	const n = 3
	opts := make([]*server.Options, n)
	nodeIndex := map[string]int{} // server_name → index
	for i := range n {
		path := filepath.Join(confDir, fmt.Sprintf("nats-%d.conf", i+1))
		o, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("cannot load %s: %v", path, err)
		}
		opts[i] = o
		nodeIndex[o.ServerName] = i
	}
	ports := freeClusterPorts(t, n)
	for i, o := range opts {
		o.Host = "127.0.0.1"
		o.Port = -1
		o.HTTPHost, o.HTTPPort = "", 0
		o.Cluster.Host = "127.0.0.1"
		o.Cluster.Port = ports[i]
		o.StoreDir = t.TempDir()
		o.JetStreamMaxMemory = 64 << 20
		o.JetStreamMaxStore = 1 << 30
		o.NoSigs, o.NoLog = true, true
		routes := make([]*url.URL, 0, len(o.Routes))
		for _, r := range o.Routes {
			j, ok := nodeIndex[r.Hostname()]
			if !ok {
				t.Fatalf("%s: route %s names no node of the cluster", o.ServerName, r.Redacted())
			}
			nr := *r
			nr.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[j]))
			routes = append(routes, &nr)
		}
		if len(routes) != n {
			t.Fatalf("%s: got %d routes; want %d", o.ServerName, len(routes), n)
		}
		o.Routes = routes
	}
	c := &cluster{}
	for _, o := range opts {
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatalf("cannot create %s: %v", o.ServerName, err)
		}
		go s.Start()
		c.servers = append(c.servers, s)
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
	}
	for _, s := range c.servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s is not ready for connections after 10s", s.Name())
		}
	}
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for _, s := range c.servers {
			rz, err := s.Routez(nil)
			if err != nil {
				return err
			}
			peers := map[string]bool{}
			for _, r := range rz.Routes {
				peers[r.RemoteName] = true
			}
			if len(peers) != n-1 {
				return fmt.Errorf("%s has routes to %d peers; want %d", s.Name(), len(peers), n-1)
			}
		}
		return nil
	})
	return c
}

// url returns the client URL of node i with the user's credentials.
func (c *cluster) url(i int, user, password string) string {
	u, err := url.Parse(c.servers[i].ClientURL())
	if err != nil {
		panic("BUG: server client URL: " + err.Error())
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// freeClusterPorts picks n TCP ports on 127.0.0.1 that can be bound now, from 20000–29999:
// below Linux's ephemeral range (32768–60999), so an outgoing connection does not take a
// port between the probe and the server's bind.
func freeClusterPorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	start := 20000 + rand.IntN(10000)
	for k := 0; k < 10000 && len(ports) < n; k++ {
		p := 20000 + (start-20000+k)%10000
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, p)
	}
	if len(ports) < n {
		t.Fatalf("got %d free ports in 20000–29999; want %d", len(ports), n)
	}
	return ports
}

// errRecorder collects the errors a connection reports asynchronously (permission
// violations, slow consumers).
type errRecorder chan error

func (r errRecorder) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	select {
	case r <- err:
	default:
	}
}

// connect opens a client connection with the given URLs and options; it is closed when the
// test ends.
func connect(t *testing.T, urls string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("cannot connect to %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within
