package policy

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkPick measures one Pick per policy and fleet size, with all workers usable and
// uneven loads. Keyed policies get a rotating set of 1 024 session keys; sticky sessions
// are placed before timing; cache_aware gets ~3 KB prompts sharing a 2 KB prefix.
func BenchmarkPick(b *testing.B) {
	const nKeys = 1024
	keys := make([][]byte, nKeys)
	texts := make([][]byte, nKeys)
	system := strings.Repeat("You are a careful agent solving a software task. ", 40)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "rollout-%d-7d3f9a", i)
		texts[i] = fmt.Appendf(nil, "%s user %d: %s", system, i%64, strings.Repeat("step ", 200))
	}
	for _, name := range Names() {
		for _, workers := range []int{4, 64, 1024} {
			eps, fakes := fleet(workers)
			for i, f := range fakes {
				f.inFlight.Store(int64(i*7) % 13)
			}
			p, err := New(name, DefaultConfig())
			if err != nil {
				b.Fatal(err)
			}
			if m, ok := p.(MembershipAware); ok {
				m.SetMembers(eps)
			}
			reqs := make([]Request, nKeys)
			for i := range reqs {
				reqs[i] = Request{Key: keys[i], SessionID: keys[i]}
				if name == NameCacheAware {
					reqs[i] = Request{Text: texts[i]}
				}
				p.Pick(&reqs[i], eps) // place sessions, index prefixes
			}
			b.Run(fmt.Sprintf("%s/workers=%d", name, workers), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := p.Pick(&reqs[i%nKeys], eps); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// BenchmarkStickyParallel measures lock contention: all procs pick known sessions (the
// common case of multi-turn rollouts), spread over the 64 shards.
func BenchmarkStickyParallel(b *testing.B) {
	eps, _ := fleet(64)
	p, _ := NewStickyLeastLoaded(StickyLeastLoadedConfig{})
	p.SetMembers(eps)
	const nKeys = 4096
	reqs := make([]Request, nKeys)
	for i := range reqs {
		reqs[i] = Request{SessionID: fmt.Appendf(nil, "rollout-%d", i)}
		p.Pick(&reqs[i], eps)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			p.Pick(&reqs[i%nKeys], eps)
			i += 7
		}
	})
}

func BenchmarkSetMembers(b *testing.B) {
	for _, workers := range []int{8, 64, 1024} {
		eps, _ := fleet(workers)
		b.Run(fmt.Sprintf("consistent_hash/workers=%d", workers), func(b *testing.B) {
			p, _ := NewConsistentHash(ConsistentHashConfig{})
			for b.Loop() {
				p.SetMembers(eps)
			}
		})
	}
}

func BenchmarkExtract(b *testing.B) {
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"` + strings.Repeat("be terse. ", 400) +
		`"},{"role":"user","content":"` + strings.Repeat("hello ", 600) + `"}],"max_tokens":64,"session_params":{"session_id":"rollout-17"}}`)
	b.Run("SessionIDFromBody", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			SessionIDFromBody(body)
		}
	})
	b.Run("PromptText", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		dst := make([]byte, 0, len(body))
		for b.Loop() {
			dst = PromptText(dst[:0], body)
		}
	})
}
