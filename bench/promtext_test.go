package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// vllmMetrics is shaped like vLLM 0.26's /metrics: HELP/TYPE lines, _created samples,
// model_name/engine labels, several engines.
const vllmMetrics = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen3-8B"} 12000.0
vllm:prefix_cache_queries_total{engine="1",model_name="Qwen/Qwen3-8B"} 8000.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="Qwen/Qwen3-8B"} 1.7e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-8B"} 9000.0
vllm:prefix_cache_hits_total{engine="1",model_name="Qwen/Qwen3-8B"} 6000.0
`

func TestParseCacheCounters(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    CacheCounters
		wantErr bool
	}{
		{name: "vLLM shape, engines summed", text: vllmMetrics, want: CacheCounters{Queries: 20000, Hits: 15000}},
		{name: "no labels, timestamp, blank lines", text: "\nvllm:prefix_cache_queries_total 10 1700000000000\n\nvllm:prefix_cache_hits_total 4\n",
			want: CacheCounters{Queries: 10, Hits: 4}},
		{name: "label values with braces, quotes, spaces", text: `vllm:prefix_cache_queries_total{model_name="a } b \"q\"",engine="0"} 7` + "\n" +
			`vllm:prefix_cache_hits_total{model_name="x\\"} 2` + "\n",
			want: CacheCounters{Queries: 7, Hits: 2}},
		{name: "legacy gpu_ names (vLLM <= 0.10)", text: "vllm:gpu_prefix_cache_queries_total{engine=\"0\"} 100\nvllm:gpu_prefix_cache_hits_total{engine=\"0\"} 25\n",
			want: CacheCounters{Queries: 100, Hits: 25}},
		{name: "current names win over legacy", text: "vllm:gpu_prefix_cache_queries_total 100\nvllm:prefix_cache_queries_total 50\nvllm:prefix_cache_hits_total 5\n",
			want: CacheCounters{Queries: 50, Hits: 5}},
		{name: "absent counters are zero", text: "vllm:num_requests_running 1\n", want: CacheCounters{}},
		{name: "similar names do not count", text: "vllm:prefix_cache_queries_total_x 9\nvllm:prefix_cache_queries 9\n", want: CacheCounters{}},
		{name: "bad value", text: "vllm:prefix_cache_queries_total{engine=\"0\"} lots\n", wantErr: true},
		{name: "unterminated labels", text: "vllm:prefix_cache_queries_total{engine=\"0} 1\n", wantErr: true},
		{name: "name only", text: "vllm:prefix_cache_queries_total\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCacheCounters(strings.NewReader(tc.text))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v; want error %v", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrMetricsFormat) {
				t.Errorf("err = %v; want it to wrap ErrMetricsFormat", err)
			}
			if got != tc.want {
				t.Errorf("counters = %+v; want %+v", got, tc.want)
			}
		})
	}
}

func TestCacheHitRate(t *testing.T) {
	tests := []struct {
		c      CacheCounters
		want   float64
		wantOK bool
	}{
		{CacheCounters{Queries: 200, Hits: 150}, 0.75, true},
		{CacheCounters{}, 0, false},
		{CacheCounters{Queries: 300, Hits: 250}.sub(CacheCounters{Queries: 100, Hits: 100}), 0.75, true},
	}
	for _, tc := range tests {
		got, ok := tc.c.HitRate()
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("%+v.HitRate() = %v, %v; want %v, %v", tc.c, got, ok, tc.want, tc.wantOK)
		}
	}
}

func TestScrapeCacheSumsWorkers(t *testing.T) {
	var scrapes atomic.Int64
	worker := func(queries, hits int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/metrics" {
				http.NotFound(w, r)
				return
			}
			scrapes.Add(1)
			fmt.Fprintf(w, "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} %d\nvllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} %d\n", queries, hits)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	a, b := worker(100, 10), worker(300, 290)
	got, err := scrapeCache(context.Background(), http.DefaultClient, []string{a.URL, b.URL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (CacheCounters{Queries: 400, Hits: 300}); got != want || scrapes.Load() != 2 {
		t.Fatalf("scrape = %+v after %d scrapes; want %+v after 2", got, scrapes.Load(), want)
	}

	missing := httptest.NewServer(http.NotFoundHandler())
	defer missing.Close()
	if _, err := scrapeCache(context.Background(), http.DefaultClient, []string{a.URL, missing.URL}); err == nil || !strings.Contains(err.Error(), "status 404") {
		t.Fatalf("scrape of a worker without /metrics: err = %v; want a status 404 error", err)
	}
}
