package router

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/policy"
)

// exchange is one proxied request's state, pooled. The handler holds one reference and a
// response body still streaming to the client holds another; the last to let go returns
// it to the pool. It never refers to the RequestCtx.
type exchange struct {
	s     *Server
	refs  atomic.Int32
	route route

	b          *Backend
	up         *fasthttp.Response // the worker's response, body still streaming
	start      time.Time          // request accepted
	dispatched time.Time          // sent to the chosen worker
	limited    bool               // holds a limiter slot
	sse        bool               // the body is an event stream
	wrote      bool               // an SSE chunk reached the client (first-byte metric)
	pd         bool               // a P/D request (decode leg being forwarded)
	stream     bool               // the response is streamed, not buffered

	upload  upload // a request body streamed to the worker
	preq    policy.Request
	avoid   [4]policy.Endpoint
	ridBuf  []byte
	textBuf []byte
	pdBuf   []byte // prefill body, then decode body
	respBuf []byte // prefill response

	relayed headSetter // a stream handed to the relay: it takes the finished head
}

// headSetter takes the client's response head when the handler is done with it.
type headSetter interface {
	setHead(h *fasthttp.ResponseHeader)
}

func (ex *exchange) handlerDone() { ex.unref() }

func (ex *exchange) unref() {
	if ex.refs.Add(-1) != 0 {
		return
	}
	ex.s, ex.b, ex.up, ex.relayed = nil, nil, nil, nil
	ex.limited, ex.sse, ex.wrote, ex.pd, ex.stream = false, false, false, false, false
	ex.preq = policy.Request{}
	ex.avoid = [4]policy.Endpoint{}
	ex.upload.reset()
	if cap(ex.textBuf) > 1<<20 || cap(ex.pdBuf) > 1<<20 || cap(ex.respBuf) > 1<<20 || cap(ex.upload.head) > 1<<20 {
		ex.textBuf, ex.pdBuf, ex.respBuf, ex.upload.head = nil, nil, nil, nil // do not pin one huge prompt's buffers
	}
	exchangePool.Put(ex)
}

// hop-by-hop headers (RFC 9110 §7.6.1) are for one connection only, never forwarded.
// Connection and Transfer-Encoding are handled by fasthttp's framing.
var hopHeaders = []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Upgrade"}

// rawHasHopHeader scans the client's raw header block once for a hop-by-hop name.
func rawHasHopHeader(raw []byte) bool {
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := line[:colon]
		for _, h := range hopHeaders {
			if len(name) == len(h) && bytes.EqualFold(name, []byte(h)) {
				return true
			}
		}
	}
	return false
}

// prepareUpstream turns the client's request into the worker's, in place: hop-by-hop
// headers go, the request id and the worker API key come in. The body is untouched.
func (s *Server) prepareUpstream(req *fasthttp.Request, rid []byte) {
	h := &req.Header
	if rawHasHopHeader(h.RawHeaders()) { // almost never: one scan instead of seven deletes
		for _, k := range hopHeaders {
			h.Del(k)
		}
	}
	h.SetBytesV("X-Request-Id", rid)
	if s.apiKey != nil {
		h.SetBytesV(fasthttp.HeaderAuthorization, s.apiKey)
	}
}

