package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// mainOptions is what the command line sets: the Config plus where to listen.
type mainOptions struct {
	cfg      Config
	host     string
	port     int
	logLevel zapcore.Level
	ignored  []string // vLLM flags accepted but not modelled
}

// cliFlag is one flag Main models. Flags with a value take it as "--flag value" or
// "--flag=value"; boolean flags take an optional "=true|false".
type cliFlag struct {
	names []string
	value string // placeholder shown in usage; "" for a boolean flag
	help  string
	set   func(o *mainOptions, v string) error
}

func durationFlag(dst func(o *mainOptions) *time.Duration) func(*mainOptions, string) error {
	return func(o *mainOptions, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("not a duration (like 10ms or 2s): %q", v)
		}
		if d < 0 {
			return fmt.Errorf("must not be negative: %q", v)
		}
		*dst(o) = d
		return nil
	}
}

func intFlag(min int, dst func(o *mainOptions) *int) func(*mainOptions, string) error {
	return func(o *mainOptions, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("not an integer: %q", v)
		}
		if n < min {
			return fmt.Errorf("must be at least %d, got %d", min, n)
		}
		*dst(o) = n
		return nil
	}
}

func floatFlag(dst func(o *mainOptions) *float64) func(*mainOptions, string) error {
	return func(o *mainOptions, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("not a number: %q", v)
		}
		*dst(o) = f
		return nil
	}
}

func boolFlag(dst func(o *mainOptions) *bool) func(*mainOptions, string) error {
	return func(o *mainOptions, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", v)
		}
		*dst(o) = b
		return nil
	}
}

