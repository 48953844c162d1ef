package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/valyala/fasthttp"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/policy"
)

// Sentinel errors carry the decisions; statusFor is the only place they become HTTP statuses.
var (
	errNoWorker     = policy.ErrNoEndpoint
	errNotReady     = errors.New("no healthy worker yet")
	errBodyTooLarge = errors.New("request body exceeds --max-payload-size")
	errBadRequest   = errors.New("bad request")
	errUnauthorized = errors.New("missing or invalid API key")
	errOverloaded   = errors.New("too many requests in flight; retry later")
	errMethod       = errors.New("method not allowed")
	errClientGone   = errors.New("client closed the connection")
)

// statusFor maps an error to the HTTP status the client gets.
func statusFor(err error) int {
	switch {
	case err == nil:
		return fasthttp.StatusOK
	case errors.Is(err, errBadRequest):
		return fasthttp.StatusBadRequest
	case errors.Is(err, errUnauthorized):
		return fasthttp.StatusUnauthorized
	case errors.Is(err, errMethod):
		return fasthttp.StatusMethodNotAllowed
	case errors.Is(err, errBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge
	case errors.Is(err, errOverloaded):
		return fasthttp.StatusTooManyRequests
	case errors.Is(err, errClientGone):
		return 499
	case errors.Is(err, errNoWorker), errors.Is(err, errNotReady):
		return fasthttp.StatusServiceUnavailable
	case isTimeout(err):
		return fasthttp.StatusGatewayTimeout
	}
	return fasthttp.StatusBadGateway
}

// errorType is the error_type label of vllm_router_request_errors_total.
func errorType(err error) string {
	switch statusFor(err) {
	case fasthttp.StatusServiceUnavailable:
		return "no_available_workers"
	case fasthttp.StatusGatewayTimeout:
		return "timeout"
	case fasthttp.StatusTooManyRequests:
		return "overloaded"
	case 499:
		return "client_closed"
	case fasthttp.StatusRequestEntityTooLarge, fasthttp.StatusBadRequest:
		return "bad_request"
	}
	if health.IsDialError(err) {
		return "connect_error"
	}
	return "upstream_error"
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeError answers with status and an OpenAI-style JSON error body.
func writeError(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	typ := "server_error"
	if status < 500 {
		typ = "invalid_request_error"
	}
	b := ctx.Response.BodyWriter()
	fmt.Fprintf(b, `{"error":{"message":%s,"type":%q,"code":%d}}`, jsonString(msg), typ, status)
}

// jsonString encodes s as a JSON string: control characters escaped, invalid UTF-8
// replaced, so an echoed URL or header never breaks the error body.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// writeErr answers for err with statusFor's status and err's message.
func writeErr(ctx *fasthttp.RequestCtx, err error) {
	writeError(ctx, statusFor(err), err.Error())
}
