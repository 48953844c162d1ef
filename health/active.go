package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// maxHealthBody bounds how much of a health response is read before closing it.
const maxHealthBody = 64 << 10

// StartupProbeTimeout bounds each probe of WaitHealthy; vllm-router's startup wait uses 2 s.
const StartupProbeTimeout = 2 * time.Second

// Checker runs active health checks: one goroutine per worker base URL, so a hung worker
// never delays the checks of the others (vllm-router checked every DP rank of every
// worker one after another). Create it with NewChecker, give it targets with SetTargets
// (before or while Run runs) and start it with Run.
type Checker struct {
	cfg    Config
	setter StatusSetter
	log    *zap.Logger
	client *http.Client

	mu      sync.Mutex
	targets map[string]*watched // by normalised base URL
	runCtx  context.Context     // non-nil while Run runs
}

// watched is one base URL under check.
type watched struct {
	url      string // normalised base URL
	checkURL string // url + Config.Endpoint
	kick     chan struct{}

	// Set under Checker.mu when the watcher goroutine starts.
	cancel context.CancelFunc
	done   chan struct{}

	// mu orders verdict changes against ID changes, so every ID always holds the latest
	// verdict: the watcher pushes under mu, SetTargets adds IDs under mu.
	mu      sync.Mutex
	ids     []string
	verdict verdict
}

// verdict is the threshold state machine of one base URL; see Config for the rule.
type verdict struct {
	healthy bool
	proven  bool // has passed at least once
	passes  int
	fails   int
}

// observe records one check result and reports whether the verdict changed.
func (v *verdict) observe(ok bool, successThreshold, failureThreshold int) bool {
	if ok {
		v.fails = 0
		if v.healthy {
			return false
		}
		v.passes++
		need := successThreshold
		if !v.proven {
			need = 1 // first use must not wait SuccessThreshold×Interval
		}
		if v.passes < need {
			return false
		}
		v.healthy, v.proven, v.passes = true, true, 0
		return true
	}
	v.passes = 0
	if !v.healthy {
		return false
	}
	v.fails++
	if v.fails < failureThreshold {
		return false
	}
	v.healthy, v.fails = false, 0
	return true
}

// NewChecker validates cfg (applying defaults) and returns a Checker that reports to
// setter. A nil log means no logging.
func NewChecker(cfg Config, setter StatusSetter, log *zap.Logger) (*Checker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if setter == nil {
		return nil, fmt.Errorf("%w: nil StatusSetter", ErrInvalidConfig)
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Checker{
		cfg:     cfg,
		setter:  setter,
		log:     log,
		client:  newProbeClient(cfg.Timeout),
		targets: make(map[string]*watched),
	}, nil
}

// SetTargets replaces the set of checked URLs. It validates all targets first and changes
// nothing on error. New URLs start unhealthy: their IDs are set unhealthy before
// SetTargets returns, and their first check starts at once if Run is running. IDs added
// to a known URL get that URL's current verdict. Removed URLs stop being checked: when
// SetTargets returns, no check or SetHealthy call for them is in progress or will follow.
func (c *Checker) SetTargets(ts []Target) error {
	want := make(map[string][]string, len(ts))
	seenIDs := make(map[string]string)
	for _, t := range ts {
		base, err := normalizeBaseURL(t.URL)
		if err != nil {
			return err
		}
		if _, dup := want[base]; dup {
			return fmt.Errorf("%w: worker URL %q listed twice", ErrInvalidConfig, base)
		}
		if len(t.IDs) == 0 {
			return fmt.Errorf("%w: worker URL %q has no endpoint IDs", ErrInvalidConfig, base)
		}
		for _, id := range t.IDs {
			if id == "" {
				return fmt.Errorf("%w: worker URL %q has an empty endpoint ID", ErrInvalidConfig, base)
			}
			if other, dup := seenIDs[id]; dup {
				return fmt.Errorf("%w: endpoint ID %q fed by both %q and %q", ErrInvalidConfig, id, other, base)
			}
			seenIDs[id] = base
		}
		want[base] = slices.Clone(t.IDs)
	}

	var stopped []chan struct{}
	c.mu.Lock()
	for base, w := range c.targets {
		if _, keep := want[base]; keep {
			continue
		}
		if w.cancel != nil {
			w.cancel()
			stopped = append(stopped, w.done)
		}
		delete(c.targets, base)
	}
	for base, ids := range want {
		if w, ok := c.targets[base]; ok {
			c.updateIDs(w, ids)
			continue
		}
		w := &watched{
			url:      base,
			checkURL: base + c.cfg.Endpoint,
			kick:     make(chan struct{}, 1),
			ids:      ids,
		}
		for _, id := range ids {
			c.setter.SetHealthy(id, false)
		}
		c.targets[base] = w
		if c.runCtx != nil {
			c.startLocked(w)
		}
	}
	c.mu.Unlock()

	for _, done := range stopped {
		<-done
	}
	return nil
}

// updateIDs replaces w's IDs, giving new ones the current verdict.
func (c *Checker) updateIDs(w *watched, ids []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		if !slices.Contains(w.ids, id) {
			c.setter.SetHealthy(id, w.verdict.healthy)
		}
	}
	w.ids = ids
}

