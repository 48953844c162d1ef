package deploy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// ProcessRole says what a planned process is.
type ProcessRole string

const (
	// RolePrefill is a disaggregated prefill engine.
	RolePrefill ProcessRole = "prefill"
	// RoleDecode is a disaggregated decode engine.
	RoleDecode ProcessRole = "decode"
	// RoleWorker is an engine of a single_node or multi_node deployment.
	RoleWorker ProcessRole = "worker"
	// RoleRouter is an inference replica's router; the launcher runs it in-process.
	RoleRouter ProcessRole = "router"
	// RoleKVStore is a Mooncake master or client process (mooncake offload only).
	RoleKVStore ProcessRole = "kvstore"
)

// Ports and values the plan uses that the config does not set, as prime-rl uses them.
const (
	dpRPCPort            = 13345 // --data-parallel-rpc-port on a group's head
	nixlSideChannelBase  = 5600  // VLLM_NIXL_SIDE_CHANNEL_PORT of local rank 0
	mooncakeMasterPort   = 50051
	mooncakeMetadataPort = 8080
	mooncakeClientPort   = 50052
	noBootstrap          = "none" // vllm-router --prefill URL BOOTSTRAP_PORT|none
)

// PlanOptions tune how a plan binds; the zero value is what production uses.
type PlanOptions struct {
	// BindHost is the address engines and routers listen on: "" means 0.0.0.0, "node"
	// means each node's own host from the node list (needed when several emulated nodes
	// share one network namespace, as under a local SLURM), anything else is used as is.
	BindHost string
}

// Plan is every process of a deployment, per node. It is plain data: print it, or hand
// it to Launch.
type Plan struct {
	// Model is the served model.
	Model string `json:"model"`
	// Shape names the layout: single_node, multi_node (multi-replica), multi_node
	// (wide-EP) or disaggregated.
	Shape string `json:"shape"`
	// Summary is one line on sizes: replicas, nodes, tp, ranks.
	Summary string `json:"summary"`
	// Replicas are the inference replicas, each behind one router.
	Replicas []Replica `json:"replicas"`
	// Nodes are all nodes in job order: inference nodes first, then trainer nodes.
	Nodes []Node `json:"nodes"`

	cfg  *Config
	opts PlanOptions
}

// Replica is one inference replica: its router and the workers behind it.
type Replica struct {
	// Index is the replica's number, from 0.
	Index int `json:"index"`
	// HeadRank is the node (index into Plan.Nodes) that runs the router.
	HeadRank int `json:"head_rank"`
	// RouterURL is what clients use (prime-rl's INFER_URLS entry): http://head:port/v1.
	RouterURL string `json:"router_url"`
	// Workers, Prefill and Decode are the engine URLs the router is given; Workers for
	// single_node and multi_node, Prefill and Decode for disaggregated.
	Workers []string `json:"workers,omitempty"`
	Prefill []string `json:"prefill,omitempty"`
	Decode  []string `json:"decode,omitempty"`
}

// Node is one host and what runs on it.
type Node struct {
	// Rank is the node's index in the node list (SLURM_PROCID under srun).
	Rank int `json:"rank"`
	// Host is the node's name or address as given.
	Host string `json:"host"`
	// Kind is "inference", "trainer" (nothing launched) or "unused".
	Kind string `json:"kind"`
	// Replica is the inference replica the node belongs to; -1 for other kinds.
	Replica int `json:"replica"`
	// Label says the node's part, e.g. "replica 0, prefill replica 1, node 0 of 2".
	Label string `json:"label"`
	// Processes run on this node, engines first, the router last.
	Processes []Process `json:"processes,omitempty"`
	// Files are written on the node before its processes start.
	Files []File `json:"files,omitempty"`
}

