package policy

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for TTL tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newSticky(t testing.TB, cfg StickyLeastLoadedConfig) (*StickyLeastLoaded, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	if cfg.Clock == nil {
		cfg.Clock = clock.Now
	}
	p, err := NewStickyLeastLoaded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, clock
}

// stickyStep is one action on a StickyLeastLoaded; want is the expected pick (-1: no
// worker) for "pick" steps.
type stickyStep struct {
	op      string // pick | finish | advance | down | up
	session string
	want    int
	d       time.Duration
	worker  int
}

func TestStickyLeastLoadedSteps(t *testing.T) {
	pick := func(s string, want int) stickyStep { return stickyStep{op: "pick", session: s, want: want} }
	for _, c := range []struct {
		name     string
		workers  int
		cfg      StickyLeastLoadedConfig
		steps    []stickyStep
		sessions int // held at the end
	}{
		{
			// New sessions fill the least-active worker; the first two ties are decided by
			// rendezvous (golden), the third has one candidate left.
			name: "new sessions spread, then stick", workers: 3,
			steps: []stickyStep{
				pick("s1", 2), pick("s2", 1), pick("s3", 0),
				pick("s1", 2), pick("s2", 1), pick("s3", 0), pick("s1", 2),
			},
			sessions: 3,
		},
		{
			name: "finished session frees its worker", workers: 3,
			steps: []stickyStep{
				pick("s1", 2), pick("s2", 1), pick("s3", 0),
				{op: "finish", session: "s2"}, {op: "finish", session: "never-seen"},
				pick("s4", 1), // the only worker with 0 sessions
			},
			sessions: 3,
		},
		{
			name: "idle past TTL: reassigned to the least active", workers: 3,
			// No sweep in this window, so expired sessions are found and reassigned in place.
			cfg: StickyLeastLoadedConfig{TTL: time.Hour, SweepInterval: 24 * time.Hour},
			steps: []stickyStep{
				pick("s1", 2), pick("s2", 1), pick("s3", 0), pick("s4", 0),
				{op: "advance", d: 59 * time.Minute}, pick("s4", 0), // refreshed
				{op: "advance", d: 59 * time.Minute}, pick("s4", 0),
				{op: "advance", d: 61 * time.Minute},
				// s4 expired; it leaves its worker first, so all are at 1 and rendezvous
				// decides again: same worker.
				pick("s4", 0),
			},
			sessions: 4,
		},
		{
			name: "unusable worker: session moves and stays moved", workers: 3,
			steps: []stickyStep{
				pick("s1", 2), pick("s2", 1), pick("s3", 0),
				{op: "down", worker: 2}, pick("s1", 0), // 0 and 1 tie at 1; rendezvous picks 0
				{op: "up", worker: 2}, pick("s1", 0),
				pick("s5", 2), // the recovered worker now has 0 sessions
			},
			sessions: 4,
		},
		{
			name: "no worker usable", workers: 2,
			steps: []stickyStep{
				pick("s1", 0), {op: "down", worker: 0}, {op: "down", worker: 1},
				pick("s1", -1), pick("s2", -1), pick("", -1),
			},
			sessions: 0,
		},
		{
			// Without a session: least active, ties by a rotating cursor (1, 0, 1, ...).
			name: "no session id: least active, rotating", workers: 2,
			steps: []stickyStep{pick("", 1), pick("", 0), pick("", 1)},
		},
		{
			name: "id over MaxSessionIDBytes is no session", workers: 2,
			cfg:      StickyLeastLoadedConfig{MaxSessionIDBytes: 8},
			steps:    []stickyStep{pick("123456789", 1), pick("123456789", 0), pick("12345678", 1)},
			sessions: 1,
		},
		{
			name: "full: stateless until a sweep frees room", workers: 2,
			cfg: StickyLeastLoadedConfig{MaxSessions: 2, TTL: time.Hour, SweepInterval: time.Minute},
			steps: []stickyStep{
				pick("s1", 0), pick("s2", 1),
				pick("s3", 1),                                    // not recorded; rendezvous among the tied
				{op: "advance", d: 2 * time.Hour}, pick("s3", 1), // sweep drops s1, s2; s3 recorded
			},
			sessions: 1,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			eps, fakes := fleet(c.workers)
			p, clock := newSticky(t, c.cfg)
			p.SetMembers(eps)
			for n, st := range c.steps {
				switch st.op {
				case "pick":
					r := &Request{}
					if st.session != "" {
						r.SessionID = []byte(st.session)
					}
					got, err := p.Pick(r, eps)
					if st.want < 0 {
						if !errors.Is(err, ErrNoEndpoint) {
							t.Fatalf("step %d %+v: got (%d, %v), want ErrNoEndpoint", n, st, got, err)
						}
					} else if err != nil || got != st.want {
						t.Fatalf("step %d %+v: got (%d, %v)", n, st, got, err)
					}
				case "finish":
					p.FinishSession([]byte(st.session))
				case "advance":
					clock.Advance(st.d)
				case "down":
					fakes[st.worker].set(false, 0)
				case "up":
					fakes[st.worker].set(true, 0)
				}
			}
			if got := p.Sessions(); got != c.sessions {
				t.Fatalf("sessions held = %d, want %d", got, c.sessions)
			}
			checkStickyCounts(t, p)
		})
	}
}

