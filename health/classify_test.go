package health

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// Error bodies in vLLM's own wordings (OpenAI serving validation and the engine's input
// processor), plus the OpenAI-compatible wording clients match.
var (
	vllmContextLength = `{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}}`
	vllmMaxTokens     = `{"error":{"message":"'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is 4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None","type":"BadRequestError","param":null,"code":400}}`
	vllmDecoderPrompt = "{\"error\":{\"message\":\"The decoder prompt (length 12324) is longer than the maximum model length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens.\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}"
	openAIInputLonger = `{"error":{"message":"The input (250000 tokens) is longer than the model's context length (200000 tokens)."}}`
)

func TestIsOverlongPrompt(t *testing.T) {
	tests := []struct {
		name string
		body string
		want bool
	}{
		{"vllm context length", vllmContextLength, true},
		{"vllm max_tokens too large", vllmMaxTokens, true},
		{"vllm decoder prompt", vllmDecoderPrompt, true},
		{"input longer than context", openAIInputLonger, true},
		{"upper case", `MAXIMUM CONTEXT LENGTH`, true},
		{"engine dead", `{"error":{"message":"EngineCore encountered an issue. See stack trace (above) for the root cause.","code":500}}`, false},
		{"cuda oom", `{"error":{"message":"CUDA out of memory"}}`, false},
		{"near miss", `maximum context`, false},
		{"empty", ``, false},
		{"beyond the scan limit", strings.Repeat(" ", overlongScanLimit) + vllmContextLength, false},
		{"phrase straddles the scan limit", strings.Repeat(" ", overlongScanLimit-5) + "maximum context length", false},
		{"phrase ends at the scan limit", strings.Repeat(" ", overlongScanLimit-22) + "maximum context length", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsOverlongPrompt([]byte(tc.body)); got != tc.want {
				t.Fatalf("IsOverlongPrompt = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		err    error
		want   Outcome
	}{
		{"200", 200, "", nil, Success},
		{"204", 204, "", nil, Success},
		{"302", 302, "", nil, Success},
		{"400", 400, `{"error":"bad"}`, nil, Neutral},
		{"400 overlong", 400, vllmContextLength, nil, Neutral},
		{"404", 404, "", nil, Neutral},
		{"413", 413, "", nil, Neutral},
		{"422", 422, "", nil, Neutral},
		{"429", 429, "", nil, Neutral},
		{"500", 500, `{"error":"boom"}`, nil, Failure},
		{"500 overlong (vLLM >=0.18 GenerationError)", 500, vllmDecoderPrompt, nil, Neutral},
		{"500 overlong, context length wording", 500, vllmContextLength, nil, Neutral},
		{"501 not implemented", 501, "", nil, Neutral},
		{"502", 502, "", nil, Failure},
		{"503", 503, "", nil, Failure},
		{"504", 504, "", nil, Failure},
		{"no status", 0, "", nil, Neutral},
		{"1xx", 100, "", nil, Neutral},
		{"dial error", 0, "", &DialError{Err: errors.New("refused")}, Failure},
		{"timeout", 0, "", fasthttp.ErrTimeout, Failure},
		{"closed before response", 0, "", fasthttp.ErrConnectionClosed, Failure},
		{"error wins over status", 200, "", fasthttp.ErrTimeout, Failure},
		{"client cancelled", 0, "", context.Canceled, Neutral},
		{"client cancelled, wrapped", 0, "", fmt.Errorf("forwarding: %w", context.Canceled), Neutral},
		{"router pool full", 0, "", fasthttp.ErrNoFreeConns, Neutral},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.status, []byte(tc.body), tc.err); got != tc.want {
				t.Fatalf("Classify(%d, %.40q, %v) = %v; want %v", tc.status, tc.body, tc.err, got, tc.want)
			}
		})
	}
}

func TestOutcomeAndStateStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Neutral.String(), "neutral"}, {Success.String(), "success"}, {Failure.String(), "failure"},
		{Outcome(9).String(), "Outcome(9)"},
		{Closed.String(), "closed"}, {Open.String(), "open"}, {HalfOpen.String(), "half_open"},
		{State(7).String(), "State(7)"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q; want %q", tc.got, tc.want)
		}
	}
	if Outcome(0) != Neutral {
		t.Fatalf("zero Outcome is %v; want neutral", Outcome(0))
	}
}