// proxy routes one request to a worker, retrying elsewhere while the failure proves the
// worker did not process it and nothing reached the client.
func (s *Server) proxy(ctx *fasthttp.RequestCtx, ex *exchange, rid []byte) {
	snap := s.pool.load()
	backends, eps, pol := snap.regular, snap.regularEPs, s.policy
	if s.cfg.PDDisaggregation {
		if pdRoute(ex.route) && ctx.IsPost() {
			s.proxyPD(ctx, ex, rid, snap)
			return
		}
		backends, eps, pol = snap.decode, snap.decodeEPs, s.decodePolicy
	}
	// The body (or its head) is in before the request takes a slot, as when fasthttp read it.
	body, err := s.takeBody(ctx, ex, false)
	if err != nil {
		s.failBody(ctx, ex, err)
		return
	}
	if !s.admit(ctx, ex) {
		return
	}
	ex.stream = ex.route == routeGenerate || wantsStream(body)
	s.fillPolicyRequest(&ex.preq, ctx, ex, body)
	s.prepareUpstream(&ctx.Request, rid)
	attempts := s.retry.Attempts()
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			s.metrics.retries.WithLabelValues(ex.route.String()).Inc()
			time.Sleep(s.retry.Backoff(attempt-1, nil))
		}
		var b *Backend
		if b, err = s.pick(pol, ex, eps, backends, snap); err != nil {
			break
		}
		err = s.forward(ctx, ex, b, &ctx.Request, attempt == attempts-1)
		if err == nil {
			return
		}
		if !retryable(err) || ex.upload.sent() {
			break // a streamed body that left cannot be sent again
		}
		avoid(ex, b)
		if ce := s.log.Check(zap.DebugLevel, "retrying on another worker"); ce != nil {
			ce.Write(zap.String("worker", b.id), zap.Error(err), zap.Int("attempt", attempt+1))
		}
	}
	if attempts > 1 && err != nil && !errors.Is(err, errNoWorker) && !errors.Is(err, errNotReady) {
		s.metrics.retriesOut.WithLabelValues(ex.route.String()).Inc()
	}
	if ex.upload.err != nil {
		s.failBody(ctx, ex, err)
		return
	}
	s.fail(ctx, ex, err)
}

// pick asks the policy for a worker and takes its circuit breaker's admission.
func (s *Server) pick(pol policy.Policy, ex *exchange, eps []policy.Endpoint, backends []*Backend, snap *snapshot) (*Backend, error) {
	for tries := 0; tries <= len(backends); tries++ {
		i, err := pol.Pick(&ex.preq, eps)
		if err != nil {
			if countHealthy(backends) == 0 {
				return nil, errNotReady
			}
			return nil, err
		}
		b := backends[i]
		if b.breaker.Acquire() {
			b.m.decisions.Inc()
			return b, nil
		}
		// Half-open with its probes taken: treat like unavailable for this request.
		if !avoid(ex, b) {
			break
		}
	}
	return nil, errNoWorker
}

// avoid adds b to the workers this request must not be sent to again; false when the
// list is full.
func avoid(ex *exchange, b *Backend) bool {
	n := len(ex.preq.Avoid)
	if n >= len(ex.avoid) {
		return false
	}
	ex.avoid[n] = b
	ex.preq.Avoid = ex.avoid[:n+1]
	return true
}

// admit takes a slot under the in-flight cap (waiting in its queue if need be) and starts
// the request's clock; a rejected request is answered 429 with Retry-After.
func (s *Server) admit(ctx *fasthttp.RequestCtx, ex *exchange) bool {
	if !s.limiter.acquire() {
		s.metrics.queueRejected.Inc()
		s.fail(ctx, ex, errOverloaded)
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		return false
	}
	ex.limited = true
	ex.start = time.Now()
	return true
}

// statusError is a worker answer the router may retry elsewhere (502/503/504).
type statusError struct{ status int }

func (e *statusError) Error() string { return "worker answered " + strconv.Itoa(e.status) }

// retryable: the failure proves the worker did not process the request.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return health.Retryable(se.status, nil, false)
	}
	return health.Retryable(0, err, false)
}

// maxErrorBody bounds the 5xx bodies read inline to classify them.
const maxErrorBody = 64 << 10

