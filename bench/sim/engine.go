package sim

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// errStreamCut ends a stream closed on purpose by Fault.DieMidStreamAfter.
var errStreamCut = errors.New("stream cut by fault injection")

// errKVLoadFailed fails a decode leg under KVLoadFailurePolicy "fail"; vLLM reports it as
// an internal server error.
var errKVLoadFailed = errors.New("Internal server error")

// leg says which part of a disaggregated request a request is.
type leg int

const (
	legWhole   leg = iota
	legPrefill     // kv_transfer_params.do_remote_decode: prefill here, decode elsewhere
	legDecode      // kv_transfer_params.do_remote_prefill: KV was prefilled elsewhere
)

func legOf(p *kvTransferParams) leg {
	switch {
	case p == nil:
		return legWhole
	case p.DoRemoteDecode:
		return legPrefill
	case p.DoRemotePrefill:
		return legDecode
	}
	return legWhole
}

// genRequest is a parsed generation request, whatever its API.
type genRequest struct {
	requestID    string // the external request id (X-Request-Id or generated)
	model        string // echoed in responses
	created      int64
	prompt       []int
	maxTokens    int // -1: up to the context length
	minTokens    int
	stream       bool
	includeUsage bool
	kv           *kvTransferParams
	engine       *engine
	fault        Fault
}

// engine is one simulated data-parallel engine: its own running slots, waiting queue,
// prefix cache and KV blocks, as each vLLM DP engine has.
type engine struct {
	label            string // the metrics "engine" label: the DP rank
	cache            *prefixCache
	slots            chan struct{}
	running, waiting atomic.Int64
	runningBlocks    atomic.Int64
}

func newEngine(cfg *Config, rank int) *engine {
	return &engine{
		label: strconv.Itoa(rank),
		cache: newPrefixCache(cfg.BlockSize, cfg.CacheBlocks),
		slots: make(chan struct{}, cfg.MaxNumSeqs),
	}
}

// pickEngine returns the engine a request runs on: the one X-data-parallel-rank names
// (rank < 0: none named), else the least loaded, as vLLM's internal load balancer does.
func (s *Server) pickEngine(rank int) *engine {
	if rank >= 0 {
		for _, e := range s.engines {
			if e.label == strconv.Itoa(rank) {
				return e
			}
		}
	}
	best := s.engines[0]
	for _, e := range s.engines[1:] {
		if e.running.Load()+e.waiting.Load() < best.running.Load()+best.waiting.Load() {
			best = e
		}
	}
	return best
}

// genResult is what a finished generation produced.
type genResult struct {
	tokens       []int
	finish       string // "stop" or "length"
	cachedTokens int
	kvOut        *kvTransferOut
	leg          leg
	kvHit        bool
}

func (g *genRequest) internalID() string {
	// vLLM's engine makes the external id unique with a random suffix; this one is
	// derived, so runs stay reproducible.
	return g.requestID + "-" + strconv.FormatUint(xxhash.Sum64String(g.requestID)&0xffffffff, 16)
}

func promptHash(prompt []int) uint64 {
	d := xxhash.New()
	var b [4]byte
	for _, t := range prompt {
		b[0], b[1], b[2], b[3] = byte(t), byte(t>>8), byte(t>>16), byte(t>>24)
		_, _ = d.Write(b[:])
	}
	return d.Sum64()
}

// plan decides how many tokens to generate and why generation stops.
func (s *Server) plan(g *genRequest) (int, string) {
	natural := max(s.cfg.OutputTokens, g.minTokens)
	limit := g.maxTokens
	if limit < 0 {
		limit = s.cfg.MaxModelLen - len(g.prompt)
	}
	if natural > limit {
		return limit, "length"
	}
	return natural, "stop"
}

// admit waits for a running slot (FIFO through the channel), counting the request as
// waiting meanwhile, and returns the release function.
func (s *Server) admit(e *engine) (func(), error) {
	c := &s.stats
	storeMax(&c.peakWaiting, c.waiting.Add(1))
	e.waiting.Add(1)
	waitingGauge := s.metrics.waiting.WithLabelValues(s.cfg.Model, e.label)
	capacityGauge := s.metrics.waitingReason.WithLabelValues(s.cfg.Model, e.label, "capacity")
	waitingGauge.Inc()
	capacityGauge.Inc()
	queued := time.Now()
	leave := func() {
		c.waiting.Add(-1)
		e.waiting.Add(-1)
		waitingGauge.Dec()
		capacityGauge.Dec()
	}
	for gate := s.pauseGate(); gate != nil; gate = s.pauseGate() {
		select {
		case <-gate:
		case <-s.closing:
			leave()
			return nil, errShuttingDown
		}
	}
	select {
	case e.slots <- struct{}{}:
	case <-s.closing:
		leave()
		return nil, errShuttingDown
	}
	leave()
	s.metrics.queueTime.WithLabelValues(s.cfg.Model, e.label).Observe(time.Since(queued).Seconds())
	storeMax(&c.peakRunning, c.running.Add(1))
	e.running.Add(1)
	runningGauge := s.metrics.running.WithLabelValues(s.cfg.Model, e.label)
	runningGauge.Inc()
	return func() {
		// Count the request out before freeing its slot, so running never reads above
		// MaxNumSeqs.
		c.running.Add(-1)
		e.running.Add(-1)
		runningGauge.Dec()
		<-e.slots
	}, nil
}