// Process is one planned process.
type Process struct {
	// Name is unique in the plan and prefixes the process's log lines, e.g.
	// "r0.prefill1.dp5" (replica 0, prefill replica 1, data-parallel rank 5).
	Name string `json:"name"`
	// Role is prefill, decode, worker, router or kvstore.
	Role ProcessRole `json:"role"`
	// Argv is the full command; Argv[0] is "vllm" for engines (the launcher may replace
	// it) and "vllm-router" for routers.
	Argv []string `json:"argv"`
	// Env is set on top of the launcher's environment.
	Env map[string]string `json:"env,omitempty"`
	// Port is the HTTP port; 0 for a headless engine.
	Port int `json:"port,omitempty"`
	// URL is how peers reach the process, http://host:port; empty when it serves no HTTP.
	URL string `json:"url,omitempty"`
}

// File is a file the launcher writes on a node before starting processes.
type File struct {
	Path    string `json:"path"`
	Content string `json:"content"`
}

// TotalNodes is the number of nodes a deployment needs for inference (all replicas)
// plus trainer nodes.
func (c *Config) TotalNodes() int { return c.InferenceNodes() + c.TrainNodes }

// InferenceNodes is the number of nodes of all inference replicas.
func (c *Config) InferenceNodes() int { return c.Replicas * c.Deployment.NumNodes }

// WideEP reports whether the deployment is one data-parallel group over several nodes.
func (c *Config) WideEP() bool {
	return c.Deployment.Type == MultiNode && c.EnableExpertParallel
}

func placeholderHosts(n int) []string {
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = "node" + strconv.Itoa(i+1)
	}
	return hosts
}

// BuildPlan lays the deployment out on nodes: the first InferenceNodes() hosts run the
// inference replicas in order, the next TrainNodes are left to the trainer. nil nodes
// means placeholders node1…nodeN. The plan fails when hosts are too few or two
// processes on one host would share a port.
func BuildPlan(cfg *Config, nodes []string, opts PlanOptions) (*Plan, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: nil config", ErrInvalidConfig)
	}
	if nodes == nil {
		nodes = placeholderHosts(cfg.TotalNodes())
	}
	return buildPlan(cfg, nodes, opts)
}

func buildPlan(cfg *Config, hosts []string, opts PlanOptions) (*Plan, error) {
	need := cfg.InferenceNodes()
	if len(hosts) < need {
		return nil, fmt.Errorf("%w: the deployment needs %d inference nodes (%d replica(s) × %d), got %d host(s)",
			ErrInvalidConfig, need, cfg.Replicas, cfg.Deployment.NumNodes, len(hosts))
	}
	for i, h := range hosts {
		if strings.TrimSpace(h) == "" || strings.ContainsAny(h, " \t/") {
			return nil, fmt.Errorf("%w: node %d: %q is not a host name", ErrInvalidConfig, i, h)
		}
	}
	p := &Plan{Model: cfg.Model, cfg: cfg, opts: opts}
	b := planBuilder{cfg: cfg, opts: opts, plan: p}
	for i, h := range hosts {
		n := Node{Rank: i, Host: h, Replica: -1}
		switch {
		case i < need:
			n.Kind, n.Replica = "inference", i/cfg.Deployment.NumNodes
		case i < need+cfg.TrainNodes:
			n.Kind, n.Label = "trainer", "trainer node (not launched by switchyard)"
		default:
			n.Kind, n.Label = "unused", "not part of the deployment"
		}
		p.Nodes = append(p.Nodes, n)
	}
	for r := 0; r < cfg.Replicas; r++ {
		b.replica(r)
	}
	p.Shape, p.Summary = shapeOf(cfg)
	if err := checkPorts(p); err != nil {
		return nil, err
	}
	return p, nil
}

func shapeOf(c *Config) (shape, summary string) {
	d := c.Deployment
	reps := fmt.Sprintf("%s × %s", plural(c.Replicas, "inference replica"), plural(d.NumNodes, "node"))
	switch {
	case d.Type == Disaggregated:
		perNode := d.GPUsPerNode / c.TP
		return string(Disaggregated), fmt.Sprintf("%s: prefill %s × %s, decode %s × %s; tp=%d, %s per node, one vllm serve per rank",
			reps, plural(d.Prefill.Replicas, "replica"), plural(d.Prefill.NodesPerReplica, "node"), plural(d.Decode.Replicas, "replica"),
			plural(d.Decode.NodesPerReplica, "node"), c.TP, plural(perNode, "rank"))
	case c.WideEP():
		return "multi_node (wide-EP)", fmt.Sprintf("%s: one expert-parallel group per replica, tp=%d dp=%d, %s per node", reps, c.TP, max(c.DP, 1), plural(max(c.DP, 1)/d.NumNodes, "rank"))
	case d.Type == MultiNode:
		return "multi_node (multi-replica)", fmt.Sprintf("%s: one independent engine per node, tp=%d dp=%d", reps, c.TP, max(c.DP, 1))
	default:
		return string(SingleNode), fmt.Sprintf("%s: tp=%d dp=%d", reps, c.TP, max(c.DP, 1))
	}
}

