package pd

import (
	"errors"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Upstream is a worker the router can send one leg to. The router's Backend implements
// it (over a *fasthttp.HostClient).
type Upstream interface {
	// ID is the worker's stable name, used in errors.
	ID() string
	// DoDeadline performs req and fills resp, giving up at deadline.
	DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error
}

// HeaderRequestID carries one id per client request on both legs. vLLM bases its
// request id on it, so the prefill and decode workers' logs of one request join up;
// NIXL itself pairs the legs through kv_transfer_params, never through this header.
const HeaderRequestID = "X-Request-Id"

// hopByHop are the headers a proxy must not forward (RFC 9110 §7.6.1, as
// net/http/httputil.ReverseProxy strips them). Content-Length is recomputed from the
// leg's body. Accept-Encoding is dropped because the router parses the prefill response
// and may merge the decode one, so both must come back uncompressed.
var hopByHop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Content-Length", "Accept-Encoding", HeaderRequestID,
}

// PrepareLeg fills leg, which the caller acquired and will release, for one P/D leg
// from the client's request: the client's method, request URI (path and query) and
// headers, minus hop-by-hop headers, those the client's Connection header names,
// Accept-Encoding and any client X-Request-Id; then X-Request-Id = requestID (use the
// same id for both legs) and body. The body is not copied (fasthttp SetBodyRaw): it
// must stay unchanged until the leg's DoDeadline returns. The upstream's address is the
// Upstream's business; the client's Host header is kept.
func PrepareLeg(leg, client *fasthttp.Request, requestID, body []byte) {
	leg.Reset()
	client.Header.CopyTo(&leg.Header)
	// Headers the client's Connection header lists are hop-by-hop too.
	conn := client.Header.Peek(fasthttp.HeaderConnection)
	for len(conn) > 0 {
		var token []byte
		if c := indexByte(conn, ','); c >= 0 {
			token, conn = conn[:c], conn[c+1:]
		} else {
			token, conn = conn, nil
		}
		token = trimSpace(token)
		if len(token) > 0 {
			leg.Header.DelBytes(token)
		}
	}
	for _, h := range hopByHop {
		leg.Header.Del(h)
	}
	leg.Header.SetBytesV(HeaderRequestID, requestID)
	leg.SetBodyRaw(body)
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// Outcome classifies a leg's result, for retry and status decisions.
type Outcome uint8

const (
	// OutcomeOK is a 2xx response.
	OutcomeOK Outcome = iota
	// OutcomeClientError is a 4xx other than 408 and 429: the request itself is bad.
	// Relay the worker's status and body to the client; another worker would say the same.
	OutcomeClientError
	// OutcomeServerError is a 5xx, 408, 429 or any other non-2xx status: this worker
	// failed or is overloaded. Retry on another worker.
	OutcomeServerError
	// OutcomeTransport means no response arrived: dial, write or read failed. Retry on
	// another worker (a prefill leg has no effect worth protecting: its KV lease expires).
	OutcomeTransport
	// OutcomeTimeout means the deadline passed first. Retry only if time remains.
	OutcomeTimeout
)

func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeClientError:
		return "client_error"
	case OutcomeServerError:
		return "server_error"
	case OutcomeTransport:
		return "transport_error"
	case OutcomeTimeout:
		return "timeout"
	}
	return "unknown"
}

// Retryable reports whether another worker may succeed where this one did not.
func (o Outcome) Retryable() bool { return o >= OutcomeServerError }

// Classify maps a leg's transport error (nil when a response arrived) and HTTP status to
// its Outcome. The router uses it for the decode leg as well.
func Classify(status int, err error) Outcome {
	if err != nil {
		if isTimeout(err) {
			return OutcomeTimeout
		}
		return OutcomeTransport
	}
	switch {
	case status >= 200 && status < 300:
		return OutcomeOK
	case status == fasthttp.StatusRequestTimeout || status == fasthttp.StatusTooManyRequests:
		return OutcomeServerError
	case status >= 400 && status < 500:
		return OutcomeClientError
	}
	return OutcomeServerError
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ErrUpstreamStatus is what a LegError for a non-2xx response wraps.
var ErrUpstreamStatus = errors.New("pd: upstream answered with an error status")

// LegError is a failed leg: no response, or a non-2xx one.
type LegError struct {
	// Upstream is the worker's ID.
	Upstream string
	// Outcome classifies the failure; never OutcomeOK.
	Outcome Outcome
	// Status is the HTTP status, 0 when no response arrived.
	Status int
	// Err is the transport error, or ErrUpstreamStatus.
	Err error
}

func (e *LegError) Error() string {
	msg := "pd: prefill on " + e.Upstream + " failed (" + e.Outcome.String()
	if e.Status != 0 {
		msg += ", status " + strconv.Itoa(e.Status)
	}
	return msg + "): " + e.Err.Error()
}

func (e *LegError) Unwrap() error { return e.Err }

// Prefill sends the prefill leg req (built with PrepareLeg around a PrefillBody body)
// to up with the deadline, and appends the response body to dst (uncompressed if the
// worker compressed it anyway). It returns the status and body whenever a response
// arrived, so a 4xx body can be relayed to the client; a non-2xx status or no response
// is a *LegError. With a dst of enough capacity, Prefill adds no allocation to the
// Upstream's own.
func Prefill(dst []byte, up Upstream, req *fasthttp.Request, deadline time.Time) (body []byte, status int, err error) {
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	if err := up.DoDeadline(req, resp, deadline); err != nil {
		return dst, 0, &LegError{Upstream: up.ID(), Outcome: Classify(0, err), Err: err}
	}
	status = resp.StatusCode()
	if len(resp.Header.ContentEncoding()) > 0 {
		raw, err := resp.BodyUncompressed()
		if err != nil {
			return dst, status, &LegError{Upstream: up.ID(), Outcome: OutcomeTransport, Status: status, Err: err}
		}
		dst = append(dst, raw...)
	} else {
		dst = append(dst, resp.Body()...)
	}
	if o := Classify(status, nil); o != OutcomeOK {
		return dst, status, &LegError{Upstream: up.ID(), Outcome: o, Status: status, Err: ErrUpstreamStatus}
	}
	return dst, status, nil
}
