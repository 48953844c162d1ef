package router

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/valyala/fasthttp"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/policy"
)

// snapshot is an immutable view of the configured workers, swapped whole on change so
// readers never lock. Slices are per role, in configuration order.
type snapshot struct {
	regular, prefill, decode          []*Backend
	regularEPs, prefillEPs, decodeEPs []policy.Endpoint
	byID                              map[string]*Backend
}

func (s *snapshot) all() []*Backend {
	out := make([]*Backend, 0, len(s.regular)+len(s.prefill)+len(s.decode))
	out = append(out, s.regular...)
	out = append(out, s.prefill...)
	return append(out, s.decode...)
}

// Pool owns the workers. Health and membership changes come in through SetHealthy and
// Update; the request path only loads the current snapshot.
type Pool struct {
	cfg        *Config
	metrics    *Metrics
	newBreaker func(id string) *health.Breaker

	mu      sync.Mutex // serializes Update
	clients map[string]*fasthttp.HostClient
	streams map[string]*streamConns
	snap    atomic.Pointer[snapshot]

	// onMembers is told the new member lists after every Update, off the hot path.
	onMembers func(s *snapshot)
}

func newPool(cfg *Config, m *Metrics, newBreaker func(id string) *health.Breaker) *Pool {
	p := &Pool{cfg: cfg, metrics: m, newBreaker: newBreaker, clients: map[string]*fasthttp.HostClient{},
		streams: map[string]*streamConns{}}
	p.snap.Store(&snapshot{byID: map[string]*Backend{}})
	return p
}

func (p *Pool) load() *snapshot { return p.snap.Load() }

// SetHealthy records a worker's active health; it never touches load counters or the
// hash ring. Unknown ids are ignored (the worker was removed meanwhile).
func (p *Pool) SetHealthy(id string, healthy bool) {
	if b := p.load().byID[id]; b != nil {
		b.healthy.Store(healthy)
	}
}

// Update replaces the worker set with specs. Workers that stay keep their counters,
// health and connections, so requests in flight are not disturbed.
func (p *Pool) Update(specs []backendSpec) *snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.load()
	next := &snapshot{byID: make(map[string]*Backend, len(specs))}
	bases := map[string]bool{}
	for _, s := range specs {
		b := old.byID[s.id]
		if b == nil || b.role != s.role {
			b = p.newBackend(s)
		}
		if next.byID[s.id] != nil {
			continue // duplicates collapse into one worker
		}
		next.byID[s.id] = b
		bases[s.base] = true
		switch s.role {
		case RolePrefill:
			next.prefill = append(next.prefill, b)
			next.prefillEPs = append(next.prefillEPs, b)
		case RoleDecode:
			next.decode = append(next.decode, b)
			next.decodeEPs = append(next.decodeEPs, b)
		default:
			next.regular = append(next.regular, b)
			next.regularEPs = append(next.regularEPs, b)
		}
	}
	for base, c := range p.clients {
		if !bases[base] {
			c.CloseIdleConnections()
			delete(p.clients, base)
			p.streams[base].closeIdle()
			delete(p.streams, base)
		}
	}
	for id, b := range old.byID {
		if next.byID[id] == nil {
			p.metrics.forgetWorker(b)
		}
	}
	p.snap.Store(next)
	if p.onMembers != nil {
		p.onMembers(next)
	}
	return next
}

func (p *Pool) newBackend(s backendSpec) *Backend {
	c := p.clients[s.base]
	if c == nil {
		c = newHostClient(s.base, p.cfg)
		p.clients[s.base] = c
		p.streams[s.base] = newStreamConns(c.Addr, p.cfg.ConnectTimeout)
	}
	b := &Backend{
		id: s.id, base: s.base, rank: s.rank, role: s.role,
		client:      c,
		streams:     p.streams[s.base],
		maxInflight: int64(p.cfg.MaxInflightPerWorker),
		breaker:     p.newBreaker(s.id),
	}
	if s.rank >= 0 {
		b.rankHeader = []byte(strconv.Itoa(s.rank))
	}
	b.m = p.metrics.forWorker(b)
	return b
}

// countHealthy counts the healthy workers in bs.
func countHealthy(bs []*Backend) int {
	n := 0
	for _, b := range bs {
		if b.Healthy() {
			n++
		}
	}
	return n
}
