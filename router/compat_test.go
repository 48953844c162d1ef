package router

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
	"github.com/switchyard/switchyard/policy"
)

func fastSim() sim.Config {
	c := sim.DefaultConfig()
	c.TTFTBase, c.InterTokenLatency, c.PrefillPerToken = time.Millisecond, time.Millisecond, 0
	return c
}

func chat(model string, i int) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"turn %d"}],"max_tokens":4}`, model, i)
}

// prime-rl's own router command lines (research vllm-router.md §2.1, §2.2), verbatim but
// for ports, start the router and route multi-turn sessions correctly.
func TestPrimeRLCommandLines(t *testing.T) {
	dp := fastSim()
	dp.DataParallelSize = 2
	single, singleSim := startSim(t, dp)
	w1, _ := startSim(t, fastSim())
	w2, _ := startSim(t, fastSim())
	pre, preSim := startSim(t, func() sim.Config { c := fastSim(); c.Role = "prefill"; return c }())
	dec, decSim := startSim(t, func() sim.Config { c := fastSim(); c.Role = "decode"; return c }())
	cases := []struct {
		name    string
		cmdline string
		check   func(t *testing.T)
	}{
		{"single node (inference.py start_router)",
			"--policy consistent_hash --host 0.0.0.0 --port 0 --worker-urls " + single +
				" --intra-node-data-parallel-size 2 --request-id-headers x-session-id --worker-startup-timeout-secs 4200 --prometheus-port 0 --request-timeout-secs 14400",
			func(t *testing.T) {
				st := singleSim.Stats()
				if len(st.ByEngine) != 2 {
					t.Fatalf("requests by DP engine %v: want both ranks used", st.ByEngine)
				}
			}},
		{"multi-node (_launch_router.sh.j2)",
			"--policy sticky_least_loaded --host 0.0.0.0 --port 0 --request-id-headers x-session-id --prometheus-port 0 --worker-startup-timeout-secs 4200 --log-level debug --worker-urls " + w1 + " " + w2,
			nil},
		{"disaggregated (_launch_router.sh.j2)",
			"--policy consistent_hash --host 0.0.0.0 --port 0 --request-id-headers x-session-id --prometheus-port 0 --worker-startup-timeout-secs 4200 --log-level debug --vllm-pd-disaggregation --prefill " + pre + " --decode " + dec,
			func(t *testing.T) {
				if p, d := preSim.Stats(), decSim.Stats(); p.PrefillLegs == 0 || d.DecodeLegs != p.PrefillLegs || d.KVTransferHits != p.PrefillLegs {
					t.Fatalf("prefill legs %d, decode legs %d, kv hits %d", p.PrefillLegs, d.DecodeLegs, d.KVTransferHits)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := StartArgs(strings.Fields(tc.cmdline), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown(t.Context())
			addr := strings.Replace(srv.Addr(), "[::]", "127.0.0.1", 1)
			addr = strings.Replace(addr, "0.0.0.0", "127.0.0.1", 1)
			waitFor(t, "ready", func() bool { _, _, ok := srv.ready(srv.pool.load()); return ok })
			for s := 0; s < 6; s++ {
				var worker string
				for turn := 0; turn < 3; turn++ {
					sid := fmt.Sprintf("traj-%d", s)
					resp, b := post(t, "http://"+addr+"/v1/chat/completions", chat(fastSim().Model, turn), map[string]string{"X-Session-ID": sid})
					if resp.StatusCode != 200 {
						t.Fatalf("status %d %s", resp.StatusCode, b)
					}
					if resp.Header.Get("x-request-id") != sid {
						t.Fatalf("x-request-id %q, want the session id", resp.Header.Get("x-request-id"))
					}
					w := resp.Header.Get("X-Switchyard-Worker")
					if turn == 0 {
						worker = w
					} else if w != worker {
						t.Fatalf("session %s moved from %s to %s", sid, worker, w)
					}
				}
				post(t, "http://"+addr+"/finish_session?session_id="+fmt.Sprintf("traj-%d", s), "", nil)
			}
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
}

func TestControlRoutes(t *testing.T) {
	w1, s1 := startSim(t, fastSim())
	w2, s2 := startSim(t, fastSim())
	srv := startRouter(t, "--policy", "sticky_least_loaded", "--worker-urls", w1, w2, "--worker-startup-timeout-secs", "5")
	waitForHealthy(t, srv, 2)
	base := "http://" + srv.Addr()
	jsonOf := func(b []byte) map[string]any {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %s", b)
		}
		return m
	}
	t.Run("health liveness readiness", func(t *testing.T) {
		for _, p := range []string{"/health", "/liveness", "/readiness"} {
			if resp, b := get(t, base+p); resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", p, resp.StatusCode, b)
			}
		}
		_, b := get(t, base+"/readiness")
		if m := jsonOf(b); m["status"] != "ready" || m["healthy_workers"].(float64) != 2 {
			t.Fatalf("readiness %v", m)
		}
	})
	t.Run("list_workers and workers", func(t *testing.T) {
		_, b := get(t, base+"/list_workers")
		if m := jsonOf(b); len(m["urls"].([]any)) != 2 {
			t.Fatalf("%v", m)
		}
		_, b = get(t, base+"/workers")
		m := jsonOf(b)
		ws := m["workers"].([]any)
		if len(ws) != 2 || m["total"].(float64) != 2 || ws[0].(map[string]any)["is_healthy"] != true {
			t.Fatalf("%v", m)
		}
		resp, b := get(t, base+"/workers/"+url.PathEscape(w1))
		if resp.StatusCode != 200 || jsonOf(b)["url"] != w1 {
			t.Fatalf("GET /workers/{url}: %d %s", resp.StatusCode, b)
		}
		if resp, _ := get(t, base+"/workers/"+url.PathEscape("http://127.0.0.1:1")); resp.StatusCode != 404 {
			t.Fatalf("unknown worker: %d", resp.StatusCode)
		}
	})
	t.Run("get_loads counts streams in flight", func(t *testing.T) {
		req, _ := http.NewRequest("POST", base+"/v1/completions", strings.NewReader(fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":2000,"min_tokens":2000,"stream":true}`, fastSim().Model)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatal(err, resp.StatusCode)
		}
		buf := make([]byte, 10)
		resp.Body.Read(buf) // the stream has started
		_, b := get(t, base+"/get_loads")
		total := 0.0
		for _, w := range jsonOf(b)["workers"].([]any) {
			total += w.(map[string]any)["load"].(float64)
		}
		resp.Body.Close()
		if total != 1 {
			t.Fatalf("loads %s: want 1 in flight", b)
		}
	})
	t.Run("finish_session releases a sticky session", func(t *testing.T) {
		post(t, base+"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":1}`, fastSim().Model), map[string]string{"X-Session-ID": "done-1"})
		sp := srv.policy.(*policy.StickyLeastLoaded)
		before := sp.Sessions()
		resp, b := post(t, base+"/finish_session?session_id=done-1", "", nil)
		if resp.StatusCode != 200 || jsonOf(b)["success"] != true || sp.Sessions() != before-1 {
			t.Fatalf("%d %s; sessions %d → %d", resp.StatusCode, b, before, sp.Sessions())
		}
		if resp, _ := post(t, base+"/finish_session", "", nil); resp.StatusCode != 400 {
			t.Fatalf("missing session_id: %d", resp.StatusCode)
		}
	})
	t.Run("fan-out pause resume update_weights flush_cache", func(t *testing.T) {
		for _, p := range []string{"/pause?mode=keep", "/resume", "/update_weights", "/flush_cache"} {
			resp, b := post(t, base+p, `{"weight_dir":"/tmp/w"}`, nil)
			m := jsonOf(b)
			if resp.StatusCode != 200 || m["success"] != true || len(m["workers"].([]any)) != 2 {
				t.Fatalf("%s: %d %s", p, resp.StatusCode, b)
			}
		}
		if resp, _ := get(t, base+"/pause"); resp.StatusCode != 405 {
			t.Fatalf("GET /pause: %d, want 405", resp.StatusCode)
		}
	})
	t.Run("v1/models from a healthy worker when the first is down", func(t *testing.T) {
		srv.pool.SetHealthy(srv.pool.load().regular[0].id, false)
		defer srv.pool.SetHealthy(srv.pool.load().regular[0].id, true)
		resp, b := get(t, base+"/v1/models")
		if resp.StatusCode != 200 || !strings.Contains(string(b), fastSim().Model) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	})
	t.Run("remove_worker, add_worker, DELETE and POST /workers", func(t *testing.T) {
		if resp, b := post(t, base+"/remove_worker?url="+url.QueryEscape(w2), "", nil); resp.StatusCode != 200 {
			t.Fatalf("remove: %d %s", resp.StatusCode, b)
		}
		if n := len(srv.pool.load().regular); n != 1 {
			t.Fatalf("%d workers after remove", n)
		}
		if resp, b := post(t, base+"/add_worker?url="+url.QueryEscape(w2), "", nil); resp.StatusCode != 200 {
			t.Fatalf("add: %d %s", resp.StatusCode, b)
		}
		if resp, _ := post(t, base+"/add_worker?url="+url.QueryEscape(w2), "", nil); resp.StatusCode != 409 {
			t.Fatalf("duplicate add: %d, want 409", resp.StatusCode)
		}
		if resp, _ := post(t, base+"/add_worker?url=notaurl", "", nil); resp.StatusCode != 400 {
			t.Fatalf("bad url: %d", resp.StatusCode)
		}
		start := time.Now()
		if resp, _ := post(t, base+"/add_worker?url="+url.QueryEscape("http://127.0.0.1:1"), "", nil); resp.StatusCode != 400 || time.Since(start) < 4*time.Second {
			t.Fatalf("dead worker: %d after %v, want 400 after waiting the startup timeout", resp.StatusCode, time.Since(start))
		}
		req, _ := http.NewRequest("DELETE", base+"/workers/"+url.PathEscape(w2), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("DELETE: %v %v", err, resp)
		}
		resp2, b := post(t, base+"/workers", `{"url":"`+w2+`"}`, nil)
		if resp2.StatusCode != 200 || len(srv.pool.load().regular) != 2 {
			t.Fatalf("POST /workers: %d %s", resp2.StatusCode, b)
		}
		if resp, _ := post(t, base+"/workers", `{"url":`, nil); resp.StatusCode != 400 {
			t.Fatal("bad JSON accepted")
		}
	})
	_ = s1
	_ = s2
}

// The admin key guards worker management and fan-out; the API key guards data routes;
// probes stay open.
func TestAuth(t *testing.T) {
	w, _ := startSim(t, fastSim())
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w, "--api-key", "client-key", "--admin-api-key", "admin-key")
	waitForHealthy(t, srv, 1)
	base := "http://" + srv.Addr()
	cases := []struct {
		method, path, key string
		want              int
	}{
		{"POST", "/v1/completions", "", 401},
		{"POST", "/v1/completions", "wrong", 401},
		{"POST", "/v1/completions", "client-key", 200},
		{"GET", "/health", "", 200},
		{"GET", "/readiness", "", 200},
		{"POST", "/pause", "client-key", 401},
		{"POST", "/pause", "admin-key", 200},
		{"POST", "/remove_worker?url=http://127.0.0.1:1", "client-key", 401},
		{"GET", "/list_workers", "", 401},
		{"GET", "/list_workers", "client-key", 200},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":1}`, fastSim().Model)))
		req.Header.Set("Content-Type", "application/json")
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s with %q: %d, want %d (%s)", tc.method, tc.path, tc.key, resp.StatusCode, tc.want, b)
		}
	}
}

