package pd

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

// Seeds are shared by every target; each target also has a committed corpus under
// testdata/fuzz/<Target>/.
var fuzzSeeds = []string{
	`{}`,
	`{"model":"m","messages":[{"role":"user","content":"h\u00e9 \"x\" 日本"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"min_tokens":9,"max_completion_tokens":3}`,
	`{"token_ids":[1,2],"sampling_params":{"max_tokens":5,"min_tokens":2},"kv_transfer_params":{"a":[1,{"b":null}]}}`,
	`{"sampling_params":null,"str\u0065am":true,"a":1,"a":2}`,
	" {\n\t\"input\" : \"x\" , \"max_output_tokens\" : 1e3 }\r\n",
	`{"kv_transfer_params":null,"x":[true,false,null,-0.5e+10,"\\\/"]}`,
	`{"a":`,
	`{"a":"\ud83d\ude00"}`,
}

// isObject reports whether b is valid JSON whose top-level value is an object.
func isObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return json.Valid(b) && len(t) > 0 && t[0] == '{'
}

// members decodes b's top-level members; duplicates keep the last, as vLLM does.
func members(t *testing.T, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("output does not decode: %v\n%s", err, b)
	}
	return m
}

// checkValidity asserts the scanner agrees with encoding/json about what is valid.
func checkValidity(t *testing.T, in []byte, err error) {
	t.Helper()
	if isObject(in) && err != nil {
		t.Fatalf("valid object rejected: %v\n%q", err, in)
	}
	if !isObject(in) && err == nil {
		t.Fatalf("invalid input accepted: %q", in)
	}
	if err != nil && !errors.Is(err, ErrBadJSON) {
		t.Fatalf("error does not wrap ErrBadJSON: %v", err)
	}
}

func FuzzPrefillBody(f *testing.F) {
	for _, s := range fuzzSeeds {
		for k := KindChat; k <= KindResponses; k++ {
			f.Add(uint8(k), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, k uint8, in []byte) {
		kind := Kind(k%4 + 1)
		out, err := PrefillBody(nil, kind, in)
		if kind == KindGenerate && err != nil && isObject(in) {
			// sampling_params of the wrong type is the one valid-JSON rejection.
			var m map[string]json.RawMessage
			_ = json.Unmarshal(in, &m)
			if sp := bytes.TrimSpace(m["sampling_params"]); len(sp) > 0 && sp[0] != '{' && sp[0] != 'n' {
				return
			}
		}
		checkValidity(t, in, err)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON:\n%s", out)
		}
		before, after := members(t, in), members(t, out)
		if string(after["stream"]) != "false" || after["stream_options"] != nil {
			t.Fatalf("stream not disabled: %s", out)
		}
		if string(after["kv_transfer_params"]) != string(nixlPrefillParams) {
			t.Fatalf("kv_transfer_params = %s", after["kv_transfer_params"])
		}
		changed := map[string]bool{"stream": true, "stream_options": true, "kv_transfer_params": true}
		switch kind {
		case KindChat, KindCompletions:
			changed["max_tokens"], changed["max_completion_tokens"], changed["min_tokens"] = true, true, true
			if string(after["max_tokens"]) != "1" {
				t.Fatalf("max_tokens = %s", after["max_tokens"])
			}
			if _, ok := before["max_completion_tokens"]; ok != (after["max_completion_tokens"] != nil) {
				t.Fatalf("max_completion_tokens presence changed")
			}
			if v := after["min_tokens"]; v != nil && allDigits(v) && string(v) != "0" && string(v) != "1" {
				t.Fatalf("min_tokens = %s", v)
			}
		case KindGenerate:
			changed["sampling_params"] = true
			sp := members(t, after["sampling_params"])
			if string(sp["max_tokens"]) != "1" {
				t.Fatalf("sampling_params.max_tokens = %s", sp["max_tokens"])
			}
		case KindResponses:
			changed["max_output_tokens"] = true
			if string(after["max_output_tokens"]) != "1" {
				t.Fatalf("max_output_tokens = %s", after["max_output_tokens"])
			}
		}
		for k, v := range before {
			if !changed[k] && string(after[k]) != string(v) {
				t.Fatalf("member %q changed: %s -> %s", k, v, after[k])
			}
		}
	})
}

func FuzzDecodeBody(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), []byte(`{"remote_block_ids":[1],"remote_host":"h"}`))
	}
	f.Fuzz(func(t *testing.T, in, kv []byte) {
		out, err := DecodeBody(nil, in, kv)
		if !isObject(kv) {
			if err == nil {
				t.Fatalf("bad kv_transfer_params accepted: %q", kv)
			}
			return
		}
		checkValidity(t, in, err)
		if err != nil {
			return
		}
		before, after := members(t, in), members(t, out)
		var want, got any
		_ = json.Unmarshal(kv, &want)
		_ = json.Unmarshal(after["kv_transfer_params"], &got)
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		if !bytes.Equal(wj, gj) {
			t.Fatalf("kv_transfer_params = %s, want %s", after["kv_transfer_params"], kv)
		}
		for k, v := range before {
			if k != "kv_transfer_params" && string(after[k]) != string(v) {
				t.Fatalf("member %q changed: %s -> %s", k, v, after[k])
			}
		}
		if len(before) == len(after) && before["kv_transfer_params"] == nil {
			t.Fatalf("kv_transfer_params not added")
		}
	})
}

