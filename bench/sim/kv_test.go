package sim

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

var pdPrompt = strings.Repeat("alpha beta gamma delta ", 10) // 40 tokens

func prefillBody(api string) string {
	kv := `"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`
	if api == "generate" {
		return `{"token_ids":` + idsJSON(tokenize(pdPrompt)) + `,"sampling_params":{"max_tokens":1,"min_tokens":1},` + kv + `}`
	}
	return `{"prompt":"` + pdPrompt + `","max_tokens":1,"stream":false,` + kv + `}`
}

func decodeLegBody(api string, kv any) string {
	b, _ := json.Marshal(kv)
	if api == "generate" {
		return `{"token_ids":` + idsJSON(tokenize(pdPrompt)) + `,"sampling_params":{"max_tokens":5},"kv_transfer_params":` + string(b) + `}`
	}
	return `{"prompt":"` + pdPrompt + `","max_tokens":5,"kv_transfer_params":` + string(b) + `}`
}

func idsJSON(ids []int) string {
	b, _ := json.Marshal(ids)
	return string(b)
}

func pathOf(api string) string {
	if api == "generate" {
		return "/inference/v1/generate"
	}
	return "/v1/completions"
}

// prefill runs a prefill leg and returns its kv_transfer_params.
func prefill(t *testing.T, p *testServer, api string) map[string]any {
	t.Helper()
	r := post(t, p.url+pathOf(api), prefillBody(api), "X-Request-Id", "pd-1")
	if r.status != 200 {
		t.Fatalf("prefill: %d %s", r.status, r.body)
	}
	kv, ok := r.json(t)["kv_transfer_params"].(map[string]any)
	if !ok {
		t.Fatalf("prefill returned no kv_transfer_params: %s", r.body)
	}
	return kv
}

func TestPrefillReturnsNixlParams(t *testing.T) {
	cfg := testConfig()
	cfg.Role, cfg.TensorParallelSize, cfg.EngineID = RolePrefill, 2, "engine-p"
	p := start(t, cfg)
	kv := prefill(t, p, "completions")
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(p.url, "http://"))
	want := map[string]any{
		"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": "engine-p",
		"remote_host": host, "remote_port": float64(mustAtoi(port)), "tp_size": 2.0,
	}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("%s = %#v, want %#v", k, kv[k], v)
		}
	}
	if ids, _ := kv["remote_block_ids"].([]any); len(ids) != 3 { // ceil(40/16)
		t.Errorf("remote_block_ids %v, want 3 blocks", kv["remote_block_ids"])
	}
	if id, _ := kv["remote_request_id"].(string); !strings.HasPrefix(id, "pd-1-") {
		t.Errorf("remote_request_id %q, want the internal id of request pd-1", id)
	}
	if st := p.Stats(); st.PrefillLegs != 1 || st.LeasesActive != 1 {
		t.Errorf("prefill legs %d, active leases %d; want 1 and 1", st.PrefillLegs, st.LeasesActive)
	}
	// Leased blocks stay in use until claimed: 3 of 65536.
	if v, _ := metricValue(metricsText(t, p), "vllm:kv_cache_usage_perc"); v == "0" || v == "" {
		t.Errorf("vllm:kv_cache_usage_perc = %q while a lease holds blocks", v)
	}
}

