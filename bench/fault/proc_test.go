package fault

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a child process of the suite: a simulator or the router.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string        // the address it reported listening on
	done chan struct{} // closed when the process has exited
	out  *logTail
}

// logTail keeps a process's output (for failure messages) and reports the first line
// matching a pattern.
type logTail struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	re      *regexp.Regexp
	found   chan string
	sent    bool
}

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() < 1<<20 {
		l.buf.Write(p)
	}
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := l.partial[:i]
		if m := l.re.FindSubmatch(line); m != nil && !l.sent {
			l.sent = true
			l.found <- string(m[1])
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

var (
	simAddrRe    = regexp.MustCompile(`serving \S+ on http://(\S+)`)
	routerAddrRe = regexp.MustCompile(`router listening\s+\{"addr": "([^"]+)"`)
)

// startProc runs bin with args and waits until its output names the address it listens
// on. The process is killed when the test ends (and with the test binary, by Pdeathsig).
func startProc(t *testing.T, name string, re *regexp.Regexp, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{}), out: &logTail{re: re, found: make(chan string, 1)}}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill(t) })
	select {
	case p.addr = <-p.out.found:
	case <-p.done:
		t.Fatalf("%s exited before listening:\n%s", name, p.out)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not report its address in 20s:\n%s", name, p.out)
	}
	return p
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// kill ends the process (SIGCONT first, in case it is stopped) and waits for it.
func (p *proc) kill(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit after SIGKILL", p.name)
	}
}

// waitExit waits for the process to end.
func (p *proc) waitExit(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s still running %v after it was told to stop", p.name, within)
	}
}

// startSim runs `switchyard sim` on 127.0.0.1:port (0 = any) with fast timings.
func startSim(t *testing.T, bin, name string, port int, extra ...string) *proc {
	t.Helper()
	args := append([]string{"sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--name", name,
		"--ttft", "10ms", "--itl", "5ms", "--prefill-per-token", "10us", "--output-tokens", "12", "--log-level", "warn"}, extra...)
	return startProc(t, name, simAddrRe, bin, args...)
}

// startRouterProc runs vllm-router with args on a free port and waits until it listens.
func startRouterProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	base := []string{"--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0"}
	return startProc(t, "vllm-router", routerAddrRe, bin, append(base, args...)...)
}

// eventually polls cond every 20ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// workerState is one entry of the router's GET /workers.
type workerState struct {
	URL          string `json:"url"`
	IsHealthy    bool   `json:"is_healthy"`
	CircuitState string `json:"circuit_state"`
}

// routerWorkers reads the router's GET /workers, keyed by URL.
func routerWorkers(c *http.Client, routerAddr string) (map[string]workerState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+routerAddr+"/workers", nil)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Workers []workerState `json:"workers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("GET /workers: %w", err)
	}
	m := map[string]workerState{}
	for _, w := range out.Workers {
		m[w.URL] = w
	}
	return m, nil
}

// setFault posts a fault to a simulator's /sim/fault.
func setFault(t *testing.T, c *http.Client, simAddr, fault string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+simAddr+"/sim/fault", strings.NewReader(fault))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST /sim/fault %s: %v", fault, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /sim/fault %s: %d %s", fault, resp.StatusCode, b)
	}
}

// portOf returns the port of host:port.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(p, &n)
	return n
}

// newClient is an HTTP client with its own connection pool, closed when the test ends.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 128, IdleConnTimeout: 30 * time.Second, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// scanSSE reads an event stream's data lines.
func scanSSE(r io.Reader, onData func(data string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "data:") {
			onData(strings.TrimSpace(strings.TrimPrefix(line, "data:")))
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}