func FuzzKVTransferParams(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		raw, ok, err := KVTransferParams(in)
		if err != nil {
			if !errors.Is(err, ErrBadJSON) {
				t.Fatalf("error does not wrap ErrBadJSON: %v", err)
			}
			if !isObject(in) {
				return
			}
			m := members(t, in)
			if v := bytes.TrimSpace(m["kv_transfer_params"]); v == nil || v[0] == '{' || v[0] == 'n' {
				t.Fatalf("valid response rejected: %v\n%q", err, in)
			}
			return
		}
		if !isObject(in) {
			t.Fatalf("invalid response accepted: %q", in)
		}
		want := members(t, in)["kv_transfer_params"]
		if ok {
			if !bytes.Equal(raw, want) {
				t.Fatalf("raw = %s, want %s", raw, want)
			}
		} else if want != nil && string(want) != "null" {
			t.Fatalf("kv_transfer_params %s not reported", want)
		}
	})
}

func FuzzMergeGenerate(f *testing.F) {
	p := `{"choices":[{"routed_experts":{"data":"LAEtAZABkQE=","shape":[2,1,2],"start":3,"dtype":"uint16"}}],"prompt_token_ids":[1,2],"prompt_logprobs":[null]}`
	d := `{"choices":[{"routed_experts":{"data":"AAAAAAAAAAD0AfUBWAJZAg==","shape":[4,1,2],"start":3,"dtype":"uint16"}}],"usage":{}}`
	f.Add([]byte(p), []byte(d), true)
	f.Add([]byte(`{"choices":[{"routed_experts":{"data":"CgsUFQ==","shape":[2,1,2],"start":0}}]}`),
		[]byte(`{"choices":[{"routed_experts":{"data":"AAABAR4f","shape":[3,1,2],"start":0}}]}`), false)
	f.Add([]byte(`{"prompt_token_ids":[1]}`), []byte(`{"choices":[]}`), false)
	f.Fuzz(func(t *testing.T, prefill, decode []byte, want bool) {
		out, err := MergeGenerate(nil, prefill, decode, want)
		if err != nil {
			if !errors.Is(err, ErrBadJSON) && !errors.Is(err, ErrReplayMismatch) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if !isObject(decode) {
			t.Fatalf("invalid decode response accepted: %q", decode)
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON:\n%s", out)
		}
		before, after := members(t, decode), members(t, out)
		for k, v := range before {
			if k != "choices" && k != "prompt_token_ids" && k != "prompt_logprobs" && string(after[k]) != string(v) {
				t.Fatalf("member %q changed: %s -> %s", k, v, after[k])
			}
		}
	})
}

// FuzzEditObject applies one edit of each kind, on fuzzed keys, and checks the result
// against encoding/json's view of the input.
func FuzzEditObject(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), "stream", "a", "max_tokens", "sampling_params")
	}
	f.Fuzz(func(t *testing.T, in []byte, setKey, delKey, capKey, editKey string) {
		keys := map[string]bool{}
		for _, k := range []string{setKey, delKey, capKey, editKey} {
			if keys[k] || !utf8.ValidString(k) {
				return // one edit per key; encoding/json, the oracle, rewrites invalid UTF-8
			}
			keys[k] = true
		}
		edits := []Edit{
			{Key: setKey, Op: OpSet, Value: []byte(`"set"`)},
			{Key: delKey, Op: OpDelete},
			{Key: capKey, Op: OpCap, Value: []byte("7")},
			{Key: editKey, Op: OpEdit, Value: []byte(`{"new":true}`), Nested: []Edit{{Key: setKey, Op: OpSet, Value: []byte("0")}}},
		}
		out, err := EditObject(nil, in, edits)
		if err != nil {
			if !errors.Is(err, ErrBadJSON) {
				t.Fatalf("error does not wrap ErrBadJSON: %v", err)
			}
			if isObject(in) {
				var m map[string]json.RawMessage
				_ = json.Unmarshal(in, &m)
				if v := bytes.TrimSpace(m[editKey]); v == nil || v[0] == '{' || v[0] == 'n' {
					t.Fatalf("valid object rejected: %v\n%q", err, in)
				}
			}
			return
		}
		if !isObject(in) {
			t.Fatalf("invalid input accepted: %q", in)
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON:\n%s", out)
		}
		before, after := members(t, in), members(t, out)
		if string(after[setKey]) != `"set"` || after[delKey] != nil {
			t.Fatalf("set/delete not applied: %s", out)
		}
		for k, v := range before {
			if !keys[k] && string(after[k]) != string(v) {
				t.Fatalf("member %q changed: %s -> %s", k, v, after[k])
			}
		}
	})
}
