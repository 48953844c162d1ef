//go:build linux

package router

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/switchyard/switchyard/health"
)

// streamConns pools one worker's connections for streamed answers. The relay owns a
// connection for the whole stream and reads its socket directly, which a fasthttp
// HostClient connection does not allow; short answers keep using the HostClient.
type streamConns struct {
	addr    string
	connect time.Duration

	mu   sync.Mutex
	idle []*upstreamConn // oldest first

	sent atomic.Int64 // requests sent: how tests tell the streamed path was taken
}

// upstreamConn is one worker connection of a streamConns.
type upstreamConn struct {
	c     *net.TCPConn
	fd    int
	used  bool      // carried an earlier answer: the worker may have closed it while idle
	since time.Time // when it went idle
}

// streamConnMaxIdleCount bounds the idle stream connections kept per worker.
const streamConnMaxIdleCount = 1024

func newStreamConns(addr string, connect time.Duration) *streamConns {
	if connect <= 0 {
		connect = 10 * time.Second
	}
	return &streamConns{addr: addr, connect: connect}
}

// get returns an idle connection, or dials a new one. With check set it first makes sure
// the worker has not closed the idle connection (a syscall): for a body that cannot be
// sent twice. Otherwise a connection closed while idle is redialled after the fact.
func (p *streamConns) get(check bool) (*upstreamConn, error) {
	now := time.Now()
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return p.dial()
		}
		uc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if now.Sub(uc.since) < workerConnMaxIdle && (!check || idleConnAlive(uc.fd)) {
			return uc, nil
		}
		uc.c.Close()
	}
}

// put returns a connection whose answer ended cleanly, dropping expired ones.
func (p *streamConns) put(uc *upstreamConn) {
	uc.used, uc.since = true, time.Now()
	p.mu.Lock()
	var drop []*upstreamConn
	for len(p.idle) > 0 && (len(p.idle) >= streamConnMaxIdleCount || uc.since.Sub(p.idle[0].since) >= workerConnMaxIdle) {
		drop = append(drop, p.idle[0])
		p.idle[0] = nil
		p.idle = p.idle[1:]
	}
	p.idle = append(p.idle, uc)
	p.mu.Unlock()
	for _, d := range drop {
		d.c.Close()
	}
}

// closeIdle closes every idle connection (worker removed, router shut down).
func (p *streamConns) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}

func (p *streamConns) dial() (*upstreamConn, error) {
	c, err := net.DialTimeout("tcp", p.addr, p.connect)
	if err != nil {
		return nil, &health.DialError{Err: err}
	}
	tc := c.(*net.TCPConn)
	uc := &upstreamConn{c: tc, fd: -1}
	if raw, err := tc.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { uc.fd = int(fd) })
	}
	if uc.fd < 0 {
		tc.Close()
		return nil, &health.DialError{Err: errors.New("worker connection has no descriptor")}
	}
	return uc, nil
}

// idleConnAlive peeks at an idle connection without blocking: an idle worker connection
// has nothing to read, so end of stream or stray bytes both mean "do not reuse".
func idleConnAlive(fd int) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n < 0 && errors.Is(err, syscall.EAGAIN)
}

var (
	upstreamWriterPool sync.Pool
	upstreamReaderPool sync.Pool
)

// upstreamReadBufferSize is the header-read buffer of a streamed answer; it is also the
// cap on a worker's response headers, as the HostClient's ReadBufferSize is.
const upstreamReadBufferSize = 8 << 10

// roundTrip writes req on a pooled connection and reads the worker's response head into
// hdr, returning the connection and the reader holding the body's first bytes. A
// connection the worker closed while idle is redialled once, unless the body was a stream
// (it cannot be sent twice). Errors are shaped as the HostClient's are, so retry and
// breaker decisions stay the same: a connection closed before any answer byte is
// fasthttp.ErrConnectionClosed.
func (p *streamConns) roundTrip(req *fasthttp.Request, hdr *fasthttp.ResponseHeader, headerDeadline time.Time) (*upstreamConn, *bufio.Reader, error) {
	uc, err := p.get(req.IsBodyStream())
	if err != nil {
		return nil, nil, err
	}
	p.sent.Add(1)
	for {
		br, err := exchangeHead(uc, req, hdr, headerDeadline)
		if err == nil {
			return uc, br, nil
		}
		uc.c.Close()
		if !uc.used || !errors.Is(err, fasthttp.ErrConnectionClosed) || req.IsBodyStream() {
			return nil, nil, err
		}
		if uc, err = p.dial(); err != nil {
			return nil, nil, err
		}
	}
}

func exchangeHead(uc *upstreamConn, req *fasthttp.Request, hdr *fasthttp.ResponseHeader, deadline time.Time) (*bufio.Reader, error) {
	bw, _ := upstreamWriterPool.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(uc.c, 4<<10)
	} else {
		bw.Reset(uc.c)
	}
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	upstreamWriterPool.Put(bw)
	if err != nil {
		return nil, workerConnError(err)
	}
	if !deadline.IsZero() {
		if err := uc.c.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
	}
	br, _ := upstreamReaderPool.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(uc.c, upstreamReadBufferSize)
	} else {
		br.Reset(uc.c)
	}
	if err = readResponseHead(br, hdr); err != nil {
		releaseUpstreamReader(br)
		return nil, workerConnError(err)
	}
	if !deadline.IsZero() {
		if err := uc.c.SetReadDeadline(time.Time{}); err != nil {
			releaseUpstreamReader(br)
			return nil, err
		}
	}
	return br, nil
}

func releaseUpstreamReader(br *bufio.Reader) {
	br.Reset(nil)
	upstreamReaderPool.Put(br)
}
