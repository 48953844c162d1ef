package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Policy names, as vllm-router's --policy spells them.
const (
	NameRoundRobin        = "round_robin"
	NameConsistentHash    = "consistent_hash"
	NameRandom            = "random"
	NamePowerOfTwo        = "power_of_two"
	NameLeastLoaded       = "least_loaded"
	NameStickyLeastLoaded = "sticky_least_loaded"
	NameCacheAware        = "cache_aware"
	NameRendezvousHash    = "rendezvous_hash"
)

// Names lists the policies New accepts.
func Names() []string {
	return []string{
		NameRoundRobin, NameConsistentHash, NameRandom, NamePowerOfTwo,
		NameLeastLoaded, NameStickyLeastLoaded, NameCacheAware, NameRendezvousHash,
	}
}

// ErrUnknownPolicy is returned by New for a name not in Names().
var ErrUnknownPolicy = errors.New("policy: unknown policy")

// Config holds every policy knob; each policy reads only its own. Zero values mean the
// default unless a field says otherwise; DefaultConfig returns the defaults spelled out.
type Config struct {
	// Rand is the randomness of random and power_of_two. Nil means math/rand/v2's global
	// source; tests inject a fixed sequence.
	Rand Rand
	// Clock tells the time for sticky_least_loaded's session TTLs. Nil means time.Now.
	Clock func() time.Time

	// PartitionCount, ReplicationFactor, Load and MaxFallbacks shape consistent_hash's
	// ring; see ConsistentHashConfig. Zero means 65521 partitions, 400 virtual nodes per
	// member, load bound 1.15, 8 ring successors tried when the owner is unusable.
	PartitionCount    int
	ReplicationFactor int
	Load              float64
	MaxFallbacks      int

	// SessionTTL is how long a sticky_least_loaded session may idle before it lapses. Zero
	// means 2 h.
	SessionTTL time.Duration
	// MaxSessions bounds the sessions sticky_least_loaded holds; past it (after sweeping
	// expired ones) new sessions are routed statelessly. Zero means 100 000.
	MaxSessions int
	// MaxSessionIDBytes is the longest session id sticky_least_loaded tracks; longer ids
	// are treated as no session. Zero means 256.
	MaxSessionIDBytes int
	// SessionSweepInterval is the least time between sticky_least_loaded's sweeps of
	// expired sessions. Zero means 1 min.
	SessionSweepInterval time.Duration

	// CacheThreshold is cache_aware's minimum matched fraction of the prompt, in [0, 1],
	// to follow the prefix. Taken literally: zero means any match (DefaultConfig: 0.3).
	CacheThreshold float64
	// BalanceAbsThreshold and BalanceRelThreshold: cache_aware ignores prefixes when
	// max−min in-flight > BalanceAbsThreshold and max > min·BalanceRelThreshold. Taken
	// literally: zero means balance on any difference (DefaultConfig: 64 and 1.5).
	BalanceAbsThreshold int64
	BalanceRelThreshold float64
	// MaxTreeSize bounds cache_aware's index, in prompt bytes summed over workers; LRU
	// eviction past it. Zero means 2^26 (~52 MB of index).
	MaxTreeSize int
	// PrefixBlockSize is cache_aware's prefix granularity in bytes. Zero means 64.
	PrefixBlockSize int
}

// DefaultConfig returns vllm-router's defaults for every knob (the thresholds of
// cache_aware are the ones whose zero value is not the default).
func DefaultConfig() Config {
	ca := DefaultCacheAwareConfig()
	return Config{
		PartitionCount:       DefaultPartitionCount,
		ReplicationFactor:    DefaultReplicationFactor,
		Load:                 DefaultLoad,
		MaxFallbacks:         DefaultMaxFallbacks,
		SessionTTL:           DefaultSessionTTL,
		MaxSessions:          DefaultMaxSessions,
		MaxSessionIDBytes:    DefaultMaxSessionIDBytes,
		SessionSweepInterval: DefaultSweepInterval,
		CacheThreshold:       ca.CacheThreshold,
		BalanceAbsThreshold:  ca.BalanceAbsThreshold,
		BalanceRelThreshold:  ca.BalanceRelThreshold,
		MaxTreeSize:          ca.MaxTreeSize,
		PrefixBlockSize:      ca.BlockSize,
	}
}

// New builds the named policy from cfg. Each call returns a fresh instance with its own
// state (vllm-router gives the prefill and decode stages separate instances too).
func New(name string, cfg Config) (Policy, error) {
	switch name {
	case NameRoundRobin:
		return NewRoundRobin(RoundRobinConfig{})
	case NameConsistentHash:
		return NewConsistentHash(ConsistentHashConfig{
			PartitionCount:    cfg.PartitionCount,
			ReplicationFactor: cfg.ReplicationFactor,
			Load:              cfg.Load,
			MaxFallbacks:      cfg.MaxFallbacks,
		})
	case NameRandom:
		return NewRandom(RandomConfig{Rand: cfg.Rand})
	case NamePowerOfTwo:
		return NewPowerOfTwo(PowerOfTwoConfig{Rand: cfg.Rand})
	case NameLeastLoaded:
		return NewLeastLoaded(LeastLoadedConfig{})
	case NameStickyLeastLoaded:
		return NewStickyLeastLoaded(StickyLeastLoadedConfig{
			TTL:               cfg.SessionTTL,
			MaxSessions:       cfg.MaxSessions,
			MaxSessionIDBytes: cfg.MaxSessionIDBytes,
			SweepInterval:     cfg.SessionSweepInterval,
			Clock:             cfg.Clock,
		})
	case NameCacheAware:
		return NewCacheAware(CacheAwareConfig{
			CacheThreshold:      cfg.CacheThreshold,
			BalanceAbsThreshold: cfg.BalanceAbsThreshold,
			BalanceRelThreshold: cfg.BalanceRelThreshold,
			MaxTreeSize:         cfg.MaxTreeSize,
			BlockSize:           cfg.PrefixBlockSize,
		})
	case NameRendezvousHash:
		return NewRendezvousHash(RendezvousHashConfig{})
	}
	return nil, fmt.Errorf("%w %q; valid: %s", ErrUnknownPolicy, name, strings.Join(Names(), ", "))
}
