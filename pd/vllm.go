package pd

import (
	"bytes"
	"errors"
	"fmt"
)

// Kind is the API a request body follows; it decides where the prefill rewrite puts the
// token limits.
type Kind uint8

const (
	// KindChat is /v1/chat/completions: max_tokens at the top level.
	KindChat Kind = iota + 1
	// KindCompletions is /v1/completions: max_tokens at the top level.
	KindCompletions
	// KindGenerate is /inference/v1/generate (token-in/token-out): limits live under
	// sampling_params.
	KindGenerate
	// KindResponses is /v1/responses: the only limit is max_output_tokens.
	KindResponses
)

func (k Kind) String() string {
	switch k {
	case KindChat:
		return "chat"
	case KindCompletions:
		return "completions"
	case KindGenerate:
		return "generate"
	case KindResponses:
		return "responses"
	}
	return "unknown"
}

// ErrUnknownKind is returned for a Kind outside the constants above.
var ErrUnknownKind = errors.New("pd: unknown API kind")

// KindFromPath maps a request path (a query string is ignored) to its Kind. Paths are
// matched exactly; anything else is not a P/D-capable endpoint (ok=false), and the
// router decides what to do with it.
func KindFromPath(path []byte) (Kind, bool) {
	if q := bytes.IndexByte(path, '?'); q >= 0 {
		path = path[:q]
	}
	switch string(path) {
	case "/v1/chat/completions":
		return KindChat, true
	case "/v1/completions":
		return KindCompletions, true
	case "/inference/v1/generate":
		return KindGenerate, true
	case "/v1/responses":
		return KindResponses, true
	}
	return 0, false
}

// nixlPrefillParams asks the prefill worker's NixlConnector to keep the prompt's KV
// blocks for a remote decode and to report where they are. It is what vLLM's toy proxy
// and vllm-router send (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py,
// vllm_pd_router.rs); it replaces any value the client sent.
var nixlPrefillParams = []byte(`{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`)

var (
	jsonOne   = []byte("1")
	jsonFalse = []byte("false")
)

// The prefill leg must return exactly one token as a plain JSON response: stream off
// (the router reads kv_transfer_params from the body), stream_options gone (vLLM rejects
// it without stream), the limits at 1 and min_tokens no larger (vLLM rejects
// min_tokens > max_tokens).
var (
	prefillStreamEdits = []Edit{
		{Key: "stream", Op: OpSet, Value: jsonFalse},
		{Key: "stream_options", Op: OpDelete},
	}
	prefillEditsChat = append(prefillStreamEdits[:2:2],
		Edit{Key: "max_tokens", Op: OpSet, Value: jsonOne},
		Edit{Key: "max_completion_tokens", Op: OpReplace, Value: jsonOne},
		Edit{Key: "min_tokens", Op: OpCap, Value: jsonOne},
		Edit{Key: "kv_transfer_params", Op: OpSet, Value: nixlPrefillParams},
	)
	prefillEditsGenerate = append(prefillStreamEdits[:2:2],
		Edit{Key: "sampling_params", Op: OpEdit,
			Value: []byte(`{"max_tokens":1,"min_tokens":1}`),
			Nested: []Edit{
				{Key: "max_tokens", Op: OpSet, Value: jsonOne},
				{Key: "min_tokens", Op: OpCap, Value: jsonOne},
			}},
		Edit{Key: "kv_transfer_params", Op: OpSet, Value: nixlPrefillParams},
	)
	prefillEditsResponses = append(prefillStreamEdits[:2:2],
		Edit{Key: "max_output_tokens", Op: OpSet, Value: jsonOne},
		Edit{Key: "kv_transfer_params", Op: OpSet, Value: nixlPrefillParams},
	)
)