// forward sends the prepared request to b and hands the worker's answer to the client.
// Requests that asked for a stream (and generate, whose router-replay answers can be
// hundreds of MB) are streamed: SSE and unknown lengths chunk by chunk through
// writeStream, fixed lengths pulled by fasthttp through the exchange. Everything else is
// read straight into the client's response, with no copy and no allocation, when its
// Content-Length is at most bufferAnswerMax; a larger or unknown-length answer streams
// like the above (roundTrip). A retryable 5xx is returned as *statusError unless last is
// set or the request body already streamed to this worker; then the client gets it as it is.
func (s *Server) forward(ctx *fasthttp.RequestCtx, ex *exchange, b *Backend, req *fasthttp.Request, last bool) error {
	if b.rankHeader != nil {
		req.Header.SetBytesV("X-data-parallel-rank", b.rankHeader)
	}
	if len(req.Header.Host()) == 0 {
		req.SetHost(b.client.Addr) // HTTP/1.0 clients may send none; fasthttp needs one
	}
	if ex.stream && s.relayable(ctx) {
		return s.forwardRelay(ctx, ex, b, req, last)
	}
	up := &ctx.Response
	if ex.stream {
		up = fasthttp.AcquireResponse()
		up.StreamBody = true
	}
	closeClient := req.Header.ConnectionClose()
	if closeClient {
		req.Header.ResetConnectionClose() // keep the worker connection pooled
	}
	b.begin()
	ex.dispatched = time.Now()
	var err error
	switch {
	case !ex.stream:
		// Held whole in ctx.Response when small, else up comes back streaming.
		up, err = roundTrip(b.client, req, up, s.deadline(ex), bufferAnswerMax)
	case s.cfg.RequestTimeout > 0:
		err = b.client.DoDeadline(req, up, ex.start.Add(s.cfg.RequestTimeout))
	default:
		err = b.client.Do(req, up)
	}
	if closeClient {
		req.Header.SetConnectionClose()
	}
	if err != nil {
		b.end()
		s.releaseUpstream(ctx, up)
		b.m.requests[ex.route][0].Inc()
		if ex.upload.err != nil {
			b.breaker.Record(health.Neutral) // the client's body failed, not the worker
			return ex.upload.err
		}
		b.breaker.Record(health.Classify(0, nil, err))
		return err
	}
	streamed := up != &ctx.Response
	if ex.pd {
		s.metrics.pdDecode.WithLabelValues(b.id).Inc()
		s.metrics.pdPhase.WithLabelValues("decode_ttft").Observe(time.Since(ex.dispatched).Seconds())
	}
	status := up.StatusCode()
	if status >= 500 {
		body, rerr := up.Body(), error(nil)
		if streamed {
			body, rerr = readSmallBody(up, maxErrorBody)
		}
		if rerr == nil {
			if err := s.answered(ex, b, status, body, !last && !ex.upload.sent()); err != nil {
				s.releaseUpstream(ctx, up)
				return err
			}
			if streamed {
				copyResponseHeader(&ctx.Response, up)
				ctx.Response.SetBody(body)
				fasthttp.ReleaseResponse(up)
			} else {
				stripResponseHeader(&ctx.Response)
			}
			return nil
		}
		// Too large to classify: pass it through like any other answer.
	}
	if !streamed {
		// The whole body is in ctx.Response already: the exchange ends here.
		stripResponseHeader(&ctx.Response)
		return s.answered(ex, b, status, nil, false)
	}
	ex.b, ex.up = b, up
	copyResponseHeader(&ctx.Response, up)
	ex.sse = isEventStream(up.Header.ContentType())
	cl := up.Header.ContentLength()
	if !ex.sse {
		s.metrics.route[ex.route].ttfb.Observe(time.Since(ex.dispatched).Seconds())
	}
	ex.refs.Add(1) // the body stream's reference
	if ex.sse || cl < 0 {
		ctx.Response.SetBodyStreamWriter(ex.writeStream)
	} else {
		ctx.Response.SetBodyStream(ex, cl)
	}
	return nil
}

// answered settles a request whose whole answer is in hand: the worker's in-flight
// count, breaker and counters, then the request's completion — or, when retry is set
// and the answer is a retryable 5xx, a *statusError to try another worker instead.
func (s *Server) answered(ex *exchange, b *Backend, status int, body []byte, retry bool) error {
	b.end()
	b.breaker.Record(health.Classify(status, body, nil))
	b.m.requests[ex.route][statusClass(status)].Inc()
	if retry && health.Retryable(status, nil, false) {
		return &statusError{status: status}
	}
	s.metrics.route[ex.route].ttfb.Observe(time.Since(ex.dispatched).Seconds())
	s.complete(ex, status)
	return nil
}

