// Package sim is a vLLM simulator: a fasthttp server with vLLM's HTTP surface (OpenAI
// routes, /inference/v1/generate, admin routes, Prometheus metrics with vLLM's names),
// a deterministic word tokenizer and generator, a prefix cache with chained block hashes,
// queueing beyond --max-num-seqs, NIXL prefill/decode semantics over a simulated side
// channel, and fault injection. It is the backend of Switchyard's demo, tests and
// benchmarks where no GPU is available: what passes against it should pass against vLLM.
package sim

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ErrServing is returned by Serve when the server is already serving or shut down.
var ErrServing = errors.New("sim: server already serving or shut down")

// errShuttingDown ends requests that were waiting or running when Shutdown began.
var errShuttingDown = errors.New("server shutting down")

// Server is one simulated vLLM worker. It must not be copied.
type Server struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics
	engines []*engine
	leases  *leaseTable
	fault   faultState

	srv         *fasthttp.Server
	sideSrv     *fasthttp.Server
	claimClient *fasthttp.Client
	apiKeys     [][sha256.Size]byte

	closing chan struct{}
	stop    sync.Once
	started atomic.Bool

	pauseMu sync.Mutex
	resume  chan struct{} // non-nil while paused; closed by /resume

	// Set once by Serve before the first request.
	name, engineID, sideHost string
	sidePort                 int

	reqSeq atomic.Uint64
	stats  counters
}

// counters are the Stats sources.
type counters struct {
	requests, completed, rejected, aborted     atomic.Uint64
	promptTokens, generationTokens             atomic.Uint64
	prefixQueries, prefixHits                  atomic.Uint64
	kvHits, kvMisses                           atomic.Uint64
	leasesIssued, leasesClaimed, leasesExpired atomic.Uint64
	prefillLegs, decodeLegs                    atomic.Uint64
	injectedFailures, hangs, streamsCut        atomic.Uint64
	running, waiting                           atomic.Int64
	peakRunning, peakWaiting                   atomic.Int64

	mu       sync.Mutex
	byEngine map[string]uint64
}

// Stats is a snapshot of the worker's counters, for tests. Token counts are in tokens.
type Stats struct {
	Requests         uint64 // generation requests received (after auth), faulted ones included
	Completed        uint64 // generation requests answered in full
	Rejected         uint64 // generation requests answered 4xx for bad input
	Aborted          uint64 // streams the client left, or ended by Shutdown
	PromptTokens     uint64
	GenerationTokens uint64
	PrefixQueries    uint64 // prompt tokens looked up in the prefix cache
	PrefixHits       uint64 // prompt tokens found there
	KVTransferHits   uint64 // decode legs that claimed their prefill's KV
	KVTransferMisses uint64 // decode legs that prefilled locally instead
	LeasesIssued     uint64 // prefill legs that left KV for a decode leg
	LeasesClaimed    uint64
	LeasesExpired    uint64
	LeasesActive     int
	PrefillLegs      uint64 // requests with kv_transfer_params.do_remote_decode
	DecodeLegs       uint64 // requests with kv_transfer_params.do_remote_prefill
	InjectedFailures uint64
	Hangs            uint64
	StreamsCut       uint64 // streams closed by die_mid_stream_after
	Running          int64
	Waiting          int64
	PeakRunning      int64
	PeakWaiting      int64
	CachedBlocks     int
	// ByEngine counts generation requests by engine (the X-data-parallel-rank header,
	// else the configured rank).
	ByEngine map[string]uint64
}

// New validates cfg and builds a server; Serve starts it.
func New(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		metrics: newMetrics(&cfg),
		closing: make(chan struct{}),
		claimClient: &fasthttp.Client{
			ReadTimeout:  cfg.KVClaimTimeout,
			WriteTimeout: cfg.KVClaimTimeout,
		},
	}
	s.stats.byEngine = make(map[string]uint64)
	s.leases = newLeaseTable(s.leaseExpired)
	if cfg.DataParallelExternalLB {
		s.engines = []*engine{newEngine(&cfg, cfg.DataParallelRank)}
	} else {
		for r := 0; r < cfg.DataParallelSize; r++ {
			s.engines = append(s.engines, newEngine(&cfg, r))
		}
	}
	// Series exist from the start, as in vLLM, so scrapers see zeros rather than nothing.
	for _, e := range s.engines {
		s.metrics.touch(cfg.Model, e.label)
	}
	for _, k := range cfg.APIKeys {
		s.apiKeys = append(s.apiKeys, sha256.Sum256([]byte(k)))
	}
	s.fault.set(cfg.Fault)
	s.srv = s.newHTTPServer(s.handle)
	return s, nil
}

