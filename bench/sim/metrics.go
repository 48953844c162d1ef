package sim

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// metrics are vLLM's Prometheus series with vLLM's names and labels (model_name, engine),
// plus a few sim_ series, on a private registry so several simulators can live in one
// test process. Counters carry "_total" in their names because vLLM's Python client
// exposes them so.
type metrics struct {
	registry *prometheus.Registry
	handler  fasthttp.RequestHandler

	running        *prometheus.GaugeVec
	waiting        *prometheus.GaugeVec
	waitingReason  *prometheus.GaugeVec
	preemptions    *prometheus.CounterVec
	itl            *prometheus.HistogramVec
	queueTime      *prometheus.HistogramVec
	kvUsage        *prometheus.GaugeVec
	prefixQueries  *prometheus.CounterVec
	prefixHits     *prometheus.CounterVec
	promptTokens   *prometheus.CounterVec
	genTokens      *prometheus.CounterVec
	success        *prometheus.CounterVec
	ttft           *prometheus.HistogramVec
	e2e            *prometheus.HistogramVec
	kvExpired      *prometheus.CounterVec
	kvHits         *prometheus.CounterVec
	kvMisses       *prometheus.CounterVec
	pdLegs         *prometheus.CounterVec
	injectedFaults *prometheus.CounterVec
}

var engineLabels = []string{"model_name", "engine"}

func newMetrics(cfg *Config) *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, engineLabels)
		m.registry.MustRegister(g)
		return g
	}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(append([]string{}, engineLabels...), extra...))
		m.registry.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, engineLabels)
		m.registry.MustRegister(h)
		return h
	}
	m.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
	m.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
	m.waitingReason = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:num_requests_waiting_by_reason",
		Help: "Number of requests waiting, by reason (the simulator only waits for capacity)."}, append(append([]string{}, engineLabels...), "reason"))
	m.registry.MustRegister(m.waitingReason)
	m.preemptions = counter("vllm:num_preemptions_total", "Cumulative number of preemptions from the engine (never, in the simulator).")
	m.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
		[]float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0})
	m.queueTime = histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
		[]float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0})
	m.kvUsage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
	m.prefixQueries = counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.")
	m.prefixHits = counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.")
	m.promptTokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
	m.genTokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.")
	m.success = counter("vllm:request_success_total", "Count of successfully processed requests.", "finished_reason")
	m.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
		[]float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0})
	m.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
		[]float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0})
	m.kvExpired = counter("vllm:nixl_num_kv_expired_reqs_total", "Number of requests that had their KV expire. NOTE: This metric is tracked on the P instance.")
	m.kvHits = counter("vllm:sim_kv_transfer_hits_total", "Decode legs whose prefilled KV was claimed from the prefill worker.")
	m.kvMisses = counter("vllm:sim_kv_transfer_misses_total", "Decode legs that had to prefill locally (recompute).", "reason")
	m.pdLegs = counter("vllm:sim_pd_legs_total", "Disaggregated legs served, by leg (prefill or decode).", "leg")
	m.injectedFaults = counter("vllm:sim_injected_faults_total", "Requests hit by an injected fault, by kind.", "kind")

	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig"},
		[]string{"block_size", "num_gpu_blocks", "enable_prefix_caching"})
	m.registry.MustRegister(info)
	info.WithLabelValues(strconv.Itoa(cfg.BlockSize), strconv.Itoa(cfg.CacheBlocks), "True").Set(1)

	m.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	return m
}

func (m *metrics) touch(model, engine string) {
	m.running.WithLabelValues(model, engine)
	m.waiting.WithLabelValues(model, engine)
	m.waitingReason.WithLabelValues(model, engine, "capacity")
	m.preemptions.WithLabelValues(model, engine)
	m.kvUsage.WithLabelValues(model, engine)
	m.prefixQueries.WithLabelValues(model, engine)
	m.prefixHits.WithLabelValues(model, engine)
	m.promptTokens.WithLabelValues(model, engine)
	m.genTokens.WithLabelValues(model, engine)
	m.kvExpired.WithLabelValues(model, engine)
	m.kvHits.WithLabelValues(model, engine)
}