// releaseUpstream drops a worker response that will not reach the client.
func (s *Server) releaseUpstream(ctx *fasthttp.RequestCtx, up *fasthttp.Response) {
	if up == &ctx.Response {
		up.Reset()
		return
	}
	fasthttp.ReleaseResponse(up)
}

// readSmallBody reads a streamed body of known length up to limit, closing the stream.
func readSmallBody(up *fasthttp.Response, limit int) ([]byte, error) {
	cl := up.Header.ContentLength()
	if cl < 0 || cl > limit {
		return nil, errors.New("body too large to buffer")
	}
	body := make([]byte, cl)
	_, err := io.ReadFull(up.BodyStream(), body)
	_ = up.CloseBodyStream()
	return body, err
}

// copyResponseHeader gives the client the worker's status and headers, minus hop-by-hop
// ones.
func copyResponseHeader(dst *fasthttp.Response, up *fasthttp.Response) {
	up.Header.CopyTo(&dst.Header)
	stripResponseHeader(dst)
}

// stripResponseHeader removes hop-by-hop headers from an answer; the client connection's
// own keep-alive is the router's business, not the worker's.
func stripResponseHeader(r *fasthttp.Response) {
	r.Header.ResetConnectionClose()
	for _, k := range hopHeaders {
		r.Header.Del(k)
	}
}

func isEventStream(ct []byte) bool {
	return len(ct) >= 17 && bytes.EqualFold(ct[:17], []byte("text/event-stream"))
}

// Read streams a fixed-length worker body to the client (fasthttp's server pulls it).
func (ex *exchange) Read(p []byte) (int, error) { return ex.up.BodyStream().Read(p) }

// CloseWithError ends a fixed-length body: err is the client write error, if any.
func (ex *exchange) CloseWithError(err error) error {
	status := ex.up.StatusCode()
	if err != nil {
		ex.endStream(errClientGone)
		ex.s.complete(ex, 499)
	} else {
		ex.endStream(nil)
		ex.s.complete(ex, status)
	}
	ex.unref()
	return nil
}