func TestPrefillThenDecode(t *testing.T) {
	forge := func(field string, v any) func(map[string]any) {
		return func(kv map[string]any) { kv[field] = v }
	}
	cases := []struct {
		name    string
		api     string
		tamper  func(map[string]any) // nil: send the params as returned
		prompt  string               // "" keeps the prefill prompt
		wantHit bool
	}{
		{name: "completions valid", api: "completions", wantHit: true},
		{name: "generate valid", api: "generate", wantHit: true},
		{name: "forged request id", api: "completions", tamper: forge("remote_request_id", "nope")},
		{name: "forged engine id", api: "completions", tamper: forge("remote_engine_id", "other-engine")},
		{name: "forged block ids", api: "completions", tamper: forge("remote_block_ids", []int{7, 8, 9})},
		{name: "unreachable prefill worker", api: "completions", tamper: forge("remote_port", 1)},
		{name: "incomplete params", api: "completions", tamper: func(kv map[string]any) { delete(kv, "remote_host") }},
		{name: "different prompt", api: "completions", prompt: "something else entirely"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pcfg, dcfg := testConfig(), testConfig()
			pcfg.Role, dcfg.Role = RolePrefill, RoleDecode
			// Prefill is expensive on D, so a hit shows in the decode leg's latency too.
			dcfg.PrefillPerToken = 2 * time.Millisecond
			p, d := start(t, pcfg), start(t, dcfg)
			kv := prefill(t, p, tc.api)
			if tc.tamper != nil {
				tc.tamper(kv)
			}
			body := decodeLegBody(tc.api, kv)
			if tc.prompt != "" {
				body = strings.Replace(body, pdPrompt, tc.prompt, 1)
			}
			t0 := time.Now()
			r := post(t, d.url+pathOf(tc.api), body, "X-Request-Id", "pd-1")
			took := time.Since(t0)
			if r.status != 200 {
				t.Fatalf("decode: %d %s", r.status, r.body)
			}
			ds, ps := d.Stats(), p.Stats()
			if ds.DecodeLegs != 1 {
				t.Errorf("decode legs %d, want 1", ds.DecodeLegs)
			}
			if tc.wantHit {
				if ds.KVTransferHits != 1 || ds.KVTransferMisses != 0 || ps.LeasesClaimed != 1 || ps.LeasesActive != 0 {
					t.Errorf("hits %d misses %d claimed %d active %d; want 1 0 1 0", ds.KVTransferHits, ds.KVTransferMisses, ps.LeasesClaimed, ps.LeasesActive)
				}
				if took > 60*time.Millisecond {
					t.Errorf("decode leg took %v: a hit skips the 80ms local prefill", took)
				}
				if tc.api == "completions" && get(r.json(t), "usage", "prompt_tokens_details", "cached_tokens") != 40.0 {
					t.Errorf("cached_tokens %v, want the 40 transferred", get(r.json(t), "usage", "prompt_tokens_details", "cached_tokens"))
				}
			} else {
				if ds.KVTransferHits != 0 || ds.KVTransferMisses != 1 {
					t.Errorf("hits %d misses %d; want a miss", ds.KVTransferHits, ds.KVTransferMisses)
				}
				if tc.prompt == "" && took < 70*time.Millisecond {
					t.Errorf("decode leg took %v: a miss recomputes the prefill locally", took)
				}
			}
			// vLLM's decode leg returns no kv_transfer_params of its own.
			if kv := r.json(t)["kv_transfer_params"]; kv != nil {
				t.Errorf("decode leg returned kv_transfer_params %v", kv)
			}
		})
	}
}

func TestClaimIsSingleUse(t *testing.T) {
	p, d := start(t, testConfig()), start(t, testConfig())
	kv := prefill(t, p, "completions")
	post(t, d.url+"/v1/completions", decodeLegBody("completions", kv))
	post(t, d.url+"/v1/completions", decodeLegBody("completions", kv))
	if st := d.Stats(); st.KVTransferHits != 1 || st.KVTransferMisses != 1 {
		t.Errorf("hits %d misses %d; the second claim of one lease must miss", st.KVTransferHits, st.KVTransferMisses)
	}
}

func TestUnclaimedLeaseExpires(t *testing.T) {
	cfg := testConfig()
	cfg.KVLeaseDuration = 30 * time.Millisecond
	p := start(t, cfg)
	kv := prefill(t, p, "completions")
	eventually(t, "the lease to expire", func() bool { return p.Stats().LeasesExpired == 1 })
	if st := p.Stats(); st.LeasesActive != 0 {
		t.Errorf("%d leases still active", st.LeasesActive)
	}
	text := metricsText(t, p)
	if v, _ := metricValue(text, "vllm:nixl_num_kv_expired_reqs_total"); v != "1" {
		t.Errorf("vllm:nixl_num_kv_expired_reqs_total = %q, want 1", v)
	}
	if v, _ := metricValue(text, "vllm:kv_cache_usage_perc"); v != "0" {
		t.Errorf("vllm:kv_cache_usage_perc = %q after expiry, want 0", v)
	}
	// A decode leg arriving after expiry recomputes.
	d := start(t, testConfig())
	post(t, d.url+"/v1/completions", decodeLegBody("completions", kv))
	if st := d.Stats(); st.KVTransferMisses != 1 {
		t.Errorf("late decode leg: misses %d, want 1", st.KVTransferMisses)
	}
}

