package router

import (
	"sync/atomic"
	"time"
)

// limiter is a real cap on requests in flight through the router (vllm-router's token
// bucket only limited the admission rate). A request over the cap waits in a bounded
// queue for a slot; a full queue or a wait past the timeout is rejected with 429.
type limiter struct {
	slots   chan struct{}
	waiting atomic.Int64
	queue   int64
	timeout time.Duration
}

func newLimiter(max, queue int, timeout time.Duration) *limiter {
	return &limiter{slots: make(chan struct{}, max), queue: int64(queue), timeout: timeout}
}

// acquire takes a slot, waiting in the queue if needed; false means rejected.
func (l *limiter) acquire() bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	if l.waiting.Add(1) > l.queue {
		l.waiting.Add(-1)
		return false
	}
	defer l.waiting.Add(-1)
	t := time.NewTimer(l.timeout)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (l *limiter) release() { <-l.slots }

// inFlight is the number of requests holding a slot.
func (l *limiter) inFlight() int { return len(l.slots) }
