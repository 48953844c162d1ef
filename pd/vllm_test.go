package pd

import (
	"encoding/json"
	"errors"
	"testing"
)

const nixl = `{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`

func TestPrefillBody(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		in   string
		want string
	}{
		{"chat minimal", KindChat,
			`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"max_tokens":1,"kv_transfer_params":` + nixl + `}`},
		{"chat streaming with limits, order kept", KindChat,
			`{"stream":true,"model":"m","stream_options":{"include_usage":true},"max_tokens":512,"messages":[],"min_tokens":8,"max_completion_tokens":99,"temperature":0.7}`,
			`{"stream":false,"model":"m","max_tokens":1,"messages":[],"min_tokens":1,"max_completion_tokens":1,"temperature":0.7,"kv_transfer_params":` + nixl + `}`},
		{"chat min_tokens 0 and 1 kept", KindChat,
			`{"min_tokens":0,"x":{"min_tokens":5}}`,
			`{"min_tokens":0,"x":{"min_tokens":5},"stream":false,"max_tokens":1,"kv_transfer_params":` + nixl + `}`},
		{"chat client kv_transfer_params replaced", KindChat,
			`{"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1,2],"nested":{"a":[{}]}},"max_tokens":3,"stream":false}`,
			`{"kv_transfer_params":` + nixl + `,"max_tokens":1,"stream":false}`},
		{"chat null kv_transfer_params replaced", KindChat,
			`{"kv_transfer_params":null,"max_tokens":null,"stream":null}`,
			`{"kv_transfer_params":` + nixl + `,"max_tokens":1,"stream":false}`},
		{"whitespace and newlines kept", KindChat,
			" {\n  \"stream\" : true ,\n  \"stream_options\" : { } ,\n  \"messages\" : [ ]\n}\n",
			" {\n  \"stream\" : false ,\n  \"messages\" : [ ],\"max_tokens\":1,\"kv_transfer_params\":" + nixl + "\n}\n"},
		{"unicode and escapes pass byte for byte", KindChat,
			`{"messages":[{"content":"h\u00e9llo \"w\" \\ \/ \n 日本語 😀 \ud83d\ude00"}],"stream":true}`,
			`{"messages":[{"content":"h\u00e9llo \"w\" \\ \/ \n 日本語 😀 \ud83d\ude00"}],"stream":false,"max_tokens":1,"kv_transfer_params":` + nixl + `}`},
		{"escaped stream key recognised", KindChat,
			`{"\u0073tream":true,"max_tokens":4}`,
			`{"\u0073tream":false,"max_tokens":1,"kv_transfer_params":` + nixl + `}`},
		{"completions", KindCompletions,
			`{"prompt":"a","max_tokens":16,"stream":true,"stream_options":{"include_usage":true},"echo":true}`,
			`{"prompt":"a","max_tokens":1,"stream":false,"echo":true,"kv_transfer_params":` + nixl + `}`},
		{"completions no max_completion_tokens added", KindCompletions,
			`{"prompt":"a"}`,
			`{"prompt":"a","stream":false,"max_tokens":1,"kv_transfer_params":` + nixl + `}`},
		{"generate sampling_params edited", KindGenerate,
			`{"model":"m","token_ids":[1,2,3],"sampling_params":{"temperature":1.0,"max_tokens":2048,"min_tokens":5,"routed_experts_prompt_start":2},"stream":false,"cache_salt":"s"}`,
			`{"model":"m","token_ids":[1,2,3],"sampling_params":{"temperature":1.0,"max_tokens":1,"min_tokens":1,"routed_experts_prompt_start":2},"stream":false,"cache_salt":"s","kv_transfer_params":` + nixl + `}`},
		{"generate sampling_params without limits", KindGenerate,
			`{"token_ids":[1],"sampling_params":{ }}`,
			`{"token_ids":[1],"sampling_params":{"max_tokens":1 },"stream":false,"kv_transfer_params":` + nixl + `}`},
		{"generate sampling_params absent", KindGenerate,
			`{"token_ids":[1],"max_tokens":50}`,
			`{"token_ids":[1],"max_tokens":50,"stream":false,"sampling_params":{"max_tokens":1,"min_tokens":1},"kv_transfer_params":` + nixl + `}`},
		{"generate sampling_params null", KindGenerate,
			`{"sampling_params":null,"stream":true}`,
			`{"sampling_params":{"max_tokens":1,"min_tokens":1},"stream":false,"kv_transfer_params":` + nixl + `}`},
		{"generate top-level limits untouched", KindGenerate,
			`{"sampling_params":{"max_tokens":9},"min_tokens":7,"max_completion_tokens":7}`,
			`{"sampling_params":{"max_tokens":1},"min_tokens":7,"max_completion_tokens":7,"stream":false,"kv_transfer_params":` + nixl + `}`},
		{"responses", KindResponses,
			`{"input":"x","max_output_tokens":300,"stream":true,"max_tokens":5}`,
			`{"input":"x","max_output_tokens":1,"stream":false,"max_tokens":5,"kv_transfer_params":` + nixl + `}`},
		{"responses absent limit added", KindResponses,
			`{"input":"x"}`,
			`{"input":"x","stream":false,"max_output_tokens":1,"kv_transfer_params":` + nixl + `}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PrefillBody([]byte("keep:"), tc.kind, []byte(tc.in))
			if err != nil {
				t.Fatalf("PrefillBody: %v", err)
			}
			if string(got) != "keep:"+tc.want {
				t.Fatalf("got  %s\nwant keep:%s", got, tc.want)
			}
			if !json.Valid(got[5:]) {
				t.Fatalf("invalid JSON out: %s", got)
			}
		})
	}
}

func TestPrefillBodyErrors(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		in   string
		want error
	}{
		{"unknown kind", Kind(0), `{}`, ErrUnknownKind},
		{"array body", KindChat, `[{"a":1}]`, ErrBadJSON},
		{"truncated", KindChat, `{"messages":[{"content":"abc`, ErrBadJSON},
		{"sampling_params not object", KindGenerate, `{"sampling_params":[1]}`, ErrBadJSON},
		{"sampling_params string", KindGenerate, `{"sampling_params":"x"}`, ErrBadJSON},
		{"bad JSON inside sampling_params", KindGenerate, `{"sampling_params":{"max_tokens":}}`, ErrBadJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("x")
			got, err := PrefillBody(dst, tc.kind, []byte(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if string(got) != "x" {
				t.Fatalf("dst changed on error: %q", got)
			}
		})
	}
}

func TestKindFromPath(t *testing.T) {
	tests := []struct {
		path string
		kind Kind
		ok   bool
	}{
		{"/v1/chat/completions", KindChat, true},
		{"/v1/completions", KindCompletions, true},
		{"/inference/v1/generate", KindGenerate, true},
		{"/v1/responses", KindResponses, true},
		{"/v1/chat/completions?x=1", KindChat, true},
		{"/v1/chat/completions/", 0, false},
		{"/v1/embeddings", 0, false},
		{"/generate", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		k, ok := KindFromPath([]byte(tc.path))
		if k != tc.kind || ok != tc.ok {
			t.Errorf("KindFromPath(%q) = %v, %v; want %v, %v", tc.path, k, ok, tc.kind, tc.ok)
		}
	}
	for _, k := range []Kind{KindChat, KindCompletions, KindGenerate, KindResponses, 0} {
		if k.String() == "" {
			t.Errorf("Kind(%d) has no name", k)
		}
	}
}

func TestKVTransferParams(t *testing.T) {
	params := `{"do_remote_prefill":true,"do_remote_decode":false,"remote_block_ids":[1,2,3],"remote_engine_id":"e-1","remote_request_id":"cmpl-x-0","remote_host":"10.0.0.1","remote_port":5600,"tp_size":1}`
	tests := []struct {
		name string
		in   string
		want string
		ok   bool
		err  error
	}{
		{"present", `{"id":"cmpl","choices":[{"text":"x"}],"kv_transfer_params":` + params + `,"usage":{}}`, params, true, nil},
		{"whitespace inside kept", `{"kv_transfer_params": { "a" : [ 1 ] } }`, `{ "a" : [ 1 ] }`, true, nil},
		{"nested one ignored", `{"choices":[{"kv_transfer_params":{"a":1}}]}`, "", false, nil},
		{"absent", `{"id":"x"}`, "", false, nil},
		{"null", `{"kv_transfer_params":null}`, "", false, nil},
		{"empty object", `{"kv_transfer_params":{}}`, `{}`, true, nil},
		{"last duplicate wins", `{"kv_transfer_params":{"a":1},"kv_transfer_params":{"b":2}}`, `{"b":2}`, true, nil},
		{"not an object", `{"kv_transfer_params":"x"}`, "", false, ErrBadJSON},
		{"error body", `{"object":"error","message":"bad","code":400}`, "", false, nil},
		{"not JSON", `Internal Server Error`, "", false, ErrBadJSON},
		{"truncated", `{"kv_transfer_params":{"a":1}`, "", false, ErrBadJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, ok, err := KVTransferParams([]byte(tc.in))
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if ok != tc.ok || string(raw) != tc.want {
				t.Fatalf("got %s, %v; want %s, %v", raw, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestDecodeBody(t *testing.T) {
	kv := `{"do_remote_prefill":true,"remote_block_ids":[4,5],"remote_host":"h","remote_port":1}`
	tests := []struct {
		name string
		in   string
		kv   string
		want string
	}{
		{"added at end, stream and limits kept", `{"messages":[],"stream":true,"stream_options":{"include_usage":true},"max_tokens":512,"min_tokens":3}`, kv,
			`{"messages":[],"stream":true,"stream_options":{"include_usage":true},"max_tokens":512,"min_tokens":3,"kv_transfer_params":` + kv + `}`},
		{"client value replaced in place", "{ \"kv_transfer_params\" : {\"x\":[{\"y\":1}]} ,\n\"model\":\"m\"}", kv,
			"{ \"kv_transfer_params\" : " + kv + " ,\n\"model\":\"m\"}"},
		{"generate sampling_params untouched", `{"token_ids":[1],"sampling_params":{"max_tokens":64,"min_tokens":8}}`, kv,
			`{"token_ids":[1],"sampling_params":{"max_tokens":64,"min_tokens":8},"kv_transfer_params":` + kv + `}`},
		{"params whitespace trimmed", `{}`, " \n{ \"a\" : 1 }\t", `{"kv_transfer_params":{ "a" : 1 }}`},
		{"unicode passes", `{"content":"日本\u8a9e\\"}`, `{}`, `{"content":"日本\u8a9e\\","kv_transfer_params":{}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeBody([]byte("k:"), []byte(tc.in), []byte(tc.kv))
			if err != nil {
				t.Fatalf("DecodeBody: %v", err)
			}
			if string(got) != "k:"+tc.want {
				t.Fatalf("got  %s\nwant k:%s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{``, `null`, `[1]`, `{"a":`, `{} {}`, `"x"`} {
		if _, err := DecodeBody(nil, []byte(`{}`), []byte(bad)); !errors.Is(err, ErrBadJSON) {
			t.Errorf("kvParams %q: err = %v, want ErrBadJSON", bad, err)
		}
	}
}

// TestPrefillThenDecodeRoundTrip runs the body through both legs the way the router
// does and checks the decode body equals the client body plus the worker's params.
func TestPrefillThenDecodeRoundTrip(t *testing.T) {
	client := []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}],"stream":true,"max_tokens":100}`)
	pre, err := PrefillBody(nil, KindChat, client)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(pre, &m); err != nil || m["stream"] != false || m["max_tokens"] != 1.0 {
		t.Fatalf("prefill body %s: %v", pre, err)
	}
	resp := []byte(`{"id":"c","choices":[{"message":{"content":"x"}}],"kv_transfer_params":{"remote_engine_id":"e","remote_block_ids":[7]}}`)
	kv, ok, err := KVTransferParams(resp)
	if err != nil || !ok {
		t.Fatalf("KVTransferParams: %v %v", ok, err)
	}
	dec, err := DecodeBody(nil, client, kv)
	if err != nil {
		t.Fatal(err)
	}
	want := string(client[:len(client)-1]) + `,"kv_transfer_params":{"remote_engine_id":"e","remote_block_ids":[7]}}`
	if string(dec) != want {
		t.Fatalf("decode body %s\nwant %s", dec, want)
	}
}

func TestWantsPromptLogprobs(t *testing.T) {
	tests := []struct {
		body string
		want bool
		err  error
	}{
		{`{"sampling_params":{"prompt_logprobs":1}}`, true, nil},
		{`{"sampling_params":{"prompt_logprobs":0}}`, true, nil},
		{`{"sampling_params":{"prompt_logprobs":null}}`, false, nil},
		{`{"sampling_params":{"prompt_logprobs":false}}`, false, nil},
		{`{"sampling_params":{"max_tokens":1}}`, false, nil},
		{`{"prompt_logprobs":1}`, false, nil},
		{`{"sampling_params":null}`, false, nil},
		{`{"sampling_params":{"prompt_logprobs":}}`, false, ErrBadJSON},
	}
	for _, tc := range tests {
		got, err := WantsPromptLogprobs([]byte(tc.body))
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
			t.Errorf("WantsPromptLogprobs(%s) = %v, %v; want %v, %v", tc.body, got, err, tc.want, tc.err)
		}
	}
}