func storeMax(peak interface {
	Load() int64
	CompareAndSwap(old, new int64) bool
}, v int64) {
	for {
		p := peak.Load()
		if v <= p || peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// sleep waits d unless the server shuts down first.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-s.closing:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.closing:
		return false
	}
}

func scale(d time.Duration, f float64) time.Duration { return time.Duration(float64(d) * f) }

// updateKVUsage sets vllm:kv_cache_usage_perc of e: blocks held by running requests and
// by prefill leases over the capacity. Blocks only cached (evictable) do not count, as in
// vLLM's block pool.
func (s *Server) updateKVUsage(e *engine) {
	_, leased := s.leases.active(e)
	used := float64(e.runningBlocks.Load()+int64(leased)) / float64(s.cfg.CacheBlocks)
	s.metrics.kvUsage.WithLabelValues(s.cfg.Model, e.label).Set(min(used, 1))
}

// run simulates one request: queue, prefill (shortened by prefix-cache hits or a claimed
// KV transfer), then one token per inter-token latency, calling emit for each (emit may
// be nil). emit's error (the client left, the stream was cut) aborts the request.
func (s *Server) run(g *genRequest, emit func(i int, finish string) error) (*genResult, error) {
	start := time.Now()
	release, err := s.admit(g.engine)
	if err != nil {
		s.stats.aborted.Add(1)
		return nil, err
	}
	defer release()

	slow := g.fault.slow()
	model, eng := s.cfg.Model, g.engine
	engine := eng.label
	res := &genResult{leg: legOf(g.kv)}
	hashes := blockHashes(g.prompt, s.cfg.BlockSize)
	cached := eng.cache.match(hashes, len(g.prompt))
	s.stats.prefixQueries.Add(uint64(len(g.prompt)))
	s.stats.prefixHits.Add(uint64(cached))
	s.metrics.prefixQueries.WithLabelValues(model, engine).Add(float64(len(g.prompt)))
	s.metrics.prefixHits.WithLabelValues(model, engine).Add(float64(cached))

	switch res.leg {
	case legPrefill:
		s.stats.prefillLegs.Add(1)
		s.metrics.pdLegs.WithLabelValues(model, engine, "prefill").Inc()
	case legDecode:
		s.stats.decodeLegs.Add(1)
		s.metrics.pdLegs.WithLabelValues(model, engine, "decode").Inc()
		reason, err := s.decodeLegClaim(g.kv, promptHash(g.prompt))
		if reason == "" {
			res.kvHit = true
			cached = len(g.prompt)
			s.stats.kvHits.Add(1)
			s.metrics.kvHits.WithLabelValues(model, engine).Inc()
		} else {
			s.stats.kvMisses.Add(1)
			s.metrics.kvMisses.WithLabelValues(model, engine, reason).Inc()
			if c := s.log.Check(zapcore.DebugLevel, "kv transfer miss"); c != nil {
				c.Write(zap.String("request_id", g.requestID), zap.String("reason", reason), zap.Error(err))
			}
			if reason != missInvalid && s.cfg.KVLoadFailurePolicy == "fail" {
				s.stats.aborted.Add(1)
				return nil, errKVLoadFailed
			}
			// "recompute": prefill locally.
		}
	}
	res.cachedTokens = cached

	n, finish := s.plan(g)
	blocks := int64((len(g.prompt) + n + s.cfg.BlockSize - 1) / s.cfg.BlockSize)
	eng.runningBlocks.Add(blocks)
	s.updateKVUsage(eng)
	defer func() {
		eng.runningBlocks.Add(-blocks)
		s.updateKVUsage(eng)
	}()

	ttft := scale(s.cfg.TTFTBase+time.Duration(len(g.prompt)-cached)*s.cfg.PrefillPerToken, slow)
	if !s.sleep(ttft) {
		s.stats.aborted.Add(1)
		return nil, errShuttingDown
	}
	eng.cache.store(hashes)
	s.stats.promptTokens.Add(uint64(len(g.prompt)))
	s.metrics.promptTokens.WithLabelValues(model, engine).Add(float64(len(g.prompt)))

	itl := scale(s.cfg.InterTokenLatency, slow)
	genCounter := s.metrics.genTokens.WithLabelValues(model, engine)
	itlHist := s.metrics.itl.WithLabelValues(model, engine)
	res.tokens = make([]int, 0, n)
	last := time.Now()
	for i := 0; i < n; i++ {
		if i > 0 {
			if !s.sleep(itl) {
				s.stats.aborted.Add(1)
				return res, errShuttingDown
			}
			now := time.Now()
			itlHist.Observe(now.Sub(last).Seconds())
			last = now
		}
		if i == 0 {
			s.metrics.ttft.WithLabelValues(model, engine).Observe(time.Since(start).Seconds())
		}
		res.tokens = append(res.tokens, generatedToken(i))
		s.stats.generationTokens.Add(1)
		genCounter.Inc()
		if i == n-1 {
			res.finish = finish
			s.finishPrefillLeg(g, res)
		}
		if emit == nil {
			continue
		}
		f := ""
		if i == n-1 {
			f = finish
		}
		if err := emit(i, f); err != nil {
			if errors.Is(err, errStreamCut) {
				s.stats.streamsCut.Add(1)
			}
			s.stats.aborted.Add(1)
			return res, err
		}
	}
	// As in vLLM, the KV of generated tokens is cached too, so the next turn of a
	// conversation (prompt + this answer + more) hits past this prompt.
	eng.cache.store(blockHashes(append(append(make([]int, 0, len(g.prompt)+n), g.prompt...), res.tokens...), s.cfg.BlockSize))
	s.stats.completed.Add(1)
	s.metrics.success.WithLabelValues(model, engine, finish).Inc()
	s.metrics.e2e.WithLabelValues(model, engine).Observe(time.Since(start).Seconds())
	return res, nil
}

