package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
	"github.com/switchyard/switchyard/deploy"
)

func TestSumSamples(t *testing.T) {
	const text = `# HELP vllm:sim_kv_transfer_hits_total Decode legs.
# TYPE vllm:sim_kv_transfer_hits_total counter
vllm:sim_kv_transfer_hits_total{engine="0",model_name="m"} 3
vllm:sim_kv_transfer_hits_total{engine="1",model_name="m"} 4
vllm:sim_kv_transfer_hits_total_other 100
vllm:sim_kv_transfer_misses_total{engine="0",model_name="m",reason="refused"} 9
plain_metric 2.5
`
	for _, tc := range []struct {
		name    string
		metric  string
		want    float64
		wantErr bool
	}{
		{"labelled samples add up", "vllm:sim_kv_transfer_hits_total", 7, false},
		{"a longer name is another metric", "vllm:sim_kv_transfer_hits", 0, true},
		{"unlabelled sample", "plain_metric", 2.5, false},
		{"absent metric is an error", "vllm:nope", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sumSamples([]byte(text), tc.metric)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("sumSamples(%s) = %v, %v; want %v, error %v", tc.metric, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseOptions(t *testing.T) {
	base := []string{"--config", "c.toml", "--nodes", "a, b,c", "--url-file", "u"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr bool
	}{
		{"all required given", base, false},
		{"missing url file", []string{"--config", "c.toml", "--nodes", "a"}, true},
		{"one session proves no stickiness", append(append([]string{}, base...), "--sessions", "1"), true},
		{"one turn proves no stickiness", append(append([]string{}, base...), "--turns", "1"), true},
		{"non-positive wait", append(append([]string{}, base...), "--wait", "0s"), true},
		{"stray argument", append(append([]string{}, base...), "extra"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseOptions(tc.args, io.Discard)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseOptions(%q) error = %v, want error %v", tc.args, err, tc.wantErr)
			}
			if err == nil && strings.Join(o.nodes, "|") != "a|b|c" {
				t.Fatalf("nodes = %q, want a|b|c", o.nodes)
			}
		})
	}
}

// routerMode is how the fake router in front of the simulators misbehaves, if at all.
type routerMode int

const (
	sticky      routerMode = iota // hash X-Session-ID to a worker (decode worker for P/D)
	roundRobin                    // ignore stickiness: a session's k-th request goes to worker k
	skipPrefill                   // P/D: send requests straight to decode
	failSome                      // answer every fifth request 502
)

// TestExercise runs the client's whole check against real simulators on 127.0.0.1–3 (one
// per emulated node, as in the SLURM job) behind a fake router, and proves each check can
// fail: a router that breaks stickiness, skips the prefill leg or drops requests fails it.
func TestExercise(t *testing.T) {
	for _, tc := range []struct {
		name    string
		shape   string
		mode    routerMode
		wantErr string // substring of the error; "" means pass
	}{
		{"multi-replica sticky", "multi", sticky, ""},
		{"multi-replica not sticky", "multi", roundRobin, "was answered by 3 workers"},
		{"multi-replica failed requests", "multi", failSome, "requests failed"},
		{"P/D sticky", "pd", sticky, ""},
		{"P/D not sticky", "pd", roundRobin, "answered by 2 workers"},
		{"P/D without prefill legs", "pd", skipPrefill, "prefill legs = 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, o := startDeployment(t, tc.shape, tc.mode)
			rep, err := exercise(context.Background(), plan, o, newHTTP(o.requestTimeout), io.Discard)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("exercise failed on a correct deployment: %v\n%s", err, rep.summary())
				}
				if rep.OK != o.sessions*o.turns || rep.Sticky != o.sessions || rep.Nodes < 2 {
					t.Fatalf("report %+v: want %d ok, %d sticky sessions, ≥ 2 nodes", rep, o.sessions*o.turns, o.sessions)
				}
				if tc.shape == "pd" && (rep.KVHits != uint64(rep.OK) || rep.KVHitsMetric != uint64(rep.OK) || rep.PrefillLegs != uint64(rep.OK)) {
					t.Fatalf("P/D report %+v: want every request prefilled and its KV claimed", rep)
				}
				return
			}
			if !errors.Is(err, errCheck) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("exercise error = %v, want a failed check mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// startDeployment starts the plan's simulators on 127.0.0.1–3 and a fake router, writes
// the URL file, and returns the plan and client options.
func startDeployment(t *testing.T, shape string, mode routerMode) (*deploy.Plan, options) {
	t.Helper()
	ports := freePorts(t, 2)
	var toml string
	switch shape {
	case "multi":
		toml = fmt.Sprintf(`[inference]
model = "m"
[inference.deployment]
type = "multi_node"
num_nodes = 3
gpus_per_node = 1
router_port = %d
backend_port = %d
`, ports[0], ports[1])
	case "pd":
		toml = fmt.Sprintf(`[inference]
model = "m"
[inference.deployment]
type = "disaggregated"
num_prefill_nodes = 1
num_decode_nodes = 2
gpus_per_node = 1
router_port = %d
prefill_port = %d
decode_port = %d
`, ports[0], ports[1], ports[1])
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "deploy.toml")
	if err := os.WriteFile(cfgPath, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := deploy.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	plan, err := deploy.BuildPlan(cfg, nodes, deploy.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var workers, prefill, decode []string
	for _, n := range plan.Nodes {
		for _, p := range n.Processes {
			switch p.Role {
			case deploy.RoleWorker:
				workers = append(workers, p.URL)
			case deploy.RolePrefill:
				prefill = append(prefill, p.URL)
			case deploy.RoleDecode:
				decode = append(decode, p.URL)
			default:
				continue
			}
			startSim(t, strings.TrimPrefix(p.URL, "http://"), plan.Model)
		}
	}
	r := &fakeRouter{mode: mode, workers: workers, prefill: prefill, decode: decode, total: len(workers) + len(prefill) + len(decode)}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	urlFile := filepath.Join(dir, "urls")
	if err := os.WriteFile(urlFile, []byte(plan.Replicas[0].RouterURL+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return plan, options{configPath: cfgPath, nodes: nodes, urlFile: urlFile, sessions: 8, turns: 3,
		wait: 10 * time.Second, requestTimeout: 5 * time.Second}
}

func startSim(t *testing.T, addr, model string) {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Model = model
	s, err := sim.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		_ = s.Shutdown()
		<-done
	})
}

// freePorts finds n ports free on each of 127.0.0.1–3 (they are one port space).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	var hold []net.Listener
	defer func() {
		for _, l := range hold {
			_ = l.Close()
		}
	}()
	for attempt := 0; len(out) < n && attempt < 50; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hold = append(hold, l)
		port := l.Addr().(*net.TCPAddr).Port
		ok := true
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			l2, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			hold = append(hold, l2)
		}
		if ok {
			out = append(out, port)
		}
	}
	if len(out) < n {
		t.Fatalf("found only %d ports free on 127.0.0.1-3", len(out))
	}
	return out
}

// fakeRouter stands in for the router (which deploy may not import): it routes by
// X-Session-ID, and for P/D runs the prefill leg and hands its kv_transfer_params to the
// decode leg, the way vllm-router's NIXL mode does.
type fakeRouter struct {
	mode                     routerMode
	workers, prefill, decode []string
	total                    int
	n                        atomic.Int64
	turns                    sync.Map // session → *atomic.Int64, for roundRobin
	hc                       http.Client
}

func (f *fakeRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/readiness" {
		fmt.Fprintf(w, `{"status":"ready","healthy_workers":%d,"total_workers":%d}`, f.total, f.total)
		return
	}
	n := f.n.Add(1)
	if f.mode == failSome && n%5 == 0 {
		http.Error(w, "injected", http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var turn int64
	if f.mode == roundRobin {
		c, _ := f.turns.LoadOrStore(r.Header.Get("X-Session-ID"), new(atomic.Int64))
		turn = c.(*atomic.Int64).Add(1) - 1
	}
	pick := func(urls []string) string {
		if f.mode == roundRobin {
			return urls[int(turn)%len(urls)]
		}
		h := fnv.New32a()
		_, _ = h.Write([]byte(r.Header.Get("X-Session-ID")))
		return urls[int(h.Sum32())%len(urls)]
	}
	target := ""
	if len(f.workers) > 0 {
		target = pick(f.workers)
	} else {
		target = pick(f.decode)
		if f.mode != skipPrefill {
			if body, err = f.prefillLeg(r, pick(f.prefill), body); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
	}
	resp, data, err := f.post(r, target, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("X-Switchyard-Worker", resp.Header.Get("X-Switchyard-Worker"))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(data)
}

// prefillLeg sends the request to prefill with do_remote_decode and returns the decode
// leg's body: the request with the prefill's kv_transfer_params.
func (f *fakeRouter) prefillLeg(r *http.Request, prefill string, body []byte) ([]byte, error) {
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, err
	}
	leg := map[string]any{}
	for k, v := range req {
		leg[k] = v
	}
	leg["max_tokens"], leg["stream"] = 1, false
	leg["kv_transfer_params"] = map[string]any{"do_remote_decode": true, "do_remote_prefill": false,
		"remote_engine_id": nil, "remote_block_ids": nil, "remote_host": nil, "remote_port": nil}
	legBody, err := json.Marshal(leg)
	if err != nil {
		return nil, err
	}
	resp, data, err := f.post(r, prefill, legBody)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("prefill leg: %v %s", err, data)
	}
	var out struct {
		KV json.RawMessage `json:"kv_transfer_params"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	req["kv_transfer_params"] = out.KV
	return json.Marshal(req)
}

func (f *fakeRouter) post(r *http.Request, base string, body []byte) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, base+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}
