package router

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/switchyard/switchyard/bench/sim"
)

const kvParams = `{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":"eng-1","remote_block_ids":[4,5,6],"remote_host":"10.0.0.1","remote_port":5600,"remote_request_id":"r-1","tp_size":1}`

// prefillOK answers a prefill leg the way vLLM's NixlConnector does.
func prefillOK(w http.ResponseWriter, r *http.Request, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"cmpl-p","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"length"}],"kv_transfer_params":%s}`, kvParams)
}

func pdRouter(t *testing.T, prefill, decode []*fakeWorker, extra ...string) *Server {
	t.Helper()
	args := []string{"--policy", "round_robin", "--vllm-pd-disaggregation"}
	for _, p := range prefill {
		args = append(args, "--prefill", p.URL, "none")
	}
	for _, d := range decode {
		args = append(args, "--decode", d.URL)
	}
	srv := startRouter(t, append(args, extra...)...)
	waitForHealthy(t, srv, len(prefill)+len(decode))
	return srv
}

func TestPDBodiesAndStreaming(t *testing.T) {
	p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
	p.setHandler(prefillOK)
	d.setHandler(sseHandler(3, 150*time.Millisecond))
	srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
	client := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"min_tokens":5,"temperature":0.7}`
	req, _ := http.NewRequest("POST", "http://"+srv.Addr()+"/v1/chat/completions", strings.NewReader(client))
	req.Header.Set("X-Request-ID", "rid-7")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var arrivals []time.Time
	buf := make([]byte, 4096)
	all := ""
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			arrivals = append(arrivals, time.Now())
			all += string(buf[:n])
			if len(arrivals) == 1 {
				if got := srv.pool.load().decode[0].InFlight(); got != 1 {
					t.Errorf("decode in-flight during its stream = %d, want 1", got)
				}
				if got := srv.pool.load().prefill[0].InFlight(); got != 0 {
					t.Errorf("prefill in-flight after prefill = %d, want 0", got)
				}
			}
		}
		if err != nil {
			break
		}
	}
	if resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" || resp.Header.Get("x-request-id") != "rid-7" {
		t.Fatalf("headers %v", resp.Header)
	}
	if len(arrivals) < 3 || arrivals[len(arrivals)-1].Sub(arrivals[0]) < 250*time.Millisecond || !strings.HasSuffix(all, "data: [DONE]\n\n") {
		t.Fatalf("decode not streamed event by event: %d reads, body %q", len(arrivals), all)
	}
	pre, dec := p.received()[0], d.received()[0]
	wantPrefill := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"max_tokens":1,"min_tokens":1,"temperature":0.7,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}}`
	if string(pre.body) != wantPrefill {
		t.Errorf("prefill body\n got %s\nwant %s", pre.body, wantPrefill)
	}
	wantDecode := strings.TrimSuffix(client, "}") + `,"kv_transfer_params":` + kvParams + `}`
	if string(dec.body) != wantDecode {
		t.Errorf("decode body\n got %s\nwant %s", dec.body, wantDecode)
	}
	if pre.header.Get("X-Request-Id") != "rid-7" || dec.header.Get("X-Request-Id") != "rid-7" {
		t.Errorf("request ids: prefill %q decode %q, want rid-7 on both", pre.header.Get("X-Request-Id"), dec.header.Get("X-Request-Id"))
	}
}

