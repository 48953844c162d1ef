//go:build linux

package router

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/health"
)

// relay carries streamed answers (SSE, other "stream":true bodies, generate) from worker
// to client once their headers are out. Every stream is two sockets and one small struct
// in a single epoll set that one goroutine serves, so a quiet stream holds no goroutine,
// no stack and no buffer: that is what lets 10 000 concurrent agentic streams fit in
// about 70 MB. The epoll descriptor itself waits in Go's netpoller, so the relay parks
// like any goroutine when nothing is ready and wakes with the scheduler's own machinery.
//
// Hand-over (forwardRelay below, on the handler's goroutine): the request goes out
// on a streamConns connection and the response head is read; the handler then hijacks
// the client connection, fasthttp's goroutine returns, and the hijack callback (start)
// writes the head with the body bytes that came with it and registers both sockets. At
// the end the client connection goes back to fasthttp (ServeConn) for its next request
// and the worker connection back to its pool. HTTP/1.0 clients get the bare payload,
// ended by closing their connection.
type relay struct {
	s    *Server
	epfd int
	file *os.File // epfd, polled by Go's netpoller
	raw  syscall.RawConn
	tick time.Duration // timeout sweep period; 0 = no timeouts to enforce
	idle int64         // StreamIdleTimeout in ns, 0 = none

	mu      sync.Mutex
	streams []*relayStream // by slot
	free    []int32
	gen     int32

	active   atomic.Int64  // streams handed over and not finished
	stalls   atomic.Int64  // writes a client's full socket held back (backpressure)
	draining atomic.Bool   // shutting down: client connections close after their stream
	abort    atomic.Bool   // drain time is up: cut what is left
	drained  chan struct{} // receives when active reaches 0 while draining
	wg       sync.WaitGroup

	// The relay goroutine's own.
	buf     []byte
	out     []byte
	events  []syscall.EpollEvent
	expired []*relayStream
	pollFn  func(uintptr) bool
}

const (
	sideWorker = 0
	sideClient = 1

	epollET = 1 << 31 // syscall.EPOLLET is a negative int

	relayReadSize = 64 << 10
	// chunkOverhead is the framing added to one read's payload: size line, CRLF, and a
	// terminating "0\r\n\r\n".
	chunkOverhead = 16 + 2 + 5
)

// newRelay sets the relay up, or returns nil when this kernel or runtime cannot poll an
// epoll descriptor; streams then take fasthttp's goroutine-per-stream path.
func newRelay(s *Server) *relay {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil
	}
	f := os.NewFile(uintptr(epfd), "switchyard-relay")
	raw, err := f.SyscallConn()
	if err != nil || f.SetReadDeadline(time.Time{}) != nil { // not in the netpoller
		f.Close()
		return nil
	}
	r := &relay{
		s: s, epfd: epfd, file: f, raw: raw,
		drained: make(chan struct{}, 1),
		buf:     make([]byte, relayReadSize),
		events:  make([]syscall.EpollEvent, 256),
	}
	r.idle = int64(s.cfg.StreamIdleTimeout)
	shortest := s.cfg.StreamIdleTimeout
	if t := s.cfg.RequestTimeout; t > 0 && (shortest <= 0 || t < shortest) {
		shortest = t
	}
	if shortest > 0 {
		r.tick = min(max(shortest/10, 5*time.Millisecond), time.Second)
	}
	r.pollFn = r.poll
	return r
}

func (r *relay) start() {
	r.armSweep(time.Now())
	r.wg.Add(1)
	go r.run()
}

// run serves the epoll set until stop closes it. The set's read deadline is the next
// timeout sweep: when it passes, the wait returns so the sweep can run.
func (r *relay) run() {
	defer r.wg.Done()
	for {
		err := r.raw.Read(r.pollFn)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return // closed by drain
		}
		now := time.Now()
		r.sweep(now)
		r.armSweep(now)
	}
}

// armSweep sets when the next timeout sweep runs; with no timeouts, none does.
func (r *relay) armSweep(now time.Time) {
	if r.tick > 0 {
		_ = r.file.SetReadDeadline(now.Add(r.tick))
	} else {
		_ = r.file.SetReadDeadline(time.Time{})
	}
}