func (s *Server) newHTTPServer(h fasthttp.RequestHandler) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                       h,
		Name:                          "switchyard-sim",
		MaxRequestBodySize:            64 << 20, // long-context prompts
		ReadTimeout:                   5 * time.Minute,
		IdleTimeout:                   2 * time.Minute,
		NoDefaultDate:                 true,
		NoDefaultContentType:          true,
		CloseOnShutdown:               true,
		DisableHeaderNamesNormalizing: false,
	}
}

// Serve serves on ln until Shutdown, then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrServing
	}
	select {
	case <-s.closing:
		return ErrServing
	default:
	}
	addr := ln.Addr().String()
	s.name = s.cfg.Name
	if s.name == "" {
		s.name = addr
	}
	s.engineID = s.cfg.EngineID
	if s.engineID == "" {
		s.engineID = fmt.Sprintf("sim-%016x", xxhash.Sum64String(s.name))
	}
	s.leases.setEngineID(s.engineID)

	sideAddr := addr
	var sideLn net.Listener
	if s.cfg.SideChannelListen != "" {
		var err error
		if sideLn, err = net.Listen("tcp", s.cfg.SideChannelListen); err != nil {
			return fmt.Errorf("listening for the kv side channel on %s: %w", s.cfg.SideChannelListen, err)
		}
		sideAddr = sideLn.Addr().String()
		s.sideSrv = s.newHTTPServer(s.handleSideChannel)
	}
	host, port, err := net.SplitHostPort(sideAddr)
	if err != nil {
		return fmt.Errorf("parsing side channel address %q: %w", sideAddr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	s.sideHost, s.sidePort = host, mustAtoi(port)
	if s.cfg.SideChannelHost != "" {
		s.sideHost = s.cfg.SideChannelHost
	}
	if s.cfg.SideChannelPort != 0 {
		s.sidePort = s.cfg.SideChannelPort
	}
	s.log.Info("simulator serving", zap.String("addr", addr), zap.String("model", s.cfg.Model),
		zap.String("role", string(s.cfg.Role)), zap.String("engine_id", s.engineID),
		zap.String("kv_side_channel", net.JoinHostPort(s.sideHost, strconv.Itoa(s.sidePort))))

	errc := make(chan error, 1)
	if sideLn != nil {
		go func() { errc <- s.sideSrv.Serve(sideLn) }()
	}
	err = s.srv.Serve(ln)
	if sideLn != nil {
		if serr := <-errc; err == nil {
			err = serr
		}
	}
	select {
	case <-s.closing:
		return nil
	default:
		return err
	}
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// Shutdown ends waiting and in-flight requests (streams get an in-band error event and
// [DONE]), stops accepting connections and waits up to Config.ShutdownGrace for open
// connections to close. Pending KV leases are dropped uncounted.
func (s *Server) Shutdown() error {
	s.stop.Do(func() { close(s.closing) })
	s.leases.close()
	errs := []error{s.shutdownHTTP(s.srv)}
	if s.sideSrv != nil {
		errs = append(errs, s.shutdownHTTP(s.sideSrv))
	}
	s.claimClient.CloseIdleConnections()
	return errors.Join(errs...)
}

func (s *Server) shutdownHTTP(srv *fasthttp.Server) error {
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown() }()
	select {
	case err := <-done:
		return err
	case <-time.After(s.cfg.ShutdownGrace):
		return fmt.Errorf("sim: connections still open after %v", s.cfg.ShutdownGrace)
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Requests: c.requests.Load(), Completed: c.completed.Load(), Rejected: c.rejected.Load(),
		Aborted: c.aborted.Load(), PromptTokens: c.promptTokens.Load(), GenerationTokens: c.generationTokens.Load(),
		PrefixQueries: c.prefixQueries.Load(), PrefixHits: c.prefixHits.Load(),
		KVTransferHits: c.kvHits.Load(), KVTransferMisses: c.kvMisses.Load(),
		LeasesIssued: c.leasesIssued.Load(), LeasesClaimed: c.leasesClaimed.Load(), LeasesExpired: c.leasesExpired.Load(),
		PrefillLegs: c.prefillLegs.Load(), DecodeLegs: c.decodeLegs.Load(),
		InjectedFailures: c.injectedFailures.Load(), Hangs: c.hangs.Load(), StreamsCut: c.streamsCut.Load(),
		Running: c.running.Load(), Waiting: c.waiting.Load(),
		PeakRunning: c.peakRunning.Load(), PeakWaiting: c.peakWaiting.Load(),
		ByEngine: make(map[string]uint64),
	}
	for _, e := range s.engines {
		st.CachedBlocks += e.cache.blocks()
	}
	st.LeasesActive, _ = s.leases.active(nil)
	c.mu.Lock()
	for k, v := range c.byEngine {
		st.ByEngine[k] = v
	}
	c.mu.Unlock()
	return st
}

func (s *Server) leaseExpired(e *engine) {
	s.stats.leasesExpired.Add(1)
	s.metrics.kvExpired.WithLabelValues(s.cfg.Model, e.label).Inc()
	s.updateKVUsage(e)
}

// handleSideChannel serves the separate side-channel listener.
func (s *Server) handleSideChannel(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) == kvClaimPath {
		s.serveKVClaim(ctx)
		return
	}
	writeDetail(ctx, fasthttp.StatusNotFound, "Not Found")
}