var cliFlags = []cliFlag{
	{[]string{"host"}, "HOST", "address to listen on (default 127.0.0.1)", func(o *mainOptions, v string) error { o.host = v; return nil }},
	{[]string{"port"}, "PORT", "port to listen on; 0 picks a free one (default 8000)", intFlag(0, func(o *mainOptions) *int { return &o.port })},
	{[]string{"model"}, "MODEL", "served model (also the positional MODEL of `serve MODEL`)", func(o *mainOptions, v string) error { o.cfg.Model = v; return nil }},
	{[]string{"served-model-name"}, "NAME...", "model name(s) to serve instead of MODEL", nil}, // handled in parseArgs: takes several
	{[]string{"name"}, "NAME", "worker name in X-Switchyard-Worker (default: the listen address)", func(o *mainOptions, v string) error { o.cfg.Name = v; return nil }},
	{[]string{"role"}, "ROLE", "prefill, decode or both (labels only; default both)", func(o *mainOptions, v string) error {
		switch Role(v) {
		case RolePrefill, RoleDecode, RoleBoth:
			o.cfg.Role = Role(v)
			return nil
		}
		return fmt.Errorf("not prefill, decode or both: %q", v)
	}},
	{[]string{"engine-id"}, "ID", "remote_engine_id advertised to decode legs (default derived from the name)", func(o *mainOptions, v string) error { o.cfg.EngineID = v; return nil }},
	{[]string{"max-num-seqs"}, "N", "sequences running at once; more wait in a queue (default 256)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.MaxNumSeqs })},
	{[]string{"max-model-len"}, "TOKENS", "context length (default 32768)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.MaxModelLen })},
	{[]string{"block-size"}, "TOKENS", "prefix-cache block size (default 16)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.BlockSize })},
	{[]string{"num-gpu-blocks-override", "cache-blocks"}, "BLOCKS", "prefix-cache capacity in blocks (default 65536)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.CacheBlocks })},
	{[]string{"api-key"}, "KEY", "require Authorization: Bearer KEY on /v1/* (repeatable; default $VLLM_API_KEY)", func(o *mainOptions, v string) error {
		o.cfg.APIKeys = append(o.cfg.APIKeys, v)
		return nil
	}},
	{[]string{"data-parallel-size", "dp"}, "N", "DP engines, each with its own slots and cache; X-data-parallel-rank >= N is a 400 (default 1)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.DataParallelSize })},
	{[]string{"data-parallel-rank", "dpn"}, "RANK", "this process is DP rank RANK alone (external load balancing)", func(o *mainOptions, v string) error {
		o.cfg.DataParallelExternalLB = true
		return intFlag(0, func(o *mainOptions) *int { return &o.cfg.DataParallelRank })(o, v)
	}},
	{[]string{"data-parallel-external-lb", "dpe"}, "", "one engine per process (with --data-parallel-rank)", boolFlag(func(o *mainOptions) *bool { return &o.cfg.DataParallelExternalLB })},
	{[]string{"tensor-parallel-size", "tp"}, "N", "reported as tp_size in kv_transfer_params (default 1)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.TensorParallelSize })},
	{[]string{"kv-transfer-config"}, "JSON", "vLLM KV connector config: kv_load_failure_policy (recompute|fail) and kv_connector_extra_config.kv_lease_duration (seconds) are honoured", func(o *mainOptions, v string) error {
		var kc struct {
			FailurePolicy string `json:"kv_load_failure_policy"`
			Extra         struct {
				LeaseSeconds *float64 `json:"kv_lease_duration"`
			} `json:"kv_connector_extra_config"`
		}
		if err := json.Unmarshal([]byte(v), &kc); err != nil {
			return fmt.Errorf("not a JSON object: %w", err)
		}
		switch kc.FailurePolicy {
		case "":
		case "recompute", "fail":
			o.cfg.KVLoadFailurePolicy = kc.FailurePolicy
		default:
			return fmt.Errorf("kv_load_failure_policy must be recompute or fail, got %q", kc.FailurePolicy)
		}
		if s := kc.Extra.LeaseSeconds; s != nil {
			if *s <= 0 {
				return fmt.Errorf("kv_lease_duration must be positive, got %v", *s)
			}
			o.cfg.KVLeaseDuration = time.Duration(*s * float64(time.Second))
		}
		return nil
	}},
	{[]string{"enable-return-routed-experts", "return-routed-experts"}, "", "return routed_experts and prompt_token_ids from /inference/v1/generate", boolFlag(func(o *mainOptions) *bool { return &o.cfg.ReturnRoutedExperts })},
	{[]string{"ttft"}, "DURATION", "fixed time to first token (default 10ms)", durationFlag(func(o *mainOptions) *time.Duration { return &o.cfg.TTFTBase })},
	{[]string{"prefill-per-token"}, "DURATION", "time to first token added per uncached prompt token (default 20µs)", durationFlag(func(o *mainOptions) *time.Duration { return &o.cfg.PrefillPerToken })},
	{[]string{"itl"}, "DURATION", "inter-token latency (default 5ms)", durationFlag(func(o *mainOptions) *time.Duration { return &o.cfg.InterTokenLatency })},
	{[]string{"output-tokens"}, "N", "natural completion length before finish_reason stop (default 16)", intFlag(1, func(o *mainOptions) *int { return &o.cfg.OutputTokens })},
	{[]string{"kv-lease"}, "DURATION", "how long a prefill leg keeps KV for its decode leg (default 30s)", durationFlag(func(o *mainOptions) *time.Duration { return &o.cfg.KVLeaseDuration })},
	{[]string{"fail-rate"}, "SHARE", "fault: share of generation requests failed, in [0,1]", floatFlag(func(o *mainOptions) *float64 { return &o.cfg.Fault.FailRate })},
	{[]string{"fail-status"}, "STATUS", "fault: status of failed requests (default 500)", intFlag(0, func(o *mainOptions) *int { return &o.cfg.Fault.FailStatus })},
	{[]string{"hang"}, "", "fault: accept generation requests and never answer", boolFlag(func(o *mainOptions) *bool { return &o.cfg.Fault.Hang })},
	{[]string{"slow-factor"}, "FACTOR", "fault: multiply every simulated duration", floatFlag(func(o *mainOptions) *float64 { return &o.cfg.Fault.SlowFactor })},
	{[]string{"die-mid-stream-after"}, "EVENTS", "fault: reset streamed connections after N events", intFlag(0, func(o *mainOptions) *int { return &o.cfg.Fault.DieMidStreamAfter })},
	{[]string{"health-fail"}, "", "fault: /health answers 503", boolFlag(func(o *mainOptions) *bool { return &o.cfg.Fault.HealthFail })},
	{[]string{"seed"}, "N", "fault: seed of the failure draw (default 0)", func(o *mainOptions, v string) error {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("not an unsigned integer: %q", v)
		}
		o.cfg.Fault.Seed = n
		return nil
	}},
	{[]string{"log-level"}, "LEVEL", "debug, info, warn or error (default info)", func(o *mainOptions, v string) error {
		return o.logLevel.Set(v)
	}},
}

// vllmBooleanFlags are vLLM flags that take no value; knowing them keeps an unmodelled
// boolean flag from swallowing the positional argument after it.
var vllmBooleanFlags = map[string]bool{
	"trust-remote-code": true, "enforce-eager": true, "enable-prefix-caching": true, "enable-chunked-prefill": true,
	"enable-expert-parallel": true, "ep": true, "headless": true, "enable-request-id-headers": true,
	"enable-server-load-tracking": true, "disable-log-requests": true, "enable-log-requests": true,
	"disable-log-stats": true, "enable-dbo": true, "enable-eplb": true, "enable-elastic-ep": true,
	"data-parallel-hybrid-lb": true, "dph": true,
	"enable-lora": true, "enable-auto-tool-choice": true, "enable-sleep-mode": true,
	"enable-force-include-usage": true, "enable-prompt-tokens-details": true,
	"disable-frontend-multiprocessing": true, "disable-custom-all-reduce": true,
	"disable-uvicorn-access-log": true, "disable-fastapi-docs": true, "enable-log-outputs": true,
	"skip-tokenizer-init": true, "async-scheduling": true, "disable-cascade-attn": true,
	"enable-tokenizer-info-endpoint": true, "tokens-only": true, "allow-credentials": true,
}

func lookupFlag(name string) *cliFlag {
	for i := range cliFlags {
		for _, n := range cliFlags[i].names {
			if n == name {
				return &cliFlags[i]
			}
		}
	}
	return nil
}

// errHelp asks Main to print usage and exit 0.
var errHelp = errors.New("help requested")

// parseArgs reads Main's argv: the simulator's flags, or vLLM's `serve MODEL [flags]`.
// Flags it does not model are skipped (with their value when they seem to have one).
func parseArgs(args []string) (*mainOptions, error) {
	o := &mainOptions{cfg: DefaultConfig(), host: "127.0.0.1", port: 8000, logLevel: zapcore.InfoLevel}
	var positional []string
	sawServe := false
	servedNames := []string(nil)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" || isNumber(a) {
			// vLLM's subcommand, wherever the simulator's own flags put it.
			if a == "serve" && !sawServe && len(positional) == 0 {
				sawServe = true
				continue
			}
			positional = append(positional, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			return nil, errHelp
		}
		// vLLM's parser accepts underscores for dashes.
		name = strings.ReplaceAll(name, "_", "-")
		next := func() (string, bool) {
			if hasVal {
				return val, true
			}
			if i+1 < len(args) && (!strings.HasPrefix(args[i+1], "-") || isNumber(args[i+1])) {
				i++
				return args[i], true
			}
			return "", false
		}
		if name == "served-model-name" {
			v, ok := next()
			if !ok {
				return nil, fmt.Errorf("flag --%s needs a value", name)
			}
			servedNames = append(servedNames, v)
			for !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				servedNames = append(servedNames, args[i])
			}
			continue
		}
		f := lookupFlag(name)
		if f == nil {
			// Not modelled: skip it, and its value unless it is a known boolean flag,
			// a --no-* negation, or followed by another flag.
			if !hasVal && !vllmBooleanFlags[name] && !strings.HasPrefix(name, "no-") {
				if v, ok := next(); ok {
					a += " " + v
				}
			}
			o.ignored = append(o.ignored, a)
			continue
		}
		if f.value == "" { // boolean
			v := "true"
			if hasVal {
				v = val
			}
			if err := f.set(o, v); err != nil {
				return nil, fmt.Errorf("flag --%s: %w", name, err)
			}
			continue
		}
		v, ok := next()
		if !ok {
			return nil, fmt.Errorf("flag --%s needs a value", name)
		}
		if err := f.set(o, v); err != nil {
			return nil, fmt.Errorf("flag --%s: %w", name, err)
		}
	}
	switch len(positional) {
	case 0:
	case 1:
		o.cfg.Model = positional[0]
	default:
		return nil, fmt.Errorf("unexpected arguments %q (only one MODEL is accepted)", positional[1:])
	}
	if len(servedNames) > 0 {
		o.cfg.Model, o.cfg.ModelAliases = servedNames[0], servedNames[1:]
	}
	if len(o.cfg.APIKeys) == 0 {
		if k := os.Getenv("VLLM_API_KEY"); k != "" {
			o.cfg.APIKeys = []string{k}
		}
	}
	if o.port > 65535 {
		return nil, fmt.Errorf("flag --port: %d out of range", o.port)
	}
	if err := o.sideChannelFromEnv(); err != nil {
		return nil, err
	}
	return o, nil
}

// sideChannelFromEnv serves the KV side channel on its own listener when vLLM's
// VLLM_NIXL_SIDE_CHANNEL_HOST/PORT are set, at port + DP rank as vLLM binds it.
func (o *mainOptions) sideChannelFromEnv() error {
	host, port := os.Getenv("VLLM_NIXL_SIDE_CHANNEL_HOST"), os.Getenv("VLLM_NIXL_SIDE_CHANNEL_PORT")
	if host == "" && port == "" {
		return nil
	}
	if host == "" {
		host = "127.0.0.1"
	}
	p := 5600
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("VLLM_NIXL_SIDE_CHANNEL_PORT: not a port: %q", port)
		}
		p = n
	}
	p += o.cfg.DataParallelRank
	o.cfg.SideChannelListen = net.JoinHostPort(host, strconv.Itoa(p))
	o.cfg.SideChannelHost = host
	return nil
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: switchyard sim [serve] [MODEL] [flags]")
	fmt.Fprintln(w, "A vLLM simulator. Accepts `vllm serve` command lines; flags it does not model are ignored.")
	fmt.Fprintln(w, "Environment: VLLM_API_KEY, VLLM_NIXL_SIDE_CHANNEL_HOST, VLLM_NIXL_SIDE_CHANNEL_PORT.")
	fmt.Fprintln(w, "Flags:")
	lines := make([]string, 0, len(cliFlags))
	for _, f := range cliFlags {
		names := "--" + strings.Join(f.names, ", --")
		if f.value != "" {
			names += " " + f.value
		}
		lines = append(lines, fmt.Sprintf("  %-44s %s", names, f.help))
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// Main is `switchyard sim ...`. It returns the process exit code: 0 after a clean
// shutdown on SIGTERM/SIGINT, 2 for a bad command line, 1 when serving fails.
func Main(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args)
	if errors.Is(err, errHelp) {
		printUsage(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "switchyard sim: %v\n", err)
		printUsage(stderr)
		return 2
	}
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.Lock(zapcore.AddSync(stderr)), o.logLevel))
	defer func() { _ = log.Sync() }()
	for _, a := range o.ignored {
		log.Debug("ignoring vLLM flag the simulator does not model", zap.String("flag", a))
	}
	srv, err := New(o.cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "switchyard sim: %v\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	if err != nil {
		fmt.Fprintf(stderr, "switchyard sim: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "switchyard sim: serving %s on http://%s\n", o.cfg.Model, ln.Addr())
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		if err := srv.Shutdown(); err != nil {
			log.Warn("shutdown", zap.Error(err))
		}
		<-errc
		return 0
	case err := <-errc:
		if err != nil {
			fmt.Fprintf(stderr, "switchyard sim: %v\n", err)
			return 1
		}
		return 0
	}
}
