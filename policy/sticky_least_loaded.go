package policy

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Sticky session defaults (prime-rl's router: PrimeIntellect-ai/router sticky_least_loaded).
const (
	DefaultSessionTTL        = 2 * time.Hour
	DefaultMaxSessions       = 100_000
	DefaultMaxSessionIDBytes = 256
	DefaultSweepInterval     = time.Minute
)

// ErrStickyConfig wraps every StickyLeastLoadedConfig error.
var ErrStickyConfig = errors.New("policy: invalid sticky_least_loaded config")

// StickyLeastLoadedConfig configures StickyLeastLoaded.
type StickyLeastLoadedConfig struct {
	// TTL is how long a session may stay idle (no Pick) before its assignment lapses.
	// Zero means 2 h; negative is an error.
	TTL time.Duration
	// MaxSessions bounds the sessions held. When full, expired sessions are swept (at most
	// once per SweepInterval); if still full, new sessions are routed statelessly. Zero
	// means 100 000; negative is an error.
	MaxSessions int
	// MaxSessionIDBytes is the longest session id tracked; longer ids are treated as no
	// session. Zero means 256; negative is an error.
	MaxSessionIDBytes int
	// SweepInterval is the least time between two sweeps of expired sessions. Sweeps run
	// inside Pick (no goroutine): one caller per interval pays O(sessions). Zero means
	// 1 min; negative is an error.
	SweepInterval time.Duration
	// Clock tells the time for TTLs. Nil means time.Now.
	Clock func() time.Time
}

// StickyLeastLoaded is prime-rl's default policy (vllm-router PR #235, PrimeIntellect
// router `sticky_least_loaded`). A new session (Request.SessionID) goes to the usable worker
// with the fewest active sessions, ties broken by rendezvous hashing of the session id, and
// stays there until FinishSession, TTL of idleness, or its worker becomes unusable (then it
// is reassigned). Requests without a session go to the least-active worker, ties rotating,
// and are not recorded.
//
// "Active" counts sessions assigned, not requests in flight: a session's KV cache occupies
// its worker between turns too.
//
// Sessions live in 64 mutex-guarded shards picked by xxhash(id), and active counts are
// atomics, so picks for different sessions rarely contend. Two new sessions placed at the
// same instant may both see the same least-active worker (vllm-router serialises all picks
// under one mutex instead); the rendezvous tie-break makes this rare and it self-corrects
// on the next placements.
type StickyLeastLoaded struct {
	cfg    StickyLeastLoadedConfig
	shards [stickyShards]stickyShard

	sessions  atomic.Int64 // sessions held, across shards
	lastSweep atomic.Int64 // unix ns of the last sweep
	cursor    atomic.Uint64

	workersMu sync.Mutex               // guards byID and table rebuilds
	byID      map[string]*stickyWorker // every worker ever seen; states outlive membership
	table     atomic.Pointer[stickyTable]
}

var (
	_ Policy          = (*StickyLeastLoaded)(nil)
	_ InputUser       = (*StickyLeastLoaded)(nil)
	_ MembershipAware = (*StickyLeastLoaded)(nil)
	_ SessionFinisher = (*StickyLeastLoaded)(nil)
)

const stickyShards = 64

type stickyShard struct {
	mu       sync.Mutex
	sessions map[string]*stickySession
	_        [64 - 16]byte // one shard per cache line: neighbours do not false-share
}

type stickySession struct {
	worker     *stickyWorker
	lastAccess int64 // unix ns
}

// stickyWorker is one worker's session count. It is keyed by ID, not by position, so
// counts survive membership changes.
type stickyWorker struct {
	id     string
	seed   uint64 // xxhash(id), for the rendezvous tie-break
	active atomic.Int64
	pos    atomic.Int32 // last known position in eps: a hint, verified by ID
}

// stickyTable maps positions of the configured endpoints to worker states.
type stickyTable struct {
	workers []*stickyWorker
}

// NewStickyLeastLoaded validates cfg and returns a StickyLeastLoaded with no sessions.
func NewStickyLeastLoaded(cfg StickyLeastLoadedConfig) (*StickyLeastLoaded, error) {
	switch {
	case cfg.TTL < 0:
		return nil, fmt.Errorf("%w: TTL %v < 0", ErrStickyConfig, cfg.TTL)
	case cfg.MaxSessions < 0:
		return nil, fmt.Errorf("%w: MaxSessions %d < 0", ErrStickyConfig, cfg.MaxSessions)
	case cfg.MaxSessionIDBytes < 0:
		return nil, fmt.Errorf("%w: MaxSessionIDBytes %d < 0", ErrStickyConfig, cfg.MaxSessionIDBytes)
	case cfg.SweepInterval < 0:
		return nil, fmt.Errorf("%w: SweepInterval %v < 0", ErrStickyConfig, cfg.SweepInterval)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultSessionTTL
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxSessionIDBytes == 0 {
		cfg.MaxSessionIDBytes = DefaultMaxSessionIDBytes
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	p := &StickyLeastLoaded{cfg: cfg, byID: make(map[string]*stickyWorker)}
	for i := range p.shards {
		p.shards[i].sessions = make(map[string]*stickySession)
	}
	p.lastSweep.Store(cfg.Clock().UnixNano())
	return p, nil
}

// Inputs reports that the policy reads Request.SessionID.
func (p *StickyLeastLoaded) Inputs() Input { return InputSessionID }

// SetMembers maps the configured endpoints to worker states. Pick rebuilds the mapping
// itself when it meets a different endpoint list, so this only moves that cost off the
// hot path.
func (p *StickyLeastLoaded) SetMembers(eps []Endpoint) {
	p.workersMu.Lock()
	defer p.workersMu.Unlock()
	p.rebuildTableLocked(eps)
}

func (p *StickyLeastLoaded) rebuildTableLocked(eps []Endpoint) *stickyTable {
	t := &stickyTable{workers: make([]*stickyWorker, len(eps))}
	for i, ep := range eps {
		id := ep.ID()
		w := p.byID[id]
		if w == nil {
			w = &stickyWorker{id: id, seed: xxhash.Sum64String(id)}
			p.byID[id] = w
		}
		w.pos.Store(int32(i))
		t.workers[i] = w
	}
	p.table.Store(t)
	return t
}

// tableFor returns the worker states aligned with eps, rebuilding them if eps changed.
func (p *StickyLeastLoaded) tableFor(eps []Endpoint) *stickyTable {
	if t := p.table.Load(); t != nil && t.matches(eps) {
		return t
	}
	p.workersMu.Lock()
	defer p.workersMu.Unlock()
	if t := p.table.Load(); t != nil && t.matches(eps) {
		return t
	}
	return p.rebuildTableLocked(eps)
}

func (t *stickyTable) matches(eps []Endpoint) bool {
	if len(t.workers) != len(eps) {
		return false
	}
	for i, ep := range eps {
		if t.workers[i].id != ep.ID() {
			return false
		}
	}
	return true
}

// Pick returns the session's worker, assigning the least-active usable worker to a new,
// expired or displaced session. Without a usable session id it returns the least-active
// usable worker without recording anything.
func (p *StickyLeastLoaded) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	if len(eps) == 0 {
		return -1, ErrNoEndpoint
	}
	id := r.SessionID
	if len(id) == 0 || len(id) > p.cfg.MaxSessionIDBytes {
		return p.leastActive(r, eps, p.tableFor(eps), 0, false)
	}
	now := p.cfg.Clock().UnixNano()
	if now-p.lastSweep.Load() >= int64(p.cfg.SweepInterval) {
		p.sweep(now)
	}
	keyHash := xxhash.Sum64(id)
	sh := &p.shards[keyHash%stickyShards]

	sh.mu.Lock()
	if s := sh.sessions[string(id)]; s != nil {
		if now-s.lastAccess < int64(p.cfg.TTL) {
			if i := s.worker.indexIn(eps); i >= 0 && r.Usable(eps[i]) {
				s.lastAccess = now
				sh.mu.Unlock()
				return i, nil
			}
		}
		// Expired, or its worker is gone or unusable: reassign in place.
		i, err := p.reassignLocked(sh, id, s, r, eps, p.tableFor(eps), keyHash, now)
		sh.mu.Unlock()
		return i, err
	}
	sh.mu.Unlock()

	// Placing a session scans every worker anyway, so resolving the worker table (O(n)
	// ID checks) costs nothing extra here; known sessions above never touch it.
	t := p.tableFor(eps)
	if !p.reserveSession(now) {
		return p.leastActive(r, eps, t, keyHash, true) // full: stateless, still deterministic
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s := sh.sessions[string(id)]; s != nil {
		// A concurrent Pick for the same session won the race; follow it.
		p.sessions.Add(-1)
		if i := s.worker.indexIn(eps); i >= 0 && r.Usable(eps[i]) {
			s.lastAccess = now
			return i, nil
		}
		return p.reassignLocked(sh, id, s, r, eps, t, keyHash, now)
	}
	i, err := p.leastActive(r, eps, t, keyHash, true)
	if err != nil {
		p.sessions.Add(-1)
		return -1, err
	}
	w := t.workers[i]
	w.active.Add(1)
	sh.sessions[string(id)] = &stickySession{worker: w, lastAccess: now} // string(id) copies: request memory is not retained
	return i, nil
}

// reassignLocked moves session s to the least-active usable worker, or forgets it when
// none is usable. The caller holds sh.mu. The session leaves its old worker first, so an
// expired session does not count against the worker it may return to.
func (p *StickyLeastLoaded) reassignLocked(sh *stickyShard, id []byte, s *stickySession,
	r *Request, eps []Endpoint, t *stickyTable, keyHash uint64, now int64) (int, error) {
	s.worker.active.Add(-1)
	i, err := p.leastActive(r, eps, t, keyHash, true)
	if err != nil {
		delete(sh.sessions, string(id))
		p.sessions.Add(-1)
		return -1, err
	}
	s.worker = t.workers[i]
	s.worker.active.Add(1)
	s.lastAccess = now
	return i, nil
}

// reserveSession counts one more session if there is room, sweeping expired sessions
// first when full (at most once per SweepInterval).
func (p *StickyLeastLoaded) reserveSession(now int64) bool {
	limit := int64(p.cfg.MaxSessions)
	if p.sessions.Add(1) <= limit {
		return true
	}
	p.sessions.Add(-1)
	if now-p.lastSweep.Load() < int64(p.cfg.SweepInterval) || !p.sweep(now) {
		return false
	}
	if p.sessions.Add(1) <= limit {
		return true
	}
	p.sessions.Add(-1)
	return false
}

// sweep drops sessions idle longer than TTL. One caller wins the right to sweep per
// interval; it reports whether this call swept.
func (p *StickyLeastLoaded) sweep(now int64) bool {
	last := p.lastSweep.Load()
	if now-last < int64(p.cfg.SweepInterval) || !p.lastSweep.CompareAndSwap(last, now) {
		return false
	}
	p.Sweep(now)
	return true
}

// Sweep drops every session idle longer than TTL at now (unix ns). Pick calls it once per
// SweepInterval; it is exported for tests and for a caller that prefers its own ticker.
func (p *StickyLeastLoaded) Sweep(now int64) {
	ttl := int64(p.cfg.TTL)
	for i := range p.shards {
		sh := &p.shards[i]
		sh.mu.Lock()
		for id, s := range sh.sessions {
			if now-s.lastAccess >= ttl {
				delete(sh.sessions, id)
				s.worker.active.Add(-1)
				p.sessions.Add(-1)
			}
		}
		sh.mu.Unlock()
	}
}

// FinishSession releases the session's assignment. Unknown ids are a no-op.
func (p *StickyLeastLoaded) FinishSession(id []byte) {
	if len(id) == 0 || len(id) > p.cfg.MaxSessionIDBytes {
		return
	}
	sh := &p.shards[xxhash.Sum64(id)%stickyShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s := sh.sessions[string(id)]; s != nil {
		delete(sh.sessions, string(id))
		s.worker.active.Add(-1)
		p.sessions.Add(-1)
	}
}

// Sessions returns the number of sessions held.
func (p *StickyLeastLoaded) Sessions() int { return int(p.sessions.Load()) }

// leastActive returns the usable worker with the fewest active sessions. With a session
// (hashed true), ties go to the highest rendezvous score mix64(keyHash ^ seed), so the same
// session prefers the same worker among equals; without, the scan starts at a rotating
// cursor and the first minimum wins.
func (p *StickyLeastLoaded) leastActive(r *Request, eps []Endpoint, t *stickyTable, keyHash uint64, hashed bool) (int, error) {
	n := len(eps)
	start := 0
	if !hashed {
		start = int(p.cursor.Add(1) % uint64(n))
	}
	best, bestActive, bestScore := -1, int64(0), uint64(0)
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		if !r.Usable(eps[i]) {
			continue
		}
		w := t.workers[i]
		active := w.active.Load()
		var score uint64
		if hashed {
			score = mix64(keyHash ^ w.seed)
		}
		if best < 0 || active < bestActive || (hashed && active == bestActive && score > bestScore) {
			best, bestActive, bestScore = i, active, score
		}
	}
	if best < 0 {
		return -1, ErrNoEndpoint
	}
	return best, nil
}

// indexIn returns the worker's position in eps, or -1 if it is no longer there.
func (w *stickyWorker) indexIn(eps []Endpoint) int {
	if i := int(w.pos.Load()); i < len(eps) && eps[i].ID() == w.id {
		return i
	}
	for i, ep := range eps {
		if ep.ID() == w.id {
			return i
		}
	}
	return -1
}
