package policy

import (
	"fmt"
	"sync/atomic"
)

// fakeEndpoint is an Endpoint whose availability and load a test sets directly.
type fakeEndpoint struct {
	id        string
	available atomic.Bool
	inFlight  atomic.Int64
}

func newFake(id string) *fakeEndpoint {
	ep := &fakeEndpoint{id: id}
	ep.available.Store(true)
	return ep
}

func (e *fakeEndpoint) ID() string      { return e.id }
func (e *fakeEndpoint) Available() bool { return e.available.Load() }
func (e *fakeEndpoint) InFlight() int64 { return e.inFlight.Load() }
func (e *fakeEndpoint) set(up bool, n int64) *fakeEndpoint {
	e.available.Store(up)
	e.inFlight.Store(n)
	return e
}

// fleet returns n fake workers named like vLLM URLs, as Endpoints and as fakes.
func fleet(n int) ([]Endpoint, []*fakeEndpoint) {
	eps := make([]Endpoint, n)
	fakes := make([]*fakeEndpoint, n)
	for i := range n {
		fakes[i] = newFake(fmt.Sprintf("http://10.0.0.%d:8000", i+1))
		eps[i] = fakes[i]
	}
	return eps, fakes
}

// seqRand returns the given values in order (modulo n), then repeats them.
type seqRand struct {
	vals []int
	next int
}

func (s *seqRand) IntN(n int) int {
	v := s.vals[s.next%len(s.vals)]
	s.next++
	return v % n
}
