package router

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrHelp is returned by ParseFlags for -h/--help after the help text was written.
var ErrHelp = errors.New("help requested")

// flagKind is how a flag consumes arguments, following vllm-router's argparse definitions.
type flagKind uint8

const (
	kindBool    flagKind = iota // store_true
	kindString                  // one value
	kindInt                     // one integer value
	kindFloat                   // one float value
	kindSecs                    // one value in seconds (integer or float) → time.Duration
	kindMillis                  // one integer value in milliseconds → time.Duration
	kindList                    // nargs="*": values until the next flag
	kindPrefill                 // --prefill URL [BOOTSTRAP_PORT|none], repeatable
	kindAppend                  // repeatable single value (--decode URL)
)

// flagSpec describes one command-line flag: its spelling, arity, help and where it lands.
type flagSpec struct {
	name    string
	kind    flagKind
	group   string
	help    string
	ignored bool // accepted for compatibility, warned about, otherwise ignored
	apply   func(c *Config, vals []string) error
}

// flagGroups orders --help like vllm-router's argument groups.
var flagGroups = []string{"Server", "Policy", "Prefill/decode", "Reliability", "Discovery and metrics", "Switchyard"}

func str(f func(c *Config, v string)) func(*Config, []string) error {
	return func(c *Config, v []string) error { f(c, v[0]); return nil }
}

func integer(f func(c *Config, v int)) func(*Config, []string) error {
	return func(c *Config, v []string) error {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			return fmt.Errorf("invalid int value: %q", v[0])
		}
		f(c, n)
		return nil
	}
}

func float(f func(c *Config, v float64)) func(*Config, []string) error {
	return func(c *Config, v []string) error {
		x, err := strconv.ParseFloat(v[0], 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("invalid float value: %q", v[0])
		}
		f(c, x)
		return nil
	}
}

func secs(f func(c *Config, d time.Duration)) func(*Config, []string) error {
	return func(c *Config, v []string) error {
		x, err := strconv.ParseFloat(v[0], 64)
		if err != nil || x < 0 || math.IsNaN(x) || x > 1e9 {
			return fmt.Errorf("invalid seconds value: %q", v[0])
		}
		f(c, time.Duration(x*float64(time.Second)))
		return nil
	}
}

func millis(f func(c *Config, d time.Duration)) func(*Config, []string) error {
	return func(c *Config, v []string) error {
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || n < 0 || n > 1e12 {
			return fmt.Errorf("invalid milliseconds value: %q", v[0])
		}
		f(c, time.Duration(n)*time.Millisecond)
		return nil
	}
}

func boolean(f func(c *Config)) func(*Config, []string) error {
	return func(c *Config, _ []string) error { f(c); return nil }
}

func list(f func(c *Config, v []string)) func(*Config, []string) error {
	return func(c *Config, v []string) error { f(c, append([]string(nil), v...)); return nil }
}

var ignoreValue = func(*Config, []string) error { return nil }