// finishPrefillLeg leases the prompt's blocks for the decode leg. As in vLLM's NIXL
// scheduler, params are returned only when the prefill leg stopped on its length cap;
// any other finish leaves the decode leg to recompute.
func (s *Server) finishPrefillLeg(g *genRequest, res *genResult) {
	if res.leg != legPrefill || res.finish != "length" {
		return
	}
	nblocks := (len(g.prompt) + s.cfg.BlockSize - 1) / s.cfg.BlockSize
	id := g.internalID()
	ids := s.leases.issue(g.engine, id, nblocks, promptHash(g.prompt), s.cfg.KVLeaseDuration)
	s.stats.leasesIssued.Add(1)
	s.updateKVUsage(g.engine)
	res.kvOut = &kvTransferOut{
		DoRemotePrefill: true,
		RemoteBlockIDs:  ids,
		RemoteEngineID:  s.engineID,
		RemoteRequestID: id,
		RemoteHost:      s.sideHost,
		RemotePort:      s.sidePort,
		TPSize:          s.cfg.TensorParallelSize,
	}
}

// format renders one API's responses.
type format interface {
	// token writes the SSE events for generated token i; finish is set on the last one.
	token(e *sseWriter, g *genRequest, i int, finish string) error
	// end writes what follows the last token (usage chunk, [DONE], closing events).
	end(e *sseWriter, g *genRequest, res *genResult) error
	// body is the non-streaming response.
	body(g *genRequest, res *genResult) any
}

