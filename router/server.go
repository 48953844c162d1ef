package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/policy"
)

// Server is the router: a fasthttp listener for clients, a Prometheus listener, the pool
// of workers, their health checker and the policies.
type Server struct {
	cfg     Config
	log     *zap.Logger
	reg     *prometheus.Registry
	metrics *Metrics
	pool    *Pool
	checker *health.Checker
	limiter *limiter
	retry   health.RetryConfig

	policy, prefillPolicy, decodePolicy policy.Policy
	inputs                              policy.Input // union of what the policies read
	ridHeaders                          [][]byte
	apiKey, adminKey                    []byte

	// workersMu serializes worker-set changes from the admin routes.
	workersMu sync.Mutex

	srv      *fasthttp.Server
	relay    *relay // streams once their headers are out; nil where unsupported
	ln       net.Listener
	promSrv  *http.Server
	promLn   net.Listener
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutOnce sync.Once
}

// New builds a router from a validated Config. It binds nothing; Start does.
func New(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, h := range cfg.RequestIDHeaders {
		s.ridHeaders = append(s.ridHeaders, []byte(h))
	}
	if cfg.APIKey != "" {
		s.apiKey = []byte("Bearer " + cfg.APIKey)
	}
	if cfg.AdminAPIKey != "" {
		s.adminKey = []byte("Bearer " + cfg.AdminAPIKey)
	}
	s.retry = health.RetryConfig{
		MaxAttempts:    cfg.RetryMaxRetries,
		InitialBackoff: cfg.RetryInitialBackoff,
		MaxBackoff:     cfg.RetryMaxBackoff,
		Multiplier:     cfg.RetryBackoffMultiplier,
		Jitter:         max(cfg.RetryJitterFactor, 1e-9), // zero would mean "default" there
		Disabled:       cfg.DisableRetries,
	}
	var err error
	mk := func(name string) (policy.Policy, error) {
		return policy.New(name, policy.Config{
			CacheThreshold:      cfg.CacheThreshold,
			BalanceAbsThreshold: int64(cfg.BalanceAbsThreshold),
			BalanceRelThreshold: cfg.BalanceRelThreshold,
			MaxTreeSize:         cfg.MaxTreeSize,
		})
	}
	if s.policy, err = mk(cfg.Policy); err != nil {
		return nil, err
	}
	s.prefillPolicy, s.decodePolicy = s.policy, s.policy
	if cfg.PDDisaggregation {
		// Each stage gets its own instance, as vllm-router does: rings and sticky
		// tables of prefill and decode workers are separate.
		if s.prefillPolicy, err = mk(or(cfg.PrefillPolicy, cfg.Policy)); err != nil {
			return nil, err
		}
		if s.decodePolicy, err = mk(or(cfg.DecodePolicy, cfg.Policy)); err != nil {
			return nil, err
		}
	}
	for _, p := range []policy.Policy{s.policy, s.prefillPolicy, s.decodePolicy} {
		if iu, ok := p.(policy.InputUser); ok {
			s.inputs |= iu.Inputs()
		}
	}
	s.metrics = NewMetrics(s.reg, cfg.Policy, func() *snapshot { return s.pool.load() })
	bcfg := health.BreakerConfig{
		FailureThreshold: cfg.CBFailureThreshold,
		SuccessThreshold: cfg.CBSuccessThreshold,
		Timeout:          cfg.CBTimeout,
		Disabled:         cfg.DisableCircuitBreaker,
	}
	s.pool = newPool(&s.cfg, s.metrics, func(id string) *health.Breaker {
		c := bcfg
		c.OnStateChange = func(from, to health.State) {
			s.metrics.cbTransitions.WithLabelValues(id, from.String(), to.String()).Inc()
		}
		return health.NewBreaker(c, time.Now)
	})
	s.pool.onMembers = s.setMembers
	s.checker, err = health.NewChecker(health.Config{
		Endpoint:         cfg.HealthCheckEndpoint,
		Interval:         cfg.HealthCheckInterval,
		Timeout:          cfg.HealthCheckTimeout,
		FailureThreshold: cfg.HealthFailureThreshold,
		SuccessThreshold: cfg.HealthSuccessThreshold,
		APIKey:           cfg.APIKey,
	}, s.pool, log)
	if err != nil {
		return nil, err
	}
	s.limiter = newLimiter(cfg.MaxConcurrentRequests, cfg.QueueSize, cfg.QueueTimeout)
	s.pool.Update(s.configuredSpecs())
	s.srv = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.handleParseError,
		Name:         "switchyard",
		// Bodies are read in the handler (body.go): small ones whole, larger ones streamed
		// to the worker. takeBody enforces --max-payload-size.
		StreamRequestBody:  true,
		MaxRequestBodySize: streamBodyAbove,
		// A multipart body (audio uploads) is a body like any other: fasthttp would parse
		// it, spooling files to disk before the size check, and re-encode it.
		DisablePreParseMultipartForm: true,
		ReadBufferSize:               16 << 10, // also the cap on request header size
		WriteBufferSize:              4 << 10,
		ReadTimeout:                  headerReadTimeout, // headers must arrive within this (slowloris)
		HeaderReceived:               s.headerReceived,
		ExpectHandler:                s.expect,
		IdleTimeout:                  120 * time.Second,
		Concurrency:                  256 * 1024,
		NoDefaultServerHeader:        true,
		NoDefaultDate:                true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
		ReduceMemoryUsage:            true, // a long stream does not pin its connection's read buffer
		Logger:                       zapPrintf{log},
	}
	if s.relay = newRelay(s); s.relay != nil {
		s.srv.KeepHijackedConns = true // the relay hands client connections back itself
		s.reg.MustRegister(s.relay.collectors()...)
	}
	return s, nil
}

