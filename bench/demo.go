package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/switchyard/switchyard/bench/sim"
)

// ErrBadDemo means a DemoOptions field is out of range; the message names it.
var ErrBadDemo = errors.New("bench: invalid demo options")

// StartRouterFunc starts a router with vllm-router-style arguments and returns the base URL
// it listens on once it accepts connections, and a stop function. "--port 0" in argv means
// "pick a free port"; the returned URL tells which.
type StartRouterFunc func(ctx context.Context, argv []string) (url string, stop func(context.Context) error, err error)

// DemoOptions configures Demo: the same workload, once per policy, against a fresh fleet of
// in-process vLLM simulators behind a fresh router.
type DemoOptions struct {
	// Policies are the router policies compared, in order. Default consistent_hash, round_robin.
	Policies []string
	// Workers is the number of simulated workers in regular mode. Default 4.
	Workers int
	// Sessions is the number of concurrent sessions. Default 64.
	Sessions int
	// Duration is the measured run per policy. Default 20 s.
	Duration time.Duration
	// PD is "" for regular mode, or "PxD" (e.g. "2x2") for P prefill and D decode workers
	// behind `--vllm-pd-disaggregation`.
	PD string
	// Stream asks for SSE responses, which the TTFT columns need.
	Stream bool
	// Out receives progress lines and the table. Nil means io.Discard.
	Out io.Writer
	// StartRouter starts the router under test. Required.
	StartRouter StartRouterFunc
	// Workload holds the remaining workload knobs (Turns, TurnBytes, MaxTokens, ...). Its
	// URL, Sessions, Duration, Stream, Model, MetricsURLs and ExpectWorkers are set by Demo.
	// Zero fields get the demo's defaults (8 turns of 1 KB over a 2 KB system prompt).
	Workload Workload
	// TuneSim, when set, adjusts each simulator's config after the demo's defaults.
	TuneSim func(*sim.Config)
	// ReadyTimeout bounds the wait for the router's /health to answer 200. Default 15 s.
	ReadyTimeout time.Duration
}

// The demo fleet's simulator settings. They make prefix caching matter as it does on GPUs:
// prefill costs 200 µs per uncached token (5k tokens/s, a busy GPU on a long-context batch;
// a cold 4 KB prompt, ~750 tokens, takes ~150 ms), generation 5 ms per token, and each
// worker's cache holds what its share of the sessions needs and no more (demoCacheBlocks).
// A worker that sees only its own sessions (affinity) keeps their prefixes resident; one
// that sees every session (round robin) evicts them before the session's next turn comes
// back. The costs are steep on purpose: the effect must stand above scheduler noise on a
// laptop or a shared CI machine running the router, the workers and the load in one process.
const (
	demoTTFTBase        = 5 * time.Millisecond
	demoPrefillPerToken = 200 * time.Microsecond
	demoITL             = 5 * time.Millisecond
	demoOutputTokens    = 16
	demoBlockSize       = 16
)

// demoCacheBlocks sizes one worker's prefix cache to hold the longest prompt (last turn) of
// each of its share of sessions, with 25% headroom because hashing does not split sessions
// evenly: 1.25 x sessionsPerWorker x maxPromptTokens, in blocks rounded up to 256. For the
// defaults (64 sessions, 4 workers, 8 turns of 1 KB over a 2 KB system prompt) that is
// 20 x ~2100 tokens = 2816 blocks, while round robin's working set is all 64 sessions'
// prefixes, about 64 x 1150 tokens = 4600 blocks on average.
func demoCacheBlocks(w Workload, workers, blockSize, outputTokens int) int {
	perWorker := (5*w.Sessions + 4*workers - 1) / (4 * workers)
	words := float64(max(w.SystemPromptBytes, 0)+w.Turns*w.TurnBytes) / bytesPerWord
	// Each message adds a few template and label tokens; answers are outputTokens long.
	tokens := int(words) + (w.Turns-1)*min(outputTokens, w.MaxTokens) + 4*(2*w.Turns+1)
	blocks := (perWorker*tokens + blockSize - 1) / blockSize
	return max(256, (blocks+255)/256*256)
}

