package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// route is a request's API kind: a metric label and the thing P/D and policies switch on.
type route uint8

const (
	routeChat route = iota
	routeCompletions
	routeGenerate
	routeResponses
	routeMessages
	routeEmbeddings
	routeTokenize
	routeDetokenize
	routeModels
	routeOther
	numRoutes
)

var routeNames = [numRoutes]string{"/v1/chat/completions", "/v1/completions", "/inference/v1/generate",
	"/v1/responses", "/v1/messages", "/v1/embeddings", "/tokenize", "/detokenize", "/v1/models", "other"}

func (r route) String() string { return routeNames[r] }

// classify maps a path to its route without allocating.
func classify(path []byte) route {
	switch string(path) {
	case "/v1/chat/completions":
		return routeChat
	case "/v1/completions":
		return routeCompletions
	case "/inference/v1/generate":
		return routeGenerate
	case "/v1/responses":
		return routeResponses
	case "/v1/messages":
		return routeMessages
	case "/v1/embeddings":
		return routeEmbeddings
	case "/tokenize":
		return routeTokenize
	case "/detokenize":
		return routeDetokenize
	case "/v1/models":
		return routeModels
	}
	return routeOther
}

const numClasses = 6 // 1xx..5xx by first digit, plus index 0 for "error" (no response)

var classNames = [numClasses]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

func statusClass(code int) int {
	if code < 100 || code > 599 {
		return 0
	}
	return code / 100
}

// durationBuckets follow vllm-router's (1 ms … 240 s): rollouts span that whole range.
var durationBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 90, 120, 180, 240}

// Metrics holds the router's collectors, registered on a registry the caller passes in.
// Per-request series are resolved once per worker and route so the hot path only does
// atomic adds; per-worker gauges are read from the pool at scrape time.
type Metrics struct {
	requests      *prometheus.CounterVec   // switchyard_requests_total{route,status_class,worker}
	vrRequests    *prometheus.CounterVec   // vllm_router_requests_total{route}
	vrDuration    *prometheus.HistogramVec // vllm_router_request_duration_seconds{route}
	ttfb          *prometheus.HistogramVec // switchyard_time_to_first_byte_seconds{route}
	errors        *prometheus.CounterVec   // vllm_router_request_errors_total{route,error_type}
	retries       *prometheus.CounterVec   // vllm_router_retries_total{route}
	retriesOut    *prometheus.CounterVec   // vllm_router_retries_exhausted_total{route}
	decisions     *prometheus.CounterVec   // vllm_router_policy_decisions_total{policy,worker}
	pdRequests    *prometheus.CounterVec   // vllm_router_pd_requests_total{route}
	pdDuration    *prometheus.HistogramVec // vllm_router_pd_request_duration_seconds{route}
	pdPhase       *prometheus.HistogramVec // switchyard_pd_phase_duration_seconds{phase}
	pdPrefill     *prometheus.CounterVec   // vllm_router_pd_prefill_requests_total{worker}
	pdDecode      *prometheus.CounterVec   // vllm_router_pd_decode_requests_total{worker}
	pdErrors      *prometheus.CounterVec   // vllm_router_pd_errors_total{error_type}
	pdFallbacks   prometheus.Counter       // switchyard_pd_fallbacks_total
	pdRetries     prometheus.Counter       // switchyard_pd_prefill_retries_total
	queueRejected prometheus.Counter       // switchyard_queue_rejected_total
	cbTransitions *prometheus.CounterVec   // vllm_router_cb_state_transitions_total{worker,from,to}
	cbOutcomes    *prometheus.CounterVec   // vllm_router_cb_outcomes_total{worker,outcome}

	route      [numRoutes]routeMetrics
	pool       func() *snapshot
	policyName string
}

type routeMetrics struct {
	vrRequests prometheus.Counter
	vrDuration prometheus.Observer
	ttfb       prometheus.Observer
}

// backendMetrics are one worker's pre-resolved series.
type backendMetrics struct {
	requests  [numRoutes][numClasses]prometheus.Counter
	decisions prometheus.Counter
}