// poll serves every ready socket; returning false parks the goroutine until the epoll
// set has events again or the sweep deadline passes.
func (r *relay) poll(uintptr) bool {
	for {
		n, err := syscall.EpollWait(r.epfd, r.events, 0)
		if err == syscall.EINTR {
			continue
		}
		if n <= 0 {
			return false
		}
		r.dispatch(r.events[:n])
		if n < len(r.events) {
			return false
		}
	}
}

func (r *relay) dispatch(events []syscall.EpollEvent) {
	for i := range events {
		ev := &events[i]
		rs := r.lookup(ev.Pad>>1, ev.Fd)
		if rs == nil || rs.finished {
			continue
		}
		if ev.Pad&1 == sideWorker {
			rs.workerReady = true
			rs.pump()
			continue
		}
		if ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
			rs.fail(errClientGone)
			continue
		}
		if ev.Events&syscall.EPOLLOUT != 0 {
			rs.flushPending()
		}
	}
}

func (r *relay) lookup(slot, gen int32) *relayStream {
	r.mu.Lock()
	defer r.mu.Unlock()
	if int(slot) >= len(r.streams) {
		return nil
	}
	rs := r.streams[slot]
	if rs == nil || rs.gen != gen {
		return nil
	}
	return rs
}

// sweep cuts streams whose worker has been silent longer than --stream-idle-timeout-secs
// or whose --request-timeout-secs passed, and at the end of a drain, all of them.
func (r *relay) sweep(now time.Time) {
	abort := r.abort.Load()
	t := now.UnixNano()
	r.mu.Lock()
	for _, rs := range r.streams {
		if rs != nil && (abort || (r.idle > 0 && t-rs.last > r.idle) || (rs.deadline > 0 && t > rs.deadline)) {
			r.expired = append(r.expired, rs)
		}
	}
	r.mu.Unlock()
	for i, rs := range r.expired {
		if !rs.finished {
			rs.fail(os.ErrDeadlineExceeded)
		}
		r.expired[i] = nil
	}
	r.expired = r.expired[:0]
}

// add registers a started stream's sockets; once it returns, only the relay goroutine
// touches the stream. The slot and both registrations happen under mu, which the relay
// takes to look a stream up, so no event can reach a stream that is half registered.
func (r *relay) add(rs *relayStream) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var slot int32
	if n := len(r.free); n > 0 {
		slot = r.free[n-1]
		r.free = r.free[:n-1]
	} else {
		slot = int32(len(r.streams))
		r.streams = append(r.streams, nil)
	}
	r.gen++
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: r.gen, Pad: slot<<1 | sideWorker}
	err := syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, rs.up.fd, &ev)
	if err == nil {
		ev = syscall.EpollEvent{Events: syscall.EPOLLRDHUP | epollET, Fd: r.gen, Pad: slot<<1 | sideClient}
		if err = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, rs.clientFD, &ev); err != nil {
			_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, rs.up.fd, nil)
		}
	}
	if err != nil {
		r.free = append(r.free, slot)
		return err
	}
	rs.slot, rs.gen, rs.registered = slot, r.gen, true
	r.streams[slot] = rs
	return nil
}

// watchClientWrite asks for (or stops asking for) the client socket's writability.
func (r *relay) watchClientWrite(rs *relayStream, on bool) {
	events := uint32(syscall.EPOLLRDHUP | epollET)
	if on {
		events |= syscall.EPOLLOUT
	}
	ev := syscall.EpollEvent{Events: events, Fd: rs.gen, Pad: rs.slot<<1 | sideClient}
	_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_MOD, rs.clientFD, &ev)
}

// remove takes a finished stream's sockets out of the set before they are closed or
// handed back.
func (r *relay) remove(rs *relayStream) {
	_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, rs.up.fd, nil)
	_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, rs.clientFD, nil)
	r.release(rs)
}

func (r *relay) release(rs *relayStream) {
	r.mu.Lock()
	r.streams[rs.slot] = nil
	r.free = append(r.free, rs.slot)
	rs.registered = false
	r.mu.Unlock()
}

// collectors export the relay's state, read at scrape time.
func (r *relay) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_relay_streams",
			Help: "Streamed answers the relay is carrying (headers sent, body not ended)."},
			func() float64 { return float64(r.active.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_relay_client_stalls_total",
			Help: "Writes a client's full socket held back: the relay stopped reading that stream's worker until the client read."},
			func() float64 { return float64(r.stalls.Load()) }),
	}
}

// beginDrain makes streams that end from now on close their client connections.
func (r *relay) beginDrain() { r.draining.Store(true) }