// plural is "1 node" or "2 nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

type planBuilder struct {
	cfg  *Config
	opts PlanOptions
	plan *Plan
}

func (b *planBuilder) bind(host string) string {
	switch b.opts.BindHost {
	case "":
		return "0.0.0.0"
	case "node":
		return host
	default:
		return b.opts.BindHost
	}
}

func (b *planBuilder) node(rank int) *Node { return &b.plan.Nodes[rank] }

func url(host string, port int) string { return "http://" + host + ":" + strconv.Itoa(port) }

// replica lays out inference replica r on its block of nodes.
func (b *planBuilder) replica(r int) {
	c, d := b.cfg, b.cfg.Deployment
	first := r * d.NumNodes
	rep := Replica{Index: r, HeadRank: first}
	head := b.node(first)
	rep.RouterURL = url(head.Host, d.RouterPort) + "/v1"

	switch {
	case d.Type == Disaggregated:
		next := first
		for _, role := range []struct {
			kind ProcessRole
			r    Role
		}{{RolePrefill, d.Prefill}, {RoleDecode, d.Decode}} {
			for rr := 0; rr < role.r.Replicas; rr++ {
				urls := b.disaggregatedGroup(r, role.kind, rr, role.r, next)
				if role.kind == RolePrefill {
					rep.Prefill = append(rep.Prefill, urls...)
				} else {
					rep.Decode = append(rep.Decode, urls...)
				}
				next += role.r.NodesPerReplica
			}
		}
	case c.WideEP():
		rep.Workers = b.wideEPGroup(r, first)
	default:
		for i := 0; i < d.NumNodes; i++ {
			n := b.node(first + i)
			n.Label = fmt.Sprintf("replica %d, node %d of %d", r, i, d.NumNodes)
			if d.Type == SingleNode {
				n.Label = fmt.Sprintf("replica %d", r)
			}
			proc := b.engine(fmt.Sprintf("r%d.worker%d", r, i), RoleWorker, n.Host, d.BackendPort)
			proc.Env["CUDA_VISIBLE_DEVICES"] = gpuRange(0, c.TP*max(c.DP, 1))
			proc.Argv = append(proc.Argv, b.parallelFlags(max(c.DP, 1))...)
			proc.Argv = append(proc.Argv, b.featureFlags(RoleWorker)...)
			n.Processes = append(n.Processes, proc)
			rep.Workers = append(rep.Workers, proc.URL)
		}
	}
	if c.KVCacheOffload != nil && c.KVCacheOffload.Type == OffloadMooncake {
		b.mooncake(r, first)
	}
	head.Label += ", router head"
	head.Processes = append(head.Processes, b.router(r, head.Host, rep))
	b.plan.Replicas = append(b.plan.Replicas, rep)
}

// engine starts a `vllm serve` process with its HTTP endpoint and the default env.
func (b *planBuilder) engine(name string, role ProcessRole, host string, port int) Process {
	argv := []string{"vllm", "serve", b.cfg.Model, "--host", b.bind(host), "--port", strconv.Itoa(port)}
	return Process{Name: name, Role: role, Argv: argv, Env: b.baseEnv(host, name), Port: port, URL: url(host, port)}
}

