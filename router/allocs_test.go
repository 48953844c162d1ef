//go:build !race

package router

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestHotPathAllocs proves a proxied request allocates nothing in the router once pools
// are warm: classification, request id, policy inputs, header preparation, the pick,
// the worker round trip and the pass-through of a fixed-length body; for a body already
// in memory and for one the handler reads from a stream (fasthttp's StreamRequestBody).
func TestHotPathAllocs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	worker := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"ok":true}`)
	}}
	go worker.Serve(ln)
	defer worker.Shutdown()
	for _, pol := range []string{"consistent_hash", "round_robin"} {
		t.Run(pol, func(t *testing.T) {
			srv, err := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1", "--policy", pol,
				"--worker-urls", "http://" + ln.Addr().String(), "--health-check-interval-secs", "0.05"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown(t.Context())
			waitFor(t, "healthy worker", func() bool { h, _, _ := srv.ready(srv.pool.load()); return h == 1 })
			var ctx fasthttp.RequestCtx
			var stream bytes.Reader
			body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 1000) + `"}]}`)
			streamed := false
			one := func() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("POST")
				ctx.Request.SetRequestURI("/v1/chat/completions")
				ctx.Request.Header.Set("X-Session-ID", "session-7")
				if streamed {
					stream.Reset(body)
					ctx.Request.SetBodyStream(&stream, len(body))
				} else {
					ctx.Request.SetBody(body)
				}
				srv.handle(&ctx)
				if ctx.Response.StatusCode() != 200 {
					t.Fatalf("status %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
				// What fasthttp's server does after the handler: pull the body, close the stream.
				if err := ctx.Response.BodyWriteTo(io.Discard); err != nil {
					t.Fatal(err)
				}
			}
			for _, streamed = range []bool{false, true} {
				for i := 0; i < 100; i++ {
					one()
				}
				if n := testing.AllocsPerRun(200, one); n > 0 {
					t.Fatalf("%v allocations per proxied request (body from a stream: %v), want 0", n, streamed)
				}
			}
		})
	}
}

// BenchmarkHandle is TestHotPathAllocs's request as a benchmark, for -memprofile.
func BenchmarkHandle(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	worker := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString(`{"ok":true}`) }}
	go worker.Serve(ln)
	defer worker.Shutdown()
	srv, _ := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1", "--policy", "consistent_hash",
		"--worker-urls", "http://" + ln.Addr().String(), "--health-check-interval-secs", "0.05"}, nil)
	defer srv.Shutdown(b.Context())
	for h, _, _ := srv.ready(srv.pool.load()); h < 1; h, _, _ = srv.ready(srv.pool.load()) {
		time.Sleep(5 * time.Millisecond)
	}
	var ctx fasthttp.RequestCtx
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	b.ReportAllocs()
	for b.Loop() {
		ctx.Request.Reset()
		ctx.Response.Reset()
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI("/v1/chat/completions")
		ctx.Request.Header.Set("X-Session-ID", "session-7")
		ctx.Request.SetBody(body)
		srv.handle(&ctx)
		ctx.Response.BodyWriteTo(io.Discard)
	}
}