// checkStickyCounts verifies that per-worker active counts equal the sessions held.
func checkStickyCounts(t *testing.T, p *StickyLeastLoaded) {
	t.Helper()
	held := map[string]int64{}
	total := 0
	for i := range p.shards {
		sh := &p.shards[i]
		sh.mu.Lock()
		for _, s := range sh.sessions {
			held[s.worker.id]++
			total++
		}
		sh.mu.Unlock()
	}
	p.workersMu.Lock()
	defer p.workersMu.Unlock()
	for id, w := range p.byID {
		if got := w.active.Load(); got != held[id] {
			t.Fatalf("worker %s: active %d, sessions held %d", id, got, held[id])
		}
	}
	if total != p.Sessions() {
		t.Fatalf("sessions counter %d, held %d", p.Sessions(), total)
	}
}

func TestStickyLeastLoadedBalancesAndCopiesIDs(t *testing.T) {
	eps, _ := fleet(8)
	p, _ := newSticky(t, StickyLeastLoadedConfig{})
	p.SetMembers(eps)
	buf := make([]byte, 0, 64)
	owner := map[string]int{}
	for s := range 1000 {
		buf = fmt.Appendf(buf[:0], "rollout-%d", s) // reused: the policy must copy
		i, err := p.Pick(&Request{SessionID: buf}, eps)
		if err != nil {
			t.Fatal(err)
		}
		owner[string(buf)] = i
	}
	per := make([]int, 8)
	for id, want := range owner {
		got, _ := p.Pick(&Request{SessionID: []byte(id)}, eps)
		if got != want {
			t.Fatalf("%s moved from %d to %d", id, want, got)
		}
		per[got]++
	}
	for _, n := range per {
		if n != 125 {
			t.Fatalf("sequential placement must be exact: %v", per)
		}
	}
	// Members reordered: sessions follow their worker's ID, not its position.
	rev := make([]Endpoint, len(eps))
	for i := range eps {
		rev[i] = eps[len(eps)-1-i]
	}
	p.SetMembers(rev)
	for id, want := range owner {
		if got, _ := p.Pick(&Request{SessionID: []byte(id)}, rev); rev[got] != eps[want] {
			t.Fatalf("%s: worker changed after reorder", id)
		}
	}
	checkStickyCounts(t, p)
}

func TestStickyLeastLoadedConcurrent(t *testing.T) {
	eps, fakes := fleet(4)
	p, clock := newSticky(t, StickyLeastLoadedConfig{MaxSessions: 300, TTL: time.Minute, SweepInterval: time.Second})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 2000 {
				id := []byte(fmt.Sprintf("g%d-s%d", g, n%97))
				switch n % 10 {
				case 0:
					p.FinishSession(id)
				case 1:
					clock.Advance(time.Second)
				case 2:
					fakes[n%4].set(n%3 != 0, 0)
				default:
					p.Pick(&Request{SessionID: id}, eps)
				}
			}
		}()
	}
	wg.Wait()
	if p.Sessions() > 300 {
		t.Fatalf("%d sessions held, bound 300", p.Sessions())
	}
	checkStickyCounts(t, p)
}

func TestStickyLeastLoadedConfig(t *testing.T) {
	for _, cfg := range []StickyLeastLoadedConfig{
		{TTL: -1}, {MaxSessions: -1}, {MaxSessionIDBytes: -1}, {SweepInterval: -time.Second},
	} {
		if _, err := NewStickyLeastLoaded(cfg); !errors.Is(err, ErrStickyConfig) {
			t.Errorf("%+v: err = %v", cfg, err)
		}
	}
	if _, err := NewStickyLeastLoaded(StickyLeastLoadedConfig{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(ErrStickyConfig.Error(), "sticky"); got != 1 {
		t.Fatal(ErrStickyConfig)
	}
}
