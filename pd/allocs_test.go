//go:build !race

package pd

import (
	"testing"

	"github.com/valyala/fasthttp"
)

// TestRewritesDoNotAllocate proves the hot-path rewrites allocate nothing with a
// reused dst (the race detector allocates, hence the build tag).
func TestRewritesDoNotAllocate(t *testing.T) {
	body := chatBody(8 << 10)
	gen := []byte(`{"token_ids":[1,2,3],"sampling_params":{"max_tokens":64,"min_tokens":8},"stream":false}`)
	resp := []byte(`{"id":"x","kv_transfer_params":` + string(benchKV) + `}`)
	dst := make([]byte, 0, len(body)+1024)
	client := clientRequest(t, clientRaw)
	leg := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(leg)
	rid := []byte("0123456789abcdef")
	tests := []struct {
		name string
		fn   func()
	}{
		{"PrefillBody chat", func() { dst, _ = PrefillBody(dst[:0], KindChat, body) }},
		{"PrefillBody generate", func() { dst, _ = PrefillBody(dst[:0], KindGenerate, gen) }},
		{"PrefillBody responses", func() { dst, _ = PrefillBody(dst[:0], KindResponses, body) }},
		{"DecodeBody", func() { dst, _ = DecodeBody(dst[:0], body, benchKV) }},
		{"KVTransferParams", func() { _, _, _ = KVTransferParams(resp) }},
		{"PrepareLeg", func() { PrepareLeg(leg, client, rid, body) }},
		{"Lookup", func() { _, _, _ = Lookup(body, "stream") }},
	}
	for _, tc := range tests {
		if n := testing.AllocsPerRun(50, tc.fn); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", tc.name, n)
		}
	}
}
