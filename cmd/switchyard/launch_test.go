package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildSwitchyard builds this command once per test into a temp dir.
func buildSwitchyard(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "switchyard")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns n ports free on 127.0.0.1 now, spaced so port+k ranges do not meet.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p > 40000 && p+21000 < 65535 { // the router's metrics listen on port+21000
			ports = append(ports, p)
		}
	}
	return ports
}

// launched is one `switchyard launch` process and its process group.
type launched struct {
	cmd  *exec.Cmd
	logs *strings.Builder
}

func launch(t *testing.T, bin, cfg string, args ...string) *launched {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"launch", cfg, "--engine-cmd", "sim", "--bind", "node", "--health-timeout", "60s", "--stop-grace", "3s"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logs := &strings.Builder{}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &launched{cmd: cmd, logs: logs}
	t.Cleanup(func() {
		// A failed test still stops the launcher the way a user would, so it stops its
		// workers; SIGKILL only what is left after that.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pw.Close()
	})
	return l
}

// stop SIGTERMs the launcher and checks it exits 0 and leaves no process of its group.
func (l *launched) stop(t *testing.T) {
	t.Helper()
	pgid := l.cmd.Process.Pid
	l.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- l.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("launch exited with %v\n%s", err, l.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("launch still running 30 s after SIGTERM\n%s", l.logs.String())
	}
	_ = pgid
}

// leftovers lists live processes running bin (a path unique to the test).
func leftovers(bin string) []string {
	var left []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(string(b), bin+"\x00") {
			continue
		}
		if stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); strings.Contains(string(stat), ") Z ") {
			continue // a zombie is already dead
		}
		left = append(left, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return left
}

func waitHTTP(t *testing.T, url string, l *launched) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	t.Fatalf("%s never ready\n%s", url, l.logs.String())
}

func chatThrough(t *testing.T, router string, n int) map[string]int {
	t.Helper()
	workers := map[string]int{}
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"model":"sim-model","messages":[{"role":"user","content":"hello %d, a prompt long enough to fill a block or two of tokens"}],"max_tokens":4,"stream":%v}`, i, i%2 == 0)
		req, _ := http.NewRequest("POST", router+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Session-ID", fmt.Sprintf("s%d", i%4))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		workers[resp.Header.Get("X-Switchyard-Worker")]++
	}
	return workers
}

// `switchyard launch` brings up a single-node and a 1 prefill + 1 decode deployment on
// simulated workers, routes traffic through the router it starts, and leaves no process
// behind after SIGTERM.
func TestLaunchOnSimulatedWorkers(t *testing.T) {
	bin := buildSwitchyard(t)
	dir := t.TempDir()

	t.Run("single_node", func(t *testing.T) {
		p := freePorts(t, 2)
		cfg := filepath.Join(dir, "single.toml")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`[inference]
model = "sim-model"
[inference.parallel]
tp = 1
dp = 2
[inference.deployment]
type = "single_node"
gpus_per_node = 2
router_port = %d
backend_port = %d
`, p[0], p[1])), 0o644)
		l := launch(t, bin, cfg, "--nodes", "127.0.0.1")
		router := fmt.Sprintf("http://127.0.0.1:%d", p[0])
		waitHTTP(t, router+"/readiness", l)
		got := chatThrough(t, router, 8)
		if len(got) == 0 {
			t.Fatal("no worker answered")
		}
		l.stop(t)
		if left := leftovers(bin); len(left) > 0 {
			t.Fatalf("processes left after SIGTERM: %v", left)
		}
	})

	t.Run("disaggregated 1P+1D", func(t *testing.T) {
		p := freePorts(t, 3)
		cfg := filepath.Join(dir, "pd.toml")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`[inference]
model = "sim-model"
[inference.parallel]
tp = 1
[inference.deployment]
type = "disaggregated"
num_prefill_nodes = 1
num_decode_nodes = 1
gpus_per_node = 1
router_port = %d
prefill_port = %d
decode_port = %d
`, p[0], p[1], p[2])), 0o644)
		// Addresses of their own, so the NIXL side channels (port 5600 on each node's
		// address) cannot meet another test's emulated nodes on 127.0.0.1–3.
		nodes := "127.0.0.5,127.0.0.6"
		head := launch(t, bin, cfg, "--nodes", nodes, "--node-rank", "0")
		decode := launch(t, bin, cfg, "--nodes", nodes, "--node-rank", "1")
		router := fmt.Sprintf("http://127.0.0.5:%d", p[0])
		waitHTTP(t, router+"/readiness", head)
		got := chatThrough(t, router, 8)
		if got[fmt.Sprintf("127.0.0.6:%d", p[2])] != 8 {
			t.Fatalf("answers by worker %v: want all 8 from the decode worker", got)
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.6:%d/metrics", p[2]))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		hits := 0.0
		for _, line := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(line, "vllm:sim_kv_transfer_hits_total") {
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				hits += v
			}
		}
		if hits != 8 {
			t.Fatalf("decode worker counted %v KV transfer hits, want 8 (every request prefilled remotely)", hits)
		}
		decode.stop(t)
		head.stop(t)
		if left := leftovers(bin); len(left) > 0 {
			t.Fatalf("processes left after SIGTERM: %v", left)
		}
	})
}
