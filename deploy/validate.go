package deploy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ValidationError is one broken rule: the setting it concerns and why.
type ValidationError struct {
	// Field is the TOML path of the setting, e.g. "inference.kv_cache_offload.disk".
	Field string
	// Msg says what is wrong and what to do.
	Msg string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Msg }

// Is makes every ValidationError match ErrInvalidConfig.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidConfig }

// knownPolicies are vllm-router's --policy values.
var knownPolicies = map[string]bool{
	"consistent_hash": true, "round_robin": true, "random": true, "cache_aware": true,
	"power_of_two": true, "rendezvous_hash": true, "least_loaded": true, "sticky_least_loaded": true,
}

// managedFlags are vLLM options the plan sets itself; vllm_extra may not set them, and
// the message says where the setting lives instead.
var managedFlags = map[string]string{
	"model":                        "inference.model",
	"host":                         "the plan (bind address)",
	"port":                         "inference.deployment ports",
	"tensor_parallel_size":         "inference.parallel.tp",
	"data_parallel_size":           "inference.parallel.dp",
	"data_parallel_size_local":     "the plan (derived from dp and num_nodes)",
	"data_parallel_address":        "the plan (the group's head node)",
	"data_parallel_rpc_port":       "the plan",
	"data_parallel_start_rank":     "the plan",
	"data_parallel_rank":           "the plan",
	"kv_transfer_config":           "inference.kv_cache_offload and the disaggregated deployment",
	"enable_expert_parallel":       "inference.enable_expert_parallel",
	"enable_dbo":                   "inference.enable_dbo",
	"enable_eplb":                  "inference.enable_eplb",
	"enable_return_routed_experts": "inference.enable_return_routed_experts",
	"headless":                     "the plan (a wide-EP group's secondary nodes run headless; an engine without HTTP cannot be health-checked or routed to)",
}

// protectedEnv may not be overridden: the plan owns them per worker.
var protectedEnv = []string{"CUDA_VISIBLE_DEVICES", "VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_NIXL_SIDE_CHANNEL_PORT"}

