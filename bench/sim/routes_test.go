package sim

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNonStreamingShapes checks each route's status and the JSON fields vLLM returns.
func TestNonStreamingShapes(t *testing.T) {
	ts := start(t, testConfig())
	chat := `{"model":"test-model","messages":[{"role":"user","content":"Hi there"}],"max_tokens":5}`
	cases := []struct {
		name, method, path, body string
		status                   int
		want                     map[string]any // path (dot-separated, numbers index) → value
	}{
		{"chat", "POST", "/v1/chat/completions", chat, 200, map[string]any{
			"object": "chat.completion", "model": "test-model", "choices.0.message.role": "assistant",
			"choices.0.message.content": "hello from the switchyard simulator", "choices.0.finish_reason": "length",
			"usage.completion_tokens": 5.0, "usage.prompt_tokens_details.cached_tokens": 0.0, "kv_transfer_params": nil,
		}},
		{"chat natural stop", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, 200, map[string]any{
			"choices.0.finish_reason": "stop", "usage.completion_tokens": 8.0, "model": "test-model",
		}},
		{"chat min_tokens", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":20,"min_tokens":12}`, 200, map[string]any{
			"choices.0.finish_reason": "stop", "usage.completion_tokens": 12.0,
		}},
		{"chat max_completion_tokens wins", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":7,"max_completion_tokens":2}`, 200, map[string]any{
			"usage.completion_tokens": 2.0, "choices.0.message.content": "hello from",
		}},
		{"completion", "POST", "/v1/completions", `{"model":"test-model","prompt":"one two three","max_tokens":3}`, 200, map[string]any{
			"object": "text_completion", "choices.0.text": "hello from the", "usage.prompt_tokens": 3.0, "usage.total_tokens": 6.0,
		}},
		{"completion token ids", "POST", "/v1/completions", `{"prompt":[1,2,3,4],"max_tokens":1}`, 200, map[string]any{
			"usage.prompt_tokens": 4.0, "choices.0.text": "hello",
		}},
		{"generate", "POST", "/inference/v1/generate", `{"model":"test-model","token_ids":[5,6,7],"sampling_params":{"max_tokens":3},"request_id":"r1"}`, 200, map[string]any{
			"request_id": "req-generate", "choices.0.token_ids.2": 2.0, "choices.0.finish_reason": "length", "prompt_logprobs": nil, "kv_transfer_params": nil,
		}},
		{"responses", "POST", "/v1/responses", `{"model":"test-model","input":"Hi","max_output_tokens":2}`, 200, map[string]any{
			"object": "response", "status": "incomplete", "output.0.content.0.text": "hello from", "usage.output_tokens": 2.0,
		}},
		{"messages", "POST", "/v1/messages", `{"model":"test-model","max_tokens":3,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}`, 200, map[string]any{
			"type": "message", "role": "assistant", "content.0.text": "hello from the", "stop_reason": "max_tokens", "usage.output_tokens": 3.0,
		}},
		{"embeddings", "POST", "/v1/embeddings", `{"model":"test-model","input":["a b","c"]}`, 200, map[string]any{
			"object": "list", "data.1.index": 1.0, "data.0.object": "embedding", "usage.prompt_tokens": 3.0,
		}},
		{"tokenize", "POST", "/tokenize", `{"prompt":"hello from the"}`, 200, map[string]any{
			"count": 3.0, "tokens.1": 1.0, "max_model_len": 32768.0,
		}},
		{"detokenize", "POST", "/detokenize", `{"tokens":[0,1,2]}`, 200, map[string]any{"prompt": "hello from the"}},
		{"models", "GET", "/v1/models", "", 200, map[string]any{"object": "list", "data.0.id": "test-model", "data.0.object": "model"}},
		{"version", "GET", "/version", "", 200, map[string]any{"version": "0.26.0"}},
		{"load", "GET", "/load", "", 200, map[string]any{"server_load": 0.0}},
		{"unknown route", "GET", "/nope", "", 404, map[string]any{"detail": "Not Found"}},
		{"wrong method", "GET", "/v1/chat/completions", "", 405, map[string]any{"detail": "Method Not Allowed"}},
		{"bad json", "POST", "/v1/chat/completions", `{"messages":`, 400, map[string]any{
			"error.type": "Bad Request", "error.code": 400.0, "error.param": nil,
		}},
		{"unknown model", "POST", "/v1/completions", `{"model":"other","prompt":"x"}`, 404, map[string]any{
			"error.type": "NotFoundError", "error.param": "model", "error.code": 404.0,
		}},
		{"min above max", "POST", "/v1/completions", `{"prompt":"x","max_tokens":2,"min_tokens":3}`, 400, map[string]any{
			"error.type": "BadRequestError", "error.param": "min_tokens",
		}},
		{"stream_options without stream", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"stream":false,"stream_options":{"include_usage":true}}`, 400, map[string]any{
			"error.type": "Bad Request", "error.param": "stream_options",
		}},
		{"zero max_tokens", "POST", "/v1/completions", `{"prompt":"x","max_tokens":0}`, 400, map[string]any{"error.type": "BadRequestError"}},
		{"context overflow", "POST", "/v1/completions", `{"prompt":"x","max_tokens":40000}`, 400, map[string]any{"error.code": 400.0}},
		{"empty generate", "POST", "/inference/v1/generate", `{"token_ids":[],"sampling_params":{}}`, 400, map[string]any{"error.param": "prompt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, ts.url+tc.path, tc.body, "X-Request-Id", "req-"+strings.ReplaceAll(tc.name, " ", "-"))
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if got := r.header.Get("X-Switchyard-Worker"); got == "" {
				t.Error("no X-Switchyard-Worker header")
			}
			if got, want := r.header.Get("X-Request-Id"), "req-"+strings.ReplaceAll(tc.name, " ", "-"); got != want {
				t.Errorf("X-Request-Id %q, want %q", got, want)
			}
			m := r.json(t)
			for p, want := range tc.want {
				var path []any
				for _, k := range strings.Split(p, ".") {
					if n, ok := atoiOK(k); ok {
						path = append(path, n)
					} else {
						path = append(path, k)
					}
				}
				if got := get(m, path...); got != want {
					t.Errorf("%s = %#v, want %#v (body %s)", p, got, want, r.body)
				}
			}
		})
	}
}

func atoiOK(s string) (int, bool) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, s != ""
}

func TestJSONContentTypeRequired(t *testing.T) {
	ts := start(t, testConfig())
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded"} {
		resp, err := client.Post(ts.url+"/v1/completions", ct, strings.NewReader(`{"prompt":"x","max_tokens":1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("Content-Type %q: %d, want 400", ct, resp.StatusCode)
		}
	}
	r := post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`, "Content-Type", "application/json; charset=utf-8")
	if r.status != 200 {
		t.Errorf("application/json with charset: %d", r.status)
	}
}

func TestIDsFollowRequestID(t *testing.T) {
	ts := start(t, testConfig())
	r := post(t, ts.url+"/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":1}`, "X-Request-Id", "abc")
	if got := r.json(t)["id"]; got != "chatcmpl-abc" {
		t.Errorf("id %v, want chatcmpl-abc", got)
	}
	// The generate API takes a body request_id when no header names one.
	r = post(t, ts.url+"/inference/v1/generate", `{"token_ids":[1],"sampling_params":{"max_tokens":1},"request_id":"r1"}`)
	if got := r.json(t)["request_id"]; got != "r1" {
		t.Errorf("generate request_id %v, want r1", got)
	}
	// Without the header the simulator makes one and echoes it, as vLLM with
	// --enable-request-id-headers.
	r = post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`)
	rid := r.header.Get("X-Request-Id")
	if rid == "" || r.json(t)["id"] != "cmpl-"+rid {
		t.Errorf("generated id %q does not match body id %v", rid, r.json(t)["id"])
	}
}

func TestAPIKeyGuardsOnlyV1(t *testing.T) {
	cfg := testConfig()
	cfg.APIKeys = []string{"k1", "k2"}
	ts := start(t, cfg)
	cases := []struct {
		name, method, path, body, auth string
		status                         int
	}{
		{"v1 without key", "GET", "/v1/models", "", "", 401},
		{"v1 wrong key", "GET", "/v1/models", "", "Bearer nope", 401},
		{"v1 second key", "GET", "/v1/models", "", "Bearer k2", 200},
		{"chat with key", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":1}`, "Bearer k1", 200},
		{"health open", "GET", "/health", "", "", 200},
		{"metrics open", "GET", "/metrics", "", "", 200},
		{"generate open", "POST", "/inference/v1/generate", `{"token_ids":[1],"sampling_params":{"max_tokens":1}}`, "", 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h []string
			if tc.auth != "" {
				h = []string{"Authorization", tc.auth}
			}
			if r := do(t, tc.method, ts.url+tc.path, tc.body, h...); r.status != tc.status {
				t.Errorf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
		})
	}
}

