package sim

import (
	"strings"
	"testing"
	"time"
)

func TestStreamingShapes(t *testing.T) {
	ts := start(t, testConfig())
	cases := []struct {
		name, path, body string
		wantEvents       int    // events including [DONE]
		wantText         string // concatenated text pieces
		piece            func(m map[string]any) (string, bool)
		lastName         string
	}{
		{
			name: "chat with usage", path: "/v1/chat/completions",
			body:       `{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}`,
			wantEvents: 1 + 4 + 1 + 1, wantText: "hello from the switchyard",
			piece: func(m map[string]any) (string, bool) {
				s, ok := get(m, "choices", 0, "delta", "content").(string)
				return s, ok
			},
		},
		{
			name: "completion", path: "/v1/completions",
			body:       `{"prompt":"a b c","max_tokens":3,"stream":true}`,
			wantEvents: 3 + 1, wantText: "hello from the",
			piece: func(m map[string]any) (string, bool) {
				s, ok := get(m, "choices", 0, "text").(string)
				return s, ok
			},
		},
		{
			name: "generate", path: "/inference/v1/generate",
			body:       `{"token_ids":[9,9,9],"sampling_params":{"max_tokens":2},"stream":true}`,
			wantEvents: 2 + 1, wantText: "hello from",
			piece: func(m map[string]any) (string, bool) {
				id, ok := get(m, "choices", 0, "token_ids", 0).(float64)
				if !ok {
					return "", false
				}
				return map[bool]string{true: "", false: " "}[id == 0] + tokenText(int(id)), true
			},
		},
		{
			name: "responses", path: "/v1/responses",
			body:       `{"input":"Hi","max_output_tokens":2,"stream":true}`,
			wantEvents: 1 + 2 + 2, wantText: "hello from", lastName: "response.completed",
			piece: func(m map[string]any) (string, bool) {
				if m["type"] != "response.output_text.delta" {
					return "", false
				}
				return m["delta"].(string), true
			},
		},
		{
			name: "messages", path: "/v1/messages",
			body:       `{"max_tokens":3,"messages":[{"role":"user","content":"Hi"}],"stream":true}`,
			wantEvents: 2 + 3 + 3, wantText: "hello from the", lastName: "message_stop",
			piece: func(m map[string]any) (string, bool) {
				s, ok := get(m, "delta", "text").(string)
				return s, ok
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, events, err := stream(t, ts.url+tc.path, tc.body)
			if err != nil {
				t.Fatalf("reading stream: %v", err)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type %q", ct)
			}
			if len(events) != tc.wantEvents {
				t.Fatalf("%d events, want %d: %v", len(events), tc.wantEvents, events)
			}
			last := events[len(events)-1]
			if tc.lastName == "" && last.data != "[DONE]" {
				t.Errorf("last event %q, want [DONE]", last.data)
			}
			if tc.lastName != "" && last.name != tc.lastName {
				t.Errorf("last event %q, want %q", last.name, tc.lastName)
			}
			var text strings.Builder
			for _, e := range events {
				if e.data == "[DONE]" {
					continue
				}
				if p, ok := tc.piece(jsonOf(t, e.data)); ok {
					text.WriteString(p)
				}
			}
			if text.String() != tc.wantText {
				t.Errorf("text %q, want %q", text.String(), tc.wantText)
			}
		})
	}
}

func TestChatStreamChunks(t *testing.T) {
	ts := start(t, testConfig())
	_, events, err := stream(t, ts.url+"/v1/chat/completions",
		`{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}`)
	if err != nil {
		t.Fatal(err)
	}
	first := jsonOf(t, events[0].data)
	if first["object"] != "chat.completion.chunk" || get(first, "choices", 0, "delta", "role") != "assistant" {
		t.Errorf("first chunk %s, want the role announcement", events[0].data)
	}
	if fr := get(jsonOf(t, events[2].data), "choices", 0, "finish_reason"); fr != "length" {
		t.Errorf("last token chunk finish_reason %v, want length", fr)
	}
	usage := jsonOf(t, events[3].data)
	if c, ok := usage["choices"].([]any); !ok || len(c) != 0 || get(usage, "usage", "completion_tokens") != 2.0 {
		t.Errorf("usage chunk %s, want choices [] and 2 completion tokens", events[3].data)
	}
}

// TestSSEEventsArriveOneByOne proves chunks are flushed as generated, not buffered: with
// a 40ms inter-token latency, consecutive token events arrive apart.
func TestSSEEventsArriveOneByOne(t *testing.T) {
	cfg := testConfig()
	cfg.InterTokenLatency = 40 * time.Millisecond
	ts := start(t, cfg)
	_, events, err := stream(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":4,"stream":true}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 5 {
		t.Fatalf("%d events", len(events))
	}
	const tolerance = 15 * time.Millisecond
	for i := 1; i < 4; i++ {
		if gap := events[i].at.Sub(events[i-1].at); gap < cfg.InterTokenLatency-tolerance {
			t.Errorf("event %d came %v after event %d, want about %v", i, gap, i-1, cfg.InterTokenLatency)
		}
	}
}

// TestClientLeavingAbortsStream: a client that closes a stream frees its running slot,
// as vLLM aborts the request, so a router's cancellation reaches the worker.
func TestClientLeavingAbortsStream(t *testing.T) {
	cfg := testConfig()
	cfg.MaxNumSeqs, cfg.InterTokenLatency = 1, 5*time.Millisecond
	ts := start(t, cfg)
	resp, err := client.Post(ts.url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":30000,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	buf := make([]byte, 256)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "the stream to be aborted", func() bool {
		st := ts.Stats()
		return st.Aborted == 1 && st.Running == 0
	})
	if r := post(t, ts.url+"/v1/completions", `{"prompt":"x","max_tokens":1}`); r.status != 200 {
		t.Errorf("next request: %d", r.status)
	}
}
