package policy

// RandomConfig configures Random.
type RandomConfig struct {
	// Rand is the source of randomness. Nil means math/rand/v2's global source.
	Rand Rand
}

// Random picks a usable endpoint uniformly at random (vllm-router `random`).
type Random struct {
	rand Rand
}

var _ Policy = (*Random)(nil)

// NewRandom returns a Random policy.
func NewRandom(cfg RandomConfig) (*Random, error) {
	if cfg.Rand == nil {
		cfg.Rand = globalRand{}
	}
	return &Random{rand: cfg.Rand}, nil
}

// Pick returns a uniformly random usable endpoint. It allocates nothing.
func (p *Random) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	i, ok := randomUsable(p.rand, r, eps, -1)
	if !ok {
		return -1, ErrNoEndpoint
	}
	return i, nil
}

// rejectionTries bounds the cheap path of randomUsable: with most endpoints usable one
// or two draws suffice; with most down, counting is cheaper than drawing.
const rejectionTries = 4

// randomUsable returns a uniformly random usable endpoint other than exclude. It first
// draws indices and rejects unusable ones (O(1) when most are usable), then falls back to
// counting the usable ones and drawing among them. Both stages are uniform over the
// usable set, so their mix is too.
func randomUsable(rnd Rand, r *Request, eps []Endpoint, exclude int) (int, bool) {
	n := len(eps)
	span := n
	if exclude >= 0 {
		span--
	}
	if span <= 0 {
		return -1, false
	}
	for t := 0; t < rejectionTries; t++ {
		i := rnd.IntN(span)
		if exclude >= 0 && i >= exclude {
			i++
		}
		if r.Usable(eps[i]) {
			return i, true
		}
	}
	usable := 0
	for i, ep := range eps {
		if i != exclude && r.Usable(ep) {
			usable++
		}
	}
	if usable == 0 {
		return -1, false
	}
	k := rnd.IntN(usable)
	for i, ep := range eps {
		if i == exclude || !r.Usable(ep) {
			continue
		}
		if k == 0 {
			return i, true
		}
		k--
	}
	return -1, false // unreachable unless usability changed during the scan
}
