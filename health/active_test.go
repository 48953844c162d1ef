package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeWorker is a vLLM stand-in on a real 127.0.0.1 socket whose /health answers follow
// a script: the n-th check (1-based) gets script[n-1], later ones the last entry.
type fakeWorker struct {
	srv     *httptest.Server
	checks  atomic.Int64
	hang    atomic.Bool // when set, checks block until the client gives up
	release chan struct{}

	mu     sync.Mutex
	script []int
	auth   []string // Authorization header of each check
	paths  []string
}

func newFakeWorker(t *testing.T, script ...int) *fakeWorker {
	t.Helper()
	if len(script) == 0 {
		script = []int{http.StatusOK}
	}
	w := &fakeWorker{script: script, release: make(chan struct{})}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.srv.Close)
	t.Cleanup(func() { close(w.release) }) // runs first: unblocks hung handlers
	return w
}

func (w *fakeWorker) serve(rw http.ResponseWriter, r *http.Request) {
	n := w.checks.Add(1)
	w.mu.Lock()
	w.auth = append(w.auth, r.Header.Get("Authorization"))
	w.paths = append(w.paths, r.URL.Path)
	status := w.script[min(int(n), len(w.script))-1]
	w.mu.Unlock()
	if w.hang.Load() {
		select {
		case <-r.Context().Done():
		case <-w.release:
		}
		return
	}
	rw.WriteHeader(status)
	fmt.Fprintf(rw, `{"check":%d}`, n)
}

func (w *fakeWorker) URL() string { return w.srv.URL }

func (w *fakeWorker) authHeaders() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.auth)
}

// setEvent is one SetHealthy call, with the worker's check count at that moment.
type setEvent struct {
	id      string
	healthy bool
	checks  int64
}

// fakeSetter records SetHealthy calls. countOf maps an id to the counter snapshot stored
// with each event (the check that caused it, since checks of one URL are sequential).
type fakeSetter struct {
	mu      sync.Mutex
	state   map[string]bool
	events  []setEvent
	countOf func(id string) int64
	panicOn func(id string, healthy bool) bool
}

func newFakeSetter() *fakeSetter { return &fakeSetter{state: map[string]bool{}} }

func (s *fakeSetter) SetHealthy(id string, healthy bool) {
	var n int64
	if s.countOf != nil {
		n = s.countOf(id)
	}
	s.mu.Lock()
	s.state[id] = healthy
	s.events = append(s.events, setEvent{id, healthy, n})
	s.mu.Unlock()
	if s.panicOn != nil && s.panicOn(id, healthy) {
		panic("setter exploded")
	}
}

func (s *fakeSetter) healthy(id string) (healthy, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	healthy, known = s.state[id]
	return healthy, known
}

func (s *fakeSetter) eventsFor(id string) []setEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []setEvent
	for _, e := range s.events {
		if e.id == id {
			out = append(out, e)
		}
	}
	return out
}

