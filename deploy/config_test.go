package deploy

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseUnknownKeys(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string // substrings of the error, "" for success
	}{
		{"top-level table", "[inference]\nmodel = \"m\"\n\n[bogus]\nx = 1\n", []string{`config:4: unknown key "bogus"`}},
		{"nested key with line", "[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"single_node\"\nnum_nodez = 2\n",
			[]string{`config:5: unknown key "inference.deployment.num_nodez"`}},
		{"two at once", "[inference]\nmodel = \"m\"\ntp = 2\n[inference.parallel]\npp = 2\n",
			[]string{`config:3: unknown key "inference.tp"`, `config:5: unknown key "inference.parallel.pp"`}},
		{"vllm_extra is free-form", "[inference]\nmodel = \"m\"\n[inference.vllm_extra]\nanything_goes = 1\nnested = {a = [1, 2]}\n", nil},
		{"wrong type has a line", "[inference]\nmodel = \"m\"\n[inference.parallel]\ntp = \"two\"\n", []string{"config:4:", "tp"}},
		{"syntax error has a line", "[inference]\nmodel = \n", []string{"config:2:"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(path, []byte("[inference]\nmodel = \"m\"\nnope = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path+`:3: unknown key "inference.nope"`) {
		t.Errorf("got %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil || errors.Is(err, ErrInvalidConfig) {
		t.Errorf("a missing file is an I/O error, got %v", err)
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse([]byte("[inference]\nmodel = \"m\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{Model: "m", TP: 1, Replicas: 1, RouterPolicy: "consistent_hash", SessionHeaders: []string{"x-session-id"},
		VLLMExtra:  map[string]any{},
		Deployment: Deployment{Type: SingleNode, NumNodes: 1, GPUsPerNode: 8, RouterPort: 8000, BackendPort: 8100}}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	pd, err := Parse([]byte("[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"disaggregated\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !pd.EnableExpertParallel || !reflect.DeepEqual(pd.Deployment.Prefill, Role{NodesPerReplica: 1, Replicas: 1, Port: 8100}) ||
		pd.Deployment.Decode.Port != 8200 || pd.Deployment.NumNodes != 2 {
		t.Errorf("disaggregated defaults: %+v", pd)
	}
	off, err := Parse([]byte("[inference]\nmodel = \"m\"\nenable_expert_parallel = false\n[inference.deployment]\ntype = \"disaggregated\"\n"))
	if err != nil || off.EnableExpertParallel {
		t.Errorf("explicit enable_expert_parallel = false must stick: %v %+v", err, off)
	}
}

// TestParseAliases: prime-rl's current names (research §4.2) mean the seed's fields.
func TestParseAliases(t *testing.T) {
	seed := `
[inference]
model = "m"
[inference.parallel]
tp = 2
[inference.deployment]
type = "disaggregated"
router_port = 9000
router_policy = "round_robin"
num_prefill_nodes = 2
num_decode_nodes = 1
num_replicas = 2
prefill_env_overrides = {A = "1"}
decode_env_overrides = {B = "2"}
[orchestrator.student.client.extra_headers_from_state]
X-Session-ID = "trajectory_id"
`
	current := `
[inference]
[inference.vllm]
model = "m"
tensor-parallel-size = 2
[inference.server]
port = 9000
[inference.router]
type = "vllm-router"
policy = "round_robin"
[inference.deployment]
type = "disaggregated"
prefill_nodes_per_replica = 2
decode_nodes_per_replica = 1
prefill_env_vars = {A = "1"}
decode_env_vars = {B = "2"}
[deployment]
type = "multi_node"
num_infer_replicas = 2
`
	a, err := Parse([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse([]byte(current))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("seed names  %+v\ncurrent names %+v", a, b)
	}
	if a.Deployment.RouterPort != 9000 || a.Deployment.BackendPort != 9100 || a.Replicas != 2 || a.Deployment.Prefill.NodesPerReplica != 2 {
		t.Errorf("values: %+v", a)
	}

	backend, err := Parse([]byte("[inference]\nmodel = \"m\"\nbackend_port = 7000\n"))
	if err != nil || backend.Deployment.BackendPort != 7000 {
		t.Errorf("inference.backend_port: %v %+v", err, backend)
	}
	extra, err := Parse([]byte("[inference]\nmodel = \"m\"\n[inference.vllm]\nmax-model-len = 100\nenable_dbo = true\n"))
	if err != nil || extra.VLLMExtra["max_model_len"] != int64(100) || !extra.EnableDBO {
		t.Errorf("inference.vllm pass-through: %v %+v", err, extra)
	}
}

func TestParseAliasConflicts(t *testing.T) {
	tests := []struct{ name, toml, want string }{
		{"router port", "[inference]\nmodel = \"m\"\n[inference.server]\nport = 1\n[inference.deployment]\nrouter_port = 2\n",
			"inference.deployment.router_port and inference.server.port name the same setting"},
		{"nodes per replica", "[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"disaggregated\"\nnum_prefill_nodes = 1\nprefill_nodes_per_replica = 2\n",
			"num_prefill_nodes and inference.deployment.prefill_nodes_per_replica"},
		{"env", "[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"disaggregated\"\ndecode_env_overrides = {}\ndecode_env_vars = {}\n",
			"decode_env_overrides and inference.deployment.decode_env_vars"},
		{"model", "[inference]\nmodel = \"m\"\n[inference.vllm]\nmodel = \"n\"\n", "inference.vllm.model and inference.model"},
		{"vllm vs vllm_extra", "[inference]\nmodel = \"m\"\n[inference.vllm]\nseed = 1\n[inference.vllm_extra]\nseed = 2\n", "inference.vllm.seed and inference.vllm_extra.seed"},
		{"replicas", "[inference]\nmodel = \"m\"\n[inference.deployment]\nnum_replicas = 2\n[deployment]\nnum_infer_replicas = 3\n", "num_replicas and deployment.num_infer_replicas"},
		{"pd keys outside pd", "[inference]\nmodel = \"m\"\n[inference.deployment]\nnum_prefill_nodes = 2\n", "need type = \"disaggregated\""},
		{"llm-d router", "[inference]\nmodel = \"m\"\n[inference.router]\ntype = \"llm-d\"\n", "only vllm-router"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseSessionHeaders(t *testing.T) {
	cfg, err := Parse([]byte("[inference]\nmodel = \"m\"\n[orchestrator.student.client.extra_headers_from_state]\nX-Session-ID = \"trajectory_id\"\nX-User-ID = \"user\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"x-session-id", "x-user-id"}; !reflect.DeepEqual(cfg.SessionHeaders, want) {
		t.Errorf("got %v", cfg.SessionHeaders)
	}
}
