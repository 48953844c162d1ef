package sim

import (
	"math/rand/v2"
	"sync"
)

// faultState holds the current Fault and the seeded generator that decides which
// requests fail. Every set reseeds it and wakes hung requests so they re-check.
type faultState struct {
	mu      sync.Mutex
	f       Fault
	rng     *rand.Rand
	changed chan struct{}
}

func (fs *faultState) set(f Fault) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.f = f
	fs.rng = rand.New(rand.NewPCG(f.Seed, 0x5eed))
	if fs.changed != nil {
		close(fs.changed)
	}
	fs.changed = make(chan struct{})
}

// get returns the current fault and a channel closed when it next changes.
func (fs *faultState) get() (Fault, <-chan struct{}) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.f, fs.changed
}

// shouldFail draws whether the next request fails, and with which status.
func (fs *faultState) shouldFail() (int, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.f.FailRate <= 0 || fs.rng.Float64() >= fs.f.FailRate {
		return 0, false
	}
	if fs.f.FailStatus == 0 {
		return 500, true
	}
	return fs.f.FailStatus, true
}

// slow returns the slow factor, 1 when unset.
func (f Fault) slow() float64 {
	if f.SlowFactor <= 0 {
		return 1
	}
	return f.SlowFactor
}
