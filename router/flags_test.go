package router

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	cases := []struct {
		name  string
		args  string
		check func(t *testing.T, c Config)
	}{
		{"defaults match vllm-router", "", func(t *testing.T, c Config) {
			if c.Host != "127.0.0.1" || c.Port != 30000 || c.Policy != "cache_aware" || c.MaxPayloadSize != 512<<20 ||
				c.PrometheusPort != 29000 || c.PrometheusHost != "127.0.0.1" || c.RetryMaxRetries != 5 ||
				c.CBFailureThreshold != 10 || c.HealthCheckInterval != 60*time.Second || c.QueueSize != 100 ||
				strings.Join(c.RequestIDHeaders, " ") != "x-request-id x-correlation-id x-trace-id request-id" {
				t.Fatalf("defaults: %+v", c)
			}
			if c.RequestTimeout != 0 {
				t.Fatal("no total request cap by default")
			}
		}},
		{"multi-value flags take values until the next flag", "--worker-urls http://a:1 http://b:2 --policy round_robin", func(t *testing.T, c Config) {
			if len(c.WorkerURLs) != 2 || c.WorkerURLs[1] != "http://b:2" || c.Policy != "round_robin" {
				t.Fatalf("%v %s", c.WorkerURLs, c.Policy)
			}
		}},
		{"flag=value and underscores", "--port=8000 --log_level=debug", func(t *testing.T, c Config) {
			if c.Port != 8000 || c.LogLevel != "debug" {
				t.Fatalf("%d %s", c.Port, c.LogLevel)
			}
		}},
		{"P/D prefill with and without bootstrap port", "--vllm-pd-disaggregation --prefill http://p:1 none --prefill http://p:2 8998 --prefill http://p:3 --decode http://d:1 --decode http://d:2", func(t *testing.T, c Config) {
			if !c.PDDisaggregation || len(c.Prefill) != 3 || c.Prefill[1].BootstrapPort != 8998 || c.Prefill[0].BootstrapPort != 0 || len(c.Decode) != 2 {
				t.Fatalf("%+v %v", c.Prefill, c.Decode)
			}
		}},
		{"unsupported flags are accepted and listed once", "--service-discovery --selector app=x --mini-lb --service-discovery", func(t *testing.T, c Config) {
			if strings.Join(c.Ignored, ",") != "--service-discovery,--selector,--mini-lb" {
				t.Fatalf("ignored %v", c.Ignored)
			}
		}},
		{"seconds accept fractions", "--health-check-interval-secs 0.5 --request-timeout-secs 14400", func(t *testing.T, c Config) {
			if c.HealthCheckInterval != 500*time.Millisecond || c.RequestTimeout != 4*time.Hour {
				t.Fatalf("%v %v", c.HealthCheckInterval, c.RequestTimeout)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseFlags(strings.Fields(tc.args), nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, args := range []string{
		"--port abc", "--port 70000", "--policy nope", "--no-such-flag", "--worker-urls ftp://x:1",
		"--worker-urls http://x", "--prefill http://p:1 notaport --vllm-pd-disaggregation", "--decode http://d:1",
		"--retry-jitter-factor 2", "--log-level loud", "--max-payload-size 0", "--host", "stray",
		"--vllm-pd-disaggregation --worker-urls http://a:1", "--intra-node-data-parallel-size 0",
	} {
		if _, err := ParseFlags(strings.Fields(args), nil); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// A bad flag value prints a clear message and exits 2; --help lists the flags grouped.
func TestMainExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--port", "x"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--port") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	out.Reset()
	if code := Main([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, g := range []string{"Server:", "Policy:", "Prefill/decode:", "Reliability:", "--worker-urls", "--vllm-pd-disaggregation", "--cb-failure-threshold"} {
		if !strings.Contains(out.String(), g) {
			t.Errorf("help lacks %s", g)
		}
	}
}
