package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// ErrInvalidConfig is wrapped by every error that Load, Parse and Validate return for a
// bad configuration, so callers can tell bad input from I/O failures.
var ErrInvalidConfig = errors.New("invalid deployment config")

// DeploymentType is the shape of one inference replica.
type DeploymentType string

const (
	// SingleNode runs one vLLM server on one node.
	SingleNode DeploymentType = "single_node"
	// MultiNode runs one vLLM server per node: independent replicas, or, with
	// enable_expert_parallel, one data-parallel group spanning the nodes (wide-EP).
	MultiNode DeploymentType = "multi_node"
	// Disaggregated runs prefill and decode on separate nodes, KV cache moving over NIXL.
	Disaggregated DeploymentType = "disaggregated"
)

// OffloadType selects the KV-cache offload backend.
type OffloadType string

const (
	// OffloadNative is vLLM's OffloadingConnector (CPU, optionally tiered to disk).
	OffloadNative OffloadType = "native"
	// OffloadMooncake is the Mooncake distributed store (SLURM only).
	OffloadMooncake OffloadType = "mooncake"
)

// Config is a validated deployment. Field names follow the seed page; prime-rl's newer
// names are accepted as aliases when the file is decoded and folded into these fields.
type Config struct {
	// Model is the model id or path passed to `vllm serve`. Required.
	Model string
	// TP is the tensor-parallel size of each engine ([inference.parallel] tp). Default 1.
	TP int
	// DP is the data-parallel size ([inference.parallel] dp): per node for single_node and
	// multi-replica, the whole group for wide-EP, and derived (gpus_per_node/tp per node)
	// for disaggregated when left at 0. 0 means the default (1, or derived).
	DP int
	// EnableExpertParallel passes --enable-expert-parallel. Default false, except true for
	// disaggregated unless set explicitly.
	EnableExpertParallel bool
	// EnableDBO passes --enable-dbo (dual batch overlap).
	EnableDBO bool
	// EnableEPLB passes --enable-eplb (expert-parallel load balancing); needs expert
	// parallelism.
	EnableEPLB bool
	// EnableReturnRoutedExperts passes --enable-return-routed-experts. Router replay turns
	// it on.
	EnableReturnRoutedExperts bool

	// Deployment is the shape of one inference replica.
	Deployment Deployment
	// Replicas is the number of inference replicas, each a copy of Deployment behind its
	// own router ([deployment] num_infer_replicas, alias [inference.deployment]
	// num_replicas). Default 1.
	Replicas int
	// TrainNodes is the number of trainer nodes that follow the inference nodes in the
	// node list ([deployment] num_train_nodes). The launcher starts nothing on them.
	TrainNodes int

	// RouterPolicy is the vllm-router policy ([inference.router] policy, alias
	// [inference.deployment] router_policy). Default "consistent_hash".
	RouterPolicy string
	// SessionHeaders are the lower-cased header names the router hashes on: the keys of
	// [orchestrator.student.client.extra_headers_from_state], sorted. Default
	// ["x-session-id"].
	SessionHeaders []string

	// KVCacheOffload enables CPU (and disk) KV offload; nil means off.
	KVCacheOffload *KVCacheOffload
	// RouterReplay is [trainer] enable_router_replay; it implies EnableReturnRoutedExperts.
	RouterReplay bool
	// VLLMExtra are further `vllm serve` options, snake_case key → value, rendered as
	// --kebab-case flags (true → flag alone, false → --no-flag, tables/arrays → JSON).
	VLLMExtra map[string]any
	// Slurm holds the sbatch settings ([inference.slurm]); nil when absent. Mooncake
	// offload needs it.
	Slurm *Slurm
}

// Deployment is one inference replica's shape and ports ([inference.deployment]).
type Deployment struct {
	// Type is single_node (default), multi_node or disaggregated.
	Type DeploymentType
	// NumNodes is the node count of a multi_node replica. Default 2; 1 for single_node;
	// prefill plus decode nodes for disaggregated.
	NumNodes int
	// GPUsPerNode is the GPU count of every node. Default 8.
	GPUsPerNode int
	// RouterPort is the client-facing router port (alias [inference.server] port).
	// Default 8000.
	RouterPort int
	// BackendPort is the engine HTTP port for single_node and multi_node (alias
	// [inference] backend_port). Default RouterPort+100.
	BackendPort int
	// Prefill and Decode are the roles of a disaggregated replica; zero otherwise.
	Prefill, Decode Role
}