// eventually polls cond every millisecond until it holds or within elapses.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %s", within, what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// runChecker starts c.Run and returns a stop function that cancels it and waits.
func runChecker(t *testing.T, c *Checker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func newTestChecker(t *testing.T, cfg Config, s StatusSetter) *Checker {
	t.Helper()
	c, err := NewChecker(cfg, s, zap.NewNop())
	if err != nil {
		t.Fatalf("NewChecker: %v", err)
	}
	return c
}

const pollLimit = 5 * time.Second // generous bound for conditions that take milliseconds

// The threshold rule, end to end over a socket: workers start unhealthy, the first pass
// marks healthy at once, then FailureThreshold consecutive failures / SuccessThreshold
// consecutive passes are needed, and an interrupted streak starts over.
func TestCheckerThresholds(t *testing.T) {
	const bad, ok = http.StatusServiceUnavailable, http.StatusOK
	w := newFakeWorker(t,
		bad, bad, bad, // 1-3: never passed → stays unhealthy
		ok,           // 4: first pass → healthy at once
		bad, bad, ok, // 5-7: streak of 2 broken
		bad, bad, bad, // 8-10: 3 consecutive → unhealthy at 10
		ok, bad, // 11-12: streak of 1 broken
		ok, ok) // 13-14: 2 consecutive → healthy at 14
	s := newFakeSetter()
	s.countOf = func(string) int64 { return w.checks.Load() }
	c := newTestChecker(t, Config{Interval: time.Millisecond, Timeout: time.Second}, s)
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	if h, known := s.healthy("w"); !known || h {
		t.Fatalf("before Run: healthy=%v known=%v; want known and unhealthy", h, known)
	}
	stop := runChecker(t, c)
	eventually(t, pollLimit, "16 checks", func() bool { return w.checks.Load() >= 16 })
	stop()

	got := s.eventsFor("w")
	want := []setEvent{{"w", false, 0}, {"w", true, 4}, {"w", false, 10}, {"w", true, 14}}
	if !slices.Equal(got, want) {
		t.Fatalf("SetHealthy calls = %+v\nwant %+v", got, want)
	}
}

// The verdict state machine alone, with non-default thresholds.
func TestVerdictObserve(t *testing.T) {
	tests := []struct {
		name        string
		succ, fail  int
		results     string // p = pass, f = fail
		wantChanges string // '^' became healthy, 'v' became unhealthy, '.' no change
		wantHealthy bool
	}{
		{"never passes", 2, 3, "ffff", "....", false},
		{"first pass is enough", 5, 3, "fp", ".^", true},
		{"fail threshold 1", 2, 1, "pf", "^v", false},
		{"recovery needs success threshold", 3, 1, "pfppp", "^v..^", true},
		{"recovery streak broken", 2, 1, "pfpfpp", "^v...^", true},
		{"failures broken by pass", 2, 2, "pfpfpff", "^.....v", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v verdict
			var changes []byte
			for _, r := range tc.results {
				ch := v.observe(r == 'p', tc.succ, tc.fail)
				switch {
				case !ch:
					changes = append(changes, '.')
				case v.healthy:
					changes = append(changes, '^')
				default:
					changes = append(changes, 'v')
				}
			}
			if string(changes) != tc.wantChanges || v.healthy != tc.wantHealthy {
				t.Fatalf("changes %q healthy %v; want %q %v", changes, v.healthy, tc.wantChanges, tc.wantHealthy)
			}
		})
	}
}