// PrefillBody appends to dst the prefill-leg body for a client body of the given kind:
//
//   - stream=false, stream_options removed;
//   - chat and completions: max_tokens=1, max_completion_tokens=1 when present,
//     min_tokens capped at 1 when present;
//   - generate: sampling_params.max_tokens=1, sampling_params.min_tokens capped at 1,
//     and sampling_params={"max_tokens":1,"min_tokens":1} when absent or null;
//   - responses: max_output_tokens=1;
//   - kv_transfer_params set to the NIXL "do_remote_decode" request, replacing any.
//
// Every other byte passes unchanged and in order; added members go at the end. body
// must be a JSON object (ErrBadJSON otherwise). It allocates nothing when dst has room.
func PrefillBody(dst []byte, kind Kind, body []byte) ([]byte, error) {
	var edits []Edit
	switch kind {
	case KindChat, KindCompletions:
		edits = prefillEditsChat
	case KindGenerate:
		edits = prefillEditsGenerate
	case KindResponses:
		edits = prefillEditsResponses
	default:
		return dst, fmt.Errorf("building prefill body: %w %d", ErrUnknownKind, kind)
	}
	out, err := EditObject(dst, body, edits)
	if err != nil {
		return dst, fmt.Errorf("building %s prefill body: %w", kind, err)
	}
	return out, nil
}

// KVTransferParams returns the top-level kv_transfer_params object of a prefill
// worker's JSON response, verbatim. raw aliases prefillResponse: copy it, or keep
// prefillResponse alive and unchanged, while raw is in use. ok is false when the member
// is absent or null (vLLM returns null when the prefill did not stop on its length cap,
// and the decode worker must then prefill itself). A response that is not a JSON
// object, or a kv_transfer_params that is neither an object nor null, is ErrBadJSON.
func KVTransferParams(prefillResponse []byte) (raw []byte, ok bool, err error) {
	v, ok, err := Lookup(prefillResponse, "kv_transfer_params")
	if err != nil {
		return nil, false, fmt.Errorf("reading prefill response: %w", err)
	}
	if !ok || v[0] == 'n' {
		return nil, false, nil
	}
	if v[0] != '{' {
		return nil, false, fmt.Errorf("reading prefill response: kv_transfer_params is not an object: %w", ErrBadJSON)
	}
	return v, true, nil
}

// DecodeBody appends to dst the decode-leg body: the client's body with
// kv_transfer_params set to kvParams (copied verbatim, replacing any value the client
// sent, added at the end when absent). stream, stream_options and the limits keep the
// client's values. kvParams must be a JSON object, normally from KVTransferParams.
// It allocates nothing when dst has room.
func DecodeBody(dst []byte, body []byte, kvParams []byte) ([]byte, error) {
	i := skipWS(kvParams, 0)
	if i >= len(kvParams) || kvParams[i] != '{' {
		return dst, fmt.Errorf("building decode body: kv_transfer_params is not an object: %w", ErrBadJSON)
	}
	end, err := scanValue(kvParams, i, 0)
	if err == nil {
		err = expectEnd(kvParams, end)
	}
	if err != nil {
		return dst, fmt.Errorf("building decode body: kv_transfer_params: %w", err)
	}
	edits := [1]Edit{{Key: "kv_transfer_params", Op: OpSet, Value: kvParams[i:end]}}
	out, err := EditObject(dst, body, edits[:])
	if err != nil {
		return dst, fmt.Errorf("building decode body: %w", err)
	}
	return out, nil
}

// WantsPromptLogprobs reports whether a /inference/v1/generate body asks for prompt
// logprobs (sampling_params.prompt_logprobs present and neither null nor false; 0 asks
// for the prompt tokens' own logprobs), i.e. the wantPromptLogprobs of MergeGenerate.
// Malformed JSON is ErrBadJSON.
func WantsPromptLogprobs(body []byte) (bool, error) {
	sp, ok, err := Lookup(body, "sampling_params")
	if err != nil || !ok || sp[0] != '{' {
		return false, err
	}
	v, ok, err := Lookup(sp, "prompt_logprobs")
	if err != nil || !ok {
		return false, err
	}
	return v[0] != 'n' && v[0] != 'f', nil
}
