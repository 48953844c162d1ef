package router

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// fastWorker is a minimal fasthttp backend, so the benchmark measures the router.
func fastWorker(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	resp := []byte(`{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/health" {
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(resp)
	}}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

// BenchmarkProxyRequest is one proxied 1 KB chat completion through the router over
// loopback (client → router → worker), per policy. Compare runs with
// `go test -bench ProxyRequest -count 10 ./router | benchstat`.
func BenchmarkProxyRequest(b *testing.B) {
	for _, pol := range []string{"consistent_hash", "round_robin"} {
		b.Run(pol, func(b *testing.B) {
			w1, w2 := fastWorker(b), fastWorker(b)
			srv, err := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1",
				"--policy", pol, "--worker-urls", w1, w2, "--health-check-interval-secs", "0.05"}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown(b.Context())
			for h, _, _ := srv.ready(srv.pool.load()); h < 2; h, _, _ = srv.ready(srv.pool.load()) {
				time.Sleep(5 * time.Millisecond) // polling for the first health check
			}
			body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 1000) + `"}]}`)
			client := &fasthttp.HostClient{Addr: srv.Addr(), MaxConns: 64}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				req.SetRequestURI("http://" + srv.Addr() + "/v1/chat/completions")
				req.Header.SetMethod("POST")
				req.Header.Set("X-Session-ID", "session-42")
				req.SetBody(body)
				for pb.Next() {
					if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						b.Fatalf("%v %d", err, resp.StatusCode())
					}
				}
			})
		})
	}
}
