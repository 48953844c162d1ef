package policy

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// cacheStep is one pick: the prompt, the worker loads and availability at that moment,
// and the expected choice (-1: no worker).
type cacheStep struct {
	text string
	load []int64
	down []int
	want int
}

func TestCacheAwareSteps(t *testing.T) {
	small := CacheAwareConfig{CacheThreshold: 0.3, BalanceAbsThreshold: 8, BalanceRelThreshold: 1.5, BlockSize: 4, MaxTreeSize: 1 << 20}
	for _, c := range []struct {
		name  string
		cfg   CacheAwareConfig
		steps []cacheStep
	}{
		{
			name: "prefix follows its worker, extensions too", cfg: small,
			steps: []cacheStep{
				{text: "aaaabbbbcccc", load: []int64{5, 3, 4}, want: 1}, // no match: least loaded
				{text: "aaaabbbbcccc", load: []int64{1, 3, 0}, want: 1}, // full match beats load
				{text: "aaaabbbbdddd", load: []int64{1, 3, 0}, want: 1}, // 8/12 matched
				{text: "aaaabbbbdd", load: []int64{0, 3, 1}, want: 1},   // 8/10 matched (the partial block is new)
			},
		},
		{
			name: "match at or under the threshold goes by load", cfg: small,
			steps: []cacheStep{
				{text: "aaaabbbbcccc", load: []int64{5, 3, 4}, want: 1},
				{text: "aaaaxxxxyyyyzzzz", load: []int64{0, 3, 4}, want: 0}, // 4/16 = 0.25
				{text: "aaaaxxxxyyyyzzzz", load: []int64{9, 3, 4}, want: 0}, // now indexed under 0
				{text: "aaaaxxxxyyyyzz", load: []int64{9, 3, 4}, want: 0},   // 12/14
				{text: "qqqq", load: []int64{9, 3, 4}, want: 1},             // unrelated
			},
		},
		{
			name: "imbalance beats the prefix", cfg: small,
			steps: []cacheStep{
				{text: "aaaabbbbcccc", load: []int64{0, 3, 4}, want: 0},
				{text: "aaaabbbbcccc", load: []int64{9, 3, 4}, want: 0},  // 9-3=6 ≤ 8: not imbalanced
				{text: "aaaabbbbcccc", load: []int64{12, 3, 4}, want: 1}, // 9 > 8 and 12 > 4.5
				{text: "aaaabbbbcccc", load: []int64{12, 3, 4}, want: 1}, // re-indexed under 1
				{text: "aaaabbbbcccc", load: []int64{30, 25, 29}, want: 1},
			},
		},
		{
			name: "unusable tenant: least loaded", cfg: small,
			steps: []cacheStep{
				{text: "aaaabbbbcccc", load: []int64{0, 3, 4}, want: 0},
				{text: "aaaabbbbcccc", load: []int64{0, 3, 4}, down: []int{0}, want: 1},
				{text: "aaaabbbbcccc", load: []int64{0, 5, 4}, want: 1}, // follows the new tenant
				{text: "aaaabbbbcccc", down: []int{0, 1, 2}, want: -1},
			},
		},
		{
			name: "empty text: least loaded", cfg: small,
			steps: []cacheStep{
				{text: "", load: []int64{2, 1, 3}, want: 1},
				{text: "", load: []int64{2, 1, 0}, want: 2},
			},
		},
		{
			name: "thresholds taken literally: zero always balances on any difference",
			cfg:  CacheAwareConfig{BlockSize: 4},
			steps: []cacheStep{
				{text: "aaaabbbb", load: []int64{0, 1, 1}, want: 0},
				{text: "aaaabbbb", load: []int64{1, 0, 1}, want: 1},
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewCacheAware(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			eps, fakes := fleet(3)
			for n, st := range c.steps {
				for i, f := range fakes {
					var load int64
					if st.load != nil {
						load = st.load[i]
					}
					f.set(true, load)
				}
				for _, i := range st.down {
					fakes[i].set(false, 0)
				}
				got, err := p.Pick(&Request{Text: []byte(st.text)}, eps)
				if st.want < 0 {
					if !errors.Is(err, ErrNoEndpoint) {
						t.Fatalf("step %d: got (%d, %v), want ErrNoEndpoint", n, got, err)
					}
					continue
				}
				if err != nil || got != st.want {
					t.Fatalf("step %d %+v: got (%d, %v)", n, st, got, err)
				}
			}
		})
	}
}

func TestCacheAwareBoundedLRU(t *testing.T) {
	// 8 blocks of 4 bytes.
	p, err := NewCacheAware(CacheAwareConfig{CacheThreshold: 0.3, BalanceAbsThreshold: 64, BalanceRelThreshold: 1.5, BlockSize: 4, MaxTreeSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	eps, fakes := fleet(2)
	pick := func(text string, loads ...int64) int {
		for i, f := range fakes {
			f.set(true, loads[i])
		}
		i, err := p.Pick(&Request{Text: []byte(text)}, eps)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	first := "AAAABBBBCCCCDDDD" // 4 blocks under worker 0
	if got := pick(first, 0, 5); got != 0 {
		t.Fatalf("got %d", got)
	}
	pick("eeeeffffgggghhhh", 5, 0) // 4 more under worker 1: full
	if n := p.Len(); n != 8 {
		t.Fatalf("Len = %d, want 8", n)
	}
	pick("iiiijjjj", 5, 0) // evicts the two least recent: first's deepest blocks
	if n := p.Len(); n != 8 {
		t.Fatalf("Len = %d after eviction, want 8", n)
	}
	// first's prefix "AAAABBBB" survived its extensions: 8/16 = 0.5 > 0.3 → worker 0.
	if got := pick(first, 5, 0); got != 0 {
		t.Fatalf("prefix lost under eviction: got %d", got)
	}
	// A prompt longer than the whole index neither panics nor overflows it.
	pick(strings.Repeat("x", 200)+strings.Repeat("y", 13), 0, 0)
	if n := p.Len(); n != 8 {
		t.Fatalf("Len = %d, want 8", n)
	}
}

func TestCacheAwareConfig(t *testing.T) {
	ok := DefaultCacheAwareConfig()
	for _, c := range []struct {
		name string
		edit func(*CacheAwareConfig)
	}{
		{"threshold above 1", func(c *CacheAwareConfig) { c.CacheThreshold = 1.5 }},
		{"threshold NaN", func(c *CacheAwareConfig) { c.CacheThreshold = math.NaN() }},
		{"negative abs", func(c *CacheAwareConfig) { c.BalanceAbsThreshold = -1 }},
		{"negative rel", func(c *CacheAwareConfig) { c.BalanceRelThreshold = -1 }},
		{"negative tree", func(c *CacheAwareConfig) { c.MaxTreeSize = -1 }},
		{"negative block", func(c *CacheAwareConfig) { c.BlockSize = -1 }},
	} {
		cfg := ok
		c.edit(&cfg)
		if _, err := NewCacheAware(cfg); !errors.Is(err, ErrCacheAwareConfig) {
			t.Errorf("%s: err = %v", c.name, err)
		}
	}
	if _, err := NewCacheAware(ok); err != nil {
		t.Fatal(err)
	}
}

// TestCacheAwareConversationsStick: multi-turn conversations, each turn extending the last,
// stay on the worker of their first turn while loads are even, and first turns spread.
func TestCacheAwareConversationsStick(t *testing.T) {
	p, err := NewCacheAware(DefaultCacheAwareConfig())
	if err != nil {
		t.Fatal(err)
	}
	eps, _ := fleet(4)
	const conversations, turns = 40, 6
	home := make([]int, conversations)
	perWorker := make([]int, 4)
	texts := make([]string, conversations)
	for turn := range turns {
		for c := range conversations {
			texts[c] += strings.Repeat(string(rune('a'+c%26)), 50) + " turn " + strings.Repeat("x", 90+turn) + "\n"
			if turn == 0 {
				texts[c] = fmt.Sprintf("conversation %d: ", c) + texts[c]
			}
			got, err := p.Pick(&Request{Text: []byte(texts[c])}, eps)
			if err != nil {
				t.Fatal(err)
			}
			if turn == 0 {
				home[c] = got
				perWorker[got]++
			} else if got != home[c] {
				t.Fatalf("conversation %d turn %d went to %d, first turn to %d", c, turn, got, home[c])
			}
		}
	}
	for _, n := range perWorker {
		if n != conversations/4 {
			t.Fatalf("first turns spread %v, want even", perWorker)
		}
	}
}
