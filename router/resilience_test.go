package router

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/switchyard/switchyard/policy"
)

// Retries only when the worker provably did not process the request, never for 4xx or a
// 500 (the worker may have done the work), and never twice on the same worker.
func TestRetries(t *testing.T) {
	cases := []struct {
		name      string
		status    int
		wantCode  int
		wantTries int // requests the failing worker saw
	}{
		{"503 is retried elsewhere", 503, 200, 1},
		{"502 is retried elsewhere", 502, 200, 1},
		{"500 is not retried", 500, 500, 1},
		{"429 from the worker is not retried", 429, 429, 1},
		{"400 is not retried", 400, 400, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad, good := newFakeWorker(t, "bad"), newFakeWorker(t, "good")
			bad.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				w.Write([]byte(`{"error":{"message":"nope"}}`))
			})
			srv := startRouter(t, "--policy", "consistent_hash", "--worker-urls", bad.URL, good.URL, "--retry-initial-backoff-ms", "1")
			waitForHealthy(t, srv, 2)
			// Find a session the ring gives to the bad worker.
			sid := ""
			snap := srv.pool.load()
			for i := 0; sid == ""; i++ {
				s := "session-" + strconv.Itoa(i)
				if k, _ := srv.policy.Pick(&policy.Request{Key: []byte(s)}, snap.regularEPs); snap.regular[k].id == bad.URL {
					sid = s
				}
			}
			before := len(bad.received())
			resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, map[string]string{"X-Session-ID": sid})
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, b, tc.wantCode)
			}
			if n := len(bad.received()) - before; n != tc.wantTries {
				t.Fatalf("failing worker saw %d attempts, want %d", n, tc.wantTries)
			}
		})
	}
	t.Run("dial error is retried elsewhere", func(t *testing.T) {
		good := newFakeWorker(t, "good")
		dead := newFakeWorker(t, "dead")
		srv := startRouter(t, "--policy", "round_robin", "--worker-urls", dead.URL, good.URL, "--retry-initial-backoff-ms", "1")
		waitForHealthy(t, srv, 2)
		dead.Close() // healthy in the router's eyes until its next check fails
		for i := 0; i < 4; i++ {
			if resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil); resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
			}
		}
	})
}

// Consecutive 5xx open a worker's circuit: it leaves the rotation; after the timeout a
// probe that succeeds closes it again. 4xx never count.
func TestCircuitBreaker(t *testing.T) {
	flaky, steady := newFakeWorker(t, "flaky"), newFakeWorker(t, "steady")
	var failing atomic.Bool
	var status atomic.Int32
	failing.Store(true)
	status.Store(400)
	flaky.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if failing.Load() {
			w.WriteHeader(int(status.Load()))
			return
		}
		w.Write([]byte(`{}`))
	})
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", flaky.URL, steady.URL,
		"--cb-failure-threshold", "3", "--cb-success-threshold", "1", "--cb-timeout-duration-secs", "0.5", "--disable-retries")
	waitForHealthy(t, srv, 2)
	fb := srv.pool.load().byID[flaky.URL]
	for i := 0; i < 10; i++ {
		post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
	}
	if fb.breaker.State() != 0 {
		t.Fatal("4xx answers opened the circuit")
	}
	status.Store(500)
	for i := 0; i < 10; i++ {
		post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
	}
	if fb.breaker.State() != 1 {
		t.Fatalf("circuit state %v after 5 failures, want open", fb.breaker.State())
	}
	before := len(flaky.received())
	for i := 0; i < 6; i++ {
		if resp, _ := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil); resp.StatusCode != 200 {
			t.Fatalf("open circuit still picked: %d", resp.StatusCode)
		}
	}
	if len(flaky.received()) != before {
		t.Fatal("an open circuit received requests")
	}
	failing.Store(false)
	waitFor(t, "the circuit to close after a successful probe", func() bool {
		post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
		return fb.breaker.State() == 0
	})
}

// Nothing from a request's headers or body reaches the logs at info level.
func TestNoRequestContentInInfoLogs(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	w := newFakeWorker(t, "w0")
	srv, err := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1", "--policy", "round_robin",
		"--worker-urls", w.URL, "http://127.0.0.1:1", "--health-check-interval-secs", "0.1"}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context())
	waitForHealthy(t, srv, 1)
	secret := "sk-SECRET-TOKEN-4242"
	for _, path := range []string{"/v1/chat/completions", "/nope", "/add_worker?url=" + secret} {
		post(t, "http://"+srv.Addr()+path, `{"messages":[{"role":"user","content":"`+secret+`"}]}`,
			map[string]string{"Authorization": "Bearer " + secret, "X-Session-ID": secret})
	}
	post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":`+secret, nil)
	for _, e := range logs.All() {
		var buf bytes.Buffer
		buf.WriteString(e.Message)
		for _, f := range e.Context {
			buf.WriteString(f.String + " ")
			if f.Interface != nil {
				if s, ok := f.Interface.(interface{ Error() string }); ok {
					buf.WriteString(s.Error())
				}
			}
		}
		if strings.Contains(buf.String(), secret) {
			t.Fatalf("info log carries request content: %q", buf.String())
		}
	}
}

// Flags vllm-router has and Switchyard does not implement are accepted, and each gets
// exactly one warning at start.
func TestUnsupportedFlagsWarnOnce(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	srv, err := StartArgs([]string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1",
		"--worker-urls", "http://127.0.0.1:1", "--mini-lb", "--service-discovery", "--selector", "app=vllm", "--mini-lb"}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context())
	got := map[string]int{}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.Key == "flag" {
				got[f.String]++
			}
		}
	}
	want := map[string]int{"--mini-lb": 1, "--service-discovery": 1, "--selector": 1}
	if len(got) != len(want) {
		t.Fatalf("warnings %v, want one each for %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("warnings %v, want one each for %v", got, want)
		}
	}
}
