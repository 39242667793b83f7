package embednats

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster ports are picked from this range, below Linux's ephemeral range (32768–60999), so
// a port probed free is not handed to some outgoing connection before the server binds it.
const (
	clusterPortMin = 14000
	clusterPortMax = 16000
)

// StartCluster starts n in-process nats-servers joined by routes, each with JetStream (store
// under dir/<name>) and the partition mapping, and waits until the routes are up and
// JetStream has a meta leader. Client ports are random. The caller shuts the servers down.
// A probed cluster port can still be taken by another process before the server binds it,
// so it tries other ports up to five times.
func StartCluster(n int, dir string) ([]*server.Server, error) {
	var lastErr error
	for range 5 {
		servers, err := startCluster(n, dir)
		if err == nil {
			return servers, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("cannot start a %d-node nats cluster: %w", n, lastErr)
}

// ClusterOptions returns the options of n nats-servers joined by routes, as StartCluster
// starts them: JetStream with its store under dir/<name>, random client ports and free
// cluster ports. Tests that start the nodes themselves (say, one at a time) use it; each
// value is for one server only.
func ClusterOptions(n int, dir string) ([]*server.Options, error) {
	ports, err := freeClusterPorts(n)
	if err != nil {
		return nil, err
	}
	routes := make([]*url.URL, n)
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))}
	}
	// A name of its own: a route to a port another cluster freed (a node shut down in a test
	// running beside) reaches a cluster of another name, which refuses it, instead of joining
	// two clusters into one.
	cluster := "herd-test-" + strconv.FormatUint(rand.Uint64(), 36)
	opts := make([]*server.Options, n)
	for i := range n {
		name := cluster + "-" + strconv.Itoa(i+1)
		opts[i] = &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       -1,
			NoSigs:     true,
			NoLog:      true,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, name),
			Cluster: server.ClusterOpts{
				Name:     cluster,
				Host:     "127.0.0.1",
				Port:     ports[i],
				PoolSize: -1, // one route per peer: NumRoutes is n-1 once formed
			},
			Routes: routes,
		}
	}
	return opts, nil
}

func startCluster(n int, dir string) ([]*server.Server, error) {
	opts, err := ClusterOptions(n, dir)
	if err != nil {
		return nil, err
	}
	var servers []*server.Server
	stopAll := func() {
		for _, s := range servers {
			Shutdown(s)
		}
	}
	for _, o := range opts {
		s, err := server.NewServer(o)
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("cannot create server %s: %w", o.ServerName, err)
		}
		if err := ApplyMapping(s); err != nil {
			stopAll()
			return nil, err
		}
		go s.Start()
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			stopAll()
			return nil, fmt.Errorf("server %s did not become ready (cluster port taken?)", s.Name())
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		formed, leaders := true, 0
		for _, s := range servers {
			if s.NumRoutes() < n-1 {
				formed = false
			}
			if s.JetStreamIsLeader() {
				leaders++
			}
		}
		if formed && leaders == 1 {
			return servers, nil
		}
		if time.Now().After(deadline) {
			stopAll()
			return nil, fmt.Errorf("cluster did not form within 20s (routes formed %v, meta leaders %d)", formed, leaders)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeClusterPorts returns n distinct ports of the cluster range that could be bound just
// now.
func freeClusterPorts(n int) ([]int, error) {
	var ports []int
	start := clusterPortMin + rand.IntN(clusterPortMax-clusterPortMin)
	for i := 0; i < clusterPortMax-clusterPortMin && len(ports) < n; i++ {
		p := clusterPortMin + (start-clusterPortMin+i)%(clusterPortMax-clusterPortMin)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports = append(ports, p)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("found only %d free ports in %d–%d", len(ports), clusterPortMin, clusterPortMax)
	}
	return ports, nil
}

// ClientURLs returns the client URLs of servers, comma-separated, as connectNATS and the
// --nats flags take them.
func ClientURLs(servers []*server.Server) string {
	var s string
	for i, srv := range servers {
		if i > 0 {
			s += ","
		}
		s += srv.ClientURL()
	}
	return s
}
