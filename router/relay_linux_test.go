package router

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// streamRequestsSent counts the requests the router's workers got on the streamed path.
func streamRequestsSent(srv *Server) int64 {
	var n int64
	for _, c := range srv.pool.streams {
		n += c.sent.Load()
	}
	return n
}

// rawWorker answers every connection with handler, for framings net/http will not
// produce (a body delimited by closing the connection).
func rawWorker(t *testing.T, handler func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				if req.URL.Path == "/health" {
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					return
				}
				handler(c)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// readResponse reads one HTTP/1.1 answer from a client connection.
func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("body: %v (got %d bytes)", err, len(b))
	}
	return resp, string(b)
}

const streamReq = "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}"
const plainReq = "POST /v1/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

// After a relayed stream the client connection goes back to fasthttp: further streams
// and plain requests on it, pipelined or not, are answered in order.
func TestRelayKeepsClientConnection(t *testing.T) {
	w := newFakeWorker(t, "w0")
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
		if strings.Contains(string(body), `"stream":true`) {
			sseHandler(3, time.Millisecond)(rw, r, body)
			return
		}
		fmt.Fprint(rw, `{"plain":true}`)
	})
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	type step struct {
		send string
		want []string // the kinds of answer the send gets, in order
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"stream, stream, plain", []step{{streamReq, []string{"sse"}}, {streamReq, []string{"sse"}}, {plainReq, []string{"plain"}}}},
		{"pipelined after a stream", []step{{streamReq + plainReq + streamReq, []string{"sse", "plain", "sse"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for _, st := range tc.steps {
				if _, err := io.WriteString(c, st.send); err != nil {
					t.Fatal(err)
				}
				for i, want := range st.want {
					resp, body := readResponse(t, br)
					kind := "plain"
					if strings.HasSuffix(body, "data: [DONE]\n\n") && strings.Count(body, "data: ") == 4 {
						kind = "sse"
					}
					if resp.StatusCode != 200 || kind != want {
						t.Fatalf("answer %d: %d %q, want %s", i, resp.StatusCode, body, want)
					}
				}
			}
		})
	}
}

// Every framing a worker may use reaches the client whole: chunked as the router's own
// chunks, a Content-Length as is, a body ended by closing the connection as chunks.
func TestRelayWorkerFramings(t *testing.T) {
	payload := strings.Repeat("data: {\"x\":1}\n\n", 2000) // 30 KB: more than the head's buffer
	for _, tc := range []struct {
		name    string
		answer  func(c net.Conn)
		chunked bool
	}{
		{"content-length", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s", len(payload), payload)
		}, false},
		{"chunked in odd pieces", func(c net.Conn) {
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			for i := 0; i < len(payload); i += 7001 {
				piece := payload[i:min(i+7001, len(payload))]
				fmt.Fprintf(c, "%x;ext=1\r\n%s\r\n", len(piece), piece)
			}
			fmt.Fprint(c, "0\r\nX-Trailer: 1\r\n\r\n")
		}, true},
		{"until close", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n%s", payload)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := rawWorker(t, tc.answer)
			srv := startRouter(t, "--worker-urls", url, "--policy", "round_robin")
			waitReady(t, srv)
			resp, body := post(t, "http://"+srv.Addr()+"/v1/chat/completions", `{"stream":true}`, nil)
			if resp.StatusCode != 200 || string(body) != payload {
				t.Fatalf("status %d, %d bytes, want 200 and %d bytes", resp.StatusCode, len(body), len(payload))
			}
			if chunked := resp.ContentLength < 0; chunked != tc.chunked {
				t.Fatalf("client framing chunked=%v, want %v", chunked, tc.chunked)
			}
			waitFor(t, "in-flight back to 0", func() bool { return srv.pool.load().regular[0].InFlight() == 0 })
		})
	}
}

// A client that reads slowly gets every byte in order: the relay holds what the
// client's socket refuses and stops reading the worker meanwhile.
func TestRelaySlowClientGetsEverything(t *testing.T) {
	const events = 20000
	w := newFakeWorker(t, "w0")
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
		rw.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < events; i++ {
			fmt.Fprintf(rw, "data: {\"i\":%d,\"pad\":\"%s\"}\n\n", i, strings.Repeat("p", 300))
			if i%100 == 0 {
				rw.(http.Flusher).Flush()
			}
		}
	})
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, streamReq)
	// Read nothing until the client's socket is full and the relay holds bytes back.
	waitFor(t, "the relay holding bytes for the client", func() bool { return srv.relay.stalls.Load() > 0 })
	resp, body := readResponse(t, bufio.NewReader(c))
	want := sha256.New()
	for i := 0; i < events; i++ {
		fmt.Fprintf(want, "data: {\"i\":%d,\"pad\":\"%s\"}\n\n", i, strings.Repeat("p", 300))
	}
	if got := sha256.Sum256([]byte(body)); resp.StatusCode != 200 || string(got[:]) != string(want.Sum(nil)) {
		t.Fatalf("status %d, %d bytes: not the worker's %d events in order", resp.StatusCode, len(body), events)
	}
}

