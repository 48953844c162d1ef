package router

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/switchyard/switchyard/health"
	"github.com/switchyard/switchyard/policy"
)

// access says who may call a control route.
type access uint8

const (
	accessOpen   access = iota // probes: /health, /liveness, /readiness
	accessClient               // --api-key when set
	accessAdmin                // --admin-api-key, else --api-key
)

// control is a route the router answers itself: its handler, who may call it and the
// method it takes.
type control struct {
	h      fasthttp.RequestHandler
	access access
	method string
}

// controlRoute returns the route the router answers itself, or ok=false for a route to
// proxy. It allocates nothing: it runs on every request.
func (s *Server) controlRoute(ctx *fasthttp.RequestCtx) (c control, ok bool) {
	path := ctx.Path()
	switch string(path) {
	case "/health":
		return control{s.handleHealth, accessOpen, "GET"}, true
	case "/liveness":
		return control{s.handleLiveness, accessOpen, "GET"}, true
	case "/readiness":
		return control{s.handleReadiness, accessOpen, "GET"}, true
	case "/v1/models":
		return control{s.handleModels, accessClient, "GET"}, true
	case "/list_workers":
		return control{s.handleListWorkers, accessClient, "GET"}, true
	case "/get_loads":
		return control{s.handleGetLoads, accessClient, "GET"}, true
	case "/workers":
		if ctx.IsPost() {
			return control{s.handleWorkers, accessAdmin, "POST"}, true
		}
		return control{s.handleWorkers, accessClient, "GET"}, true
	case "/add_worker":
		return control{s.handleAddWorker, accessAdmin, "POST"}, true
	case "/remove_worker":
		return control{s.handleRemoveWorker, accessAdmin, "POST"}, true
	case "/flush_cache":
		return control{s.handleFlushCache, accessAdmin, "POST"}, true
	case "/finish_session":
		return control{s.handleFinishSession, accessClient, "POST"}, true
	case "/pause", "/resume", "/update_weights":
		return control{s.handleFanout, accessAdmin, "POST"}, true
	}
	if len(path) > len("/workers/") && string(path[:len("/workers/")]) == "/workers/" {
		if ctx.IsDelete() {
			return control{s.handleWorker, accessAdmin, "DELETE"}, true
		}
		return control{s.handleWorker, accessClient, "GET"}, true
	}
	return control{}, false
}

// serveControl checks method and access, then runs the control route.
func (s *Server) serveControl(ctx *fasthttp.RequestCtx, c control) {
	m := ctx.Method()
	if string(m) != c.method && !(c.method == "GET" && ctx.IsHead()) {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, c.method)
		writeErr(ctx, errMethod)
		return
	}
	if !s.allowed(ctx, c.access) {
		writeErr(ctx, errUnauthorized)
		return
	}
	c.h(ctx)
}

func (s *Server) allowed(ctx *fasthttp.RequestCtx, acc access) bool {
	switch acc {
	case accessOpen:
		return true
	case accessAdmin:
		if s.adminKey != nil {
			return s.authorized(ctx, s.adminKey)
		}
	}
	return s.apiKey == nil || s.authorized(ctx, s.apiKey)
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// ready reports whether the router can serve: a healthy worker for every stage.
func (s *Server) ready(snap *snapshot) (healthy, total int, ok bool) {
	all := snap.all()
	for _, b := range all {
		if b.Healthy() {
			healthy++
		}
	}
	if s.cfg.PDDisaggregation {
		ok = countHealthy(snap.prefill) > 0 && countHealthy(snap.decode) > 0
	} else {
		ok = healthy > 0
	}
	return healthy, len(all), ok
}

// /health answers 200 while the router can serve (a healthy worker per stage), listing
// unhealthy workers; vllm-router answered 503 as soon as any one worker was down.
func (s *Server) handleHealth(ctx *fasthttp.RequestCtx) {
	snap := s.pool.load()
	healthy, total, ok := s.ready(snap)
	unhealthy := []string{}
	for _, b := range snap.all() {
		if !b.Healthy() {
			unhealthy = append(unhealthy, b.id)
		}
	}
	status, word := fasthttp.StatusOK, "healthy"
	if !ok {
		status, word = fasthttp.StatusServiceUnavailable, "unhealthy"
	}
	writeJSON(ctx, status, map[string]any{"status": word, "healthy_workers": healthy, "total_workers": total, "unhealthy_workers": unhealthy})
}

func (s *Server) handleLiveness(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain")
	ctx.SetBodyString("OK")
}

func (s *Server) handleReadiness(ctx *fasthttp.RequestCtx) {
	healthy, total, ok := s.ready(s.pool.load())
	if ok {
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "ready", "healthy_workers": healthy, "total_workers": total})
		return
	}
	writeJSON(ctx, fasthttp.StatusServiceUnavailable, map[string]any{"status": "not ready", "reason": "no healthy workers", "healthy_workers": healthy, "total_workers": total})
}