// baseEnv is prime-rl's default inference environment plus a private RPC socket dir,
// because several vLLM processes on one node collide on the default one.
func (b *planBuilder) baseEnv(host, name string) map[string]string {
	env := map[string]string{
		"CUDA_DEVICE_ORDER":            "PCI_BUS_ID",
		"PYTHONUNBUFFERED":             "1",
		"OMP_NUM_THREADS":              "1",
		"VLLM_WORKER_MULTIPROC_METHOD": "spawn",
		"PYTORCH_CUDA_ALLOC_CONF":      "expandable_segments:False",
		"VLLM_ENGINE_READY_TIMEOUT_S":  "4200",
		"VLLM_RPC_BASE_PATH":           "/tmp/switchyard-rpc/" + host + "/" + name,
	}
	if b.cfg.Deployment.Type == Disaggregated {
		env["UCX_TLS"] = "all"
	}
	if kv := b.cfg.KVCacheOffload; kv != nil && kv.Type == OffloadMooncake {
		env["MOONCAKE_CONFIG_PATH"] = mooncakeConfigPath(host)
		env["PYTHONHASHSEED"] = "0"
	}
	return env
}

// parallelFlags are the flags of an engine that owns a whole data-parallel group on
// its node (internal load balancing): -tp, and -dp when > 1.
func (b *planBuilder) parallelFlags(dp int) []string {
	f := []string{"--tensor-parallel-size", strconv.Itoa(b.cfg.TP)}
	if dp > 1 {
		f = append(f, "--data-parallel-size", strconv.Itoa(dp))
	}
	return f
}

// wideEPGroup places one expert-parallel DP group over the replica's nodes: the head
// serves HTTP and balances over all ranks internally; the other nodes run --headless
// engines that join it (vLLM's internal-LB multi-node recipe).
func (b *planBuilder) wideEPGroup(r, first int) []string {
	c, d := b.cfg, b.cfg.Deployment
	dp := max(c.DP, 1)
	local := dp / d.NumNodes
	head := b.node(first)
	for i := 0; i < d.NumNodes; i++ {
		n := b.node(first + i)
		n.Label = fmt.Sprintf("replica %d, expert-parallel group node %d of %d", r, i, d.NumNodes)
		name := fmt.Sprintf("r%d.worker%d", r, i)
		var proc Process
		if i == 0 {
			proc = b.engine(name, RoleWorker, n.Host, d.BackendPort)
		} else {
			proc = Process{Name: name, Role: RoleWorker, Argv: []string{"vllm", "serve", c.Model, "--headless"}, Env: b.baseEnv(n.Host, name)}
		}
		proc.Env["CUDA_VISIBLE_DEVICES"] = gpuRange(0, c.TP*local)
		proc.Argv = append(proc.Argv, b.parallelFlags(dp)...)
		proc.Argv = append(proc.Argv, "--data-parallel-size-local", strconv.Itoa(local),
			"--data-parallel-address", head.Host, "--data-parallel-rpc-port", strconv.Itoa(dpRPCPort))
		if i > 0 {
			proc.Argv = append(proc.Argv, "--data-parallel-start-rank", strconv.Itoa(i*local))
		}
		proc.Argv = append(proc.Argv, b.featureFlags(RoleWorker)...)
		n.Processes = append(n.Processes, proc)
	}
	return []string{head.Processes[0].URL}
}

// disaggregatedGroup places one prefill or decode replica on nodes first… as prime-rl's
// SLURM templates do: one `vllm serve` per data-parallel rank (external load balancing),
// rank k of a node on port+k with GPUs k·tp…k·tp+tp-1 and NIXL side channel 5600+k.
func (b *planBuilder) disaggregatedGroup(r int, kind ProcessRole, rr int, role Role, first int) []string {
	c, d := b.cfg, b.cfg.Deployment
	perNode := d.GPUsPerNode / c.TP
	dp := role.NodesPerReplica * perNode
	head := b.node(first)
	var urls []string
	for i := 0; i < role.NodesPerReplica; i++ {
		n := b.node(first + i)
		n.Label = fmt.Sprintf("replica %d, %s replica %d, node %d of %d", r, kind, rr, i, role.NodesPerReplica)
		for k := 0; k < perNode; k++ {
			rank := i*perNode + k
			proc := b.engine(fmt.Sprintf("r%d.%s%d.dp%d", r, kind, rr, rank), kind, n.Host, role.Port+k)
			proc.Env["CUDA_VISIBLE_DEVICES"] = gpuRange(k*c.TP, c.TP)
			proc.Env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = n.Host
			proc.Env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = strconv.Itoa(nixlSideChannelBase + k)
			for key, v := range role.Env {
				proc.Env[key] = v
			}
			proc.Argv = append(proc.Argv, "--tensor-parallel-size", strconv.Itoa(c.TP))
			// vLLM rejects the external-LB arguments when the group has one rank.
			if dp > 1 {
				proc.Argv = append(proc.Argv, "--data-parallel-size", strconv.Itoa(dp), "--data-parallel-size-local", "1",
					"--data-parallel-rank", strconv.Itoa(rank), "--data-parallel-address", head.Host,
					"--data-parallel-rpc-port", strconv.Itoa(dpRPCPort))
			}
			if _, own := c.VLLMExtra["api_server_count"]; !own {
				proc.Argv = append(proc.Argv, "--api-server-count", "1")
			}
			proc.Argv = append(proc.Argv, b.featureFlags(kind)...)
			n.Processes = append(n.Processes, proc)
			urls = append(urls, proc.URL)
		}
	}
	return urls
}