func (o DemoOptions) withDefaults() (DemoOptions, error) {
	if len(o.Policies) == 0 {
		o.Policies = []string{"consistent_hash", "round_robin"}
	}
	setDefault(&o.Workers, 4)
	setDefault(&o.Sessions, 64)
	setDefault(&o.Duration, 20*time.Second)
	setDefault(&o.ReadyTimeout, 15*time.Second)
	if o.Out == nil {
		o.Out = io.Discard
	}
	switch {
	case o.StartRouter == nil:
		return o, fmt.Errorf("%w: StartRouter is required", ErrBadDemo)
	case o.Workers < 0, o.Sessions < 0, o.Duration < 0:
		return o, fmt.Errorf("%w: Workers, Sessions and Duration must not be negative", ErrBadDemo)
	}
	for _, p := range o.Policies {
		if p == "" || strings.ContainsAny(p, " \t") {
			return o, fmt.Errorf("%w: policy %q", ErrBadDemo, p)
		}
	}
	if _, _, err := parsePD(o.PD); err != nil {
		return o, err
	}
	return o, nil
}

// parsePD reads "PxD"; "" is regular mode (0, 0).
func parsePD(s string) (prefill, decode int, err error) {
	if s == "" {
		return 0, 0, nil
	}
	ps, ds, ok := strings.Cut(strings.ToLower(s), "x")
	p, perr := strconv.Atoi(ps)
	d, derr := strconv.Atoi(ds)
	if !ok || perr != nil || derr != nil || p < 1 || d < 1 {
		return 0, 0, fmt.Errorf("%w: --pd %q is not PxD with P, D >= 1 (e.g. 2x2)", ErrBadDemo, s)
	}
	return p, d, nil
}

// Demo runs o.Policies one after another, each against fresh simulators (cold caches) and a
// fresh router, prints progress and then the comparison table to o.Out, and returns the rows.
// A policy that fails (its router does not start, say) is reported and skipped; the error
// returned then joins every such failure. A ctx cancel stops the current run, the router and
// the simulators, and returns the rows finished so far with ctx's error.
func Demo(ctx context.Context, o DemoOptions) ([]Row, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	nPrefill, nDecode, _ := parsePD(o.PD)
	mode := fmt.Sprintf("%d simulated vLLM workers", o.Workers)
	if o.PD != "" {
		mode = fmt.Sprintf("%d prefill + %d decode simulated vLLM workers (P/D)", nPrefill, nDecode)
	}
	w := o.demoWorkload()
	cacheWorkers := o.Workers
	if o.PD != "" {
		cacheWorkers = nPrefill
	}
	simCfg := o.simConfig(w, cacheWorkers)
	w.Model = simCfg.Model
	fmt.Fprintf(o.Out, "Switchyard demo: %s, %d concurrent sessions x %d turns, %s per policy, stream=%v\n",
		mode, w.Sessions, w.Turns, w.Duration, w.Stream)
	fmt.Fprintf(o.Out, "Each turn resends the whole conversation. Each worker caches %d blocks of %d tokens\n"+
		"(its share of the sessions, not all of them) and prefills uncached tokens at %s each.\n\n",
		simCfg.CacheBlocks, simCfg.BlockSize, simCfg.PrefillPerToken)

	var rows []Row
	var failed []error
	for _, policy := range o.Policies {
		fmt.Fprintf(o.Out, "── %s\n", policy)
		res, err := o.runPolicy(ctx, policy, w, simCfg)
		if err != nil {
			if ctx.Err() != nil {
				break // the caller reports the interruption; the finished rows still print
			}
			// One policy failing (say, a name the router does not know) should not hide
			// the others' results.
			err = fmt.Errorf("policy %s: %w", policy, err)
			fmt.Fprintf(o.Out, "failed: %v\n", err)
			failed = append(failed, err)
			continue
		}
		rows = append(rows, Row{Policy: policy, Result: res})
		if res.CacheError != nil {
			fmt.Fprintf(o.Out, "warning: no cache figures: %v\n", res.CacheError)
		}
	}
	if len(rows) > 0 {
		fmt.Fprintln(o.Out)
		if err := PrintTable(o.Out, rows); err != nil {
			return rows, err
		}
		printErrors(o.Out, rows)
		printVerdict(o.Out, rows)
	}
	if ctx.Err() != nil {
		return rows, ctx.Err()
	}
	return rows, errors.Join(failed...)
}

