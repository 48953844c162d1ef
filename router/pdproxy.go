package router

import (
	"bytes"
	"errors"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/pd"
)

// pdRoute reports whether a route goes through the two-stage prefill/decode flow.
func pdRoute(r route) bool {
	switch r {
	case routeChat, routeCompletions, routeGenerate, routeResponses:
		return true
	}
	return false
}

// prefillAttempts: the first prefill worker, then one other, then decode alone.
const prefillAttempts = 2

// prefillTimeout bounds a prefill leg when no --request-timeout-secs is set: prefill of
// even a very long prompt takes minutes, not hours.
const prefillTimeout = 30 * time.Minute

// mergedDecodeTimeout bounds a decode read whole (router replay) when no
// --request-timeout-secs is set: prime-rl's own cap for a rollout request.
const mergedDecodeTimeout = 4 * time.Hour

// legDeadline is --request-timeout-secs from the request's start when set, else now+fallback.
func (s *Server) legDeadline(ex *exchange, fallback time.Duration) time.Time {
	if s.cfg.RequestTimeout > 0 {
		return ex.start.Add(s.cfg.RequestTimeout)
	}
	return time.Now().Add(fallback)
}

// prepareLeg builds one P/D leg from the client's request: its headers minus hop-by-hop
// ones, the shared request id, the worker API key, and body.
func (s *Server) prepareLeg(leg *fasthttp.Request, ctx *fasthttp.RequestCtx, rid, body []byte) {
	pd.PrepareLeg(leg, &ctx.Request, rid, body)
	if s.apiKey != nil {
		leg.Header.SetBytesV(fasthttp.HeaderAuthorization, s.apiKey)
	}
}

// proxyPD runs one request as vLLM's NIXL disaggregation expects: prefill (the client's
// body with one token, no stream and kv_transfer_params asking for a remote decode), then
// decode (the client's body carrying the kv_transfer_params prefill returned), streamed
// to the client exactly like a regular response. One request id covers both legs.
func (s *Server) proxyPD(ctx *fasthttp.RequestCtx, ex *exchange, rid []byte, snap *snapshot) {
	// Both legs rewrite the body, so P/D holds it whole (up to --max-payload-size) even
	// when it would stream on a regular route.
	orig, err := s.takeBody(ctx, ex, true)
	if err != nil {
		s.failBody(ctx, ex, err)
		return
	}
	if !s.admit(ctx, ex) {
		return
	}
	ex.pd, ex.stream = true, true
	s.fillPolicyRequest(&ex.preq, ctx, ex, orig)
	kind, _ := pd.KindFromPath(ctx.Path())
	ex.pdBuf, err = pd.PrefillBody(ex.pdBuf[:0], kind, orig)
	if err != nil {
		s.fail(ctx, ex, errors.Join(errBadRequest, errors.New("invalid JSON body: "+err.Error())))
		return
	}
	leg := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(leg)
	s.prepareLeg(leg, ctx, rid, ex.pdBuf)
	deadline := s.legDeadline(ex, prefillTimeout)

	var kv []byte
	for attempt := 0; attempt < prefillAttempts; attempt++ {
		pb, perr := s.pick(s.prefillPolicy, ex, snap.prefillEPs, snap.prefill, snap)
		if perr != nil {
			break
		}
		if attempt > 0 {
			s.metrics.pdRetries.Inc()
		}
		pb.begin()
		t0 := time.Now()
		body, status, lerr := pd.Prefill(ex.respBuf[:0], pb, leg, deadline)
		ex.respBuf = body
		pb.end()
		pb.breaker.Record(outcomeOf(status, lerr))
		s.metrics.pdPrefill.WithLabelValues(pb.id).Inc()
		s.metrics.pdPhase.WithLabelValues("prefill").Observe(time.Since(t0).Seconds())
		if lerr == nil {
			if p, ok, kerr := pd.KVTransferParams(body); kerr == nil && ok {
				kv = p
			} else {
				s.metrics.pdErrors.WithLabelValues("no_kv_transfer_params").Inc()
			}
			break
		}
		var le *pd.LegError
		if errors.As(lerr, &le) && le.Outcome == pd.OutcomeClientError {
			// The request itself is wrong: the client gets the worker's answer.
			s.metrics.pdErrors.WithLabelValues("prefill_client_error").Inc()
			ctx.SetStatusCode(status)
			ctx.SetContentType("application/json")
			ctx.SetBody(body)
			s.complete(ex, status)
			return
		}
		s.metrics.pdErrors.WithLabelValues("prefill_" + le.Outcome.String()).Inc()
		if ce := s.log.Check(zap.DebugLevel, "prefill failed"); ce != nil {
			ce.Write(zap.String("worker", pb.id), zap.Error(lerr))
		}
		avoid(ex, pb)
	}
	if clientGone(ctx) {
		// The client left during prefill: starting decode would only burn a GPU.
		s.metrics.pdErrors.WithLabelValues("client_gone_before_decode").Inc()
		s.complete(ex, 499)
		return
	}
	decodeBody := orig
	if kv == nil {
		// No usable prefill: decode prefills locally, as vLLM's proxy does when prefill
		// returns no params. Slower, but the request is served.
		s.metrics.pdFallbacks.Inc()
	} else {
		ex.pdBuf, err = pd.DecodeBody(ex.pdBuf[:0], orig, kv)
		if err != nil {
			s.fail(ctx, ex, errors.Join(errBadRequest, errors.New("invalid JSON body: "+err.Error())))
			return
		}
		decodeBody = ex.pdBuf
	}
	prefillResp := ex.respBuf
	s.prepareLeg(leg, ctx, rid, decodeBody)
	ex.preq.Avoid = nil
	if merge, logprobs := wantsMerge(orig, prefillResp); kind == pd.KindGenerate && kv != nil && merge {
		s.decodeMerged(ctx, ex, snap, leg, prefillResp, logprobs)
		return
	}
	attempts := 2 // a decode that failed before any byte reached the client: once more elsewhere
	for attempt := 0; attempt < attempts; attempt++ {
		db, derr := s.pick(s.decodePolicy, ex, snap.decodeEPs, snap.decode, snap)
		if derr != nil {
			err = derr
			break
		}
		if err = s.forward(ctx, ex, db, leg, attempt == attempts-1); err == nil {
			return
		}
		s.metrics.pdErrors.WithLabelValues("decode_" + errorType(err)).Inc()
		avoid(ex, db)
	}
	s.fail(ctx, ex, err)
}

