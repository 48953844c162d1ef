package router

import (
	"bufio"
	"errors"
	"io"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// deadline is the request's --request-timeout-secs cap, or zero for none.
func (s *Server) deadline(ex *exchange) time.Time {
	if s.cfg.RequestTimeout > 0 {
		return ex.start.Add(s.cfg.RequestTimeout)
	}
	return time.Time{}
}

var errTooManyInterim = errors.New("worker sent too many 1xx responses")

// readResponseHead reads a worker's response head into hdr, skipping 1xx interim
// answers (100 Continue, 103 Early Hints), which carry no body.
func readResponseHead(br *bufio.Reader, hdr *fasthttp.ResponseHeader) error {
	for n := 0; ; n++ {
		if err := hdr.Read(br); err != nil {
			return err
		}
		if st := hdr.StatusCode(); st < 100 || st > 199 || st == fasthttp.StatusSwitchingProtocols {
			return nil
		}
		if n >= 100 {
			return errTooManyInterim
		}
	}
}

// workerConnError gives a failed request write or response-head read the shape
// HostClient.Do gives it, so retry and breaker decisions do not depend on the path: a
// timeout is ErrTimeout, the worker closing before any answer byte ErrConnectionClosed.
func workerConnError(err error) error {
	switch {
	case isTimeout(err):
		return fasthttp.ErrTimeout
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fasthttp.ErrConnectionClosed
	}
	return err
}

// roundTrip sends req to the worker and reads the answer's header into resp, then
// decides from it: a body of known length up to bufferMax is read into resp, as
// HostClient.Do would (no copy, no allocation); a larger or unknown-length body stays on
// the worker connection and comes back as the body stream of a new Response, which the
// caller closes and releases (the exchange does, when the client has it). Do cannot
// decide between the header and the body, and streaming every answer costs fasthttp's
// stream allocations on each request.
//
// This is fasthttp's transport.RoundTrip (client.go, v1.78) through HostClient's exported
// connection API, for the router's worker clients: plain HTTP, no retries
// (MaxIdemponentCallAttempts is 1), no redirects, no User-Agent, paths not normalized.
// The deadline, when set, bounds the write and every read, as DoDeadline's does.
func roundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, bufferMax int) (*fasthttp.Response, error) {
	var timeout time.Duration
	if !deadline.IsZero() {
		if timeout = time.Until(deadline); timeout <= 0 {
			return resp, fasthttp.ErrTimeout
		}
	}
	// As Do: a fresh response that keeps the server's NoDefaultContentType.
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	req.URI().DisablePathNormalizing = hc.DisablePathNormalizing

	cc, err := hc.AcquireConn(timeout, req.ConnectionClose())
	if err != nil {
		return resp, err
	}
	conn := cc.Conn()
	// A pooled connection may carry an earlier request's deadlines: always set both.
	// timeoutConn makes that free when nothing changes.
	if err = conn.SetWriteDeadline(deadline); err == nil {
		err = conn.SetReadDeadline(deadline)
	}
	if err != nil {
		hc.CloseConn(cc)
		return resp, err
	}
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		hc.CloseConn(cc)
		return resp, workerConnError(err)
	}

	if req.Header.IsHead() {
		resp.SkipBody = true
	}
	br := hc.AcquireReader(conn)
	err = readResponseHead(br, &resp.Header)
	cl := resp.Header.ContentLength()
	st := resp.StatusCode()
	noBody := resp.SkipBody || st < 200 || st == fasthttp.StatusNoContent || st == fasthttp.StatusNotModified
	if err == nil && (noBody || (cl >= 0 && cl <= bufferMax)) {
		if !noBody {
			err = resp.ReadBody(br, 0)
		}
		hc.ReleaseReader(br)
		if err != nil || req.ConnectionClose() || resp.ConnectionClose() {
			hc.CloseConn(cc)
		} else {
			hc.ReleaseConn(cc)
		}
		return resp, err
	}
	if err != nil {
		hc.ReleaseReader(br)
		hc.CloseConn(cc)
		return resp, workerConnError(err)
	}

	// Too large to hold: fasthttp's own body reader over the connection (held by hold),
	// wrapped so the connection goes back to the pool, or closes, when the body ends.
	hold := fasthttp.AcquireResponse()
	resp.Header.CopyTo(&hold.Header)
	hold.StreamBody = true
	_ = hold.ReadBody(br, 0) // with StreamBody this only sets up the stream
	keepConn := !req.ConnectionClose()
	body := &upstreamBody{hold: hold, release: func(reuse bool) {
		hc.ReleaseReader(br)
		if reuse && keepConn && !hold.Header.ConnectionClose() {
			hc.ReleaseConn(cc)
		} else {
			hc.CloseConn(cc)
		}
	}}
	up := fasthttp.AcquireResponse()
	resp.Header.CopyTo(&up.Header)
	up.SetBodyStream(body, cl)
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	return up, nil
}

// upstreamBody is a worker answer read from its connection as the client takes it. Read
// and CloseWithError come from one goroutine, the one writing the client's response.
type upstreamBody struct {
	hold    *fasthttp.Response // owns fasthttp's body reader and the header it frames by
	release func(reuse bool)   // hands the connection back (reuse) or closes it
	eof     bool
	closed  bool
}

var _ fasthttp.ReadCloserWithError = (*upstreamBody)(nil)

func (u *upstreamBody) Read(p []byte) (int, error) {
	if u.closed {
		return 0, io.ErrClosedPipe
	}
	n, err := u.hold.BodyStream().Read(p)
	if err == io.EOF {
		u.eof = true
	}
	return n, err
}

// CloseWithError ends the body: the connection is reused only after a clean end of body
// (anything else closes it, which also tells vLLM to stop). Later calls do nothing.
func (u *upstreamBody) CloseWithError(err error) error {
	if u.closed {
		return nil
	}
	u.closed = true
	_ = u.hold.CloseBodyStream()
	u.release(err == nil && u.eof)
	fasthttp.ReleaseResponse(u.hold)
	return nil
}
