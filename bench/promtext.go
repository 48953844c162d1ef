package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// vLLM's prefix-cache counters, in tokens. The gpu_ names are what vLLM V1 exported before
// the rename (0.10 and earlier); they are read only when the current names are absent.
const (
	metricPrefixQueries       = "vllm:prefix_cache_queries_total"
	metricPrefixHits          = "vllm:prefix_cache_hits_total"
	metricPrefixQueriesLegacy = "vllm:gpu_prefix_cache_queries_total"
	metricPrefixHitsLegacy    = "vllm:gpu_prefix_cache_hits_total"
)

// ErrMetricsFormat means a /metrics body had a sample line we could not read.
var ErrMetricsFormat = errors.New("bench: malformed Prometheus text")

// CacheCounters are prefix-cache counters summed over workers, engines and models, in tokens.
type CacheCounters struct {
	Queries float64 // prompt tokens looked up in the prefix cache
	Hits    float64 // of those, tokens found cached
}

// sub returns the increase from before to c.
func (c CacheCounters) sub(before CacheCounters) CacheCounters {
	return CacheCounters{Queries: c.Queries - before.Queries, Hits: c.Hits - before.Hits}
}

// HitRate is Hits/Queries, and false when nothing was queried.
func (c CacheCounters) HitRate() (float64, bool) {
	if c.Queries <= 0 {
		return 0, false
	}
	return c.Hits / c.Queries, true
}

// sumMetrics reads Prometheus text exposition format and returns, for each wanted metric
// name, the sum of its samples over all label sets. Names never seen are absent from the map.
// It reads the sample grammar (name, optional {labels} with quoted, escaped values, value,
// optional timestamp) and skips comments; it does not validate HELP/TYPE metadata.
func sumMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	sums := make(map[string]float64, len(names))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrMetricsFormat, lineNo, err)
		}
		if want[name] {
			sums[name] += value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	return sums, nil
}

// parseSample splits one sample line into its metric name and value.
func parseSample(line string) (name string, value float64, err error) {
	end := strings.IndexAny(line, "{ \t")
	if end <= 0 {
		return "", 0, fmt.Errorf("no value in %q", line)
	}
	name, rest := line[:end], line[end:]
	if rest[0] == '{' {
		n, err := labelsLen(rest)
		if err != nil {
			return "", 0, err
		}
		rest = rest[n:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 || len(fields) > 2 {
		return "", 0, fmt.Errorf("want value [timestamp] after %s, got %q", name, rest)
	}
	value, err = strconv.ParseFloat(fields[0], 64) // accepts NaN, +Inf, -Inf as the format does
	if err != nil {
		return "", 0, fmt.Errorf("value of %s: %w", name, err)
	}
	return name, value, nil
}

// labelsLen returns the length of the "{...}" label block at the start of s, honouring
// quoted values with backslash escapes (a value may hold '}' or '"').
func labelsLen(s string) (int, error) {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++ // skip the escaped character
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated label set in %q", s)
}

// parseCacheCounters reads vLLM's prefix-cache counters from a /metrics body. A body with
// neither the current nor the legacy names yields zero counters, not an error.
func parseCacheCounters(r io.Reader) (CacheCounters, error) {
	sums, err := sumMetrics(r, metricPrefixQueries, metricPrefixHits,
		metricPrefixQueriesLegacy, metricPrefixHitsLegacy)
	if err != nil {
		return CacheCounters{}, err
	}
	if _, ok := sums[metricPrefixQueries]; ok {
		return CacheCounters{Queries: sums[metricPrefixQueries], Hits: sums[metricPrefixHits]}, nil
	}
	return CacheCounters{Queries: sums[metricPrefixQueriesLegacy], Hits: sums[metricPrefixHitsLegacy]}, nil
}

// scrapeTimeout bounds one /metrics fetch.
const scrapeTimeout = 5 * time.Second

// scrapeCache fetches baseURL+"/metrics" from every worker and sums their prefix-cache counters.
func scrapeCache(ctx context.Context, client *http.Client, baseURLs []string) (CacheCounters, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	var total CacheCounters
	for _, base := range baseURLs {
		c, err := scrapeOne(ctx, client, strings.TrimRight(base, "/")+"/metrics")
		if err != nil {
			return CacheCounters{}, err
		}
		total.Queries += c.Queries
		total.Hits += c.Hits
	}
	return total, nil
}

func scrapeOne(ctx context.Context, client *http.Client, url string) (CacheCounters, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return CacheCounters{}, fmt.Errorf("scraping %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return CacheCounters{}, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return CacheCounters{}, fmt.Errorf("scraping %s: status %d", url, resp.StatusCode)
	}
	c, err := parseCacheCounters(resp.Body)
	if err != nil {
		return CacheCounters{}, fmt.Errorf("scraping %s: %w", url, err)
	}
	return c, nil
}