// headerReceived sets the body's read timeout: long agentic bodies get longer than
// headers. A Content-Length over --max-payload-size is refused without waiting for the
// body: fasthttp (streaming request bodies) would first wait for 8 KiB of it, which a
// client announcing 10 GB may never send; a short timeout ends that wait and
// handleParseError, finding the request in tooLargeBodies, answers 413.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if h.ContentLength() > s.cfg.MaxPayloadSize {
		tooLargeBodies.Store(h, struct{}{})
		return fasthttp.RequestConfig{ReadTimeout: time.Millisecond}
	}
	return fasthttp.RequestConfig{ReadTimeout: bodyReadTimeout}
}

// tooLargeBodies holds the headers of requests being refused for their Content-Length
// until the handler or the error handler answers them (rare: a map is fine).
var tooLargeBodies sync.Map

// expect answers "Expect: 100-continue": 413 before any body byte when the announced
// length is over the limit. fasthttp sends that answer without calling the handler, so
// its JSON body is written here.
func (s *Server) expect(ctx *fasthttp.RequestCtx) int {
	if ctx.Request.Header.ContentLength() > s.cfg.MaxPayloadSize {
		tooLargeBodies.Delete(&ctx.Request.Header)
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, errBodyTooLarge.Error())
		return fasthttp.StatusRequestEntityTooLarge
	}
	return fasthttp.StatusContinue
}

// headerReadTimeout bounds the arrival of a request's headers, so clients trickling
// them (slowloris) are cut; bodyReadTimeout bounds the body, which may be hundreds of MB.
const (
	headerReadTimeout = 10 * time.Second
	bodyReadTimeout   = 5 * time.Minute
)

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// configuredSpecs expands the configured worker URLs into backends.
func (s *Server) configuredSpecs() []backendSpec {
	c := &s.cfg
	if !c.PDDisaggregation {
		return expandRanks(c.WorkerURLs, c.IntraNodeDataParallelSize, c.DPRankOffset, RoleRegular)
	}
	pre := make([]string, len(c.Prefill))
	for i, p := range c.Prefill {
		pre[i] = p.URL
	}
	specs := expandRanks(pre, c.IntraNodeDataParallelSize, c.DPRankOffset, RolePrefill)
	return append(specs, expandRanks(c.Decode, c.IntraNodeDataParallelSize, c.DPRankOffset, RoleDecode)...)
}

