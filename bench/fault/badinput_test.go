package fault

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
)

// startInProcSim serves a simulator on 127.0.0.1:0 inside the test process.
func startInProcSim(t *testing.T, name string, role sim.Role) string {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Name, cfg.Role = name, role
	cfg.TTFTBase, cfg.PrefillPerToken, cfg.InterTokenLatency, cfg.OutputTokens = time.Millisecond, 0, time.Millisecond, 4
	cfg.ShutdownGrace = 2 * time.Second
	s, err := sim.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Shutdown(); err != nil {
			t.Errorf("sim %s shutdown: %v", name, err)
		}
		<-done
	})
	return ln.Addr().String()
}

const (
	maxPayload = 64 << 10
	adminKey   = "admin-secret"
	chatBody   = `{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
)

// badInputRouters starts one regular router (consistent hashing, so it reads session keys
// from bodies) and one P/D router (which parses every generation body), each in front of
// in-process simulators.
func badInputRouters(t *testing.T) (regular, pdRouter, workerAddr string) {
	t.Helper()
	_, routerBin := binaries(t)
	w := startInProcSim(t, "regular", sim.RoleBoth)
	p := startInProcSim(t, "prefill", sim.RolePrefill)
	d := startInProcSim(t, "decode", sim.RoleDecode)
	common := []string{"--policy", "consistent_hash", "--health-check-interval-secs", "0.3",
		"--max-payload-size", fmt.Sprint(maxPayload), "--admin-api-key", adminKey, "--worker-startup-timeout-secs", "1"}
	r := startRouterProc(t, routerBin, append([]string{"--worker-urls", "http://" + w}, common...)...)
	pr := startRouterProc(t, routerBin, append([]string{"--vllm-pd-disaggregation", "--prefill", "http://" + p, "--decode", "http://" + d}, common...)...)
	c := newClient(t)
	for _, addr := range []string{r.addr, pr.addr} {
		eventually(t, 15*time.Second, "router "+addr+" ready", func() bool {
			resp, err := c.Get("http://" + addr + "/readiness")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	return r.addr, pr.addr, w
}

// rawReply is what came back on a raw connection.
type rawReply struct {
	status int
	header http.Header
	body   []byte
}

// rawExchange writes req on a fresh connection (from a goroutine, so a server answering
// early cannot deadlock the write) and reads one response.
func rawExchange(addr string, req []byte, within time.Duration) (rawReply, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return rawReply{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(within))
	werr := make(chan error, 1)
	go func() { _, err := conn.Write(req); werr <- err }()
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 { // 100 Continue and such
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		<-werr
		return rawReply{}, fmt.Errorf("no response: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		<-werr
		return rawReply{}, fmt.Errorf("status %d, body cut: %w", resp.StatusCode, err)
	}
	// Whatever follows on the connection must not be another answer: a second response
	// means a request hidden in the first one's body was processed.
	rest, _ := io.ReadAll(br)
	conn.Close()
	<-werr
	if i := bytes.Index(rest, []byte("HTTP/1.")); i >= 0 {
		return rawReply{}, fmt.Errorf("status %d, then a second response on the same connection (a smuggled request was served): %.200q",
			resp.StatusCode, rest[i:])
	}
	return rawReply{resp.StatusCode, resp.Header, body}, nil
}

// isRouterError reports whether b is the router's own error body for status:
// {"error":{"message":"...","type":"...","code":status}}.
func isRouterError(b []byte, status int) bool {
	var v struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    int    `json:"code"`
		} `json:"error"`
	}
	return json.Unmarshal(b, &v) == nil && v.Error != nil && v.Error.Message != "" && v.Error.Type != "" && v.Error.Code == status
}

// httpReq builds a raw HTTP/1.1 request with a correct Content-Length unless the headers
// already frame the body.
func httpReq(method, target string, headers []string, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: router\r\n", method, target)
	framed := false
	for _, h := range headers {
		lh := strings.ToLower(h)
		if strings.HasPrefix(lh, "content-length:") || strings.HasPrefix(lh, "transfer-encoding:") {
			framed = true
		}
		b.WriteString(h + "\r\n")
	}
	if !framed && (body != "" || method == "POST") {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("Connection: close\r\n\r\n")
	b.WriteString(body)
	return b.Bytes()
}

// who answers a bad-input case: the router itself (its own JSON error shape is required)
// or the worker behind it (any JSON error body).
type who uint8

const (
	byRouter who = iota
	byWorker
	served // a valid request in an odd shape: it must simply be served
)

type badCase struct {
	name   string
	pd     bool   // send to the P/D router
	raw    []byte // the request bytes
	status []int  // acceptable statuses, the first the preferred one
	who    who
}

func jsonCT(h ...string) []string { return append([]string{"Content-Type: application/json"}, h...) }

func admin(h ...string) []string { return append([]string{"Authorization: Bearer " + adminKey}, h...) }

// TestBadInput sends each malformed, oversized or smuggling-shaped request and requires
// the right 4xx with a JSON error body, then a normal request served by the same router.
func TestBadInput(t *testing.T) {
	regular, pdRouter, worker := badInputRouters(t)
	bigBody := `{"model":"sim-model","messages":[{"role":"user","content":"` + strings.Repeat("x", maxPayload) + `"}]}`
	chunkedBig := func() []byte {
		var b bytes.Buffer
		b.WriteString("POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
		for i := 0; i < 4; i++ {
			chunk := strings.Repeat("y", maxPayload/2)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(chunk), chunk)
		}
		b.WriteString("0\r\n\r\n")
		return b.Bytes()
	}()
	manyHeaders := func(n, size int) []string {
		h := jsonCT()
		for i := 0; i < n; i++ {
			h = append(h, fmt.Sprintf("X-Filler-%d: %s", i, strings.Repeat("v", size)))
		}
		return h
	}
	sessionChat := func(sessionField string) string {
		return `{"model":"sim-model","session_id":` + sessionField + `,"messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
	}
	q := url.QueryEscape
	cases := []badCase{
		// Bodies the router reads for session keys (consistent_hash), passed on to the worker.
		{"truncated JSON with a session key in the body", false, httpReq("POST", "/v1/chat/completions", jsonCT(), `{"session_id":"s1","messages":[{"role":"user","content":"hi"`), []int{400}, byWorker},
		{"malformed JSON with a session key in the body", false, httpReq("POST", "/v1/chat/completions", jsonCT(), `{"session_id": s1, "messages": []}`), []int{400}, byWorker},
		{"session key of the wrong type in the body", false, httpReq("POST", "/v1/chat/completions", jsonCT(), sessionChat(`{"nested":[1,2,{"x":null}]}`)), []int{200}, served},
		{"session key with escapes and unicode", false, httpReq("POST", "/v1/chat/completions", jsonCT(), sessionChat(`"s\u00e9ss\"ion\\\n"`)), []int{200}, served},
		{"body bytes that are not UTF-8 JSON", false, httpReq("POST", "/v1/chat/completions", jsonCT(), "\xff\xfe{\x00\"session_id\x00"), []int{400}, byWorker},
		{"empty body", false, httpReq("POST", "/v1/chat/completions", jsonCT(), ""), []int{400}, byWorker},
		{"JSON array body", false, httpReq("POST", "/v1/chat/completions", jsonCT(), `[1,2,3]`), []int{400}, byWorker},
		{"deeply nested JSON", false, httpReq("POST", "/v1/chat/completions", jsonCT(), strings.Repeat("[", 20000)+strings.Repeat("]", 20000)), []int{400}, byWorker},
		// Content types.
		{"text/plain content type", false, httpReq("POST", "/v1/chat/completions", []string{"Content-Type: text/plain"}, chatBody), []int{400, 415}, byWorker},
		{"form content type", false, httpReq("POST", "/v1/chat/completions", []string{"Content-Type: application/x-www-form-urlencoded"}, "model=sim-model&prompt=hi"), []int{400, 415}, byWorker},
		{"no content type", false, httpReq("POST", "/v1/chat/completions", nil, chatBody), []int{400, 415}, byWorker},
		// Sizes.
		{"body over --max-payload-size", false, httpReq("POST", "/v1/chat/completions", jsonCT(), bigBody), []int{413}, byRouter},
		{"chunked body over --max-payload-size", false, chunkedBig, []int{413}, byRouter},
		{"Content-Length of 10 GB, body never sent", false, httpReq("POST", "/v1/chat/completions", jsonCT("Content-Length: 10000000000"), ""), []int{413}, byRouter},
		{"one 32 KiB header", false, httpReq("POST", "/v1/chat/completions", jsonCT("X-Huge: "+strings.Repeat("h", 32<<10)), chatBody), []int{431}, byRouter},
		{"2000 headers (40 KiB)", false, httpReq("POST", "/v1/chat/completions", manyHeaders(2000, 8), chatBody), []int{431}, byRouter},
		{"100 headers within limits", false, httpReq("POST", "/v1/chat/completions", manyHeaders(100, 16), chatBody), []int{200}, served},
		// Routes and methods.
		{"unknown route", false, httpReq("POST", "/v1/no/such/route", jsonCT(), chatBody), []int{404}, byWorker},
		{"unknown method on a data route", false, httpReq("BREW", "/v1/chat/completions", jsonCT(), chatBody), []int{405, 501}, byWorker},
		{"PUT on /health", false, httpReq("PUT", "/health", nil, ""), []int{405}, byRouter},
		{"GET on /add_worker", false, httpReq("GET", "/add_worker?url="+q("http://"+worker), admin(), ""), []int{405}, byRouter},
		// Admin routes: query strings, worker URLs, keys.
		{"/add_worker without the admin key", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1:9"), nil, ""), []int{401}, byRouter},
		{"/add_worker with the wrong admin key", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1:9"), []string{"Authorization: Bearer not-" + adminKey}, ""), []int{401}, byRouter},
		{"/add_worker with a Basic authorization", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1:9"), []string{"Authorization: Basic YWRtaW46c2VjcmV0"}, ""), []int{401}, byRouter},
		{"/add_worker?url=%zz", false, httpReq("POST", "/add_worker?url=%zz", admin(), ""), []int{400}, byRouter},
		{"/add_worker without url", false, httpReq("POST", "/add_worker", admin(), ""), []int{400}, byRouter},
		{"/add_worker?url= (empty)", false, httpReq("POST", "/add_worker?url=", admin(), ""), []int{400}, byRouter},
		{"/add_worker with a non-http scheme", false, httpReq("POST", "/add_worker?url="+q("ftp://127.0.0.1:21"), admin(), ""), []int{400}, byRouter},
		{"/add_worker without a port", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1"), admin(), ""), []int{400}, byRouter},
		{"/add_worker with port 99999", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1:99999"), admin(), ""), []int{400}, byRouter},
		{"/add_worker with a path and user", false, httpReq("POST", "/add_worker?url="+q("http://u:p@127.0.0.1:9/v1"), admin(), ""), []int{400}, byRouter},
		{"/add_worker with spaces", false, httpReq("POST", "/add_worker?url=http%3A%2F%2Fbad%20host%3A80", admin(), ""), []int{400}, byRouter},
		{"/add_worker of a registered worker", false, httpReq("POST", "/add_worker?url="+q("http://"+worker), admin(), ""), []int{409}, byRouter},
		{"/add_worker of a registered worker with a trailing slash", false, httpReq("POST", "/add_worker?url="+q("http://"+worker+"/"), admin(), ""), []int{409}, byRouter},
		{"/add_worker of a worker that never answers", false, httpReq("POST", "/add_worker?url="+q("http://127.0.0.1:9"), admin(), ""), []int{400, 502, 503, 504}, byRouter},
		{"POST /workers with malformed JSON", false, httpReq("POST", "/workers", admin(jsonCT()...), `{"url": http://x}`), []int{400}, byRouter},
		{"POST /workers with truncated JSON", false, httpReq("POST", "/workers", admin(jsonCT()...), `{"url":"http://127.`), []int{400}, byRouter},
		{"POST /workers with a url of the wrong type", false, httpReq("POST", "/workers", admin(jsonCT()...), `{"url":5}`), []int{400}, byRouter},
		{"POST /workers with an unknown worker_type", false, httpReq("POST", "/workers", admin(jsonCT()...), `{"url":"http://127.0.0.1:9","worker_type":"gpu"}`), []int{400}, byRouter},
		{"POST /workers of a registered worker", false, httpReq("POST", "/workers", admin(jsonCT()...), `{"url":"http://`+worker+`"}`), []int{409}, byRouter},
		{"/remove_worker without url", false, httpReq("POST", "/remove_worker", admin(), ""), []int{400}, byRouter},
		{"/remove_worker of an unknown worker", false, httpReq("POST", "/remove_worker?url="+q("http://127.0.0.1:9"), admin(), ""), []int{404}, byRouter},
		{"GET /workers/%zz", false, httpReq("GET", "/workers/%zz", nil, ""), []int{400}, byRouter},
		{"DELETE /workers/ of an unknown worker", false, httpReq("DELETE", "/workers/"+url.PathEscape("http://127.0.0.1:9"), admin(), ""), []int{404}, byRouter},
		{"/finish_session without id", false, httpReq("POST", "/finish_session", nil, ""), []int{400}, byRouter},
		{"/finish_session?session_id= (empty)", false, httpReq("POST", "/finish_session?session_id=", nil, ""), []int{400}, byRouter},
		{"GET /finish_session", false, httpReq("GET", "/finish_session?session_id=s1", nil, ""), []int{405}, byRouter},
		// Request smuggling shapes and broken framing.
		{"Content-Length with Transfer-Encoding", false, httpReq("POST", "/v1/chat/completions", jsonCT("Content-Length: 4", "Transfer-Encoding: chunked"), "0\r\n\r\n"), []int{400}, byRouter},
		{"two different Content-Lengths", false, httpReq("POST", "/v1/chat/completions", jsonCT("Content-Length: 2", "Content-Length: 3"), "{}x"), []int{400}, byRouter},
		{"obs-fold header continuation", false, httpReq("POST", "/v1/chat/completions", jsonCT("X-Folded: a", " b"), chatBody), []int{400}, byRouter},
		{"space before the colon of a header name", false, httpReq("POST", "/v1/chat/completions", jsonCT("X-Bad : v"), chatBody), []int{400}, byRouter},
		{"control byte in a header name", false, httpReq("POST", "/v1/chat/completions", jsonCT("X-B\x01ad: v"), chatBody), []int{400}, byRouter},
		{"header line without a colon", false, httpReq("POST", "/v1/chat/completions", jsonCT("NoColonHere"), chatBody), []int{400}, byRouter},
		{"unknown transfer coding", false, httpReq("POST", "/v1/chat/completions", jsonCT("Transfer-Encoding: xchunked"), "0\r\n\r\n"), []int{501, 400}, byRouter},
		{"bad chunk size", false, httpReq("POST", "/v1/chat/completions", jsonCT("Transfer-Encoding: chunked"), "zz\r\n{}\r\n0\r\n\r\n"), []int{400}, byRouter},
		{"negative Content-Length", false, httpReq("POST", "/v1/chat/completions", jsonCT("Content-Length: -5"), ""), []int{400}, byRouter},
		{"Content-Length not a number", false, httpReq("POST", "/v1/chat/completions", jsonCT("Content-Length: 12abc"), ""), []int{400}, byRouter},
		{"Content-Length with Transfer-Encoding hiding a second request", false, []byte("POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n" +
			"Content-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /list_workers HTTP/1.1\r\nHost: router\r\n\r\n"), []int{400}, byRouter},
		{"two Transfer-Encodings hiding a second request", false, []byte("POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n" +
			"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /list_workers HTTP/1.1\r\nHost: router\r\n\r\n"), []int{400, 501}, byRouter},
		{"chunk size overflowing 64 bits", false, httpReq("POST", "/v1/chat/completions", jsonCT("Transfer-Encoding: chunked"), "fffffffffffffffffff\r\n{}\r\n0\r\n\r\n"), []int{400, 413}, byRouter},
		{"NUL byte in a header value", false, httpReq("POST", "/v1/chat/completions", jsonCT("X-Nul: a\x00b"), chatBody), []int{400}, byRouter},
		{"request target of 32 KiB", false, httpReq("GET", "/health?pad="+strings.Repeat("p", 32<<10), nil, ""), []int{414, 431}, byRouter},
		{"Expect: 100-continue with a body over --max-payload-size", false, httpReq("POST", "/v1/chat/completions", jsonCT("Expect: 100-continue", fmt.Sprintf("Content-Length: %d", 10*maxPayload)), ""), []int{413}, byRouter},
		{"Expect: 100-continue within limits", false, httpReq("POST", "/v1/chat/completions", jsonCT("Expect: 100-continue"), chatBody), []int{200}, served},
		{"HTTP/9.9", false, []byte("GET /health HTTP/9.9\r\nHost: router\r\nConnection: close\r\n\r\n"), []int{505, 400}, byRouter},
		{"GET /workers/ with an encoded NUL", false, httpReq("GET", "/workers/http%3A%2F%2F127.0.0.1%3A9%00", nil, ""), []int{400, 404}, byRouter},
		{"GET /workers/ with an encoded 0xff byte", false, httpReq("GET", "/workers/http%3A%2F%2F127.0.0.1%3A9%ff", nil, ""), []int{400, 404}, byRouter},
		{"DELETE /workers/ with an encoded control byte", false, httpReq("DELETE", "/workers/http%3A%2F%2F127.0.0.1%3A9%01", admin(), ""), []int{400, 404}, byRouter},
		{"HTTP/1.1 without Host", false, []byte("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"), []int{400}, byRouter},
		{"garbage request line", false, []byte("HELLO THERE\r\n\r\n"), []int{400}, byRouter},
		// P/D: the router parses every generation body itself.
		{"P/D: truncated JSON", true, httpReq("POST", "/v1/chat/completions", jsonCT(), `{"model":"sim-model","messages":[{"role":"us`), []int{400}, byRouter},
		{"P/D: malformed JSON", true, httpReq("POST", "/v1/completions", jsonCT(), `{"model":"sim-model","prompt":hi}`), []int{400}, byRouter},
		{"P/D: empty body", true, httpReq("POST", "/v1/chat/completions", jsonCT(), ""), []int{400}, byRouter},
		{"P/D: JSON array body", true, httpReq("POST", "/v1/chat/completions", jsonCT(), `[{"model":"sim-model"}]`), []int{400}, byRouter},
		{"P/D: trailing garbage after the object", true, httpReq("POST", "/v1/chat/completions", jsonCT(), chatBody+`xyz`), []int{400}, byRouter},
		{"P/D: generate with truncated token_ids", true, httpReq("POST", "/inference/v1/generate", jsonCT(), `{"token_ids":[1,2,`), []int{400}, byRouter},
		{"P/D: kv_transfer_params of the wrong type", true, httpReq("POST", "/v1/chat/completions", jsonCT(), `{"model":"sim-model","kv_transfer_params":"nope","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`), []int{200, 400}, served},
		{"P/D: text/plain content type", true, httpReq("POST", "/v1/chat/completions", []string{"Content-Type: text/plain"}, chatBody), []int{400, 415}, byWorker},
		{"P/D: session key of the wrong type in the body", true, httpReq("POST", "/v1/chat/completions", jsonCT(), sessionChat(`[1,{"a":2}]`)), []int{200}, served},
		{"P/D: body over --max-payload-size", true, httpReq("POST", "/v1/chat/completions", jsonCT(), bigBody), []int{413}, byRouter},
	}
	c := newClient(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := regular
			if tc.pd {
				addr = pdRouter
			}
			got, err := rawExchange(addr, tc.raw, 10*time.Second)
			if err != nil {
				t.Fatalf("want %d: %v", tc.status[0], err)
			}
			if !containsInt(tc.status, got.status) {
				t.Errorf("status %d, want %v; body %.300q", got.status, tc.status, got.body)
			}
			switch {
			case got.status < 400:
			case tc.who == byRouter && (!isRouterError(got.body, got.status) || !strings.HasPrefix(got.header.Get("Content-Type"), "application/json")):
				t.Errorf("status %d without the router's JSON error body: %.300q (Content-Type %q)", got.status, got.body, got.header.Get("Content-Type"))
			case !isJSONError(got.body):
				t.Errorf("status %d without a JSON error body: %.300q", got.status, got.body)
			}
			checkServes(t, c, addr)
		})
	}
}

// checkServes requires a normal chat request through the router to succeed.
func checkServes(t *testing.T, c *http.Client, router string) {
	t.Helper()
	r, _ := chatRequest(c, router, "after-bad-input", 0, []byte(chatBody), false, nil)
	if r.outcome != succeeded {
		t.Errorf("router no longer serves a normal request: %s %d %s", r.outcome, r.status, r.detail)
	}
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
