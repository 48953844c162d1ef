package policy

import (
	"errors"
	"testing"
)

// pickCase drives one stateless policy through a sequence of picks on fake workers.
type pickCase struct {
	name  string
	up    []bool  // availability per worker
	load  []int64 // in-flight per worker; nil means all zero
	avoid []int   // workers in Request.Avoid
	rand  []int   // injected IntN results, cycled
	key   string  // Request.Key
	want  []int   // successive picks; -1 means ErrNoEndpoint
}

func (c pickCase) fleet() ([]Endpoint, *Request) {
	eps, fakes := fleet(len(c.up))
	for i, f := range fakes {
		var load int64
		if c.load != nil {
			load = c.load[i]
		}
		f.set(c.up[i], load)
	}
	r := &Request{}
	if c.key != "" {
		r.Key = []byte(c.key)
	}
	for _, i := range c.avoid {
		r.Avoid = append(r.Avoid, eps[i])
	}
	return eps, r
}

func runPicks(t *testing.T, p Policy, c pickCase) {
	t.Helper()
	eps, r := c.fleet()
	for step, want := range c.want {
		got, err := p.Pick(r, eps)
		if want < 0 {
			if !errors.Is(err, ErrNoEndpoint) {
				t.Fatalf("pick %d: got (%d, %v), want ErrNoEndpoint", step, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Fatalf("pick %d: got (%d, %v), want %d", step, got, err, want)
		}
	}
}

func TestRoundRobinPicks(t *testing.T) {
	for _, c := range []pickCase{
		{name: "all up cycles", up: []bool{true, true, true}, want: []int{0, 1, 2, 0, 1}},
		{name: "down worker's turn goes to the next", up: []bool{true, false, true}, want: []int{0, 2, 2, 0}},
		{name: "avoided like down", up: []bool{true, true, true}, avoid: []int{0}, want: []int{1, 1, 2, 1}},
		{name: "none usable", up: []bool{false, false}, want: []int{-1, -1}},
		{name: "no workers", up: nil, want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewRoundRobin(RoundRobinConfig{})
			if err != nil {
				t.Fatal(err)
			}
			runPicks(t, p, c)
		})
	}
}

func TestLeastLoadedPicks(t *testing.T) {
	for _, c := range []pickCase{
		// The scan starts at a cursor that advances per pick (1, 2, 3, 0, ...); the first
		// minimum met wins, so ties rotate.
		{name: "min in-flight, ties rotate", up: []bool{true, true, true, true}, load: []int64{3, 1, 1, 5}, want: []int{1, 2, 1, 1}},
		{name: "down worker ignored though idle", up: []bool{false, true, true}, load: []int64{0, 4, 2}, want: []int{2, 2}},
		{name: "avoided worker ignored", up: []bool{true, true}, load: []int64{0, 9}, avoid: []int{0}, want: []int{1}},
		{name: "all equal spreads", up: []bool{true, true, true}, want: []int{1, 2, 0, 1}},
		{name: "none usable", up: []bool{false}, want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, _ := NewLeastLoaded(LeastLoadedConfig{})
			runPicks(t, p, c)
		})
	}
}

func TestRandomPicks(t *testing.T) {
	for _, c := range []pickCase{
		{name: "draws map to workers", up: []bool{true, true, true}, rand: []int{2, 0, 1}, want: []int{2, 0, 1}},
		{name: "unusable draw rejected", up: []bool{true, false, true}, rand: []int{1, 2}, want: []int{2}},
		// Four rejected draws, then count the usable (only 2) and draw among them.
		{name: "counting fallback", up: []bool{true, false, true, false}, avoid: []int{0}, rand: []int{1, 3, 1, 3, 0}, want: []int{2}},
		{name: "none usable", up: []bool{false, false}, rand: []int{0}, want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, _ := NewRandom(RandomConfig{Rand: &seqRand{vals: c.rand}})
			runPicks(t, p, c)
		})
	}
}

func TestPowerOfTwoPicks(t *testing.T) {
	for _, c := range []pickCase{
		// First draw 0; second draw 1 of the 3 others (0 excluded) is worker 2: load 2 < 5.
		{name: "lower load wins", up: []bool{true, true, true, true}, load: []int64{5, 2, 2, 9}, rand: []int{0, 1}, want: []int{2}},
		// First draw 1 (load 2); second draw 2 → worker 3 (load 9): first stays.
		{name: "first kept when lower", up: []bool{true, true, true, true}, load: []int64{5, 2, 2, 9}, rand: []int{1, 2}, want: []int{1}},
		// First 1, second 0 → worker 0; equal load: tie goes to the first draw.
		{name: "tie goes to first draw", up: []bool{true, true}, load: []int64{2, 2}, rand: []int{1, 0}, want: []int{1}},
		{name: "single usable", up: []bool{false, true, false}, load: []int64{0, 7, 0}, rand: []int{1, 0}, want: []int{1}},
		// First draw 0; second draw 0 of the others is worker 1 (down, rejected), then
		// draw 1 is worker 2: load 3 < 4.
		{name: "second draw skips down", up: []bool{true, false, true}, load: []int64{4, 0, 3}, rand: []int{0, 0, 1}, want: []int{2}},
		{name: "none usable", up: []bool{false, false}, rand: []int{0}, want: []int{-1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, _ := NewPowerOfTwo(PowerOfTwoConfig{Rand: &seqRand{vals: c.rand}})
			runPicks(t, p, c)
		})
	}
}

func TestNilRequestIsStateless(t *testing.T) {
	eps, _ := fleet(3)
	for _, name := range Names() {
		p, err := New(name, DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		if i, err := p.Pick(nil, eps); err != nil || i < 0 || i >= 3 {
			t.Errorf("%s: Pick(nil) = (%d, %v)", name, i, err)
		}
	}
}
