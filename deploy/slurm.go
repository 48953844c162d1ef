package deploy

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// SlurmOptions shape the rendered sbatch script. Empty fields fall back to the
// config's [inference.slurm] table, then to the defaults named here.
type SlurmOptions struct {
	// Config is the deployment TOML, embedded verbatim so every node gets it through the
	// job itself (srun's stdin), with no shared filesystem assumed. Required.
	Config []byte
	// JobName, Partition, Account, Time, Nodelist and Exclude become #SBATCH lines
	// (override [inference.slurm]); empty means not set. JobName defaults to "switchyard".
	JobName, Partition, Account, Time, Nodelist, Exclude string
	// Binary is the switchyard executable on the nodes; the script lets $SWITCHYARD
	// override it at submit time. Default: this process's executable.
	Binary string
	// EngineCmd is passed to `switchyard launch --engine-cmd` (e.g. "sim"); empty runs vllm.
	EngineCmd string
	// MaxRestarts is passed to `switchyard launch --max-restarts`.
	MaxRestarts int
	// LocalIPCommand prints the node's own address. Default `hostname -I | awk '{print
	// $1}'`; where nodes share a network namespace (a local emulated SLURM) use
	// `getent hosts "$(hostname)" | awk '{print $1}'`.
	LocalIPCommand string
	// BindLocalIP makes engines and routers listen on the node's own address rather than
	// 0.0.0.0 (needed when emulated nodes share one port space).
	BindLocalIP bool
	// GPUsPerNode requests GPUs with --gpus-per-node; 0 means the config's gpus_per_node,
	// -1 means no GPU request (clusters without GRES).
	GPUsPerNode int
	// Output is the #SBATCH --output path. Default "switchyard-%j.out".
	Output string
	// URLFile is where the job writes its router URLs, one per inference replica
	// (prime-rl's INFER_URLS contract). Default "$SLURM_SUBMIT_DIR/switchyard-$SLURM_JOB_ID.urls".
	URLFile string
}

const (
	nodeScriptEOF   = "SWITCHYARD_NODE"
	configScriptEOF = "SWITCHYARD_CONFIG"
)

