package health

import (
	"context"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"
)

// Outcome is what one request says about the worker that served it.
type Outcome uint8

const (
	// Neutral says nothing about the worker's health: client errors, the client leaving,
	// deterministic request problems. The zero value, so a forgotten outcome is harmless.
	Neutral Outcome = iota
	// Success: the worker answered 2xx or 3xx.
	Success
	// Failure: the worker failed — transport error, timeout, or a 5xx it is responsible for.
	Failure
)

func (o Outcome) String() string {
	switch o {
	case Neutral:
		return "neutral"
	case Success:
		return "success"
	case Failure:
		return "failure"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Classify maps a worker response (status and body) or a transport error to an Outcome
// for the circuit breaker. err wins over status when both are set.
//
//   - Transport errors (dial, reset, closed, timeout) → Failure, except the caller's own
//     cancellation (context.Canceled) and the router's own pool limit
//     (fasthttp.ErrNoFreeConns), which say nothing about the worker → Neutral.
//   - 2xx, 3xx → Success.
//   - 4xx → Neutral: the client's fault (vllm-router PR #60 counted them as successes; we
//     count them as nothing, so a stream of bad requests cannot close a half-open circuit).
//   - 5xx → Failure, except vLLM's overlong-prompt errors (IsOverlongPrompt), which some
//     vLLM versions return as 500 (prime-rl PR #3274) and would otherwise let one
//     oversized prompt, retried, open every breaker; and 501 Not Implemented, a
//     deterministic "this request is unsupported" → Neutral.
//   - Anything else (no status, 1xx) → Neutral.
func Classify(status int, body []byte, err error) Outcome {
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, fasthttp.ErrNoFreeConns) {
			return Neutral
		}
		return Failure
	}
	switch {
	case status >= 200 && status < 400:
		return Success
	case status >= 400 && status < 500:
		return Neutral
	case status == 501:
		return Neutral
	case status >= 500 && status < 600:
		if IsOverlongPrompt(body) {
			return Neutral
		}
		return Failure
	}
	return Neutral
}

// overlongScanLimit bounds how much of an error body IsOverlongPrompt reads; vLLM's error
// bodies are a few hundred bytes.
const overlongScanLimit = 8 << 10

// overlongPhrases are vLLM's wordings for a prompt that does not fit the model, lower-case:
//
//   - "This model's maximum context length is N tokens. However, you requested …" and
//     "'max_tokens' or 'max_completion_tokens' is too large: … This model's maximum
//     context length is N tokens and your request has M input tokens" (OpenAI serving
//     validation, 400, newer versions 413);
//   - "The decoder prompt (length N) is longer than the maximum model length of M."
//     (engine input processor; vLLM ≥0.18 can surface it as a 500 GenerationError,
//     which the PrimeIntellect router fork rewrites to 400);
//   - "… is longer than the model's context length …" (OpenAI-compatible wording used by
//     clients' overlong-prompt detectors, e.g. prime-rl's verifiers).
var overlongPhrases = [...]string{
	"maximum context length",
	"maximum model length",
	"longer than the model's context length",
}

// IsOverlongPrompt reports whether a worker error body says the prompt exceeds the
// model's context length. It scans at most the first 8 KiB, case-insensitively, without
// allocating. The router may also use it to rewrite such a 500 to 400.
func IsOverlongPrompt(body []byte) bool {
	if len(body) > overlongScanLimit {
		body = body[:overlongScanLimit]
	}
	for _, p := range overlongPhrases {
		if containsFoldASCII(body, p) {
			return true
		}
	}
	return false
}

// containsFoldASCII reports whether s contains lower, ASCII case-insensitively; lower must
// be lower-case.
func containsFoldASCII(s []byte, lower string) bool {
	n := len(lower)
	if n == 0 {
		return true
	}
	first := lower[0]
	for i := 0; i+n <= len(s); i++ {
		if toLowerASCII(s[i]) != first {
			continue
		}
		j := 1
		for j < n && toLowerASCII(s[i+j]) == lower[j] {
			j++
		}
		if j == n {
			return true
		}
	}
	return false
}

func toLowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
