package bench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestQuantile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one sample", []time.Duration{7}, 0.99, 7},
		{"p50 of 1..100 ms", hundred, 0.50, 50 * time.Millisecond},
		{"p99 of 1..100 ms", hundred, 0.99, 99 * time.Millisecond},
		{"p100", hundred, 1, 100 * time.Millisecond},
		{"p0 is the minimum", hundred, 0, 1 * time.Millisecond},
		{"p50 of four rounds up the rank", []time.Duration{1, 2, 3, 4}, 0.5, 2},
		{"p99 of four is the max", []time.Duration{1, 2, 3, 4}, 0.99, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := quantile(tc.sorted, tc.q); got != tc.want {
				t.Fatalf("quantile(%v) = %v; want %v", tc.q, got, tc.want)
			}
		})
	}
}

func TestLoadSpread(t *testing.T) {
	r := Result{Requests: 100, PerWorker: map[string]int{"a": 10, "b": 40, "c": 50, "d": 0}}
	minShare, maxShare, cv := r.LoadSpread()
	// mean 25, deviations -15, 15, 25, -25: variance (225+225+625+625)/4 = 425.
	wantCV := math.Sqrt(425) / 25
	if minShare != 0 || maxShare != 0.5 || math.Abs(cv-wantCV) > 1e-9 {
		t.Fatalf("LoadSpread = %v, %v, %v; want 0, 0.5, %v", minShare, maxShare, cv, wantCV)
	}
	if a, b, c := (&Result{}).LoadSpread(); a != 0 || b != 0 || c != 0 {
		t.Fatalf("LoadSpread of nothing = %v, %v, %v; want zeros", a, b, c)
	}
}

func TestPrintTableGolden(t *testing.T) {
	rows := []Row{
		{Policy: "consistent_hash", Result: Result{
			Requests: 12000, Errors: 0, Elapsed: 20 * time.Second,
			Latency:      []time.Duration{ms(40), ms(50), ms(90)},
			TTFT:         []time.Duration{ms(8), ms(9.25), ms(30)},
			PerWorker:    map[string]int{"w0": 2800, "w1": 3200, "w2": 3000, "w3": 3000},
			Sessions:     1600,
			Cache:        CacheCounters{Queries: 1000, Hits: 912},
			CacheScraped: true,
		}},
		{Policy: "round_robin", Result: Result{
			Requests: 9000, Errors: 3, Elapsed: 20 * time.Second,
			Latency:       []time.Duration{ms(70), ms(80), ms(150)},
			TTFT:          []time.Duration{ms(30), ms(41), ms(95.5)},
			PerWorker:     map[string]int{"w0": 2250, "w1": 2250, "w2": 2250, "w3": 2250},
			Sessions:      1200,
			SplitSessions: 1187,
			Cache:         CacheCounters{Queries: 1000, Hits: 350},
			CacheScraped:  true,
		}},
		{Policy: "x", Result: Result{Requests: 1, Elapsed: time.Second, Latency: []time.Duration{ms(1)}}},
	}
	var b strings.Builder
	if err := PrintTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"policy           requests  req/s  errors  lat p50  lat p99  TTFT p50  TTFT p99  cache hit  load min–max      split\n" +
		"consistent_hash     12000  600.0       0   50.0ms   90.0ms     9.2ms    30.0ms      91.2%       23%–27%     0/1600\n" +
		"round_robin          9000  450.0       3   80.0ms  150.0ms    41.0ms    95.5ms      35.0%       25%–25%  1187/1200\n" +
		"x                       1    1.0       0    1.0ms    1.0ms         -         -          -             -        0/0\n"
	if got := b.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrintErrorsAndVerdict(t *testing.T) {
	rows := []Row{
		{Policy: "consistent_hash", Result: Result{Requests: 200, Elapsed: 2 * time.Second,
			TTFT: []time.Duration{ms(50)}, Cache: CacheCounters{Queries: 100, Hits: 80}, CacheScraped: true}},
		{Policy: "round_robin", Result: Result{Requests: 100, Elapsed: 2 * time.Second, Errors: 3,
			ErrorsByKind: map[string]int{"transport": 1, "HTTP 503": 2},
			TTFT:         []time.Duration{ms(100)}, Cache: CacheCounters{Queries: 100, Hits: 50}, CacheScraped: true}},
		{Policy: "random", Result: Result{Requests: 50, Elapsed: 2 * time.Second, Latency: []time.Duration{ms(10)}}},
	}
	var b strings.Builder
	printErrors(&b, rows)
	printVerdict(&b, rows)
	want := "round_robin errors: HTTP 503 x2, transport x1\n" +
		"consistent_hash vs round_robin: prefix-cache hit rate 80.0% vs 50.0%, TTFT p50 50.0ms vs 100.0ms (2.0x lower), 100 vs 50 req/s\n" +
		"consistent_hash vs random: 100 vs 25 req/s\n"
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