// RenderSlurm renders an sbatch script that runs `switchyard launch` once per inference
// node (one srun task per node), each node taking its rank from SLURM_PROCID and the
// hosts from `scontrol show hostnames`. The first node's launcher to fail fails the
// step (--kill-on-bad-exit) and so the job.
func RenderSlurm(cfg *Config, opts SlurmOptions) (string, error) {
	if cfg == nil || len(opts.Config) == 0 {
		return "", fmt.Errorf("%w: RenderSlurm needs the config and its TOML text", ErrInvalidConfig)
	}
	for _, eof := range []string{nodeScriptEOF, configScriptEOF} {
		if bytes.Contains(opts.Config, []byte(eof)) {
			return "", fmt.Errorf("%w: the config may not contain the line %s (it delimits the embedded copy)", ErrInvalidConfig, eof)
		}
	}
	s := Slurm{}
	if cfg.Slurm != nil {
		s = *cfg.Slurm
	}
	pick := func(flagValue, cfgValue, def string) string {
		if flagValue != "" {
			return flagValue
		}
		if cfgValue != "" {
			return cfgValue
		}
		return def
	}
	binary := opts.Binary
	if binary == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("locating the switchyard binary: %w", err)
		}
		binary = self
	}
	gpus := opts.GPUsPerNode
	if gpus == 0 {
		gpus = cfg.Deployment.GPUsPerNode
	}
	localIP := pick(opts.LocalIPCommand, "", `hostname -I | awk '{print $1}'`)
	urlFile := pick(opts.URLFile, "", `${SLURM_SUBMIT_DIR:-.}/switchyard-${SLURM_JOB_ID}.urls`)

	// The plan on placeholder hosts gives the layout comment and the router positions.
	plan, err := BuildPlan(cfg, nil, PlanOptions{})
	if err != nil {
		return "", err
	}
	infer, total := cfg.InferenceNodes(), cfg.TotalNodes()

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("#!/bin/bash")
	w("#SBATCH --job-name=%s", pick(opts.JobName, s.JobName, "switchyard"))
	w("#SBATCH --nodes=%d", total)
	w("#SBATCH --ntasks-per-node=1")
	if gpus > 0 {
		w("#SBATCH --gpus-per-node=%d", gpus)
	}
	for _, kv := range [][2]string{{"partition", pick(opts.Partition, s.Partition, "")}, {"account", pick(opts.Account, s.Account, "")},
		{"time", pick(opts.Time, s.Time, "")}, {"nodelist", pick(opts.Nodelist, s.Nodelist, "")}, {"exclude", pick(opts.Exclude, s.Exclude, "")}} {
		if kv[1] != "" {
			w("#SBATCH --%s=%s", kv[0], kv[1])
		}
	}
	w("#SBATCH --output=%s", pick(opts.Output, "", "switchyard-%j.out"))
	w("#")
	w("# Rendered by `switchyard deploy slurm`: %s, %s.", plan.Shape, cfg.Model)
	w("# %s", plan.Summary)
	w("# Every inference node runs `switchyard launch` with the config embedded below; it starts")
	w("# that node's vLLM workers and, on each replica's head node, the router. What runs where")
	w("# (N = the N-th host of `scontrol show hostnames`):")
	for _, n := range plan.Nodes {
		if n.Kind == "unused" {
			continue
		}
		var names []string
		for _, p := range n.Processes {
			names = append(names, p.Name)
		}
		what := n.Label
		if len(names) > 0 {
			what += ": " + strings.Join(abbreviate(names, 3), ", ")
		}
		w("#   node %d: %s", n.Rank, what)
	}
	w("set -euo pipefail")
	w("")
	w("SWITCHYARD=${SWITCHYARD:-%s}", shellQuote(binary))
	w("NUM_INFER_NODES=%d", infer)
	w(`HOSTNAMES=( $(scontrol show hostnames "$SLURM_JOB_NODELIST") )`)
	w(`if (( ${#HOSTNAMES[@]} < %d )); then`, total)
	w(`  echo "switchyard: the job has ${#HOSTNAMES[@]} nodes, the deployment needs %d" >&2`, total)
	w("  exit 1")
	w("fi")
	w(`NODES=$(IFS=,; echo "${HOSTNAMES[*]}")`)
	w(`INFER_NODES=$(IFS=,; echo "${HOSTNAMES[*]:0:NUM_INFER_NODES}")`)
	if cfg.TrainNodes > 0 {
		w(`TRAIN_NODES=$(IFS=,; echo "${HOSTNAMES[*]:NUM_INFER_NODES:%d}") # for the trainer; switchyard starts nothing there`, cfg.TrainNodes)
	}
	w("")
	w("# The client contract (prime-rl's INFER_URLS): one router URL per inference replica.")
	var urls []string
	for _, r := range plan.Replicas {
		urls = append(urls, fmt.Sprintf("http://${HOSTNAMES[%d]}:%d/v1", r.HeadRank, cfg.Deployment.RouterPort))
	}
	w(`INFER_URLS="%s"`, strings.Join(urls, ","))
	w(`URL_FILE="%s"`, urlFile)
	w(`echo "$INFER_URLS" > "$URL_FILE"`)
	w(`echo "switchyard: INFER_URLS=$INFER_URLS (also in $URL_FILE)"`)
	w("")
	w("# One task per inference node. srun hands this stdin to every task, so the config")
	w("# reaches each node through the job; each node keeps its copy in a node-local")
	w("# directory keyed by job and node (emulated nodes may share /tmp).")
	launch := []string{`"$SWITCHYARD"`, "launch", `"$WORK/config.toml"`, "--nodes", `"$NODES"`, "--node-rank", `"$SLURM_PROCID"`}
	if opts.BindLocalIP {
		launch = append(launch, "--bind", `"$LOCAL_IP"`)
	}
	if opts.EngineCmd != "" {
		launch = append(launch, "--engine-cmd", shellQuote(opts.EngineCmd))
	}
	if opts.MaxRestarts > 0 {
		launch = append(launch, "--max-restarts", strconv.Itoa(opts.MaxRestarts))
	}
	w(`srun --kill-on-bad-exit=1 --nodes="$NUM_INFER_NODES" --ntasks="$NUM_INFER_NODES" --ntasks-per-node=1 \`)
	w(`  --nodelist="$INFER_NODES" bash -s -- "$SWITCHYARD" "$NODES" <<'%s' &`, nodeScriptEOF)
	w("set -uo pipefail")
	w(`SWITCHYARD=$1 NODES=$2`)
	w("LOCAL_IP=$(%s)", localIP)
	w(`WORK="${TMPDIR:-/tmp}/switchyard-${SLURM_JOB_ID}-${SLURMD_NODENAME}"`)
	w(`mkdir -p "$WORK"`)
	w(`cat > "$WORK/config.toml" <<'%s'`, configScriptEOF)
	b.Write(opts.Config)
	if !bytes.HasSuffix(opts.Config, []byte("\n")) {
		b.WriteString("\n")
	}
	w("%s", configScriptEOF)
	w(`echo "switchyard: node rank $SLURM_PROCID is $(hostname) ($LOCAL_IP)"`)
	w("%s &", strings.Join(launch, " "))
	w("LAUNCHER=$!")
	w("# Clean up only what this task started: the launcher stops its workers' process groups.")
	w(`trap 'kill -TERM "$LAUNCHER" 2>/dev/null; wait "$LAUNCHER"; rm -rf "$WORK"; exit 143' TERM INT`)
	w(`wait "$LAUNCHER"`)
	w("rc=$?")
	w(`rm -rf "$WORK"`)
	w("exit $rc")
	w("%s", nodeScriptEOF)
	w("")
	w("# The first component to exit ends the job: a failing launcher fails the step")
	w("# (--kill-on-bad-exit), and the batch script exits with the step's code.")
	w("set +e")
	w("wait -n")
	w("rc=$?")
	w(`echo "switchyard: job step ended with exit code $rc"`)
	w("exit $rc")
	return b.String(), nil
}

// sbatchCommand submits a script read from stdin; a variable so tests can fake it.
var sbatchCommand = []string{"sbatch", "--parsable"}

// SlurmMain is `switchyard deploy slurm CONFIG [--partition P --account A --time T
// --nodelist N --exclude N --job-name J] [--engine-cmd CMD] [--local-ip-cmd CMD]
// [--bind-local-ip] [--binary PATH] [--dry-run | --submit]`: it prints the sbatch script
// (--dry-run, the default) or submits it with sbatch and prints the job id.
func SlurmMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("deploy slurm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o SlurmOptions
	fs.StringVar(&o.Partition, "partition", "", "SLURM partition (default: [inference.slurm] partition)")
	fs.StringVar(&o.Account, "account", "", "SLURM account")
	fs.StringVar(&o.Time, "time", "", "time limit, e.g. 24:00:00")
	fs.StringVar(&o.Nodelist, "nodelist", "", "nodes to run on (SLURM syntax)")
	fs.StringVar(&o.Exclude, "exclude", "", "nodes to avoid (SLURM syntax)")
	fs.StringVar(&o.JobName, "job-name", "", "job name (default switchyard)")
	fs.StringVar(&o.Output, "output", "", "job log path (default switchyard-%j.out)")
	fs.StringVar(&o.Binary, "binary", "", "switchyard executable on the nodes (default: this binary)")
	fs.StringVar(&o.EngineCmd, "engine-cmd", "", `command replacing "vllm" on the nodes (e.g. "sim")`)
	fs.IntVar(&o.MaxRestarts, "max-restarts", 0, "restarts per worker before a death fails the job")
	fs.StringVar(&o.LocalIPCommand, "local-ip-cmd", "", `shell command printing the node's address (default: hostname -I | awk '{print $1}')`)
	fs.BoolVar(&o.BindLocalIP, "bind-local-ip", false, "listen on the node's address instead of 0.0.0.0")
	fs.IntVar(&o.GPUsPerNode, "gpus-per-node", 0, "GPUs to request per node (default gpus_per_node; -1: no GPU request)")
	fs.StringVar(&o.URLFile, "url-file", "", "where the job writes the router URLs")
	dryRun := fs.Bool("dry-run", false, "print the script (the default)")
	submit := fs.Bool("submit", false, "submit the script with sbatch and print the job id")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard deploy slurm CONFIG.toml [--partition P --account A --time T --nodelist N] [--dry-run|--submit]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 || (*dryRun && *submit) {
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "switchyard deploy slurm:", err)
		return 1
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return fail(fmt.Errorf("reading deployment config: %w", err))
	}
	cfg, err := parse(data, pos[0])
	if err != nil {
		return fail(err)
	}
	o.Config = data
	script, err := RenderSlurm(cfg, o)
	if err != nil {
		return fail(err)
	}
	if !*submit {
		_, _ = io.WriteString(stdout, script)
		return 0
	}
	cmd := exec.CommandContext(context.Background(), sbatchCommand[0], sbatchCommand[1:]...)
	cmd.Stdin = strings.NewReader(script)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return fail(fmt.Errorf("sbatch: %w", err))
	}
	job, _, _ := strings.Cut(strings.TrimSpace(string(out)), ";")
	where := o.URLFile
	if where == "" {
		where = "switchyard-" + job + ".urls in the submit directory"
	}
	fmt.Fprintf(stdout, "submitted job %s; its router URLs will be written to %s\n", job, where)
	return 0
}