// serveGeneration applies faults, then answers g in the format f, streamed or not.
func (s *Server) serveGeneration(ctx *fasthttp.RequestCtx, g *genRequest, f format) {
	fault, changed := s.fault.get()
	if status, fail := s.fault.shouldFail(); fail {
		s.stats.injectedFailures.Add(1)
		s.metrics.injectedFaults.WithLabelValues(s.cfg.Model, g.engine.label, "fail").Inc()
		writeError(ctx, status, errorType(status), "simulated failure (fault injection)", "")
		return
	}
	if fault.Hang {
		s.stats.hangs.Add(1)
		s.metrics.injectedFaults.WithLabelValues(s.cfg.Model, g.engine.label, "hang").Inc()
		for fault.Hang {
			select {
			case <-changed:
				fault, changed = s.fault.get()
			case <-s.closing:
				writeError(ctx, fasthttp.StatusServiceUnavailable, "ServiceUnavailableError", errShuttingDown.Error(), "")
				return
			}
		}
	}
	g.fault = fault
	s.stats.mu.Lock()
	s.stats.byEngine[g.engine.label]++
	s.stats.mu.Unlock()

	if !g.stream {
		res, err := s.run(g, nil)
		switch {
		case errors.Is(err, errKVLoadFailed):
			writeError(ctx, fasthttp.StatusInternalServerError, "InternalServerError", err.Error(), "")
			return
		case err != nil:
			writeError(ctx, fasthttp.StatusServiceUnavailable, "ServiceUnavailableError", err.Error(), "")
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, f.body(g, res))
		return
	}

	if fault.DieMidStreamAfter > 0 {
		// Cutting a stream at an exact event needs the raw connection: fasthttp's stream
		// writer is buffered through a pipe, so closing under it could lose events.
		headers := rawHeaders(ctx)
		ctx.HijackSetNoResponse(true)
		ctx.Hijack(func(c net.Conn) {
			w := bufio.NewWriter(c)
			_, _ = w.WriteString(headers)
			e := &sseWriter{w: w, chunked: true, dieAfter: fault.DieMidStreamAfter, conn: c}
			if s.streamRun(e, g, f) {
				_, _ = w.WriteString("0\r\n\r\n")
				_ = w.Flush()
			}
		})
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/event-stream; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		s.streamRun(&sseWriter{w: w}, g, f)
	})
}

// rawHeaders is the response head of a hijacked stream.
func rawHeaders(ctx *fasthttp.RequestCtx) string {
	h := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nCache-Control: no-cache\r\n"
	for _, k := range []string{"X-Switchyard-Worker", "X-Request-Id"} {
		if v := ctx.Response.Header.Peek(k); len(v) > 0 {
			h += k + ": " + string(v) + "\r\n"
		}
	}
	return h + "\r\n"
}

// streamRun runs g, streaming events; it reports whether the stream ended normally.
func (s *Server) streamRun(e *sseWriter, g *genRequest, f format) bool {
	res, err := s.run(g, func(i int, finish string) error { return f.token(e, g, i, finish) })
	switch {
	case errors.Is(err, errShuttingDown):
		// vLLM reports errors in-band once a stream has started, then still ends it.
		_ = e.event("", newErrorBody(fasthttp.StatusServiceUnavailable, "ServiceUnavailableError", err.Error(), ""))
		_ = e.data("[DONE]")
		return true
	case errors.Is(err, errKVLoadFailed):
		_ = e.event("", newErrorBody(fasthttp.StatusInternalServerError, "InternalServerError", err.Error(), ""))
		_ = e.data("[DONE]")
		return true
	case err != nil:
		return false
	}
	return f.end(e, g, res) == nil
}

// sseWriter writes server-sent events, flushing each one.
type sseWriter struct {
	w        *bufio.Writer
	chunked  bool     // frame each event as an HTTP chunk (hijacked connection)
	dieAfter int      // close conn after this many events; 0: never
	conn     net.Conn // set when dieAfter is
	events   int
	buf      []byte
}

// event writes one event carrying v as JSON, with an "event:" line when name is set.
func (e *sseWriter) event(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.write(name, b)
}

// data writes one event with a raw payload ("[DONE]").
func (e *sseWriter) data(payload string) error { return e.write("", []byte(payload)) }

func (e *sseWriter) write(name string, payload []byte) error {
	e.buf = e.buf[:0]
	if name != "" {
		e.buf = append(e.buf, "event: "...)
		e.buf = append(e.buf, name...)
		e.buf = append(e.buf, '\n')
	}
	e.buf = append(e.buf, "data: "...)
	e.buf = append(e.buf, payload...)
	e.buf = append(e.buf, "\n\n"...)
	if e.chunked {
		_, _ = e.w.WriteString(strconv.FormatInt(int64(len(e.buf)), 16) + "\r\n")
		_, _ = e.w.Write(e.buf)
		_, _ = e.w.WriteString("\r\n")
	} else {
		_, _ = e.w.Write(e.buf)
	}
	if err := e.w.Flush(); err != nil {
		return err
	}
	e.events++
	if e.dieAfter > 0 && e.events >= e.dieAfter {
		if tc, ok := e.conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as when a worker dies
		}
		_ = e.conn.Close()
		return errStreamCut
	}
	return nil
}

// errorType names an error status the way vLLM's error responses do.
func errorType(status int) string {
	switch status {
	case 400:
		return "BadRequestError"
	case 404:
		return "NotFoundError"
	case 503:
		return "ServiceUnavailableError"
	case 500:
		return "InternalServerError"
	}
	return fasthttp.StatusMessage(status)
}