// writeStream copies an event stream to the client, flushing after every chunk the worker
// sends, so each SSE event leaves when it arrives. It runs on fasthttp's stream goroutine.
func (ex *exchange) writeStream(w *bufio.Writer) {
	s, up := ex.s, ex.up
	stream := up.BodyStream()
	status := up.StatusCode()
	var endErr error
	for {
		// Read straight into the writer's free space: no copy buffer per stream.
		buf := w.AvailableBuffer()
		if cap(buf) < 512 {
			if err := w.Flush(); err != nil {
				endErr, status = errClientGone, 499
				break
			}
			buf = w.AvailableBuffer()
		}
		n, err := stream.Read(buf[:cap(buf)])
		if n > 0 {
			if !ex.wrote {
				ex.wrote = true
				s.metrics.route[ex.route].ttfb.Observe(time.Since(ex.dispatched).Seconds())
			}
			if _, werr := w.Write(buf[:n]); werr == nil {
				werr = w.Flush()
				if werr != nil {
					endErr, status = errClientGone, 499
					break
				}
			} else {
				endErr, status = errClientGone, 499
				break
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			// The worker failed mid-stream: the client already has a 200, so the error
			// goes in-band, then the stream is terminated the way vLLM terminates it.
			endErr = err
			if ce := s.log.Check(zap.DebugLevel, "worker stream failed"); ce != nil {
				ce.Write(zap.String("worker", ex.b.id), zap.Error(err))
			}
			if ex.sse {
				writeStreamError(w, err)
			}
			status = 0
			break
		}
	}
	ex.endStream(endErr)
	s.complete(ex, status)
	ex.unref()
}

// writeStreamError ends an event stream with an in-band error event and [DONE].
func writeStreamError(w *bufio.Writer, err error) {
	w.Write(streamErrorEvent(err))
	w.Flush()
}

// streamErrorEvent is the in-band SSE error event and terminator for a failed stream.
func streamErrorEvent(err error) []byte {
	msg := "worker stream failed: " + err.Error()
	if isTimeout(err) {
		msg = "worker stream idle timeout: " + err.Error()
	}
	out := append([]byte(`data: {"error":{"message":`), jsonString(msg)...)
	return append(out, `,"type":"upstream_error","code":502}}`+"\n\ndata: [DONE]\n\n"...)
}

// streamOutcome is what a streamed answer's end means for the worker's breaker and the
// request's recorded status: complete (the worker's status), the client left (499,
// neutral for the worker), or the worker failed mid-body (0, a failure).
func streamOutcome(err error, status int) (health.Outcome, int) {
	switch {
	case err == nil:
		return health.Classify(status, nil, nil), status
	case errors.Is(err, errClientGone):
		return health.Neutral, 499
	}
	return health.Failure, 0
}

// endStream releases the worker side of the exchange: the stream (aborted when err is
// set, which also tells vLLM to stop generating), the connection, the in-flight count and
// the breaker's outcome.
func (ex *exchange) endStream(err error) {
	b, up := ex.b, ex.up
	outcome, _ := streamOutcome(err, up.StatusCode())
	if err != nil {
		if rc, ok := up.BodyStream().(fasthttp.ReadCloserWithError); ok {
			_ = rc.CloseWithError(err)
		}
	}
	_ = up.CloseBodyStream()
	fasthttp.ReleaseResponse(up)
	ex.up = nil
	b.breaker.Record(outcome)
	b.end()
}

// complete records a finished request once: its route, worker and status class, its
// duration, and gives back its limiter slot. status 0 means no complete answer.
func (s *Server) complete(ex *exchange, status int) {
	rm := &s.metrics.route[ex.route]
	rm.vrRequests.Inc()
	took := time.Since(ex.start).Seconds()
	rm.vrDuration.Observe(took)
	if ex.pd {
		s.metrics.pdRequests.WithLabelValues(ex.route.String()).Inc()
		s.metrics.pdDuration.WithLabelValues(ex.route.String()).Observe(took)
		s.metrics.pdPhase.WithLabelValues("e2e").Observe(took)
	}
	if ex.b != nil {
		ex.b.m.requests[ex.route][statusClass(status)].Inc()
	}
	if ex.limited {
		s.limiter.release()
		ex.limited = false
	}
}

// fail answers a request that got no worker response with err's status and JSON body.
func (s *Server) fail(ctx *fasthttp.RequestCtx, ex *exchange, err error) {
	if err == nil {
		err = errNoWorker
	}
	s.metrics.errors.WithLabelValues(ex.route.String(), errorType(err)).Inc()
	if ce := s.log.Check(zap.DebugLevel, "request failed"); ce != nil {
		ce.Write(zap.String("route", ex.route.String()), zap.Error(err))
	}
	status := statusFor(err)
	msg := err.Error()
	switch {
	case errors.Is(err, errNotReady):
		msg = "no healthy worker available yet"
	case errors.Is(err, errNoWorker):
		msg = "no available workers (all unhealthy, open-circuited or full)"
	}
	writeError(ctx, status, msg)
	ex.b = nil
	s.complete(ex, status)
}

// wantsStream reports whether a JSON body asks for a streamed answer ("stream": true).
// A false positive only costs the streamed path; a body that is not JSON is buffered.
func wantsStream(body []byte) bool {
	for i := 0; ; {
		j := bytes.Index(body[i:], []byte(`"stream"`))
		if j < 0 {
			return false
		}
		k := i + j + len(`"stream"`)
		for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
			k++
		}
		if k < len(body) && body[k] == ':' {
			k++
			for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
				k++
			}
			if bytes.HasPrefix(body[k:], []byte("true")) {
				return true
			}
		}
		i = k
	}
}
