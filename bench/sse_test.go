package bench

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestReadSSE(t *testing.T) {
	long := strings.Repeat("x", 40<<10) // longer than the reader's buffer
	tests := []struct {
		name       string
		stream     string
		wantText   string
		wantFirst  int // event number of the first content event
		wantEvents int
		wantErr    error
	}{
		{
			name: "vLLM chat stream: role chunk, content, usage, DONE",
			stream: `data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n" +
				`data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hello"}}]}` + "\n\n" +
				`data: {"id":"c1","choices":[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}]}` + "\n\n" +
				`data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}` + "\n\n" +
				"data: [DONE]\n\n",
			wantText: "Hello world", wantFirst: 2, wantEvents: 5,
		},
		{
			name: "CRLF, comments, other fields, no space after colon",
			stream: ": keep-alive\r\n\r\nevent: message\r\nid: 1\r\n" +
				`data:{"choices":[{"delta":{"content":"a"}}]}` + "\r\n\r\n" +
				"data: [DONE]\r\n\r\n",
			wantText: "a", wantFirst: 1, wantEvents: 2,
		},
		{
			name:     "completions text, DONE without trailing blank line",
			stream:   `data: {"choices":[{"text":"one"}]}` + "\n\n" + `data: {"choices":[{"text":" two"}]}` + "\n\ndata: [DONE]",
			wantText: "one two", wantFirst: 1, wantEvents: 3,
		},
		{
			name:     "multi-line data joins with newline",
			stream:   "data: {\"choices\":\ndata: [{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
			wantText: "hi", wantFirst: 1, wantEvents: 2,
		},
		{
			name:     "long content line",
			stream:   `data: {"choices":[{"delta":{"content":"` + long + `"}}]}` + "\n\ndata: [DONE]\n\n",
			wantText: long, wantFirst: 1, wantEvents: 2,
		},
		{
			name:     "no content at all still ends cleanly",
			stream:   `data: {"choices":[{"delta":{"role":"assistant"}}]}` + "\n\ndata: [DONE]\n\n",
			wantText: "", wantFirst: 0, wantEvents: 2,
		},
		{
			name:     "ends before DONE",
			stream:   `data: {"choices":[{"delta":{"content":"partial"}}]}` + "\n\n",
			wantText: "partial", wantFirst: 1, wantEvents: 1, wantErr: ErrStreamTruncated,
		},
		{
			name:       "error event",
			stream:     `data: {"error":{"message":"boom","code":500}}` + "\n\n",
			wantEvents: 1, wantErr: ErrStreamError,
		},
		{
			name:       "malformed event",
			stream:     "data: {not json\n\n",
			wantEvents: 1, wantErr: ErrBadBody,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stamp := time.Unix(42, 0)
			calls := 0
			now := func() time.Time { calls++; return stamp }
			res, err := readSSE(strings.NewReader(tc.stream), now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v; want %v", err, tc.wantErr)
			}
			if res.Content != tc.wantText {
				t.Errorf("content = %.40q (len %d); want %.40q (len %d)", res.Content, len(res.Content), tc.wantText, len(tc.wantText))
			}
			if res.FirstContentEvent != tc.wantFirst {
				t.Errorf("first content event = %d; want %d", res.FirstContentEvent, tc.wantFirst)
			}
			if res.Events != tc.wantEvents {
				t.Errorf("events = %d; want %d", res.Events, tc.wantEvents)
			}
			wantCalls := 0
			if tc.wantFirst > 0 {
				wantCalls = 1
				if !res.FirstContent.Equal(stamp) {
					t.Errorf("first content time = %v; want the clock's %v", res.FirstContent, stamp)
				}
			}
			if calls != wantCalls {
				t.Errorf("clock read %d times; want %d (only at the first content event)", calls, wantCalls)
			}
		})
	}
}

func TestReadJSONBody(t *testing.T) {
	tests := []struct {
		name, body, want string
		wantErr          error
	}{
		{"chat", `{"choices":[{"message":{"role":"assistant","content":"hi there"}}]}`, "hi there", nil},
		{"completion", `{"choices":[{"text":"abc"}]}`, "abc", nil},
		{"null error is no error", `{"error":null,"choices":[{"text":"x"}]}`, "x", nil},
		{"error object", `{"error":{"message":"bad"}}`, "", ErrStreamError},
		{"not json", `<html>`, "", ErrBadBody},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readJSONBody(strings.NewReader(tc.body))
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("readJSONBody = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
