package router

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Every named data route and an unknown path reach a worker with the body unchanged.
func TestProxyRoutesBodyByteForByte(t *testing.T) {
	w := newFakeWorker(t, "w0")
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	// Odd spacing, key order, escapes and unicode: a re-encoder would change these bytes.
	body := `{"model":"m", "messages":[{"role":"user","content":"h\u00e9llo \"q\""}],"zeta":1,"alpha":[1 ,2],"return_token_ids":true}`
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/inference/v1/generate", "/v1/responses",
		"/v1/messages", "/v1/embeddings", "/tokenize", "/detokenize", "/some/other/path?x=1"} {
		t.Run(path, func(t *testing.T) {
			resp, _ := post(t, "http://"+srv.Addr()+path, body, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := w.received()
			last := got[len(got)-1]
			if last.path != path {
				t.Fatalf("worker got path %q, want %q", last.path, path)
			}
			if !bytes.Equal(last.body, []byte(body)) {
				t.Fatalf("body changed:\n got %s\nwant %s", last.body, body)
			}
		})
	}
	resp, b := get(t, "http://"+srv.Addr()+"/v1/models")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"data"`) {
		t.Fatalf("/v1/models: %d %s", resp.StatusCode, b)
	}
}

func TestRequestIDAndHeaders(t *testing.T) {
	w := newFakeWorker(t, "w0")
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--request-id-headers", "x-session-id", "x-request-id")
	waitReady(t, srv)
	url := "http://" + srv.Addr() + "/v1/completions"
	cases := []struct {
		name   string
		hdr    map[string]string
		wantID string // "" = generated
	}{
		{"from first configured header", map[string]string{"X-Session-ID": "sess-1", "X-Request-ID": "req-9"}, "sess-1"},
		{"from second configured header", map[string]string{"X-Request-ID": "req-9"}, "req-9"},
		{"generated", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"Keep-Alive": "timeout=5", "Proxy-Authorization": "secret", "X-Custom": "kept", "Te": "trailers"}
			for k, v := range tc.hdr {
				hdr[k] = v
			}
			resp, _ := post(t, url, `{"prompt":"x"}`, hdr)
			got := resp.Header.Get("x-request-id")
			rec := w.received()
			up := rec[len(rec)-1].header
			if tc.wantID != "" && got != tc.wantID {
				t.Fatalf("x-request-id %q, want %q", got, tc.wantID)
			}
			if tc.wantID == "" && (!strings.HasPrefix(got, "cmpl-") || len(got) != len("cmpl-")+24) {
				t.Fatalf("generated id %q, want cmpl- + 24 chars", got)
			}
			if up.Get("X-Request-Id") != got {
				t.Fatalf("worker saw X-Request-Id %q, client got %q", up.Get("X-Request-Id"), got)
			}
			if up.Get("X-Custom") != "kept" {
				t.Fatal("end-to-end header not forwarded")
			}
			for _, h := range []string{"Keep-Alive", "Proxy-Authorization", "Te"} {
				if up.Get(h) != "" {
					t.Fatalf("hop-by-hop header %s forwarded", h)
				}
			}
		})
	}
	// Error answers carry the id too.
	resp, _ := post(t, "http://"+srv.Addr()+"/flush_cache", "", map[string]string{"X-Session-ID": "s2"})
	if resp.Header.Get("x-request-id") != "s2" {
		t.Fatalf("control route lacks x-request-id")
	}
}

// sseWorker sends n events gap apart, then [DONE].
func sseHandler(n int, gap time.Duration) func(w http.ResponseWriter, r *http.Request, body []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(200)
		f := w.(http.Flusher)
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "data: {\"i\":%d}\n\n", i)
			f.Flush()
			select {
			case <-time.After(gap):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}
}

// Events sent 200 ms apart reach the client 200 ms apart, not batched, with the worker's
// Content-Type; the worker's in-flight count lasts until the stream ends.
func TestStreamingEventsArriveApart(t *testing.T) {
	w := newFakeWorker(t, "w0")
	w.setHandler(sseHandler(4, 200*time.Millisecond))
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	req, _ := http.NewRequest("POST", "http://"+srv.Addr()+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
		t.Fatalf("content-type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	var arrivals []time.Time
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "data: ") {
			arrivals = append(arrivals, time.Now())
			if len(arrivals) == 2 {
				if n := srv.pool.load().regular[0].InFlight(); n != 1 {
					t.Fatalf("in-flight during stream = %d, want 1", n)
				}
			}
		}
		if err != nil {
			break
		}
	}
	if len(arrivals) != 5 {
		t.Fatalf("got %d events, want 5", len(arrivals))
	}
	for i := 1; i < 4; i++ {
		if gap := arrivals[i].Sub(arrivals[i-1]); gap < 150*time.Millisecond {
			t.Fatalf("events %d and %d arrived %v apart: batched", i-1, i, gap)
		}
	}
	waitFor(t, "in-flight back to 0", func() bool { return srv.pool.load().regular[0].InFlight() == 0 })
}

// A client that leaves mid-stream makes the router close the worker's stream.
func TestClientGoneClosesUpstream(t *testing.T) {
	w := newFakeWorker(t, "w0")
	upstreamGone := make(chan struct{})
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
		rw.Header().Set("Content-Type", "text/event-stream")
		rw.WriteHeader(200)
		f := rw.(http.Flusher)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(rw, "data: {\"i\":%d}\n\n", i); err != nil {
				close(upstreamGone)
				return
			}
			f.Flush()
			select {
			case <-r.Context().Done():
				close(upstreamGone)
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	conn, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}")
	buf := make([]byte, 512)
	if _, err := conn.Read(buf); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case <-upstreamGone:
	case <-time.After(5 * time.Second):
		t.Fatal("worker stream still open 5 s after the client left")
	}
	waitFor(t, "in-flight back to 0", func() bool { return srv.pool.load().regular[0].InFlight() == 0 })
}

func TestTimeouts(t *testing.T) {
	t.Run("idle gap cuts a stalled stream with an in-band error", func(t *testing.T) {
		w := newFakeWorker(t, "w0")
		w.setHandler(sseHandler(3, 2*time.Second))
		srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--stream-idle-timeout-secs", "0.3")
		waitReady(t, srv)
		start := time.Now()
		_, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{"stream":true}`, nil)
		if time.Since(start) > 1500*time.Millisecond {
			t.Fatalf("stalled stream not cut: took %v", time.Since(start))
		}
		s := string(b)
		if !strings.Contains(s, `data: {"i":0}`) || !strings.Contains(s, `"error"`) || !strings.HasSuffix(s, "data: [DONE]\n\n") {
			t.Fatalf("body %q: want first event, in-band error, [DONE]", s)
		}
	})
	t.Run("slow headers → 504", func(t *testing.T) {
		w := newFakeWorker(t, "w0")
		w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
			}
		})
		srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--response-header-timeout-secs", "0.3")
		waitReady(t, srv)
		resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
		if resp.StatusCode != 504 || !strings.Contains(string(b), `"error"`) {
			t.Fatalf("got %d %s, want 504 JSON", resp.StatusCode, b)
		}
	})
	t.Run("long stream without a total cap is not cut", func(t *testing.T) {
		w := newFakeWorker(t, "w0")
		w.setHandler(sseHandler(4, 150*time.Millisecond))
		srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--stream-idle-timeout-secs", "0.3")
		waitReady(t, srv)
		_, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{"stream":true}`, nil)
		if strings.Contains(string(b), "error") || strings.Count(string(b), "data: ") != 5 {
			t.Fatalf("stream cut: %q", b)
		}
	})
	t.Run("--request-timeout-secs caps the whole stream", func(t *testing.T) {
		w := newFakeWorker(t, "w0")
		w.setHandler(sseHandler(20, 100*time.Millisecond))
		srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--request-timeout-secs", "0.5")
		waitReady(t, srv)
		start := time.Now()
		_, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{"stream":true}`, nil)
		if d := time.Since(start); d > 1500*time.Millisecond || !strings.Contains(string(b), `"error"`) {
			t.Fatalf("after %v got %q: want cut near 0.5 s with an error event", d, b)
		}
	})
}

