package web

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// listenerHelp describes the families of a LimitListener.
var listenerHelp = map[string]string{
	"herd_http_connections":                "Open connections of the HTTP listener (websockets included).",
	"herd_http_connections_accepted_total": "Connections the HTTP listener accepted and kept.",
	"herd_http_connections_refused_total":  "Connections the HTTP listener answered 503 and closed at once, by reason: limit (-http.max-conns open).",
}

// tooBusy is written to a connection refused at the limit before it is closed.
const tooBusy = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\ntoo many open connections\n"

// refuseWriteTimeout bounds the write of tooBusy, so a refused peer cannot stall Accept.
const refuseWriteTimeout = 50 * time.Millisecond

// LimitListener wraps ln so that at most maxConns of its connections are open at a time: a
// connection accepted beyond that is answered 503, closed at once and counted, so a flood of
// idle connections holds at most maxConns descriptors (plus the one being refused). It
// exports herd_http_connections (open), herd_http_connections_accepted_total and
// herd_http_connections_refused_total{reason="limit"} into set, labelled listener=name
// (a node's main listener is "http", its operations listener "ops"). A connection's slot is
// freed when it is closed, also after an HTTP handler hijacked it (the websocket).
func LimitListener(ln net.Listener, maxConns int, set *metrics.Set, name string) net.Listener {
	promhelp.Describe(listenerHelp)
	label := `listener="` + name + `"`
	l := &limitListener{Listener: ln, max: int64(maxConns),
		accepted: set.NewCounter("herd_http_connections_accepted_total{" + label + "}"),
		refused:  set.NewCounter(`herd_http_connections_refused_total{` + label + `,reason="limit"}`)}
	set.NewGauge("herd_http_connections{"+label+"}", func() float64 { return float64(l.open.Load()) })
	return l
}

type limitListener struct {
	net.Listener
	max      int64
	open     atomic.Int64
	accepted *metrics.Counter
	refused  *metrics.Counter
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			l.accepted.Inc()
			return &limitConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.refused.Inc()
		_ = c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
		_, _ = c.Write([]byte(tooBusy))
		_ = c.Close()
	}
}

// limitConn frees its listener slot when closed, once.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

// NetConn returns the wrapped connection (the stream sets its TCP send buffer through it).
func (c *limitConn) NetConn() net.Conn { return c.Conn }

// tcpConn returns the *net.TCPConn under c, unwrapping NetConn layers, or nil.
func tcpConn(c net.Conn) *net.TCPConn {
	for range 8 {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
