package deploy

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// parseInterspersed parses flags that may come before or after positional arguments
// ("plan config.toml --nodes a,b"), which the flag package alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// PlanMain is `switchyard plan CONFIG [--nodes h1,h2,…] [--format text|json]
// [--bind ADDR|node]`: it prints every process per node. It returns the exit code.
func PlanMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodes := fs.String("nodes", "", "comma-separated hosts in job order (default: placeholders node1…nodeN)")
	format := fs.String("format", "text", "output format: text or json")
	bind := fs.String("bind", "", `listen address of engines and routers: empty for 0.0.0.0, "node" for each node's host`)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard plan CONFIG.toml [--nodes h1,h2,...] [--format text|json] [--bind ADDR|node]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	cfg, err := Load(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	plan, err := BuildPlan(cfg, splitList(*nodes), PlanOptions{BindHost: *bind})
	if err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	if err := plan.Write(stdout, *format); err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	return 0
}

// LaunchMain is `switchyard launch CONFIG [--node-rank N] [--nodes h1,h2,…]
// [--engine-cmd "switchyard sim"|sim] [--max-restarts N] [--bind ADDR|node]`: it runs
// this node's share of the deployment until SIGINT/SIGTERM or ctx ends it. "--engine-cmd
// sim" means this binary's own `sim` subcommand. startRouter runs a replica's router
// in-process on its head node.
func LaunchMain(ctx context.Context, args []string, stdout, stderr io.Writer, startRouter StartRouterFunc) int {
	fs := flag.NewFlagSet("launch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rank := fs.Int("node-rank", -1, "this node's index in the node list (default: SLURM_PROCID, or the only node)")
	nodes := fs.String("nodes", "", "comma-separated hosts in job order (default: SLURM_JOB_NODELIST, or localhost for one node)")
	engine := fs.String("engine-cmd", "", `command replacing "vllm" (e.g. "switchyard sim"; "sim" = this binary's sim)`)
	maxRestarts := fs.Int("max-restarts", 0, "restarts per worker before a death ends the launch")
	bind := fs.String("bind", "", `listen address of engines and routers: empty for 0.0.0.0, "node" for each node's host`)
	healthTimeout := fs.Duration("health-timeout", 4200*time.Second, "how long to wait for workers' /health")
	grace := fs.Duration("stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping workers")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard launch CONFIG.toml [--node-rank N] [--nodes h1,h2,...] [--engine-cmd CMD|sim] [--max-restarts N] [--bind ADDR|node]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "switchyard launch:", err)
		return 1
	}
	cfg, err := Load(pos[0])
	if err != nil {
		return fail(err)
	}
	engineCmd, err := engineCommand(*engine)
	if err != nil {
		return fail(err)
	}
	plan, err := BuildPlan(cfg, nil, PlanOptions{BindHost: *bind})
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = Launch(ctx, plan, LaunchOptions{
		NodeRank: *rank, Nodes: splitList(*nodes), EngineCmd: engineCmd, MaxRestarts: *maxRestarts,
		StartRouter: startRouter, Log: stderr, HealthTimeout: *healthTimeout, StopGrace: *grace,
	})
	if err != nil {
		return fail(err)
	}
	return 0
}

// engineCommand splits --engine-cmd; "sim" is this binary's sim subcommand.
func engineCommand(s string) ([]string, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return nil, nil
	}
	if fields[0] == "sim" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("--engine-cmd sim: locating this binary: %w", err)
		}
		return append([]string{self}, fields...), nil
	}
	return fields, nil
}