func TestDataParallelRankHeader(t *testing.T) {
	cfg := testConfig()
	cfg.DataParallelSize = 2
	ts := start(t, cfg)
	body := `{"prompt":"x","max_tokens":1}`
	if r := post(t, ts.url+"/v1/completions", body, "X-data-parallel-rank", "1"); r.status != 200 {
		t.Fatalf("rank 1: %d %s", r.status, r.body)
	}
	r := post(t, ts.url+"/v1/completions", body, "X-data-parallel-rank", "2")
	if r.status != 400 || get(r.json(t), "error", "type") != "BadRequestError" {
		t.Fatalf("rank 2: %d %s, want a 400 BadRequestError", r.status, r.body)
	}
	if got := ts.Stats().ByEngine; got["1"] != 1 || got["0"] != 0 {
		t.Errorf("ByEngine %v, want one request on engine 1", got)
	}
	if v, ok := metricValue(metricsText(t, ts), `vllm:request_success_total{engine="1"`); !ok || v != "1" {
		t.Errorf("success on engine 1 = %q (present %v), want 1", v, ok)
	}
}

// TestDataParallelEnginesAreSeparate: each DP engine has its own prefix cache and its own
// max-num-seqs, so a router that pins a session to a rank gets the cache hits.
func TestDataParallelEnginesAreSeparate(t *testing.T) {
	cfg := testConfig()
	cfg.DataParallelSize = 2
	ts := start(t, cfg)
	body := `{"prompt":"` + strings.Repeat("w ", 40) + `","max_tokens":1}`
	cached := func(rank string) any {
		return get(post(t, ts.url+"/v1/completions", body, "X-data-parallel-rank", rank).json(t), "usage", "prompt_tokens_details", "cached_tokens")
	}
	if c := cached("0"); c != 0.0 {
		t.Fatalf("cold rank 0 cached %v", c)
	}
	if c := cached("1"); c != 0.0 {
		t.Errorf("rank 1 cached %v: it must not see rank 0's cache", c)
	}
	if c := cached("0"); c != 32.0 {
		t.Errorf("warm rank 0 cached %v, want 32", c)
	}
	// Without the header, requests spread to the least loaded engine.
	cfg.MaxNumSeqs, cfg.InterTokenLatency = 1, 20*time.Millisecond
	ts = start(t, cfg)
	done := make(chan struct{})
	for i := 1; i <= 2; i++ {
		go func() {
			post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":5}`)
			done <- struct{}{}
		}()
		eventually(t, "the request running", func() bool { return ts.Stats().Running == int64(i) })
	}
	<-done
	<-done
	if st := ts.Stats(); st.ByEngine["0"] != 1 || st.ByEngine["1"] != 1 {
		t.Errorf("by engine %v; want one request on each", st.ByEngine)
	}
}