// drain waits until every stream has ended or ctx's deadline passes; then it cuts the
// rest (in-band error for SSE) and stops the relay goroutine.
func (r *relay) drain(done <-chan struct{}) {
	r.draining.Store(true)
	for r.active.Load() > 0 {
		select {
		case <-r.drained:
		case <-done:
			r.abort.Store(true)
			_ = r.file.SetReadDeadline(time.Now()) // wake the relay to sweep
			select {
			case <-r.drained:
			case <-time.After(time.Second): // a stream whose hijack never started: give up on it
				r.active.Store(0)
			}
		}
	}
	r.file.Close()
	r.wg.Wait()
}

// relayStream is one stream in the relay. It is pooled.
type relayStream struct {
	r  *relay
	ex *exchange

	slot, gen  int32
	registered bool // holds a slot (set under relay.mu)

	// client side
	client     net.Conn // handed back to fasthttp at the end: a *net.TCPConn or *prefixConn
	clientFD   int
	keepClient bool   // the client may send another request on this connection
	chunkedOut bool   // the client gets chunks (HTTP/1.1); else the bare payload
	head       []byte // response head for the client (set by the handler), then the first bytes
	pending    []byte // bytes the client's socket did not take yet

	// worker side
	up          *upstreamConn
	pool        *streamConns
	br          *bufio.Reader // the head's read buffer, holding the body's first bytes
	hdr         fasthttp.ResponseHeader
	mode        uint8 // bodyChunked, bodyLength, bodyUntilClose
	dec         chunkDecoder
	remain      int64 // bodyLength: bytes still to come
	reusable    bool  // the worker connection may carry another request
	workerReady bool  // the worker socket may hold unread bytes (edge-triggered)

	last     int64 // unix ns of the worker's last bytes
	deadline int64 // unix ns of --request-timeout-secs, 0 = none

	done     bool  // body complete or cut; finish once pending is written
	endErr   error // why it ended (nil = complete)
	cutConn  bool  // the client must not reuse the connection (truncated body)
	finished bool

	startFn func(net.Conn)
}

const (
	bodyChunked = iota
	bodyLength
	bodyUntilClose
)

var relayStreamPool sync.Pool

func acquireRelayStream(r *relay) *relayStream {
	rs, _ := relayStreamPool.Get().(*relayStream)
	if rs == nil {
		rs = &relayStream{}
		rs.startFn = rs.start
	}
	rs.r = r
	return rs
}

func releaseRelayStream(rs *relayStream) {
	if cap(rs.head) > 64<<10 {
		rs.head = nil
	}
	if cap(rs.pending) > 64<<10 {
		rs.pending = nil
	}
	rs.hdr.Reset()
	rs.r, rs.ex, rs.client, rs.up, rs.pool, rs.br = nil, nil, nil, nil, nil, nil
	rs.slot, rs.gen, rs.registered = 0, 0, false
	rs.clientFD, rs.keepClient, rs.chunkedOut, rs.head, rs.pending = -1, false, false, rs.head[:0], rs.pending[:0]
	rs.mode, rs.dec, rs.remain, rs.reusable, rs.workerReady = 0, chunkDecoder{}, 0, false, false
	rs.last, rs.deadline = 0, 0
	rs.done, rs.endErr, rs.cutConn, rs.finished = false, nil, false, false
	relayStreamPool.Put(rs)
}

// start runs as fasthttp's hijack handler once the handler has returned: it takes the
// client's socket, writes the head and the body bytes read so far, and hands the
// stream to the relay goroutine.
func (rs *relayStream) start(hc net.Conn) {
	r := rs.r
	tc, prefix := takeClientConn(hc)
	if tc == nil {
		hc.Close()
		rs.cutConn = true
		rs.end(errClientGone)
		return
	}
	rs.client = tc
	if len(prefix) > 0 {
		rs.client = &prefixConn{TCPConn: tc, prefix: prefix}
	}
	rs.clientFD = -1
	if raw, err := tc.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { rs.clientFD = int(fd) })
	}
	// The first body bytes came with the head: frame them after it, one write for both.
	first, _ := rs.br.Peek(rs.br.Buffered())
	var err error
	rs.head, err = rs.frame(rs.head, first)
	releaseUpstreamReader(rs.br)
	rs.br = nil
	rs.last = time.Now().UnixNano()
	if err == nil && rs.clientFD < 0 {
		err = errClientGone
	}
	if err == nil {
		if _, werr := tc.Write(rs.head); werr != nil {
			err = errClientGone
		} else if rs.done { // the whole body came with the head
			rs.end(nil)
			return
		} else if err = r.add(rs); err == nil {
			return // the relay goroutine owns the stream now
		}
	}
	rs.cutConn = true
	rs.end(err)
}

