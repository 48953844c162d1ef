package deploy

import (
	"errors"
	"strings"
	"testing"
)

// TestValidateRules has one case per rule; each names the message a user sees.
func TestValidateRules(t *testing.T) {
	const m = "[inference]\nmodel = \"m\"\n"
	tests := []struct{ name, toml, want string }{
		{"model required", "[inference]\n", "inference.model: required"},
		{"deployment type", m + "[inference.deployment]\ntype = \"cluster\"\n", `"cluster": want single_node, multi_node or disaggregated`},
		{"policy", m + "[inference.router]\npolicy = \"fastest\"\n", `"fastest": want one of`},
		{"tp at least 1", m + "[inference.parallel]\ntp = 0\n", "inference.parallel.tp: 0: must be at least 1"},

		// wide-EP needs enable_expert_parallel and multi_node
		{"wide-EP needs multi_node", m + "enable_expert_parallel = true\n[inference.parallel]\ntp = 2\ndp = 8\n",
			`needs type = "multi_node" and inference.enable_expert_parallel = true`},
		{"wide-EP needs expert parallel", m + "[inference.parallel]\ntp = 2\ndp = 8\n[inference.deployment]\ntype = \"multi_node\"\n",
			"a data-parallel group across nodes (wide-EP) needs inference.enable_expert_parallel = true"},
		{"wide-EP dp multiple of nodes", m + "enable_expert_parallel = true\n[inference.parallel]\ndp = 3\n[inference.deployment]\ntype = \"multi_node\"\n",
			"dp must be a multiple of num_nodes"},

		// tp × dp must fit the GPUs per node
		{"tp×dp fits single node", m + "[inference.parallel]\ntp = 4\ndp = 4\n", "tp × dp = 4 × 4 = 16 GPUs exceeds gpus_per_node = 8"},
		{"tp×dp fits wide-EP node", m + "enable_expert_parallel = true\n[inference.parallel]\ntp = 4\ndp = 8\n[inference.deployment]\ntype = \"multi_node\"\n",
			"wide-EP: tp × dp per node = 4 × 4 = 16 GPUs exceeds gpus_per_node = 8"},
		{"tp divides node for P/D", m + "[inference.parallel]\ntp = 3\n[inference.deployment]\ntype = \"disaggregated\"\n",
			"tp = 3 must divide gpus_per_node = 8"},
		{"dp derived for P/D", m + "[inference.parallel]\ndp = 4\n[inference.deployment]\ntype = \"disaggregated\"\n",
			"leave dp unset for disaggregated"},
		{"eplb needs EP", m + "enable_eplb = true\n", "inference.enable_eplb: needs inference.enable_expert_parallel = true"},

		// KV offload
		{"disk-only offload", m + "[inference.kv_cache_offload.disk]\npath = \"/kv\"\n", "disk-only offload is not supported"},
		{"offload needs cpu", m + "[inference.kv_cache_offload]\ntype = \"native\"\n", "inference.kv_cache_offload.cpu: required"},
		{"cpu bytes positive", m + "[inference.kv_cache_offload.cpu]\nnum_bytes = 0\n", "num_bytes: 0: must be > 0"},
		{"offload type", m + "[inference.kv_cache_offload]\ntype = \"lmcache\"\n[inference.kv_cache_offload.cpu]\nnum_bytes = 1\n", `"lmcache": want native or mooncake`},
		{"mooncake needs SLURM", m + "[inference.kv_cache_offload]\ntype = \"mooncake\"\n[inference.kv_cache_offload.cpu]\nnum_bytes = 1\n", "mooncake needs SLURM"},
		{"offload turns prefix caching on", m + "[inference.kv_cache_offload.cpu]\nnum_bytes = 1\n[inference.vllm_extra]\nenable_prefix_caching = false\n",
			"KV cache offload turns prefix caching on"},
		{"router replay with offload", m + "[trainer]\nenable_router_replay = true\n[inference.kv_cache_offload.cpu]\nnum_bytes = 1\n",
			"router replay (enable_return_routed_experts) with inference.kv_cache_offload is not supported"},
		{"router replay needs routed experts", m + "enable_return_routed_experts = false\n[trainer]\nenable_router_replay = true\n",
			"enable_router_replay needs inference.enable_return_routed_experts"},

		// P/D all2all backends are fixed
		{"custom all2all in P/D", m + "[inference.deployment]\ntype = \"disaggregated\"\n[inference.vllm_extra]\nall2all_backend = \"naive\"\n",
			"disaggregated deployments use fixed all2all backends"},
		{"all2all env in P/D", m + "[inference.deployment]\ntype = \"disaggregated\"\ndecode_env_overrides = {VLLM_ALL2ALL_BACKEND = \"naive\"}\n",
			"VLLM_ALL2ALL_BACKEND: disaggregated all2all backends are fixed"},
		{"protected env", m + "[inference.deployment]\ntype = \"disaggregated\"\nprefill_env_overrides = {CUDA_VISIBLE_DEVICES = \"0\"}\n",
			"CUDA_VISIBLE_DEVICES is set per worker by the plan"},
		{"single_node is one node", m + "[inference.deployment]\nnum_nodes = 2\n", "single_node runs on 1 node"},
		{"headless engines cannot be routed to", m + "[inference.vllm_extra]\nheadless = true\n", "inference.vllm_extra.headless: set by the launcher"},
		{"managed vllm flag", m + "[inference.vllm_extra]\ntensor_parallel_size = 2\n", "inference.vllm_extra.tensor_parallel_size: set by the launcher; use inference.parallel.tp"},

		// node counts add up
		{"num_infer_nodes per replica", m + "[inference.deployment]\ntype = \"disaggregated\"\nnum_prefill_nodes = 2\nnum_decode_nodes = 2\nnum_prefill_replicas = 2\n[deployment]\nnum_infer_nodes = 4\n",
			"deployment.num_infer_nodes = 4 (per inference replica) but [inference.deployment] needs 6 nodes per replica (prefill 2×2 + decode 1×2)"},
		{"num_nodes of P/D", m + "[inference.deployment]\ntype = \"disaggregated\"\nnum_nodes = 3\n", "num_nodes = 3 but prefill (1×1) + decode (1×1) nodes = 2"},
		{"replicas at least 1", m + "[deployment]\nnum_infer_replicas = 0\n", "deployment.num_infer_replicas: 0: must be at least 1"},

		// ports must not collide
		{"router vs backend port", m + "[inference.deployment]\nbackend_port = 8000\n", "port 8000 on node1 is used twice: r0.worker0 and r0.router"},
		{"prefill ranks run into decode ports", m + "[inference.deployment]\ntype = \"disaggregated\"\nprefill_port = 8000\n",
			"port 8000 on node1 is used twice"},
		{"ranks run into the side channel", m + "[inference.deployment]\ntype = \"disaggregated\"\nprefill_port = 5598\n",
			"port 5600 on node1 is used twice"},
		{"port range", m + "[inference.deployment]\nrouter_port = 70000\n", "router_port: 70000: not a TCP port"},
		{"rank ports past 65535", m + "[inference.deployment]\ntype = \"disaggregated\"\ndecode_port = 65534\n", "port 65536 is out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got  %v\nwant %q", err, tc.want)
			}
		})
	}
}

func TestValidateAcceptsExamples(t *testing.T) {
	for _, name := range []string{"single_node", "multi_replica", "wide_ep", "disaggregated", "disaggregated_6node", "disaggregated_18node"} {
		if err := loadExample(t, name).Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
