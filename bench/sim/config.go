package sim

import (
	"errors"
	"fmt"
	"time"
)

// Role is the part a simulated worker plays in prefill/decode disaggregation. vLLM itself
// does not enforce roles (the proxy decides who prefills), so neither does the simulator:
// the role only labels the worker in Stats, metrics and logs.
type Role string

const (
	// RoleBoth serves whole requests, prefill legs and decode legs alike.
	RoleBoth Role = "both"
	// RolePrefill marks a worker meant to serve prefill legs.
	RolePrefill Role = "prefill"
	// RoleDecode marks a worker meant to serve decode legs.
	RoleDecode Role = "decode"
)

// ErrInvalidConfig is wrapped by every Config validation error.
var ErrInvalidConfig = errors.New("sim: invalid config")

// Config describes one simulated vLLM worker. Build it with DefaultConfig and change what
// you need; New validates it once.
type Config struct {
	// Name is the worker name sent in the X-Switchyard-Worker response header.
	// Default "" means the listen address given to Serve.
	Name string
	// Model is the served model name: the only id listed by /v1/models and accepted in a
	// request's "model" field (an empty "model" is accepted too). Default "sim-model".
	Model string
	// ModelAliases are further accepted model names (vLLM's --served-model-name takes
	// several). Default none.
	ModelAliases []string
	// Role labels the worker for P/D tests; see Role. Default RoleBoth; zero means RoleBoth.
	Role Role
	// EngineID is advertised as remote_engine_id in kv_transfer_params. Default "" means
	// one derived from Name (or the listen address) at Serve time.
	EngineID string
	// Version is what /version reports. Default "0.26.0" (the release prime-rl pins).
	Version string

	// MaxNumSeqs bounds the sequences running at once (vLLM --max-num-seqs); requests
	// beyond it wait in a FIFO queue and count in vllm:num_requests_waiting. Default 256;
	// must be positive.
	MaxNumSeqs int
	// MaxModelLen is the context length in tokens; prompt plus max_tokens beyond it is a
	// 400. Default 32768; must be positive.
	MaxModelLen int
	// DataParallelSize is vLLM's --data-parallel-size. When above 1, an
	// X-data-parallel-rank header at or beyond it is a 400, as vLLM's engine core rejects
	// it. Default 1; zero means 1.
	DataParallelSize int
	// DataParallelSize engines are simulated, each with its own running slots
	// (MaxNumSeqs applies per engine, as in vLLM), prefix cache and engine label. A request
	// with X-data-parallel-rank goes to that engine, others to the least loaded one.
	//
	// DataParallelExternalLB makes this process a single DP rank of a larger deployment
	// (vLLM --data-parallel-rank, external load balancing): one engine, labelled
	// DataParallelRank. Default false.
	DataParallelExternalLB bool
	// DataParallelRank is this process's rank under DataParallelExternalLB; it also
	// offsets the side-channel port. Default 0.
	DataParallelRank int
	// TensorParallelSize is reported as tp_size in kv_transfer_params. Default 1; zero
	// means 1.
	TensorParallelSize int
	// APIKeys, when not empty, makes every /v1/* route require "Authorization: Bearer
	// <one of them>", as vLLM's --api-key does; other paths stay open. Default none.
	APIKeys []string

	// TTFTBase is the fixed part of the time to first token. Default 10ms; zero means none.
	TTFTBase time.Duration
	// PrefillPerToken is added to the time to first token for every prompt token not
	// found in the prefix cache (nor received over a KV transfer). Default 20µs; zero
	// means prefill costs nothing.
	PrefillPerToken time.Duration
	// InterTokenLatency is the time between two generated tokens. Default 5ms; zero means
	// tokens come back to back.
	InterTokenLatency time.Duration
	// OutputTokens is the natural completion length in tokens: generation stops there with
	// finish_reason "stop" unless max_tokens is lower ("length") or min_tokens higher.
	// Default 16; must be positive.
	OutputTokens int

	// BlockSize is the prefix-cache block size in tokens (vLLM --block-size). Default 16;
	// must be positive.
	BlockSize int
	// CacheBlocks is the prefix cache capacity in blocks; the least recently used block is
	// evicted beyond it. It is also the KV capacity behind vllm:kv_cache_usage_perc.
	// Default 65536; must be positive.
	CacheBlocks int

	// KVLeaseDuration is how long a prefill leg keeps its blocks for the decode leg (the
	// NixlConnector kv_lease_duration). An unclaimed lease then expires and counts in
	// vllm:nixl_num_kv_expired_reqs_total. Default 30s; must be positive.
	KVLeaseDuration time.Duration
	// KVClaimTimeout bounds the decode leg's side-channel call to the prefill worker.
	// Default 2s; must be positive.
	KVClaimTimeout time.Duration
	// KVLoadFailurePolicy is what a decode leg does when the KV it was sent cannot be
	// loaded (the prefill worker is unreachable, or refuses the claim): "recompute"
	// prefills locally; "fail" answers 500 (in-band error event when streaming), as
	// vLLM's kv_load_failure_policy. Params vLLM deems invalid are always recomputed.
	// Default "" means "recompute".
	KVLoadFailurePolicy string
	// SideChannelListen, when set ("host:port"), makes Serve open a second listener that
	// serves only the KV side channel (VLLM_NIXL_SIDE_CHANNEL_HOST/PORT). Default "" means
	// the side channel is served on the main listener.
	SideChannelListen string
	// SideChannelHost and SideChannelPort are advertised as remote_host/remote_port.
	// Default ""/0 means the address of the listener serving the side channel (an
	// unspecified bind address is advertised as 127.0.0.1).
	SideChannelHost string
	SideChannelPort int

	// ReturnRoutedExperts makes /inference/v1/generate return deterministic routed_experts
	// and prompt_token_ids (vLLM --enable-return-routed-experts). Default false.
	ReturnRoutedExperts bool
	// RoutedExpertLayers and RoutedExpertTopK shape routed_experts rows. Defaults 4 and 2;
	// must be positive.
	RoutedExpertLayers int
	RoutedExpertTopK   int

	// Fault is the initial fault injection state; POST /sim/fault replaces it at run time.
	// Default: no faults.
	Fault Fault

	// ShutdownGrace bounds how long Shutdown waits for connections to close after ending
	// in-flight streams. Default 5s; must be positive.
	ShutdownGrace time.Duration
}

