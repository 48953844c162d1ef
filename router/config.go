package router

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is the router's whole configuration, decoded once from vllm-router's command line
// (ParseFlags) and validated once (Validate). Field comments give the unit, the default and
// what zero means. Nothing here is re-read on the request path.
type Config struct {
	// Host is the client-facing bind address. Default 127.0.0.1.
	Host string
	// Port is the client-facing port. Default 30000; 0 picks a free port (tests, demo).
	Port int
	// WorkerURLs are the regular-mode workers, "http://host:port". Default none.
	WorkerURLs []string
	// IntraNodeDataParallelSize expands each worker URL into that many data-parallel
	// ranks url@0..url@N-1, each routed with an X-data-parallel-rank header. Default 1.
	IntraNodeDataParallelSize int
	// DPRankOffset is added to every rank number sent in X-data-parallel-rank, for hybrid
	// deployments where this node's engines own global ranks offset..offset+N-1
	// (vllm-router PR #210). Default 0.
	DPRankOffset int
	// WorkerStartupTimeout bounds how long /add_worker waits for a new worker's health.
	// Default 600 s. The router itself binds at once and never waits for workers.
	WorkerStartupTimeout time.Duration
	// WorkerStartupCheckInterval is accepted for compatibility; health is polled every
	// second until a worker is first healthy. Default 30 s.
	WorkerStartupCheckInterval time.Duration
	// MaxPayloadSize is the largest request body accepted, in bytes; larger → 413.
	// Default 512 MiB.
	MaxPayloadSize int
	// RequestTimeout caps a request's whole life, stream included. Default 0 = no cap
	// (vllm-router's 1800 s cut long rollouts; set it explicitly to get one).
	RequestTimeout time.Duration
	// ConnectTimeout bounds dialing a worker. Default 10 s.
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a worker's first response byte after the
	// request was sent. Non-streaming generations answer only when done, so the default
	// is generous: 0 = no bound beyond RequestTimeout.
	ResponseHeaderTimeout time.Duration
	// StreamIdleTimeout bounds the gap between two chunks of a response body, so a hung
	// worker cannot hold a stream (and its in-flight count) forever. Default 300 s; 0 = none.
	StreamIdleTimeout time.Duration
	// APIKey, when set, is required from clients as "Authorization: Bearer <key>" on data
	// routes and is sent to workers (health checks included). Default unset.
	APIKey string
	// AdminAPIKey, when set, is required on worker-management and fan-out admin routes.
	// Default unset = those routes need APIKey when that is set, else nothing.
	AdminAPIKey string
	// LogLevel is debug, info, warning, error or critical. Default info.
	LogLevel string
	// LogDir, when set, also writes logs to LogDir/vllm-router.log. Default unset.
	LogDir string
	// CORSAllowedOrigins lists allowed origins; empty allows any. Default empty.
	CORSAllowedOrigins []string
	// RequestIDHeaders are the client headers, in order, whose first present value becomes
	// the request id. Default x-request-id x-correlation-id x-trace-id request-id.
	RequestIDHeaders []string

	// Policy names the routing policy. Default cache_aware (as vllm-router).
	Policy string
	// PrefillPolicy and DecodePolicy choose per P/D stage; empty = Policy.
	PrefillPolicy string
	DecodePolicy  string
	// CacheThreshold is cache_aware's minimum prefix match rate. Default 0.3.
	CacheThreshold float64
	// BalanceAbsThreshold and BalanceRelThreshold make cache_aware pick the least-loaded
	// worker once max-min load exceeds abs and max > min*rel. Defaults 64 and 1.5.
	BalanceAbsThreshold int
	BalanceRelThreshold float64
	// EvictionInterval is accepted for compatibility (the tree evicts on insert). Default 120 s.
	EvictionInterval time.Duration
	// MaxTreeSize bounds cache_aware's prefix index. Default 2^26.
	MaxTreeSize int
	// MaxInflightPerWorker marks a worker full (unavailable to policies) at that many
	// in-flight requests. Default 0 = no bound.
	MaxInflightPerWorker int

	// PDDisaggregation switches to vLLM NIXL prefill/decode mode. Default false.
	PDDisaggregation bool
	// Prefill and Decode are the P/D workers. Prefill entries keep their bootstrap port
	// for compatibility; NIXL does not use it.
	Prefill []PrefillWorker
	Decode  []string
	// KVConnector is nixl (the only one implemented). Default nixl.
	KVConnector string

	// Retry is the retry policy for requests that no worker processed.
	RetryMaxRetries        int           // total attempts; default 5
	RetryInitialBackoff    time.Duration // default 50 ms
	RetryMaxBackoff        time.Duration // default 30 s
	RetryBackoffMultiplier float64       // default 1.5
	RetryJitterFactor      float64       // default 0.2
	DisableRetries         bool

	// Circuit breaker per worker: opens after CBFailureThreshold consecutive failures,
	// half-opens after CBTimeout, closes after CBSuccessThreshold successes.
	CBFailureThreshold    int           // default 10
	CBSuccessThreshold    int           // default 3
	CBTimeout             time.Duration // default 60 s
	CBWindow              time.Duration // accepted; unused, as in vllm-router
	DisableCircuitBreaker bool

	// Active health checks per worker base URL.
	HealthFailureThreshold int           // default 3
	HealthSuccessThreshold int           // default 2
	HealthCheckTimeout     time.Duration // default 5 s
	HealthCheckInterval    time.Duration // default 60 s
	HealthCheckEndpoint    string        // default /health

	// MaxConcurrentRequests caps requests in flight through the router; more wait in a
	// queue of QueueSize for up to QueueTimeout, then get 429. Defaults 32768, 100, 60 s.
	MaxConcurrentRequests int
	QueueSize             int
	QueueTimeout          time.Duration
	// RateLimitTokensPerSecond is accepted for compatibility. Default 0 = unset.
	RateLimitTokensPerSecond int

	// PrometheusHost and PrometheusPort are the metrics listener. Defaults 127.0.0.1 and
	// 29000; port 0 picks a free port; -1 disables the listener.
	PrometheusHost string
	PrometheusPort int

	// DrainTimeout bounds how long shutdown waits for in-flight requests. Default 30 s.
	DrainTimeout time.Duration

	// Ignored lists flags accepted for compatibility but not implemented; each gets one
	// warning at start.
	Ignored []string
}

