package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestRetryable(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		err       error
		bytesSent bool
		want      bool
	}{
		{"DialError", 0, &DialError{Err: errors.New("no route")}, false, true},
		{"DialError wrapped", 0, fmt.Errorf("attempt 1: %w", &DialError{Err: io.EOF}), false, true},
		{"fasthttp dial timeout", 0, fasthttp.ErrDialTimeout, false, true},
		{"fasthttp TLS handshake timeout", 0, fasthttp.ErrTLSHandshakeTimeout, false, true},
		{"net.OpError dial", 0, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("x")}, false, true},
		{"ECONNREFUSED", 0, fmt.Errorf("connecting: %w", syscall.ECONNREFUSED), false, true},
		{"closed before response", 0, fasthttp.ErrConnectionClosed, false, true},
		{"reset before response", 0, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, false, true},
		{"broken pipe while sending", 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}, false, true},
		{"EOF before response", 0, io.EOF, false, true},
		{"router pool full", 0, fasthttp.ErrNoFreeConns, false, true},
		{"dial error after bytes reached the client", 0, &DialError{Err: io.EOF}, true, false},
		{"timeout: worker may be processing", 0, fasthttp.ErrTimeout, false, false},
		{"deadline exceeded", 0, context.DeadlineExceeded, false, false},
		{"client cancelled", 0, context.Canceled, false, false},
		{"other error", 0, errors.New("body too large"), false, false},
		{"error wins over 503", 503, fasthttp.ErrTimeout, false, false},
		{"502", 502, nil, false, true},
		{"503", 503, nil, false, true},
		{"504", 504, nil, false, true},
		{"503 after bytes reached the client", 503, nil, true, false},
		{"500: may have been processed", 500, nil, false, false},
		{"501", 501, nil, false, false},
		{"400", 400, nil, false, false},
		{"408", 408, nil, false, false},
		{"429", 429, nil, false, false},
		{"200", 200, nil, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Retryable(tc.status, tc.err, tc.bytesSent); got != tc.want {
				t.Fatalf("Retryable(%d, %v, %v) = %v; want %v", tc.status, tc.err, tc.bytesSent, got, tc.want)
			}
		})
	}
	if IsDialError(nil) || IsDialError(fasthttp.ErrConnectionClosed) {
		t.Fatal("IsDialError true for a non-dial error")
	}
	if (&DialError{}).Error() != "dialing worker" || (&DialError{Err: io.EOF}).Error() != "dialing worker: EOF" {
		t.Fatal("DialError.Error wording changed")
	}
}

// The errors fasthttp really returns, from real 127.0.0.1 sockets: a refused dial and a
// worker that drops or resets the connection before answering are retryable; a worker
// that never answers (timeout) is not, but all three count as breaker failures.
func TestRetryableFasthttpErrors(t *testing.T) {
	const timeout = 2 * time.Second
	tests := []struct {
		name          string
		worker        func(t *testing.T) string // returns the address to call
		wantRetryable bool
		wantDial      bool
	}{
		{"refused", deadAddr, true, true},
		{"closed before response", rawWorker(func(c *net.TCPConn) { c.Close() }), true, false},
		{"reset before response", rawWorker(func(c *net.TCPConn) { c.SetLinger(0); c.Close() }), true, false},
		{"no answer", rawWorker(func(c *net.TCPConn) {}), false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.worker(t)
			// A short idle duration lets the client's conns cleaner exit before goleak looks.
			hc := &fasthttp.HostClient{Addr: addr, MaxIdleConnDuration: time.Millisecond}
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + addr + "/v1/completions")
			req.Header.SetMethod(fasthttp.MethodPost) // not idempotent: fasthttp does not retry it
			req.SetBodyString(`{"prompt":"hi"}`)
			timeoutFor := timeout
			if !tc.wantRetryable {
				timeoutFor = 50 * time.Millisecond
			}
			err := hc.DoTimeout(req, resp, timeoutFor)
			if err == nil {
				t.Fatal("request succeeded; want an error")
			}
			t.Logf("fasthttp returned %T: %v", err, err)
			if got := Retryable(0, err, false); got != tc.wantRetryable {
				t.Errorf("Retryable(%T %v) = %v; want %v", err, err, got, tc.wantRetryable)
			}
			if got := IsDialError(err); got != tc.wantDial {
				t.Errorf("IsDialError(%T %v) = %v; want %v", err, err, got, tc.wantDial)
			}
			if got := Classify(0, nil, err); got != Failure {
				t.Errorf("Classify(%v) = %v; want failure", err, got)
			}
		})
	}
}

