package bench

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
)

// testRouter is a stand-in for the real router: a stdlib reverse proxy that understands the
// argv Demo passes (--policy round_robin|consistent_hash, --worker-urls, or P/D flags, where
// it sends everything to the decode workers) and listens on 127.0.0.1:0.
type testRouter struct {
	mu    sync.Mutex
	argvs [][]string // every argv it was started with
	live  atomic.Int64
}

func (tr *testRouter) start(ctx context.Context, argv []string) (string, func(context.Context) error, error) {
	tr.mu.Lock()
	tr.argvs = append(tr.argvs, slices.Clone(argv))
	tr.mu.Unlock()
	policy, workers, err := parseTestArgv(argv)
	if err != nil {
		return "", nil, err
	}
	targets := make([]*url.URL, len(workers))
	for i, w := range workers {
		if targets[i], err = url.Parse(w); err != nil {
			return "", nil, err
		}
	}
	var next atomic.Uint64
	pick := func(r *http.Request) *url.URL {
		if policy == "consistent_hash" {
			h := fnv.New64a()
			h.Write([]byte(r.Header.Get("X-Session-ID")))
			return targets[h.Sum64()%uint64(len(targets))]
		}
		return targets[(next.Add(1)-1)%uint64(len(targets))]
	}
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(pick(pr.In)) },
		FlushInterval: -1,
		Transport:     &http.Transport{MaxIdleConnsPerHost: 256},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.Handle("/", proxy)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: mux}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	tr.live.Add(1)
	stop := func(ctx context.Context) error {
		defer tr.live.Add(-1)
		err := srv.Shutdown(ctx)
		proxy.Transport.(*http.Transport).CloseIdleConnections()
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// parseTestArgv reads the vllm-router flags the test router needs.
func parseTestArgv(argv []string) (policy string, workers []string, err error) {
	pd := slices.Contains(argv, "--vllm-pd-disaggregation")
	for i := 0; i < len(argv); i++ {
		switch argv[i] {
		case "--policy":
			i++
			policy = argv[i]
		case "--worker-urls":
			for i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "--") {
				i++
				workers = append(workers, argv[i])
			}
		case "--decode":
			i++
			workers = append(workers, argv[i])
		}
	}
	if policy != "round_robin" && policy != "consistent_hash" {
		return "", nil, fmt.Errorf("test router: unknown policy %q", policy)
	}
	if len(workers) == 0 {
		return "", nil, fmt.Errorf("test router: no workers in %q (pd %v)", argv, pd)
	}
	return policy, workers, nil
}

