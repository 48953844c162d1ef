package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPrefixCacheMatch(t *testing.T) {
	seq := func(n, base int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = base + i
		}
		return s
	}
	cases := []struct {
		name    string
		stored  []int
		prompt  []int
		wantHit int
	}{
		{"cold", nil, seq(40, 0), 0},
		{"full blocks only", seq(40, 0), seq(40, 0), 32},
		{"last token never cached", seq(32, 0), seq(32, 0), 16},
		{"extension hits the shared prefix", seq(33, 0), append(seq(33, 0), 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7), 32},
		{"divergence in block 1 stops the chain", seq(48, 0), append(seq(20, 0), seq(28, 100)...), 16},
		{"same block content, different parent", seq(48, 0), append(seq(16, 500), seq(32, 16)...), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newPrefixCache(16, 100)
			c.store(blockHashes(tc.stored, 16))
			if got := c.match(blockHashes(tc.prompt, 16), len(tc.prompt)); got != tc.wantHit {
				t.Errorf("hit %d tokens, want %d", got, tc.wantHit)
			}
		})
	}
}

func TestPrefixCacheLRUBound(t *testing.T) {
	c := newPrefixCache(4, 3)
	a := []int{1, 1, 1, 1, 2, 2, 2, 2, 9} // blocks A1 A2
	b := []int{5, 5, 5, 5, 6, 6, 6, 6, 9} // blocks B1 B2
	c.store(blockHashes(a, 4))            // A1 A2
	c.match(blockHashes(a[:5], 4), 5)     // touch A1: LRU order A2 < A1
	c.store(blockHashes(b, 4))            // B1 evicts A2, B2 evicts A1
	if n := c.blocks(); n != 3 {
		t.Fatalf("%d resident blocks, want the bound 3", n)
	}
	if hit := c.match(blockHashes(b, 4), len(b)); hit != 8 {
		t.Errorf("recent prompt hit %d, want 8", hit)
	}
	if hit := c.match(blockHashes(a, 4), len(a)); hit != 4 {
		t.Errorf("older prompt hit %d, want 4 (A1 was touched and kept, A2 evicted)", hit)
	}
}

// TestMultiTurnCachedTokens: each turn of a chat session re-sends the previous turns, so
// its cached prefix grows, visible in usage and in the prefix-cache counters.
func TestMultiTurnCachedTokens(t *testing.T) {
	cfg := testConfig()
	cfg.BlockSize = 4
	ts := start(t, cfg)
	var messages []map[string]string
	prevCached, prevSeq := -1, 0
	for turn := 0; turn < 4; turn++ {
		messages = append(messages, map[string]string{"role": "user", "content": fmt.Sprintf("question number %d about routing sessions", turn)})
		body, _ := json.Marshal(map[string]any{"messages": messages, "max_tokens": 6})
		m := post(t, ts.url+"/v1/chat/completions", string(body)).json(t)
		cached := int(get(m, "usage", "prompt_tokens_details", "cached_tokens").(float64))
		prompt := int(get(m, "usage", "prompt_tokens").(float64))
		if turn == 0 && cached != 0 {
			t.Errorf("turn 0 cached %d, want 0", cached)
		}
		// The previous turn's prompt and answer are cached in full blocks.
		if want := prevSeq / cfg.BlockSize * cfg.BlockSize; turn > 0 && (cached != want || cached <= prevCached) {
			t.Errorf("turn %d cached %d of %d (previous %d), want %d", turn, cached, prompt, prevCached, want)
		}
		prevCached = cached
		prevSeq = prompt + int(get(m, "usage", "completion_tokens").(float64))
		messages = append(messages, map[string]string{"role": "assistant", "content": get(m, "choices", 0, "message", "content").(string)})
	}
	st := ts.Stats()
	if st.PrefixHits == 0 || st.PrefixHits >= st.PrefixQueries {
		t.Errorf("prefix hits %d of %d queries", st.PrefixHits, st.PrefixQueries)
	}
	text := metricsText(t, ts)
	if v, _ := metricValue(text, "vllm:prefix_cache_hits_total"); v != fmt.Sprint(st.PrefixHits) {
		t.Errorf("metric hits %s, Stats %d", v, st.PrefixHits)
	}
}