// takeClientConn unwraps the hijacked connection to its TCP socket and collects the
// bytes fasthttp had read beyond this request (a pipelined next request), so that no
// reader has to stay allocated for the stream's life.
func takeClientConn(hc net.Conn) (*net.TCPConn, []byte) {
	var inner net.Conn = hc
	if u, ok := hc.(interface{ UnsafeConn() net.Conn }); ok {
		inner = u.UnsafeConn()
	}
	var tc *net.TCPConn
	switch c := inner.(type) {
	case *net.TCPConn:
		tc = c
	case *prefixConn:
		tc = c.TCPConn
	default:
		return nil, nil
	}
	// Reading with a deadline already passed returns buffered bytes and nothing else.
	var prefix []byte
	if err := tc.SetReadDeadline(time.Unix(1, 0)); err == nil {
		var b [512]byte
		for {
			n, err := hc.Read(b[:])
			prefix = append(prefix, b[:n]...)
			if err != nil || n == 0 {
				break
			}
		}
		_ = tc.SetReadDeadline(time.Time{})
	}
	return tc, prefix
}

// prefixConn is a client connection with bytes already read from it in front.
type prefixConn struct {
	*net.TCPConn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.TCPConn.Read(p)
}

// frame appends the client's bytes for p, a piece of the worker's body, to dst: the
// payload in a chunk of the router's own framing (the worker's chunking undone), or as
// is for a fixed length. It marks the stream done when the body is complete.
func (rs *relayStream) frame(dst, p []byte) ([]byte, error) {
	ex := rs.ex
	var payload []byte
	switch rs.mode {
	case bodyChunked:
		n, done, extra, err := rs.dec.decode(p)
		if err != nil {
			return dst, err
		}
		payload = p[:n]
		if extra > 0 {
			rs.reusable = false
		}
		rs.done = done
	case bodyUntilClose:
		payload = p
	default:
		payload = p
		if int64(len(payload)) >= rs.remain {
			if int64(len(payload)) > rs.remain {
				rs.reusable = false
			}
			payload = payload[:rs.remain]
			rs.done = true
		}
		rs.remain -= int64(len(payload))
		return append(dst, payload...), nil
	}
	if len(payload) > 0 {
		if !ex.wrote {
			ex.wrote = true
			rs.r.s.metrics.route[ex.route].ttfb.Observe(time.Since(ex.dispatched).Seconds())
		}
		if !rs.chunkedOut {
			return append(dst, payload...), nil
		}
		dst = appendChunkHeader(dst, len(payload))
		dst = append(dst, payload...)
		dst = append(dst, '\r', '\n')
	}
	if rs.done && rs.chunkedOut {
		dst = append(dst, "0\r\n\r\n"...)
	}
	return dst, nil
}

// pump moves what the worker sent to the client until the worker's socket is empty or
// the client's is full.
func (rs *relayStream) pump() {
	r := rs.r
	for rs.workerReady && len(rs.pending) == 0 && !rs.done {
		n, err := syscall.Read(rs.up.fd, r.buf[:len(r.buf)-chunkOverhead])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			rs.workerReady = false
			return
		case err != nil:
			rs.fail(err)
			return
		case n == 0:
			if rs.mode == bodyUntilClose {
				rs.done, rs.reusable = true, false
				r.out = r.out[:0]
				if rs.chunkedOut {
					r.out = append(r.out, "0\r\n\r\n"...)
				}
				rs.write(r.out)
				return
			}
			rs.fail(io.ErrUnexpectedEOF)
			return
		}
		rs.last = time.Now().UnixNano()
		out, ferr := rs.frame(r.out[:0], r.buf[:n])
		r.out = out
		if ferr != nil {
			rs.fail(ferr)
			return
		}
		if !rs.write(out) {
			return
		}
	}
}