// Role is one side of a disaggregated deployment.
type Role struct {
	// NodesPerReplica is the node count of one role replica (seed num_prefill_nodes /
	// num_decode_nodes; prime-rl prefill_nodes_per_replica / decode_nodes_per_replica).
	// Default 1.
	NodesPerReplica int
	// Replicas is the number of independent role replicas (num_prefill_replicas /
	// num_decode_replicas). Default 1.
	Replicas int
	// Port is the HTTP port of local data-parallel rank 0; rank k listens on Port+k
	// (prefill_port / decode_port). Defaults 8100 and 8200.
	Port int
	// Env overrides the worker environment (prefill_env_overrides, alias
	// prefill_env_vars). CUDA_VISIBLE_DEVICES may not be set here.
	Env map[string]string
}

// Nodes is the node count of all replicas of the role.
func (r Role) Nodes() int { return r.NodesPerReplica * r.Replicas }

// KVCacheOffload is [inference.kv_cache_offload].
type KVCacheOffload struct {
	// Type is native (default) or mooncake.
	Type OffloadType
	// CPUBytes is cpu.num_bytes: native, the instance's CPU KV pool (vLLM
	// cpu_bytes_to_use); mooncake, the DRAM each node contributes. Required, > 0.
	CPUBytes int64
	// DiskPath is disk.path: a filesystem tier behind the CPU tier; empty means none.
	DiskPath string
	// DeviceName is the RDMA device list for mooncake; empty lets Mooncake choose.
	DeviceName string

	noCPUTier bool // the file had no [kv_cache_offload.cpu] table at all
}

// Slurm is [inference.slurm]: the sbatch settings. Command-line flags override them.
type Slurm struct {
	// JobName is the sbatch job name. Default "switchyard".
	JobName string
	// Partition, Account, Time, Nodelist and Exclude are passed to #SBATCH as given;
	// empty means not set.
	Partition, Account, Time, Nodelist, Exclude string
	// PreRunCommand runs on every node before the launcher (e.g. module loads).
	PreRunCommand string
}

// Defaults a file gets when it leaves a field out.
const (
	defaultGPUsPerNode  = 8
	defaultRouterPort   = 8000
	defaultPrefillPort  = 8100
	defaultDecodePort   = 8200
	defaultMultiNodes   = 2
	defaultRouterPolicy = "consistent_hash"
	defaultSessionHdr   = "x-session-id"
)

// Load reads and parses a TOML deployment file; errors name the file and line.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading deployment config: %w", err)
	}
	cfg, err := parse(data, path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// Parse decodes a TOML deployment strictly, applies defaults and aliases, and validates
// it. Unknown keys are errors naming the key and line, except under vllm_extra.
func Parse(data []byte) (*Config, error) { return parse(data, "config") }

func parse(data []byte, name string) (*Config, error) {
	var f fileConfig
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, decodeError(name, err)
	}
	cfg, err := f.resolve()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

// decodeError turns go-toml's errors into "file:line: key: message" lines.
func decodeError(name string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		lines := make([]string, 0, len(strict.Errors))
		for i := range strict.Errors {
			e := &strict.Errors[i]
			row, _ := e.Position()
			lines = append(lines, fmt.Sprintf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), ".")))
		}
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(lines, "; "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Errorf("%w: %s:%d: %s: %s", ErrInvalidConfig, name, row, key, strings.TrimPrefix(de.Error(), "toml: "))
		}
		return fmt.Errorf("%w: %s:%d: %s", ErrInvalidConfig, name, row, strings.TrimPrefix(de.Error(), "toml: "))
	}
	return fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
}

// The file* types mirror the TOML with every accepted name, old and new; resolve folds
// them into Config. Pointers tell "absent" from "zero".
type fileConfig struct {
	Inference    fileInference    `toml:"inference"`
	Trainer      fileTrainer      `toml:"trainer"`
	Deployment   *fileTopDeploy   `toml:"deployment"`
	Orchestrator fileOrchestrator `toml:"orchestrator"`
}

