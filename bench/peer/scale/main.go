// Command scale measures what the router's memory does under three shapes of load that
// the throughput benchmark does not cover: many long, quiet SSE streams; one huge
// response; one huge request body. It is both the worker and the client, and samples
// the router's RSS from /proc while the load runs. Standard library only.
//
//	scale backend -addr 127.0.0.1:18601,127.0.0.1:18602 ...
//	scale sse     -url http://127.0.0.1:18401 -streams 9800 -events 30 -pid ROUTER_PID
//	scale bigresp -url ... -size 200000000 -mode json|sse -pid ROUTER_PID
//	scale bigreq  -url ... -size 200000000 -pid ROUTER_PID
//
// The backend answers POST /v1/chat/completions by headers: X-Scale-Events: N streams N
// SSE events X-Scale-Period apart (default 1s) then [DONE]; X-Scale-Bytes: N answers
// N bytes (Content-Length JSON, or chunked SSE with X-Scale-SSE: 1); otherwise it reads
// and counts the body and answers {"received":N}. GET /health answers 200.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scale backend|sse|bigresp|bigreq [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "backend":
		err = runBackend(os.Args[2:])
	case "sse":
		err = runSSE(os.Args[2:])
	case "bigresp":
		err = runBigResp(os.Args[2:])
	case "bigreq":
		err = runBigReq(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- backend

func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addrs := fs.String("addr", "127.0.0.1:18601", "comma-separated listen addresses")
	_ = fs.Parse(args)
	h := http.HandlerFunc(serve)
	errc := make(chan error, 1)
	for _, a := range strings.Split(*addrs, ",") {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
		go func() { errc <- srv.Serve(ln) }()
	}
	return <-errc
}

var filler = bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB

func serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		return
	}
	if n, _ := strconv.Atoi(r.Header.Get("X-Scale-Events")); n > 0 {
		period, err := time.ParseDuration(r.Header.Get("X-Scale-Period"))
		if err != nil || period <= 0 {
			period = time.Second
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := 0; i < n; i++ {
			if i > 0 {
				time.Sleep(period)
			}
			if _, err := fmt.Fprintf(w, "data: {\"i\":%d,\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n", i); err != nil {
				return
			}
			fl.Flush()
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
		return
	}
	if n, _ := strconv.ParseInt(r.Header.Get("X-Scale-Bytes"), 10, 64); n > 0 {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get("X-Scale-SSE") == "1" {
			w.Header().Set("Content-Type", "text/event-stream")
		} else {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		for n > 0 {
			k := min(n, int64(len(filler)))
			if _, err := w.Write(filler[:k]); err != nil {
				return
			}
			n -= k
		}
		return
	}
	got, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"received\":%d}", got)
}

// ---------------------------------------------------------------- RSS sampling

// rssWatch samples VmRSS of pid every interval until stopped.
type rssWatch struct {
	pid      int
	mu       sync.Mutex
	base     int64 // KiB, first sample
	peak     int64
	last     int64
	stop     chan struct{}
	done     chan struct{}
	interval time.Duration
}

func rssKiB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

func watchRSS(pid int, interval time.Duration) *rssWatch {
	w := &rssWatch{pid: pid, stop: make(chan struct{}), done: make(chan struct{}), interval: interval}
	w.base = rssKiB(pid)
	w.peak, w.last = w.base, w.base
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				v := rssKiB(pid)
				w.mu.Lock()
				w.last = v
				w.peak = max(w.peak, v)
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *rssWatch) now() (base, peak, last int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.base, w.peak, w.last
}

func (w *rssWatch) end() (base, peak, last int64) {
	close(w.stop)
	<-w.done
	w.last = rssKiB(w.pid)
	w.peak = max(w.peak, w.last)
	return w.base, w.peak, w.last
}

func mb(kib int64) float64 { return float64(kib) / 1024 }

// ---------------------------------------------------------------- clients

// post writes one HTTP/1.1 POST on a fresh connection and reads the response header.
// The caller closes the connection.
func post(addr, path string, hdr map[string]string, body io.Reader, bodyLen int64) (net.Conn, *http.Response, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", path, addr, bodyLen)
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		c.Close()
		return nil, nil, err
	}
	if body != nil {
		if _, err := io.Copy(c, body); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4096), nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, resp, nil
}