func TestPrefillTimeShrinksWithCache(t *testing.T) {
	cfg := testConfig()
	cfg.PrefillPerToken = 200 * time.Microsecond
	ts := start(t, cfg)
	body := `{"prompt":"` + strings.Repeat("tok ", 400) + `","max_tokens":1}`
	t0 := time.Now()
	post(t, ts.url+"/v1/completions", body)
	cold := time.Since(t0)
	t0 = time.Now()
	post(t, ts.url+"/v1/completions", body)
	warm := time.Since(t0)
	// 400 uncached tokens cost 80ms; the warm request recomputes under one block.
	if cold < 70*time.Millisecond || warm > cold/2 {
		t.Errorf("cold %v, warm %v: want the cached prompt to prefill much faster", cold, warm)
	}
}

func TestQueueBeyondMaxNumSeqs(t *testing.T) {
	cfg := testConfig()
	cfg.MaxNumSeqs = 2
	cfg.InterTokenLatency = 20 * time.Millisecond
	ts := start(t, cfg)
	var wg sync.WaitGroup
	statuses := make(chan int, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses <- post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":10}`).status
		}()
	}
	eventually(t, "2 running and 3 waiting", func() bool {
		st := ts.Stats()
		return st.Running == 2 && st.Waiting == 3
	})
	text := metricsText(t, ts)
	for metric, want := range map[string]string{"vllm:num_requests_running": "2", "vllm:num_requests_waiting": "3"} {
		if v, _ := metricValue(text, metric); v != want {
			t.Errorf("%s = %s, want %s", metric, v, want)
		}
	}
	if m := do(t, http.MethodGet, ts.url+"/load", "").json(t); m["server_load"] != 5.0 {
		t.Errorf("/load %v, want 5", m)
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("status %d", s)
		}
	}
	if st := ts.Stats(); st.PeakRunning != 2 || st.Completed != 5 {
		t.Errorf("peak running %d, completed %d; want 2 and 5", st.PeakRunning, st.Completed)
	}
}

func TestMetricsNames(t *testing.T) {
	ts := start(t, testConfig())
	post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`)
	text := metricsText(t, ts)
	for _, name := range []string{
		`vllm:num_requests_running{engine="0",model_name="test-model"}`,
		`vllm:num_requests_waiting{engine="0",model_name="test-model"}`,
		`vllm:kv_cache_usage_perc{engine="0",model_name="test-model"}`,
		`vllm:prefix_cache_queries_total{engine="0",model_name="test-model"}`,
		`vllm:prefix_cache_hits_total{engine="0",model_name="test-model"}`,
		`vllm:prompt_tokens_total{engine="0",model_name="test-model"}`,
		`vllm:generation_tokens_total{engine="0",model_name="test-model"}`,
		`vllm:time_to_first_token_seconds_bucket{engine="0",model_name="test-model",le="0.001"}`,
		`vllm:e2e_request_latency_seconds_count{engine="0",model_name="test-model"}`,
		`vllm:request_success_total{engine="0",finished_reason="length",model_name="test-model"}`,
		`vllm:nixl_num_kv_expired_reqs_total{engine="0",model_name="test-model"}`,
		`vllm:sim_kv_transfer_hits_total{engine="0",model_name="test-model"}`,
		`vllm:cache_config_info{block_size="16"`,
		`vllm:num_requests_waiting_by_reason{engine="0",model_name="test-model",reason="capacity"}`,
		`vllm:num_preemptions_total{engine="0",model_name="test-model"}`,
		`vllm:inter_token_latency_seconds_count{engine="0",model_name="test-model"}`,
		`vllm:request_queue_time_seconds_count{engine="0",model_name="test-model"}`,
	} {
		if !strings.Contains(text, name) {
			t.Errorf("metrics lack %s", name)
		}
	}
}
