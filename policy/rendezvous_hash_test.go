package policy

import "testing"

func TestRendezvousHashPicks(t *testing.T) {
	up := []bool{true, true, true, true}
	for _, c := range []pickCase{
		// Golden placements; they change only if the scoring changes.
		{name: "key a", up: up, key: "session-a", want: []int{1, 1}},
		{name: "key b", up: up, key: "session-b", want: []int{3, 3}},
		{name: "a's owner down: next best score", up: []bool{true, false, true, true}, key: "session-a", want: []int{0}},
		{name: "keyless: least loaded", up: up, load: []int64{4, 1, 0, 2}, want: []int{2, 2}},
		{name: "keyless: ties rotate", up: up, want: []int{1, 2, 3, 0}},
		{name: "none usable", up: []bool{false, false}, key: "k", want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			eps, _ := c.fleet()
			p, _ := NewRendezvousHash(RendezvousHashConfig{})
			p.SetMembers(eps)
			runPicks(t, p, c)
		})
	}
}

// TestRendezvousHashProperties: sticky, balanced, minimal movement, spread on failure, and
// the same answer with or without SetMembers.
func TestRendezvousHashProperties(t *testing.T) {
	const sessions, workers = 10_000, 8
	eps, fakes := fleet(workers)
	p, _ := NewRendezvousHash(RendezvousHashConfig{})
	p.SetMembers(eps)
	cold, _ := NewRendezvousHash(RendezvousHashConfig{}) // never told its members
	owner := make([]int, sessions)
	perWorker := make([]int, workers)
	for s := range sessions {
		r := &Request{Key: sessionKey(s)}
		i, _ := p.Pick(r, eps)
		if j, _ := cold.Pick(r, eps); j != i {
			t.Fatalf("session %d: %d with seeds cached, %d without", s, i, j)
		}
		owner[s] = i
		perWorker[i]++
	}
	most := 0
	for _, n := range perWorker {
		most = max(most, n)
	}
	ratio := float64(most) / (sessions / workers)
	t.Logf("sessions per worker %v, max/mean %.3f", perWorker, ratio)
	if ratio > 1.1 {
		t.Fatalf("max/mean %.3f > 1.1", ratio)
	}

	const down = 2
	fakes[down].set(false, 0)
	spread := make([]int, workers)
	for s := range sessions {
		i, _ := p.Pick(&Request{Key: sessionKey(s)}, eps)
		if owner[s] != down && i != owner[s] {
			t.Fatalf("session %d of a healthy worker moved", s)
		}
		if owner[s] == down {
			spread[i]++
		}
	}
	for i, n := range spread {
		if i != down && n == 0 {
			t.Fatalf("orphans not spread: %v", spread)
		}
	}
	fakes[down].set(true, 0)

	rest := append(append([]Endpoint{}, eps[:down]...), eps[down+1:]...)
	for s := range sessions {
		i, _ := p.Pick(&Request{Key: sessionKey(s)}, rest) // stale seeds: recomputed by ID
		if owner[s] != down && rest[i] != eps[owner[s]] {
			t.Fatalf("session %d moved after removing worker %d", s, down)
		}
	}
}
