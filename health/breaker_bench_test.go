package health

import (
	"testing"
	"time"
)

// Ready is called by policies for every candidate endpoint of every request, so it must
// cost a few ns and allocate nothing. Compare runs with:
//
//	go test -run '^$' -bench 'Breaker|Classify' -benchmem -count=10 ./health/ | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkBreakerReady(b *testing.B) {
	br := NewBreaker(BreakerConfig{}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !br.Ready() {
			b.Fatal("closed breaker not ready")
		}
	}
}

// Many request goroutines read one endpoint's breaker at once.
func BenchmarkBreakerReadyParallel(b *testing.B) {
	br := NewBreaker(BreakerConfig{}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !br.Ready() {
				b.Error("closed breaker not ready")
				return
			}
		}
	})
}

// The per-request cost of a healthy endpoint: admit, then record success.
func BenchmarkBreakerAcquireRecord(b *testing.B) {
	br := NewBreaker(BreakerConfig{}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if br.Acquire() {
			br.Record(Success)
		}
	}
}

// An open breaker's Ready reads the clock.
func BenchmarkBreakerReadyOpen(b *testing.B) {
	br := NewBreaker(BreakerConfig{Timeout: time.Hour}, nil)
	for range DefaultBreakerFailureThreshold {
		br.Record(Failure)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if br.Ready() {
			b.Fatal("open breaker ready")
		}
	}
}

func BenchmarkClassify500(b *testing.B) {
	body := []byte(`{"error":{"message":"EngineCore encountered an issue. See stack trace (above) for the root cause.","type":"InternalServerError","param":null,"code":500}}`)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if Classify(500, body, nil) != Failure {
			b.Fatal("want failure")
		}
	}
}