// handle is the main router.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("X-Switchyard-Worker", s.name)
	// As vLLM with --enable-request-id-headers: echo X-Request-Id, or make one.
	rid := string(ctx.Request.Header.Peek("X-Request-Id"))
	if rid == "" {
		rid = s.newID()
	}
	ctx.Response.Header.Set("X-Request-Id", rid)

	path := string(ctx.Path())
	if c := s.log.Check(zapcore.DebugLevel, "request"); c != nil {
		c.Write(zap.ByteString("method", ctx.Method()), zap.String("path", path), zap.String("request_id", rid))
	}
	if len(s.apiKeys) > 0 && strings.HasPrefix(path, "/v1") && !ctx.IsOptions() && !s.authorized(ctx) {
		writeJSON(ctx, fasthttp.StatusUnauthorized, map[string]string{"error": "Unauthorized"})
		return
	}

	type route struct {
		method string
		h      func(*fasthttp.RequestCtx, string)
	}
	var r route
	switch path {
	case "/v1/chat/completions":
		r = route{fasthttp.MethodPost, s.handleChat}
	case "/v1/completions":
		r = route{fasthttp.MethodPost, s.handleCompletion}
	case "/inference/v1/generate":
		r = route{fasthttp.MethodPost, s.handleGenerate}
	case "/v1/responses":
		r = route{fasthttp.MethodPost, s.handleResponses}
	case "/v1/messages":
		r = route{fasthttp.MethodPost, s.handleMessages}
	case "/v1/embeddings":
		r = route{fasthttp.MethodPost, s.handleEmbeddings}
	case "/tokenize":
		r = route{fasthttp.MethodPost, s.handleTokenize}
	case "/detokenize":
		r = route{fasthttp.MethodPost, s.handleDetokenize}
	case "/health", "/ping":
		r = route{fasthttp.MethodGet, s.handleHealth}
	case "/v1/models":
		r = route{fasthttp.MethodGet, s.handleModels}
	case "/metrics":
		r = route{fasthttp.MethodGet, func(ctx *fasthttp.RequestCtx, _ string) { s.metrics.handler(ctx) }}
	case "/version":
		r = route{fasthttp.MethodGet, func(ctx *fasthttp.RequestCtx, _ string) {
			writeJSON(ctx, fasthttp.StatusOK, map[string]string{"version": s.cfg.Version})
		}}
	case "/load":
		r = route{fasthttp.MethodGet, func(ctx *fasthttp.RequestCtx, _ string) {
			writeJSON(ctx, fasthttp.StatusOK, map[string]int64{"server_load": s.stats.running.Load() + s.stats.waiting.Load()})
		}}
	case "/pause":
		r = route{fasthttp.MethodPost, s.handlePause}
	case "/resume":
		r = route{fasthttp.MethodPost, s.handleResume}
	case "/is_paused":
		r = route{fasthttp.MethodGet, func(ctx *fasthttp.RequestCtx, _ string) {
			writeJSON(ctx, fasthttp.StatusOK, map[string]bool{"is_paused": s.pauseGate() != nil})
		}}
	case "/update_weights", "/reset_prefix_cache", "/flush_cache":
		// A weight update makes every cached block stale, so it clears the cache too.
		r = route{fasthttp.MethodPost, func(ctx *fasthttp.RequestCtx, _ string) {
			for _, e := range s.engines {
				e.cache.reset()
			}
			ctx.SetStatusCode(fasthttp.StatusOK)
		}}
	case "/sim/fault":
		r = route{"", s.handleFault}
	case "/sim/stats":
		r = route{fasthttp.MethodGet, func(ctx *fasthttp.RequestCtx, _ string) { writeJSON(ctx, fasthttp.StatusOK, s.Stats()) }}
	case kvClaimPath:
		if s.sideSrv == nil {
			s.serveKVClaim(ctx)
			return
		}
		writeDetail(ctx, fasthttp.StatusNotFound, "Not Found")
		return
	default:
		writeDetail(ctx, fasthttp.StatusNotFound, "Not Found")
		return
	}
	if r.method != "" && string(ctx.Method()) != r.method {
		writeDetail(ctx, fasthttp.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	if jsonBodyRoutes[path] && !isJSON(ctx.Request.Header.ContentType()) {
		// vLLM's validate_json_request dependency, so a proxy that loses the
		// Content-Type fails here as it would on vLLM.
		s.reject(ctx, &requestError{status: 400, typ: "Bad Request",
			msg: "Unsupported Media Type: Only 'application/json' is allowed"})
		return
	}
	r.h(ctx, rid)
}

// jsonBodyRoutes take a JSON body and, like vLLM's, require it to be labelled so.
var jsonBodyRoutes = map[string]bool{
	"/v1/chat/completions": true, "/v1/completions": true, "/inference/v1/generate": true,
	"/v1/responses": true, "/v1/messages": true, "/v1/embeddings": true, "/tokenize": true, "/detokenize": true,
}

// isJSON reports whether a Content-Type names application/json, parameters aside.
func isJSON(ct []byte) bool {
	mt, _, _ := strings.Cut(string(ct), ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// authorized compares the bearer token with each key as SHA-256 digests, as vLLM does.
func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	auth := string(ctx.Request.Header.Peek("Authorization"))
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	for _, k := range s.apiKeys {
		if k == sum {
			return true
		}
	}
	return false
}

func (s *Server) newID() string {
	return fmt.Sprintf("%08x%024x", uint32(xxhash.Sum64String(s.name)), s.reqSeq.Add(1))
}

func (s *Server) handleHealth(ctx *fasthttp.RequestCtx, _ string) {
	if f, _ := s.fault.get(); f.HealthFail {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
}

func (s *Server) handleModels(ctx *fasthttp.RequestCtx, _ string) {
	type card struct {
		ID          string  `json:"id"`
		Object      string  `json:"object"`
		Created     int64   `json:"created"`
		OwnedBy     string  `json:"owned_by"`
		Root        string  `json:"root"`
		Parent      *string `json:"parent"`
		MaxModelLen int     `json:"max_model_len"`
	}
	now := time.Now().Unix()
	data := []card{{ID: s.cfg.Model, Object: "model", Created: now, OwnedBy: "vllm", Root: s.cfg.Model, MaxModelLen: s.cfg.MaxModelLen}}
	for _, a := range s.cfg.ModelAliases {
		data = append(data, card{ID: a, Object: "model", Created: now, OwnedBy: "vllm", Root: s.cfg.Model, MaxModelLen: s.cfg.MaxModelLen})
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"object": "list", "data": data})
}

func (s *Server) pauseGate() chan struct{} {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	return s.resume
}

func (s *Server) handlePause(ctx *fasthttp.RequestCtx, _ string) {
	s.pauseMu.Lock()
	if s.resume == nil {
		s.resume = make(chan struct{})
	}
	s.pauseMu.Unlock()
	writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "paused"})
}