// vllm-router issue #159: the API key must reach health checks, or a worker started with
// --api-key never becomes healthy.
func TestCheckerSendsAPIKey(t *testing.T) {
	const key = "sekrit"
	authed := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			rw.WriteHeader(http.StatusUnauthorized)
			return
		}
		rw.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(authed.Close)
	for _, tc := range []struct {
		name        string
		key         string
		wantHealthy bool
	}{
		{"with key", key, true},
		{"without key", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var checks atomic.Int64
			s := newFakeSetter()
			c := newTestChecker(t, Config{Interval: time.Millisecond, Timeout: time.Second, APIKey: tc.key,
				OnCheck: func(string, error, time.Duration) { checks.Add(1) }}, s)
			if err := c.SetTargets([]Target{{URL: authed.URL, IDs: []string{"a"}}}); err != nil {
				t.Fatal(err)
			}
			runChecker(t, c)
			eventually(t, pollLimit, "3 checks", func() bool { return checks.Load() >= 3 })
			if h, _ := s.healthy("a"); h != tc.wantHealthy {
				t.Fatalf("healthy = %v; want %v", h, tc.wantHealthy)
			}
		})
	}

	w := newFakeWorker(t)
	c := newTestChecker(t, Config{Interval: time.Hour, Endpoint: "/ready", APIKey: key}, newFakeSetter())
	if err := c.SetTargets([]Target{{URL: w.URL() + "/", IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	eventually(t, pollLimit, "one check", func() bool { return w.checks.Load() >= 1 })
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.auth[0] != "Bearer "+key || w.paths[0] != "/ready" {
		t.Fatalf("check sent Authorization %q to %q; want %q to /ready", w.auth[0], w.paths[0], "Bearer "+key)
	}
}

// Checks run concurrently: hung workers (each holding its check for the whole Timeout)
// must not delay the others. Sequential checking, as vllm-router does, would need
// len(hung)×Timeout before every worker has been asked; we require it within one Timeout.
func TestCheckerHungWorkerDoesNotDelayOthers(t *testing.T) {
	const timeout = 2 * time.Second
	var hung []*fakeWorker
	targets := []Target{}
	for i := range 3 {
		w := newFakeWorker(t)
		w.hang.Store(true)
		hung = append(hung, w)
		targets = append(targets, Target{URL: w.URL(), IDs: []string{fmt.Sprintf("hung%d", i)}})
	}
	fast := newFakeWorker(t)
	targets = append(targets, Target{URL: fast.URL(), IDs: []string{"fast"}})
	s := newFakeSetter()
	c := newTestChecker(t, Config{Interval: time.Hour, Timeout: timeout}, s)
	if err := c.SetTargets(targets); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	stop := runChecker(t, c)
	eventually(t, timeout, "fast worker healthy and every hung worker asked", func() bool {
		h, _ := s.healthy("fast")
		for _, w := range hung {
			if w.checks.Load() == 0 {
				return false
			}
		}
		return h
	})
	if elapsed := time.Since(start); elapsed >= timeout {
		t.Fatalf("took %v; want < Timeout %v", elapsed, timeout)
	}
	stop()
	for i := range hung {
		if h, _ := s.healthy(fmt.Sprintf("hung%d", i)); h {
			t.Fatalf("hung%d healthy; want unhealthy", i)
		}
	}
}

// One check per base URL feeds every DP rank (vllm-router checked each rank separately).
func TestCheckerOneCheckFeedsAllRanks(t *testing.T) {
	w := newFakeWorker(t)
	ids := []string{w.URL() + "@0", w.URL() + "@1", w.URL() + "@2", w.URL() + "@3"}
	s := newFakeSetter()
	s.countOf = func(string) int64 { return w.checks.Load() }
	c := newTestChecker(t, Config{Interval: time.Hour}, s)
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: ids}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	eventually(t, pollLimit, "all ranks healthy", func() bool {
		for _, id := range ids {
			if h, _ := s.healthy(id); !h {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		ev := s.eventsFor(id)
		if len(ev) != 2 || ev[1].checks != 1 {
			t.Fatalf("%s: events %+v; want [unhealthy, healthy after check 1]", id, ev)
		}
	}
	if n := w.checks.Load(); n != 1 {
		t.Fatalf("worker got %d checks; want 1 for 4 ranks", n)
	}
}

func TestCheckerSetTargetsAddRemove(t *testing.T) {
	a, b := newFakeWorker(t), newFakeWorker(t)
	const interval = 5 * time.Millisecond
	s := newFakeSetter()
	c := newTestChecker(t, Config{Interval: interval, Timeout: time.Second}, s)
	if err := c.SetTargets([]Target{{URL: a.URL(), IDs: []string{"a"}}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	eventually(t, pollLimit, "a healthy", func() bool { h, _ := s.healthy("a"); return h })

	// Add b (starts unhealthy at once), drop a, and give a's URL a new rank later.
	if err := c.SetTargets([]Target{{URL: b.URL(), IDs: []string{"b"}}}); err != nil {
		t.Fatal(err)
	}
	if ev := s.eventsFor("b"); len(ev) == 0 || ev[0].healthy {
		t.Fatalf("b events right after SetTargets = %+v; want an unhealthy first", ev)
	}
	aChecks, aEvents := a.checks.Load(), len(s.eventsFor("a"))
	bChecks := b.checks.Load()
	eventually(t, pollLimit, "b checked 3 more times", func() bool { return b.checks.Load() >= bChecks+3 })
	// One straggler may reach a's server after SetTargets returned (sent before the
	// cancel, served after); a watcher still running would have sent 3 more.
	if n := a.checks.Load(); n > aChecks+1 {
		t.Fatalf("removed worker a got %d checks after removal (had %d)", n, aChecks)
	}
	if n := len(s.eventsFor("a")); n != aEvents {
		t.Fatalf("removed worker a got SetHealthy calls after removal")
	}

	// A new ID on a known URL gets the URL's current verdict at once.
	if err := c.SetTargets([]Target{{URL: b.URL(), IDs: []string{"b", "b@1"}}}); err != nil {
		t.Fatal(err)
	}
	if h, known := s.healthy("b@1"); !known || !h {
		t.Fatalf("b@1 healthy=%v known=%v right after SetTargets; want b's verdict (healthy)", h, known)
	}
}

func TestCheckerSetTargetsRejectsBadInput(t *testing.T) {
	good := Target{URL: "http://127.0.0.1:1", IDs: []string{"x"}}
	tests := []struct {
		name string
		ts   []Target
	}{
		{"no scheme", []Target{{URL: "127.0.0.1:8000", IDs: []string{"a"}}}},
		{"bad scheme", []Target{{URL: "ftp://h:1", IDs: []string{"a"}}}},
		{"no host", []Target{{URL: "http://", IDs: []string{"a"}}}},
		{"query", []Target{{URL: "http://h:1?x=1", IDs: []string{"a"}}}},
		{"unparsable", []Target{{URL: "http://[::1", IDs: []string{"a"}}}},
		{"no ids", []Target{{URL: "http://h:1"}}},
		{"empty id", []Target{{URL: "http://h:1", IDs: []string{""}}}},
		{"duplicate url", []Target{good, {URL: "http://127.0.0.1:1/", IDs: []string{"y"}}}},
		{"id fed twice", []Target{good, {URL: "http://h:2", IDs: []string{"x"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newFakeSetter()
			c := newTestChecker(t, Config{}, s)
			if err := c.SetTargets(tc.ts); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("SetTargets = %v; want ErrInvalidConfig", err)
			}
			if len(s.events) != 0 || len(c.targets) != 0 {
				t.Fatalf("rejected SetTargets changed state: events %v targets %d", s.events, len(c.targets))
			}
		})
	}
}

// A worker that has never passed (still loading) is polled every StartupInterval, then
// every Interval once it has passed.
func TestCheckerStartupInterval(t *testing.T) {
	w := newFakeWorker(t, 503, 503, 503, 200)
	s := newFakeSetter()
	c := newTestChecker(t, Config{Interval: time.Hour, StartupInterval: time.Millisecond}, s)
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	eventually(t, pollLimit, "healthy after 4 quick checks", func() bool { h, _ := s.healthy("w"); return h })
	// Interval (1h) now applies: 10 more startup intervals bring no check.
	for range 10 {
		time.Sleep(time.Millisecond) // waiting out intervals that must pass without a check
	}
	if n := w.checks.Load(); n != 4 {
		t.Fatalf("checks = %d; want 4 (the 1h Interval applies once healthy)", n)
	}
}

func TestCheckerCheckNow(t *testing.T) {
	w := newFakeWorker(t)
	c := newTestChecker(t, Config{Interval: time.Hour}, newFakeSetter())
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	eventually(t, pollLimit, "first check", func() bool { return w.checks.Load() == 1 })
	c.CheckNow(w.URL() + "/")
	c.CheckNow("http://127.0.0.1:1") // unknown: ignored
	c.CheckNow("::bad::")            // invalid: ignored
	eventually(t, pollLimit, "second check well before the 1h interval", func() bool { return w.checks.Load() == 2 })
}

// Cancelling Run's context aborts in-flight checks: Run returns long before Timeout.
func TestCheckerRunStopsOnCancel(t *testing.T) {
	const timeout = 30 * time.Second
	w := newFakeWorker(t)
	w.hang.Store(true)
	s := newFakeSetter()
	c := newTestChecker(t, Config{Interval: time.Hour, Timeout: timeout}, s)
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	eventually(t, pollLimit, "check in flight", func() bool { return w.checks.Load() == 1 })

	c.Run(ctx) // a second Run while running returns at once
	cancel()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("Run did not return within Timeout %v of cancel", timeout)
	}
	// The aborted check is not a verdict: only the initial unhealthy push happened.
	if ev := s.eventsFor("w"); len(ev) != 1 || ev[0].healthy {
		t.Fatalf("events %+v; want only the initial unhealthy", ev)
	}
}

// A panicking setter is logged and the watcher keeps checking.
func TestCheckerRecoversFromPanic(t *testing.T) {
	w := newFakeWorker(t, http.StatusOK, http.StatusServiceUnavailable)
	s := newFakeSetter()
	s.panicOn = func(_ string, healthy bool) bool { return healthy }
	core, logs := observer.New(zapcore.ErrorLevel)
	c, err := NewChecker(Config{Interval: time.Millisecond, Timeout: time.Second, FailureThreshold: 1}, s, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	runChecker(t, c)
	// Check 1 passes and panics in SetHealthy; check 2 fails and must still be applied.
	eventually(t, pollLimit, "unhealthy after the panic", func() bool {
		ev := s.eventsFor("w")
		return len(ev) == 3 && !ev[2].healthy
	})
	if n := logs.FilterMessage("health: check panicked").Len(); n != 1 {
		t.Fatalf("logged %d panics; want 1", n)
	}
}

func TestCheckerOnCheck(t *testing.T) {
	w := newFakeWorker(t, http.StatusOK, http.StatusInternalServerError)
	type call struct {
		url string
		ok  bool
	}
	var mu sync.Mutex
	var calls []call
	c := newTestChecker(t, Config{Interval: time.Millisecond, Timeout: time.Second,
		OnCheck: func(url string, err error, took time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if took <= 0 {
				t.Errorf("took = %v; want > 0", took)
			}
			if err != nil && !errors.Is(err, ErrUnhealthyStatus) {
				t.Errorf("err = %v; want ErrUnhealthyStatus", err)
			}
			calls = append(calls, call{url, err == nil})
		}}, newFakeSetter())
	if err := c.SetTargets([]Target{{URL: w.URL(), IDs: []string{"w"}}}); err != nil {
		t.Fatal(err)
	}
	stop := runChecker(t, c)
	eventually(t, pollLimit, "2 checks", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 2 })
	stop()
	mu.Lock()
	defer mu.Unlock()
	if calls[0] != (call{w.URL(), true}) || calls[1] != (call{w.URL(), false}) {
		t.Fatalf("OnCheck calls = %+v; want pass then fail for %s", calls[:2], w.URL())
	}
}

func TestNewCheckerValidates(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		setter StatusSetter
	}{
		{"endpoint without slash", Config{Endpoint: "health"}, newFakeSetter()},
		{"negative interval", Config{Interval: -time.Second}, newFakeSetter()},
		{"negative timeout", Config{Timeout: -time.Second}, newFakeSetter()},
		{"negative startup interval", Config{StartupInterval: -time.Second}, newFakeSetter()},
		{"negative failure threshold", Config{FailureThreshold: -1}, newFakeSetter()},
		{"negative success threshold", Config{SuccessThreshold: -1}, newFakeSetter()},
		{"nil setter", Config{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewChecker(tc.cfg, tc.setter, nil); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("NewChecker = %v; want ErrInvalidConfig", err)
			}
		})
	}
	got := Config{}.WithDefaults()
	want := Config{Endpoint: "/health", Interval: 60 * time.Second, Timeout: 5 * time.Second,
		FailureThreshold: 3, SuccessThreshold: 2}
	if got.Endpoint != want.Endpoint || got.Interval != want.Interval || got.Timeout != want.Timeout ||
		got.FailureThreshold != want.FailureThreshold || got.SuccessThreshold != want.SuccessThreshold {
		t.Fatalf("defaults = %+v; want vllm-router's %+v", got, want)
	}
}

func TestWaitHealthy(t *testing.T) {
	t.Run("returns once healthy", func(t *testing.T) {
		w := newFakeWorker(t, 503, 503, 200)
		ctx, cancel := context.WithTimeout(context.Background(), pollLimit)
		defer cancel()
		if err := WaitHealthy(ctx, w.URL(), "", "k", time.Millisecond); err != nil {
			t.Fatalf("WaitHealthy = %v", err)
		}
		if n := w.checks.Load(); n != 3 {
			t.Fatalf("checks = %d; want 3", n)
		}
		if got := w.authHeaders(); got[0] != "Bearer k" {
			t.Fatalf("Authorization = %q; want Bearer k", got[0])
		}
	})
	t.Run("deadline while unhealthy", func(t *testing.T) {
		w := newFakeWorker(t, 503)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := WaitHealthy(ctx, w.URL(), "/health", "", time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnhealthyStatus) {
			t.Fatalf("WaitHealthy = %v; want DeadlineExceeded and ErrUnhealthyStatus", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := WaitHealthy(ctx, "http://"+deadAddr(t), "", "", time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("WaitHealthy = %v; want DeadlineExceeded and ECONNREFUSED", err)
		}
	})
	for _, tc := range []struct {
		name, url, endpoint string
		interval            time.Duration
	}{
		{"bad url", "localhost:8000", "", time.Second},
		{"bad endpoint", "http://127.0.0.1:1", "health", time.Second},
		{"zero interval", "http://127.0.0.1:1", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WaitHealthy(context.Background(), tc.url, tc.endpoint, "", tc.interval)
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("WaitHealthy = %v; want ErrInvalidConfig", err)
			}
		})
	}
}

// deadAddr returns a 127.0.0.1 address nothing listens on (bound, then closed), so
// connecting to it fails with ECONNREFUSED.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
