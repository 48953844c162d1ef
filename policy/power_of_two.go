package policy

// PowerOfTwoConfig configures PowerOfTwo.
type PowerOfTwoConfig struct {
	// Rand is the source of randomness. Nil means math/rand/v2's global source.
	Rand Rand
}

// PowerOfTwo draws two distinct usable endpoints at random and takes the one with fewer
// in-flight requests; a tie goes to the first draw (vllm-router `power_of_two`). Unlike
// vllm-router with vLLM backends, the load here is the router's own exact in-flight count,
// so it does not degenerate to random.
type PowerOfTwo struct {
	rand Rand
}

var _ Policy = (*PowerOfTwo)(nil)

// NewPowerOfTwo returns a PowerOfTwo policy.
func NewPowerOfTwo(cfg PowerOfTwoConfig) (*PowerOfTwo, error) {
	if cfg.Rand == nil {
		cfg.Rand = globalRand{}
	}
	return &PowerOfTwo{rand: cfg.Rand}, nil
}

// Pick returns the less loaded of two random usable endpoints, or the only usable one.
// It allocates nothing.
func (p *PowerOfTwo) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	first, ok := randomUsable(p.rand, r, eps, -1)
	if !ok {
		return -1, ErrNoEndpoint
	}
	second, ok := randomUsable(p.rand, r, eps, first)
	if !ok {
		return first, nil
	}
	if eps[second].InFlight() < eps[first].InFlight() {
		return second, nil
	}
	return first, nil
}
