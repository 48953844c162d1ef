package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// Exit codes of DemoMain and BenchMain.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130 // as a shell reports SIGINT
)

// demoFlags are the flags `switchyard demo` and `switchyard bench` share.
type demoFlags struct {
	policies string
	opts     DemoOptions
}

func (d *demoFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.policies, "policies", "consistent_hash,round_robin", "comma-separated router policies to compare")
	fs.IntVar(&d.opts.Workers, "workers", 4, "simulated vLLM workers (regular mode)")
	fs.IntVar(&d.opts.Sessions, "sessions", 64, "concurrent multi-turn sessions")
	fs.DurationVar(&d.opts.Duration, "duration", 20*time.Second, "measured run per policy")
	fs.IntVar(&d.opts.Workload.Turns, "turns", 8, "turns per session before a new session starts")
	fs.StringVar(&d.opts.PD, "pd", "", `prefill/decode disaggregation as PxD, e.g. "2x2" (default: regular mode)`)
	fs.BoolVar(&d.opts.Stream, "stream", true, "stream responses (SSE); TTFT needs it")
}

func (d *demoFlags) options(out io.Writer, start StartRouterFunc) DemoOptions {
	o := d.opts
	o.Policies = splitList(d.policies)
	o.Out, o.StartRouter = out, start
	return o
}

// DemoMain is `switchyard demo`: the same RL-shaped workload under each policy against fresh
// in-process simulators, then a table showing what session affinity does to the prefix cache.
func DemoMain(ctx context.Context, args []string, stdout, stderr io.Writer, start StartRouterFunc) int {
	fs := flag.NewFlagSet("switchyard demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard demo [flags]\n\n"+
			"Starts simulated vLLM workers and a router per policy, runs multi-turn sessions\n"+
			"(X-Session-ID, growing prompts) through it, and compares the policies.\n\nflags:")
		fs.PrintDefaults()
	}
	var d demoFlags
	d.register(fs)
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	_, err := Demo(ctx, d.options(stdout, start))
	return exitCode(ctx, err, stderr)
}

// BenchMain is `switchyard bench`: Demo's comparison with every workload knob exposed, or,
// with --url, one run against a router that is already running.
func BenchMain(ctx context.Context, args []string, stdout, stderr io.Writer, start StartRouterFunc) int {
	fs := flag.NewFlagSet("switchyard bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard bench [flags]\n\n"+
			"Without --url: compares --policies against in-process simulators, like demo.\n"+
			"With --url: drives that router (or worker) and reports one row.\n\nflags:")
		fs.PrintDefaults()
	}
	var d demoFlags
	d.register(fs)
	w := &d.opts.Workload
	var target, label, metricsURLs string
	var seed uint64
	fs.StringVar(&target, "url", "", "base URL of a running router to drive instead of starting simulators")
	fs.StringVar(&label, "label", "url", "row label for the --url run")
	fs.StringVar(&metricsURLs, "metrics-urls", "", "with --url: comma-separated worker base URLs whose /metrics prefix-cache counters are compared")
	fs.StringVar(&w.Model, "model", "", `"model" field sent (default: omitted; with --url, the served model)`)
	fs.StringVar(&w.Path, "path", "/v1/chat/completions", "API path")
	fs.IntVar(&w.MaxTokens, "max-tokens", 32, "max_tokens per request")
	fs.IntVar(&w.SystemPromptBytes, "system-bytes", 2048, "shared system prompt size in bytes (negative: none)")
	fs.IntVar(&w.TurnBytes, "turn-bytes", 1024, "session-unique bytes each turn adds")
	fs.IntVar(&w.MaxRequests, "max-requests", 0, "stop after this many requests (0: only --duration)")
	fs.BoolVar(&w.FinishSession, "finish-session", false, "POST /finish_session?session_id= when a session ends, as prime-rl does")
	fs.Uint64Var(&seed, "seed", 0, "prompt and session-id seed (0: from the clock)")
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	w.Seed = seed

	if target == "" {
		if metricsURLs != "" {
			fmt.Fprintln(stderr, "switchyard bench: --metrics-urls needs --url")
			return exitUsage
		}
		_, err := Demo(ctx, d.options(stdout, start))
		return exitCode(ctx, err, stderr)
	}
	run := d.opts.Workload
	run.URL, run.Sessions, run.Duration, run.Stream = target, d.opts.Sessions, d.opts.Duration, d.opts.Stream
	run.MetricsURLs = splitList(metricsURLs)
	res, err := Run(ctx, run, stdout)
	if err != nil && !errors.Is(err, context.Canceled) {
		return exitCode(ctx, err, stderr)
	}
	fmt.Fprintln(stdout)
	if perr := PrintTable(stdout, []Row{{Policy: label, Result: res}}); perr != nil {
		return exitCode(ctx, perr, stderr)
	}
	printErrors(stdout, []Row{{Policy: label, Result: res}})
	if res.CacheError != nil {
		fmt.Fprintf(stderr, "switchyard bench: no cache figures: %v\n", res.CacheError)
	}
	return exitCode(ctx, err, stderr)
}

// parseFlags parses args; ok is false when the caller should return code.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return exitOK, true
}

func exitCode(ctx context.Context, err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "interrupted")
		return exitInterrupted
	case errors.Is(err, ErrBadDemo), errors.Is(err, ErrBadWorkload):
		fmt.Fprintln(stderr, err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, err)
		return exitFailed
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
