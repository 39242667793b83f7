package otlp

import (
	"net"
	"sync"
	"sync/atomic"
)

// limitListener holds at most max open connections: one accepted beyond it is closed at once
// and counted with reason "too_many_connections". The bound is shared by both listeners.
type limitListener struct {
	net.Listener
	open *atomic.Int64
	max  int64
	drop func()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.drop()
			c.Close()
			continue
		}
		return &limitConn{Conn: c, open: l.open}, nil
	}
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// isLoopback reports whether a remote address is on the loopback network.
func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case nil:
		return false
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
