package router

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// smallThresholds makes request bodies over 64 KiB stream and worker answers over 64 KiB
// pass through, so tests need megabytes, not hundreds of them. Set before startRouter.
func smallThresholds(t *testing.T) {
	t.Helper()
	oldReq, oldResp := streamBodyAbove, bufferAnswerMax
	streamBodyAbove, bufferAnswerMax = 64<<10, 64<<10
	t.Cleanup(func() { streamBodyAbove, bufferAnswerMax = oldReq, oldResp })
}

// jsonBody is a size-byte JSON body, {<fields>"prompt":"abc…"}, made as it is read: the
// test never holds it whole, so the heap shows what the router holds.
type jsonBody struct {
	prefix, suffix []byte
	off, size      int64
}

func newJSONBody(fields string, size int64) *jsonBody {
	return &jsonBody{prefix: []byte(`{` + fields + `"prompt":"`), suffix: []byte(`"}`), size: size}
}

func (b *jsonBody) at(i int64) byte {
	switch {
	case i < int64(len(b.prefix)):
		return b.prefix[i]
	case i >= b.size-int64(len(b.suffix)):
		return b.suffix[i-(b.size-int64(len(b.suffix)))]
	}
	return 'a' + byte(i%26)
}

func (b *jsonBody) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.size-b.off))
	for k := range n {
		p[k] = b.at(b.off + int64(k))
	}
	b.off += int64(n)
	return n, nil
}

// sum is the sha256 of a fresh body with the same shape.
func (b *jsonBody) sum() string {
	h := sha256.New()
	io.Copy(h, &jsonBody{prefix: b.prefix, suffix: b.suffix, size: b.size})
	return hex.EncodeToString(h.Sum(nil))
}

// gotBody is what a bodyWorker received.
type gotBody struct {
	n       int64
	sum     string
	cl      int64 // Content-Length as the worker saw it, -1 for chunked
	session string
}

// bodyWorker hashes request bodies without keeping them, calls onHalf once half of a
// body (of the size in X-Body-Size) is in, and answers with what it got: text/event-stream with a Content-Length, so
// the client sees chunked framing only if the router took the "stream":true path.
type bodyWorker struct {
	*httptest.Server
	name   string
	mu     sync.Mutex
	got    []gotBody
	onHalf func()
	status int
}

func newBodyWorker(t *testing.T, name string) *bodyWorker {
	t.Helper()
	w := &bodyWorker{name: name, status: 200}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		h := sha256.New()
		size, _ := strconv.ParseInt(r.Header.Get("X-Body-Size"), 10, 64) // chunked bodies have no length
		n, _ := io.Copy(&halfWatch{w: h, half: size / 2, on: w.half}, r.Body)
		g := gotBody{n: n, sum: hex.EncodeToString(h.Sum(nil)), cl: r.ContentLength, session: r.Header.Get("X-Session-ID")}
		w.mu.Lock()
		w.got = append(w.got, g)
		status := w.status
		w.mu.Unlock()
		msg := fmt.Sprintf("data: {\"worker\":%q,\"n\":%d,\"sum\":%q,\"cl\":%d}\n\n", name, g.n, g.sum, g.cl)
		rw.Header().Set("Content-Type", "text/event-stream")
		rw.Header().Set("Content-Length", strconv.Itoa(len(msg)))
		rw.WriteHeader(status)
		io.WriteString(rw, msg)
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *bodyWorker) half() {
	w.mu.Lock()
	f := w.onHalf
	w.mu.Unlock()
	if f != nil {
		f()
	}
}

func (w *bodyWorker) received() []gotBody {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]gotBody(nil), w.got...)
}

// halfWatch calls on once, when more than half bytes went through (half <= 0: never).
type halfWatch struct {
	w    hash.Hash
	n    int64
	half int64
	on   func()
}

func (h *halfWatch) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	if h.half > 0 && h.n > h.half && h.n-int64(len(p)) <= h.half {
		h.on()
	}
	return h.w.Write(p)
}