// setMembers tells membership-aware policies and the health checker the new worker set.
func (s *Server) setMembers(snap *snapshot) {
	for _, pe := range []struct {
		p   policy.Policy
		eps []policy.Endpoint
	}{{s.policy, snap.regularEPs}, {s.prefillPolicy, snap.prefillEPs}, {s.decodePolicy, snap.decodeEPs}} {
		if ma, ok := pe.p.(policy.MembershipAware); ok && len(pe.eps) > 0 {
			ma.SetMembers(pe.eps)
		}
	}
	if s.checker == nil {
		return
	}
	byBase := map[string][]string{}
	var order []string
	for _, b := range snap.all() {
		if byBase[b.base] == nil {
			order = append(order, b.base)
		}
		byBase[b.base] = append(byBase[b.base], b.id)
	}
	targets := make([]health.Target, 0, len(order))
	for _, base := range order {
		targets = append(targets, health.Target{URL: base, IDs: byBase[base]})
	}
	if err := s.checker.SetTargets(targets); err != nil {
		s.log.Error("health targets", zap.Error(err))
	}
}

// Start binds the client and metrics listeners and serves in the background. It returns
// once both are bound; workers need not be up (data routes answer 503 until one is).
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)))
	if err != nil {
		return fmt.Errorf("binding router port: %w", err)
	}
	s.ln = ln
	if s.cfg.PrometheusPort >= 0 {
		pln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.PrometheusHost, strconv.Itoa(s.cfg.PrometheusPort)))
		if err != nil {
			ln.Close()
			return fmt.Errorf("binding prometheus port: %w", err)
		}
		s.promLn = pln
		s.promSrv = &http.Server{
			Handler:           promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}),
			ReadHeaderTimeout: 10 * time.Second,
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = s.promSrv.Serve(pln) }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.checker.Run(ctx) }()
	if s.relay != nil {
		s.relay.start()
	}
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil {
			s.log.Error("router server stopped", zap.Error(err))
		}
	}()
	s.log.Info("router listening", zap.String("addr", ln.Addr().String()), zap.String("policy", s.cfg.Policy),
		zap.Int("workers", len(s.pool.load().byID)), zap.String("metrics", s.MetricsAddr()))
	for _, f := range s.cfg.Ignored {
		s.log.Warn("flag accepted for compatibility but not supported; ignoring it", zap.String("flag", f))
	}
	return nil
}

// Addr is the bound client address, host:port.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// MetricsAddr is the bound Prometheus address, or "" when disabled.
func (s *Server) MetricsAddr() string {
	if s.promLn == nil {
		return ""
	}
	return s.promLn.Addr().String()
}

// Registry exposes the router's Prometheus registry (tests, embedding).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Shutdown stops accepting, lets in-flight requests and streams finish until ctx ends,
// then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.shutOnce.Do(func() {
		if s.relay != nil {
			s.relay.beginDrain() // finished streams close their client connections
		}
		err = s.srv.ShutdownWithContext(ctx)
		if s.ln != nil {
			// fasthttp only closes listeners Serve has registered; a Shutdown right after
			// Start can come first, so close ours too or Serve would accept forever.
			_ = s.ln.Close()
		}
		if s.promSrv != nil {
			_ = s.promSrv.Close()
		}
		if s.cancel != nil {
			s.cancel()
		}
		if s.relay != nil {
			s.relay.drain(ctx.Done())
		}
		s.wg.Wait()
		for _, c := range s.pool.clients {
			c.CloseIdleConnections()
		}
		for _, c := range s.pool.streams {
			c.closeIdle()
		}
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("drain timeout: in-flight requests cut: %w", err)
	}
	return err
}

// Run starts the router and serves until ctx ends, then drains for DrainTimeout.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	s.log.Info("shutting down; draining in-flight requests", zap.Duration("drain_timeout", s.cfg.DrainTimeout))
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	return s.Shutdown(dctx)
}

// zapPrintf adapts zap to fasthttp's Logger; fasthttp logs only connection-level errors.
type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Printf(format string, args ...any) {
	if ce := z.l.Check(zap.DebugLevel, "fasthttp"); ce != nil {
		ce.Write(zap.String("msg", fmt.Sprintf(format, args...)))
	}
}
