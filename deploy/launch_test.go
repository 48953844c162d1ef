package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	fakeEngine   string // path of the built testdata/fakeengine
	fakeLauncher string // path of the built testdata/launcher (LaunchMain + a tiny router)
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeEngine, fakeLauncher = filepath.Join(dir, "fakeengine"), filepath.Join(dir, "launcher")
	build := exec.Command("go", "build", "-o", dir, "./testdata/fakeengine", "./testdata/launcher")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the test binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects launcher output from many goroutines.
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

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return ports
}

// fakeRouter is a StartRouterFunc that understands the planned vllm-router argv well
// enough to route: round-robin over --worker-urls, or prefill-then-decode with the
// prefill's kv_transfer_params for --vllm-pd-disaggregation.
type fakeRouter struct {
	mu    sync.Mutex
	argvs [][]string
	n     atomic.Int64
}

func (f *fakeRouter) start(ctx context.Context, argv []string) (func(context.Context) error, error) {
	f.mu.Lock()
	f.argvs = append(f.argvs, argv)
	f.mu.Unlock()
	var port string
	var workers, prefill, decode []string
	for i := 0; i < len(argv); i++ {
		switch argv[i] {
		case "--port":
			port = argv[i+1]
		case "--worker-urls":
			for i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "--") {
				i++
				workers = append(workers, argv[i])
			}
		case "--prefill":
			prefill = append(prefill, argv[i+1])
		case "--decode":
			decode = append(decode, argv[i+1])
		}
	}
	post := func(url string, body map[string]any) (map[string]any, error) {
		js, _ := json.Marshal(body)
		resp, err := http.Post(url+"/v1/completions", "application/json", bytes.NewReader(js))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var out map[string]any
		return out, json.NewDecoder(resp.Body).Decode(&out)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		i := int(f.n.Add(1))
		var out map[string]any
		var err error
		if len(prefill) > 0 {
			pre := map[string]any{"prompt": body["prompt"], "max_tokens": 1, "kv_transfer_params": map[string]any{"do_remote_decode": true}}
			var p map[string]any
			if p, err = post(prefill[i%len(prefill)], pre); err == nil {
				body["kv_transfer_params"] = p["kv_transfer_params"]
				out, err = post(decode[i%len(decode)], body)
			}
		} else {
			out, err = post(workers[i%len(workers)], body)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	return srv.Shutdown, nil
}

// completion sends one request through the router, retrying until the deadline while
// the router is not up yet.
func completion(t *testing.T, routerPort int, deadline time.Time) map[string]any {
	t.Helper()
	for {
		resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(routerPort)+"/v1/completions", "application/json",
			strings.NewReader(`{"model":"m","prompt":"hello"}`))
		if err == nil {
			var out map[string]any
			derr := json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && derr == nil {
				return out
			}
			err = fmt.Errorf("status %d, %v", resp.StatusCode, derr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("router never answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
}

// processGone reports whether pid no longer runs (gone, or a zombie nobody reaped yet).
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for !processGone(pid) {
			if time.Now().After(deadline) {
				t.Errorf("process %d is still running after the launch ended", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// launched runs Launch for one node in the background.
type launched struct {
	cancel context.CancelFunc
	done   chan error // receives Launch's result once
	ended  chan struct{}
	log    *syncBuffer
	mu     sync.Mutex
	pids   []int
}

func startLaunch(t *testing.T, plan *Plan, rank int, router *fakeRouter, tweak func(*LaunchOptions)) *launched {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &launched{cancel: cancel, done: make(chan error, 1), ended: make(chan struct{}), log: &syncBuffer{}}
	opts := LaunchOptions{
		NodeRank: rank, EngineCmd: []string{fakeEngine}, StartRouter: router.start, Log: l.log,
		HealthTimeout: 20 * time.Second, HealthInterval: 20 * time.Millisecond, StopGrace: 2 * time.Second,
		Getenv: func(string) string { return "" },
		OnProcessStart: func(name string, pid int) {
			l.mu.Lock()
			l.pids = append(l.pids, pid)
			l.mu.Unlock()
		},
	}
	if tweak != nil {
		tweak(&opts)
	}
	go func() {
		l.done <- Launch(ctx, plan, opts)
		close(l.ended)
	}()
	t.Cleanup(func() { // a failed test must not leave workers behind
		cancel()
		select {
		case <-l.ended:
		case <-time.After(10 * time.Second):
		}
	})
	return l
}

var childPID = regexp.MustCompile(`\] child pid (\d+)`)

// stopAndCheck cancels the launch, expects a clean return, and checks that no worker
// and no worker's child is left.
func (l *launched) stopAndCheck(t *testing.T) {
	t.Helper()
	l.cancel()
	select {
	case err := <-l.done:
		if err != nil {
			t.Errorf("launch ended with %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("launch did not stop within 10s of cancel")
	}
	l.mu.Lock()
	pids := append([]int{}, l.pids...)
	l.mu.Unlock()
	for _, m := range childPID.FindAllStringSubmatch(l.log.String(), -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		t.Fatal("no process was started")
	}
	waitGone(t, pids)
}

func withEnv(plan *Plan, k, v string) {
	for i := range plan.Nodes {
		for j := range plan.Nodes[i].Processes {
			if p := &plan.Nodes[i].Processes[j]; p.Role != RoleRouter {
				p.Env[k] = v
			}
		}
	}
}

func TestLaunchSingleNode(t *testing.T) {
	ports := freePorts(t, 2)
	cfg, err := Parse([]byte(fmt.Sprintf(`
[inference]
model = "m"
[inference.deployment]
type = "single_node"
gpus_per_node = 1
router_port = %d
backend_port = %d
`, ports[0], ports[1])))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := BuildPlan(cfg, []string{"127.0.0.1"}, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	withEnv(plan, "FAKE_ENGINE_CHILD", "1") // a grandchild that ignores SIGTERM
	router := &fakeRouter{}
	l := startLaunch(t, plan, -1, router, nil)
	deadline := time.Now().Add(20 * time.Second)
	for range 5 {
		if out := completion(t, ports[0], deadline); out["served_by"] != strconv.Itoa(ports[1]) {
			t.Errorf("response %v, want served_by %d", out, ports[1])
		}
	}
	log := l.log.String()
	for _, want := range []string{"[r0.worker0] fake engine pid", "cuda=0 ", "node 0: 1/1 workers healthy", "router r0.router up: clients use http://127.0.0.1:" + strconv.Itoa(ports[0]) + "/v1"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	router.mu.Lock()
	if len(router.argvs) != 1 || strings.Join(router.argvs[0], " ") != strings.Join(plan.Nodes[0].Processes[1].Argv[1:], " ") {
		t.Errorf("router argv %v, want the planned one without the program name", router.argvs)
	}
	router.mu.Unlock()
	l.stopAndCheck(t)
}

func TestLaunchDisaggregated(t *testing.T) {
	ports := freePorts(t, 3)
	cfg, err := Parse([]byte(fmt.Sprintf(`
[inference]
model = "m"
[inference.deployment]
type = "disaggregated"
gpus_per_node = 1
router_port = %d
prefill_port = %d
decode_port = %d
`, ports[0], ports[1], ports[2])))
	if err != nil {
		t.Fatal(err)
	}
	// Two emulated nodes on two loopback addresses; the engines bind 0.0.0.0.
	plan, err := BuildPlan(cfg, []string{"127.0.0.1", "127.0.0.2"}, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	withEnv(plan, "FAKE_ENGINE_CHILD", "1")
	router := &fakeRouter{}
	decode := startLaunch(t, plan, 1, router, nil)
	prefill := startLaunch(t, plan, 0, router, nil)
	deadline := time.Now().Add(20 * time.Second)
	for range 5 {
		out := completion(t, ports[0], deadline)
		if out["served_by"] != strconv.Itoa(ports[2]) || out["prefilled_by"] != strconv.Itoa(ports[1]) {
			t.Errorf("response %v, want prefill on %d then decode on %d", out, ports[1], ports[2])
		}
	}
	if log := prefill.log.String(); !strings.Contains(log, "node 0: 2/2 workers healthy") || !strings.Contains(log, "[r0.prefill0.dp0] ") {
		t.Errorf("head log:\n%s", log)
	}
	if log := decode.log.String(); !strings.Contains(log, "[r0.decode0.dp0] ") || strings.Contains(log, "router") {
		t.Errorf("decode node log:\n%s", log)
	}
	prefill.stopAndCheck(t)
	decode.stopAndCheck(t)
}

// TestLaunchWorkerDeath: a dying worker is restarted MaxRestarts times, each logged,
// and its next death ends the launch with ErrWorkerDied.
func TestLaunchWorkerDeath(t *testing.T) {
	ports := freePorts(t, 2)
	cfg, err := Parse([]byte(fmt.Sprintf("[inference]\nmodel = \"m\"\n[inference.deployment]\ngpus_per_node = 1\nrouter_port = %d\nbackend_port = %d\n", ports[0], ports[1])))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := BuildPlan(cfg, []string{"127.0.0.1"}, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	withEnv(plan, "FAKE_ENGINE_EXIT_AFTER", "300ms")
	l := startLaunch(t, plan, 0, &fakeRouter{}, func(o *LaunchOptions) { o.MaxRestarts = 1 })
	select {
	case err := <-l.done:
		var we *WorkerExitError
		if !errors.Is(err, ErrWorkerDied) || !errors.As(err, &we) || we.Name != "r0.worker0" || we.Restarts != 1 {
			t.Errorf("got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("launch did not end")
	}
	l.mu.Lock()
	starts := len(l.pids)
	pids := append([]int{}, l.pids...)
	l.mu.Unlock()
	if starts != 2 {
		t.Errorf("%d starts, want 2 (first + 1 restart)", starts)
	}
	log := l.log.String()
	for _, want := range []string{"restarting (1 of 1)", "1 restart(s) used of 1: ending the launch", "[r0.worker0] fake engine: exiting as told"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	waitGone(t, pids)
}

// TestLaunchResolvesSLURM: rank and hosts come from SLURM's environment; a trainer node
// has nothing to launch.
func TestLaunchResolvesSLURM(t *testing.T) {
	cfg, err := Parse([]byte("[inference]\nmodel = \"m\"\n[deployment]\ntype = \"multi_node\"\nnum_train_nodes = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := BuildPlan(cfg, nil, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_PROCID": "1"}
	var log syncBuffer
	var expanded string
	err = Launch(context.Background(), plan, LaunchOptions{
		NodeRank: -1, Log: &log, Getenv: func(k string) string { return env[k] },
		ExpandNodelist: func(_ context.Context, list string) ([]string, error) {
			expanded = list
			return []string{"n1", "n2"}, nil
		},
	})
	if err != nil || expanded != "n[1-2]" || !strings.Contains(log.String(), "node 1 (n2) is a trainer node: nothing to launch") {
		t.Errorf("err %v expanded %q log %q", err, expanded, log.String())
	}

	tests := []struct {
		name string
		opts LaunchOptions
		want string
	}{
		{"bad SLURM_PROCID", LaunchOptions{NodeRank: -1, Nodes: []string{"a", "b"}, Getenv: func(k string) string {
			return map[string]string{"SLURM_PROCID": "x"}[k]
		}}, `SLURM_PROCID="x" is not a node rank`},
		{"rank out of range", LaunchOptions{NodeRank: 5, Nodes: []string{"a", "b"}}, "node rank 5 but the plan has 2 nodes"},
		{"scontrol fails", LaunchOptions{NodeRank: 0, Getenv: func(k string) string { return env[k] },
			ExpandNodelist: func(context.Context, string) ([]string, error) { return nil, errors.New("no scontrol") }}, "no scontrol"},
	}
	multi, err := BuildPlan(loadExample(t, "multi_replica"), nil, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Launch(context.Background(), multi, LaunchOptions{NodeRank: 0, Getenv: func(string) string { return "" }}); err == nil ||
		!strings.Contains(err.Error(), "give the hosts (--nodes) or run under SLURM") {
		t.Errorf("multi-node plan without hosts: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Log = io.Discard
			if err := Launch(context.Background(), plan, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}
