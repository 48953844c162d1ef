package policy

import "sync/atomic"

// LeastLoadedConfig configures LeastLoaded. It has no knobs today.
type LeastLoadedConfig struct{}

// LeastLoaded sends each request to the usable endpoint with the fewest in-flight
// requests; ties rotate so an idle fleet is filled evenly rather than worker 0 first.
//
// This is load-based, not the PrimeIntellect fork's session-counting `least_loaded`
// (that behaviour is StickyLeastLoaded): with the router's exact in-flight counters,
// per-request least-in-flight is the stronger balancer and needs no state.
type LeastLoaded struct {
	cursor atomic.Uint64
}

var _ Policy = (*LeastLoaded)(nil)

// NewLeastLoaded returns a LeastLoaded policy.
func NewLeastLoaded(LeastLoadedConfig) (*LeastLoaded, error) { return &LeastLoaded{}, nil }

// Pick returns the usable endpoint with the lowest InFlight. O(len(eps)), no allocation.
func (p *LeastLoaded) Pick(r *Request, eps []Endpoint) (int, error) {
	return leastInFlight(requestOrEmpty(r), eps, &p.cursor)
}
