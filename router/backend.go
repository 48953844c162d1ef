package router

import (
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/pd"
	"github.com/switchyard/switchyard/policy"
)

// Role is what a worker does for the router.
type Role uint8

const (
	RoleRegular Role = iota // serves whole requests
	RolePrefill             // P/D prefill leg
	RoleDecode              // P/D decode leg
)

func (r Role) String() string {
	switch r {
	case RolePrefill:
		return "prefill"
	case RoleDecode:
		return "decode"
	}
	return "regular"
}

// Backend is one routable worker: a base URL, or one data-parallel rank behind it. Its
// counters are atomics read by policies on the hot path. A Backend must not be copied.
type Backend struct {
	id         string // "http://host:port" or "http://host:port@rank": the policy's ID
	base       string // "http://host:port"
	rank       int    // data-parallel rank sent to the worker, or -1
	rankHeader []byte // strconv of rank, ready for X-data-parallel-rank
	role       Role

	client      *fasthttp.HostClient // shared by the ranks of one base URL
	streams     *streamConns         // connections for streamed answers, shared likewise
	maxInflight int64                // 0 = unbounded

	inFlight  atomic.Int64
	healthy   atomic.Bool
	processed atomic.Int64
	breaker   *health.Breaker

	m *backendMetrics
}

var (
	_ policy.Endpoint = (*Backend)(nil)
	_ pd.Upstream     = (*Backend)(nil)
)

// ID is the worker's stable name.
func (b *Backend) ID() string { return b.id }

// Available reports whether policies may pick the worker: healthy, circuit not open, and
// under its in-flight bound.
func (b *Backend) Available() bool {
	if !b.healthy.Load() {
		return false
	}
	if b.maxInflight > 0 && b.inFlight.Load() >= b.maxInflight {
		return false
	}
	return b.breaker.Ready()
}

// InFlight counts requests whose response, stream included, has not ended.
func (b *Backend) InFlight() int64 { return b.inFlight.Load() }

// DoDeadline sends one request to the worker (pd.Upstream, for the prefill leg).
func (b *Backend) DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error {
	if b.rankHeader != nil {
		req.Header.SetBytesV("X-data-parallel-rank", b.rankHeader)
	}
	return b.client.DoDeadline(req, resp, deadline)
}

// Healthy is the active health state.
func (b *Backend) Healthy() bool { return b.healthy.Load() }

func (b *Backend) begin() { b.inFlight.Add(1) }

func (b *Backend) end() {
	b.inFlight.Add(-1)
	b.processed.Add(1)
}

// backendSpec is a worker to create: its id, base URL, rank and role.
type backendSpec struct {
	id, base string
	rank     int
	role     Role
}

// expandRanks turns worker URLs into backends, one per data-parallel rank when dp > 1.
func expandRanks(urls []string, dp, offset int, role Role) []backendSpec {
	var out []backendSpec
	for _, u := range urls {
		u = normalizeWorkerURL(u)
		if dp <= 1 {
			out = append(out, backendSpec{id: u, base: u, rank: -1, role: role})
			continue
		}
		for k := 0; k < dp; k++ {
			out = append(out, backendSpec{id: u + "@" + strconv.Itoa(k), base: u, rank: offset + k, role: role})
		}
	}
	return out
}

// splitRankID turns "http://h:p@3" into ("http://h:p", 3); no rank gives -1.
func splitRankID(id string) (string, int) {
	at := strings.LastIndexByte(id, '@')
	if at < 0 {
		return id, -1
	}
	n, err := strconv.Atoi(id[at+1:])
	if err != nil || n < 0 {
		return id, -1
	}
	return id[:at], n
}