func (o DemoOptions) demoWorkload() Workload {
	w := o.Workload
	w.Sessions, w.Duration, w.Stream = o.Sessions, o.Duration, o.Stream
	setDefault(&w.Turns, defaultTurns)
	setDefault(&w.MaxTokens, defaultMaxTokens)
	setDefault(&w.SystemPromptBytes, defaultSystemPromptBytes)
	setDefault(&w.TurnBytes, defaultTurnBytes)
	return w
}

// simConfig is every demo simulator's config but its name and role.
func (o DemoOptions) simConfig(w Workload, cacheWorkers int) sim.Config {
	cfg := sim.DefaultConfig()
	cfg.TTFTBase = demoTTFTBase
	cfg.PrefillPerToken = demoPrefillPerToken
	cfg.InterTokenLatency = demoITL
	cfg.OutputTokens = demoOutputTokens
	cfg.BlockSize = demoBlockSize
	cfg.CacheBlocks = demoCacheBlocks(w, cacheWorkers, demoBlockSize, demoOutputTokens)
	if o.TuneSim != nil {
		o.TuneSim(&cfg)
	}
	return cfg
}

// runPolicy starts a fleet and a router, runs the workload and tears both down.
func (o DemoOptions) runPolicy(ctx context.Context, policy string, w Workload, simCfg sim.Config) (res Result, err error) {
	nPrefill, nDecode, _ := parsePD(o.PD)
	fleet := &simFleet{}
	defer func() { err = errors.Join(err, fleet.shutdown()) }()

	var argv []string
	if o.PD == "" {
		urls, err := fleet.start(o.Workers, "worker", sim.RoleBoth, simCfg)
		if err != nil {
			return res, err
		}
		argv = routerArgv(policy, urls, nil, nil)
		w.MetricsURLs = urls
	} else {
		prefill, err := fleet.start(nPrefill, "prefill", sim.RolePrefill, simCfg)
		if err != nil {
			return res, err
		}
		decode, err := fleet.start(nDecode, "decode", sim.RoleDecode, simCfg)
		if err != nil {
			return res, err
		}
		argv = routerArgv(policy, nil, prefill, decode)
		// The prefix cache that matters is the prefill workers': decode legs get the
		// prompt's KV over the transfer, not from their own cache.
		w.MetricsURLs = prefill
	}
	w.ExpectWorkers = fleet.decodeNames()

	routerURL, stop, err := o.StartRouter(ctx, argv)
	if err != nil {
		return res, fmt.Errorf("starting router: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if serr := stop(stopCtx); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping router: %w", serr))
		}
	}()
	if err := waitHealthy(ctx, routerURL, o.ReadyTimeout); err != nil {
		return res, err
	}
	w.URL = routerURL
	res, err = Run(ctx, w, o.Out)
	return res, err
}

// routerArgv builds vllm-router-compatible arguments. In P/D mode each prefill worker gets
// "none" as its bootstrap port, as prime-rl passes it for vLLM (NIXL) P/D.
func routerArgv(policy string, workers, prefill, decode []string) []string {
	argv := []string{"--host", "127.0.0.1", "--port", "0", "--policy", policy,
		"--request-id-headers", "x-session-id"}
	if len(prefill) > 0 || len(decode) > 0 {
		argv = append(argv, "--vllm-pd-disaggregation")
		for _, u := range prefill {
			argv = append(argv, "--prefill", u, "none")
		}
		for _, u := range decode {
			argv = append(argv, "--decode", u)
		}
		return argv
	}
	return append(append(argv, "--worker-urls"), workers...)
}

