// Command switchyard is the full CLI: the router (serve), the vLLM simulator (sim), the
// demo, the benchmark, and the deployment launcher (plan, launch, deploy slurm).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/switchyard/switchyard/bench"
	"github.com/switchyard/switchyard/bench/sim"
	"github.com/switchyard/switchyard/deploy"
	"github.com/switchyard/switchyard/router"
)

const usage = `usage: switchyard <command> [arguments]

commands:
  serve   run the router (vllm-router's flags; see switchyard serve --help)
  sim     run a simulated vLLM worker (accepts "vllm serve" arguments)
  demo    simulated workers + router + a rollout workload, with a summary table
  bench   compare routing policies on the simulator (or an existing router with --url)
  plan    print the processes a TOML deployment runs on each node
  launch  start this node's part of a TOML deployment and supervise it
  deploy  render (and submit) a SLURM job for a TOML deployment: deploy slurm CONFIG
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		stop() // router.Main installs its own handlers
		return router.Main(rest, stdout, stderr)
	case "sim":
		stop()
		return sim.Main(rest, stdout, stderr)
	case "demo":
		return bench.DemoMain(ctx, rest, stdout, stderr, startRouterForBench(stderr))
	case "bench":
		return bench.BenchMain(ctx, rest, stdout, stderr, startRouterForBench(stderr))
	case "plan":
		return deploy.PlanMain(rest, stdout, stderr)
	case "launch":
		return deploy.LaunchMain(ctx, rest, stdout, stderr, startRouterForLaunch(stderr))
	case "deploy":
		if len(rest) == 0 || rest[0] != "slurm" {
			fmt.Fprintln(stderr, "usage: switchyard deploy slurm CONFIG [--partition P --account A --time T --nodelist N] [--dry-run|--submit]")
			return 2
		}
		return deploy.SlurmMain(rest[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "switchyard: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// startRouterForBench embeds a router in this process for the demo and the benchmark;
// its logs go to w at warning level so they do not drown the progress lines.
func startRouterForBench(w io.Writer) bench.StartRouterFunc {
	return func(ctx context.Context, argv []string) (string, func(context.Context) error, error) {
		log, _ := router.NewLogger("warning", "", w)
		srv, err := router.StartArgs(argv, log)
		if err != nil {
			return "", nil, err
		}
		return "http://" + srv.Addr(), srv.Shutdown, nil
	}
}

// startRouterForLaunch embeds the replica's router in the launcher process.
func startRouterForLaunch(w io.Writer) deploy.StartRouterFunc {
	return func(ctx context.Context, argv []string) (func(context.Context) error, error) {
		log, err := router.NewLogger("info", "", w)
		if err != nil {
			return nil, err
		}
		srv, err := router.StartArgs(argv, log.With(zap.String("component", "router")))
		if err != nil {
			return nil, err
		}
		return srv.Shutdown, nil
	}
}
