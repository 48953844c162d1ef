package router

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkPDFirstDecodeEvent measures how long a streamed P/D request's first decode event
// takes from the moment the decode worker writes it to the moment the client reads it,
// through the router (prefill leg, decode leg, per-event flush). The decode worker stamps
// each event with its send time; client and worker share a clock.
//
//	go test -run '^$' -bench PDFirstDecodeEvent -benchtime 2000x ./router
func BenchmarkPDFirstDecodeEvent(b *testing.B) {
	prefill := serveFast(b, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"id":"p","choices":[{"index":0,"text":"x","finish_reason":"length"}],"kv_transfer_params":` + kvParams + `}`)
	})
	decode := serveFast(b, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/event-stream")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: {\"sent\":%d}\n\n", time.Now().UnixNano())
				w.Flush()
			}
			w.WriteString("data: [DONE]\n\n")
			w.Flush()
		})
	})
	srv, err := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1", "--policy", "round_robin",
		"--vllm-pd-disaggregation", "--prefill", prefill, "--decode", decode, "--health-check-interval-secs", "0.05"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(b.Context())
	for _, _, ok := srv.ready(srv.pool.load()); !ok; _, _, ok = srv.ready(srv.pool.load()) {
		time.Sleep(5 * time.Millisecond) // polling for the first health checks
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	url := "http://" + srv.Addr() + "/v1/completions"
	body := `{"model":"m","prompt":"hello","max_tokens":3,"stream":true}`
	delays := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadBytes('\n')
		now := time.Now()
		if err != nil || !bytes.HasPrefix(line, []byte(`data: {"sent":`)) {
			b.Fatalf("first line %q: %v", line, err)
		}
		sent, _ := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimPrefix(line, []byte(`data: {"sent":`)), []byte("}\n"))), 10, 64)
		delays = append(delays, now.Sub(time.Unix(0, sent)))
		for ; err == nil; _, err = br.ReadBytes('\n') {
		}
		resp.Body.Close()
	}
	b.StopTimer()
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	b.ReportMetric(float64(delays[len(delays)/2].Microseconds()), "p50-µs/first-event")
	b.ReportMetric(float64(delays[len(delays)*99/100].Microseconds()), "p99-µs/first-event")
}

func serveFast(b *testing.B, h fasthttp.RequestHandler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/health" {
			return
		}
		h(ctx)
	}}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String()
}
