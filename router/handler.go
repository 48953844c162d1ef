package router

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"sync"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/policy"
)

// handle is the fasthttp entry point: control routes are answered by the router itself,
// everything else is proxied to a worker. The x-request-id header is set on every answer.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	ex := acquireExchange(s)
	r := classify(ctx.Path())
	ex.route = r
	rid, buf := requestID(&ctx.Request.Header, s.ridHeaders, r, ex.ridBuf)
	ex.ridBuf = buf
	if msg := malformed(&ctx.Request.Header); msg != "" {
		status := fasthttp.StatusBadRequest
		if msg == errVersion {
			status = fasthttp.StatusHTTPVersionNotSupported
		}
		writeError(ctx, status, msg)
		ctx.SetConnectionClose()
	} else if origin := ctx.Request.Header.Peek("Origin"); len(origin) > 0 && s.cors(ctx, origin) {
		// a CORS preflight, answered
	} else if c, ok := s.controlRoute(ctx); ok {
		if _, err := s.takeBody(ctx, ex, true); err != nil {
			s.failBody(ctx, ex, err)
		} else {
			s.serveControl(ctx, c)
		}
	} else if s.apiKey != nil && !s.authorized(ctx, s.apiKey) {
		writeErr(ctx, errUnauthorized)
	} else {
		s.proxy(ctx, ex, rid)
	}
	ctx.Response.Header.SetBytesV("x-request-id", rid)
	if ex.relayed != nil {
		ex.relayed.setHead(&ctx.Response.Header)
		ex.relayed = nil
	}
	ex.handlerDone()
}

// cors applies --cors-allowed-origins as vllm-router does (an empty list allows any
// origin) and answers preflight requests; it reports whether it answered.
func (s *Server) cors(ctx *fasthttp.RequestCtx, origin []byte) bool {
	allowed := len(s.cfg.CORSAllowedOrigins) == 0
	for _, o := range s.cfg.CORSAllowedOrigins {
		if o == string(origin) || o == "*" {
			allowed = true
		}
	}
	if !allowed {
		return false
	}
	h := &ctx.Response.Header
	h.SetBytesV("Access-Control-Allow-Origin", origin)
	h.Set("Vary", "Origin")
	h.Set("Access-Control-Expose-Headers", "x-request-id")
	if !ctx.IsOptions() || len(ctx.Request.Header.Peek("Access-Control-Request-Method")) == 0 {
		return false
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS, DELETE")
	h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Session-ID, X-Request-ID")
	h.Set("Access-Control-Max-Age", "3600")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
	return true
}

const errVersion = "HTTP version not supported"

// malformed catches what fasthttp tolerates but a proxy must refuse: header lines folded
// onto the next line (obs-fold, a request-smuggling shape, RFC 9112 §5.2) and HTTP
// versions other than 1.0 and 1.1.
func malformed(h *fasthttp.RequestHeader) string {
	if p := h.Protocol(); string(p) != "HTTP/1.1" && string(p) != "HTTP/1.0" {
		return errVersion
	}
	raw := h.RawHeaders()
	if bytes.Contains(raw, []byte("\n ")) || bytes.Contains(raw, []byte("\n\t")) {
		return "obsolete line folding in headers"
	}
	return ""
}

// authorized checks "Authorization: Bearer <key>" in constant time.
func (s *Server) authorized(ctx *fasthttp.RequestCtx, want []byte) bool {
	got := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)
	return subtle.ConstantTimeCompare(got, want) == 1
}

// handleParseError answers requests fasthttp could not read: oversized bodies, malformed
// or smuggling-shaped headers, slow clients.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	if ce := s.log.Check(zap.DebugLevel, "bad request"); ce != nil {
		ce.Write(zap.Error(err))
	}
	var small *fasthttp.ErrSmallBuffer
	_, tooLarge := tooLargeBodies.LoadAndDelete(&ctx.Request.Header)
	switch {
	case err == fasthttp.ErrBodyTooLarge || tooLarge:
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, errBodyTooLarge.Error())
	case errors.As(err, &small):
		writeError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "request headers too large")
	case isTimeout(err):
		writeError(ctx, fasthttp.StatusRequestTimeout, "request not received in time")
	default:
		writeError(ctx, fasthttp.StatusBadRequest, "malformed HTTP request")
	}
	ctx.SetConnectionClose()
}

// session-key headers, in vllm-router's order (hash_key.rs): the sticky chain first, then
// the per-request ids that only the hashing policies fall back to.
var (
	sessionHeaders = [][]byte{[]byte("X-Session-ID"), []byte("X-User-ID"), []byte("X-Tenant-ID"), []byte("X-Correlation-ID")}
	requestHeaders = [][]byte{[]byte("X-Request-ID"), []byte("X-Trace-ID")}
)

func firstHeader(h *fasthttp.RequestHeader, names [][]byte) []byte {
	for _, n := range names {
		if v := h.PeekBytes(n); len(v) > 0 {
			return v
		}
	}
	return nil
}

// fillPolicyRequest computes only the request facts the configured policies read. body is
// what takeBody returned: the whole body, or the head of one that streams.
func (s *Server) fillPolicyRequest(pr *policy.Request, ctx *fasthttp.RequestCtx, ex *exchange, body []byte) {
	if s.inputs == 0 {
		return
	}
	h := &ctx.Request.Header
	session := firstHeader(h, sessionHeaders)
	streamed := ex.upload.rest != nil // body is the head of a streamed body
	var sid []byte
	bodySession := func() []byte {
		if sid == nil {
			if streamed {
				sid = policy.SessionIDFromHead(body)
			} else {
				sid = policy.SessionIDFromBody(body)
			}
		}
		return sid
	}
	if s.inputs&policy.InputSessionID != 0 {
		pr.SessionID = session
		if pr.SessionID == nil {
			pr.SessionID = bodySession()
		}
	}
	if s.inputs&policy.InputKey != 0 {
		pr.Key = session
		if pr.Key == nil {
			pr.Key = firstHeader(h, requestHeaders)
		}
		if pr.Key == nil {
			pr.Key = bodySession()
		}
	}
	if s.inputs&policy.InputText != 0 {
		if streamed {
			ex.textBuf = policy.PromptTextHead(ex.textBuf[:0], body)
		} else {
			ex.textBuf = policy.PromptText(ex.textBuf[:0], body)
		}
		pr.Text = ex.textBuf
	}
}

// exchangePool recycles per-request state; nothing in it refers to a RequestCtx.
var exchangePool sync.Pool

func acquireExchange(s *Server) *exchange {
	ex, _ := exchangePool.Get().(*exchange)
	if ex == nil {
		ex = &exchange{}
	}
	ex.s = s
	ex.refs.Store(1)
	return ex
}