func TestMaxPayloadSize(t *testing.T) {
	w := newFakeWorker(t, "w0")
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--max-payload-size", "1024")
	waitReady(t, srv)
	resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":"`+strings.Repeat("x", 2000)+`"}`, nil)
	if resp.StatusCode != 413 || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("got %d %s, want 413 with a JSON error", resp.StatusCode, b)
	}
	resp, _ = post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":"`+strings.Repeat("x", 1000)+`"}`, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("body under the limit: %d", resp.StatusCode)
	}
}

// Before any worker is healthy the port is open and data routes answer 503.
func TestNotReadyAnswers503(t *testing.T) {
	srv := startRouter(t, "--worker-urls", "http://127.0.0.1:1", "--policy", "round_robin")
	resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
	if resp.StatusCode != 503 || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("got %d %s", resp.StatusCode, b)
	}
	resp, _ = get(t, "http://"+srv.Addr()+"/readiness")
	if resp.StatusCode != 503 {
		t.Fatalf("/readiness %d", resp.StatusCode)
	}
}

// Sessions stick to one worker under consistent_hash; round_robin spreads.
func TestPoliciesOverSockets(t *testing.T) {
	ws := []*fakeWorker{newFakeWorker(t, "w0"), newFakeWorker(t, "w1"), newFakeWorker(t, "w2"), newFakeWorker(t, "w3")}
	urls := []string{ws[0].URL, ws[1].URL, ws[2].URL, ws[3].URL}
	t.Run("consistent_hash", func(t *testing.T) {
		srv := startRouter(t, append([]string{"--policy", "consistent_hash", "--worker-urls"}, urls...)...)
		waitForHealthy(t, srv, 4)
		used := map[string]bool{}
		for s := 0; s < 40; s++ {
			var first string
			for turn := 0; turn < 3; turn++ {
				resp, _ := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{}`, map[string]string{"X-Session-ID": fmt.Sprintf("sess-%d", s)})
				wk := resp.Header.Get("X-Switchyard-Worker")
				if turn == 0 {
					first = wk
				} else if wk != first {
					t.Fatalf("session %d moved from %s to %s", s, first, wk)
				}
				used[wk] = true
			}
		}
		if len(used) < 3 {
			t.Fatalf("40 sessions used only %d workers", len(used))
		}
	})
	t.Run("round_robin", func(t *testing.T) {
		srv := startRouter(t, append([]string{"--policy", "round_robin", "--worker-urls"}, urls...)...)
		waitForHealthy(t, srv, 4)
		count := map[string]int{}
		for i := 0; i < 40; i++ {
			resp, _ := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, map[string]string{"X-Session-ID": "same"})
			count[resp.Header.Get("X-Switchyard-Worker")]++
		}
		for _, w := range []string{"w0", "w1", "w2", "w3"} {
			if count[w] != 10 {
				t.Fatalf("round robin counts %v, want 10 each", count)
			}
		}
	})
}

func TestMetricsEndpoint(t *testing.T) {
	w := newFakeWorker(t, "w0")
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
	_, b := get(t, "http://"+srv.MetricsAddr()+"/metrics")
	for _, want := range []string{
		`switchyard_requests_total{route="/v1/completions",status_class="2xx",worker="` + w.URL + `"} 1`,
		`vllm_router_requests_total{route="/v1/completions"} 1`,
		`vllm_router_request_duration_seconds_bucket`,
		`switchyard_time_to_first_byte_seconds_bucket`,
		`switchyard_worker_in_flight{role="regular",worker="` + w.URL + `"} 0`,
		`vllm_router_worker_health{worker="` + w.URL + `"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

func waitForHealthy(t *testing.T, srv *Server, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d healthy workers", n), func() bool {
		h, _, _ := srv.ready(srv.pool.load())
		return h >= n
	})
}

var _ = io.EOF