// flagSpecs is every flag of vllm-router's Python launcher (research vllm-router.md §3),
// plus Switchyard's own in the last group.
var flagSpecs = []flagSpec{
	// Server / workers / mode.
	{name: "host", kind: kindString, group: "Server", help: "Host address to bind the router server (default 127.0.0.1)", apply: str(func(c *Config, v string) { c.Host = v })},
	{name: "port", kind: kindInt, group: "Server", help: "Port number to bind the router server (default 30000)", apply: integer(func(c *Config, v int) { c.Port = v })},
	{name: "worker-urls", kind: kindList, group: "Server", help: "List of worker URLs (e.g., http://worker1:8000 http://worker2:8000)", apply: list(func(c *Config, v []string) { c.WorkerURLs = v })},
	{name: "intra-node-data-parallel-size", kind: kindInt, group: "Server", help: "Data-parallel ranks behind each worker URL; each rank is routed with X-data-parallel-rank (default 1)", apply: integer(func(c *Config, v int) { c.IntraNodeDataParallelSize = v })},
	{name: "worker-startup-timeout-secs", kind: kindSecs, group: "Server", help: "Timeout in seconds for worker startup and /add_worker (default 600)", apply: secs(func(c *Config, d time.Duration) { c.WorkerStartupTimeout = d })},
	{name: "worker-startup-check-interval", kind: kindSecs, group: "Server", help: "Accepted; a worker not yet healthy is checked every second (default 30)", apply: secs(func(c *Config, d time.Duration) { c.WorkerStartupCheckInterval = d })},
	{name: "max-payload-size", kind: kindInt, group: "Server", help: "Maximum request body size in bytes (default 536870912)", apply: integer(func(c *Config, v int) { c.MaxPayloadSize = v })},
	{name: "request-timeout-secs", kind: kindSecs, group: "Server", help: "Total lifetime cap of a routed request, stream included (default 0 = none)", apply: secs(func(c *Config, d time.Duration) { c.RequestTimeout = d })},
	{name: "api-key", kind: kindString, group: "Server", help: "API key required from clients and sent to workers", apply: str(func(c *Config, v string) { c.APIKey = v })},
	{name: "enable-igw", kind: kindBool, group: "Server", ignored: true, help: "Inference Gateway multi-model mode (not supported; ignored)", apply: ignoreValue},
	{name: "mini-lb", kind: kindBool, group: "Server", ignored: true, help: "Python debugging load balancer (not supported; ignored)", apply: ignoreValue},
	{name: "log-dir", kind: kindString, group: "Server", help: "Directory for log files (default: stdout only)", apply: str(func(c *Config, v string) { c.LogDir = v })},
	{name: "log-level", kind: kindString, group: "Server", help: "debug, info, warning, error or critical (default info)", apply: str(func(c *Config, v string) { c.LogLevel = v })},
	{name: "cors-allowed-origins", kind: kindList, group: "Server", help: "Allowed CORS origins (default: any)", apply: list(func(c *Config, v []string) { c.CORSAllowedOrigins = v })},
	{name: "request-id-headers", kind: kindList, group: "Server", help: "Headers to read the request id from (default x-request-id x-correlation-id x-trace-id request-id)", apply: list(func(c *Config, v []string) {
		for i := range v {
			v[i] = strings.ToLower(v[i])
		}
		c.RequestIDHeaders = v
	})},
	{name: "backend", kind: kindString, group: "Server", ignored: true, help: "Backend runtime (only vllm; ignored)", apply: ignoreValue},
	{name: "model-path", kind: kindString, group: "Server", ignored: true, help: "Model path for the gRPC tokenizer (not supported; ignored)", apply: ignoreValue},
	{name: "tokenizer-path", kind: kindString, group: "Server", ignored: true, help: "Tokenizer path (not supported; ignored)", apply: ignoreValue},
	{name: "jwt-public-key-path", kind: kindString, group: "Server", ignored: true, help: "RS256 JWT auth (not supported; ignored)", apply: ignoreValue},
	{name: "api-key-validation-urls", kind: kindList, group: "Server", ignored: true, help: "External API key validation (not supported; ignored)", apply: ignoreValue},

	// Policy.
	{name: "policy", kind: kindString, group: "Policy", help: "Routing policy: " + strings.Join(PolicyNames, ", ") + " (default cache_aware)", apply: str(func(c *Config, v string) { c.Policy = v })},
	{name: "prefill-policy", kind: kindString, group: "Policy", help: "Policy for prefill workers in P/D mode (default: --policy)", apply: str(func(c *Config, v string) { c.PrefillPolicy = v })},
	{name: "decode-policy", kind: kindString, group: "Policy", help: "Policy for decode workers in P/D mode (default: --policy)", apply: str(func(c *Config, v string) { c.DecodePolicy = v })},
	{name: "cache-threshold", kind: kindFloat, group: "Policy", help: "cache_aware: minimum prefix match rate (default 0.3)", apply: float(func(c *Config, v float64) { c.CacheThreshold = v })},
	{name: "balance-abs-threshold", kind: kindInt, group: "Policy", help: "cache_aware: absolute load imbalance that switches to least-loaded (default 64)", apply: integer(func(c *Config, v int) { c.BalanceAbsThreshold = v })},
	{name: "balance-rel-threshold", kind: kindFloat, group: "Policy", help: "cache_aware: relative load imbalance that switches to least-loaded (default 1.5)", apply: float(func(c *Config, v float64) { c.BalanceRelThreshold = v })},
	{name: "eviction-interval-secs", kind: kindSecs, group: "Policy", help: "cache_aware: eviction interval (accepted; eviction happens on insert) (default 120)", apply: secs(func(c *Config, d time.Duration) { c.EvictionInterval = d })},
	{name: "eviction-interval", kind: kindSecs, group: "Policy", help: "alias of --eviction-interval-secs", apply: secs(func(c *Config, d time.Duration) { c.EvictionInterval = d })},
	{name: "max-tree-size", kind: kindInt, group: "Policy", help: "cache_aware: maximum prefix index size (default 67108864)", apply: integer(func(c *Config, v int) { c.MaxTreeSize = v })},

	// P/D.
	{name: "vllm-pd-disaggregation", kind: kindBool, group: "Prefill/decode", help: "vLLM NIXL prefill/decode disaggregation", apply: boolean(func(c *Config) { c.PDDisaggregation = true })},
	{name: "prefill", kind: kindPrefill, group: "Prefill/decode", help: "Prefill worker: URL [BOOTSTRAP_PORT|none]; repeat per worker", apply: func(c *Config, v []string) error {
		p := PrefillWorker{URL: v[0]}
		if len(v) > 1 && v[1] != "none" {
			n, err := strconv.Atoi(v[1])
			if err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("invalid bootstrap port %q (a port number or none)", v[1])
			}
			p.BootstrapPort = n
		}
		c.Prefill = append(c.Prefill, p)
		return nil
	}},
	{name: "decode", kind: kindAppend, group: "Prefill/decode", help: "Decode worker URL; repeat per worker", apply: func(c *Config, v []string) error { c.Decode = append(c.Decode, v[0]); return nil }},
	{name: "kv-connector", kind: kindString, group: "Prefill/decode", help: "KV connector: nixl (default nixl)", apply: str(func(c *Config, v string) { c.KVConnector = v })},
	{name: "vllm-discovery-address", kind: kindString, group: "Prefill/decode", ignored: true, help: "ZMQ P/D discovery (not supported; ignored)", apply: ignoreValue},
	{name: "pd-disaggregation", kind: kindBool, group: "Prefill/decode", ignored: true, help: "SGLang-style bootstrap P/D (not supported; ignored)", apply: ignoreValue},
	{name: "pd-kv-cache-ttl-secs", kind: kindSecs, group: "Prefill/decode", ignored: true, help: "PI fork decode KV metadata TTL (ignored)", apply: ignoreValue},

	// Reliability.
	{name: "retry-max-retries", kind: kindInt, group: "Reliability", help: "Total attempts for a request no worker processed (default 5)", apply: integer(func(c *Config, v int) { c.RetryMaxRetries = v })},
	{name: "retry-initial-backoff-ms", kind: kindMillis, group: "Reliability", help: "Initial retry backoff in ms (default 50)", apply: millis(func(c *Config, d time.Duration) { c.RetryInitialBackoff = d })},
	{name: "retry-max-backoff-ms", kind: kindMillis, group: "Reliability", help: "Maximum retry backoff in ms (default 30000)", apply: millis(func(c *Config, d time.Duration) { c.RetryMaxBackoff = d })},
	{name: "retry-backoff-multiplier", kind: kindFloat, group: "Reliability", help: "Backoff multiplier (default 1.5)", apply: float(func(c *Config, v float64) { c.RetryBackoffMultiplier = v })},
	{name: "retry-jitter-factor", kind: kindFloat, group: "Reliability", help: "Backoff jitter factor (default 0.2)", apply: float(func(c *Config, v float64) { c.RetryJitterFactor = v })},
	{name: "disable-retries", kind: kindBool, group: "Reliability", help: "Disable retries", apply: boolean(func(c *Config) { c.DisableRetries = true })},
	{name: "cb-failure-threshold", kind: kindInt, group: "Reliability", help: "Consecutive failures that open a worker's circuit (default 10)", apply: integer(func(c *Config, v int) { c.CBFailureThreshold = v })},
	{name: "cb-success-threshold", kind: kindInt, group: "Reliability", help: "Successes that close a half-open circuit (default 3)", apply: integer(func(c *Config, v int) { c.CBSuccessThreshold = v })},
	{name: "cb-timeout-duration-secs", kind: kindSecs, group: "Reliability", help: "Seconds an open circuit waits before half-open (default 60)", apply: secs(func(c *Config, d time.Duration) { c.CBTimeout = d })},
	{name: "cb-window-duration-secs", kind: kindSecs, group: "Reliability", help: "Accepted; unused as in vllm-router (default 120)", apply: secs(func(c *Config, d time.Duration) { c.CBWindow = d })},
	{name: "disable-circuit-breaker", kind: kindBool, group: "Reliability", help: "Disable the circuit breaker", apply: boolean(func(c *Config) { c.DisableCircuitBreaker = true })},
	{name: "health-failure-threshold", kind: kindInt, group: "Reliability", help: "Consecutive failed checks that mark a worker unhealthy (default 3)", apply: integer(func(c *Config, v int) { c.HealthFailureThreshold = v })},
	{name: "health-success-threshold", kind: kindInt, group: "Reliability", help: "Consecutive passed checks that mark a worker healthy again (default 2)", apply: integer(func(c *Config, v int) { c.HealthSuccessThreshold = v })},
	{name: "health-check-timeout-secs", kind: kindSecs, group: "Reliability", help: "Health check timeout (default 5)", apply: secs(func(c *Config, d time.Duration) { c.HealthCheckTimeout = d })},
	{name: "health-check-interval-secs", kind: kindSecs, group: "Reliability", help: "Health check interval (default 60)", apply: secs(func(c *Config, d time.Duration) { c.HealthCheckInterval = d })},
	{name: "health-check-endpoint", kind: kindString, group: "Reliability", help: "Health check path (default /health)", apply: str(func(c *Config, v string) { c.HealthCheckEndpoint = v })},
	{name: "max-concurrent-requests", kind: kindInt, group: "Reliability", help: "Requests in flight through the router before queueing (default 32768)", apply: integer(func(c *Config, v int) { c.MaxConcurrentRequests = v })},
	{name: "queue-size", kind: kindInt, group: "Reliability", help: "Requests that may wait for a slot; 0 = reject at once with 429 (default 100)", apply: integer(func(c *Config, v int) { c.QueueSize = v })},
	{name: "queue-timeout-secs", kind: kindSecs, group: "Reliability", help: "How long a queued request waits before 429 (default 60)", apply: secs(func(c *Config, d time.Duration) { c.QueueTimeout = d })},
	{name: "rate-limit-tokens-per-second", kind: kindInt, group: "Reliability", help: "Accepted for compatibility (the cap is on requests in flight)", apply: integer(func(c *Config, v int) { c.RateLimitTokensPerSecond = v })},

	// Discovery / metrics.
	{name: "service-discovery", kind: kindBool, group: "Discovery and metrics", ignored: true, help: "Kubernetes service discovery (not supported; ignored)", apply: ignoreValue},
	{name: "selector", kind: kindList, group: "Discovery and metrics", ignored: true, help: "Kubernetes label selector (ignored)", apply: ignoreValue},
	{name: "prefill-selector", kind: kindList, group: "Discovery and metrics", ignored: true, help: "Kubernetes prefill selector (ignored)", apply: ignoreValue},
	{name: "decode-selector", kind: kindList, group: "Discovery and metrics", ignored: true, help: "Kubernetes decode selector (ignored)", apply: ignoreValue},
	{name: "service-discovery-port", kind: kindInt, group: "Discovery and metrics", ignored: true, help: "Kubernetes worker port (ignored)", apply: ignoreValue},
	{name: "service-discovery-namespace", kind: kindString, group: "Discovery and metrics", ignored: true, help: "Kubernetes namespace (ignored)", apply: ignoreValue},
	{name: "prometheus-port", kind: kindInt, group: "Discovery and metrics", help: "Prometheus metrics port (default 29000; -1 disables)", apply: integer(func(c *Config, v int) { c.PrometheusPort = v })},
	{name: "prometheus-host", kind: kindString, group: "Discovery and metrics", help: "Prometheus metrics bind address (default 127.0.0.1)", apply: str(func(c *Config, v string) { c.PrometheusHost = v })},
	{name: "enable-trace", kind: kindBool, group: "Discovery and metrics", ignored: true, help: "OpenTelemetry tracing (not supported; ignored)", apply: ignoreValue},
	{name: "otlp-traces-endpoint", kind: kindString, group: "Discovery and metrics", ignored: true, help: "OTLP endpoint (not supported; ignored)", apply: ignoreValue},

	// Switchyard's own.
	{name: "connect-timeout-secs", kind: kindSecs, group: "Switchyard", help: "Worker dial timeout (default 10)", apply: secs(func(c *Config, d time.Duration) { c.ConnectTimeout = d })},
	{name: "response-header-timeout-secs", kind: kindSecs, group: "Switchyard", help: "Wait for a worker's first response byte (default 0 = none)", apply: secs(func(c *Config, d time.Duration) { c.ResponseHeaderTimeout = d })},
	{name: "stream-idle-timeout-secs", kind: kindSecs, group: "Switchyard", help: "Longest gap between two response chunks (default 300; 0 = none)", apply: secs(func(c *Config, d time.Duration) { c.StreamIdleTimeout = d })},
	{name: "admin-api-key", kind: kindString, group: "Switchyard", help: "Key required on worker-management and fan-out admin routes", apply: str(func(c *Config, v string) { c.AdminAPIKey = v })},
	{name: "max-inflight-per-worker", kind: kindInt, group: "Switchyard", help: "In-flight requests at which a worker counts as full (default 0 = no bound)", apply: integer(func(c *Config, v int) { c.MaxInflightPerWorker = v })},
	{name: "dp-rank-offset", kind: kindInt, group: "Switchyard", help: "Added to X-data-parallel-rank for hybrid DP deployments (default 0)", apply: integer(func(c *Config, v int) { c.DPRankOffset = v })},
	{name: "drain-timeout-secs", kind: kindSecs, group: "Switchyard", help: "On SIGTERM, how long in-flight requests may finish (default 30)", apply: secs(func(c *Config, d time.Duration) { c.DrainTimeout = d })},
}

