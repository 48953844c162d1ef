package router

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzParseFlags: any command line yields a config or an error, never a panic, and a
// config that parses also validates.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{
		"--worker-urls http://a:1 http://b:2 --policy consistent_hash",
		"--vllm-pd-disaggregation --prefill http://p:1 none --decode http://d:1",
		"--port=8000 --log_level debug --request-timeout-secs 0.5",
		"--prefill", "--host", "-- --", "--selector a=b c=d --mini-lb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseFlags(strings.Fields(line), io.Discard)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("parsed but invalid: %v", verr)
			}
		}
	})
}

// FuzzWantsStream agrees with a plain reading of the body on "stream": true.
func FuzzWantsStream(f *testing.F) {
	for _, s := range []string{`{"stream":true}`, `{"stream" : true}`, `{"stream":false}`, `{"x":"\"stream\":true"}`, `"stream"`, `{"stream":`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := wantsStream(body)
		compact := bytes.ReplaceAll(bytes.ReplaceAll(bytes.ReplaceAll(body, []byte(" "), nil), []byte("\t"), nil), []byte("\n"), nil)
		if bytes.Contains(compact, []byte(`"stream":true`)) != got && !bytes.Contains(body, []byte("\r")) {
			t.Fatalf("wantsStream(%q) = %v", body, got)
		}
	})
}

// FuzzRequestID: a generated id is always the route prefix and 24 alphanumerics.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"/v1/chat/completions", "/v1/completions", "/", "", "/v1/models?x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r := classify([]byte(path))
		if r >= numRoutes {
			t.Fatalf("route %d out of range", r)
		}
		id := appendRequestID(nil, r)
		if n := len(id); n < 24+4 || n > 24+9 {
			t.Fatalf("id %q", id)
		}
	})
}