type fileInference struct {
	Model                     string          `toml:"model"`
	EnableExpertParallel      *bool           `toml:"enable_expert_parallel"`
	EnableDBO                 *bool           `toml:"enable_dbo"`
	EnableEPLB                *bool           `toml:"enable_eplb"`
	EnableReturnRoutedExperts *bool           `toml:"enable_return_routed_experts"`
	Parallel                  fileParallel    `toml:"parallel"`
	Deployment                fileInferDeploy `toml:"deployment"`
	KVCacheOffload            *fileOffload    `toml:"kv_cache_offload"`
	VLLMExtra                 map[string]any  `toml:"vllm_extra"`
	VLLM                      map[string]any  `toml:"vllm"` // prime-rl's current pass-through table
	Server                    fileServer      `toml:"server"`
	Router                    fileRouter      `toml:"router"`
	BackendPort               *int            `toml:"backend_port"`
	Slurm                     *fileSlurm      `toml:"slurm"`
}

type fileParallel struct {
	TP *int `toml:"tp"`
	DP *int `toml:"dp"`
}

type fileInferDeploy struct {
	Type                   string            `toml:"type"`
	NumNodes               *int              `toml:"num_nodes"`
	NumReplicas            *int              `toml:"num_replicas"`
	GPUsPerNode            *int              `toml:"gpus_per_node"`
	RouterPort             *int              `toml:"router_port"`
	RouterPolicy           *string           `toml:"router_policy"`
	BackendPort            *int              `toml:"backend_port"`
	NumPrefillNodes        *int              `toml:"num_prefill_nodes"`
	NumDecodeNodes         *int              `toml:"num_decode_nodes"`
	PrefillNodesPerReplica *int              `toml:"prefill_nodes_per_replica"`
	DecodeNodesPerReplica  *int              `toml:"decode_nodes_per_replica"`
	NumPrefillReplicas     *int              `toml:"num_prefill_replicas"`
	NumDecodeReplicas      *int              `toml:"num_decode_replicas"`
	PrefillPort            *int              `toml:"prefill_port"`
	DecodePort             *int              `toml:"decode_port"`
	PrefillEnvOverrides    map[string]string `toml:"prefill_env_overrides"`
	DecodeEnvOverrides     map[string]string `toml:"decode_env_overrides"`
	PrefillEnvVars         map[string]string `toml:"prefill_env_vars"`
	DecodeEnvVars          map[string]string `toml:"decode_env_vars"`
}

type fileOffload struct {
	Type       string           `toml:"type"`
	CPU        *fileOffloadCPU  `toml:"cpu"`
	Disk       *fileOffloadDisk `toml:"disk"`
	DeviceName string           `toml:"device_name"`
}

type fileOffloadCPU struct {
	NumBytes int64 `toml:"num_bytes"`
}

type fileOffloadDisk struct {
	Path string `toml:"path"`
}

type fileServer struct {
	Port *int   `toml:"port"`
	Host string `toml:"host"`
}

type fileRouter struct {
	Type   string  `toml:"type"`
	Policy *string `toml:"policy"`
}

type fileSlurm struct {
	JobName       string `toml:"job_name"`
	Partition     string `toml:"partition"`
	Account       string `toml:"account"`
	Time          string `toml:"time"`
	Nodelist      string `toml:"nodelist"`
	Exclude       string `toml:"exclude"`
	PreRunCommand string `toml:"pre_run_command"`
}

type fileTrainer struct {
	EnableRouterReplay bool `toml:"enable_router_replay"`
}

type fileTopDeploy struct {
	Type             string `toml:"type"`
	NumTrainNodes    *int   `toml:"num_train_nodes"`
	NumInferNodes    *int   `toml:"num_infer_nodes"`
	NumInferReplicas *int   `toml:"num_infer_replicas"`
	GPUsPerNode      *int   `toml:"gpus_per_node"`
}

type fileOrchestrator struct {
	Student struct {
		Client struct {
			ExtraHeadersFromState map[string]string `toml:"extra_headers_from_state"`
		} `toml:"client"`
	} `toml:"student"`
}

