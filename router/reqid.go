package router

import (
	"math/rand/v2"

	"github.com/valyala/fasthttp"
)

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// appendRequestID appends a new request id in vllm-router's shape: a route prefix and 24
// random alphanumerics.
func appendRequestID(dst []byte, r route) []byte {
	switch r {
	case routeChat:
		dst = append(dst, "chatcmpl-"...)
	case routeCompletions:
		dst = append(dst, "cmpl-"...)
	case routeGenerate:
		dst = append(dst, "gnt-"...)
	default:
		dst = append(dst, "req-"...)
	}
	for i := 0; i < 24; i += 8 {
		x := rand.Uint64()
		for j := 0; j < 8; j++ {
			dst = append(dst, idAlphabet[x%62])
			x /= 62
		}
	}
	return dst
}

// requestID returns the first present configured header value, or appends a generated id
// to buf. The result is valid until the handler returns.
func requestID(h *fasthttp.RequestHeader, names [][]byte, r route, buf []byte) ([]byte, []byte) {
	for _, n := range names {
		if v := h.PeekBytes(n); len(v) > 0 {
			return v, buf
		}
	}
	buf = appendRequestID(buf[:0], r)
	return buf, buf
}