// /v1/models is answered by the first healthy worker (vllm-router asked the first one,
// healthy or not, and answered 500 when it was down: issue #135).
func (s *Server) handleModels(ctx *fasthttp.RequestCtx) {
	snap := s.pool.load()
	cands := snap.regular
	if s.cfg.PDDisaggregation {
		cands = append(append([]*Backend(nil), snap.prefill...), snap.decode...)
	}
	for _, b := range cands {
		if !b.Available() {
			continue
		}
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		req.SetRequestURI(b.base + "/v1/models")
		if s.apiKey != nil {
			req.Header.SetBytesV(fasthttp.HeaderAuthorization, s.apiKey)
		}
		err := b.client.DoTimeout(req, resp, s.cfg.HealthCheckTimeout)
		if err == nil && resp.StatusCode() == fasthttp.StatusOK {
			ctx.SetStatusCode(fasthttp.StatusOK)
			ctx.SetContentType("application/json")
			ctx.SetBody(resp.Body())
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			return
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	writeErr(ctx, errNotReady)
}

func (s *Server) handleListWorkers(ctx *fasthttp.RequestCtx) {
	urls := []string{}
	for _, b := range s.pool.load().all() {
		urls = append(urls, b.id)
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"urls": urls})
}

func (s *Server) handleGetLoads(ctx *fasthttp.RequestCtx) {
	type load struct {
		Worker string `json:"worker"`
		Load   int64  `json:"load"`
	}
	out := []load{}
	for _, b := range s.pool.load().all() {
		out = append(out, load{b.id, b.InFlight()})
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"workers": out})
}

type workerInfo struct {
	URL            string `json:"url"`
	ModelID        string `json:"model_id"`
	WorkerType     string `json:"worker_type"`
	IsHealthy      bool   `json:"is_healthy"`
	Load           int64  `json:"load"`
	ConnectionMode string `json:"connection_mode"`
	Priority       int    `json:"priority"`
	Cost           int    `json:"cost"`
	CircuitState   string `json:"circuit_state"`
	DPRank         *int   `json:"dp_rank,omitempty"`
}

func infoOf(b *Backend) workerInfo {
	wi := workerInfo{URL: b.id, ModelID: "unknown", WorkerType: b.role.String(), IsHealthy: b.Healthy(), Load: b.InFlight(),
		ConnectionMode: "HTTP", Priority: 50, Cost: 1, CircuitState: b.breaker.State().String()}
	if b.rank >= 0 {
		r := b.rank
		wi.DPRank = &r
	}
	return wi
}

func (s *Server) handleWorkers(ctx *fasthttp.RequestCtx) {
	if ctx.IsPost() {
		var req struct {
			URL           string `json:"url"`
			WorkerType    string `json:"worker_type"`
			BootstrapPort *int   `json:"bootstrap_port"`
		}
		if err := json.Unmarshal(ctx.Request.Body(), &req); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
		s.addWorker(ctx, req.URL, req.WorkerType)
		return
	}
	snap := s.pool.load()
	list := []workerInfo{}
	for _, b := range snap.all() {
		list = append(list, infoOf(b))
	}
	healthy, total, _ := s.ready(snap)
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"workers": list, "total": total,
		"stats": map[string]any{"healthy_count": healthy, "total_load": sumLoad(snap)}})
}

