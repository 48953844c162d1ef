package policy

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

func TestSessionIDFromBody(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       string // "" means nil
	}{
		{"session_params first", `{"user":"u","session_params":{"other":[1,{"x":null}],"session_id":"sp"}}`, "sp"},
		{"then user", `{"session_id":"s","user":"u","user_id":"x"}`, "u"},
		{"then session_id", `{"user_id":"x","session_id":"s"}`, "s"},
		{"then user_id", `{"model":"m","user_id":"x"}`, "x"},
		{"empty values skipped", `{"session_params":{"session_id":""},"user":"","session_id":"s"}`, "s"},
		{"non-string values skipped", `{"user":42,"session_params":{"session_id":7},"user_id":"x"}`, "x"},
		{"session_params not an object", `{"session_params":"sp","user":"u"}`, "u"},
		{"last duplicate wins", `{"user":"a","user":"b"}`, "b"},
		{"escaped value decoded", `{"user":"a\/b\u00e9"}`, "a/bé"},
		{"escaped key matched", `{"us\u0065r":"u"}`, "u"},
		{"whitespace", " \n{ \"user\" :\t\"u\" } \r\n", "u"},
		// vllm-router's substring scan took these for keys.
		{"user: inside prompt text", `{"prompt":"user: alice\n\"user\": \"bob\"","model":"m"}`, ""},
		{"user as a value", `{"messages":[{"role":"user","content":"hi"}]}`, ""},
		{"nested key ignored", `{"metadata":{"user":"x","session_id":"y"}}`, ""},
		{"no fields", `{"prompt":"hi"}`, ""},
		{"empty object", `{}`, ""},
		{"truncated", `{"user":"u"`, ""},
		{"trailing garbage", `{"user":"u"} x`, ""},
		{"trailing comma", `{"user":"u",}`, ""},
		{"bad nested", `{"a":[1,2,],"user":"u"}`, ""},
		{"control char in string", "{\"user\":\"a\x01b\"}", ""},
		{"bad escape", `{"user":"a\qb"}`, ""},
		{"bad number", `{"a":01,"user":"u"}`, ""},
		{"array top level", `["user","u"]`, ""},
		{"empty", ``, ""},
		{"mismatched brackets", `{"a":[}],"user":"u"}`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := SessionIDFromBody([]byte(c.body))
			if (c.want == "") != (got == nil) || string(got) != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestPromptText(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       string // appended after "pre|"
	}{
		{"completion string", `{"model":"m","prompt":"hello"}`, "hello"},
		{"completion batch", `{"prompt":["a","b",3,"c"]}`, "a\nb\nc"},
		{"token ids only", `{"prompt":[1,2,3]}`, ""},
		{"chat strings", `{"messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"}]}`, "sys\nhi\n"},
		{"chat parts", `{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]}`, "ab\n"},
		{"null content skipped", `{"messages":[{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"x"}]}`, "x\n"},
		{"escapes decoded", `{"prompt":"a\nb\u00e9\ud83d\ude00\""}`, "a\nbé😀\""},
		{"no prompt", `{"input":"x"}`, ""},
		{"malformed", `{"prompt":"hello"`, ""},
		{"malformed after prompt", `{"prompt":"hello","x":[}`, ""},
		{"not an object", `"prompt"`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := PromptText([]byte("pre|"), []byte(c.body))
			if string(got) != "pre|"+c.want {
				t.Fatalf("got %q, want %q", got, "pre|"+c.want)
			}
		})
	}
	if got := PromptText(nil, []byte(`{"x":1}`)); got != nil {
		t.Fatalf("nil dst, no prompt: got %q", got)
	}
}

// refSessionID is SessionIDFromBody written with encoding/json.
func refSessionID(body []byte) (string, bool) {
	var fields [4]string
	ok := eachField(body, func(key string, v json.RawMessage) {
		switch key {
		case "session_params":
			fields[0] = ""
			eachField(v, func(k string, iv json.RawMessage) {
				if k == "session_id" {
					fields[0] = jsonString(iv)
				}
			})
		case "user":
			fields[1] = jsonString(v)
		case "session_id":
			fields[2] = jsonString(v)
		case "user_id":
			fields[3] = jsonString(v)
		}
	})
	if !ok {
		return "", false
	}
	for _, f := range fields {
		if f != "" {
			return f, true
		}
	}
	return "", false
}

