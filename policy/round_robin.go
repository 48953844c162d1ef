package policy

import "sync/atomic"

// RoundRobinConfig configures RoundRobin. It has no knobs today; it exists so every
// policy is built the same way and knobs can be added without breaking callers.
type RoundRobinConfig struct{}

// RoundRobin hands requests to usable endpoints in turn (vllm-router `round_robin`).
// One shared atomic counter chooses the starting index; unusable endpoints are skipped
// by walking forward, so an endpoint after a down one takes the down one's turns
// (Caddy's RoundRobinSelection does the same).
type RoundRobin struct {
	next atomic.Uint64
}

var _ Policy = (*RoundRobin)(nil)

// NewRoundRobin returns a RoundRobin policy.
func NewRoundRobin(RoundRobinConfig) (*RoundRobin, error) { return &RoundRobin{}, nil }

// Pick returns the next usable endpoint in turn. It allocates nothing and is O(1) when the
// endpoint in turn is usable.
func (p *RoundRobin) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	n := len(eps)
	if n == 0 {
		return -1, ErrNoEndpoint
	}
	start := int((p.next.Add(1) - 1) % uint64(n))
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		if r.Usable(eps[i]) {
			return i, nil
		}
	}
	return -1, ErrNoEndpoint
}