func sumLoad(snap *snapshot) int64 {
	var n int64
	for _, b := range snap.all() {
		n += b.InFlight()
	}
	return n
}

// /workers/{url}: GET describes the worker (all its ranks), DELETE removes it.
func (s *Server) handleWorker(ctx *fasthttp.RequestCtx) {
	// The original path: the normalized one has "http://" collapsed to "http:/".
	raw := strings.TrimPrefix(string(ctx.Request.URI().PathOriginal()), "/workers/")
	u, err := url.PathUnescape(raw)
	if err != nil || u == "" {
		writeError(ctx, fasthttp.StatusBadRequest, "worker URL missing or badly escaped")
		return
	}
	if ctx.IsDelete() {
		s.removeWorker(ctx, u)
		return
	}
	var found []workerInfo
	for _, b := range s.pool.load().all() {
		if b.id == u || b.base == normalizeWorkerURL(u) {
			found = append(found, infoOf(b))
		}
	}
	if len(found) == 0 {
		writeError(ctx, fasthttp.StatusNotFound, "worker "+u+" not found")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, found[0])
}

func (s *Server) handleAddWorker(ctx *fasthttp.RequestCtx) {
	s.addWorker(ctx, string(ctx.QueryArgs().Peek("url")), string(ctx.QueryArgs().Peek("worker_type")))
}

func (s *Server) handleRemoveWorker(ctx *fasthttp.RequestCtx) {
	s.removeWorker(ctx, string(ctx.QueryArgs().Peek("url")))
}

// addWorker waits for the worker's health (up to --worker-startup-timeout-secs), then adds
// it, expanded into its data-parallel ranks, without disturbing requests in flight.
func (s *Server) addWorker(ctx *fasthttp.RequestCtx, raw, workerType string) {
	if raw == "" {
		writeError(ctx, fasthttp.StatusBadRequest, "missing worker url (?url=http://host:port)")
		return
	}
	if err := checkWorkerURL(raw); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	u := normalizeWorkerURL(raw)
	role := RoleRegular
	switch workerType {
	case "", "regular":
		if s.cfg.PDDisaggregation {
			writeError(ctx, fasthttp.StatusBadRequest, "P/D mode: worker_type must be prefill or decode")
			return
		}
	case "prefill":
		role = RolePrefill
	case "decode":
		role = RoleDecode
	default:
		writeError(ctx, fasthttp.StatusBadRequest, "worker_type must be regular, prefill or decode")
		return
	}
	if role != RoleRegular && !s.cfg.PDDisaggregation {
		writeError(ctx, fasthttp.StatusBadRequest, "worker_type "+workerType+" needs --vllm-pd-disaggregation")
		return
	}
	for _, b := range s.pool.load().all() {
		if b.base == u {
			writeError(ctx, fasthttp.StatusConflict, "worker "+u+" is already registered")
			return
		}
	}
	wctx, cancel := context.WithTimeout(context.Background(), s.cfg.WorkerStartupTimeout)
	defer cancel()
	if err := health.WaitHealthy(wctx, u, s.cfg.HealthCheckEndpoint, s.cfg.APIKey, time.Second); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "worker "+u+" did not become healthy: "+err.Error())
		return
	}
	s.workersMu.Lock()
	specs := s.currentSpecs()
	specs = append(specs, expandRanks([]string{u}, s.cfg.IntraNodeDataParallelSize, s.cfg.DPRankOffset, role)...)
	snap := s.pool.Update(specs)
	s.workersMu.Unlock()
	for _, b := range snap.all() {
		if b.base == u {
			s.pool.SetHealthy(b.id, true) // it just passed a check
		}
	}
	s.checker.CheckNow(u)
	ctx.SetContentType("text/plain")
	ctx.SetBodyString("Successfully added worker: " + u)
}

