package fault

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
)

// Worker URLs on the command line: invalid ones stop the router at start with exit code 2
// and a message naming the URL; duplicates either collapse into one working worker or are
// refused at start, never leave a router that cannot serve.
func TestWorkerURLFlags(t *testing.T) {
	_, routerBin := binaries(t)
	w := "http://" + startInProcSim(t, "flags-worker", sim.RoleBoth)
	c := newClient(t)
	base := []string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "-1", "--health-check-interval-secs", "0.3"}
	cases := []struct {
		name    string
		args    []string
		refuse  string // a refusal must name this; "" = must serve
		mayStop bool   // refusing at start with exit 2 is also right
	}{
		{"ftp scheme", []string{"--worker-urls", "ftp://127.0.0.1:21"}, "ftp://127.0.0.1:21", false},
		{"no port", []string{"--worker-urls", "http://127.0.0.1"}, "http://127.0.0.1", false},
		{"bad escape in port", []string{"--worker-urls", "http://127.0.0.1:%zz"}, "%zz", false},
		{"port out of range", []string{"--worker-urls", "http://127.0.0.1:70000"}, "70000", false},
		{"path and query", []string{"--worker-urls", "http://127.0.0.1:8000/v1?x=1"}, "http://127.0.0.1:8000/v1?x=1", false},
		{"not a URL", []string{"--worker-urls", "worker one"}, "worker", false},
		{"P/D prefill URL invalid", []string{"--vllm-pd-disaggregation", "--prefill", "http://:80", "--decode", w}, "http://:80", false},
		{"same URL twice", []string{"--worker-urls", w, w}, "", true},
		{"same URL with and without a slash", []string{"--worker-urls", w, w + "/"}, "", true},
		{"same URL as prefill and decode", []string{"--vllm-pd-disaggregation", "--prefill", w, "--decode", w}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(routerBin, append(base, tc.args...)...)
			var out logTail
			out.re, out.found = routerAddrRe, make(chan string, 1)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				_ = cmd.Process.Kill()
				<-exited
			}()
			select {
			case err := <-exited:
				exited <- err // for the deferred wait
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 2 {
					t.Fatalf("router exited with %v, want exit code 2:\n%s", err, out.String())
				}
				if tc.refuse == "" && !tc.mayStop {
					t.Fatalf("router refused a valid command line:\n%s", out.String())
				}
				if want := or(tc.refuse, "http://"); !strings.Contains(out.String(), want) {
					t.Errorf("refusal does not name %q:\n%s", want, out.String())
				}
			case addr := <-out.found:
				if tc.refuse != "" {
					t.Fatalf("router started with an invalid worker URL; want exit code 2 naming %q:\n%s", tc.refuse, out.String())
				}
				ok := false
				deadline := time.Now().Add(5 * time.Second)
				for !ok && time.Now().Before(deadline) {
					r, _ := chatRequest(c, addr, "s", 0, []byte(chatBody), false, nil)
					ok = r.outcome == succeeded
					if !ok {
						time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
					}
				}
				if !ok {
					ws, _ := routerWorkers(c, addr)
					t.Fatalf("router started but never served a request in 5s (workers %+v); duplicates must collapse into a working worker or be refused at start", ws)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("router neither started nor exited in 10s:\n%s", out.String())
			}
		})
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