// Run checks every target until ctx is done, then waits for its goroutines to exit.
// Calling Run while it is already running logs an error and returns at once.
func (c *Checker) Run(ctx context.Context) {
	c.mu.Lock()
	if c.runCtx != nil {
		c.mu.Unlock()
		c.log.Error("health: Checker.Run called while already running")
		return
	}
	c.runCtx = ctx
	for _, w := range c.targets {
		c.startLocked(w)
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.runCtx = nil
	var running []chan struct{}
	for _, w := range c.targets {
		running = append(running, w.done)
	}
	c.mu.Unlock()
	for _, done := range running {
		<-done
	}
}

// CheckNow asks for an immediate check of the base URL (e.g. after /add_worker or a
// passive failure) instead of waiting for the next interval. Unknown URLs are ignored;
// a check already requested is not queued twice.
func (c *Checker) CheckNow(baseURL string) {
	base, err := normalizeBaseURL(baseURL)
	if err != nil {
		return
	}
	c.mu.Lock()
	w := c.targets[base]
	c.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// startLocked starts w's watcher goroutine under c.runCtx. Caller holds c.mu.
func (c *Checker) startLocked(w *watched) {
	ctx, cancel := context.WithCancel(c.runCtx)
	w.cancel = cancel
	w.done = make(chan struct{})
	go c.watch(ctx, w, w.done)
}

// watch checks w at once, then Interval (StartupInterval until w first passes) after
// each check ends, or earlier on CheckNow.
func (c *Checker) watch(ctx context.Context, w *watched, done chan struct{}) {
	defer close(done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.kick:
		}
		c.checkOnce(ctx, w)
		timer.Reset(c.nextInterval(w))
	}
}

// nextInterval is the wait before w's next check.
func (c *Checker) nextInterval(w *watched) time.Duration {
	w.mu.Lock()
	proven := w.verdict.proven
	w.mu.Unlock()
	if proven {
		return c.cfg.Interval
	}
	return min(c.cfg.StartupInterval, c.cfg.Interval)
}

// checkOnce runs one check of w and applies its result. A panic (in the setter or the
// metrics hook) is logged and the watcher keeps going.
func (c *Checker) checkOnce(ctx context.Context, w *watched) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("health: check panicked", zap.String("url", w.url),
				zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err := probe(cctx, c.client, w.checkURL, c.cfg.APIKey)
	cancel()
	if ctx.Err() != nil {
		return // shutting down or removed: a cancelled check says nothing about the worker
	}
	if c.cfg.OnCheck != nil {
		c.cfg.OnCheck(w.url, err, time.Since(start))
	}
	if err != nil {
		if ce := c.log.Check(zap.DebugLevel, "health: check failed"); ce != nil {
			ce.Write(zap.String("url", w.url), zap.Error(err))
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.verdict.observe(err == nil, c.cfg.SuccessThreshold, c.cfg.FailureThreshold) {
		return
	}
	healthy := w.verdict.healthy
	if healthy {
		c.log.Info("health: worker healthy", zap.String("url", w.url))
	} else {
		c.log.Warn("health: worker unhealthy", zap.String("url", w.url), zap.Error(err))
	}
	for _, id := range w.ids {
		c.setter.SetHealthy(id, healthy)
	}
}

// WaitHealthy polls GET baseURL+endpoint every interval until one answers 2xx, and
// returns nil then. Each probe is bounded by StartupProbeTimeout. It returns an error
// wrapping ctx.Err() and the last probe's error when ctx ends first, or ErrInvalidConfig
// for a bad URL, endpoint or interval. An empty endpoint means "/health"; apiKey, when
// set, is sent as a bearer token.
func WaitHealthy(ctx context.Context, baseURL, endpoint, apiKey string, interval time.Duration) error {
	base, err := normalizeBaseURL(baseURL)
	if err != nil {
		return err
	}
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	if endpoint[0] != '/' {
		return fmt.Errorf("%w: endpoint %q must start with \"/\"", ErrInvalidConfig, endpoint)
	}
	if interval <= 0 {
		return fmt.Errorf("%w: interval %v must be positive", ErrInvalidConfig, interval)
	}
	client := newProbeClient(StartupProbeTimeout)
	defer client.CloseIdleConnections()

	timer := time.NewTimer(0)
	defer timer.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			if last == nil {
				return fmt.Errorf("health: waiting for %s: %w", base, ctx.Err())
			}
			return fmt.Errorf("health: waiting for %s: %w (last check: %w)", base, ctx.Err(), last)
		case <-timer.C:
		}
		pctx, cancel := context.WithTimeout(ctx, StartupProbeTimeout)
		err := probe(pctx, client, base+endpoint, apiKey)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err // keep the last real answer, not one cut short by ctx
		}
		timer.Reset(interval)
	}
}

// newProbeClient returns the HTTP client for health probes. Keep-alives are off: one
// fresh connection per check proves the worker still accepts connections and cannot race
// with the server closing an idle one. Proxies from the environment are ignored (workers
// are cluster-local), and redirects are not followed (only 2xx passes).
func newProbeClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			DisableKeepAlives:   true,
			TLSHandshakeTimeout: timeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// probe runs one GET and returns nil for a 2xx answer.
func probe(ctx context.Context, client *http.Client, checkURL, apiKey string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, checkURL, nil)
	if err != nil {
		return fmt.Errorf("health: building request for %s: %w", checkURL, err)
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err // *url.Error already names the method and URL
	}
	_, copyErr := io.Copy(io.Discard, io.LimitReader(resp.Body, maxHealthBody))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: GET %s returned %d", ErrUnhealthyStatus, checkURL, resp.StatusCode)
	}
	if copyErr != nil && !errors.Is(copyErr, io.EOF) {
		return fmt.Errorf("health: reading %s: %w", checkURL, copyErr)
	}
	return nil
}
