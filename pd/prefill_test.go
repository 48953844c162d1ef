package pd

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// hostUpstream is the test's Upstream: a fasthttp.HostClient, as the router's Backend.
type hostUpstream struct {
	id string
	c  *fasthttp.HostClient
}

func (u hostUpstream) ID() string { return u.id }
func (u hostUpstream) DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, d time.Time) error {
	return u.c.DoDeadline(req, resp, d)
}

var _ Upstream = hostUpstream{}

// seen is what the fake prefill worker received.
type seen struct {
	method, uri, host string
	body              string
	headers           map[string]string
}

// startWorker serves handler on 127.0.0.1:0 and records each request.
func startWorker(t *testing.T, handler func(ctx *fasthttp.RequestCtx)) (hostUpstream, <-chan seen) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan seen, 8)
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		s := seen{
			method:  string(ctx.Method()),
			uri:     string(ctx.RequestURI()),
			host:    string(ctx.Host()),
			body:    string(ctx.PostBody()),
			headers: map[string]string{},
		}
		for k, v := range ctx.Request.Header.All() {
			s.headers[string(k)] = string(v)
		}
		got <- s
		handler(ctx)
	}}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	addr := ln.Addr().String()
	return hostUpstream{id: "http://" + addr, c: &fasthttp.HostClient{Addr: addr}}, got
}

// clientRequest is a request as the router's server would have parsed it.
func clientRequest(t *testing.T, raw string) *fasthttp.Request {
	t.Helper()
	req := fasthttp.AcquireRequest()
	t.Cleanup(func() { fasthttp.ReleaseRequest(req) })
	if err := req.ReadLimitBody(bufioReader(raw), 0); err != nil {
		t.Fatal(err)
	}
	return req
}

const clientRaw = "POST /v1/chat/completions?trace=1 HTTP/1.1\r\n" +
	"Host: router.local\r\n" +
	"Content-Type: application/json\r\n" +
	"Authorization: Bearer k\r\n" +
	"X-Session-ID: traj-7\r\n" +
	"X-Request-Id: client-id\r\n" +
	"Connection: keep-alive, X-Hop\r\n" +
	"X-Hop: drop-me\r\n" +
	"Keep-Alive: timeout=5\r\n" +
	"Te: trailers\r\n" +
	"Upgrade: h2c\r\n" +
	"Accept-Encoding: gzip\r\n" +
	"Proxy-Authorization: secret\r\n" +
	"Content-Length: 23\r\n" +
	"\r\n" +
	`{"stream":true,"a":"b"}`

func TestPrefill(t *testing.T) {
	kv := `{"do_remote_prefill":true,"remote_block_ids":[1],"remote_engine_id":"e"}`
	tests := []struct {
		name    string
		status  int
		body    string
		outcome Outcome
	}{
		{"2xx with params", 200, `{"id":"x","kv_transfer_params":` + kv + `}`, OutcomeOK},
		{"4xx", 400, `{"object":"error","message":"max_tokens too large"}`, OutcomeClientError},
		{"429 is retryable", 429, `busy`, OutcomeServerError},
		{"5xx", 503, `{"object":"error","message":"overloaded"}`, OutcomeServerError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up, got := startWorker(t, func(ctx *fasthttp.RequestCtx) {
				ctx.SetStatusCode(tc.status)
				ctx.SetContentType("application/json")
				ctx.SetBodyString(tc.body)
			})
			client := clientRequest(t, clientRaw)
			body, err := PrefillBody(nil, KindChat, client.Body())
			if err != nil {
				t.Fatal(err)
			}
			leg := fasthttp.AcquireRequest()
			defer fasthttp.ReleaseRequest(leg)
			PrepareLeg(leg, client, []byte("rid-1"), body)

			dst := make([]byte, 0, 64)
			out, status, err := Prefill(dst[:0], up, leg, time.Now().Add(5*time.Second))
			if status != tc.status || string(out) != tc.body {
				t.Fatalf("got %d %q, want %d %q", status, out, tc.status, tc.body)
			}
			if tc.outcome == OutcomeOK {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if raw, ok, err := KVTransferParams(out); err != nil || !ok || string(raw) != kv {
					t.Fatalf("KVTransferParams = %s %v %v", raw, ok, err)
				}
			} else {
				var le *LegError
				if !errors.As(err, &le) || le.Outcome != tc.outcome || le.Status != tc.status ||
					le.Upstream != up.ID() || !errors.Is(err, ErrUpstreamStatus) {
					t.Fatalf("err = %#v, want LegError %v", err, tc.outcome)
				}
				if le.Outcome.Retryable() != (tc.outcome == OutcomeServerError) {
					t.Fatalf("Retryable = %v", le.Outcome.Retryable())
				}
			}

			s := <-got
			if s.method != "POST" || s.uri != "/v1/chat/completions?trace=1" || s.host != "router.local" {
				t.Fatalf("request line %s %s host %s", s.method, s.uri, s.host)
			}
			if s.body != string(body) {
				t.Fatalf("worker got body %s, want %s", s.body, body)
			}
			for k, want := range map[string]string{
				"X-Request-Id": "rid-1", "Authorization": "Bearer k", "X-Session-Id": "traj-7",
				"Content-Type": "application/json", "Content-Length": itoa(len(body)),
			} {
				if s.headers[k] != want {
					t.Errorf("header %s = %q, want %q (all: %v)", k, s.headers[k], want, s.headers)
				}
			}
			for _, k := range []string{"X-Hop", "Keep-Alive", "Te", "Upgrade", "Accept-Encoding", "Proxy-Authorization"} {
				if v, ok := s.headers[k]; ok {
					t.Errorf("hop-by-hop header %s = %q was forwarded", k, v)
				}
			}
		})
	}
}

func TestPrefillConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the port is now closed: dialing it is refused
	up := hostUpstream{id: "dead", c: &fasthttp.HostClient{Addr: addr}}
	leg := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(leg)
	PrepareLeg(leg, clientRequest(t, clientRaw), []byte("rid"), []byte(`{}`))
	out, status, err := Prefill([]byte("keep"), up, leg, time.Now().Add(5*time.Second))
	var le *LegError
	if !errors.As(err, &le) || le.Outcome != OutcomeTransport || status != 0 || string(out) != "keep" {
		t.Fatalf("got %q %d %v, want transport LegError", out, status, err)
	}
	if !le.Outcome.Retryable() || !strings.Contains(err.Error(), "dead") {
		t.Fatalf("error %q", err)
	}
}

func TestPrefillTimeout(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the server shuts down (cleanups are LIFO)
	up, _ := startWorker(t, func(ctx *fasthttp.RequestCtx) { <-release })
	leg := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(leg)
	PrepareLeg(leg, clientRequest(t, clientRaw), []byte("rid"), []byte(`{}`))
	start := time.Now()
	_, status, err := Prefill(nil, up, leg, start.Add(100*time.Millisecond))
	unblock()
	var le *LegError
	if !errors.As(err, &le) || le.Outcome != OutcomeTimeout || status != 0 {
		t.Fatalf("got %d %v, want timeout LegError", status, err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("deadline not applied: took %v", el)
	}
}

func TestPrefillGzipBody(t *testing.T) {
	up, _ := startWorker(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set(fasthttp.HeaderContentEncoding, "gzip")
		ctx.Response.SetBody(fasthttp.AppendGzipBytes(nil, []byte(`{"kv_transfer_params":{"a":1}}`)))
	})
	leg := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(leg)
	PrepareLeg(leg, clientRequest(t, clientRaw), []byte("rid"), []byte(`{}`))
	out, _, err := Prefill(nil, up, leg, time.Now().Add(5*time.Second))
	if err != nil || string(out) != `{"kv_transfer_params":{"a":1}}` {
		t.Fatalf("got %q %v", out, err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		status int
		err    error
		want   Outcome
	}{
		{200, nil, OutcomeOK}, {204, nil, OutcomeOK}, {400, nil, OutcomeClientError},
		{404, nil, OutcomeClientError}, {408, nil, OutcomeServerError}, {429, nil, OutcomeServerError},
		{500, nil, OutcomeServerError}, {302, nil, OutcomeServerError}, {0, fasthttp.ErrTimeout, OutcomeTimeout},
		{0, fasthttp.ErrDialTimeout, OutcomeTimeout}, {0, errors.New("reset"), OutcomeTransport},
		{0, fasthttp.ErrConnectionClosed, OutcomeTransport},
	}
	for _, tc := range tests {
		if got := Classify(tc.status, tc.err); got != tc.want {
			t.Errorf("Classify(%d, %v) = %v, want %v", tc.status, tc.err, got, tc.want)
		}
	}
	for o := OutcomeOK; o <= OutcomeTimeout+1; o++ {
		if o.String() == "" {
			t.Errorf("Outcome %d has no name", o)
		}
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