// Validate checks every rule once; the error joins one ValidationError per broken rule.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	d := c.Deployment

	if c.Model == "" {
		bad("inference.model", "required: the model id or path to serve")
	}
	switch d.Type {
	case SingleNode, MultiNode, Disaggregated:
	default:
		bad("inference.deployment.type", "%q: want single_node, multi_node or disaggregated", d.Type)
	}
	if c.TP < 1 {
		bad("inference.parallel.tp", "%d: must be at least 1", c.TP)
	}
	if c.DP < 0 {
		bad("inference.parallel.dp", "%d: must be at least 1 (0 or absent means the default)", c.DP)
	}
	if d.GPUsPerNode < 1 {
		bad("inference.deployment.gpus_per_node", "%d: must be at least 1", d.GPUsPerNode)
	}
	if d.NumNodes < 1 {
		bad("inference.deployment.num_nodes", "%d: must be at least 1", d.NumNodes)
	}
	if d.Type == SingleNode && d.NumNodes != 1 {
		bad("inference.deployment.num_nodes", "%d: single_node runs on 1 node; use type = \"multi_node\" for more", d.NumNodes)
	}
	if c.Replicas < 1 {
		bad("deployment.num_infer_replicas", "%d: must be at least 1", c.Replicas)
	}
	if c.TrainNodes < 0 {
		bad("deployment.num_train_nodes", "%d: must not be negative", c.TrainNodes)
	}
	if !knownPolicies[c.RouterPolicy] {
		bad("inference.router.policy", "%q: want one of %s", c.RouterPolicy, strings.Join(sortedKeys(knownPolicies), ", "))
	}
	if len(errs) > 0 { // the rules below assume sane sizes
		return errors.Join(errs...)
	}

	gpus, tp := d.GPUsPerNode, c.TP
	dp := max(c.DP, 1)
	switch {
	case d.Type == Disaggregated:
		for _, r := range []struct {
			name string
			role Role
		}{{"prefill", d.Prefill}, {"decode", d.Decode}} {
			if r.role.NodesPerReplica < 1 || r.role.Replicas < 1 {
				bad("inference.deployment", "%s needs at least 1 node per replica and 1 replica (have %d×%d)", r.name, r.role.Replicas, r.role.NodesPerReplica)
			}
		}
		if tp > gpus || gpus%tp != 0 {
			bad("inference.parallel.tp", "tp = %d must divide gpus_per_node = %d: each node runs gpus_per_node/tp data-parallel ranks", tp, gpus)
		} else if c.DP > 0 {
			for _, r := range []struct {
				name string
				role Role
			}{{"prefill", d.Prefill}, {"decode", d.Decode}} {
				if want := r.role.NodesPerReplica * gpus / tp; c.DP != want {
					bad("inference.parallel.dp", "dp = %d but a %s replica of %d node(s) runs %d ranks (nodes × gpus_per_node/tp); leave dp unset for disaggregated", c.DP, r.name, r.role.NodesPerReplica, want)
				}
			}
		}
	case d.Type == MultiNode && c.EnableExpertParallel: // wide-EP: one DP group over the nodes
		switch {
		case dp%d.NumNodes != 0:
			bad("inference.parallel.dp", "wide-EP spreads dp = %d over num_nodes = %d: dp must be a multiple of num_nodes", dp, d.NumNodes)
		case dp/d.NumNodes*tp > gpus:
			bad("inference.parallel", "wide-EP: tp × dp per node = %d × %d = %d GPUs exceeds gpus_per_node = %d", tp, dp/d.NumNodes, tp*dp/d.NumNodes, gpus)
		}
	default:
		if tp*dp > gpus {
			msg := fmt.Sprintf("tp × dp = %d × %d = %d GPUs exceeds gpus_per_node = %d", tp, dp, tp*dp, gpus)
			if d.Type == SingleNode {
				msg += "; a data-parallel group across nodes (wide-EP) needs type = \"multi_node\" and inference.enable_expert_parallel = true"
			} else {
				msg += "; a data-parallel group across nodes (wide-EP) needs inference.enable_expert_parallel = true"
			}
			bad("inference.parallel", "%s", msg)
		}
	}

	if c.EnableEPLB && !c.EnableExpertParallel {
		bad("inference.enable_eplb", "needs inference.enable_expert_parallel = true")
	}

	if kv := c.KVCacheOffload; kv != nil {
		switch kv.Type {
		case OffloadNative, OffloadMooncake:
		default:
			bad("inference.kv_cache_offload.type", "%q: want native or mooncake", kv.Type)
		}
		switch {
		case kv.noCPUTier && kv.DiskPath != "":
			bad("inference.kv_cache_offload", "disk-only offload is not supported: add [inference.kv_cache_offload.cpu] num_bytes (the disk tier sits behind a CPU tier)")
		case kv.noCPUTier:
			bad("inference.kv_cache_offload.cpu", "required: set num_bytes, the CPU KV pool in bytes")
		case kv.CPUBytes <= 0:
			bad("inference.kv_cache_offload.cpu.num_bytes", "%d: must be > 0", kv.CPUBytes)
		}
		if kv.Type == OffloadMooncake && c.Slurm == nil {
			bad("inference.kv_cache_offload.type", "mooncake needs SLURM (an [inference.slurm] table): its store spans the job's nodes; use type = \"native\" for local runs")
		}
		if v, ok := c.VLLMExtra["enable_prefix_caching"]; ok && v == false {
			bad("inference.vllm_extra.enable_prefix_caching", "KV cache offload turns prefix caching on; it cannot be false")
		}
		if c.RouterReplay || c.EnableReturnRoutedExperts {
			bad("trainer.enable_router_replay", "router replay (enable_return_routed_experts) with inference.kv_cache_offload is not supported: external KV cache hits do not carry routed-expert decisions")
		}
	}

	if d.Type == Disaggregated {
		if _, ok := c.VLLMExtra["all2all_backend"]; ok {
			bad("inference.vllm_extra.all2all_backend", "disaggregated deployments use fixed all2all backends (prefill deepep_high_throughput, decode deepep_low_latency); a custom backend is not supported")
		}
		for _, r := range []struct {
			field string
			env   map[string]string
		}{{"inference.deployment.prefill_env_overrides", d.Prefill.Env}, {"inference.deployment.decode_env_overrides", d.Decode.Env}} {
			if _, ok := r.env["VLLM_ALL2ALL_BACKEND"]; ok {
				bad(r.field, "VLLM_ALL2ALL_BACKEND: disaggregated all2all backends are fixed (prefill deepep_high_throughput, decode deepep_low_latency)")
			}
			for _, k := range protectedEnv {
				if _, ok := r.env[k]; ok {
					bad(r.field, "%s is set per worker by the plan and cannot be overridden", k)
				}
			}
		}
	}
	for _, k := range sortedKeys(c.VLLMExtra) {
		if where, ok := managedFlags[k]; ok {
			bad("inference.vllm_extra."+k, "set by the launcher; use %s", where)
		}
	}

	type portField struct {
		field string
		port  int
	}
	ports := []portField{{"inference.deployment.router_port", d.RouterPort}}
	if d.Type == Disaggregated {
		ports = append(ports, portField{"inference.deployment.prefill_port", d.Prefill.Port},
			portField{"inference.deployment.decode_port", d.Decode.Port})
	} else {
		ports = append(ports, portField{"inference.deployment.backend_port", d.BackendPort})
	}
	for _, p := range ports {
		if p.port < 1 || p.port > 65535 {
			bad(p.field, "%d: not a TCP port (1-65535)", p.port)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Port collisions depend on the layout: build it on distinct placeholder hosts.
	if _, err := buildPlan(c, placeholderHosts(c.TotalNodes()), PlanOptions{}); err != nil {
		return err
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