// refPromptText is PromptText written with encoding/json.
func refPromptText(body []byte) (string, bool) {
	var out []byte
	found := false
	ok := eachField(body, func(key string, v json.RawMessage) {
		switch key {
		case "prompt":
			if s, isStr := jsonStringOK(v); isStr {
				out, found = append(out, s...), true
				return
			}
			var arr []json.RawMessage
			if json.Unmarshal(v, &arr) == nil && len(v) > 0 && v[0] == '[' {
				first := true
				for _, e := range arr {
					if s, isStr := jsonStringOK(e); isStr {
						if !first {
							out = append(out, '\n')
						}
						out, found, first = append(out, s...), true, false
					}
				}
			}
		case "messages":
			var msgs []json.RawMessage
			if len(v) == 0 || v[0] != '[' || json.Unmarshal(v, &msgs) != nil {
				return
			}
			for _, m := range msgs {
				eachField(m, func(k string, content json.RawMessage) {
					if k != "content" {
						return
					}
					if s, isStr := jsonStringOK(content); isStr {
						out, found = append(append(out, s...), '\n'), true
						return
					}
					var parts []json.RawMessage
					if len(content) == 0 || content[0] != '[' || json.Unmarshal(content, &parts) != nil {
						return
					}
					for _, part := range parts {
						eachField(part, func(pk string, pv json.RawMessage) {
							if s, isStr := jsonStringOK(pv); pk == "text" && isStr {
								out, found = append(out, s...), true
							}
						})
					}
					out = append(out, '\n')
				})
			}
		}
	})
	return string(out), ok && found
}

// eachField calls fn for every member of a JSON object, in document order, duplicates
// included; false if raw is not a valid JSON object.
func eachField(raw []byte, fn func(key string, v json.RawMessage)) bool {
	if !json.Valid(raw) {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return false
		}
		fn(tok.(string), v)
	}
	return true
}

func jsonString(v json.RawMessage) string {
	s, _ := jsonStringOK(v)
	return s
}

func jsonStringOK(v json.RawMessage) (string, bool) {
	var s string
	if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

func FuzzSessionIDFromBody(f *testing.F) {
	for _, seed := range []string{
		`{"session_params":{"session_id":"sp"},"user":"u"}`,
		`{"prompt":"user: alice","user_id":"x"}`,
		`{"us\u0065r":"a\/b","a":[1,-2.5e3,true,false,null,{"b":[]}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := SessionIDFromBody(body)
		if got != nil && !json.Valid(body) {
			t.Fatalf("id %q from invalid JSON", got)
		}
		if !utf8.Valid(body) || bytes.Count(body, []byte("[")) > 5000 {
			return // encoding/json rewrites invalid UTF-8; deep nesting hits its depth limit
		}
		want, ok := refSessionID(body)
		if ok != (got != nil) || string(got) != want {
			t.Fatalf("got %q, encoding/json says %q (found %v)", got, want, ok)
		}
	})
}

func FuzzPromptText(f *testing.F) {
	for _, seed := range []string{
		`{"prompt":"hello"}`,
		`{"prompt":["a","b",3]}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a\n\u00e9"}]},{"content":"x"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := PromptText([]byte("pre|"), body)
		if !bytes.HasPrefix(got, []byte("pre|")) {
			t.Fatalf("dst prefix lost: %q", got)
		}
		if len(got) > 4 && !json.Valid(body) {
			t.Fatalf("text %q from invalid JSON", got)
		}
		if !utf8.Valid(body) || bytes.Count(body, []byte("[")) > 5000 {
			return
		}
		want, ok := refPromptText(body)
		if !ok {
			want = ""
		}
		if string(got[4:]) != want {
			t.Fatalf("got %q, encoding/json says %q", got[4:], want)
		}
	})
}

// The head variants read the first bytes of a body too large to hold: fields within them
// count, a cut string is prompt text but never a session id.
func TestHeadScans(t *testing.T) {
	cases := []struct {
		name, head, wantID, wantText string
	}{
		{"id before the cut", `{"user":"u1","messages":[{"role":"user","content":"hello wor`, "u1", "hello wor"},
		{"id cut in half", `{"messages":[{"content":"hi"}],"user":"u1`, "", "hi\n"},
		{"escape cut in half", `{"prompt":"a\u00e9b\u00`, "", "aéb"},
		{"backslash at the end", `{"prompt":"ab\`, "", "ab"},
		{"whole body", `{"session_id":"s","prompt":"p"}`, "s", "p"},
		{"nothing yet", `{"mess`, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(SessionIDFromHead([]byte(tc.head))); got != tc.wantID {
				t.Errorf("SessionIDFromHead = %q, want %q", got, tc.wantID)
			}
			if got := string(PromptTextHead(nil, []byte(tc.head))); got != tc.wantText {
				t.Errorf("PromptTextHead = %q, want %q", got, tc.wantText)
			}
			if SessionIDFromBody([]byte(tc.head)) != nil && tc.name != "whole body" {
				t.Error("SessionIDFromBody accepted a cut body")
			}
		})
	}
}