// TestDemoShowsAffinityWins runs the demo end to end (simulators, a router, the workload)
// with a shortened run and checks the story it exists to tell: session affinity keeps each
// session on one worker, and so gets more prefix-cache hits.
func TestDemoShowsAffinityWins(t *testing.T) {
	tr := &testRouter{}
	var out syncBuffer
	rows, err := Demo(context.Background(), DemoOptions{
		Sessions:    16,
		Duration:    30 * time.Second, // a cap: the run is bounded by MaxRequests
		Stream:      true,
		Out:         &out,
		StartRouter: tr.start,
		// A run bounded by count, not time, so a slow (race-instrumented, busy) machine still
		// sees whole sessions; short turns keep it quick, and a steep prefill cost puts the
		// cache's effect on TTFT well above timer noise.
		Workload: Workload{Seed: 3, Turns: 6, MaxRequests: 96, SystemPromptBytes: 1024, TurnBytes: 256},
		TuneSim: func(c *sim.Config) {
			c.PrefillPerToken = 500 * time.Microsecond
		},
	})
	if err != nil {
		t.Fatalf("Demo: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
	if len(rows) != 2 || rows[0].Policy != "consistent_hash" || rows[1].Policy != "round_robin" {
		t.Fatalf("rows %v; want consistent_hash then round_robin", rows)
	}
	ch, rr := &rows[0].Result, &rows[1].Result
	for _, r := range []*Result{ch, rr} {
		if r.Requests != 96 || r.Errors != 0 || !r.CacheScraped || len(r.PerWorker) != 4 {
			t.Fatalf("run: %d requests, errors %v, cache scraped %v (%v), workers %v", r.Requests, r.ErrorsByKind, r.CacheScraped, r.CacheError, r.PerWorker)
		}
	}
	if ch.SplitSessions != 0 || rr.SplitSessions == 0 {
		t.Errorf("split sessions: consistent_hash %d, round_robin %d; want 0 and some", ch.SplitSessions, rr.SplitSessions)
	}
	chHit, _ := ch.Cache.HitRate()
	rrHit, _ := rr.Cache.HitRate()
	if chHit < rrHit+0.15 {
		t.Errorf("prefix-cache hit rate: consistent_hash %.2f, round_robin %.2f; want affinity clearly ahead", chHit, rrHit)
	}
	// TTFT follows from the hit rate (the simulator's prefill time is proportional to the
	// uncached tokens), but wall-clock figures on a shared CI machine are too noisy to assert;
	// the demo prints them and its verdict line compares them.
	t.Logf("TTFT p50: consistent_hash %v, round_robin %v", ch.TTFTQuantile(0.5), rr.TTFTQuantile(0.5))
	for _, want := range []string{"── consistent_hash", "── round_robin", "cache hit", "consistent_hash vs round_robin: prefix-cache hit rate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if tr.live.Load() != 0 {
		t.Errorf("%d routers still running after Demo", tr.live.Load())
	}
	want := []string{"--host", "127.0.0.1", "--port", "0", "--policy", "consistent_hash", "--request-id-headers", "x-session-id", "--worker-urls"}
	if got := tr.argvs[0]; !slices.Equal(got[:len(want)], want) || len(got) != len(want)+4 {
		t.Errorf("router argv %q; want %q and 4 worker URLs", got, want)
	}
}

func TestDemoPDArgvAndRun(t *testing.T) {
	tr := &testRouter{}
	rows, err := Demo(context.Background(), DemoOptions{
		Policies: []string{"round_robin"}, PD: "2x3", Sessions: 4, Duration: 30 * time.Second, // a cap: MaxRequests bounds the run, so a busy machine cannot make it empty
		StartRouter: tr.start, Workload: Workload{Seed: 1, MaxRequests: 12},
	})
	if err != nil {
		t.Fatal(err)
	}
	argv := tr.argvs[0]
	joined := strings.Join(argv, " ")
	if !strings.Contains(joined, "--vllm-pd-disaggregation") || strings.Count(joined, "--prefill http://127.0.0.1:") != 2 ||
		strings.Count(joined, " none") != 2 || strings.Count(joined, "--decode http://127.0.0.1:") != 3 || slices.Contains(argv, "--worker-urls") {
		t.Fatalf("P/D argv %q", argv)
	}
	// The test router sends everything to the decode workers, which answer whole requests.
	res := rows[0].Result
	if res.Requests == 0 || res.Errors != 0 || len(res.PerWorker) != 3 {
		t.Fatalf("P/D run: %d requests, errors %v, workers %v; want the 3 decode workers", res.Requests, res.ErrorsByKind, res.PerWorker)
	}
	for name := range res.PerWorker {
		if !strings.HasPrefix(name, "decode-") {
			t.Errorf("worker %q answered; want decode workers only", name)
		}
	}
}

func TestDemoCancelStopsEverything(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &testRouter{}
	var out syncBuffer
	done := make(chan error, 1)
	var rows []Row
	go func() {
		var err error
		rows, err = Demo(ctx, DemoOptions{Sessions: 4, Duration: time.Minute, Out: &out, StartRouter: tr.start, Workload: Workload{Seed: 1}})
		done <- err
	}()
	// Cancel once the first policy's run is under way (its router is up and serving).
	deadline := time.Now().Add(10 * time.Second)
	for tr.live.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a condition, not synchronising on time
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Demo after cancel: %v; want context.Canceled", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Demo did not return after cancel")
	}
	if len(rows) != 0 || tr.live.Load() != 0 || len(tr.argvs) != 1 {
		t.Fatalf("after cancel: %d rows, %d routers live, %d started; want 0, 0, 1", len(rows), tr.live.Load(), len(tr.argvs))
	}
}