// NewMetrics registers the router's collectors on reg.
func NewMetrics(reg prometheus.Registerer, policyName string, pool func() *snapshot) *Metrics {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{pool: pool, policyName: policyName}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_requests_total", Help: "Proxied requests by route, status class and worker."}, []string{"route", "status_class", "worker"})
	m.vrRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_requests_total", Help: "Total requests by route (vllm-router compatible)."}, []string{"route"})
	m.vrDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vllm_router_request_duration_seconds", Help: "Request duration until the response, stream included, ended.", Buckets: durationBuckets}, []string{"route"})
	m.ttfb = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "switchyard_time_to_first_byte_seconds", Help: "Time from dispatch to the worker's response headers (first event for streams).", Buckets: durationBuckets}, []string{"route"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_request_errors_total", Help: "Request errors by route and type."}, []string{"route", "error_type"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_retries_total", Help: "Retries by route."}, []string{"route"})
	m.retriesOut = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_retries_exhausted_total", Help: "Requests that failed after every attempt."}, []string{"route"})
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_policy_decisions_total", Help: "Routing decisions by policy and worker."}, []string{"policy", "worker"})
	m.pdRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_pd_requests_total", Help: "P/D requests by route."}, []string{"route"})
	m.pdDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vllm_router_pd_request_duration_seconds", Help: "P/D request duration.", Buckets: durationBuckets}, []string{"route"})
	m.pdPhase = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "switchyard_pd_phase_duration_seconds", Help: "P/D phase latency: prefill, decode_ttft (decode dispatch to first byte), e2e.", Buckets: durationBuckets}, []string{"phase"})
	m.pdPrefill = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_pd_prefill_requests_total", Help: "Prefill legs by worker."}, []string{"worker"})
	m.pdDecode = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_pd_decode_requests_total", Help: "Decode legs by worker."}, []string{"worker"})
	m.pdErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_pd_errors_total", Help: "P/D errors by type."}, []string{"error_type"})
	m.pdFallbacks = prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_pd_fallbacks_total", Help: "P/D requests sent to decode with the original body because prefill failed."})
	m.pdRetries = prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_pd_prefill_retries_total", Help: "Prefill legs retried on another prefill worker."})
	m.queueRejected = prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_queue_rejected_total", Help: "Requests rejected with 429 because the in-flight cap and its queue were full."})
	m.cbTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_cb_state_transitions_total", Help: "Circuit breaker transitions."}, []string{"worker", "from", "to"})
	m.cbOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm_router_cb_outcomes_total", Help: "Outcomes recorded by circuit breakers."}, []string{"worker", "outcome"})
	for _, c := range []prometheus.Collector{m.requests, m.vrRequests, m.vrDuration, m.ttfb, m.errors, m.retries, m.retriesOut,
		m.decisions, m.pdRequests, m.pdDuration, m.pdPhase, m.pdPrefill, m.pdDecode, m.pdErrors, m.pdFallbacks, m.pdRetries,
		m.queueRejected, m.cbTransitions, m.cbOutcomes, &workerCollector{m: m}} {
		f(c)
	}
	for r := route(0); r < numRoutes; r++ {
		n := r.String()
		m.route[r] = routeMetrics{vrRequests: m.vrRequests.WithLabelValues(n), vrDuration: m.vrDuration.WithLabelValues(n), ttfb: m.ttfb.WithLabelValues(n)}
	}
	return m
}

func (m *Metrics) forWorker(b *Backend) *backendMetrics {
	bm := &backendMetrics{decisions: m.decisions.WithLabelValues(m.policyName, b.id)}
	for r := route(0); r < numRoutes; r++ {
		for c := 0; c < numClasses; c++ {
			bm.requests[r][c] = m.requests.WithLabelValues(r.String(), classNames[c], b.id)
		}
	}
	return bm
}

func (m *Metrics) forgetWorker(b *Backend) {
	m.requests.DeletePartialMatch(prometheus.Labels{"worker": b.id})
	m.decisions.DeletePartialMatch(prometheus.Labels{"worker": b.id})
}

// workerCollector reports per-worker state straight from the pool at scrape time, so the
// request path never touches a gauge.
type workerCollector struct{ m *Metrics }

var (
	descActive    = prometheus.NewDesc("vllm_router_active_workers", "Healthy workers.", nil, nil)
	descHealth    = prometheus.NewDesc("vllm_router_worker_health", "Worker health (1 healthy, 0 not).", []string{"worker"}, nil)
	descLoad      = prometheus.NewDesc("vllm_router_worker_load", "Requests in flight on the worker (stream included).", []string{"worker"}, nil)
	descRunning   = prometheus.NewDesc("vllm_router_running_requests", "Requests in flight on the worker (stream included).", []string{"worker"}, nil)
	descProcessed = prometheus.NewDesc("vllm_router_processed_requests_total", "Requests the worker finished.", []string{"worker"}, nil)
	descInFlight  = prometheus.NewDesc("switchyard_worker_in_flight", "Requests in flight on the worker, from dispatch to the end of the response stream.", []string{"worker", "role"}, nil)
	descHealthy   = prometheus.NewDesc("switchyard_worker_healthy", "Worker health (1 healthy, 0 not).", []string{"worker", "role"}, nil)
	descCBState   = prometheus.NewDesc("vllm_router_cb_state", "Circuit breaker state (0 closed, 1 open, 2 half-open).", []string{"worker"}, nil)
)

func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descHealth, descLoad, descRunning, descProcessed, descInFlight, descHealthy, descCBState} {
		ch <- d
	}
}

func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.pool()
	active := 0
	for _, b := range s.all() {
		h := 0.0
		if b.Healthy() {
			h = 1
			active++
		}
		load := float64(b.InFlight())
		ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, h, b.id)
		ch <- prometheus.MustNewConstMetric(descLoad, prometheus.GaugeValue, load, b.id)
		ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, load, b.id)
		ch <- prometheus.MustNewConstMetric(descProcessed, prometheus.CounterValue, float64(b.processed.Load()), b.id)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, load, b.id, b.role.String())
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, h, b.id, b.role.String())
		ch <- prometheus.MustNewConstMetric(descCBState, prometheus.GaugeValue, float64(b.breaker.State()), b.id)
	}
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(active))
}