// same returns the value set under either of two names for one setting, or def; both
// set to different values is an error.
func same[T comparable](oldName string, old *T, newName string, cur *T, def T) (T, error) {
	switch {
	case old != nil && cur != nil && *old != *cur:
		return def, fmt.Errorf("%w: %s and %s name the same setting and disagree (%v vs %v); set one", ErrInvalidConfig, oldName, newName, *old, *cur)
	case cur != nil:
		return *cur, nil
	case old != nil:
		return *old, nil
	}
	return def, nil
}

func sameEnv(oldName string, old map[string]string, newName string, cur map[string]string) (map[string]string, error) {
	if old != nil && cur != nil {
		return nil, fmt.Errorf("%w: %s and %s name the same setting; set one", ErrInvalidConfig, oldName, newName)
	}
	if cur != nil {
		return cur, nil
	}
	return old, nil
}

// vllmTyped maps keys of prime-rl's [inference.vllm] table onto typed fields.
var vllmTyped = map[string]bool{
	"model": true, "tensor_parallel_size": true, "data_parallel_size": true,
	"enable_expert_parallel": true, "enable_dbo": true, "enable_eplb": true,
	"enable_return_routed_experts": true,
}

func (f *fileConfig) resolve() (*Config, error) {
	in := &f.Inference
	d := &in.Deployment

	// [inference.vllm] carries typed settings under vLLM's names; lift them out first.
	extra := map[string]any{}
	for k, v := range in.VLLMExtra {
		extra[snake(k)] = v
	}
	for k, v := range in.VLLM {
		k = snake(k)
		if vllmTyped[k] {
			if err := liftVLLM(in, k, v); err != nil {
				return nil, err
			}
			continue
		}
		if _, dup := extra[k]; dup {
			return nil, fmt.Errorf("%w: inference.vllm.%s and inference.vllm_extra.%s are the same setting; set one", ErrInvalidConfig, k, k)
		}
		extra[k] = v
	}

	cfg := &Config{Model: in.Model, VLLMExtra: extra, RouterReplay: f.Trainer.EnableRouterReplay}
	var err error
	if cfg.TP, err = same("inference.parallel.tp", in.Parallel.TP, "", nil, 1); err != nil {
		return nil, err
	}
	if cfg.DP, err = same("inference.parallel.dp", in.Parallel.DP, "", nil, 0); err != nil {
		return nil, err
	}

	dt := DeploymentType(d.Type)
	if dt == "" {
		dt = SingleNode
	}
	dep := Deployment{Type: dt}
	defNodes := 1
	if dt == MultiNode {
		defNodes = defaultMultiNodes
	}
	if dep.NumNodes, err = same("inference.deployment.num_nodes", d.NumNodes, "", nil, defNodes); err != nil {
		return nil, err
	}
	var topGPUs *int
	if f.Deployment != nil {
		topGPUs = f.Deployment.GPUsPerNode
	}
	if dep.GPUsPerNode, err = same("inference.deployment.gpus_per_node", d.GPUsPerNode, "deployment.gpus_per_node", topGPUs, defaultGPUsPerNode); err != nil {
		return nil, err
	}
	if dep.RouterPort, err = same("inference.deployment.router_port", d.RouterPort, "inference.server.port", in.Server.Port, defaultRouterPort); err != nil {
		return nil, err
	}
	if dep.BackendPort, err = same("inference.deployment.backend_port", d.BackendPort, "inference.backend_port", in.BackendPort, dep.RouterPort+100); err != nil {
		return nil, err
	}
	if cfg.RouterPolicy, err = same("inference.deployment.router_policy", d.RouterPolicy, "inference.router.policy", in.Router.Policy, defaultRouterPolicy); err != nil {
		return nil, err
	}
	if in.Router.Type != "" && in.Router.Type != "vllm-router" {
		return nil, fmt.Errorf("%w: inference.router.type %q: only vllm-router (served by switchyard) is supported", ErrInvalidConfig, in.Router.Type)
	}

	setPD := d.NumPrefillNodes != nil || d.NumDecodeNodes != nil || d.PrefillNodesPerReplica != nil ||
		d.DecodeNodesPerReplica != nil || d.NumPrefillReplicas != nil || d.NumDecodeReplicas != nil ||
		d.PrefillPort != nil || d.DecodePort != nil || d.PrefillEnvOverrides != nil || d.DecodeEnvOverrides != nil ||
		d.PrefillEnvVars != nil || d.DecodeEnvVars != nil
	if setPD && dt != Disaggregated {
		return nil, fmt.Errorf("%w: inference.deployment: prefill/decode settings need type = \"disaggregated\" (type is %q)", ErrInvalidConfig, dt)
	}
	if dt == Disaggregated {
		p, dd := &dep.Prefill, &dep.Decode
		if p.NodesPerReplica, err = same("inference.deployment.num_prefill_nodes", d.NumPrefillNodes, "inference.deployment.prefill_nodes_per_replica", d.PrefillNodesPerReplica, 1); err != nil {
			return nil, err
		}
		if dd.NodesPerReplica, err = same("inference.deployment.num_decode_nodes", d.NumDecodeNodes, "inference.deployment.decode_nodes_per_replica", d.DecodeNodesPerReplica, 1); err != nil {
			return nil, err
		}
		if p.Replicas, err = same("inference.deployment.num_prefill_replicas", d.NumPrefillReplicas, "", nil, 1); err != nil {
			return nil, err
		}
		if dd.Replicas, err = same("inference.deployment.num_decode_replicas", d.NumDecodeReplicas, "", nil, 1); err != nil {
			return nil, err
		}
		if p.Port, err = same("inference.deployment.prefill_port", d.PrefillPort, "", nil, defaultPrefillPort); err != nil {
			return nil, err
		}
		if dd.Port, err = same("inference.deployment.decode_port", d.DecodePort, "", nil, defaultDecodePort); err != nil {
			return nil, err
		}
		if p.Env, err = sameEnv("inference.deployment.prefill_env_overrides", d.PrefillEnvOverrides, "inference.deployment.prefill_env_vars", d.PrefillEnvVars); err != nil {
			return nil, err
		}
		if dd.Env, err = sameEnv("inference.deployment.decode_env_overrides", d.DecodeEnvOverrides, "inference.deployment.decode_env_vars", d.DecodeEnvVars); err != nil {
			return nil, err
		}
		if d.NumNodes != nil && *d.NumNodes != p.Nodes()+dd.Nodes() {
			return nil, fmt.Errorf("%w: inference.deployment.num_nodes = %d but prefill (%d×%d) + decode (%d×%d) nodes = %d",
				ErrInvalidConfig, *d.NumNodes, p.Replicas, p.NodesPerReplica, dd.Replicas, dd.NodesPerReplica, p.Nodes()+dd.Nodes())
		}
		dep.NumNodes = p.Nodes() + dd.Nodes()
	}
	cfg.Deployment = dep

	// Disaggregated turns expert parallelism on and EPLB off unless the file says otherwise.
	cfg.EnableExpertParallel = boolOr(in.EnableExpertParallel, dt == Disaggregated)
	cfg.EnableDBO = boolOr(in.EnableDBO, false)
	cfg.EnableEPLB = boolOr(in.EnableEPLB, false)
	cfg.EnableReturnRoutedExperts = boolOr(in.EnableReturnRoutedExperts, false)
	if cfg.RouterReplay {
		if in.EnableReturnRoutedExperts != nil && !*in.EnableReturnRoutedExperts {
			return nil, fmt.Errorf("%w: trainer.enable_router_replay needs inference.enable_return_routed_experts, which is set to false", ErrInvalidConfig)
		}
		cfg.EnableReturnRoutedExperts = true
	}

	// Inference replicas: the top-level [deployment] multiplies the inference deployment.
	var topReplicas, topInferNodes *int
	if top := f.Deployment; top != nil {
		if top.Type != "" && top.Type != string(SingleNode) && top.Type != string(MultiNode) {
			return nil, fmt.Errorf("%w: deployment.type %q: want single_node or multi_node", ErrInvalidConfig, top.Type)
		}
		topReplicas, topInferNodes = top.NumInferReplicas, top.NumInferNodes
		if top.NumTrainNodes != nil {
			cfg.TrainNodes = *top.NumTrainNodes
		}
	}
	if cfg.Replicas, err = same("inference.deployment.num_replicas", d.NumReplicas, "deployment.num_infer_replicas", topReplicas, 1); err != nil {
		return nil, err
	}
	if topInferNodes != nil && *topInferNodes != dep.NumNodes {
		return nil, fmt.Errorf("%w: deployment.num_infer_nodes = %d (per inference replica) but [inference.deployment] needs %d nodes per replica%s",
			ErrInvalidConfig, *topInferNodes, dep.NumNodes, nodeBreakdown(dep))
	}

	if o := in.KVCacheOffload; o != nil {
		kv := &KVCacheOffload{Type: OffloadType(o.Type), DeviceName: o.DeviceName}
		if kv.Type == "" {
			kv.Type = OffloadNative
		}
		if o.CPU != nil {
			kv.CPUBytes = o.CPU.NumBytes
		}
		if o.Disk != nil {
			kv.DiskPath = o.Disk.Path
			if kv.DiskPath == "" {
				return nil, fmt.Errorf("%w: inference.kv_cache_offload.disk.path is empty", ErrInvalidConfig)
			}
		}
		kv.noCPUTier = o.CPU == nil
		cfg.KVCacheOffload = kv
	}
	if s := in.Slurm; s != nil {
		cfg.Slurm = &Slurm{JobName: s.JobName, Partition: s.Partition, Account: s.Account, Time: s.Time,
			Nodelist: s.Nodelist, Exclude: s.Exclude, PreRunCommand: s.PreRunCommand}
		if cfg.Slurm.JobName == "" {
			cfg.Slurm.JobName = "switchyard"
		}
	}

	headers := f.Orchestrator.Student.Client.ExtraHeadersFromState
	for h := range headers {
		cfg.SessionHeaders = append(cfg.SessionHeaders, strings.ToLower(h))
	}
	sort.Strings(cfg.SessionHeaders)
	if len(cfg.SessionHeaders) == 0 {
		cfg.SessionHeaders = []string{defaultSessionHdr}
	}
	return cfg, nil
}