// wantsMerge: router replay (routed_experts) or prompt logprobs come from prefill and
// must be stitched into decode's answer, so decode is read whole instead of streamed.
func wantsMerge(clientBody, prefillResp []byte) (merge, promptLogprobs bool) {
	if v, ok, _ := pd.Lookup(clientBody, "stream"); ok && string(v) == "true" {
		return false, false
	}
	promptLogprobs, _ = pd.WantsPromptLogprobs(clientBody)
	return promptLogprobs || bytes.Contains(prefillResp, []byte(`"routed_experts"`)), promptLogprobs
}

// decodeMerged runs a non-streaming generate decode and merges prefill's prompt rows
// (routed experts, prompt_token_ids, prompt logprobs) into its answer.
func (s *Server) decodeMerged(ctx *fasthttp.RequestCtx, ex *exchange, snap *snapshot, leg *fasthttp.Request, prefillResp []byte, wantLogprobs bool) {
	db, err := s.pick(s.decodePolicy, ex, snap.decodeEPs, snap.decode, snap)
	if err != nil {
		s.fail(ctx, ex, err)
		return
	}
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	db.begin()
	ex.dispatched = time.Now()
	err = db.DoDeadline(leg, resp, s.legDeadline(ex, mergedDecodeTimeout))
	db.end()
	status := resp.StatusCode()
	db.breaker.Record(outcomeOf(status, err))
	s.metrics.pdDecode.WithLabelValues(db.id).Inc()
	if err != nil {
		s.fail(ctx, ex, err)
		return
	}
	ex.b = db
	if status != fasthttp.StatusOK {
		copyResponseHeader(&ctx.Response, resp)
		ctx.SetBody(resp.Body())
		s.complete(ex, status)
		return
	}
	merged, merr := pd.MergeGenerate(nil, prefillResp, resp.Body(), wantLogprobs)
	if merr != nil {
		s.metrics.pdErrors.WithLabelValues("replay_mismatch").Inc()
		ex.b = nil
		writeError(ctx, fasthttp.StatusBadGateway, "merging prefill and decode answers: "+merr.Error())
		s.complete(ex, fasthttp.StatusBadGateway)
		return
	}
	copyResponseHeader(&ctx.Response, resp)
	ctx.SetBody(merged)
	s.complete(ex, status)
}

// outcomeOf is a leg's circuit-breaker outcome.
func outcomeOf(status int, err error) health.Outcome {
	var le *pd.LegError
	if errors.As(err, &le) && le.Status != 0 {
		return health.Classify(le.Status, nil, nil)
	}
	return health.Classify(status, nil, err)
}