func TestPDFailureSemantics(t *testing.T) {
	origBody := `{"model":"m","prompt":"hello","max_tokens":5}`
	t.Run("prefill 4xx goes to the client", func(t *testing.T) {
		p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
		p.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			w.Write([]byte(`{"error":{"message":"This model's maximum context length is 10 tokens"}}`))
		})
		srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
		resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", origBody, nil)
		if resp.StatusCode != 400 || !strings.Contains(string(b), "maximum context length") || len(d.received()) != 0 {
			t.Fatalf("got %d %s; decode called %d times", resp.StatusCode, b, len(d.received()))
		}
	})
	t.Run("prefill 5xx: retry on another prefill, then decode alone", func(t *testing.T) {
		p0, p1, d := newFakeWorker(t, "p0"), newFakeWorker(t, "p1"), newFakeWorker(t, "d0")
		fail := func(w http.ResponseWriter, r *http.Request, body []byte) { w.WriteHeader(500) }
		p0.setHandler(fail)
		p1.setHandler(fail)
		srv := pdRouter(t, []*fakeWorker{p0, p1}, []*fakeWorker{d})
		resp, _ := post(t, "http://"+srv.Addr()+"/v1/completions", origBody, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if len(p0.received())+len(p1.received()) != 2 || len(p0.received()) != 1 {
			t.Fatalf("prefill attempts p0=%d p1=%d, want one each", len(p0.received()), len(p1.received()))
		}
		if got := string(d.received()[0].body); got != origBody {
			t.Fatalf("decode got %s, want the original body", got)
		}
		_, m := get(t, "http://"+srv.MetricsAddr()+"/metrics")
		if !strings.Contains(string(m), "switchyard_pd_fallbacks_total 1") || !strings.Contains(string(m), "switchyard_pd_prefill_retries_total 1") {
			t.Fatal("fallback or retry not counted")
		}
	})
	t.Run("prefill without kv_transfer_params: decode gets the original body", func(t *testing.T) {
		p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
		srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
		post(t, "http://"+srv.Addr()+"/v1/completions", origBody, nil)
		if got := string(d.received()[0].body); got != origBody {
			t.Fatalf("decode got %s", got)
		}
	})
	t.Run("decode fails before any byte: retried elsewhere with the same params", func(t *testing.T) {
		p, d0, d1 := newFakeWorker(t, "p0"), newFakeWorker(t, "d0"), newFakeWorker(t, "d1")
		p.setHandler(prefillOK)
		d0.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) { w.WriteHeader(503) })
		srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d0, d1})
		// Round robin sends at least one of two requests to d0 first.
		for i := 0; i < 2; i++ {
			if resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", origBody, nil); resp.StatusCode != 200 {
				t.Fatalf("status %d %s", resp.StatusCode, b)
			}
		}
		if len(d0.received()) == 0 || len(d1.received()) != 2 {
			t.Fatalf("decode attempts d0=%d d1=%d, want ≥1 and 2", len(d0.received()), len(d1.received()))
		}
		for _, failed := range d0.received() {
			if !strings.Contains(string(failed.body), `"remote_engine_id":"eng-1"`) || string(failed.body) != string(d1.received()[0].body) {
				t.Fatal("the retry did not carry the same kv_transfer_params")
			}
		}
	})
	t.Run("decode fails after bytes: in-band error then [DONE]", func(t *testing.T) {
		p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
		p.setHandler(prefillOK)
		d.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			fmt.Fprint(w, "data: {\"i\":0}\n\n")
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		})
		srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
		_, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{"stream":true,"messages":[]}`, nil)
		s := string(b)
		if !strings.Contains(s, `data: {"i":0}`) || !strings.Contains(s, `"error"`) || !strings.HasSuffix(s, "data: [DONE]\n\n") {
			t.Fatalf("body %q", s)
		}
	})
	t.Run("malformed JSON is the client's error", func(t *testing.T) {
		p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
		srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
		resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":`, nil)
		if resp.StatusCode != 400 || !strings.Contains(string(b), "invalid JSON") || len(p.received()) != 0 {
			t.Fatalf("got %d %s", resp.StatusCode, b)
		}
	})
}

// startSim runs an in-process simulator on a free port.
func startSim(t *testing.T, cfg sim.Config) (string, *sim.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Name = ln.Addr().String()
	s, err := sim.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown() })
	return "http://" + ln.Addr().String(), s
}