// rawPost sends a POST on its own connection, the body with a Content-Length (cl >= 0)
// or chunked (cl < 0), writing it while the response is read: the router may answer
// before it took the whole body.
func rawPost(t *testing.T, addr, path string, hdr map[string]string, body io.Reader, cl int64) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\n", path, addr)
	if _, ok := hdr["Content-Type"]; !ok {
		b.WriteString("Content-Type: application/json\r\n")
	}
	if cl >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", cl)
	} else {
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	go func() {
		bw := bufio.NewWriterSize(c, 64<<10)
		bw.WriteString(b.String())
		if body != nil {
			if cl >= 0 {
				io.Copy(bw, body)
			} else {
				cw := httputil.NewChunkedWriter(bw)
				io.Copy(cw, body)
				cw.Close()
				bw.WriteString("\r\n")
			}
		}
		bw.Flush() // errors: the router stopped reading, which some cases expect
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return resp, got
}

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// Large request bodies reach the worker byte for byte while the router holds only their
// head; the limit holds for both framings; small chunked bodies are still sent whole.
func TestLargeRequestBodies(t *testing.T) {
	smallThresholds(t)
	w := newBodyWorker(t, "w0")
	const limit = 24 << 20
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--max-payload-size", strconv.Itoa(limit))
	waitReady(t, srv)
	cases := []struct {
		name       string
		fields     string
		size       int64
		chunked    bool
		wantStatus int
		wantCL     int64 // Content-Length the worker sees (-1: chunked)
		wantStream bool  // "stream":true found: the answer is re-framed as a stream
	}{
		{"known length", `"model":"m","stream":false,`, 16 << 20, false, 200, 16 << 20, false},
		{"stream:true in the head", `"model":"m","stream":true,`, 16 << 20, false, 200, 16 << 20, true},
		{"chunked", `"model":"m",`, 16 << 20, true, 200, -1, false},
		{"small chunked, sent whole", `"model":"m",`, 1000, true, 200, 1000, false},
		{"small, stream:true", `"model":"m","stream":true,`, 1000, false, 200, 1000, true},
		{"over the limit, Content-Length", `"model":"m",`, limit + 1, false, 413, 0, false},
		{"over the limit, chunked", `"model":"m",`, limit + 1<<20, true, 413, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(w.received())
			streamsBefore := streamRequestsSent(srv)
			body := newJSONBody(tc.fields, tc.size)
			runtime.GC()
			base := heapInuse()
			var mid uint64
			w.mu.Lock()
			w.onHalf = func() { mid = heapInuse() }
			w.mu.Unlock()
			cl := tc.size
			if tc.chunked {
				cl = -1
			}
			hdr := map[string]string{"X-Body-Size": strconv.FormatInt(tc.size, 10)}
			resp, got := rawPost(t, srv.Addr(), "/v1/completions", hdr, body, cl)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, got, tc.wantStatus)
			}
			rec := w.received()[before:]
			if tc.wantStatus != 200 {
				if !strings.Contains(string(got), `"error"`) || len(rec) != 0 && rec[0].n > limit {
					t.Fatalf("got %s, worker %+v: want a JSON error and at most %d bytes at the worker", got, rec, limit)
				}
				return
			}
			if len(rec) != 1 || rec[0].n != tc.size || rec[0].sum != body.sum() || rec[0].cl != tc.wantCL {
				t.Fatalf("worker got %+v, want %d bytes, sum %s, Content-Length %d", rec, tc.size, body.sum(), tc.wantCL)
			}
			if n := streamRequestsSent(srv); n >= 0 && (n > streamsBefore) != tc.wantStream {
				t.Fatalf("streamed path taken=%v, want %v", n > streamsBefore, tc.wantStream)
			}
			if tc.size >= 1<<20 {
				if mid == 0 {
					t.Fatal("the worker never saw half the body")
				}
				if grew := int64(mid) - int64(base); grew > tc.size/4 {
					t.Fatalf("heap grew %d bytes with half of a %d-byte body through: the router holds it", grew, tc.size)
				}
			}
		})
	}
}

// Body-keyed and header-keyed sessions stick to one worker whether the body streams or not.
func TestLargeBodySessions(t *testing.T) {
	smallThresholds(t)
	w0, w1 := newBodyWorker(t, "w0"), newBodyWorker(t, "w1")
	srv := startRouter(t, "--worker-urls", w0.URL, w1.URL, "--policy", "consistent_hash")
	waitForHealthy(t, srv, 2)
	workerOf := func(got []byte) string {
		for _, n := range []string{"w0", "w1"} {
			if strings.Contains(string(got), `"worker":"`+n+`"`) {
				return n
			}
		}
		t.Fatalf("no worker in %s", got)
		return ""
	}
	used := map[string]bool{}
	for i := range 8 {
		id := "session-" + strconv.Itoa(i)
		var first string
		for _, tc := range []struct {
			name   string
			fields string
			hdr    map[string]string
			size   int64
		}{
			{"small, id in body", `"user":"` + id + `",`, nil, 200},
			{"large, id in body head", `"user":"` + id + `",`, nil, 1 << 20},
			{"large, id in header", ``, map[string]string{"X-Session-ID": id}, 1 << 20},
		} {
			resp, got := rawPost(t, srv.Addr(), "/v1/chat/completions", tc.hdr, newJSONBody(tc.fields, tc.size), tc.size)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: status %d %s", tc.name, resp.StatusCode, got)
			}
			wk := workerOf(got)
			if first == "" {
				first = wk
			} else if wk != first {
				t.Fatalf("%s %s went to %s, its small request to %s", id, tc.name, wk, first)
			}
		}
		used[first] = true
	}
	if len(used) != 2 {
		t.Fatalf("8 sessions used %d workers; the key is not reaching the ring", len(used))
	}
}