// featureFlags are the flags after the parallel layout: expert parallelism, the fixed
// P/D all2all backends, DBO/EPLB, prefix caching, the KV connector, routed experts and
// vllm_extra, in that order.
func (b *planBuilder) featureFlags(role ProcessRole) []string {
	c := b.cfg
	var f []string
	if c.EnableExpertParallel {
		f = append(f, "--enable-expert-parallel")
		switch role {
		case RolePrefill:
			f = append(f, "--all2all-backend", "deepep_high_throughput")
		case RoleDecode:
			f = append(f, "--all2all-backend", "deepep_low_latency")
		}
	}
	if c.EnableEPLB {
		f = append(f, "--enable-eplb")
	}
	if c.EnableDBO {
		f = append(f, "--enable-dbo")
	}
	if c.KVCacheOffload != nil {
		f = append(f, "--enable-prefix-caching")
	}
	if role == RoleDecode {
		f = append(f, "--compilation-config", decodeCompilationConfig(c.VLLMExtra["compilation_config"]))
	}
	if kv := kvTransferConfig(c, role); kv != "" {
		f = append(f, "--kv-transfer-config", kv)
	}
	if c.EnableReturnRoutedExperts {
		f = append(f, "--enable-return-routed-experts")
	}
	for _, k := range sortedKeys(c.VLLMExtra) {
		if k == "enable_prefix_caching" && c.KVCacheOffload != nil {
			continue // already on
		}
		if k == "compilation_config" && role == RoleDecode {
			continue // merged above
		}
		f = append(f, extraFlag(k, c.VLLMExtra[k])...)
	}
	return f
}

// decodeCompilationConfig is the decode engines' compilation config: the user's table
// with cudagraph_mode FULL_DECODE_ONLY unless the user chose a mode.
func decodeCompilationConfig(user any) string {
	cc := map[string]any{}
	if m, ok := user.(map[string]any); ok {
		for k, v := range m {
			cc[k] = v
		}
	}
	if _, ok := cc["cudagraph_mode"]; !ok {
		cc["cudagraph_mode"] = "FULL_DECODE_ONLY"
	}
	js, _ := json.Marshal(cc) // decoded TOML always marshals
	return string(js)
}

// extraFlag renders one vllm_extra entry the way vLLM's argparse reads it.
func extraFlag(key string, v any) []string {
	flag := "--" + strings.ReplaceAll(key, "_", "-")
	switch x := v.(type) {
	case bool:
		if x {
			return []string{flag}
		}
		return []string{"--no-" + strings.ReplaceAll(key, "_", "-")}
	case string:
		return []string{flag, x}
	case int64:
		return []string{flag, strconv.FormatInt(x, 10)}
	case float64:
		return []string{flag, strconv.FormatFloat(x, 'g', -1, 64)}
	default: // tables and arrays: vLLM parses JSON for dict- and list-valued options
		js, err := json.Marshal(x)
		if err != nil {
			return []string{flag, fmt.Sprint(x)}
		}
		return []string{flag, string(js)}
	}
}