func TestPauseHoldsNewRequests(t *testing.T) {
	ts := start(t, testConfig())
	if r := post(t, ts.url+"/pause", ""); r.status != 200 {
		t.Fatalf("/pause: %d", r.status)
	}
	if get(do(t, "GET", ts.url+"/is_paused", "").json(t), "is_paused") != true {
		t.Fatal("not paused")
	}
	done := make(chan reply, 1)
	go func() { done <- post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`) }()
	eventually(t, "a waiting request", func() bool { return ts.Stats().Waiting == 1 })
	select {
	case <-done:
		t.Fatal("request answered while paused")
	default:
	}
	post(t, ts.url+"/resume", "")
	if r := <-done; r.status != 200 {
		t.Fatalf("after resume: %d", r.status)
	}
}

func TestRoutedExpertsAndPromptLogprobs(t *testing.T) {
	cfg := testConfig()
	cfg.ReturnRoutedExperts = true
	ts := start(t, cfg)
	prompt := []int{40, 41, 42, 43, 44}
	body := `{"token_ids":[40,41,42,43,44],"sampling_params":{"max_tokens":3,"prompt_logprobs":1}}`
	m := post(t, ts.url+"/inference/v1/generate", body).json(t)
	re := get(m, "choices", 0, "routed_experts").(map[string]any)
	shape := re["shape"].([]any)
	if shape[0] != 8.0 || shape[1] != 4.0 || shape[2] != 2.0 || re["dtype"] != "uint8" || re["start"] != 0.0 {
		t.Fatalf("routed_experts %v, want shape [8 4 2] uint8 from 0", re)
	}
	data, err := base64.StdEncoding.DecodeString(re["data"].(string))
	if err != nil || len(data) != 8*4*2 {
		t.Fatalf("data: %v, %d bytes", err, len(data))
	}
	if data[1*8+3*2+1] != RoutedExpert(1, prompt[1], 3, 1) {
		t.Error("routed experts are not the documented function of position and token")
	}
	if got := get(m, "prompt_token_ids"); len(got.([]any)) != 5 {
		t.Errorf("prompt_token_ids %v", got)
	}
	lp := m["prompt_logprobs"].([]any)
	if len(lp) != 5 || lp[0] != nil || get(lp[1], "41", "rank") == nil {
		t.Errorf("prompt_logprobs %v", lp)
	}
	// A prefill leg returns the prompt rows only.
	pre := post(t, ts.url+"/inference/v1/generate", `{"token_ids":[40,41,42,43,44],"sampling_params":{"max_tokens":1},"kv_transfer_params":{"do_remote_decode":true}}`).json(t)
	if got := get(pre, "choices", 0, "routed_experts", "shape", 0); got != 5.0 {
		t.Errorf("prefill rows %v, want 5", got)
	}
}

func TestHealthAndAdminRoutes(t *testing.T) {
	ts := start(t, testConfig())
	for _, p := range []string{"/reset_prefix_cache", "/flush_cache", "/update_weights"} {
		post(t, ts.url+"/v1/completions", `{"prompt":"`+strings.Repeat("w ", 40)+`","max_tokens":1}`)
		if ts.Stats().CachedBlocks == 0 {
			t.Fatal("nothing cached")
		}
		if r := post(t, ts.url+p, ""); r.status != 200 {
			t.Fatalf("%s: %d", p, r.status)
		}
		if n := ts.Stats().CachedBlocks; n != 0 {
			t.Errorf("%s left %d blocks", p, n)
		}
	}
	if r := do(t, http.MethodGet, ts.url+"/health", ""); r.status != 200 {
		t.Errorf("/health %d", r.status)
	}
}

func TestShutdownEndsStreams(t *testing.T) {
	cfg := testConfig()
	cfg.InterTokenLatency = 50 * time.Millisecond
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	resp, err := client.Post("http://"+ln.Addr().String()+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","max_tokens":1000,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	eventually(t, "a running stream", func() bool { return s.Stats().GenerationTokens > 0 })
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown() }()
	events, err := readSSE(resp.Body)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	last, errEvent := events[len(events)-1], events[len(events)-2]
	if last.data != "[DONE]" || !strings.Contains(errEvent.data, `"ServiceUnavailableError"`) {
		t.Errorf("stream ended with %q, %q; want an error event then [DONE]", errEvent.data, last.data)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestServeOnlyOnce(t *testing.T) {
	ts := start(t, testConfig())
	do(t, http.MethodGet, ts.url+"/health", "") // Serve has started
	if err := ts.Serve(listen(t)); err != ErrServing {
		t.Errorf("second Serve: %v, want ErrServing", err)
	}
	s, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(); err != nil {
		t.Errorf("Shutdown before Serve: %v", err)
	}
	if err := s.Serve(listen(t)); err != ErrServing {
		t.Errorf("Serve after Shutdown: %v, want ErrServing", err)
	}
}

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
	}{
		{"zero max num seqs", func(c *Config) { c.MaxNumSeqs = 0 }},
		{"zero block size", func(c *Config) { c.BlockSize = 0 }},
		{"bad role", func(c *Config) { c.Role = "router" }},
		{"negative ttft", func(c *Config) { c.TTFTBase = -1 }},
		{"empty model", func(c *Config) { c.Model = "" }},
		{"rank beyond dp size", func(c *Config) { c.DataParallelExternalLB, c.DataParallelRank = true, 2 }},
		{"fail rate above 1", func(c *Config) { c.Fault.FailRate = 1.5 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			if _, err := New(c, nil); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("New: %v, want ErrInvalidConfig", err)
			}
		})
	}
	c := DefaultConfig()
	c.Role, c.DataParallelSize, c.TensorParallelSize = "", 0, 0
	if _, err := New(c, nil); err != nil {
		t.Errorf("zero values with documented meanings rejected: %v", err)
	}
}
