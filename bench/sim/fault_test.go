package sim

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func setFault(t *testing.T, ts *testServer, f string) {
	t.Helper()
	if r := post(t, ts.url+"/sim/fault", f); r.status != 200 {
		t.Fatalf("POST /sim/fault %s: %d %s", f, r.status, r.body)
	}
}

func TestFailRateIsSeededAndExact(t *testing.T) {
	outcomes := func() string {
		ts := start(t, testConfig())
		setFault(t, ts, `{"fail_rate":0.5,"fail_status":503,"seed":7}`)
		var b strings.Builder
		for i := 0; i < 40; i++ {
			r := post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`)
			switch r.status {
			case 200:
				b.WriteByte('.')
			case 503:
				if get(r.json(t), "error", "code") != 503.0 {
					t.Fatalf("failure body %s", r.body)
				}
				b.WriteByte('x')
			default:
				t.Fatalf("status %d", r.status)
			}
		}
		if st := ts.Stats(); int(st.InjectedFailures) != strings.Count(b.String(), "x") {
			t.Errorf("InjectedFailures %d for %s", st.InjectedFailures, b.String())
		}
		return b.String()
	}
	a, b := outcomes(), outcomes()
	if a != b {
		t.Errorf("same seed, different failures:\n%s\n%s", a, b)
	}
	if n := strings.Count(a, "x"); n < 10 || n > 30 {
		t.Errorf("%d of 40 failed at rate 0.5", n)
	}
}

func TestFaultKnobs(t *testing.T) {
	t.Run("fail all", func(t *testing.T) {
		ts := start(t, testConfig())
		setFault(t, ts, `{"fail_rate":1}`)
		r := post(t, ts.url+"/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`)
		if r.status != 500 || get(r.json(t), "error", "type") != "InternalServerError" {
			t.Errorf("%d %s, want a 500 InternalServerError", r.status, r.body)
		}
		if r := do(t, http.MethodGet, ts.url+"/health", ""); r.status != 200 {
			t.Errorf("/health %d: faults touch generation routes only", r.status)
		}
	})
	t.Run("health fail", func(t *testing.T) {
		ts := start(t, testConfig())
		setFault(t, ts, `{"health_fail":true}`)
		if r := do(t, http.MethodGet, ts.url+"/health", ""); r.status != 503 {
			t.Errorf("/health %d, want 503", r.status)
		}
		setFault(t, ts, `{}`)
		if r := do(t, http.MethodGet, ts.url+"/health", ""); r.status != 200 {
			t.Errorf("/health %d after clearing, want 200", r.status)
		}
	})
	t.Run("hang until cleared", func(t *testing.T) {
		ts := start(t, testConfig())
		setFault(t, ts, `{"hang":true}`)
		done := make(chan reply, 1)
		go func() { done <- post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`) }()
		eventually(t, "a hung request", func() bool { return ts.Stats().Hangs == 1 })
		select {
		case r := <-done:
			t.Fatalf("hung request answered %d", r.status)
		case <-time.After(50 * time.Millisecond):
		}
		setFault(t, ts, `{"hang":false}`)
		if r := <-done; r.status != 200 {
			t.Errorf("after clearing: %d", r.status)
		}
	})
	t.Run("slow factor", func(t *testing.T) {
		cfg := testConfig()
		cfg.TTFTBase, cfg.InterTokenLatency = 10*time.Millisecond, 0
		ts := start(t, cfg)
		setFault(t, ts, `{"slow_factor":8}`)
		t0 := time.Now()
		post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`)
		if took := time.Since(t0); took < 75*time.Millisecond {
			t.Errorf("took %v, want at least 8 x 10ms", took)
		}
	})
	t.Run("die mid stream", func(t *testing.T) {
		ts := start(t, testConfig())
		setFault(t, ts, `{"die_mid_stream_after":3}`)
		_, events, err := stream(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":10,"stream":true}`)
		if err == nil {
			t.Error("stream ended cleanly; want a broken connection")
		}
		if len(events) != 3 {
			t.Errorf("%d events before the cut, want 3", len(events))
		}
		eventually(t, "the cut to be counted", func() bool { return ts.Stats().StreamsCut == 1 })
		// A stream shorter than the cut ends normally.
		_, events, err = stream(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1,"stream":true}`)
		if err != nil || len(events) != 2 || events[1].data != "[DONE]" {
			t.Errorf("short stream: %v, %v", err, events)
		}
	})
}

func TestFaultEndpoint(t *testing.T) {
	ts := start(t, testConfig())
	cases := []struct {
		body   string
		status int
	}{
		{`{"fail_rate":0.25,"fail_status":502,"slow_factor":2,"die_mid_stream_after":4,"health_fail":true,"hang":false,"seed":3}`, 200},
		{`{"fail_rate":2}`, 400},
		{`{"fail_status":200}`, 400},
		{`{"unknown":1}`, 400},
		{`{"slow_factor":-1}`, 400},
	}
	for _, tc := range cases {
		if r := post(t, ts.url+"/sim/fault", tc.body); r.status != tc.status {
			t.Errorf("%s: %d, want %d", tc.body, r.status, tc.status)
		}
	}
	var f Fault
	if err := json.Unmarshal(do(t, http.MethodGet, ts.url+"/sim/fault", "").body, &f); err != nil {
		t.Fatal(err)
	}
	if f.FailStatus != 502 || f.DieMidStreamAfter != 4 || !f.HealthFail {
		t.Errorf("GET /sim/fault %+v: rejected bodies must not change the fault", f)
	}
}
