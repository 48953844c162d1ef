//go:build !race

package health

import (
	"testing"
	"time"
)

// The breaker and the classifier sit on the request path: they must not allocate.
// (Excluded under -race, which adds allocations; `make test-allocs` runs it.)
func TestAllocsBreakerAndClassify(t *testing.T) {
	clock := newFakeClock()
	closed := NewBreaker(BreakerConfig{}, clock.Now)
	open := NewBreaker(BreakerConfig{Timeout: time.Hour}, clock.Now)
	for range DefaultBreakerFailureThreshold {
		open.Record(Failure)
	}
	body := []byte(vllmDecoderPrompt)
	tests := []struct {
		name string
		fn   func()
	}{
		{"Ready closed", func() { closed.Ready() }},
		{"Acquire+Record closed", func() {
			if closed.Acquire() {
				closed.Record(Success)
			}
		}},
		{"Ready open", func() { open.Ready() }},
		{"Acquire open", func() { open.Acquire() }},
		{"Classify overlong 500", func() { Classify(500, body, nil) }},
		{"Retryable 503", func() { Retryable(503, nil, false) }},
		{"Backoff", func() { RetryConfig{}.Backoff(3, func() float64 { return 0.5 }) }},
	}
	for _, tc := range tests {
		if n := testing.AllocsPerRun(1000, tc.fn); n != 0 {
			t.Errorf("%s: %v allocs per run; want 0", tc.name, n)
		}
	}
}