// Open streams cost no goroutine each: 300 quiet streams add a handful of goroutines,
// not 300 or 600 (fasthttp's model: the connection's and the stream writer's).
func TestRelayQuietStreamsHoldNoGoroutines(t *testing.T) {
	const streams = 300
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	w := newFakeWorker(t, "w0")
	w.setHandler(func(rw http.ResponseWriter, r *http.Request, body []byte) {
		rw.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(rw, "data: first\n\n")
		rw.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(rw, "data: [DONE]\n\n")
	})
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, streamReq)
		conns[i] = c
	}
	readers := make([]*bufio.Reader, streams)
	for i, c := range conns { // every stream is open: its first event arrived
		readers[i] = bufio.NewReader(c)
		for {
			line, err := readers[i].ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(line, "data: first") {
				break
			}
		}
	}
	// fasthttp's model holds a connection goroutine (serveConn) and a stream writer per
	// stream; with the relay, no goroutine waits in either.
	if n := goroutinesIn("fasthttp.(*Server).serveConn", "router.(*exchange).writeStream", "router.(*Server).handle"); n > streams/10 {
		t.Fatalf("%d goroutines serving connections or in the router with %d streams open: about one per stream", n, streams)
	}
	if _, m := get(t, "http://"+srv.MetricsAddr()+"/metrics"); !strings.Contains(string(m), "\nswitchyard_relay_streams "+strconv.Itoa(streams)+"\n") {
		t.Fatalf("metrics do not show %d relayed streams:\n%s", streams, m)
	}
	releaseOnce.Do(func() { close(release) })
	for i, br := range readers {
		rest, err := br.ReadString(']')
		if err != nil || !strings.HasSuffix(rest, "data: [DONE]") {
			t.Fatalf("stream %d: %v after %q, want it to end with [DONE]", i, err, rest)
		}
	}
	waitFor(t, "relay empty", func() bool { return srv.relay.active.Load() == 0 })
}

// goroutinesIn counts the goroutines whose stack has any of the given function names.
func goroutinesIn(names ...string) int {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, name := range names {
			if strings.Contains(g, name) {
				n++
				break
			}
		}
	}
	return n
}

// A worker that dies in the middle of a body that is not an event stream: the client's
// connection is closed without the last chunk, so the truncation shows.
func TestRelayTruncatedBodyShows(t *testing.T) {
	url := rawWorker(t, func(c net.Conn) {
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n")
	})
	srv := startRouter(t, "--worker-urls", url, "--policy", "round_robin")
	waitReady(t, srv)
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, streamReq)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("body %q read to a clean end: want an error (truncated)", b)
	}
	if string(b) != `{"a":` {
		t.Fatalf("got %q before the cut, want the worker's bytes", b)
	}
}

// An HTTP/1.0 client cannot take chunks: it gets the bare events, ended by the router
// closing the connection. (fasthttp's own streaming sent such a client chunk framing
// inside an unchunked answer.)
func TestRelayHTTP10ClientGetsBareStream(t *testing.T) {
	w := newFakeWorker(t, "w0")
	w.setHandler(sseHandler(3, 10*time.Millisecond))
	srv := startRouter(t, "--worker-urls", w.URL, "--policy", "round_robin")
	waitReady(t, srv)
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, strings.Replace(streamReq, "HTTP/1.1", "HTTP/1.0", 1))
	resp, body := readResponse(t, bufio.NewReader(c))
	if resp.StatusCode != 200 || len(resp.TransferEncoding) > 0 || !resp.Close {
		t.Fatalf("status %d, transfer-encoding %v, close %v: want 200, no chunks, connection closed", resp.StatusCode, resp.TransferEncoding, resp.Close)
	}
	if strings.Count(body, "data: ") != 4 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("body %q: want 3 events and [DONE]", body)
	}
	if n := streamRequestsSent(srv); n != 1 {
		t.Fatalf("%d requests took the relay's path, want 1", n)
	}
	waitFor(t, "in-flight back to 0", func() bool { return srv.pool.load().regular[0].InFlight() == 0 })
}
