package web

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/herd-dev/herd/proto"
)

// defaultStreamHistory is how much history a snapshot carries unless the client asks.
const defaultStreamHistory = time.Minute

// maxClientMessage bounds a message from the page (a subscription).
const maxClientMessage = 4096

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 16 << 10,
	// The default CheckOrigin refuses cross-origin pages: only the dashboard served by this
	// listener (or a non-browser client) may connect.
}

// client is one websocket connection. Its reader runs in the HTTP handler's goroutine and
// its writer in a goroutine tracked by Server.connWG.
type client struct {
	srv  *Server
	conn *websocket.Conn

	// service ("" = all) and historyMs are guarded by srv.mu.
	service   string
	historyMs int64

	// mu guards the fields below; it is taken after srv.mu when both are held.
	mu     sync.Mutex
	queue  [][]byte // encoded events waiting for the writer
	resync bool     // the writer must send a snapshot first; pushes are ignored until then
	reset  bool     // the snapshot replaces state after a failed resume
	reason string   // why the client was closed

	notify    chan struct{} // capacity 1: the queue or resync changed
	done      chan struct{} // closed by close
	closeOnce sync.Once
	frame     []byte // the writer's frame buffer
}

// push queues one encoded event. It never blocks: when the queue is full, the backlog is
// coalesced into one snapshot that the writer sends next. The caller holds srv.mu.
func (c *client) push(data []byte) {
	c.mu.Lock()
	switch {
	case c.resync:
		// The coming snapshot is taken after this event was applied, so it includes it.
	case len(c.queue) >= c.srv.cfg.ClientQueue:
		c.srv.m.coalesced.Add(len(c.queue) + 1)
		clear(c.queue)
		c.queue = c.queue[:0]
		c.resync = true
	default:
		c.queue = append(c.queue, data)
	}
	c.mu.Unlock()
	c.signal()
}

func (c *client) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// close ends the connection once; reason is empty for an ordinary disconnect.
func (c *client) close(reason string) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.reason = reason
		c.mu.Unlock()
		if reason != "" {
			c.srv.m.dropped[reason].Inc()
		}
		close(c.done)
		c.conn.Close()
	})
}

// failReason classifies a read or write error: a timeout means the client is too slow
// (write) or silent (read); anything else is an ordinary disconnect.
func failReason(err error, timeout string) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return timeout
	}
	return ""
}

// serveStream upgrades to a websocket and streams events. Query parameters: service
// (narrow to one service), history_ms (snapshot history), since (resume after that seq).
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	service := q.Get("service")
	if service != "" && proto.ValidService(service) != nil {
		s.m.refused[ReasonBadRequest].Inc()
		http.Error(w, "bad service", http.StatusBadRequest)
		return
	}
	historyMs, err := s.parseHistory(q.Get("history_ms"))
	if err != nil {
		s.m.refused[ReasonBadRequest].Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var since uint64
	resume := q.Has("since")
	if resume {
		if since, err = strconv.ParseUint(q.Get("since"), 10, 64); err != nil {
			s.m.refused[ReasonBadRequest].Inc()
			http.Error(w, "since must be a sequence number", http.StatusBadRequest)
			return
		}
	}
	if s.nclients.Add(1) > int64(s.cfg.MaxClients) {
		s.nclients.Add(-1)
		s.m.refused[ReasonLimit].Inc()
		http.Error(w, "too many clients", http.StatusServiceUnavailable)
		return
	}
	defer s.nclients.Add(-1)
	caller := callerOf(r)
	if !s.takeSlot(caller) {
		s.m.refused[ReasonTokenLimit].Inc()
		http.Error(w, "too many clients for this token or address", http.StatusServiceUnavailable)
		return
	}
	defer s.freeSlot(caller)
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.m.refused[ReasonBadRequest].Inc() // Upgrade has answered
		return
	}
	if tc := tcpConn(conn.NetConn()); tc != nil && s.cfg.SendBuffer > 0 {
		_ = tc.SetWriteBuffer(s.cfg.SendBuffer)
	}
	c := &client{srv: s, conn: conn, service: service, historyMs: historyMs,
		notify: make(chan struct{}, 1), done: make(chan struct{})}

	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		s.m.dropped[ReasonShutdown].Inc()
		conn.Close()
		return
	}
	if resume {
		evs, ok := s.replay.since(since, s.seq, service)
		if ok && len(evs) < s.cfg.ClientQueue {
			c.queue = append(c.queue, encodeHello(s.seq, since))
			c.queue = append(c.queue, evs...)
			s.m.resumes.Inc()
		} else {
			c.resync, c.reset = true, true
			s.m.resets.Inc()
		}
	} else {
		c.resync = true
	}
	s.clients[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	s.m.connects.Inc()
	c.signal()

	go c.writeLoop()
	c.readLoop()
	c.close("")
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
	s.m.disconnects.Inc()
}