// newHostClient builds the one HostClient a worker base URL gets. Response bodies are
// streamed per request (Response.StreamBody), never capped by ReadTimeout, which would
// cut a whole stream: the timeouts live in timeoutConn instead.
func newHostClient(base string, cfg *Config) *fasthttp.HostClient {
	addr := strings.TrimPrefix(base, "http://")
	connect := cfg.ConnectTimeout
	if connect <= 0 {
		connect = 10 * time.Second
	}
	header, idle := cfg.ResponseHeaderTimeout, cfg.StreamIdleTimeout
	return &fasthttp.HostClient{
		Addr: addr,
		Dial: func(a string) (net.Conn, error) {
			c, err := fasthttp.DialTimeout(a, connect)
			if err != nil {
				return nil, &health.DialError{Err: err}
			}
			return &timeoutConn{Conn: c, headerTimeout: header, idleTimeout: idle}, nil
		},
		MaxConns:                  4096,
		MaxConnWaitTimeout:        connect,
		MaxIdleConnDuration:       workerConnMaxIdle,
		ReadBufferSize:            8 << 10, // also the cap on a worker's response headers
		WriteBufferSize:           4 << 10, // larger bodies bypass the buffer
		MaxIdemponentCallAttempts: 1,       // the router decides what to retry
		NoDefaultUserAgentHeader:  true,
		DisablePathNormalizing:    true,
		MaxResponseBodySize:       0,
	}
}

// workerConnMaxIdle is how long an idle worker connection is kept, by the HostClient and
// by the relay's stream connections alike. vLLM's server (uvicorn) closes keep-alive
// connections after 5 s idle; a request sent on one it has closed fails before any
// answer byte, and the router would retry it on another worker, breaking the session's
// KV-cache affinity. So connections go a little before.
const workerConnMaxIdle = 4 * time.Second

// timeoutConn gives a worker connection the two timeouts fasthttp lacks: the wait for the
// first response byte after a request was written, and the idle gap between later reads.
// A deadline fasthttp sets itself (the request's total cap) stays an upper bound.
type timeoutConn struct {
	net.Conn
	headerTimeout time.Duration
	idleTimeout   time.Duration
	awaiting      bool          // the next read waits for a response's first byte
	hard          time.Time     // deadline set by fasthttp (total request cap), zero = none
	current       time.Time     // deadline last set on the socket
	armedFor      time.Duration // the timeout current was computed from
	capped        bool          // current came from hard: re-arm on the next Read
	writeDL       time.Time     // write deadline last set on the socket
}

func (c *timeoutConn) Write(p []byte) (int, error) {
	c.awaiting = true
	return c.Conn.Write(p)
}

func (c *timeoutConn) Read(p []byte) (int, error) {
	d := c.idleTimeout
	if c.awaiting {
		d = c.headerTimeout
	}
	// Re-arming the socket deadline costs a runtime timer update per Read. Move it only
	// when the timeout in force changed, a hard cap applies or applied, or the armed
	// deadline has drifted by more than an eighth of the timeout: an idle cut then comes
	// after at least 7/8 of the configured silence.
	if d != c.armedFor || c.capped || !c.hard.IsZero() || (d > 0 && time.Until(c.current) < d-d/8) {
		dl := c.hard
		if d > 0 {
			if t := time.Now().Add(d); dl.IsZero() || t.Before(dl) {
				dl = t
			}
		}
		if !dl.Equal(c.current) {
			if err := c.Conn.SetReadDeadline(dl); err != nil {
				return 0, err
			}
			c.current = dl
		}
		c.armedFor, c.capped = d, !c.hard.IsZero()
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.awaiting = false
	}
	return n, err
}

func (c *timeoutConn) SetReadDeadline(t time.Time) error {
	c.hard = t
	return nil
}

func (c *timeoutConn) SetDeadline(t time.Time) error {
	c.hard = t
	return c.SetWriteDeadline(t)
}

// SetWriteDeadline skips the socket call when the deadline is unchanged: roundTrip sets
// it on every request, most often to "none" again.
func (c *timeoutConn) SetWriteDeadline(t time.Time) error {
	if t.Equal(c.writeDL) {
		return nil
	}
	c.writeDL = t
	return c.Conn.SetWriteDeadline(t)
}
