package router

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeWorker is a real HTTP server standing in for vLLM, recording what it received.
type fakeWorker struct {
	*httptest.Server
	name string
	mu   sync.Mutex
	reqs []recorded
	// handle, when set, answers instead of the default JSON echo.
	handle func(w http.ResponseWriter, r *http.Request, body []byte)
}

type recorded struct {
	method, path string
	header       http.Header
	body         []byte
}

func newFakeWorker(t *testing.T, name string) *fakeWorker {
	t.Helper()
	fw := &fakeWorker{name: name}
	fw.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/health" {
			w.WriteHeader(200)
			return
		}
		fw.mu.Lock()
		fw.reqs = append(fw.reqs, recorded{r.Method, r.URL.RequestURI(), r.Header.Clone(), body})
		h := fw.handle
		fw.mu.Unlock()
		w.Header().Set("X-Switchyard-Worker", name)
		if h != nil {
			h(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"worker": name, "path": r.URL.Path, "object": "list", "data": []any{map[string]any{"id": "m"}}})
	}))
	t.Cleanup(fw.Close)
	return fw
}

func (fw *fakeWorker) setHandler(h func(w http.ResponseWriter, r *http.Request, body []byte)) {
	fw.mu.Lock()
	fw.handle = h
	fw.mu.Unlock()
}

func (fw *fakeWorker) received() []recorded {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return append([]recorded(nil), fw.reqs...)
}

// startRouter starts a router on free ports with fast health checks and waits until it
// is ready (or fails the test).
func startRouter(t *testing.T, args ...string) *Server {
	t.Helper()
	base := []string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0", "--health-check-interval-secs", "0.2"}
	srv, err := StartArgs(append(base, args...), zap.NewNop())
	if err != nil {
		t.Fatalf("starting router: %v", err)
	}
	t.Cleanup(func() {
		// A connection the relay handed back to fasthttp after a stream counts as new,
		// and fasthttp's Shutdown gives new connections 5 s before closing them: close
		// the test client's own first.
		http.DefaultClient.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

// waitReady polls /readiness until it answers 200.
func waitReady(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + srv.Addr() + "/readiness")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatal("router never became ready")
}

func post(t *testing.T, url, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}