// PrefillWorker is one --prefill URL [BOOTSTRAP_PORT|none].
type PrefillWorker struct {
	URL           string
	BootstrapPort int // 0 = none
}

// DefaultConfig returns vllm-router's defaults, with Switchyard's where §14 says to differ.
func DefaultConfig() Config {
	return Config{
		Host:                       "127.0.0.1",
		Port:                       30000,
		IntraNodeDataParallelSize:  1,
		WorkerStartupTimeout:       600 * time.Second,
		WorkerStartupCheckInterval: 30 * time.Second,
		MaxPayloadSize:             512 << 20,
		ConnectTimeout:             10 * time.Second,
		StreamIdleTimeout:          300 * time.Second,
		LogLevel:                   "info",
		RequestIDHeaders:           []string{"x-request-id", "x-correlation-id", "x-trace-id", "request-id"},
		Policy:                     "cache_aware",
		CacheThreshold:             0.3,
		BalanceAbsThreshold:        64,
		BalanceRelThreshold:        1.5,
		EvictionInterval:           120 * time.Second,
		MaxTreeSize:                1 << 26,
		KVConnector:                "nixl",
		RetryMaxRetries:            5,
		RetryInitialBackoff:        50 * time.Millisecond,
		RetryMaxBackoff:            30 * time.Second,
		RetryBackoffMultiplier:     1.5,
		RetryJitterFactor:          0.2,
		CBFailureThreshold:         10,
		CBSuccessThreshold:         3,
		CBTimeout:                  60 * time.Second,
		CBWindow:                   120 * time.Second,
		HealthFailureThreshold:     3,
		HealthSuccessThreshold:     2,
		HealthCheckTimeout:         5 * time.Second,
		HealthCheckInterval:        60 * time.Second,
		HealthCheckEndpoint:        "/health",
		MaxConcurrentRequests:      32768,
		QueueSize:                  100,
		QueueTimeout:               60 * time.Second,
		PrometheusHost:             "127.0.0.1",
		PrometheusPort:             29000,
		DrainTimeout:               30 * time.Second,
	}
}