// write sends b to the client without blocking; what does not fit waits in pending for
// the socket to drain. It reports whether everything went out. A complete stream
// finishes here.
func (rs *relayStream) write(b []byte) bool {
	for len(b) > 0 {
		n, err := syscall.Write(rs.clientFD, b)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			break
		}
		if err != nil {
			rs.done, rs.endErr = true, errClientGone
			rs.finish()
			return false
		}
		b = b[n:]
	}
	if len(b) > 0 {
		rs.pending = append(rs.pending[:0], b...)
		rs.r.stalls.Add(1)
		rs.r.watchClientWrite(rs, true)
		return false
	}
	if rs.done {
		rs.finish()
		return false
	}
	return true
}

// flushPending writes what the client's socket refused earlier, then goes on reading.
func (rs *relayStream) flushPending() {
	if len(rs.pending) == 0 {
		return
	}
	p := rs.pending
	rs.pending = rs.pending[:0]
	rs.r.watchClientWrite(rs, false)
	if rs.write(p) {
		rs.pump()
	}
}

// fail ends the stream early. A worker failure in an event stream is reported in-band
// (an error event, then [DONE], as vLLM ends a stream) and the client connection stays
// usable; other bodies are cut by closing the connection, so the truncation shows. A
// stream already ending (its last bytes waiting for a client that does not read) or
// whose client left is closed at once.
func (rs *relayStream) fail(err error) {
	if rs.done || errors.Is(err, errClientGone) {
		if rs.endErr == nil || errors.Is(err, errClientGone) {
			rs.endErr = err
		}
		rs.done, rs.cutConn = true, true
		rs.pending = rs.pending[:0]
		rs.finish()
		return
	}
	rs.done, rs.endErr = true, err
	if ce := rs.r.s.log.Check(zap.DebugLevel, "worker stream failed"); ce != nil {
		ce.Write(zap.String("worker", rs.ex.b.id), zap.Error(err))
	}
	if rs.mode == bodyLength || !rs.ex.sse {
		rs.cutConn = true
		rs.finish()
		return
	}
	msg := streamErrorEvent(err)
	out := append(rs.r.out[:0], msg...)
	if rs.chunkedOut {
		out = appendChunkHeader(rs.r.out[:0], len(msg))
		out = append(out, msg...)
		out = append(out, "\r\n0\r\n\r\n"...)
	}
	rs.r.out = out
	if len(rs.pending) > 0 { // after what the client has not taken yet
		rs.pending = append(rs.pending, out...)
		return
	}
	rs.write(out)
}

// finish ends a registered stream once nothing is left to write.
func (rs *relayStream) finish() {
	if rs.finished || len(rs.pending) > 0 {
		return
	}
	rs.finished = true
	rs.r.remove(rs)
	rs.end(rs.endErr)
}

// end settles a stream: the worker connection back to its pool (or closed, which tells
// vLLM to stop generating), the client connection back to fasthttp (or closed), and the
// exchange's in-flight count, breaker outcome and metrics.
func (rs *relayStream) end(err error) {
	r, ex := rs.r, rs.ex
	b := ex.b
	if err == nil && rs.reusable && !rs.hdr.ConnectionClose() {
		rs.pool.put(rs.up)
	} else {
		rs.up.c.Close()
	}
	clean := err == nil || (!errors.Is(err, errClientGone) && !rs.cutConn)
	if rs.client != nil {
		if clean && rs.keepClient && !r.draining.Load() {
			go r.s.srv.ServeConn(rs.client) //nolint:errcheck // fasthttp logs and closes
		} else {
			rs.client.Close()
		}
	}
	outcome, status := streamOutcome(err, rs.hdr.StatusCode())
	b.breaker.Record(outcome)
	b.end()
	r.s.complete(ex, status)
	ex.unref()
	releaseRelayStream(rs)
	if r.active.Add(-1) == 0 && r.draining.Load() {
		select {
		case r.drained <- struct{}{}:
		default:
		}
	}
}

// relayable reports whether this request's streamed answer can go through the relay.
func (s *Server) relayable(*fasthttp.RequestCtx) bool { return s.relay != nil }