// Fault is the fault injection state. Its JSON form is the body of POST /sim/fault.
type Fault struct {
	// FailRate is the share of generation requests, in [0,1], answered at once with
	// FailStatus and a vLLM error body. Default 0.
	FailRate float64 `json:"fail_rate"`
	// FailStatus is the status of injected failures. Default 0 means 500.
	FailStatus int `json:"fail_status"`
	// Hang makes generation requests wait without an answer until the fault is changed
	// or the server shuts down. Default false.
	Hang bool `json:"hang"`
	// SlowFactor multiplies every simulated duration. Default 0 means 1.
	SlowFactor float64 `json:"slow_factor"`
	// DieMidStreamAfter, when positive, resets the connection after that many SSE events
	// of a streamed response (no [DONE], no final chunk), as when a worker dies. Responses
	// that are not streamed are not affected. Default 0: never.
	DieMidStreamAfter int `json:"die_mid_stream_after"`
	// HealthFail makes /health answer 503. Default false.
	HealthFail bool `json:"health_fail"`
	// Seed seeds the generator that decides which requests fail, so a run is repeatable.
	// Setting a fault reseeds it. Default 0.
	Seed uint64 `json:"seed"`
}

func (f Fault) validate() error {
	if f.FailRate < 0 || f.FailRate > 1 {
		return fmt.Errorf("%w: fail_rate %v outside [0,1]", ErrInvalidConfig, f.FailRate)
	}
	if f.FailStatus != 0 && (f.FailStatus < 400 || f.FailStatus > 599) {
		return fmt.Errorf("%w: fail_status %d is not a 4xx/5xx status", ErrInvalidConfig, f.FailStatus)
	}
	if f.SlowFactor < 0 {
		return fmt.Errorf("%w: slow_factor %v is negative", ErrInvalidConfig, f.SlowFactor)
	}
	if f.DieMidStreamAfter < 0 {
		return fmt.Errorf("%w: die_mid_stream_after %d is negative", ErrInvalidConfig, f.DieMidStreamAfter)
	}
	return nil
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Model:              "sim-model",
		Role:               RoleBoth,
		Version:            "0.26.0",
		MaxNumSeqs:         256,
		MaxModelLen:        32768,
		DataParallelSize:   1,
		TensorParallelSize: 1,
		TTFTBase:           10 * time.Millisecond,
		PrefillPerToken:    20 * time.Microsecond,
		InterTokenLatency:  5 * time.Millisecond,
		OutputTokens:       16,
		BlockSize:          16,
		CacheBlocks:        65536,
		KVLeaseDuration:    30 * time.Second,
		KVClaimTimeout:     2 * time.Second,
		RoutedExpertLayers: 4,
		RoutedExpertTopK:   2,
		ShutdownGrace:      5 * time.Second,
	}
}