// A streamed body that reached a worker is not sent again: that worker's 503 is the answer.
func TestLargeBodyNotRetriedAfterSending(t *testing.T) {
	smallThresholds(t)
	w0, w1 := newBodyWorker(t, "w0"), newBodyWorker(t, "w1")
	w0.status, w1.status = 503, 503
	srv := startRouter(t, "--worker-urls", w0.URL, w1.URL, "--policy", "round_robin")
	waitForHealthy(t, srv, 2)
	const size = 1 << 20
	resp, got := rawPost(t, srv.Addr(), "/v1/completions", nil, newJSONBody("", size), size)
	if n := len(w0.received()) + len(w1.received()); resp.StatusCode != 503 || n != 1 {
		t.Fatalf("status %d %s after %d worker attempts; want the one worker's 503", resp.StatusCode, got, n)
	}
}

// A "stream":false answer larger than bufferAnswerMax passes through byte for byte, with
// or without a Content-Length, and the router does not hold it.
func TestLargeAnswers(t *testing.T) {
	smallThresholds(t)
	const size = 16 << 20
	var mu sync.Mutex
	chunked := false
	w := newFakeWorker(t, "w0")
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, _ []byte) {
		mu.Lock()
		ch := chunked
		mu.Unlock()
		rw.Header().Set("Content-Type", "application/json")
		if !ch {
			rw.Header().Set("Content-Length", strconv.Itoa(size))
		}
		io.Copy(rw, newJSONBody(`"id":"x",`, size))
	})
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	want := newJSONBody(`"id":"x",`, size).sum()
	for _, tc := range []struct {
		name    string
		chunked bool
	}{{"Content-Length", false}, {"chunked", true}} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			chunked = tc.chunked
			mu.Unlock()
			body := `{"model":"m","stream":false}`
			runtime.GC()
			base := heapInuse()
			resp, err := http.Post("http://"+srv.Addr()+"/v1/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			n1, _ := io.CopyN(h, resp.Body, size/2)
			mid := heapInuse()
			n2, err := io.Copy(h, resp.Body)
			if err != nil || n1+n2 != size || hex.EncodeToString(h.Sum(nil)) != want {
				t.Fatalf("got %d bytes (err %v), sum match %v", n1+n2, err, hex.EncodeToString(h.Sum(nil)) == want)
			}
			if !tc.chunked && resp.ContentLength != size {
				t.Fatalf("Content-Length %d, want %d", resp.ContentLength, size)
			}
			if grew := int64(mid) - int64(base); grew > size/4 {
				t.Fatalf("heap grew %d bytes with half of a %d-byte answer read: the router holds it", grew, size)
			}
		})
	}
}

// A multipart upload (audio transcription) is forwarded byte for byte, streamed when
// large, and refused from its Content-Length when over the limit.
func TestMultipartBodies(t *testing.T) {
	smallThresholds(t)
	w := newFakeWorker(t, "w0")
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin", "--max-payload-size", strconv.Itoa(4<<20))
	waitReady(t, srv)
	part := func(size int) string {
		return "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n" +
			"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n" +
			strings.Repeat("\x01\x02", size/2) + "\r\n--XyZ--\r\n"
	}
	for _, tc := range []struct {
		name       string
		size       int
		wantStatus int
	}{{"small", 1000, 200}, {"streamed", 2 << 20, 200}, {"over the limit", 5 << 20, 413}} {
		t.Run(tc.name, func(t *testing.T) {
			body := part(tc.size)
			before := len(w.received())
			resp, got := rawPost(t, srv.Addr(), "/v1/audio/transcriptions",
				map[string]string{"Content-Type": "multipart/form-data; boundary=XyZ"}, strings.NewReader(body), int64(len(body)))
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, got, tc.wantStatus)
			}
			rec := w.received()[before:]
			if tc.wantStatus == 200 && (len(rec) != 1 || string(rec[0].body) != body) {
				t.Fatalf("worker got %d requests, body intact: %v", len(rec), len(rec) == 1 && string(rec[0].body) == body)
			}
		})
	}
}
