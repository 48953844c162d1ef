package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Result is what one workload run measured.
type Result struct {
	// Requests counts requests answered 2xx with a well-formed body (stream ended by [DONE]).
	Requests int
	// Errors counts failed requests; ErrorsByKind splits them ("HTTP 503", "transport",
	// "timeout", "truncated stream", "stream error", "bad body"). Requests cut short because the run
	// ended are neither.
	Errors       int
	ErrorsByKind map[string]int
	// Elapsed is the wall time of the measured run.
	Elapsed time.Duration
	// Latency holds each successful request's time from send to the end of its body,
	// sorted ascending.
	Latency []time.Duration
	// TTFT holds each successful streamed request's time from send to the first event
	// carrying generated text, sorted ascending. Empty for non-streaming runs.
	TTFT []time.Duration
	// PerWorker counts successful requests by the X-Switchyard-Worker response header
	// ("" when absent). Workload.ExpectWorkers appear even with zero.
	PerWorker map[string]int
	// Sessions counts sessions with at least one successful turn; SplitSessions those whose
	// turns were answered by more than one worker; FinishedSessions those that ran all turns.
	Sessions, SplitSessions, FinishedSessions int
	// PromptBytes is the mean request body size, in bytes.
	PromptBytes int
	// Cache is the increase of the workers' prefix-cache counters over the run. CacheScraped
	// is false when Workload.MetricsURLs was empty or a scrape failed (CacheError says why).
	Cache        CacheCounters
	CacheScraped bool
	CacheError   error
}

// RequestsPerSecond is the successful request rate over the run.
func (r *Result) RequestsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// LatencyQuantile returns the q-quantile (0..1) of Latency, or 0 without samples.
func (r *Result) LatencyQuantile(q float64) time.Duration { return quantile(r.Latency, q) }

// TTFTQuantile returns the q-quantile (0..1) of TTFT, or 0 without samples.
func (r *Result) TTFTQuantile(q float64) time.Duration { return quantile(r.TTFT, q) }

// LoadSpread returns the smallest and largest share of successful requests one worker
// served (0..1), and the coefficient of variation of per-worker counts. Zeros without data.
func (r *Result) LoadSpread() (minShare, maxShare, cv float64) {
	if len(r.PerWorker) == 0 || r.Requests == 0 {
		return 0, 0, 0
	}
	counts := make([]float64, 0, len(r.PerWorker))
	var total float64
	for _, n := range r.PerWorker {
		counts = append(counts, float64(n))
		total += float64(n)
	}
	if total == 0 {
		return 0, 0, 0
	}
	mean := total / float64(len(counts))
	var variance float64
	for _, c := range counts {
		variance += (c - mean) * (c - mean)
	}
	variance /= float64(len(counts))
	return slices.Min(counts) / total, slices.Max(counts) / total, math.Sqrt(variance) / mean
}

// quantile is the nearest-rank q-quantile of ascending samples: the smallest sample with at
// least q of all samples at or below it.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Row is one line of the comparison table: a policy (or any label) and its run.
type Row struct {
	Policy string
	Result Result
}

var tableHeader = []string{
	"policy", "requests", "req/s", "errors", "lat p50", "lat p99", "TTFT p50", "TTFT p99",
	"cache hit", "load min–max", "split",
}

// PrintTable writes rows as an aligned table: the policy column left-aligned, figures right.
// Latencies are in milliseconds; "cache hit" is the prefix-cache token hit rate over the run;
// "load min–max" the smallest and largest per-worker share of requests; "split" the sessions
// served by more than one worker, of all sessions.
func PrintTable(w io.Writer, rows []Row) error {
	cells := [][]string{tableHeader}
	for i := range rows {
		cells = append(cells, rowCells(&rows[i]))
	}
	widths := make([]int, len(tableHeader))
	for _, line := range cells {
		for i, c := range line {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, line := range cells {
		for i, c := range line {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			switch {
			case i == 0:
				b.WriteString(c + pad)
			default:
				b.WriteString("  " + pad + c)
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func rowCells(row *Row) []string {
	r := &row.Result
	cache := "-"
	if rate, ok := r.Cache.HitRate(); ok && r.CacheScraped {
		cache = fmt.Sprintf("%.1f%%", 100*rate)
	}
	ttft50, ttft99 := "-", "-"
	if len(r.TTFT) > 0 {
		ttft50, ttft99 = millis(r.TTFTQuantile(0.50)), millis(r.TTFTQuantile(0.99))
	}
	load := "-"
	if minShare, maxShare, _ := r.LoadSpread(); maxShare > 0 {
		load = fmt.Sprintf("%.0f%%–%.0f%%", 100*minShare, 100*maxShare)
	}
	return []string{
		row.Policy,
		fmt.Sprint(r.Requests),
		fmt.Sprintf("%.1f", r.RequestsPerSecond()),
		fmt.Sprint(r.Errors),
		millis(r.LatencyQuantile(0.50)),
		millis(r.LatencyQuantile(0.99)),
		ttft50,
		ttft99,
		cache,
		load,
		fmt.Sprintf("%d/%d", r.SplitSessions, r.Sessions),
	}
}

// millis formats d as milliseconds with one decimal.
func millis(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