func nodeBreakdown(d Deployment) string {
	if d.Type != Disaggregated {
		return ""
	}
	return fmt.Sprintf(" (prefill %d×%d + decode %d×%d)", d.Prefill.Replicas, d.Prefill.NodesPerReplica, d.Decode.Replicas, d.Decode.NodesPerReplica)
}

// liftVLLM moves one typed key of [inference.vllm] into the seed-named field, refusing
// a second, different value for the same setting.
func liftVLLM(in *fileInference, key string, v any) error {
	conflict := func(seed string) error {
		return fmt.Errorf("%w: inference.vllm.%s and %s name the same setting; set one", ErrInvalidConfig, key, seed)
	}
	switch key {
	case "model":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%w: inference.vllm.model must be a string", ErrInvalidConfig)
		}
		if in.Model != "" && in.Model != s {
			return conflict("inference.model")
		}
		in.Model = s
	case "tensor_parallel_size", "data_parallel_size":
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("%w: inference.vllm.%s must be an integer", ErrInvalidConfig, key)
		}
		dst, seed := &in.Parallel.TP, "inference.parallel.tp"
		if key == "data_parallel_size" {
			dst, seed = &in.Parallel.DP, "inference.parallel.dp"
		}
		if *dst != nil && int64(**dst) != n {
			return conflict(seed)
		}
		i := int(n)
		*dst = &i
	default: // the enable_* booleans
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("%w: inference.vllm.%s must be a boolean", ErrInvalidConfig, key)
		}
		dst := map[string]**bool{
			"enable_expert_parallel": &in.EnableExpertParallel, "enable_dbo": &in.EnableDBO,
			"enable_eplb": &in.EnableEPLB, "enable_return_routed_experts": &in.EnableReturnRoutedExperts,
		}[key]
		if *dst != nil && **dst != b {
			return conflict("inference." + key)
		}
		*dst = &b
	}
	return nil
}

func boolOr(p *bool, def bool) bool {
	if p != nil {
		return *p
	}
	return def
}

// snake normalises a vLLM option name: "max-model-len" → "max_model_len".
func snake(k string) string { return strings.ReplaceAll(k, "-", "_") }