func hostOf(url string) (string, error) {
	u, ok := strings.CutPrefix(url, "http://")
	if !ok {
		return "", errors.New("url must start with http://")
	}
	return strings.TrimSuffix(u, "/"), nil
}

func runSSE(args []string) error {
	fs := flag.NewFlagSet("sse", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:18401", "router URL")
	streams := fs.Int("streams", 9800, "concurrent streams")
	events := fs.Int("events", 30, "events per stream (one per period)")
	period := fs.Duration("period", time.Second, "gap between events")
	ramp := fs.Duration("ramp", 10*time.Second, "time over which the streams are opened")
	pid := fs.Int("pid", 0, "router PID whose RSS is sampled")
	_ = fs.Parse(args)
	addr, err := hostOf(*url)
	if err != nil {
		return err
	}
	w := watchRSS(*pid, 250*time.Millisecond)
	var open, firstEvent, complete, failed, lateGaps atomic.Int64
	var maxGap atomic.Int64
	errs := sync.Map{}
	var wg sync.WaitGroup
	start := time.Now()
	body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	for i := 0; i < *streams; i++ {
		if d := time.Duration(int64(*ramp) * int64(i) / int64(*streams)); time.Since(start) < d {
			time.Sleep(d - time.Since(start))
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			fail := func(err error) {
				failed.Add(1)
				errs.LoadOrStore(err.Error(), i)
			}
			c, resp, err := post(addr, "/v1/chat/completions", map[string]string{
				"X-Session-ID": "scale-" + strconv.Itoa(i), "X-Scale-Events": strconv.Itoa(*events),
				"X-Scale-Period": period.String(),
			}, strings.NewReader(body), int64(len(body)))
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			rc := resp.Body
			if resp.StatusCode != 200 {
				fail(fmt.Errorf("status %d", resp.StatusCode))
				return
			}
			open.Add(1)
			sc := bufio.NewScanner(rc)
			got, last := 0, time.Time{}
			for sc.Scan() {
				line := sc.Bytes()
				if !bytes.HasPrefix(line, []byte("data: ")) {
					continue
				}
				now := time.Now()
				if bytes.Equal(line, []byte("data: [DONE]")) {
					if got == *events {
						complete.Add(1)
					} else {
						fail(fmt.Errorf("[DONE] after %d of %d events", got, *events))
					}
					return
				}
				if got == 0 {
					firstEvent.Add(1)
				} else {
					gap := now.Sub(last)
					if gap > *period*3/2 {
						lateGaps.Add(1)
					}
					for g := maxGap.Load(); int64(gap) > g && !maxGap.CompareAndSwap(g, int64(gap)); g = maxGap.Load() {
					}
				}
				got, last = got+1, now
			}
			if err := sc.Err(); err != nil {
				fail(err)
			} else {
				fail(fmt.Errorf("stream ended after %d of %d events without [DONE]", got, *events))
			}
		}(i)
	}
	// steady state: every stream open and past its first event
	deadline := time.Now().Add(*ramp + 30*time.Second)
	for firstEvent.Load()+failed.Load() < int64(*streams) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	base, _, _ := w.now()
	steadyStart := time.Now()
	var steadyPeak int64
	for i := 0; i < 20 && complete.Load() == 0; i++ { // sample while all streams are open
		time.Sleep(250 * time.Millisecond)
		steadyPeak = max(steadyPeak, rssKiB(*pid))
	}
	steadyFor := time.Since(steadyStart)
	wg.Wait()
	_, peak, last := w.end()
	fmt.Printf("sse: streams=%d events/stream=%d period=%s open=%d first_event=%d complete=%d failed=%d gaps_over_1.5x_period=%d max_gap=%s took=%s\n",
		*streams, *events, *period, open.Load(), firstEvent.Load(), complete.Load(), failed.Load(), lateGaps.Load(),
		time.Duration(maxGap.Load()).Round(time.Millisecond), time.Since(start).Round(time.Second))
	fmt.Printf("sse: router RSS MB: before=%.1f all_open_steady_peak=%.1f (sampled over %s) peak=%.1f after=%.1f\n",
		mb(base), mb(steadyPeak), steadyFor.Round(time.Millisecond), mb(peak), mb(last))
	errs.Range(func(k, v any) bool { fmt.Printf("sse: error (first at stream %d): %s\n", v, k); return true })
	if failed.Load() > 0 {
		return fmt.Errorf("%d streams failed", failed.Load())
	}
	return nil
}

func runBigResp(args []string) error {
	fs := flag.NewFlagSet("bigresp", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:18401", "router URL")
	size := fs.Int64("size", 200_000_000, "response bytes")
	mode := fs.String("mode", "json", "json (Content-Length, \"stream\":false), stream (Content-Length, \"stream\":true) or sse (chunked event stream)")
	path := fs.String("path", "/v1/chat/completions", "request path")
	pid := fs.Int("pid", 0, "router PID whose RSS is sampled")
	_ = fs.Parse(args)
	addr, err := hostOf(*url)
	if err != nil {
		return err
	}
	hdr := map[string]string{"X-Scale-Bytes": strconv.FormatInt(*size, 10), "X-Session-ID": "big"}
	body := `{"model":"m","stream":false}`
	switch *mode {
	case "json":
	case "stream":
		body = `{"model":"m","stream":true}`
	case "sse":
		body = `{"model":"m","stream":true}`
		hdr["X-Scale-SSE"] = "1"
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	w := watchRSS(*pid, 20*time.Millisecond)
	start := time.Now()
	c, resp, err := post(addr, *path, hdr, strings.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	defer c.Close()
	status := resp.StatusCode
	n, err := io.Copy(io.Discard, resp.Body)
	took := time.Since(start)
	base, peak, last := w.end()
	fmt.Printf("bigresp %s %s: status=%d got=%d of %d bytes err=%v took=%s (%.0f MB/s); router RSS MB before=%.1f peak=%.1f after=%.1f growth=%.1f\n",
		*mode, *path, status, n, *size, err, took.Round(time.Millisecond), float64(n)/took.Seconds()/1e6, mb(base), mb(peak), mb(last), mb(peak-base))
	if err != nil || n != *size || status != 200 {
		return errors.New("big response did not arrive whole")
	}
	return nil
}

// patternReader yields size bytes of a JSON-ish body without holding them in memory.
type patternReader struct{ left int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], filler)
	r.left -= int64(n)
	return n, nil
}

func runBigReq(args []string) error {
	fs := flag.NewFlagSet("bigreq", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:18401", "router URL")
	size := fs.Int64("size", 200_000_000, "request body bytes")
	pid := fs.Int("pid", 0, "router PID whose RSS is sampled")
	_ = fs.Parse(args)
	addr, err := hostOf(*url)
	if err != nil {
		return err
	}
	w := watchRSS(*pid, 20*time.Millisecond)
	start := time.Now()
	c, resp, err := post(addr, "/v1/chat/completions", map[string]string{"X-Session-ID": "bigreq"}, &patternReader{left: *size}, *size)
	if err != nil {
		return err
	}
	defer c.Close()
	status := resp.StatusCode
	reply, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	base, peak, last := w.end()
	fmt.Printf("bigreq: status=%d reply=%s err=%v took=%s (%.0f MB/s); router RSS MB before=%.1f peak=%.1f after=%.1f growth=%.1f\n",
		status, bytes.TrimSpace(reply), err, took.Round(time.Millisecond), float64(*size)/took.Seconds()/1e6, mb(base), mb(peak), mb(last), mb(peak-base))
	if err != nil || status != 200 || !bytes.Contains(reply, []byte(strconv.FormatInt(*size, 10))) {
		return errors.New("big request did not reach the worker whole")
	}
	return nil
}