// Validate checks the configuration once, at start-up, and says what is wrong.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Port < 0 || c.Port > 65535 {
		bad("--port %d: must be 0..65535", c.Port)
	}
	if c.PrometheusPort < -1 || c.PrometheusPort > 65535 {
		bad("--prometheus-port %d: must be 0..65535 (or -1 to disable)", c.PrometheusPort)
	}
	if c.IntraNodeDataParallelSize < 1 {
		bad("--intra-node-data-parallel-size %d: must be ≥ 1", c.IntraNodeDataParallelSize)
	}
	if c.DPRankOffset < 0 {
		bad("--dp-rank-offset %d: must be ≥ 0", c.DPRankOffset)
	}
	if c.MaxPayloadSize <= 0 {
		bad("--max-payload-size %d: must be > 0", c.MaxPayloadSize)
	}
	if c.RequestTimeout < 0 || c.ConnectTimeout < 0 || c.ResponseHeaderTimeout < 0 || c.StreamIdleTimeout < 0 {
		bad("timeouts must not be negative")
	}
	if !validPolicy(c.Policy) {
		bad("--policy %q: must be one of %s", c.Policy, strings.Join(PolicyNames, ", "))
	}
	for _, p := range []struct{ flag, v string }{{"--prefill-policy", c.PrefillPolicy}, {"--decode-policy", c.DecodePolicy}} {
		if p.v != "" && !validPolicy(p.v) {
			bad("%s %q: must be one of %s", p.flag, p.v, strings.Join(PolicyNames, ", "))
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error", "critical":
	default:
		bad("--log-level %q: must be one of debug, info, warning, error, critical", c.LogLevel)
	}
	if c.KVConnector != "nixl" {
		bad("--kv-connector %q: only nixl is supported", c.KVConnector)
	}
	if c.RetryMaxRetries < 1 {
		c.RetryMaxRetries = 1 // vllm-router: max(1)
	}
	if c.RetryBackoffMultiplier < 1 {
		bad("--retry-backoff-multiplier %v: must be ≥ 1", c.RetryBackoffMultiplier)
	}
	if c.RetryJitterFactor < 0 || c.RetryJitterFactor > 1 {
		bad("--retry-jitter-factor %v: must be in [0, 1]", c.RetryJitterFactor)
	}
	if c.CBFailureThreshold < 1 || c.CBSuccessThreshold < 1 {
		bad("--cb-failure-threshold and --cb-success-threshold must be ≥ 1")
	}
	if c.HealthFailureThreshold < 1 || c.HealthSuccessThreshold < 1 {
		bad("--health-failure-threshold and --health-success-threshold must be ≥ 1")
	}
	if c.HealthCheckInterval <= 0 || c.HealthCheckTimeout <= 0 {
		bad("--health-check-interval-secs and --health-check-timeout-secs must be > 0")
	}
	if !strings.HasPrefix(c.HealthCheckEndpoint, "/") {
		bad("--health-check-endpoint %q: must start with /", c.HealthCheckEndpoint)
	}
	if c.MaxConcurrentRequests < 1 {
		bad("--max-concurrent-requests %d: must be ≥ 1", c.MaxConcurrentRequests)
	}
	if c.QueueSize < 0 || c.QueueTimeout < 0 {
		bad("--queue-size and --queue-timeout-secs must not be negative")
	}
	if c.MaxInflightPerWorker < 0 {
		bad("--max-inflight-per-worker %d: must be ≥ 0", c.MaxInflightPerWorker)
	}
	for _, u := range c.WorkerURLs {
		if err := checkWorkerURL(u); err != nil {
			bad("--worker-urls: %v", err)
		}
	}
	if c.PDDisaggregation {
		if len(c.WorkerURLs) > 0 {
			bad("--worker-urls cannot be combined with --vllm-pd-disaggregation; use --prefill and --decode")
		}
		for _, p := range c.Prefill {
			if err := checkWorkerURL(p.URL); err != nil {
				bad("--prefill: %v", err)
			}
		}
		prefill := map[string]bool{}
		for _, p := range c.Prefill {
			prefill[normalizeWorkerURL(p.URL)] = true
		}
		for _, u := range c.Decode {
			if err := checkWorkerURL(u); err != nil {
				bad("--decode: %v", err)
			}
			if prefill[normalizeWorkerURL(u)] {
				bad("--decode %s: the same worker cannot also be a --prefill worker", u)
			}
		}
	} else if len(c.Prefill) > 0 || len(c.Decode) > 0 {
		bad("--prefill/--decode need --vllm-pd-disaggregation")
	}
	if len(c.RequestIDHeaders) == 0 {
		bad("--request-id-headers needs at least one header name")
	}
	return errors.Join(errs...)
}

// PolicyNames are the policies --policy accepts.
var PolicyNames = []string{"cache_aware", "consistent_hash", "round_robin", "random", "power_of_two",
	"least_loaded", "sticky_least_loaded", "rendezvous_hash"}

func validPolicy(name string) bool {
	for _, n := range PolicyNames {
		if n == name {
			return true
		}
	}
	return false
}

// checkWorkerURL accepts http://host:port[/], the form vLLM workers are reached at.
func checkWorkerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("worker URL %q: %v", raw, err)
	}
	if u.Scheme != "http" {
		return fmt.Errorf("worker URL %q: scheme must be http", raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("worker URL %q: want http://host:port", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return fmt.Errorf("worker URL %q: want http://host:port", raw)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("worker URL %q: bad port", raw)
	}
	return nil
}

// normalizeWorkerURL drops a trailing slash so one worker has one name.
func normalizeWorkerURL(raw string) string { return strings.TrimRight(raw, "/") }
