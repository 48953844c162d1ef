package pd

import (
	"strconv"
	"strings"
	"testing"
)

// chatBody builds a deterministic multi-turn chat body of about size bytes, with the
// escapes and non-ASCII text real prompts carry.
func chatBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"model":"Qwen/Qwen3-30B-A3B","messages":[`)
	turn := `Line with \"quotes\", a tab\t, unicode 日本語 é and \u00e9 escapes, code {x: [1, 2]} \\ end. `
	for i := 0; b.Len() < size-200; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		b.WriteString(`{"role":"` + role + `","content":"turn ` + strconv.Itoa(i) + `: `)
		for n := 0; n < 40 && b.Len() < size-200; n++ {
			b.WriteString(turn)
		}
		b.WriteString(`"}`)
	}
	b.WriteString(`],"stream":true,"stream_options":{"include_usage":true},"max_tokens":2048,"temperature":1.0,"top_p":1.0,"logprobs":true}`)
	return []byte(b.String())
}

var benchSizes = []struct {
	name string
	size int
}{{"1KB", 1 << 10}, {"100KB", 100 << 10}, {"10MB", 10 << 20}}

var benchKV = []byte(`{"do_remote_prefill":true,"do_remote_decode":false,"remote_block_ids":[1,2,3,4,5,6,7,8],"remote_engine_id":"2f5c1a9e-engine","remote_request_id":"chatcmpl-abc-0","remote_host":"10.0.0.12","remote_port":5600,"tp_size":1}`)

// BenchmarkRewrite is each leg's body rewrite at production sizes, into a reused dst.
func BenchmarkRewrite(b *testing.B) {
	rewrites := []struct {
		name string
		fn   func(dst, body []byte) ([]byte, error)
	}{
		{"PrefillBody", func(dst, body []byte) ([]byte, error) { return PrefillBody(dst, KindChat, body) }},
		{"DecodeBody", func(dst, body []byte) ([]byte, error) { return DecodeBody(dst, body, benchKV) }},
	}
	for _, rw := range rewrites {
		for _, s := range benchSizes {
			body := chatBody(s.size)
			b.Run(rw.name+"/"+s.name, func(b *testing.B) {
				dst := make([]byte, 0, len(body)+512)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					var err error
					if dst, err = rw.fn(dst[:0], body); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkKVTransferParams(b *testing.B) {
	resp := []byte(`{"id":"chatcmpl-abc","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"length"}],"usage":{"prompt_tokens":4000,"completion_tokens":1},"kv_transfer_params":` + string(benchKV) + `}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := KVTransferParams(resp); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
