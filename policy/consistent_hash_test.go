package policy

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

type ringMember string

func (m ringMember) String() string { return string(m) }

type xxhashHasher struct{}

func (xxhashHasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

func newRing(t testing.TB, cfg ConsistentHashConfig, eps []Endpoint) *ConsistentHash {
	t.Helper()
	p, err := NewConsistentHash(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetMembers(eps)
	return p
}

func sessionKey(i int) []byte { return fmt.Appendf(nil, "rollout-%d-5f0c", i) }

// TestConsistentHashMatchesLibrary pins the ring's partition owners to those of
// github.com/buraksezer/consistent v0.10.0 itself, partition by partition.
func TestConsistentHashMatchesLibrary(t *testing.T) {
	for _, c := range []struct {
		members int
		cfg     ConsistentHashConfig
	}{
		{1, ConsistentHashConfig{PartitionCount: 271, ReplicationFactor: 20, Load: 1.25}},
		{3, ConsistentHashConfig{PartitionCount: 271, ReplicationFactor: 20, Load: 1.25}},
		{7, ConsistentHashConfig{PartitionCount: 1021, ReplicationFactor: 50, Load: 1.0}}, // load raised to fit
		{8, ConsistentHashConfig{PartitionCount: 4096, ReplicationFactor: 10, Load: 1.0}},
		{8, ConsistentHashConfig{}},
		{20, ConsistentHashConfig{PartitionCount: 2039, ReplicationFactor: 100, Load: 1.05}},
	} {
		t.Run(fmt.Sprintf("members=%d/%+v", c.members, c.cfg), func(t *testing.T) {
			eps, _ := fleet(c.members)
			p := newRing(t, c.cfg, eps)
			rg := p.ring.Load()
			partitions, load := effectiveRing(c.members, p.cfg.PartitionCount, p.cfg.Load)
			members := make([]consistent.Member, len(eps))
			for i, ep := range eps {
				members[i] = ringMember(ep.ID())
			}
			lib := consistent.New(members, consistent.Config{
				Hasher: xxhashHasher{}, PartitionCount: partitions,
				ReplicationFactor: p.cfg.ReplicationFactor, Load: load,
			})
			if rg.partitions != uint64(partitions) {
				t.Fatalf("partitions = %d, want %d", rg.partitions, partitions)
			}
			for part := 0; part < partitions; part++ {
				got := rg.ids[rg.order[part*rg.stride]]
				if want := lib.GetPartitionOwner(part).String(); got != want {
					t.Fatalf("partition %d: owner %s, library says %s", part, got, want)
				}
			}
			for i := range 1000 {
				key := sessionKey(i)
				got, _ := p.Pick(&Request{Key: key}, eps)
				if want := lib.LocateKey(key).String(); eps[got].ID() != want {
					t.Fatalf("key %s: %s, library says %s", key, eps[got].ID(), want)
				}
			}
		})
	}
}

// TestConsistentHashSessionProperties checks what multi-turn rollouts rely on, over
// 10 000 sessions and 8 workers.
func TestConsistentHashSessionProperties(t *testing.T) {
	const sessions, workers = 10_000, 8
	eps, fakes := fleet(workers)
	p := newRing(t, ConsistentHashConfig{}, eps)
	owner := make([]int, sessions)
	perWorker := make([]int, workers)
	for s := range sessions {
		i, err := p.Pick(&Request{Key: sessionKey(s)}, eps)
		if err != nil {
			t.Fatal(err)
		}
		owner[s] = i
		perWorker[i]++
	}

	t.Run("sticky", func(t *testing.T) {
		fresh := newRing(t, ConsistentHashConfig{}, eps) // placement is a function of the member set
		for s := range sessions {
			for _, pol := range []*ConsistentHash{p, fresh} {
				if i, _ := pol.Pick(&Request{Key: sessionKey(s)}, eps); i != owner[s] {
					t.Fatalf("session %d moved from %d to %d", s, owner[s], i)
				}
			}
		}
	})

	t.Run("balanced", func(t *testing.T) {
		most := 0
		for _, n := range perWorker {
			most = max(most, n)
		}
		ratio := float64(most) / (float64(sessions) / workers)
		t.Logf("sessions per worker %v, max/mean %.3f", perWorker, ratio)
		if ratio > 1.15 {
			t.Fatalf("max/mean = %.3f > 1.15", ratio)
		}
	})

	t.Run("removing a worker moves only its sessions", func(t *testing.T) {
		const removed = 3
		rest := append(append([]Endpoint{}, eps[:removed]...), eps[removed+1:]...)
		q := newRing(t, ConsistentHashConfig{}, rest)
		moved := 0
		for s := range sessions {
			i, _ := q.Pick(&Request{Key: sessionKey(s)}, rest)
			if owner[s] != removed && rest[i] != eps[owner[s]] {
				moved++
			}
		}
		if moved != 0 {
			t.Fatalf("%d sessions of surviving workers moved", moved)
		}
	})

	t.Run("owner down spreads its sessions and they return", func(t *testing.T) {
		const down = 5
		fakes[down].set(false, 0)
		spread := make([]int, workers)
		orphans := 0
		for s := range sessions {
			i, err := p.Pick(&Request{Key: sessionKey(s)}, eps)
			if err != nil || i == down {
				t.Fatalf("session %d: (%d, %v) with worker %d down", s, i, err, down)
			}
			if owner[s] != down && i != owner[s] {
				t.Fatalf("session %d of a healthy worker moved", s)
			}
			if owner[s] == down {
				spread[i]++
				orphans++
			}
		}
		t.Logf("worker %d's %d sessions went to %v", down, orphans, spread)
		fair := float64(orphans) / (workers - 1)
		for i, n := range spread {
			if i != down && (n == 0 || float64(n) > 2.5*fair) {
				t.Fatalf("orphans spread unevenly: %v", spread)
			}
		}
		fakes[down].set(true, 0)
		for s := range sessions {
			if i, _ := p.Pick(&Request{Key: sessionKey(s)}, eps); i != owner[s] {
				t.Fatalf("session %d did not return to %d after recovery (got %d)", s, owner[s], i)
			}
		}
	})
}

func TestConsistentHashPicks(t *testing.T) {
	// Golden placements on 4 workers with the default ring; they change only if the ring
	// algorithm or its defaults change (which remaps every live session).
	up := []bool{true, true, true, true}
	for _, c := range []pickCase{
		{name: "key a", up: up, key: "session-a", want: []int{0, 0}}, // ring order 0 2 3 1
		{name: "key b", up: up, key: "session-b", want: []int{1, 1}}, // ring order 1 3 2 0
		{name: "key c", up: up, key: "session-c", want: []int{2, 2}}, // ring order 2 0 3 1
		{name: "owner down: next on ring", up: []bool{false, true, true, true}, key: "session-a", want: []int{2, 2}},
		{name: "owner avoided: next on ring", up: up, avoid: []int{0}, key: "session-a", want: []int{2}},
		{name: "owner and successor down", up: []bool{false, true, false, true}, key: "session-a", want: []int{3}},
		{name: "successors differ per key", up: []bool{false, true, true, true}, key: "session-c", want: []int{2}},
		{name: "c's owner down", up: []bool{true, true, false, true}, key: "session-c", want: []int{0}},
		{name: "keyless: least loaded", up: up, load: []int64{4, 1, 0, 2}, want: []int{2, 2}},
		{name: "keyless: ties rotate", up: up, want: []int{1, 2, 3, 0}},
		{name: "none usable", up: []bool{false, false, false, false}, key: "session-a", want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			eps, _ := c.fleet()
			runPicks(t, newRing(t, ConsistentHashConfig{}, eps), c)
		})
	}
}

func TestConsistentHashFallbackPastSuccessors(t *testing.T) {
	// With no successors allowed, an unusable owner's keys go to the least loaded worker.
	eps, fakes := fleet(4)
	p := newRing(t, ConsistentHashConfig{MaxFallbacks: -1}, eps)
	key := []byte("session-a")
	owner, _ := p.Pick(&Request{Key: key}, eps)
	fakes[owner].set(false, 0)
	for i, f := range fakes {
		if i != owner {
			f.set(true, int64(10+i))
		}
	}
	least := (owner + 1) % 4
	fakes[least].set(true, 0)
	if got, _ := p.Pick(&Request{Key: key}, eps); got != least {
		t.Fatalf("got %d, want least loaded %d", got, least)
	}
}

func TestConsistentHashRebuildsOnStaleMembers(t *testing.T) {
	eps, _ := fleet(6)
	p := newRing(t, ConsistentHashConfig{}, eps)
	reordered := []Endpoint{eps[5], eps[0], eps[4], eps[1], eps[3], eps[2]}
	want := newRing(t, ConsistentHashConfig{}, reordered)
	for s := range 500 {
		r := &Request{Key: sessionKey(s)}
		got, _ := p.Pick(r, reordered)
		exp, _ := want.Pick(r, reordered)
		if got != exp {
			t.Fatalf("session %d: %d, want %d", s, got, exp)
		}
	}
	// Never-configured policy and duplicated IDs: still sticky, no panic.
	q, _ := NewConsistentHash(ConsistentHashConfig{})
	dup := []Endpoint{eps[0], eps[1], eps[0]}
	a, err := q.Pick(&Request{Key: []byte("k")}, dup)
	b, _ := q.Pick(&Request{Key: []byte("k")}, dup)
	if err != nil || a != b || a == 2 {
		t.Fatalf("duplicates: %d, %d, %v", a, b, err)
	}
	if _, err := q.Pick(&Request{Key: []byte("k")}, nil); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("empty: %v", err)
	}
}

func TestConsistentHashConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  ConsistentHashConfig
		ok   bool
	}{
		{"defaults", ConsistentHashConfig{}, true},
		{"load below 1", ConsistentHashConfig{Load: 0.9}, false},
		{"load NaN", ConsistentHashConfig{Load: math.NaN()}, false},
		{"load Inf", ConsistentHashConfig{Load: math.Inf(1)}, false},
		{"negative partitions", ConsistentHashConfig{PartitionCount: -1}, false},
		{"negative replication", ConsistentHashConfig{ReplicationFactor: -3}, false},
		{"load exactly 1", ConsistentHashConfig{Load: 1.0}, true},
	} {
		_, err := NewConsistentHash(c.cfg)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrRingConfig)) {
			t.Errorf("%s: err = %v", c.name, err)
		}
	}
}

func TestEffectiveRingAlwaysFits(t *testing.T) {
	for _, c := range []struct {
		members, partitions int
		load                float64
	}{
		{8, 65521, 1.0}, {7, 1021, 1.0}, {1024, 65521, 1.0}, {3, 2, 1.0}, {100, 100, 1.0},
		{999, 1000, 1.0}, {5, 271, 1.25}, {1, 1, 1.0},
	} {
		p, l := effectiveRing(c.members, c.partitions, c.load)
		if p < c.members || c.members*int(math.Ceil(float64(p/c.members)*l)) < p || l < c.load {
			t.Errorf("%+v → partitions %d, load %v does not fit", c, p, l)
		}
		eps, _ := fleet(c.members)
		if _, err := buildHashRing(eps, ConsistentHashConfig{PartitionCount: c.partitions, ReplicationFactor: 3, Load: c.load}); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
