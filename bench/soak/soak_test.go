// Package soak holds the long-running leak check: the router as a process under constant
// load for minutes, with its RSS and goroutines read at the start and the end. It is a
// benchmark, so CI (which runs tests) skips it; run it with `make soak`.
package soak

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/switchyard/switchyard/bench/sim"
)

// BenchmarkSoak drives 32 concurrent sessions (a third streaming) through a router process
// over 4 simulated workers for SOAK_DURATION (default 10m) and reports the router's RSS
// and goroutines at start (after 30 s of warm-up) and end.
//
//	SOAK_DURATION=10m go test -run '^$' -bench Soak -benchtime 1x -timeout 30m ./bench/soak
func BenchmarkSoak(b *testing.B) {
	dur := 10 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		dur = d
	}
	bin := filepath.Join(b.TempDir(), "vllm-router")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/vllm-router").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var urls []string
	for i := 0; i < 4; i++ {
		cfg := sim.DefaultConfig()
		cfg.TTFTBase, cfg.InterTokenLatency, cfg.PrefillPerToken = 2*time.Millisecond, time.Millisecond, time.Microsecond
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		cfg.Name = ln.Addr().String()
		s, err := sim.New(cfg, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		go s.Serve(ln)
		defer s.Shutdown()
		urls = append(urls, "http://"+ln.Addr().String())
	}
	port, mport := freePort(b), freePort(b)
	cmd := exec.Command(bin, append([]string{"--host", "127.0.0.1", "--port", port, "--prometheus-port", mport,
		"--policy", "consistent_hash", "--health-check-interval-secs", "1", "--worker-urls"}, urls...)...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Process.Kill()
	router, metrics := "http://127.0.0.1:"+port, "http://127.0.0.1:"+mport+"/metrics"
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := http.Get(router + "/readiness"); err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("router not ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	for s := 0; s < 32; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for turn := 0; ctx.Err() == nil; turn++ {
				body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"session %d turn %d %s"}],"max_tokens":8,"stream":%v}`,
					sim.DefaultConfig().Model, s, turn%8, strings.Repeat("context ", 50+turn%8*20), s%3 == 0)
				req, _ := http.NewRequestWithContext(ctx, "POST", router+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-Session-ID", fmt.Sprintf("soak-%d-%d", s, turn/8))
				resp, err := client.Do(req)
				sent.Add(1)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}(s)
	}
	time.Sleep(30 * time.Second) // warm-up: pools and caches fill
	rss0, gr0 := scrape(b, metrics)
	sent0 := sent.Load()
	time.Sleep(dur)
	rss1, gr1 := scrape(b, metrics)
	requests := sent.Load() - sent0
	cancel()
	wg.Wait()
	b.ReportMetric(rss0/1e6, "MB-rss-start")
	b.ReportMetric(rss1/1e6, "MB-rss-end")
	b.ReportMetric(gr0, "goroutines-start")
	b.ReportMetric(gr1, "goroutines-end")
	b.ReportMetric(float64(requests), "requests")
	b.ReportMetric(float64(failed.Load()), "failed")
	b.Logf("soak %v: %d requests (%d failed); router RSS %.1f → %.1f MB, goroutines %.0f → %.0f", dur, requests, failed.Load(), rss0/1e6, rss1/1e6, gr0, gr1)
}

func scrape(b *testing.B, url string) (rss, goroutines float64) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "process_resident_memory_bytes":
			rss = v
		case "go_goroutines":
			goroutines = v
		}
	}
	return rss, goroutines
}

func freePort(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