func (s *Server) removeWorker(ctx *fasthttp.RequestCtx, raw string) {
	if raw == "" {
		writeError(ctx, fasthttp.StatusBadRequest, "missing worker url (?url=http://host:port)")
		return
	}
	u := normalizeWorkerURL(raw)
	s.workersMu.Lock()
	var keep []backendSpec
	removed := 0
	for _, sp := range s.currentSpecs() {
		if sp.base == u || sp.id == u {
			removed++
			continue
		}
		keep = append(keep, sp)
	}
	if removed > 0 {
		s.pool.Update(keep)
	}
	s.workersMu.Unlock()
	if removed == 0 {
		writeError(ctx, fasthttp.StatusNotFound, "worker "+u+" not found")
		return
	}
	ctx.SetContentType("text/plain")
	ctx.SetBodyString("Successfully removed worker: " + u)
}

func (s *Server) currentSpecs() []backendSpec {
	var specs []backendSpec
	for _, b := range s.pool.load().all() {
		specs = append(specs, backendSpec{id: b.id, base: b.base, rank: b.rank, role: b.role})
	}
	return specs
}

func (s *Server) handleFinishSession(ctx *fasthttp.RequestCtx) {
	id := ctx.QueryArgs().Peek("session_id")
	if len(id) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, "missing session_id query parameter")
		return
	}
	released := false
	for _, p := range []policy.Policy{s.policy, s.prefillPolicy, s.decodePolicy} {
		if sf, ok := p.(policy.SessionFinisher); ok {
			sf.FinishSession(id)
			released = true
		}
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"success": true, "session_id": string(id), "released": released})
}

func (s *Server) handleFlushCache(ctx *fasthttp.RequestCtx) {
	res := s.fanout(ctx, false)
	status := fasthttp.StatusOK
	if !res.Success {
		status = fasthttp.StatusInternalServerError
	}
	writeJSON(ctx, status, res)
}

// /pause, /resume, /update_weights go to every healthy worker, once per base URL.
func (s *Server) handleFanout(ctx *fasthttp.RequestCtx) {
	res := s.fanout(ctx, true)
	status := fasthttp.StatusOK
	if !res.Success {
		status = fasthttp.StatusBadGateway
	}
	writeJSON(ctx, status, res)
}

type fanoutResult struct {
	Success bool           `json:"success"`
	Workers []fanoutWorker `json:"workers"`
}

type fanoutWorker struct {
	URL    string `json:"url"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

// fanout sends the same method, path, query and body to each worker base URL.
func (s *Server) fanout(ctx *fasthttp.RequestCtx, healthyOnly bool) fanoutResult {
	seen := map[string]*Backend{}
	var order []string
	for _, b := range s.pool.load().all() {
		if healthyOnly && !b.Healthy() {
			continue
		}
		if seen[b.base] == nil {
			seen[b.base] = b
			order = append(order, b.base)
		}
	}
	res := fanoutResult{Success: true, Workers: make([]fanoutWorker, len(order))}
	uri := string(ctx.RequestURI())
	method := string(ctx.Method())
	body := append([]byte(nil), ctx.Request.Body()...)
	ct := string(ctx.Request.Header.ContentType())
	var wg sync.WaitGroup
	for i, base := range order {
		wg.Add(1)
		go func(i int, b *Backend) {
			defer wg.Done()
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI(b.base + uri)
			req.Header.SetMethod(method)
			if ct != "" {
				req.Header.SetContentType(ct)
			}
			req.SetBody(body)
			if s.apiKey != nil {
				req.Header.SetBytesV(fasthttp.HeaderAuthorization, s.apiKey)
			}
			w := fanoutWorker{URL: b.base}
			if err := b.client.DoTimeout(req, resp, s.cfg.WorkerStartupTimeout); err != nil {
				w.Error = err.Error()
			} else {
				w.Status = resp.StatusCode()
				if w.Status < 200 || w.Status > 299 {
					w.Error = strings.TrimSpace(string(resp.Body()))
				}
			}
			res.Workers[i] = w
		}(i, seen[base])
	}
	wg.Wait()
	for _, w := range res.Workers {
		if w.Error != "" || w.Status < 200 || w.Status > 299 {
			res.Success = false
		}
	}
	if len(order) == 0 {
		res.Success = false
	}
	return res
}