// validate fills zero values that have a documented meaning and rejects the rest.
func (c *Config) validate() error {
	if c.Role == "" {
		c.Role = RoleBoth
	}
	if c.DataParallelSize == 0 {
		c.DataParallelSize = 1
	}
	if c.TensorParallelSize == 0 {
		c.TensorParallelSize = 1
	}
	if c.Version == "" {
		c.Version = "0.26.0"
	}
	switch c.KVLoadFailurePolicy {
	case "":
		c.KVLoadFailurePolicy = "recompute"
	case "recompute", "fail":
	default:
		return fmt.Errorf("%w: kv_load_failure_policy %q is not recompute or fail", ErrInvalidConfig, c.KVLoadFailurePolicy)
	}
	switch c.Role {
	case RoleBoth, RolePrefill, RoleDecode:
	default:
		return fmt.Errorf("%w: role %q is not prefill, decode or both", ErrInvalidConfig, c.Role)
	}
	positive := []struct {
		name string
		v    int64
	}{
		{"max_num_seqs", int64(c.MaxNumSeqs)},
		{"max_model_len", int64(c.MaxModelLen)},
		{"data_parallel_size", int64(c.DataParallelSize)},
		{"tensor_parallel_size", int64(c.TensorParallelSize)},
		{"output_tokens", int64(c.OutputTokens)},
		{"block_size", int64(c.BlockSize)},
		{"cache_blocks", int64(c.CacheBlocks)},
		{"kv_lease_duration", int64(c.KVLeaseDuration)},
		{"kv_claim_timeout", int64(c.KVClaimTimeout)},
		{"routed_expert_layers", int64(c.RoutedExpertLayers)},
		{"routed_expert_topk", int64(c.RoutedExpertTopK)},
		{"shutdown_grace", int64(c.ShutdownGrace)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrInvalidConfig, p.name, p.v)
		}
	}
	if c.Model == "" {
		return fmt.Errorf("%w: model name is empty", ErrInvalidConfig)
	}
	if c.DataParallelRank < 0 || (c.DataParallelExternalLB && c.DataParallelRank >= c.DataParallelSize) {
		return fmt.Errorf("%w: data_parallel_rank %d outside [0, %d)", ErrInvalidConfig, c.DataParallelRank, c.DataParallelSize)
	}
	if c.TTFTBase < 0 || c.PrefillPerToken < 0 || c.InterTokenLatency < 0 {
		return fmt.Errorf("%w: timings must not be negative", ErrInvalidConfig)
	}
	if c.SideChannelPort < 0 || c.SideChannelPort > 65535 {
		return fmt.Errorf("%w: side channel port %d out of range", ErrInvalidConfig, c.SideChannelPort)
	}
	return c.Fault.validate()
}
