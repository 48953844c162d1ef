package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./deploy -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the current output (rerun with -update if the change is intended)\n--- got ---\n%s", path, got)
	}
}

func loadExample(t *testing.T, name string) *Config {
	t.Helper()
	cfg, err := Load(filepath.Join("..", "examples", name+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestPlanGolden(t *testing.T) {
	tests := []struct {
		example   string
		nodes     int
		processes int // engines + routers
		routers   int
	}{
		{"single_node", 1, 2, 1},
		{"multi_replica", 2, 3, 1},
		{"wide_ep", 2, 3, 1},
		{"disaggregated", 4, 4*4 + 1, 1},
		{"disaggregated_6node", 6, 6*4 + 1, 1},
		{"disaggregated_18node", 18 + 4, 18*4 + 3, 3},
	}
	for _, tc := range tests {
		t.Run(tc.example, func(t *testing.T) {
			plan, err := BuildPlan(loadExample(t, tc.example), nil, PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			procs, routers := 0, 0
			for _, n := range plan.Nodes {
				for _, p := range n.Processes {
					procs++
					if p.Role == RoleRouter {
						routers++
					}
				}
			}
			if len(plan.Nodes) != tc.nodes || procs != tc.processes || routers != tc.routers {
				t.Errorf("nodes %d processes %d routers %d, want %d %d %d", len(plan.Nodes), procs, routers, tc.nodes, tc.processes, tc.routers)
			}
			var text, js bytes.Buffer
			if err := plan.Write(&text, "text"); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.example+".golden", text.Bytes())
			if err := plan.Write(&js, "json"); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.example+".json.golden", js.Bytes())
			var back Plan
			if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Nodes) != tc.nodes {
				t.Errorf("json does not round-trip: %v", err)
			}
		})
	}
}

// TestPlanWideEP pins the seed's sentence: "2 vLLM processes, each with
// data_parallel_size_local = 4 and tp = 2".
func TestPlanWideEP(t *testing.T) {
	plan, err := BuildPlan(loadExample(t, "wide_ep"), []string{"a", "b"}, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	head, second := plan.Nodes[0].Processes[0], plan.Nodes[1].Processes[0]
	for _, p := range []Process{head, second} {
		if argValue(p.Argv, "--data-parallel-size-local") != "4" || argValue(p.Argv, "--tensor-parallel-size") != "2" ||
			argValue(p.Argv, "--data-parallel-size") != "8" || argValue(p.Argv, "--data-parallel-address") != "a" {
			t.Errorf("%s: %v", p.Name, p.Argv)
		}
	}
	if !contains(second.Argv, "--headless") || argValue(second.Argv, "--data-parallel-start-rank") != "4" || second.Port != 0 {
		t.Errorf("second node should be headless from rank 4: %v", second.Argv)
	}
	if got := plan.Replicas[0].Workers; len(got) != 1 || got[0] != "http://a:8100" {
		t.Errorf("router workers %v", got)
	}
}

// TestPlanDisaggregated6 checks the layout rules on the 6-node example: prefill replicas
// first, ranks per role replica, GPUs, ports and side channels per local rank.
func TestPlanDisaggregated6(t *testing.T) {
	hosts := []string{"p0", "p1", "p2", "p3", "d0", "d1"}
	plan, err := BuildPlan(loadExample(t, "disaggregated_6node"), hosts, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := plan.Nodes[3].Processes[2] // prefill replica 1, its node 1, local rank 2
	if p.Name != "r0.prefill1.dp6" || p.Port != 8102 || p.Env["CUDA_VISIBLE_DEVICES"] != "4,5" ||
		p.Env["VLLM_NIXL_SIDE_CHANNEL_PORT"] != "5602" || p.Env["VLLM_NIXL_SIDE_CHANNEL_HOST"] != "p3" ||
		argValue(p.Argv, "--data-parallel-rank") != "6" || argValue(p.Argv, "--data-parallel-address") != "p2" ||
		argValue(p.Argv, "--all2all-backend") != "deepep_high_throughput" {
		t.Errorf("prefill rank: %+v", p)
	}
	d := plan.Nodes[5].Processes[3]
	if d.Name != "r0.decode0.dp7" || d.Port != 8203 || argValue(d.Argv, "--all2all-backend") != "deepep_low_latency" ||
		argValue(d.Argv, "--data-parallel-address") != "d0" || argValue(d.Argv, "--data-parallel-size") != "8" {
		t.Errorf("decode rank: %+v", d)
	}
	r := plan.Replicas[0]
	if len(r.Prefill) != 16 || len(r.Decode) != 8 || r.RouterURL != "http://p0:8000/v1" {
		t.Errorf("replica %+v", r)
	}
	router := plan.Nodes[0].Processes[len(plan.Nodes[0].Processes)-1]
	if router.Role != RoleRouter || strings.Count(strings.Join(router.Argv, " "), "--prefill ") != 16 ||
		strings.Count(strings.Join(router.Argv, " "), "--decode ") != 8 || !contains(router.Argv, "--vllm-pd-disaggregation") {
		t.Errorf("router argv %v", router.Argv)
	}
	if argValue(router.Argv, "--prefill") != "http://p0:8100" || router.Argv[indexOf(router.Argv, "--prefill")+2] != "none" {
		t.Errorf("router prefill syntax: %v", router.Argv)
	}
}

func TestPlan18NodesTrainerNodes(t *testing.T) {
	plan, err := BuildPlan(loadExample(t, "disaggregated_18node"), nil, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{0, 6, 12} {
		if plan.Replicas[i].HeadRank != want {
			t.Errorf("replica %d head %d, want %d", i, plan.Replicas[i].HeadRank, want)
		}
	}
	if n := plan.Nodes[18]; n.Kind != "trainer" || len(n.Processes) != 0 {
		t.Errorf("node 18: %+v", n)
	}
	if _, err := BuildPlan(loadExample(t, "disaggregated_18node"), placeholderHosts(17), PlanOptions{}); !errors.Is(err, ErrInvalidConfig) ||
		!strings.Contains(err.Error(), "needs 18 inference nodes") {
		t.Errorf("17 hosts: %v", err)
	}
}

func TestPlanKVTransferConfig(t *testing.T) {
	tests := []struct {
		name, toml string
		role       int // index of the process to inspect on node 0
		want       string
	}{
		{"native cpu", `[inference.kv_cache_offload.cpu]
num_bytes = 1000`, 0, `{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":1000},"kv_role":"kv_both"}`},
		{"native cpu+disk", `[inference.kv_cache_offload.cpu]
num_bytes = 1000
[inference.kv_cache_offload.disk]
path = "/scratch/kv"`, 0, `{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":1000,"secondary_tiers":[{"root_dir":"/scratch/kv","type":"fs_python"}],"spec_name":"TieringOffloadingSpec"},"kv_role":"kv_both"}`},
		{"mooncake", `[inference.slurm]
[inference.kv_cache_offload]
type = "mooncake"
[inference.kv_cache_offload.cpu]
num_bytes = 1000`, 2, `{"kv_connector":"MooncakeStoreConnector","kv_role":"kv_both"}`},
		{"pd + offload", `[inference.deployment]
type = "disaggregated"
[inference.kv_cache_offload.cpu]
num_bytes = 1000`, 0, `{"kv_connector":"MultiConnector","kv_connector_extra_config":{"connectors":[{"kv_connector":"NixlConnector","kv_connector_extra_config":{"num_threads":1},"kv_role":"kv_both"},{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":1000},"kv_role":"kv_both"}]},"kv_role":"kv_both"}`},
		{"pd", `[inference.deployment]
type = "disaggregated"`, 0, `{"kv_connector":"NixlConnector","kv_connector_extra_config":{"num_threads":1},"kv_role":"kv_both"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte("[inference]\nmodel = \"m\"\n" + tc.toml))
			if err != nil {
				t.Fatal(err)
			}
			plan, err := BuildPlan(cfg, nil, PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			argv := plan.Nodes[0].Processes[tc.role].Argv
			if got := argValue(argv, "--kv-transfer-config"); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if cfg.KVCacheOffload != nil && !contains(argv, "--enable-prefix-caching") {
				t.Errorf("offload without --enable-prefix-caching: %v", argv)
			}
		})
	}
}

func TestPlanFlags(t *testing.T) {
	cfg, err := Parse([]byte(`
[inference]
model = "m"
enable_expert_parallel = true
enable_dbo = true
enable_eplb = true
[trainer]
enable_router_replay = true
[inference.vllm_extra]
enable_chunked_prefill = false
max-model-len = 4096
gpu_memory_utilization = 0.85
compilation_config = {level = 3}
served_model_name = "x"
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := BuildPlan(cfg, []string{"h"}, PlanOptions{BindHost: "node"})
	if err != nil {
		t.Fatal(err)
	}
	got := shellJoin(plan.Nodes[0].Processes[0].Argv)
	want := `vllm serve m --host h --port 8100 --tensor-parallel-size 1 --enable-expert-parallel --enable-eplb --enable-dbo --enable-return-routed-experts --compilation-config '{"level":3}' --no-enable-chunked-prefill --gpu-memory-utilization 0.85 --max-model-len 4096 --served-model-name x`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if r := plan.Nodes[0].Processes[1]; argValue(r.Argv, "--host") != "h" || contains(r.Argv, "--intra-node-data-parallel-size") {
		t.Errorf("router %v", r.Argv)
	}
}

// TestPlanPortCollisions: two processes on one host may not share a port, which only
// shows once real hosts repeat.
func TestPlanPortCollisions(t *testing.T) {
	cfg := loadExample(t, "multi_replica")
	if _, err := BuildPlan(cfg, []string{"same", "same"}, PlanOptions{}); err == nil || !strings.Contains(err.Error(), "port 8100 on same is used twice") {
		t.Errorf("got %v", err)
	}
	pd := loadExample(t, "disaggregated")
	if _, err := BuildPlan(pd, []string{"a", "a", "b", "c"}, PlanOptions{}); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("got %v", err)
	}
	if _, err := BuildPlan(pd, []string{"a", "b", "", "c"}, PlanOptions{}); err == nil {
		t.Error("empty host accepted")
	}
}

func contains(argv []string, s string) bool { return indexOf(argv, s) >= 0 }

func indexOf(argv []string, s string) int {
	for i, a := range argv {
		if a == s {
			return i
		}
	}
	return -1
}

// TestPlanDecodeOverrides: a user compilation_config is merged into the decode engines'
// FULL_DECODE_ONLY default (one flag, not two), and api_server_count replaces the plan's 1.
func TestPlanDecodeOverrides(t *testing.T) {
	cfg, err := Parse([]byte("[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"disaggregated\"\n[inference.vllm_extra]\ncompilation_config = {level = 3}\napi_server_count = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := BuildPlan(cfg, nil, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pre, dec := plan.Nodes[0].Processes[0].Argv, plan.Nodes[1].Processes[0].Argv
	if got := argValue(dec, "--compilation-config"); got != `{"cudagraph_mode":"FULL_DECODE_ONLY","level":3}` || strings.Count(strings.Join(dec, " "), "--compilation-config") != 1 {
		t.Errorf("decode: %v", dec)
	}
	if got := argValue(pre, "--compilation-config"); got != `{"level":3}` {
		t.Errorf("prefill: %v", pre)
	}
	for _, argv := range [][]string{pre, dec} {
		if argValue(argv, "--api-server-count") != "2" || strings.Count(strings.Join(argv, " "), "--api-server-count") != 1 {
			t.Errorf("api-server-count: %v", argv)
		}
	}
}