// kvTransferConfig is the --kv-transfer-config JSON: NIXL for P/D, the offload
// connector for offload, both under MultiConnector when they combine.
func kvTransferConfig(c *Config, role ProcessRole) string {
	var connectors []map[string]any
	if role == RolePrefill || role == RoleDecode {
		connectors = append(connectors, map[string]any{
			"kv_connector": "NixlConnector", "kv_role": "kv_both",
			"kv_connector_extra_config": map[string]any{"num_threads": 1},
		})
	}
	if kv := c.KVCacheOffload; kv != nil {
		switch kv.Type {
		case OffloadMooncake:
			connectors = append(connectors, map[string]any{"kv_connector": "MooncakeStoreConnector", "kv_role": "kv_both"})
		default:
			extra := map[string]any{"cpu_bytes_to_use": kv.CPUBytes}
			if kv.DiskPath != "" {
				extra["spec_name"] = "TieringOffloadingSpec"
				extra["secondary_tiers"] = []any{map[string]any{"type": "fs_python", "root_dir": kv.DiskPath}}
			}
			connectors = append(connectors, map[string]any{"kv_connector": "OffloadingConnector", "kv_role": "kv_both", "kv_connector_extra_config": extra})
		}
	}
	var v any
	switch len(connectors) {
	case 0:
		return ""
	case 1:
		v = connectors[0]
	default:
		v = map[string]any{"kv_connector": "MultiConnector", "kv_role": "kv_both",
			"kv_connector_extra_config": map[string]any{"connectors": connectors}}
	}
	js, _ := json.Marshal(v) // maps of strings and numbers always marshal
	return string(js)
}

// router is the replica's vllm-router command line with every worker URL.
func (b *planBuilder) router(r int, host string, rep Replica) Process {
	c := b.cfg
	port := c.Deployment.RouterPort
	argv := []string{"vllm-router", "--host", b.bind(host), "--port", strconv.Itoa(port), "--policy", c.RouterPolicy,
		// prime-rl's conventions: metrics on port+21000, workers may take 70 min to load.
		"--prometheus-port", strconv.Itoa(port + 21000), "--worker-startup-timeout-secs", "4200"}
	if b.opts.BindHost != "" {
		// Nodes sharing one machine (or one loopback) must not collide on 127.0.0.1.
		argv = append(argv, "--prometheus-host", b.bind(host))
	}
	argv = append(argv, "--request-id-headers")
	argv = append(argv, c.SessionHeaders...)
	if c.Deployment.Type == Disaggregated {
		argv = append(argv, "--vllm-pd-disaggregation")
		for _, u := range rep.Prefill {
			argv = append(argv, "--prefill", u, noBootstrap)
		}
		for _, u := range rep.Decode {
			argv = append(argv, "--decode", u)
		}
	} else {
		argv = append(argv, "--worker-urls")
		argv = append(argv, rep.Workers...)
		// One URL fronts the whole DP group: let the router pin ranks by header.
		if dp := max(c.DP, 1); dp > 1 {
			argv = append(argv, "--intra-node-data-parallel-size", strconv.Itoa(dp))
		}
	}
	return Process{Name: fmt.Sprintf("r%d.router", r), Role: RoleRouter, Argv: argv, Port: port, URL: url(host, port)}
}

func mooncakeConfigPath(host string) string { return "/tmp/switchyard-mooncake/" + host + ".json" }