// Against the simulator's NIXL semantics: every decode claims the KV its prefill left,
// and no prefill lease is stranded.
func TestPDAgainstSimulator(t *testing.T) {
	cfg := sim.DefaultConfig()
	cfg.TTFTBase, cfg.InterTokenLatency, cfg.PrefillPerToken = time.Millisecond, time.Millisecond, 0
	pc, dc := cfg, cfg
	pc.Role, dc.Role = sim.Role("prefill"), sim.Role("decode")
	pURL, pSim := startSim(t, pc)
	dURL, dSim := startSim(t, dc)
	srv := startRouter(t, "--policy", "consistent_hash", "--vllm-pd-disaggregation", "--prefill", pURL, "none", "--decode", dURL)
	waitForHealthy(t, srv, 2)
	for i := 0; i < 10; i++ {
		stream := i%2 == 0
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"turn %d of a long enough agentic prompt to span blocks, %s"}],"max_tokens":8,"stream":%v}`,
			cfg.Model, i, strings.Repeat("word ", 40), stream)
		resp, b := post(t, "http://"+srv.Addr()+"/v1/chat/completions", body, map[string]string{"X-Session-ID": fmt.Sprintf("s%d", i%3)})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		if !stream {
			var out struct{ Choices []json.RawMessage }
			if json.Unmarshal(b, &out) != nil || len(out.Choices) != 1 {
				t.Fatalf("bad answer %s", b)
			}
		}
	}
	ps, ds := pSim.Stats(), dSim.Stats()
	if ps.PrefillLegs != 10 || ds.DecodeLegs != 10 || ds.KVTransferHits != 10 || ds.KVTransferMisses != 0 {
		t.Fatalf("prefill legs %d, decode legs %d, kv hits %d misses %d", ps.PrefillLegs, ds.DecodeLegs, ds.KVTransferHits, ds.KVTransferMisses)
	}
	if ps.LeasesExpired != 0 || ps.LeasesActive != 0 || ps.LeasesClaimed != 10 {
		t.Fatalf("leases: claimed %d, active %d, expired %d — KV stranded", ps.LeasesClaimed, ps.LeasesActive, ps.LeasesExpired)
	}
}

// Router replay: a non-streaming generate through P/D carries prefill's prompt rows of
// routed_experts stitched with decode's completion rows, and prefill's prompt_token_ids.
func TestPDRouterReplay(t *testing.T) {
	cfg := fastSim()
	cfg.ReturnRoutedExperts = true
	pc, dc := cfg, cfg
	pc.Role, dc.Role = "prefill", "decode"
	pURL, _ := startSim(t, pc)
	dURL, _ := startSim(t, dc)
	srv := startRouter(t, "--policy", "round_robin", "--vllm-pd-disaggregation", "--prefill", pURL, "--decode", dURL)
	waitForHealthy(t, srv, 2)
	prompt := make([]int, 40)
	for i := range prompt {
		prompt[i] = 100 + i
	}
	body, _ := json.Marshal(map[string]any{"model": cfg.Model, "token_ids": prompt,
		"sampling_params": map[string]any{"max_tokens": 6, "min_tokens": 6, "prompt_logprobs": 1}})
	resp, b := post(t, "http://"+srv.Addr()+"/inference/v1/generate", string(body), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var out struct {
		PromptTokenIDs []int `json:"prompt_token_ids"`
		PromptLogprobs []any `json:"prompt_logprobs"`
		Choices        []struct {
			TokenIDs      []int `json:"token_ids"`
			RoutedExperts struct {
				Data  string `json:"data"`
				Shape []int  `json:"shape"`
				Start int    `json:"start"`
			} `json:"routed_experts"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Choices) != 1 {
		t.Fatalf("%v %s", err, b)
	}
	re := out.Choices[0].RoutedExperts
	if len(out.PromptTokenIDs) != 40 || len(out.PromptLogprobs) != 40 {
		t.Fatalf("prompt_token_ids %d, prompt_logprobs %d: want 40 each", len(out.PromptTokenIDs), len(out.PromptLogprobs))
	}
	if len(re.Shape) != 3 || re.Shape[0] < 40+len(out.Choices[0].TokenIDs)-1 || re.Shape[1] != cfg.RoutedExpertLayers {
		t.Fatalf("routed_experts shape %v for 40 prompt + %d completion tokens", re.Shape, len(out.Choices[0].TokenIDs))
	}
	data, err := base64.StdEncoding.DecodeString(re.Data)
	if err != nil || len(data) != re.Shape[0]*re.Shape[1]*re.Shape[2] {
		t.Fatalf("data %d bytes for shape %v (%v)", len(data), re.Shape, err)
	}
	// Prompt rows are prefill's: the simulator derives them from position and token.
	for pos := 0; pos < 40; pos++ {
		for l := 0; l < re.Shape[1]; l++ {
			for k := 0; k < re.Shape[2]; k++ {
				if got, want := data[(pos*re.Shape[1]+l)*re.Shape[2]+k], sim.RoutedExpert(re.Start+pos, prompt[re.Start+pos], l, k); got != want {
					t.Fatalf("row %d layer %d k %d: %d, want %d", pos, l, k, got, want)
				}
			}
		}
	}
}