func TestDemoSkipsAFailingPolicy(t *testing.T) {
	tr := &testRouter{}
	var out syncBuffer
	rows, err := Demo(context.Background(), DemoOptions{
		Policies: []string{"nonsense", "round_robin"}, Workers: 2, Sessions: 2, Duration: time.Minute,
		Out: &out, StartRouter: tr.start, Workload: Workload{Seed: 1, MaxRequests: 4},
	})
	if err == nil || !strings.Contains(err.Error(), "policy nonsense") || !strings.Contains(err.Error(), "unknown policy") {
		t.Fatalf("err = %v; want the nonsense policy's failure", err)
	}
	if len(rows) != 1 || rows[0].Policy != "round_robin" || rows[0].Result.Requests != 4 {
		t.Fatalf("rows %+v; want round_robin's 4 requests", rows)
	}
	if !strings.Contains(out.String(), "failed: policy nonsense") || !strings.Contains(out.String(), "round_robin ") {
		t.Fatalf("output does not report the failure and the table:\n%s", out.String())
	}
}

func TestDemoOptionsValidation(t *testing.T) {
	start := (&testRouter{}).start
	tests := []struct {
		name string
		o    DemoOptions
	}{
		{"no router", DemoOptions{}},
		{"bad pd", DemoOptions{StartRouter: start, PD: "2"}},
		{"zero prefill", DemoOptions{StartRouter: start, PD: "0x2"}},
		{"negative workers", DemoOptions{StartRouter: start, Workers: -1}},
		{"blank policy", DemoOptions{StartRouter: start, Policies: []string{""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Demo(context.Background(), tc.o); !errors.Is(err, ErrBadDemo) {
				t.Fatalf("err = %v; want ErrBadDemo", err)
			}
		})
	}
}

func TestMainFlags(t *testing.T) {
	start := (&testRouter{}).start
	tests := []struct {
		name     string
		main     func(context.Context, []string, *syncBuffer, *syncBuffer) int
		args     []string
		wantCode int
		wantErr  string
	}{
		{"demo help", demoMain(start), []string{"-h"}, exitOK, "usage: switchyard demo"},
		{"demo unknown flag", demoMain(start), []string{"--nope"}, exitUsage, "flag provided but not defined"},
		{"demo stray argument", demoMain(start), []string{"extra"}, exitUsage, "unexpected argument"},
		{"demo bad pd", demoMain(start), []string{"--pd", "two"}, exitUsage, "PxD"},
		{"bench metrics-urls without url", benchMain(start), []string{"--metrics-urls", "http://x"}, exitUsage, "needs --url"},
		{"bench bad url", benchMain(start), []string{"--url", "localhost:8000"}, exitUsage, "not an http(s) base URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			if code := tc.main(context.Background(), tc.args, &stdout, &stderr); code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}

func demoMain(start StartRouterFunc) func(context.Context, []string, *syncBuffer, *syncBuffer) int {
	return func(ctx context.Context, args []string, stdout, stderr *syncBuffer) int {
		return DemoMain(ctx, args, stdout, stderr, start)
	}
}

func benchMain(start StartRouterFunc) func(context.Context, []string, *syncBuffer, *syncBuffer) int {
	return func(ctx context.Context, args []string, stdout, stderr *syncBuffer) int {
		return BenchMain(ctx, args, stdout, stderr, start)
	}
}

func TestBenchMainAgainstURL(t *testing.T) {
	fleet := &fakeFleet{workers: 2, sticky: true}
	srv := fleet.start(t)
	var stdout, stderr syncBuffer
	code := BenchMain(context.Background(), []string{"--url", srv.URL, "--sessions", "2", "--max-requests", "10",
		"--metrics-urls", srv.URL, "--label", "mine", "--finish-session", "--seed", "5"}, &stdout, &stderr, nil)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if fleet.next.Load() != 10 || !strings.Contains(stdout.String(), "mine ") || !strings.Contains(stdout.String(), "60.0%") {
		t.Fatalf("server saw %d requests; stdout:\n%s", fleet.next.Load(), stdout.String())
	}
}
