package router

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/valyala/fasthttp"
)

// Request bodies. fasthttp's server runs with StreamRequestBody, so the handler is called
// once the headers are in and the body is read from the connection on demand. A body of
// known length up to streamBodyAbove is then read whole into ctx.Request, exactly as
// before (fasthttp already holds the first 8 KiB). A larger or chunked body is not: the
// router reads only its head (scanHead bytes) for the facts it scans — "stream":true, the
// session id, cache_aware's prompt text — and the worker gets head and rest as one body
// stream, copied from the client connection to the worker connection as it arrives. Such
// a request can go to one worker only: once a byte was sent, a failure is not retried
// elsewhere (a dial error, where nothing was sent, still is). P/D requests and the admin
// routes need the whole body and read it whole, up to --max-payload-size.
//
// --max-payload-size is the router's to enforce (fasthttp's MaxRequestBodySize is the
// streaming threshold): from Content-Length before anything is read, and for chunked
// bodies by counting them on the way through. The body's read deadline is the one
// HeaderReceived sets (bodyReadTimeout); whatever the handler leaves unread, fasthttp
// discards up to 256 KiB of or closes the connection.

// streamBodyAbove is the largest request body read whole for a regular proxied request,
// and bufferAnswerMax the largest worker answer to a "stream":false request held whole
// before it is sent on. Variables so tests can make them small.
var (
	streamBodyAbove = 1 << 20
	bufferAnswerMax = 1 << 20
)

// scanHead is how much of a streamed request body the router reads to scan.
const scanHead = 64 << 10

// errBodyIncomplete: the client's body ended early, failed or timed out.
var errBodyIncomplete = errors.Join(errBadRequest, errors.New("request body not received whole"))

// upload is a streamed request body on its way to the worker: the head the router read,
// then the rest straight from the client connection. It counts what it hands over, so
// a chunked body over the limit is cut, and so the router knows whether the request can
// still be sent elsewhere.
type upload struct {
	head []byte
	off  int
	rest io.Reader
	n    int64 // bytes handed to the worker connection
	size int64 // Content-Length, or -1 for chunked
	max  int64 // --max-payload-size
	err  error // the client side failed: not the worker's fault
}

func (u *upload) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	if u.off < len(u.head) {
		n := copy(p, u.head[u.off:])
		u.off += n
		u.n += int64(n)
		return n, nil
	}
	n, err := u.rest.Read(p)
	u.n += int64(n)
	switch {
	case u.n > u.max:
		u.err = errBodyTooLarge
		return 0, u.err // the bytes past the limit never leave
	case err == io.EOF && u.size >= 0 && u.n < u.size:
		u.err = errBodyIncomplete
	case err != nil && err != io.EOF:
		u.err = fmt.Errorf("%w: %w", errBodyIncomplete, err)
	default:
		return n, err
	}
	// fasthttp's chunked writer ignores an error that comes with data: hand over the
	// data now and the error on the next call.
	if n > 0 {
		return n, nil
	}
	return 0, u.err
}

// sent reports whether any of the body left for a worker: the request is then one-shot.
func (u *upload) sent() bool { return u.n > 0 }

func (u *upload) reset() { *u = upload{head: u.head[:0]} }

// takeBody makes ctx.Request's body ready to forward and returns the bytes the router may
// scan: the whole body, or, for a body that streams (unless whole is set), its head.
func (s *Server) takeBody(ctx *fasthttp.RequestCtx, ex *exchange, whole bool) ([]byte, error) {
	req := &ctx.Request
	limit := s.cfg.MaxPayloadSize
	cl := req.Header.ContentLength()
	if cl > limit {
		tooLargeBodies.Delete(&req.Header)
		return nil, errBodyTooLarge
	}
	if !req.IsBodyStream() {
		return req.Body(), nil // no body, or one already in memory
	}
	if cl >= 0 && (whole || cl <= streamBodyAbove) {
		// fasthttp has the first 8 KiB already; Body reads the rest. A failed read leaves
		// an error message in place of the body, which cannot have the body's length:
		// with nothing left to read it cannot fail.
		body := req.Body()
		if len(body) != cl {
			return nil, errBodyIncomplete
		}
		return body, nil
	}
	stream := req.BodyStream()
	if cl >= 0 {
		// Large and of known length: the head, and the rest on the way to the worker.
		n := min(cl, scanHead)
		head := slices.Grow(ex.upload.head[:0], n)[:n]
		if _, err := io.ReadFull(stream, head); err != nil {
			return nil, errBodyIncomplete
		}
		ex.upload = upload{head: head, rest: stream, size: int64(cl), max: int64(limit)}
		req.SetBodyStream(&ex.upload, cl)
		return head, nil
	}
	// Chunked: read up to the limit that applies; a body that ends within it is held
	// whole (and sent with a Content-Length, as before).
	keep := streamBodyAbove
	if whole {
		keep = limit
	}
	head, err := readUpTo(stream, ex.upload.head[:0], min(keep, limit)+1)
	ex.upload.head = head
	switch {
	case err != nil:
		return nil, errBodyIncomplete
	case len(head) > limit:
		return nil, errBodyTooLarge
	case len(head) <= keep:
		req.SetBody(head)
		return req.Body(), nil
	}
	ex.upload = upload{head: head, rest: stream, size: -1, max: int64(limit)}
	req.SetBodyStream(&ex.upload, -1)
	return head, nil
}

// readUpTo appends from r to buf until EOF or until buf holds n bytes.
func readUpTo(r io.Reader, buf []byte, n int) ([]byte, error) {
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// failBody answers a request whose body the router could not take. The rest of the body
// stays unread, so the connection closes after the answer.
func (s *Server) failBody(ctx *fasthttp.RequestCtx, ex *exchange, err error) {
	if ex.start.IsZero() {
		ex.start = time.Now() // no admission started the clock yet
	}
	s.fail(ctx, ex, err)
	ctx.SetConnectionClose()
}