func lookupFlag(name string) *flagSpec {
	for i := range flagSpecs {
		if flagSpecs[i].name == name {
			return &flagSpecs[i]
		}
	}
	return nil
}

// ParseFlags reads vllm-router's command line (without the program name) into a validated
// Config. Multi-value flags take space-separated values until the next flag, as argparse's
// nargs="*" does; "--flag=value" works for single values. -h/--help writes the grouped help
// to help and returns ErrHelp.
func ParseFlags(args []string, help io.Writer) (Config, error) {
	c := DefaultConfig()
	seenIgnored := map[string]bool{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "-h" || arg == "--help" {
			WriteHelp(help)
			return c, ErrHelp
		}
		if !strings.HasPrefix(arg, "--") || len(arg) == 2 {
			return c, fmt.Errorf("unexpected argument %q", arg)
		}
		name, inline, hasInline := strings.Cut(arg[2:], "=")
		name = strings.ReplaceAll(name, "_", "-")
		spec := lookupFlag(name)
		if spec == nil {
			return c, fmt.Errorf("unrecognized argument: --%s", name)
		}
		// Collect this flag's values.
		var vals []string
		next := func() (string, bool) {
			if i+1 < len(args) && !isFlag(args[i+1]) {
				i++
				return args[i], true
			}
			return "", false
		}
		switch spec.kind {
		case kindBool:
			if hasInline {
				return c, fmt.Errorf("--%s takes no value", name)
			}
		case kindList:
			if hasInline {
				vals = append(vals, strings.Fields(inline)...)
			}
			for v, ok := next(); ok; v, ok = next() {
				vals = append(vals, v)
			}
		case kindPrefill:
			if hasInline {
				vals = append(vals, inline)
			} else if v, ok := next(); ok {
				vals = append(vals, v)
			}
			if len(vals) == 0 {
				return c, fmt.Errorf("--%s expects URL [BOOTSTRAP_PORT|none]", name)
			}
			if v, ok := next(); ok {
				vals = append(vals, v)
			}
			if v, ok := next(); ok {
				return c, fmt.Errorf("--%s: unexpected extra value %q (one --prefill per worker)", name, v)
			}
		default:
			if hasInline {
				vals = append(vals, inline)
			} else if v, ok := next(); ok {
				vals = append(vals, v)
			} else {
				return c, fmt.Errorf("--%s expects a value", name)
			}
		}
		if err := spec.apply(&c, vals); err != nil {
			return c, fmt.Errorf("--%s: %w", name, err)
		}
		if spec.ignored && !seenIgnored[name] {
			seenIgnored[name] = true
			c.Ignored = append(c.Ignored, "--"+name)
		}
	}
	for i := range c.WorkerURLs {
		c.WorkerURLs[i] = normalizeWorkerURL(c.WorkerURLs[i])
	}
	for i := range c.Prefill {
		c.Prefill[i].URL = normalizeWorkerURL(c.Prefill[i].URL)
	}
	for i := range c.Decode {
		c.Decode[i] = normalizeWorkerURL(c.Decode[i])
	}
	return c, c.Validate()
}

// isFlag tells a flag from a value; negative numbers are values.
func isFlag(s string) bool {
	if !strings.HasPrefix(s, "-") || len(s) < 2 {
		return false
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	return true
}

// WriteHelp writes the flags grouped as vllm-router's --help groups them.
func WriteHelp(w io.Writer) {
	fmt.Fprintln(w, "usage: vllm-router [options]")
	fmt.Fprintln(w, "\nSwitchyard: a drop-in, native Go replacement for vllm-router.")
	for _, g := range flagGroups {
		fmt.Fprintf(w, "\n%s:\n", g)
		for _, f := range flagSpecs {
			if f.group != g {
				continue
			}
			arg := ""
			switch f.kind {
			case kindList:
				arg = " [VALUE ...]"
			case kindPrefill:
				arg = " URL [BOOTSTRAP_PORT|none]"
			case kindBool:
			default:
				arg = " " + strings.ToUpper(strings.ReplaceAll(f.name, "-", "_"))
			}
			fmt.Fprintf(w, "  --%s%s\n        %s\n", f.name, arg, f.help)
		}
	}
}