// TestPrefillLegStoppedEarlyReturnsNoParams: like vLLM's NIXL scheduler, only a prefill
// leg that stopped on its length cap hands over KV.
func TestPrefillLegStoppedEarlyReturnsNoParams(t *testing.T) {
	cfg := testConfig()
	cfg.OutputTokens = 1
	p := start(t, cfg)
	body := strings.Replace(prefillBody("completions"), `"max_tokens":1`, `"max_tokens":4`, 1)
	m := post(t, p.url+"/v1/completions", body).json(t)
	if m["kv_transfer_params"] != nil || get(m, "choices", 0, "finish_reason") != "stop" {
		t.Errorf("kv_transfer_params %v after finish %v; want none after a stop", m["kv_transfer_params"], get(m, "choices", 0, "finish_reason"))
	}
	if st := p.Stats(); st.LeasesIssued != 0 {
		t.Errorf("%d leases issued", st.LeasesIssued)
	}
}

func TestSeparateSideChannelListener(t *testing.T) {
	cfg := testConfig()
	cfg.SideChannelListen = "127.0.0.1:0"
	p := start(t, cfg)
	kv := prefill(t, p, "completions")
	mainPort := strings.TrimPrefix(p.url, "http://127.0.0.1:")
	if strconv.Itoa(int(kv["remote_port"].(float64))) == mainPort {
		t.Fatalf("remote_port %v is the main port; want the side channel's", kv["remote_port"])
	}
	if r := post(t, p.url+kvClaimPath, `{}`); r.status != 404 {
		t.Errorf("claim on the main port: %d, want 404 when the side channel has its own listener", r.status)
	}
	d := start(t, testConfig())
	post(t, d.url+"/v1/completions", decodeLegBody("completions", kv))
	if st := d.Stats(); st.KVTransferHits != 1 {
		t.Errorf("hits %d, want 1 through the side channel listener", st.KVTransferHits)
	}
}

// TestKVLoadFailurePolicyFail: with vLLM's "fail" policy a decode leg whose KV cannot be
// loaded is an error, not a silent recompute, so a router's fallback gets exercised.
func TestKVLoadFailurePolicyFail(t *testing.T) {
	p := start(t, testConfig())
	dcfg := testConfig()
	dcfg.KVLoadFailurePolicy = "fail"
	d := start(t, dcfg)
	kv := prefill(t, p, "completions")
	kv["remote_request_id"] = "forged"
	r := post(t, d.url+"/v1/completions", decodeLegBody("completions", kv))
	if r.status != 500 || get(r.json(t), "error", "type") != "InternalServerError" {
		t.Errorf("non-streamed: %d %s, want a 500 InternalServerError", r.status, r.body)
	}
	body := strings.Replace(decodeLegBody("completions", kv), `"max_tokens":5`, `"max_tokens":5,"stream":true`, 1)
	resp, events, err := stream(t, d.url+"/v1/completions", body)
	if err != nil || resp.StatusCode != 200 || len(events) != 2 || events[1].data != "[DONE]" ||
		get(jsonOf(t, events[0].data), "error", "code") != 500.0 {
		t.Errorf("streamed: %v %v %v, want 200, an in-band error, [DONE]", err, resp.StatusCode, events)
	}
	// Params vLLM deems invalid are ignored, never a failure.
	delete(kv, "remote_host")
	if r := post(t, d.url+"/v1/completions", decodeLegBody("completions", kv)); r.status != 200 {
		t.Errorf("invalid params: %d, want a local prefill", r.status)
	}
}
