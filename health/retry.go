package health

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Defaults match vllm-router's --retry-* flags.
const (
	DefaultRetryMaxAttempts    = 5
	DefaultRetryInitialBackoff = 50 * time.Millisecond
	DefaultRetryMaxBackoff     = 30 * time.Second
	DefaultRetryMultiplier     = 1.5
	DefaultRetryJitter         = 0.2
)

// RetryConfig is the retry policy for requests whose failure Retryable allows. The zero
// value means "all defaults".
type RetryConfig struct {
	// MaxAttempts is the total number of attempts, the first included
	// (--retry-max-retries, which despite its name counts attempts). Default 5; zero
	// means default; negative is invalid.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry (--retry-initial-backoff-ms).
	// Default 50ms; zero means default.
	InitialBackoff time.Duration
	// MaxBackoff caps the exponential wait before jitter (--retry-max-backoff-ms).
	// Default 30s; zero means default.
	MaxBackoff time.Duration
	// Multiplier grows the wait per retry (--retry-backoff-multiplier). Default 1.5;
	// zero means default; must be ≥ 1.
	Multiplier float64
	// Jitter spreads each wait uniformly over ±Jitter of itself (--retry-jitter-factor).
	// Default 0.2; zero means default; must be in [0, 1]. Use a tiny value such as 1e-9
	// for practically none.
	Jitter float64
	// Disabled allows one attempt only (--disable-retries).
	Disabled bool
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c RetryConfig) WithDefaults() RetryConfig {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultRetryMaxAttempts
	}
	if c.InitialBackoff == 0 {
		c.InitialBackoff = DefaultRetryInitialBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultRetryMaxBackoff
	}
	if c.Multiplier == 0 {
		c.Multiplier = DefaultRetryMultiplier
	}
	if c.Jitter == 0 {
		c.Jitter = DefaultRetryJitter
	}
	return c
}

// Validate reports the first invalid field of c after defaults are applied.
func (c RetryConfig) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.MaxAttempts < 0:
		return fmt.Errorf("%w: retry MaxAttempts %d is negative", ErrInvalidConfig, c.MaxAttempts)
	case c.InitialBackoff < 0:
		return fmt.Errorf("%w: retry InitialBackoff %v is negative", ErrInvalidConfig, c.InitialBackoff)
	case c.MaxBackoff < 0:
		return fmt.Errorf("%w: retry MaxBackoff %v is negative", ErrInvalidConfig, c.MaxBackoff)
	case !(c.Multiplier >= 1) || math.IsInf(c.Multiplier, 0):
		return fmt.Errorf("%w: retry Multiplier %v must be a finite number ≥ 1", ErrInvalidConfig, c.Multiplier)
	case !(c.Jitter >= 0 && c.Jitter <= 1):
		return fmt.Errorf("%w: retry Jitter %v must be in [0, 1]", ErrInvalidConfig, c.Jitter)
	}
	return nil
}

// Attempts returns the total number of attempts allowed, at least 1.
func (c RetryConfig) Attempts() int {
	c = c.WithDefaults()
	if c.Disabled || c.MaxAttempts < 1 {
		return 1
	}
	return c.MaxAttempts
}

// Backoff returns the wait after failed attempt number attempt (0 for the first attempt),
// as vllm-router computes it: min(InitialBackoff × Multiplier^attempt, MaxBackoff), then
// scaled by a uniform factor in [1-Jitter, 1+Jitter). rnd returns values in [0, 1); nil
// means math/rand/v2. Negative attempts count as 0. Invalid config values (see Validate)
// are clamped rather than trusted.
func (c RetryConfig) Backoff(attempt int, rnd func() float64) time.Duration {
	c = c.WithDefaults()
	if attempt < 0 {
		attempt = 0
	}
	mult := c.Multiplier
	if !(mult >= 1) || math.IsInf(mult, 0) {
		mult = 1
	}
	jitter := c.Jitter
	if !(jitter >= 0 && jitter <= 1) {
		jitter = 0
	}
	ceiling := float64(max(c.MaxBackoff, 0))
	d := min(float64(max(c.InitialBackoff, 0))*math.Pow(mult, float64(attempt)), ceiling)
	if jitter > 0 {
		if rnd == nil {
			rnd = rand.Float64
		}
		d *= 1 + jitter*(2*rnd()-1)
	}
	return time.Duration(d)
}

// DialError marks a failure to establish the connection to a worker: the request never
// left the router, so it is always safe to retry, even a POST. Wrap dial failures from
// custom dialers in it; fasthttp's own dial errors are recognised without it.
type DialError struct {
	Err error
}

func (e *DialError) Error() string {
	if e.Err == nil {
		return "dialing worker"
	}
	return "dialing worker: " + e.Err.Error()
}

func (e *DialError) Unwrap() error { return e.Err }

// Retryable reports whether a failed attempt may be sent again (to the same or another
// worker). Only when no byte has reached the client (bytesSent false) and the failure
// shows the worker did not process the request:
//
//   - a dial failure (IsDialError): nothing was sent;
//   - the connection reset or closed before any response byte
//     (fasthttp.ErrConnectionClosed, ECONNRESET, EPIPE, io.EOF);
//   - fasthttp.ErrNoFreeConns: the router's own pool refused, nothing was sent;
//   - 502, 503, 504: the worker (or a proxy in front of it) refused the request.
//
// Never a timeout, a 4xx, or another 5xx: the worker may have processed the request.
// When err is set, status is ignored.
func Retryable(status int, err error, bytesSent bool) bool {
	if bytesSent {
		return false
	}
	if err != nil {
		return IsDialError(err) || closedBeforeResponse(err) || errors.Is(err, fasthttp.ErrNoFreeConns)
	}
	switch status {
	case 502, 503, 504:
		return true
	}
	return false
}

// IsDialError reports whether err is a failure to connect: a *DialError, fasthttp's
// *ErrDialWithUpstream / ErrDialTimeout / ErrTLSHandshakeTimeout, a *net.OpError with
// Op "dial", or ECONNREFUSED.
func IsDialError(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := errors.AsType[*DialError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*fasthttp.ErrDialWithUpstream](err); ok {
		return true
	}
	if errors.Is(err, fasthttp.ErrDialTimeout) || errors.Is(err, fasthttp.ErrTLSHandshakeTimeout) ||
		errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	if opErr, ok := errors.AsType[*net.OpError](err); ok && opErr.Op == "dial" {
		return true
	}
	return false
}

// closedBeforeResponse reports whether err says the worker dropped the connection before
// answering. Callers only pass errors for attempts that produced no status.
func closedBeforeResponse(err error) bool {
	return errors.Is(err, fasthttp.ErrConnectionClosed) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF)
}
