package health

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// State is a circuit breaker state. The values are those of vllm_router_cb_state.
type State uint8

const (
	// Closed: requests flow; consecutive failures are counted.
	Closed State = 0
	// Open: requests are refused until Timeout has elapsed.
	Open State = 1
	// HalfOpen: a bounded number of probe requests decide between Closed and Open.
	HalfOpen State = 2
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half_open"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Defaults match vllm-router's --cb-* flags.
const (
	DefaultBreakerFailureThreshold = 10
	DefaultBreakerSuccessThreshold = 3
	DefaultBreakerTimeout          = 60 * time.Second
)

// BreakerConfig configures a per-endpoint circuit breaker. The zero value means "all
// defaults". Validate it once at start-up; NewBreaker replaces out-of-range values by
// their defaults rather than failing.
type BreakerConfig struct {
	// FailureThreshold is the number of consecutive Failure outcomes that open a closed
	// circuit (--cb-failure-threshold). Default 10; zero means default.
	FailureThreshold int
	// SuccessThreshold is the number of consecutive Success outcomes in half-open that
	// close the circuit (--cb-success-threshold). Default 3; zero means default.
	SuccessThreshold int
	// Timeout is how long an open circuit refuses requests before admitting probes
	// (--cb-timeout-duration-secs). Default 60s; zero means default.
	Timeout time.Duration
	// HalfOpenProbes bounds the requests admitted at once in half-open (vllm-router lets
	// every request through). Default SuccessThreshold, so one round of probes can close
	// the circuit; zero means default.
	HalfOpenProbes int
	// Disabled turns the breaker off: always Closed, always Ready (--disable-circuit-breaker).
	Disabled bool
	// OnStateChange, when set, is called on every transition, in order, under the
	// breaker's lock: it must be quick and must not call the breaker. Use it for
	// vllm_router_cb_state and vllm_router_cb_state_transitions_total.
	OnStateChange func(from, to State)
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c BreakerConfig) WithDefaults() BreakerConfig {
	if c.FailureThreshold == 0 {
		c.FailureThreshold = DefaultBreakerFailureThreshold
	}
	if c.SuccessThreshold == 0 {
		c.SuccessThreshold = DefaultBreakerSuccessThreshold
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultBreakerTimeout
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = c.SuccessThreshold
	}
	return c
}

// Validate reports the first invalid field of c.
func (c BreakerConfig) Validate() error {
	switch {
	case c.FailureThreshold < 0:
		return fmt.Errorf("%w: breaker FailureThreshold %d is negative", ErrInvalidConfig, c.FailureThreshold)
	case c.SuccessThreshold < 0:
		return fmt.Errorf("%w: breaker SuccessThreshold %d is negative", ErrInvalidConfig, c.SuccessThreshold)
	case c.Timeout < 0:
		return fmt.Errorf("%w: breaker Timeout %v is negative", ErrInvalidConfig, c.Timeout)
	case c.HalfOpenProbes < 0:
		return fmt.Errorf("%w: breaker HalfOpenProbes %d is negative", ErrInvalidConfig, c.HalfOpenProbes)
	}
	return nil
}

// Breaker is the passive health of one endpoint (one DP rank): vllm-router's
// core/circuit_breaker.rs semantics. Closed → Open after FailureThreshold consecutive
// failures; Open → HalfOpen once Timeout has elapsed (checked lazily, on Ready/Acquire);
// HalfOpen → Closed after SuccessThreshold consecutive successes; any half-open failure
// reopens it. Neutral outcomes count for nothing.
//
// Protocol: call Acquire before sending a request to the endpoint and, when it returns
// true, Record exactly one outcome for that request (Neutral if it says nothing, e.g. the
// client left). Ready is the cheap filter policies use. Reads are atomic loads; changes
// of state take a small mutex. A Breaker must not be copied.
type Breaker struct {
	cfg   BreakerConfig
	clock func() time.Time

	state     atomic.Uint32 // State
	openUntil atomic.Int64  // UnixNano; meaningful while Open
	failures  atomic.Int64  // consecutive failures while Closed
	probes    atomic.Int64  // half-open requests admitted and not yet recorded

	mu        sync.Mutex // serialises transitions; guards the fields below
	successes int        // consecutive half-open successes
	lastProbe int64      // UnixNano of the last half-open admission
}

// NewBreaker returns a closed breaker. clock is the time source (nil means time.Now);
// tests inject a fake one. Negative config values are replaced by defaults.
func NewBreaker(cfg BreakerConfig, clock func() time.Time) *Breaker {
	if cfg.FailureThreshold < 0 {
		cfg.FailureThreshold = 0
	}
	if cfg.SuccessThreshold < 0 {
		cfg.SuccessThreshold = 0
	}
	if cfg.Timeout < 0 {
		cfg.Timeout = 0
	}
	if cfg.HalfOpenProbes < 0 {
		cfg.HalfOpenProbes = 0
	}
	if clock == nil {
		clock = time.Now
	}
	return &Breaker{cfg: cfg.WithDefaults(), clock: clock}
}

// State returns the current state. An open breaker whose Timeout has elapsed still
// reports Open until the next Ready or Acquire moves it (as in vllm-router).
func (b *Breaker) State() State { return State(b.state.Load()) }

// Ready reports whether Acquire would admit a request now. It is a single atomic load
// while Closed, the common case.
func (b *Breaker) Ready() bool {
	switch State(b.state.Load()) {
	case Closed:
		return true
	case Open:
		return b.clock().UnixNano() >= b.openUntil.Load()
	default:
		return b.probes.Load() < int64(b.cfg.HalfOpenProbes) || b.probeSlotsStale(b.clock().UnixNano())
	}
}

// probeSlotsStale reports whether no half-open probe was admitted for a whole Timeout,
// so full probe slots are presumed leaked (an Acquire without its Record) and reopened
// rather than blocking the endpoint forever.
func (b *Breaker) probeSlotsStale(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return now-b.lastProbe >= int64(b.cfg.Timeout)
}

// Acquire admits a request: always while Closed; never while Open before Timeout has
// elapsed; in half-open, up to HalfOpenProbes at once. The first Acquire after Timeout
// moves Open to HalfOpen.
func (b *Breaker) Acquire() bool {
	if b.cfg.Disabled || State(b.state.Load()) == Closed {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock().UnixNano()
	switch State(b.state.Load()) {
	case Closed:
		return true
	case Open:
		if now < b.openUntil.Load() {
			return false
		}
		b.successes = 0
		b.probes.Store(0)
		b.setLocked(HalfOpen)
	}
	if b.probes.Load() >= int64(b.cfg.HalfOpenProbes) {
		if now-b.lastProbe < int64(b.cfg.Timeout) {
			return false
		}
		b.probes.Store(0) // leaked slots; see probeSlotsStale
	}
	b.probes.Add(1)
	b.lastProbe = now
	return true
}

// Record applies the outcome of a request admitted by Acquire. While Closed, a Success
// costs one atomic load and a Failure one atomic add.
func (b *Breaker) Record(o Outcome) {
	if b.cfg.Disabled {
		return
	}
	if State(b.state.Load()) == Closed {
		switch o {
		case Success:
			if b.failures.Load() != 0 {
				b.failures.Store(0)
			}
			return
		case Failure:
			if b.failures.Add(1) < int64(b.cfg.FailureThreshold) {
				return
			}
		default:
			return
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	switch State(b.state.Load()) {
	case Closed:
		// Only a Failure reaches here; another goroutine may have reset the count.
		if o == Failure && b.failures.Load() >= int64(b.cfg.FailureThreshold) {
			b.openLocked()
		}
	case HalfOpen:
		if b.probes.Load() > 0 {
			b.probes.Add(-1)
		}
		switch o {
		case Success:
			b.successes++
			if b.successes >= b.cfg.SuccessThreshold {
				b.failures.Store(0)
				b.setLocked(Closed)
			}
		case Failure:
			b.openLocked()
		}
	case Open:
		// A late outcome of a request admitted before the circuit opened: ignored, so it
		// neither extends nor shortens the open period.
	}
}

// openLocked opens the circuit for Timeout. Caller holds b.mu.
func (b *Breaker) openLocked() {
	b.openUntil.Store(b.clock().Add(b.cfg.Timeout).UnixNano())
	b.failures.Store(0)
	b.successes = 0
	b.probes.Store(0)
	b.setLocked(Open)
}

// setLocked moves to state to and reports the transition. Caller holds b.mu.
func (b *Breaker) setLocked(to State) {
	from := State(b.state.Load())
	if from == to {
		return
	}
	b.state.Store(uint32(to))
	if b.cfg.OnStateChange != nil {
		b.cfg.OnStateChange(from, to)
	}
}
