package sim

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkChatCompletion measures the simulator's own overhead per request (zero
// simulated latency), so benchmarks of the router know how much of a figure is the
// backend's: go test -run '^$' -bench ChatCompletion -benchmem ./bench/sim/
func BenchmarkChatCompletion(b *testing.B) {
	for _, bc := range []struct {
		name   string
		stream bool
	}{{"json", false}, {"sse", true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.TTFTBase, cfg.PrefillPerToken, cfg.InterTokenLatency = 0, 0, 0
			cfg.MaxNumSeqs = 1024
			s, err := New(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			ln := listenB(b)
			go func() { _ = s.Serve(ln) }()
			defer func() { _ = s.Shutdown() }()
			c := &fasthttp.HostClient{Addr: ln.Addr().String(), MaxConns: 64, ReadTimeout: 10 * time.Second}
			body := []byte(`{"model":"sim-model","messages":[{"role":"user","content":"How are the rollouts going today?"}],"max_tokens":16,"stream":false}`)
			if bc.stream {
				body = []byte(`{"model":"sim-model","messages":[{"role":"user","content":"How are the rollouts going today?"}],"max_tokens":16,"stream":true}`)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					req.SetRequestURI("http://" + c.Addr + "/v1/chat/completions")
					req.Header.SetMethod(fasthttp.MethodPost)
					req.Header.SetContentType("application/json")
					req.SetBody(body)
					if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						b.Errorf("request: %v %d", err, resp.StatusCode())
						return
					}
				}
			})
		})
	}
}