// takeSlot takes one of caller's Config.MaxClientsPerToken websocket slots, reporting
// false when they are all in use.
func (s *Server) takeSlot(caller string) bool {
	s.slotsMu.Lock()
	defer s.slotsMu.Unlock()
	if s.slots[caller] >= s.cfg.MaxClientsPerToken {
		return false
	}
	s.slots[caller]++
	return true
}

// freeSlot returns a slot taken by takeSlot.
func (s *Server) freeSlot(caller string) {
	s.slotsMu.Lock()
	defer s.slotsMu.Unlock()
	if s.slots[caller]--; s.slots[caller] <= 0 {
		delete(s.slots, caller)
	}
}

// encodeHello tells a resuming client that the events after since follow.
func encodeHello(seq, since uint64) []byte {
	b := []byte(`{"type":"resume","seq":`)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"since":`...)
	b = strconv.AppendUint(b, since, 10)
	return append(b, '}')
}

func (s *Server) parseHistory(v string) (int64, error) {
	if v == "" {
		return min(defaultStreamHistory, s.cfg.History).Milliseconds(), nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, errors.New("history_ms must be a non-negative number of milliseconds")
	}
	return min(ms, s.cfg.History.Milliseconds()), nil
}

// readLoop reads subscriptions and pongs until the connection fails or closes.
func (c *client) readLoop() {
	wait := 2 * c.srv.cfg.PingInterval
	c.conn.SetReadLimit(maxClientMessage)
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	c.conn.SetPongHandler(func(string) error { return c.conn.SetReadDeadline(time.Now().Add(wait)) })
	for {
		_, msg, err := c.conn.ReadMessage()
		if err != nil {
			c.close(failReason(err, ReasonPingTimeout))
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(wait))
		c.handle(msg)
	}
}

// clientMessage is what a page may send: {"type":"subscribe","service":"checkout","history_ms":300000}.
type clientMessage struct {
	Type      string `json:"type"`
	Service   string `json:"service"`
	HistoryMs *int64 `json:"history_ms"`
}

// handle applies a subscription: the client gets a fresh snapshot for the new filter and
// then only that service's events.
func (c *client) handle(msg []byte) {
	var m clientMessage
	if err := json.Unmarshal(msg, &m); err != nil || m.Type != "subscribe" ||
		(m.Service != "" && proto.ValidService(m.Service) != nil) {
		c.srv.m.badMessages.Inc()
		return
	}
	s := c.srv
	s.mu.Lock()
	c.service = m.Service
	if m.HistoryMs != nil {
		c.historyMs = min(max(*m.HistoryMs, 0), s.cfg.History.Milliseconds())
	}
	c.mu.Lock()
	clear(c.queue)
	c.queue = c.queue[:0]
	c.resync = true
	c.mu.Unlock()
	s.mu.Unlock()
	c.signal()
}

// writeLoop sends queued events (several per frame, newline-separated), snapshots and pings
// until the client is closed. A write that exceeds Config.WriteTimeout drops the client.
func (c *client) writeLoop() {
	defer c.srv.connWG.Done()
	ping := time.NewTicker(c.srv.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
				c.close(failReason(err, ReasonSlow))
				return
			}
			continue
		case <-c.notify:
		}
		frame := c.take()
		if len(frame) == 0 {
			continue
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		if err := c.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
			c.close(failReason(err, ReasonSlow))
			return
		}
		c.srv.m.framesSent.Inc()
		c.srv.m.bytesSent.Add(len(frame))
	}
}

// take returns the next frame: a snapshot if one is due, else the queued events joined by
// newlines. The returned slice is valid until the next call.
func (c *client) take() []byte {
	c.mu.Lock()
	resync := c.resync
	c.mu.Unlock()
	if resync {
		s := c.srv
		s.mu.RLock()
		c.mu.Lock()
		sn := s.snapshotLocked(c.service, c.historyMs, time.Now())
		sn.reset = c.reset
		c.reset, c.resync = false, false
		clear(c.queue)
		c.queue = c.queue[:0]
		c.mu.Unlock()
		s.mu.RUnlock()
		s.m.resyncs.Inc()
		return sn.encode(s.window().Milliseconds())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frame = c.frame[:0]
	for i, e := range c.queue {
		if i > 0 {
			c.frame = append(c.frame, '\n')
		}
		c.frame = append(c.frame, e...)
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	return c.frame
}