// waitHealthy polls base+"/health" until it answers 200, ctx ends or timeout passes.
func waitHealthy(ctx context.Context, base string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/health", nil)
		if err != nil {
			return fmt.Errorf("router health: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("router at %s not healthy after %s: %w", base, timeout, errors.Join(ctx.Err(), last))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// simFleet is a set of in-process simulators on loopback ports.
type simFleet struct {
	servers []*sim.Server
	names   []string
	roles   []sim.Role
	served  []chan error
}

// start launches n simulators from base named prefix-i and returns their base URLs.
func (f *simFleet) start(n int, prefix string, role sim.Role, base sim.Config) ([]string, error) {
	urls := make([]string, 0, n)
	for i := range n {
		cfg := base
		cfg.Name = fmt.Sprintf("%s-%d", prefix, i)
		cfg.Role = role
		srv, err := sim.New(cfg, zap.NewNop())
		if err != nil {
			return nil, fmt.Errorf("simulator %s: %w", cfg.Name, err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("simulator %s: %w", cfg.Name, err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		f.servers = append(f.servers, srv)
		f.names = append(f.names, cfg.Name)
		f.roles = append(f.roles, role)
		f.served = append(f.served, served)
		urls = append(urls, "http://"+ln.Addr().String())
	}
	return urls, nil
}

// decodeNames are the workers that answer clients (all but prefill workers).
func (f *simFleet) decodeNames() []string {
	var names []string
	for i, n := range f.names {
		if f.roles[i] != sim.RolePrefill {
			names = append(names, n)
		}
	}
	return names
}

// shutdown stops every simulator and waits for its Serve to return.
func (f *simFleet) shutdown() error {
	var errs []error
	for i, srv := range f.servers {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("simulator %s: %w", f.names[i], err))
		}
		<-f.served[i]
	}
	f.servers, f.names, f.roles, f.served = nil, nil, nil, nil
	return errors.Join(errs...)
}

// printVerdict compares the first policy with each other one on the figures the demo is
// about: prefix-cache hit rate and time to first token (or latency without streaming).
func printVerdict(w io.Writer, rows []Row) {
	base := &rows[0]
	for i := 1; i < len(rows); i++ {
		other := &rows[i]
		var parts []string
		if a, ok := base.Result.Cache.HitRate(); ok && base.Result.CacheScraped {
			if b, ok := other.Result.Cache.HitRate(); ok && other.Result.CacheScraped {
				parts = append(parts, fmt.Sprintf("prefix-cache hit rate %.1f%% vs %.1f%%", 100*a, 100*b))
			}
		}
		label, a, b := "TTFT p50", base.Result.TTFTQuantile(0.5), other.Result.TTFTQuantile(0.5)
		if len(base.Result.TTFT) == 0 || len(other.Result.TTFT) == 0 {
			label, a, b = "latency p50", base.Result.LatencyQuantile(0.5), other.Result.LatencyQuantile(0.5)
		}
		if a > 0 && b > 0 {
			ratio, word := float64(b)/float64(a), "lower"
			if a > b {
				ratio, word = float64(a)/float64(b), "higher"
			}
			how := fmt.Sprintf("%.1fx %s", ratio, word)
			if ratio < 1.05 {
				how = "about the same"
			}
			parts = append(parts, fmt.Sprintf("%s %s vs %s (%s)", label, millis(a), millis(b), how))
		}
		parts = append(parts, fmt.Sprintf("%.0f vs %.0f req/s",
			base.Result.RequestsPerSecond(), other.Result.RequestsPerSecond()))
		if len(parts) > 0 {
			fmt.Fprintf(w, "%s vs %s: %s\n", base.Policy, other.Policy, strings.Join(parts, ", "))
		}
	}
}

// printErrors lists each run's failed requests by kind, if any failed.
func printErrors(w io.Writer, rows []Row) {
	for i := range rows {
		r := &rows[i].Result
		if r.Errors == 0 {
			continue
		}
		kinds := slices.Sorted(maps.Keys(r.ErrorsByKind))
		parts := make([]string, len(kinds))
		for j, k := range kinds {
			parts[j] = fmt.Sprintf("%s x%d", k, r.ErrorsByKind[k])
		}
		fmt.Fprintf(w, "%s errors: %s\n", rows[i].Policy, strings.Join(parts, ", "))
	}
}
