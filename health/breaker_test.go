package health

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock.
type fakeClock struct{ now atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.now.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// A breaker script is a space-separated list of steps:
//
//	s f n      Record Success / Failure / Neutral
//	sN fN nN   the same, N times
//	a+ a-      Acquire, expecting true / false
//	aN         Acquire N times, each expecting true
//	r+ r-      Ready, expecting true / false
//	=closed =open =half_open   State, expecting that
//	+10s       advance the clock
func runBreakerScript(t *testing.T, b *Breaker, clock *fakeClock, script string) {
	t.Helper()
	for i, step := range strings.Fields(script) {
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("step %d %q: %s", i, step, fmt.Sprintf(format, args...))
		}
		times := func() int {
			if len(step) == 1 {
				return 1
			}
			var n int
			if _, err := fmt.Sscanf(step[1:], "%d", &n); err != nil {
				t.Fatalf("bad step %q", step)
			}
			return n
		}
		switch {
		case step[0] == '+':
			d, err := time.ParseDuration(step[1:])
			if err != nil {
				t.Fatalf("bad step %q", step)
			}
			clock.Advance(d)
		case step[0] == '=':
			if got := b.State().String(); got != step[1:] {
				fail("State = %s", got)
			}
		case step == "a+" || step == "a-":
			if got := b.Acquire(); got != (step == "a+") {
				fail("Acquire = %v", got)
			}
		case step[0] == 'a':
			for k := range times() {
				if !b.Acquire() {
					fail("Acquire #%d = false", k+1)
				}
			}
		case step == "r+" || step == "r-":
			if got := b.Ready(); got != (step == "r+") {
				fail("Ready = %v", got)
			}
		case step[0] == 's' || step[0] == 'f' || step[0] == 'n':
			o := map[byte]Outcome{'s': Success, 'f': Failure, 'n': Neutral}[step[0]]
			for range times() {
				b.Record(o)
			}
		default:
			t.Fatalf("bad step %q", step)
		}
	}
}

func TestBreakerStateMachine(t *testing.T) {
	small := BreakerConfig{FailureThreshold: 2, SuccessThreshold: 1, Timeout: time.Second, HalfOpenProbes: 1}
	tests := []struct {
		name   string
		cfg    BreakerConfig
		script string
	}{
		{"opens after 10 consecutive failures", BreakerConfig{},
			"f9 =closed r+ a+ f =open r- a-"},
		{"success resets the failure count", BreakerConfig{},
			"f9 s f9 =closed f =open"},
		{"neutral neither counts nor resets", BreakerConfig{},
			"f5 n20 f4 =closed f =open"},
		{"open until the timeout, then half-open on acquire", BreakerConfig{},
			"f10 +59s r- a- =open +1s r+ =open a+ =half_open"},
		{"half-open closes after 3 successes", BreakerConfig{},
			"f10 +60s a3 s2 =half_open s =closed r+"},
		{"half-open admits at most SuccessThreshold probes", BreakerConfig{},
			"f10 +60s a3 a- r- s =half_open r+ a+ a-"},
		{"half-open failure reopens for a full timeout", BreakerConfig{},
			"f10 +60s a3 s2 f =open +59s r- a- +1s a+ =half_open"},
		{"half-open neutral frees the slot without counting", BreakerConfig{},
			"f10 +60s a3 n3 =half_open a3 s3 =closed"},
		{"any half-open failure reopens", BreakerConfig{HalfOpenProbes: 10},
			"f10 +60s a5 s2 f =open"},
		{"leaked probe slots reopen after a timeout", BreakerConfig{},
			"f10 +60s a3 a- r- +59s r- +1s r+ a3 a- s3 =closed"},
		{"late success while open is ignored", BreakerConfig{},
			"f10 s5 =open r- +60s r+"},
		{"late failure while open does not extend it", BreakerConfig{},
			"f10 +30s f5 +30s r+ a+"},
		{"closed again counts from zero", BreakerConfig{},
			"f10 +60s a3 s3 =closed f9 =closed f =open"},
		{"disabled never opens", BreakerConfig{Disabled: true},
			"f1000 =closed r+ a+"},
		{"custom thresholds", small,
			"f =closed f =open +999ms a- +1ms a+ a- =half_open s =closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			b := NewBreaker(tc.cfg, clock.Now)
			runBreakerScript(t, b, clock, tc.script)
		})
	}
}

func TestBreakerOnStateChange(t *testing.T) {
	clock := newFakeClock()
	var got []string
	b := NewBreaker(BreakerConfig{OnStateChange: func(from, to State) {
		got = append(got, from.String()+">"+to.String())
	}}, clock.Now)
	runBreakerScript(t, b, clock, "f10 +60s a3 f +60s a3 s3")
	want := []string{"closed>open", "open>half_open", "half_open>open", "open>half_open", "half_open>closed"}
	if !slices.Equal(got, want) {
		t.Fatalf("transitions = %v; want %v", got, want)
	}
	if int(Closed) != 0 || int(Open) != 1 || int(HalfOpen) != 2 {
		t.Fatalf("state values %d/%d/%d; want vllm_router_cb_state's 0/1/2", Closed, Open, HalfOpen)
	}
}

func TestBreakerConfig(t *testing.T) {
	d := BreakerConfig{}.WithDefaults()
	if d.FailureThreshold != 10 || d.SuccessThreshold != 3 || d.Timeout != 60*time.Second || d.HalfOpenProbes != 3 {
		t.Fatalf("defaults = %+v; want vllm-router's 10/3/60s and 3 probes", d)
	}
	for _, bad := range []BreakerConfig{
		{FailureThreshold: -1}, {SuccessThreshold: -1}, {Timeout: -1}, {HalfOpenProbes: -1},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v; want ErrInvalidConfig", bad, err)
		}
	}
	if err := (BreakerConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	// NewBreaker tolerates invalid values by using defaults (it has no error to return).
	clock := newFakeClock()
	b := NewBreaker(BreakerConfig{FailureThreshold: -5, Timeout: -time.Second}, clock.Now)
	runBreakerScript(t, b, clock, "f9 =closed f =open +59s a- +1s a+")
}

// Hammer one breaker from many goroutines under -race: no data race, the state stays
// valid, and a Record per granted Acquire keeps half-open slots from leaking.
func TestBreakerConcurrent(t *testing.T) {
	clock := newFakeClock()
	b := NewBreaker(BreakerConfig{FailureThreshold: 3, SuccessThreshold: 2, Timeout: time.Millisecond}, clock.Now)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				if b.Ready() && b.Acquire() {
					if (i+g)%3 == 0 {
						b.Record(Failure)
					} else {
						b.Record(Success)
					}
				}
				if i%50 == 0 {
					clock.Advance(time.Millisecond)
				}
				if s := b.State(); s > HalfOpen {
					t.Errorf("invalid state %d", s)
					return
				}
			}
		})
	}
	wg.Wait()
	clock.Advance(time.Second)
	runBreakerScript(t, b, clock, "a2 s2 =closed")
}