// rawWorker returns a worker address whose connections are handed to handle once the
// request has arrived.
func rawWorker(handle func(c *net.TCPConn)) func(t *testing.T) string {
	return func(t *testing.T) string {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		var held []net.Conn
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				buf := make([]byte, 4096)
				_, _ = c.Read(buf) // wait for the request
				held = append(held, c)
				handle(c.(*net.TCPConn))
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			<-done
			for _, c := range held {
				c.Close()
			}
		})
		return ln.Addr().String()
	}
}

func TestBackoff(t *testing.T) {
	half := func() float64 { return 0.5 } // jitter factor 0: the nominal delay
	cfg := RetryConfig{}
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{-1, 50 * time.Millisecond},
		{0, 50 * time.Millisecond},
		{1, 75 * time.Millisecond},
		{2, 112500 * time.Microsecond},
		{3, 168750 * time.Microsecond},
		{16, 30 * time.Second}, // 50ms×1.5^16 ≈ 32.8s, capped
		{1000, 30 * time.Second},
	} {
		if got := cfg.Backoff(tc.attempt, half); got != tc.want {
			t.Errorf("Backoff(%d) = %v; want %v", tc.attempt, got, tc.want)
		}
	}

	// Jitter spreads each delay over [d×(1-j), d×(1+j)], up to float rounding.
	for attempt := range 25 {
		nominal := float64(cfg.Backoff(attempt, half))
		for _, r := range []float64{0, 0.1, 0.25, 0.75, math.Nextafter(1, 0)} {
			got := float64(cfg.Backoff(attempt, func() float64 { return r }))
			lo, hi := nominal*0.8, nominal*1.2
			if got < lo-1 || got > hi+1 {
				t.Fatalf("Backoff(%d, r=%v) = %v; want in [%v, %v]", attempt, r, time.Duration(got), time.Duration(lo), time.Duration(hi))
			}
		}
		if got := float64(cfg.Backoff(attempt, func() float64 { return 0 })); math.Abs(got-nominal*0.8) > 1 {
			t.Fatalf("Backoff(%d, r=0) = %v; want %v", attempt, time.Duration(got), time.Duration(nominal*0.8))
		}
		if got := float64(cfg.Backoff(attempt, nil)); got < nominal*0.8-1 || got > nominal*1.2+1 {
			t.Fatalf("Backoff(%d, nil rnd) = %v; out of bounds", attempt, time.Duration(got))
		}
	}

	custom := RetryConfig{InitialBackoff: time.Second, MaxBackoff: 4 * time.Second, Multiplier: 2, Jitter: 1e-12}
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if got := custom.Backoff(attempt, func() float64 { return 0 }); got.Round(time.Microsecond) != want {
			t.Errorf("custom Backoff(%d) = %v; want %v", attempt, got, want)
		}
	}
	// Invalid values are clamped, never trusted into NaN or negative waits.
	bad := RetryConfig{InitialBackoff: -time.Second, Multiplier: math.NaN(), Jitter: 5}
	if got := bad.Backoff(3, half); got != 0 {
		t.Errorf("Backoff with invalid config = %v; want 0", got)
	}
}

func TestRetryConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  RetryConfig
		want int
	}{
		{RetryConfig{}, 5},
		{RetryConfig{MaxAttempts: 1}, 1},
		{RetryConfig{MaxAttempts: 9}, 9},
		{RetryConfig{MaxAttempts: -3}, 1},
		{RetryConfig{MaxAttempts: 9, Disabled: true}, 1},
	} {
		if got := tc.cfg.Attempts(); got != tc.want {
			t.Errorf("%+v.Attempts() = %d; want %d", tc.cfg, got, tc.want)
		}
	}
	d := RetryConfig{}.WithDefaults()
	if d.MaxAttempts != 5 || d.InitialBackoff != 50*time.Millisecond || d.MaxBackoff != 30*time.Second ||
		d.Multiplier != 1.5 || d.Jitter != 0.2 {
		t.Fatalf("defaults = %+v; want vllm-router's 5/50ms/30s/1.5/0.2", d)
	}
	for _, bad := range []RetryConfig{
		{MaxAttempts: -1}, {InitialBackoff: -1}, {MaxBackoff: -1}, {Multiplier: 0.5},
		{Multiplier: math.NaN()}, {Multiplier: math.Inf(1)}, {Jitter: -0.1}, {Jitter: 1.5}, {Jitter: math.NaN()},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v; want ErrInvalidConfig", bad, err)
		}
	}
	if err := (RetryConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
}
