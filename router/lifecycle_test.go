package router

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Every policy serves real traffic over sockets; the session-keyed ones keep a session on
// one worker, and cache_aware keeps a growing conversation where its prefix is.
func TestEveryPolicyOverSockets(t *testing.T) {
	var urls []string
	for i := 0; i < 4; i++ {
		u, _ := startSim(t, fastSim())
		urls = append(urls, u)
	}
	sticky := map[string]bool{"consistent_hash": true, "rendezvous_hash": true, "sticky_least_loaded": true, "cache_aware": true}
	for _, pol := range PolicyNames {
		t.Run(pol, func(t *testing.T) {
			srv := startRouter(t, append([]string{"--policy", pol, "--worker-urls"}, urls...)...)
			waitForHealthy(t, srv, 4)
			used := map[string]bool{}
			for s := 0; s < 8; s++ {
				sid := fmt.Sprintf("%s-session-%d", pol, s)
				convo := fmt.Sprintf(`{"role":"user","content":"session %d: %s"}`, s, strings.Repeat("a long shared task description ", 8))
				var first string
				for turn := 0; turn < 3; turn++ {
					convo += fmt.Sprintf(`,{"role":"assistant","content":"answer %d"},{"role":"user","content":"tool result %d"}`, turn, turn)
					body := fmt.Sprintf(`{"model":%q,"messages":[%s],"max_tokens":2}`, fastSim().Model, convo)
					resp, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", body, map[string]string{"X-Session-ID": sid})
					if resp.StatusCode != 200 {
						t.Fatalf("status %d %s", resp.StatusCode, b)
					}
					w := resp.Header.Get("X-Switchyard-Worker")
					used[w] = true
					if turn == 0 {
						first = w
					} else if sticky[pol] && w != first {
						t.Fatalf("session %s moved from %s to %s", sid, first, w)
					}
				}
			}
			if pol != "cache_aware" && len(used) < 2 {
				t.Fatalf("8 sessions all on one worker")
			}
		})
	}
}

// The in-flight cap is real: over it, requests wait in the queue, and a full queue or a
// wait past --queue-timeout-secs gets 429 with Retry-After.
func TestConcurrencyCapAndQueue(t *testing.T) {
	w := newFakeWorker(t, "w0")
	release := make(chan struct{})
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
		<-release
		rw.Write([]byte(`{}`))
	})
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w.URL, "--max-concurrent-requests", "2", "--queue-size", "1", "--queue-timeout-secs", "0.3")
	waitReady(t, srv)
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for i := 0; i < 3; i++ { // two take the slots, one waits in the queue
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil)
			codes <- resp.StatusCode
		}()
	}
	waitFor(t, "2 in flight and 1 queued", func() bool { return srv.limiter.inFlight() == 2 && srv.limiter.waiting.Load() == 1 })
	resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{}`, nil) // queue full: at once
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("queue full: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	got := map[int]int{}
	got[<-codes]++ // the queued one times out after 0.3 s while the slots stay taken
	close(release)
	wg.Wait()
	for i := 0; i < 2; i++ {
		got[<-codes]++
	}
	if got[429] != 1 || got[200] != 2 {
		t.Fatalf("codes %v: want two 200 and one 429 (queue timeout)", got)
	}
}

// SIGTERM: the router stops accepting, lets a stream in flight finish, then exits 0.
func TestSIGTERMDrainsStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "vllm-router")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/vllm-router").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	w := newFakeWorker(t, "w0")
	w.setHandler(sseHandler(6, 150*time.Millisecond))
	port := freePort(t)
	cmd := exec.Command(bin, "--host", "127.0.0.1", "--port", port, "--prometheus-port", "-1", "--policy", "round_robin",
		"--worker-urls", w.URL, "--health-check-interval-secs", "0.2", "--drain-timeout-secs", "10")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := "http://127.0.0.1:" + port
	waitFor(t, "router ready", func() bool {
		resp, err := http.Get(base + "/readiness")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil { // the stream is running
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") || strings.Contains(string(rest), "error") {
		t.Fatalf("stream cut by shutdown: %v %q", err, rest)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("router did not exit after draining")
	}
	if _, err := http.Get(base + "/liveness"); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	srv := startRouter(t, "--worker-urls", "http://127.0.0.1:1", "--policy", "round_robin")
	addr := srv.Addr()
	srv.Shutdown(context.Background())
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

// Changing the worker set through /remove_worker and /add_worker drops no request in
// flight or arriving meanwhile.
func TestWorkerSetChangesDropNothing(t *testing.T) {
	w1, _ := startSim(t, fastSim())
	w2, _ := startSim(t, fastSim())
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w1, w2)
	waitForHealthy(t, srv, 2)
	base := "http://" + srv.Addr()
	var failures atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":4,"stream":%v}`, fastSim().Model, i%2 == 0)
				req, _ := http.NewRequest("POST", base+"/v1/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					failures.Add(1)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (i%2 == 0 && !strings.HasSuffix(string(b), "data: [DONE]\n\n")) {
					failures.Add(1)
				}
			}
		}(c)
	}
	for round := 0; round < 3; round++ {
		if resp, b := post(t, base+"/remove_worker?url="+w2, "", nil); resp.StatusCode != 200 {
			t.Fatalf("remove: %d %s", resp.StatusCode, b)
		}
		if resp, b := post(t, base+"/add_worker?url="+w2, "", nil); resp.StatusCode != 200 {
			t.Fatalf("add: %d %s", resp.StatusCode, b)
		}
	}
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d requests failed while the worker set changed", n)
	}
}
