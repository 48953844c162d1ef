package policy

import (
	"math/rand/v2"
	"sync/atomic"
)

// noRequest stands in for a nil *Request, so a caller's mistake routes statelessly
// instead of panicking.
var noRequest Request

func requestOrEmpty(r *Request) *Request {
	if r == nil {
		return &noRequest
	}
	return r
}

// globalRand is the default Rand: math/rand/v2's top-level functions are safe for
// concurrent use and lock-free.
type globalRand struct{}

func (globalRand) IntN(n int) int { return rand.IntN(n) }

// mix64 is the SplitMix64 finalizer: a bijective avalanche, so mix64(keyHash^memberSeed)
// ranks members independently per key (rendezvous scoring) at one multiply-xor chain per
// member instead of one xxhash pass over the key per member.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// leastInFlight returns the usable endpoint with the fewest in-flight requests. The scan
// starts at a rotating offset and keeps the first minimum it meets, so ties rotate
// through the tied endpoints instead of always landing on the lowest index.
func leastInFlight(r *Request, eps []Endpoint, cursor *atomic.Uint64) (int, error) {
	n := len(eps)
	if n == 0 {
		return -1, ErrNoEndpoint
	}
	start := int(cursor.Add(1) % uint64(n))
	best, bestLoad := -1, int64(0)
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		ep := eps[i]
		if !r.Usable(ep) {
			continue
		}
		load := ep.InFlight()
		if best < 0 || load < bestLoad {
			best, bestLoad = i, load
		}
	}
	if best < 0 {
		return -1, ErrNoEndpoint
	}
	return best, nil
}