// forwardRelay is forward for a streamed answer: the request goes out on one of the
// worker's stream connections, the response head is read here, and the body is left to
// the relay, which starts once the handler has returned. Answers that came whole with
// their head, and 5xx answers small enough to classify, are answered from memory
// instead, like buffered ones.
func (s *Server) forwardRelay(ctx *fasthttp.RequestCtx, ex *exchange, b *Backend, req *fasthttp.Request, last bool) error {
	rs := acquireRelayStream(s.relay)
	closeClient := req.Header.ConnectionClose()
	if closeClient {
		req.Header.ResetConnectionClose() // keep the worker connection pooled
	}
	req.URI().DisablePathNormalizing = true // the path goes out as the client sent it
	b.begin()
	ex.dispatched = time.Now()
	var headerDeadline time.Time
	if t := s.cfg.ResponseHeaderTimeout; t > 0 {
		headerDeadline = ex.dispatched.Add(t)
	}
	if t := s.cfg.RequestTimeout; t > 0 {
		limit := ex.start.Add(t)
		if headerDeadline.IsZero() || limit.Before(headerDeadline) {
			headerDeadline = limit
		}
		rs.deadline = limit.UnixNano()
	}
	up, br, err := b.streams.roundTrip(req, &rs.hdr, headerDeadline)
	if closeClient {
		req.Header.SetConnectionClose()
	}
	if err != nil {
		b.end()
		releaseRelayStream(rs)
		b.breaker.Record(health.Classify(0, nil, err))
		b.m.requests[ex.route][0].Inc()
		return err
	}
	if ex.pd {
		s.metrics.pdDecode.WithLabelValues(b.id).Inc()
		s.metrics.pdPhase.WithLabelValues("decode_ttft").Observe(time.Since(ex.dispatched).Seconds())
	}
	status, cl := rs.hdr.StatusCode(), rs.hdr.ContentLength()
	if cl >= 0 && (cl <= br.Buffered() || (status >= 500 && cl <= maxErrorBody)) {
		defer releaseRelayStream(rs)
		return s.answerFromHead(ctx, ex, b, rs, up, br, cl, last)
	}
	ex.b = b
	rs.hdr.CopyTo(&ctx.Response.Header)
	stripResponseHeader(&ctx.Response)
	switch {
	case cl >= 0:
		rs.mode, rs.remain = bodyLength, int64(cl)
	case cl == -1:
		rs.mode = bodyChunked
	default: // until the worker closes: the client gets chunks
		rs.mode = bodyUntilClose
		ctx.Response.Header.SetContentLength(-1)
	}
	// An HTTP/1.0 client cannot take chunks: it gets the payload as is, ended by closing
	// the connection.
	rs.chunkedOut = ctx.Request.Header.IsHTTP11()
	if !rs.chunkedOut && rs.mode != bodyLength {
		ctx.Response.Header.SetContentLength(-2)
		closeClient = true
	}
	rs.reusable = rs.mode != bodyUntilClose
	ex.sse = isEventStream(rs.hdr.ContentType())
	if !ex.sse {
		s.metrics.route[ex.route].ttfb.Observe(time.Since(ex.dispatched).Seconds())
	}
	rs.ex, rs.up, rs.pool, rs.br = ex, up, b.streams, br
	rs.keepClient = !closeClient
	if closeClient {
		ctx.Response.Header.SetConnectionClose()
	}
	ex.refs.Add(1) // the stream's reference
	s.relay.active.Add(1)
	ex.relayed = rs
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(rs.startFn)
	return nil
}

// setHead takes the client's response head once the handler has finished it.
func (rs *relayStream) setHead(h *fasthttp.ResponseHeader) { rs.head = h.AppendBytes(rs.head[:0]) }

// answerFromHead answers with a body of cl bytes read with (or right after) the head:
// the worker connection goes back to its pool and nothing is relayed.
func (s *Server) answerFromHead(ctx *fasthttp.RequestCtx, ex *exchange, b *Backend, rs *relayStream, up *upstreamConn, br *bufio.Reader, cl int, last bool) error {
	var body []byte
	var err error
	if cl <= br.Size() {
		body, err = br.Peek(cl)
	} else {
		body = make([]byte, cl)
		_, err = io.ReadFull(br, body)
	}
	status := rs.hdr.StatusCode()
	if err == nil {
		rs.hdr.CopyTo(&ctx.Response.Header)
		stripResponseHeader(&ctx.Response)
		ctx.Response.SetBody(body)
	}
	reusable := err == nil && br.Buffered() == len(body) && !rs.hdr.ConnectionClose()
	releaseUpstreamReader(br)
	if reusable {
		b.streams.put(up)
	} else {
		up.c.Close()
	}
	if err != nil {
		b.end()
		b.breaker.Record(health.Failure)
		b.m.requests[ex.route][0].Inc()
		return err
	}
	if err := s.answered(ex, b, status, body, !last && !ex.upload.sent()); err != nil {
		ctx.Response.Reset()
		return err
	}
	return nil
}
