//go:build !race

package policy

import (
	"strings"
	"testing"
)

// TestPickAllocsNothing proves the hot path of the stateless and hashing policies
// allocates nothing, keyed and keyless, with a worker down and one avoided.
func TestPickAllocsNothing(t *testing.T) {
	for _, name := range []string{
		NameRoundRobin, NameConsistentHash, NameRendezvousHash,
		NameLeastLoaded, NamePowerOfTwo, NameRandom,
	} {
		t.Run(name, func(t *testing.T) {
			eps, fakes := fleet(64)
			fakes[3].set(false, 0)
			for i, f := range fakes {
				f.inFlight.Store(int64(i % 5))
			}
			p, err := New(name, Config{})
			if err != nil {
				t.Fatal(err)
			}
			if m, ok := p.(MembershipAware); ok {
				m.SetMembers(eps)
			}
			keyed := &Request{Key: []byte("rollout-1234-turn"), Avoid: []Endpoint{eps[7]}}
			keyless := &Request{}
			if n := testing.AllocsPerRun(1000, func() {
				if _, err := p.Pick(keyed, eps); err != nil {
					t.Fatal(err)
				}
				if _, err := p.Pick(keyless, eps); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Fatalf("%v allocations per pick pair", n)
			}
		})
	}
}

// TestStatefulRepeatPickAllocsNothing: a known session's pick and a known prompt's pick
// allocate nothing; only new sessions and new prefix blocks do.
func TestStatefulRepeatPickAllocsNothing(t *testing.T) {
	eps, _ := fleet(16)
	p, _ := newSticky(t, StickyLeastLoadedConfig{})
	p.SetMembers(eps)
	r := &Request{SessionID: []byte("rollout-1")}
	p.Pick(r, eps)
	if n := testing.AllocsPerRun(1000, func() { p.Pick(r, eps) }); n != 0 {
		t.Fatalf("sticky: %v allocations per repeat pick", n)
	}
	ca, _ := NewCacheAware(DefaultCacheAwareConfig())
	text := &Request{Text: []byte(strings.Repeat("You are a helpful assistant. ", 100))}
	ca.Pick(text, eps)
	if n := testing.AllocsPerRun(1000, func() { ca.Pick(text, eps) }); n != 0 {
		t.Fatalf("cache_aware: %v allocations per repeat pick", n)
	}
}

func TestExtractDoesNotAllocate(t *testing.T) {
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("hello ", 200) +
		`"}],"max_tokens":10,"session_params":{"session_id":"rollout-17"},"user":"u"}`)
	dst := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() {
		if SessionIDFromBody(body) == nil {
			t.Fatal("no session id")
		}
		dst = PromptText(dst[:0], body)
	}); n != 0 {
		t.Fatalf("%v allocations per run", n)
	}
}
