// Package health decides whether a worker may take traffic. It has three parts:
//
//   - Active checks (Checker): one goroutine per worker base URL polls GET <url>/health and
//     pushes the verdict to every endpoint ID that URL feeds (all DP ranks of one vLLM
//     server share one check), through the one-method StatusSetter the router's pool
//     implements. Workers start unhealthy; see Config for the threshold rule.
//   - Passive health (Breaker): a per-endpoint circuit breaker fed by the outcomes of real
//     requests (Classify), with vllm-router's --cb-* semantics, except that client errors
//     and vLLM's overlong-prompt errors never count against a worker.
//   - Retry policy (RetryConfig, Retryable): vllm-router's --retry-* backoff, and the rule
//     for when a failed request may safely be sent again.
//
// The package imports no project package. It never touches load counters: health and load
// are separate facts (vllm-router's checker reset loads every 10th cycle, issue #197).
package health

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// StatusSetter receives health verdicts. The router's pool implements it: SetHealthy
// flips the endpoint's healthy flag (and its gauge) and must not touch the hash ring, load
// counters or the Checker (it is called from checker goroutines, under the checker's
// per-target lock). Unknown ids must be ignored.
type StatusSetter interface {
	SetHealthy(id string, healthy bool)
}

// Defaults match vllm-router's --health-* flags.
const (
	DefaultEndpoint         = "/health"
	DefaultInterval         = 60 * time.Second
	DefaultStartupInterval  = time.Second
	DefaultTimeout          = 5 * time.Second
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 2
)

// ErrInvalidConfig is wrapped by every configuration and target validation error.
var ErrInvalidConfig = errors.New("health: invalid configuration")

// ErrUnhealthyStatus is wrapped by a check that got a response other than 2xx.
var ErrUnhealthyStatus = errors.New("health: unhealthy status")

// Config configures active health checks. The zero value means "all defaults".
//
// Threshold rule: a worker starts unhealthy and becomes healthy on its first passing
// check, so the router can use it as soon as it answers (vllm-router instead started
// workers healthy, and waiting SuccessThreshold×Interval would delay first use by
// minutes). After that, a healthy worker turns unhealthy after FailureThreshold
// consecutive failed checks, and an unhealthy one recovers after SuccessThreshold
// consecutive passing checks. Counters reset on every transition.
type Config struct {
	// Endpoint is the path checked on each worker base URL (--health-check-endpoint).
	// Default "/health"; must start with "/".
	Endpoint string
	// Interval is the time from the end of one check of a URL to the start of the next
	// (--health-check-interval-secs). Default 60s; zero means default; negative is invalid.
	Interval time.Duration
	// StartupInterval replaces Interval for a worker that has never passed a check (still
	// loading its model), so it is used within about this long of coming up rather than
	// up to a whole Interval later. vllm-router polls starting workers every 30 s
	// (--worker-startup-check-interval). Default 1s; zero means default; negative is
	// invalid; values above Interval act as Interval.
	StartupInterval time.Duration
	// Timeout bounds one check, connect to last body byte (--health-check-timeout-secs).
	// Default 5s; zero means default; negative is invalid.
	Timeout time.Duration
	// FailureThreshold is the number of consecutive failed checks that mark a healthy
	// worker unhealthy (--health-failure-threshold). Default 3; zero means default.
	FailureThreshold int
	// SuccessThreshold is the number of consecutive passing checks that mark an unhealthy
	// worker healthy again, once it has passed at least once (--health-success-threshold).
	// Default 2; zero means default.
	SuccessThreshold int
	// APIKey, when set, is sent as "Authorization: Bearer <APIKey>" on every check, so
	// workers started with --api-key can become healthy (vllm-router issue #159).
	APIKey string
	// OnCheck, when set, is called after every check with the base URL, the check's
	// error (nil when it passed) and its duration. Use it to export metrics. It runs on
	// the checker goroutine of that URL and must be quick.
	OnCheck func(url string, err error, took time.Duration)
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c Config) WithDefaults() Config {
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.StartupInterval == 0 {
		c.StartupInterval = DefaultStartupInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.FailureThreshold == 0 {
		c.FailureThreshold = DefaultFailureThreshold
	}
	if c.SuccessThreshold == 0 {
		c.SuccessThreshold = DefaultSuccessThreshold
	}
	return c
}

// Validate reports the first invalid field of c after defaults are applied.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case !strings.HasPrefix(c.Endpoint, "/"):
		return fmt.Errorf("%w: Endpoint %q must start with \"/\"", ErrInvalidConfig, c.Endpoint)
	case c.Interval < 0:
		return fmt.Errorf("%w: Interval %v is negative", ErrInvalidConfig, c.Interval)
	case c.StartupInterval < 0:
		return fmt.Errorf("%w: StartupInterval %v is negative", ErrInvalidConfig, c.StartupInterval)
	case c.Timeout < 0:
		return fmt.Errorf("%w: Timeout %v is negative", ErrInvalidConfig, c.Timeout)
	case c.FailureThreshold < 0:
		return fmt.Errorf("%w: FailureThreshold %d is negative", ErrInvalidConfig, c.FailureThreshold)
	case c.SuccessThreshold < 0:
		return fmt.Errorf("%w: SuccessThreshold %d is negative", ErrInvalidConfig, c.SuccessThreshold)
	}
	return nil
}

// Target is one worker base URL and the endpoint IDs its health feeds.
type Target struct {
	// URL is the worker's base URL, scheme and host[:port], e.g. "http://127.0.0.1:8100".
	// A trailing slash is ignored.
	URL string
	// IDs are the endpoint IDs that share this URL's health: one ID for a plain worker,
	// "url@0".."url@N-1" for the data-parallel ranks of one vLLM server. At least one.
	IDs []string
}

// normalizeBaseURL validates a worker base URL and returns it without trailing slashes.
func normalizeBaseURL(raw string) (string, error) {
	base := strings.TrimRight(raw, "/")
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("%w: worker URL %q: %w", ErrInvalidConfig, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%w: worker URL %q: scheme must be http or https", ErrInvalidConfig, raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%w: worker URL %q: missing host", ErrInvalidConfig, raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: worker URL %q: must not have a query or fragment", ErrInvalidConfig, raw)
	}
	return base, nil
}