func (s *Server) handleResume(ctx *fasthttp.RequestCtx, _ string) {
	s.pauseMu.Lock()
	if s.resume != nil {
		close(s.resume)
		s.resume = nil
	}
	s.pauseMu.Unlock()
	writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "resumed"})
}

func (s *Server) handleFault(ctx *fasthttp.RequestCtx, _ string) {
	switch {
	case ctx.IsGet():
		f, _ := s.fault.get()
		writeJSON(ctx, fasthttp.StatusOK, f)
	case ctx.IsPost():
		var f Fault
		dec := json.NewDecoder(strings.NewReader(string(ctx.PostBody())))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "BadRequestError", "decoding fault: "+err.Error(), "")
			return
		}
		if err := f.validate(); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "BadRequestError", err.Error(), "")
			return
		}
		s.fault.set(f)
		writeJSON(ctx, fasthttp.StatusOK, f)
	default:
		writeDetail(ctx, fasthttp.StatusMethodNotAllowed, "Method Not Allowed")
	}
}

// writeJSON answers with v as JSON.
func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = fasthttp.StatusInternalServerError, []byte(`{"error":{"message":"encoding response","type":"InternalServerError","param":null,"code":500}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// writeDetail answers in FastAPI's default error shape, as vLLM does for 404 and 405.
func writeDetail(ctx *fasthttp.RequestCtx, status int, detail string) {
	writeJSON(ctx, status, map[string]string{"detail": detail})
}

// errorBody is vLLM's ErrorResponse: {"error":{"message","type","param","code"}}.
type errorBody struct {
	Error errorInfo `json:"error"`
}

type errorInfo struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    int     `json:"code"`
}

func newErrorBody(status int, typ, msg, param string) errorBody {
	e := errorBody{Error: errorInfo{Message: msg, Type: typ, Code: status}}
	if param != "" {
		e.Error.Param = &param
	}
	return e
}

// writeError answers with vLLM's error shape. typ is "Bad Request" for bodies that fail
// request validation (FastAPI's handler uses the status phrase) and "BadRequestError",
// "NotFoundError", "InternalServerError"... for errors the serving layer raises.
func writeError(ctx *fasthttp.RequestCtx, status int, typ, msg, param string) {
	writeJSON(ctx, status, newErrorBody(status, typ, msg, param))
}
