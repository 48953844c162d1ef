package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeFleet is one HTTP server standing in for a router and its workers: it names a worker
// per request (round robin or by session hash), answers like vLLM (JSON or SSE), and records
// every conversation it saw so tests can check the prompts.
type fakeFleet struct {
	workers   int
	sticky    bool            // hash X-Session-ID to a worker instead of round robin
	failEvery int             // answer 503 to every n-th request (0: never)
	onRequest func(n int64)   // called with the request number, before answering
	next      atomic.Int64    // request counter
	cache     [2]atomic.Int64 // /metrics counters: queries, hits
	finished  sync.Map        // session id -> true, from /finish_session
	mu        sync.Mutex
	seen      map[string][]fakeTurn // session id -> turns in arrival order
}

type fakeTurn struct {
	messages []chatMessage
	worker   string
	stream   bool
}

func (f *fakeFleet) start(t *testing.T) *httptest.Server {
	t.Helper()
	f.seen = map[string][]fakeTurn{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv
}

func (f *fakeFleet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/metrics":
		fmt.Fprintf(w, "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} %d\n", f.cache[0].Load())
		fmt.Fprintf(w, "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} %d\n", f.cache[1].Load())
		return
	case "/finish_session":
		f.finished.Store(r.URL.Query().Get("session_id"), true)
		return
	case "/v1/chat/completions":
	default:
		http.NotFound(w, r)
		return
	}
	n := f.next.Add(1)
	if f.onRequest != nil {
		f.onRequest(n)
	}
	var body chatBody
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sid := r.Header.Get("X-Session-ID")
	worker := fmt.Sprintf("w%d", n%int64(f.workers))
	if f.sticky {
		h := fnv.New32a()
		h.Write([]byte(sid))
		worker = fmt.Sprintf("w%d", h.Sum32()%uint32(f.workers))
	}
	f.mu.Lock()
	f.seen[sid] = append(f.seen[sid], fakeTurn{messages: body.Messages, worker: worker, stream: body.Stream})
	f.mu.Unlock()
	f.cache[0].Add(100)
	f.cache[1].Add(60)

	w.Header().Set("X-Switchyard-Worker", worker)
	if f.failEvery > 0 && n%int64(f.failEvery) == 0 {
		http.Error(w, `{"error":{"message":"overloaded"}}`, http.StatusServiceUnavailable)
		return
	}
	answer := fmt.Sprintf("answer %s %d", sid, len(body.Messages))
	if !body.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"choices":[{"index":0,"message":{"role":"assistant","content":%q}}]}`, answer)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n")
	fl.Flush()
	for _, word := range strings.SplitAfter(answer, " ") {
		fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":%q}}]}\n\n", word)
		fl.Flush()
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

func TestRunSessionsGrowAndStick(t *testing.T) {
	tests := []struct {
		name       string
		sessions   int
		sticky     bool
		stream     bool
		wantSplits bool
	}{
		// One session at a time, so consecutive turns get consecutive round-robin workers.
		{name: "round robin, JSON: every multi-turn session splits", sessions: 1, wantSplits: true},
		{name: "session hash, SSE: no session splits", sessions: 4, sticky: true, stream: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fleet := &fakeFleet{workers: 3, sticky: tc.sticky}
			srv := fleet.start(t)
			const turns = 3
			w := Workload{
				URL: srv.URL, Sessions: tc.sessions, Turns: turns, MaxRequests: 24, Duration: 20 * time.Second,
				SystemPromptBytes: 300, TurnBytes: 50, Stream: tc.stream, FinishSession: true, Seed: 7,
				MetricsURLs: []string{srv.URL}, ExpectWorkers: []string{"w0", "w1", "w2", "w9"},
			}
			res, err := Run(context.Background(), w, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 24 || res.Errors != 0 || fleet.next.Load() != 24 {
				t.Fatalf("requests = %d (errors %d), server saw %d; want 24, 0, 24", res.Requests, res.Errors, fleet.next.Load())
			}
			if len(res.Latency) != 24 {
				t.Errorf("latency samples = %d; want 24", len(res.Latency))
			}
			if wantTTFT := map[bool]int{true: 24, false: 0}[tc.stream]; len(res.TTFT) != wantTTFT {
				t.Errorf("TTFT samples = %d; want %d", len(res.TTFT), wantTTFT)
			}
			total := 0
			for _, n := range res.PerWorker {
				total += n
			}
			if _, ok := res.PerWorker["w9"]; !ok || total != 24 {
				t.Errorf("per-worker = %v; want 24 in total and the idle expected worker w9 listed", res.PerWorker)
			}
			if rate, ok := res.Cache.HitRate(); !res.CacheScraped || !ok || rate != 0.6 || res.Cache.Queries != 2400 {
				t.Errorf("cache = %+v (scraped %v, err %v); want 2400 queries at 60%%", res.Cache, res.CacheScraped, res.CacheError)
			}
			if tc.wantSplits && res.SplitSessions != res.Sessions || !tc.wantSplits && res.SplitSessions != 0 {
				t.Errorf("split sessions = %d of %d; want all: %v", res.SplitSessions, res.Sessions, tc.wantSplits)
			}

			fleet.mu.Lock()
			defer fleet.mu.Unlock()
			// With several sessions in flight the request budget may cut some sessions short;
			// the 24 requests still make at least 8 sessions, each of at most 3 turns.
			if len(fleet.seen) != res.Sessions || res.Sessions < 8 {
				t.Fatalf("server saw %d sessions, result says %d; want the same, at least 8", len(fleet.seen), res.Sessions)
			}
			var systemPrompt string
			finished := 0
			for sid, seen := range fleet.seen {
				if len(seen) > turns {
					t.Fatalf("session %s: %d turns; want at most %d", sid, len(seen), turns)
				}
				if len(seen) == turns {
					finished++
				}
				if _, ok := fleet.finished.Load(sid); !ok {
					t.Errorf("session %s: no /finish_session", sid)
				}
				for i, turn := range seen {
					if got, want := len(turn.messages), 2+2*i; got != want {
						t.Fatalf("session %s turn %d: %d messages; want %d", sid, i, got, want)
					}
					if turn.stream != tc.stream {
						t.Errorf("session %s turn %d: stream = %v", sid, i, turn.stream)
					}
					if i == 0 {
						continue
					}
					prev := seen[i-1].messages
					if !equalMessages(turn.messages[:len(prev)], prev) {
						t.Fatalf("session %s turn %d does not extend turn %d's prompt", sid, i, i-1)
					}
					// The assistant message is the answer the server gave to the previous turn.
					answer := turn.messages[len(prev)]
					if want := fmt.Sprintf("answer %s %d", sid, len(prev)); answer.Role != "assistant" || answer.Content != want {
						t.Fatalf("session %s turn %d: appended %+v; want assistant %q", sid, i, answer, want)
					}
					if tool := turn.messages[len(prev)+1]; tool.Role != "user" || len(tool.Content) != len("Tool result:\n")+50 {
						t.Fatalf("session %s turn %d: tool result %+v", sid, i, tool)
					}
				}
				sys := seen[0].messages[0]
				if sys.Role != "system" || len(sys.Content) != 300 {
					t.Fatalf("system message %+v; want 300 bytes", sys)
				}
				if systemPrompt != "" && sys.Content != systemPrompt {
					t.Errorf("sessions got different system prompts")
				}
				systemPrompt = sys.Content
				if task := seen[0].messages[1].Content; !strings.Contains(task, sid) {
					t.Errorf("task %q does not name its session %s", task[:40], sid)
				}
			}
			if res.FinishedSessions != finished {
				t.Errorf("finished sessions = %d; server saw %d sessions run all turns", res.FinishedSessions, finished)
			}
		})
	}
}

func equalMessages(a, b []chatMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRunCountsErrorsByStatus(t *testing.T) {
	fleet := &fakeFleet{workers: 2, failEvery: 4}
	srv := fleet.start(t)
	w := Workload{URL: srv.URL, Sessions: 1, Turns: 100, MaxRequests: 12, Seed: 1, errorPause: time.Millisecond}
	res, err := Run(context.Background(), w, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Requests 4, 8 and 12 fail; each failure ends its session, so the next request is turn 1 again.
	if res.Requests != 9 || res.Errors != 3 || res.ErrorsByKind["HTTP 503"] != 3 {
		t.Fatalf("requests %d, errors %d %v; want 9, 3 {HTTP 503: 3}", res.Requests, res.Errors, res.ErrorsByKind)
	}
	if res.Sessions != 3 || res.FinishedSessions != 0 {
		t.Fatalf("sessions %d (finished %d); want 3 (0)", res.Sessions, res.FinishedSessions)
	}
}

func TestRunErrorKinds(t *testing.T) {
	tests := []struct {
		name     string
		stream   bool
		handler  http.HandlerFunc
		wantKind string
	}{
		{"status", false, func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "busy", http.StatusTooManyRequests)
		}, "HTTP 429"},
		{"request timeout", false, func(w http.ResponseWriter, r *http.Request) {
			// Answers only when the client gives up. The body must be read first: the server
			// notices a closed connection only once the request body is consumed.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
		}, "timeout"},
		{"stream without DONE", true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
		}, "truncated stream"},
		{"error event in stream", true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"error\":{\"message\":\"engine died\"}}\n\n")
		}, "stream error"},
		{"body not JSON", false, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "<html>")
		}, "bad body"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			w := Workload{URL: srv.URL, Sessions: 1, MaxRequests: 2, Stream: tc.stream, Seed: 1,
				RequestTimeout: 100 * time.Millisecond, errorPause: time.Millisecond}
			res, err := Run(context.Background(), w, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 0 || res.Errors != 2 || res.ErrorsByKind[tc.wantKind] != 2 {
				t.Fatalf("requests %d, errors %v; want 2 %q", res.Requests, res.ErrorsByKind, tc.wantKind)
			}
		})
	}
}

func TestRunTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	w := Workload{URL: url, Sessions: 2, MaxRequests: 4, Seed: 1, errorPause: time.Millisecond}
	res, err := Run(context.Background(), w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors != 4 || res.ErrorsByKind["transport"] != 4 {
		t.Fatalf("requests %d, errors %v; want 0 and 4 transport errors", res.Requests, res.ErrorsByKind)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet := &fakeFleet{workers: 2}
	fleet.onRequest = func(n int64) {
		if n == 20 {
			cancel()
		}
	}
	srv := fleet.start(t)
	start := time.Now()
	res, err := Run(ctx, Workload{URL: srv.URL, Sessions: 8, Duration: time.Minute, Seed: 1}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("Run took %v after cancel", elapsed)
	}
	// Requests cut by the cancel are neither successes nor errors; some that the server had
	// already answered may still count.
	if received := fleet.next.Load(); res.Errors != 0 || res.Requests < 1 || int64(res.Requests) > received {
		t.Fatalf("requests %d, errors %v; want 1..%d and none", res.Requests, res.ErrorsByKind, received)
	}
}

func TestRunProgressLines(t *testing.T) {
	fleet := &fakeFleet{workers: 2}
	srv := fleet.start(t)
	var out syncBuffer
	w := Workload{URL: srv.URL, Sessions: 2, Duration: 300 * time.Millisecond, Seed: 1, progressEvery: 20 * time.Millisecond}
	res, err := Run(context.Background(), w, &out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 3 || strings.Contains(out.String(), "\r") {
		t.Fatalf("progress to a non-terminal: want plain lines, got %q", out.String())
	}
	last := lines[len(lines)-1]
	if !strings.Contains(last, "requests") || !strings.Contains(last, "req/s") || !strings.Contains(last, "0 errors") {
		t.Fatalf("progress line %q lacks requests, req/s, errors", last)
	}
	if res.Requests == 0 {
		t.Fatal("no requests in 300ms")
	}
}

func TestWorkloadValidation(t *testing.T) {
	tests := []struct {
		name string
		w    Workload
	}{
		{"no URL", Workload{}},
		{"not http", Workload{URL: "ftp://x"}},
		{"no host", Workload{URL: "http://"}},
		{"negative sessions", Workload{URL: "http://127.0.0.1:1", Sessions: -1}},
		{"negative duration", Workload{URL: "http://127.0.0.1:1", Duration: -time.Second}},
		{"relative path", Workload{URL: "http://127.0.0.1:1", Path: "v1/chat/completions"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Run(context.Background(), tc.w, nil); !errors.Is(err, ErrBadWorkload) {
				t.Fatalf("err = %v; want ErrBadWorkload", err)
			}
		})
	}
}

func TestWordsAndCompletionsBody(t *testing.T) {
	r := &runner{w: Workload{Path: "/v1/completions", MaxTokens: 5}}
	s := &session{messages: []chatMessage{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hi"}}}
	body, err := r.requestBody(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(body, []byte(`"prompt":"system: be brief\nuser: hi\n"`)) || bytes.Contains(body, []byte(`"messages"`)) || bytes.Contains(body, []byte(`"model"`)) {
		t.Fatalf("completions body %s", body)
	}
}

// syncBuffer is a bytes.Buffer safe for the progress goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestProgressOnTerminalRewritesOneLine(t *testing.T) {
	var out syncBuffer
	var done, failed atomic.Int64
	done.Store(7)
	failed.Store(2)
	stop := startProgress(&out, true, time.Millisecond, time.Now(), &done, &failed)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "\x1b[K") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling for the first line
	}
	stop()
	got := out.String()
	if !strings.HasPrefix(got, "\r") || !strings.Contains(got, "7 requests") || !strings.Contains(got, "2 errors") ||
		!strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
		t.Fatalf("terminal progress %q: want \\r-rewritten lines and one final newline", got)
	}
}