// A client that leaves during prefill gets no decode started on its behalf.
func TestPDClientGoneDuringPrefill(t *testing.T) {
	p, d := newFakeWorker(t, "p0"), newFakeWorker(t, "d0")
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	p.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
		arrived <- struct{}{}
		<-release
		prefillOK(w, r, body)
	})
	srv := pdRouter(t, []*fakeWorker{p}, []*fakeWorker{d})
	conn, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	body := `{"prompt":"x","max_tokens":5}`
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	<-arrived
	conn.Close() // on loopback the FIN is queued at the router's socket when Close returns
	close(release)
	waitFor(t, "the router to drop the request", func() bool {
		_, m := get(t, "http://"+srv.MetricsAddr()+"/metrics")
		return strings.Contains(string(m), `vllm_router_pd_errors_total{error_type="client_gone_before_decode"} 1`)
	})
	if n := len(d.received()); n != 0 {
		t.Fatalf("decode started %d times for a departed client", n)
	}
}

// consistent_hash pins each session to one prefill worker and one decode worker (separate
// rings), and the client's session header reaches both legs.
func TestPDSessionAffinityBothStages(t *testing.T) {
	p0, p1, d0, d1 := newFakeWorker(t, "p0"), newFakeWorker(t, "p1"), newFakeWorker(t, "d0"), newFakeWorker(t, "d1")
	p0.setHandler(prefillOK)
	p1.setHandler(prefillOK)
	args := []string{"--policy", "consistent_hash", "--vllm-pd-disaggregation", "--prefill", p0.URL, "--prefill", p1.URL, "--decode", d0.URL, "--decode", d1.URL}
	srv := startRouter(t, args...)
	waitForHealthy(t, srv, 4)
	for s := 0; s < 12; s++ {
		for turn := 0; turn < 3; turn++ {
			post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":"x","max_tokens":2}`, map[string]string{"X-Session-ID": fmt.Sprintf("sess-%d", s)})
		}
	}
	for _, stage := range [][]*fakeWorker{{p0, p1}, {d0, d1}} {
		owner := map[string]string{}
		for _, w := range stage {
			for _, r := range w.received() {
				sid := r.header.Get("X-Session-Id")
				if sid == "" {
					t.Fatalf("%s got a leg without the session header", w.name)
				}
				if o, ok := owner[sid]; ok && o != w.name {
					t.Fatalf("session %s split between %s and %s", sid, o, w.name)
				}
				owner[sid] = w.name
			}
		}
		if len(owner) != 12 {
			t.Fatalf("%d sessions seen, want 12", len(owner))
		}
	}
}

// A prefill worker that times out or refuses connections is replaced by another prefill
// worker; decode still gets real kv_transfer_params.
func TestPDPrefillTimeoutAndConnectionError(t *testing.T) {
	for _, tc := range []string{"timeout", "connection refused"} {
		t.Run(tc, func(t *testing.T) {
			bad, good, d := newFakeWorker(t, "bad"), newFakeWorker(t, "good"), newFakeWorker(t, "d0")
			good.setHandler(prefillOK)
			bad.setHandler(func(w http.ResponseWriter, r *http.Request, body []byte) {
				select {
				case <-time.After(3 * time.Second):
				case <-r.Context().Done():
				}
			})
			srv := pdRouter(t, []*fakeWorker{bad, good}, []*fakeWorker{d}, "--response-header-timeout-secs", "0.3")
			if tc == "connection refused" {
				bad.Close() // still healthy in the router's eyes until its next check
			}
			for i := 0; i < 2; i++ { // round robin: one of the two starts on the bad worker
				if resp, b := post(t, "http://"+srv.Addr()+"/v1/completions", `{"prompt":"x","max_tokens":3}`, nil); resp.StatusCode != 200 {
					t.Fatalf("status %d %s", resp.StatusCode, b)
				}
			}
			for _, r := range d.received() {
				if !strings.Contains(string(r.body), `"remote_engine_id":"eng-1"`) {
					t.Fatalf("decode fell back although another prefill worker was up: %s", r.body)
				}
			}
			if len(good.received()) != 2 {
				t.Fatalf("good prefill worker served %d legs, want 2", len(good.received()))
			}
		})
	}
}