// mooncake adds the replica's Mooncake store: a master with the metadata server on the
// head, a client contributing cpu.num_bytes of DRAM on every node, and each node's
// MOONCAKE_CONFIG_PATH file.
func (b *planBuilder) mooncake(r, first int) {
	c, kv := b.cfg, b.cfg.KVCacheOffload
	head := b.node(first).Host
	master := []string{"mooncake_master", "-rpc_port=" + strconv.Itoa(mooncakeMasterPort), "-enable_http_metadata_server",
		"-http_metadata_server_port=" + strconv.Itoa(mooncakeMetadataPort), "-default_kv_lease_ttl=3600000"}
	if kv.DiskPath != "" {
		master = append(master, "-enable_offload=true", "-root_fs_dir="+kv.DiskPath)
	}
	metadata := url(head, mooncakeMetadataPort) + "/metadata"
	masterAddr := head + ":" + strconv.Itoa(mooncakeMasterPort)
	for i := 0; i < c.Deployment.NumNodes; i++ {
		n := b.node(first + i)
		var procs []Process
		if i == 0 {
			procs = append(procs, Process{Name: fmt.Sprintf("r%d.mooncake-master", r), Role: RoleKVStore, Argv: master, Port: mooncakeMasterPort})
		}
		client := []string{"mooncake_client", "-host=" + n.Host, "-port=" + strconv.Itoa(mooncakeClientPort),
			"-master_server_address=" + masterAddr, "-metadata_server=" + metadata, "-protocol=rdma",
			"-global_segment_size=" + strconv.FormatInt(kv.CPUBytes, 10)}
		if kv.DeviceName != "" {
			client = append(client, "-device_name="+kv.DeviceName)
		}
		procs = append(procs, Process{Name: fmt.Sprintf("r%d.mooncake-client%d", r, i), Role: RoleKVStore, Argv: client, Port: mooncakeClientPort})
		n.Processes = append(procs, n.Processes...)
		conf, _ := json.Marshal(map[string]any{
			"local_hostname": n.Host, "metadata_server": metadata, "master_server_address": masterAddr,
			"protocol": "rdma", "device_name": kv.DeviceName, "mode": "standalone-store",
			"global_segment_size": 0, "local_buffer_size": 4294967296,
		})
		n.Files = append(n.Files, File{Path: mooncakeConfigPath(n.Host), Content: string(conf) + "\n"})
	}
}

// gpuRange is CUDA_VISIBLE_DEVICES for n GPUs from first: "2,3".
func gpuRange(first, n int) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(first + i)
	}
	return strings.Join(ids, ",")
}

// checkPorts fails when two listeners on one host share a port: HTTP ports, the DP
// coordinator's RPC port on group heads, NIXL side channels (base + global DP rank, as
// vLLM binds them) and Mooncake's ports.
func checkPorts(p *Plan) error {
	byHost := map[string]map[int]string{}
	claim := func(host string, port int, what string) error {
		if port < 1 || port > 65535 {
			return fmt.Errorf("%w: %s on %s: port %d is out of range", ErrInvalidConfig, what, host, port)
		}
		m := byHost[host]
		if m == nil {
			m = map[int]string{}
			byHost[host] = m
		}
		if prev, ok := m[port]; ok {
			return fmt.Errorf("%w: port %d on %s is used twice: %s and %s", ErrInvalidConfig, port, host, prev, what)
		}
		m[port] = what
		return nil
	}
	for _, n := range p.Nodes {
		for _, proc := range n.Processes {
			if proc.Port != 0 {
				if err := claim(n.Host, proc.Port, proc.Name); err != nil {
					return err
				}
			}
			if argValue(proc.Argv, "--data-parallel-address") == n.Host && (argValue(proc.Argv, "--data-parallel-rank") == "0" ||
				(argValue(proc.Argv, "--data-parallel-rank") == "" && argValue(proc.Argv, "--data-parallel-start-rank") == "")) {
				if err := claim(n.Host, dpRPCPort, proc.Name+" data-parallel RPC"); err != nil {
					return err
				}
			}
			if base, ok := proc.Env["VLLM_NIXL_SIDE_CHANNEL_PORT"]; ok {
				bp, _ := strconv.Atoi(base)
				rank, _ := strconv.Atoi(argValue(proc.Argv, "--data-parallel-rank"))
				if err := claim(n.Host, bp+rank, proc.Name+" NIXL side channel"); err != nil {
					return err
				}
			}
			if proc.Role == RoleKVStore && strings.HasPrefix(proc.Argv[0], "mooncake_master") {
				if err := claim(n.Host, mooncakeMetadataPort, proc.Name+" metadata"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// argValue is the value after flag in argv, or "".
func argValue(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

// sortedEnv is env as sorted KEY=VALUE strings.
func sortedEnv(env map[string]string) []string {
	kv := make([]string, 0, len(env))
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return kv
}