// Data-parallel ranks: one URL becomes url@0..url@N-1, each request names its rank, and an
// offset addresses the global ranks a hybrid deployment's node owns (vllm-router PR #210).
func TestDataParallelRanks(t *testing.T) {
	cfg := fastSim()
	cfg.DataParallelSize = 8
	w, ws := startSim(t, cfg)
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w, "--intra-node-data-parallel-size", "2", "--dp-rank-offset", "4")
	waitForHealthy(t, srv, 2)
	ids := []string{srv.pool.load().regular[0].id, srv.pool.load().regular[1].id}
	if ids[0] != w+"@0" || ids[1] != w+"@1" {
		t.Fatalf("rank ids %v", ids)
	}
	for i := 0; i < 6; i++ {
		if resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":1}`, cfg.Model), nil); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	if st := ws.Stats(); st.ByEngine["4"] != 3 || st.ByEngine["5"] != 3 || len(st.ByEngine) != 2 {
		t.Fatalf("requests by engine %v, want 3 each on global ranks 4 and 5", st.ByEngine)
	}
}

// The vllm_router_* series existing dashboards read are exported with their labels.
func TestVLLMRouterMetricNames(t *testing.T) {
	w, _ := startSim(t, fastSim())
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w)
	waitForHealthy(t, srv, 1)
	post(t, "http://"+srv.Addr()+"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"x","max_tokens":1}`, fastSim().Model), nil)
	post(t, "http://"+srv.Addr()+"/v1/completions", `not json`, nil)
	_, m := get(t, "http://"+srv.MetricsAddr()+"/metrics")
	for _, want := range []string{
		`vllm_router_requests_total{route="/v1/completions"}`,
		`vllm_router_request_duration_seconds_bucket{route="/v1/completions",le=`,
		`vllm_router_active_workers 1`,
		`vllm_router_worker_health{worker="` + w + `"} 1`,
		`vllm_router_worker_load{worker="` + w + `"} 0`,
		`vllm_router_running_requests{worker="` + w + `"} 0`,
		`vllm_router_processed_requests_total{worker="` + w + `"} 2`,
		`vllm_router_policy_decisions_total{policy="round_robin",worker="` + w + `"} 2`,
		`vllm_router_cb_state{worker="` + w + `"} 0`,
	} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestCORS(t *testing.T) {
	w, _ := startSim(t, fastSim())
	srv := startRouter(t, "--policy", "round_robin", "--worker-urls", w, "--cors-allowed-origins", "https://ok.example")
	waitForHealthy(t, srv, 1)
	req, _ := http.NewRequest("OPTIONS", "http://"+srv.Addr()+"/v1/completions", nil)
	req.Header.Set("Origin", "https://ok.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://ok.example" {
		t.Fatalf("preflight: %v %v", err, resp)
	}
	req.Header.Set("Origin", "https://evil.example")
	resp, _ = http.DefaultClient.Do(req)
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("disallowed origin got CORS headers")
	}
}
