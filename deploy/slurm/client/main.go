// Command client is the client step of the real-SLURM test (deploy/slurm/run-test.sh).
// It runs as a step of the deployment's own job, on the router's node, so node names
// resolve as they do for a trainer in the cluster. It reads the router URL the job wrote
// (prime-rl's INFER_URLS contract), sends multi-turn sessions keyed by X-Session-ID
// through it, and checks, from the responses and the simulators' /sim/stats and /metrics:
//
//   - every request succeeded;
//   - every session stayed on one worker (the X-Switchyard-Worker response header), and
//     the sessions together used workers on more than one node;
//   - the engines served exactly the requests sent;
//   - disaggregated: every request was prefilled on a prefill node and decoded on another
//     node, each decode leg claiming its prefill's KV (sim_kv_transfer_hits == requests,
//     no misses, no expired or unclaimed leases).
//
// It prints one summary line of counts and exits 0 only if every check passed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/deploy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the client's flags, validated by parseOptions.
type options struct {
	// configPath is the deployment TOML the job was rendered from. Required.
	configPath string
	// nodes are the job's hosts in order (SLURM_JOB_NODELIST expanded). Required.
	nodes []string
	// urlFile is where the job writes its router URLs, comma-separated. Required.
	urlFile string
	// sessions is the number of concurrent multi-turn sessions. Default 16; must be ≥ 2.
	sessions int
	// turns is the number of requests per session, each one carrying the whole
	// conversation so far. Default 4; must be ≥ 2.
	turns int
	// wait bounds the wait for the URL file and for every worker and router to be ready.
	// Default 90 s.
	wait time.Duration
	// requestTimeout bounds one request. Default 20 s.
	requestTimeout time.Duration
}

var errUsage = errors.New("usage")

func parseOptions(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var nodes string
	fs.StringVar(&o.configPath, "config", "", "deployment TOML the job was rendered from (required)")
	fs.StringVar(&nodes, "nodes", "", "the job's hosts in order, comma-separated (required)")
	fs.StringVar(&o.urlFile, "url-file", "", "file the job writes its router URLs to (required)")
	fs.IntVar(&o.sessions, "sessions", 16, "concurrent multi-turn sessions (at least 2)")
	fs.IntVar(&o.turns, "turns", 4, "requests per session (at least 2)")
	fs.DurationVar(&o.wait, "wait", 90*time.Second, "how long to wait for the URL file and for readiness")
	fs.DurationVar(&o.requestTimeout, "request-timeout", 20*time.Second, "timeout of one request")
	if err := fs.Parse(args); err != nil {
		return o, errUsage
	}
	for _, n := range strings.Split(nodes, ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.nodes = append(o.nodes, n)
		}
	}
	switch {
	case fs.NArg() != 0:
		return o, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	case o.configPath == "" || o.urlFile == "" || len(o.nodes) == 0:
		return o, fmt.Errorf("%w: --config, --nodes and --url-file are required", errUsage)
	case o.sessions < 2 || o.turns < 2:
		return o, fmt.Errorf("%w: --sessions and --turns must be at least 2 (stickiness needs several of each)", errUsage)
	case o.wait <= 0 || o.requestTimeout <= 0:
		return o, fmt.Errorf("%w: --wait and --request-timeout must be positive", errUsage)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if err != errUsage { // a bare errUsage was already reported by the flag package
			fmt.Fprintln(stderr, "client:", err)
		}
		return 2
	}
	cfg, err := deploy.Load(o.configPath)
	if err != nil {
		fmt.Fprintln(stderr, "client:", err)
		return 1
	}
	plan, err := deploy.BuildPlan(cfg, o.nodes, deploy.PlanOptions{})
	if err != nil {
		fmt.Fprintln(stderr, "client:", err)
		return 1
	}
	rep, err := exercise(ctx, plan, o, newHTTP(o.requestTimeout), stderr)
	fmt.Fprintln(stdout, rep.summary())
	if err != nil {
		fmt.Fprintln(stderr, "client: FAIL:", err)
		return 1
	}
	fmt.Fprintln(stdout, "client: PASS")
	return 0
}
