package sim

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseVLLMServeArgv(t *testing.T) {
	t.Setenv("VLLM_API_KEY", "")
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "")
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_PORT", "")
	argv := strings.Fields(`serve Qwen/Qwen3-8B --port 8100 --host 127.0.0.2 --tensor-parallel-size 2
		--data-parallel-size 4 --data-parallel-rank 1 --enable-expert-parallel --gpu-memory-utilization 0.92
		--max-model-len 40960 --max-num-seqs 64 --block-size 32 --enforce-eager --no-enable-log-requests
		--compilation-config {"level":3} --all2all-backend=deepep_low_latency --trust-remote-code
		--served-model-name qwen-a qwen-b --api-key secret --kv-transfer-config.kv_connector NixlConnector
		--enable-return-routed-experts --max_num_batched_tokens 8192`)
	argv = append(argv, "--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_load_failure_policy":"fail","kv_connector_extra_config":{"kv_lease_duration":12}}`)
	o, err := parseArgs(argv)
	if err != nil {
		t.Fatalf("parseArgs: %v", err)
	}
	c := o.cfg
	checks := []struct {
		name      string
		got, want any
	}{
		{"host", o.host, "127.0.0.2"},
		{"port", o.port, 8100},
		{"model", c.Model, "qwen-a"},
		{"aliases", strings.Join(c.ModelAliases, ","), "qwen-b"},
		{"tp", c.TensorParallelSize, 2},
		{"dp", c.DataParallelSize, 4},
		{"dp rank", c.DataParallelRank, 1},
		{"external lb", c.DataParallelExternalLB, true},
		{"max model len", c.MaxModelLen, 40960},
		{"max num seqs", c.MaxNumSeqs, 64},
		{"block size", c.BlockSize, 32},
		{"api key", strings.Join(c.APIKeys, ","), "secret"},
		{"lease", c.KVLeaseDuration, 12 * time.Second},
		{"load failure policy", c.KVLoadFailurePolicy, "fail"},
		{"routed experts", c.ReturnRoutedExperts, true},
		{"ignored", len(o.ignored), 9},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v (ignored: %q)", ch.name, ch.got, ch.want, o.ignored)
		}
	}
}

func TestParseSimFlagsAndEnv(t *testing.T) {
	t.Setenv("VLLM_API_KEY", "from-env")
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "127.0.0.9")
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600")
	o, err := parseArgs([]string{"--port=0", "--role", "prefill", "--ttft", "3ms", "--itl=1ms", "--fail-rate", "0.1",
		"--hang", "--health-fail=false", "--seed", "9", "--data-parallel-rank", "2", "--name", "p0"})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.Role != RolePrefill || c.TTFTBase != 3*time.Millisecond || c.InterTokenLatency != time.Millisecond ||
		c.Fault.FailRate != 0.1 || !c.Fault.Hang || c.Fault.HealthFail || c.Fault.Seed != 9 || c.Name != "p0" || o.port != 0 {
		t.Errorf("config %+v", c)
	}
	if strings.Join(c.APIKeys, ",") != "from-env" {
		t.Errorf("api keys %v, want VLLM_API_KEY", c.APIKeys)
	}
	if c.SideChannelListen != "127.0.0.9:5602" || c.SideChannelHost != "127.0.0.9" {
		t.Errorf("side channel %q advertised as %q; want 127.0.0.9:5602 (port + DP rank)", c.SideChannelListen, c.SideChannelHost)
	}
}

func TestServeMayFollowSimFlags(t *testing.T) {
	o, err := parseArgs([]string{"--name", "w1", "serve", "org/m", "--port", "9"})
	if err != nil || o.cfg.Model != "org/m" || o.cfg.Name != "w1" || o.port != 9 {
		t.Errorf("parseArgs: %v, %+v", err, o)
	}
}

func TestMainBadFlagsExit2(t *testing.T) {
	cases := [][]string{
		{"--port", "http"},
		{"--port", "70000"},
		{"--max-num-seqs", "0"},
		{"--block-size", "-3"},
		{"--role", "router"},
		{"--ttft", "fast"},
		{"--kv-transfer-config", "{not json"},
		{"--kv-transfer-config", `{"kv_load_failure_policy":"retry"}`},
		{"--fail-rate", "1.5"},
		{"--port"},
		{"serve", "model-a", "model-b"},
	}
	for _, argv := range cases {
		t.Run(strings.Join(argv, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Main(argv, &out, &errOut); code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, errOut.String())
			}
			if !strings.Contains(errOut.String(), "switchyard sim:") {
				t.Errorf("stderr %q lacks a clear message", errOut.String())
			}
		})
	}
	var out bytes.Buffer
	if code := Main([]string{"--help"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "--max-num-seqs") {
		t.Errorf("--help: exit %d, usage %q", code, out.String())
	}
}

// TestMainServesAndStopsOnSIGTERM runs Main with a vLLM command line and stops it as a
// process manager would.
func TestMainServesAndStopsOnSIGTERM(t *testing.T) {
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "")
	t.Setenv("VLLM_NIXL_SIDE_CHANNEL_PORT", "")
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- Main([]string{"serve", "org/model", "--port", "0", "--host", "127.0.0.1", "--tensor-parallel-size", "2",
			"--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`, "--log-level", "warn"}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the serving line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("serving line %q has no URL", line)
	}
	url := strings.TrimSpace(line[i:])
	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"id":"org/model"`) {
		t.Errorf("/v1/models %s", body)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit %d after SIGTERM, want 0", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Main did not stop on SIGTERM")
	}
}
