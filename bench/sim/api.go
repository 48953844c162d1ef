package sim

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/valyala/fasthttp"
)

// errBadRequest marks request errors answered with 400.
var errBadRequest = errors.New("bad request")

// requestError is a request the server refuses, with vLLM's status, type and param.
type requestError struct {
	status int
	typ    string
	param  string
	msg    string
}

func (e *requestError) Error() string { return e.msg }
func (e *requestError) Unwrap() error { return errBadRequest }

func badRequest(param, format string, args ...any) error {
	return &requestError{status: 400, typ: "BadRequestError", param: param, msg: fmt.Sprintf(format, args...)}
}

// decodeBody parses a JSON body; a failure is FastAPI's validation 400 ("Bad Request").
func decodeBody(ctx *fasthttp.RequestCtx, v any) error {
	if err := json.Unmarshal(ctx.PostBody(), v); err != nil {
		return &requestError{status: 400, typ: "Bad Request", msg: "invalid JSON body: " + err.Error()}
	}
	return nil
}

func (s *Server) reject(ctx *fasthttp.RequestCtx, err error) {
	s.stats.rejected.Add(1)
	var re *requestError
	if errors.As(err, &re) {
		writeError(ctx, re.status, re.typ, re.msg, re.param)
		return
	}
	writeError(ctx, fasthttp.StatusBadRequest, "BadRequestError", err.Error(), "")
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// checkStreamOptions is vLLM's request validator: stream_options without stream is a
// 400, which is why a P/D proxy must drop stream_options when it forces stream=false.
func checkStreamOptions(stream bool, opts *streamOptions) error {
	if opts != nil && !stream {
		return &requestError{status: 400, typ: "Bad Request", param: "stream_options",
			msg: "Value error, Stream options can only be defined when `stream=True`."}
	}
	return nil
}

// common fills what every generation API shares and validates it.
func (s *Server) common(ctx *fasthttp.RequestCtx, rid, model string, prompt []int, maxTokens, minTokens *int) (*genRequest, error) {
	s.stats.requests.Add(1)
	if model != "" && model != s.cfg.Model && !contains(s.cfg.ModelAliases, model) {
		return nil, &requestError{status: 404, typ: "NotFoundError", param: "model",
			msg: fmt.Sprintf("The model `%s` does not exist.", model)}
	}
	g := &genRequest{requestID: rid, model: s.cfg.Model, created: time.Now().Unix(), prompt: prompt, maxTokens: -1}
	if model != "" {
		g.model = model
	}
	if len(prompt) == 0 {
		return nil, badRequest("prompt", "The prompt cannot be empty.")
	}
	if maxTokens != nil {
		if *maxTokens < 1 {
			return nil, badRequest("max_tokens", "max_tokens must be at least 1, got %d.", *maxTokens)
		}
		g.maxTokens = *maxTokens
	}
	if minTokens != nil {
		if *minTokens < 0 {
			return nil, badRequest("min_tokens", "min_tokens must be greater than or equal to 0, got %d.", *minTokens)
		}
		if g.maxTokens >= 0 && *minTokens > g.maxTokens {
			return nil, badRequest("min_tokens", "min_tokens must be less than or equal to max_tokens=%d, got %d.", g.maxTokens, *minTokens)
		}
		g.minTokens = *minTokens
	}
	want := len(prompt)
	if g.maxTokens > 0 {
		want += g.maxTokens
	}
	if want > s.cfg.MaxModelLen || len(prompt) >= s.cfg.MaxModelLen {
		return nil, badRequest("", "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
			s.cfg.MaxModelLen, want, len(prompt), max(g.maxTokens, 0))
	}
	// X-data-parallel-rank pins the request to one engine; vLLM ignores a value that is
	// not an integer and its engine core rejects one out of range.
	rank := -1
	if v := ctx.Request.Header.Peek("X-data-parallel-rank"); len(v) > 0 {
		if r, err := strconv.Atoi(string(v)); err == nil {
			if s.cfg.DataParallelSize > 1 && (r < 0 || r >= s.cfg.DataParallelSize) {
				return nil, badRequest("", "Requested DP rank %d is out of range [0, %d)", r, s.cfg.DataParallelSize)
			}
			rank = r
		}
	}
	g.engine = s.pickEngine(rank)
	return g, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// textContent accepts a message content that is a string or a list of text parts.
func textContent(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var str string
	if err := json.Unmarshal(raw, &str); err == nil {
		return str, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", badRequest("messages", "message content must be a string or a list of parts")
	}
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		if p.Text != "" {
			texts = append(texts, p.Text)
		}
	}
	return strings.Join(texts, "\n"), nil
}

type rawMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

func renderMessages(system string, msgs []rawMessage) ([]int, error) {
	rendered := make([]chatMessage, 0, len(msgs)+1)
	if system != "" {
		rendered = append(rendered, chatMessage{Role: "system", Content: system})
	}
	for _, m := range msgs {
		text, err := textContent(m.Content)
		if err != nil {
			return nil, err
		}
		rendered = append(rendered, chatMessage{Role: m.Role, Content: text})
	}
	if len(rendered) == 0 {
		return nil, badRequest("messages", "messages must not be empty")
	}
	return tokenize(renderChat(rendered)), nil
}

// usage is vLLM's UsageInfo.
type usage struct {
	PromptTokens        int           `json:"prompt_tokens"`
	TotalTokens         int           `json:"total_tokens"`
	CompletionTokens    int           `json:"completion_tokens"`
	PromptTokensDetails *promptTokens `json:"prompt_tokens_details"`
}

type promptTokens struct {
	CachedTokens int `json:"cached_tokens"`
}

func usageOf(g *genRequest, res *genResult) usage {
	return usage{
		PromptTokens:        len(g.prompt),
		CompletionTokens:    len(res.tokens),
		TotalTokens:         len(g.prompt) + len(res.tokens),
		PromptTokensDetails: &promptTokens{CachedTokens: res.cachedTokens},
	}
}

// ---- /v1/chat/completions ----

type chatRequest struct {
	Model               string            `json:"model"`
	Messages            []rawMessage      `json:"messages"`
	MaxTokens           *int              `json:"max_tokens"`
	MaxCompletionTokens *int              `json:"max_completion_tokens"`
	MinTokens           *int              `json:"min_tokens"`
	Stream              bool              `json:"stream"`
	StreamOptions       *streamOptions    `json:"stream_options"`
	KVTransferParams    *kvTransferParams `json:"kv_transfer_params"`
}

func (s *Server) handleChat(ctx *fasthttp.RequestCtx, rid string) {
	var req chatRequest
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	if err := checkStreamOptions(req.Stream, req.StreamOptions); err != nil {
		s.reject(ctx, err)
		return
	}
	prompt, err := renderMessages("", req.Messages)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	maxTokens := req.MaxCompletionTokens
	if maxTokens == nil {
		maxTokens = req.MaxTokens
	}
	g, err := s.common(ctx, rid, req.Model, prompt, maxTokens, req.MinTokens)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g.stream, g.kv = req.Stream, req.KVTransferParams
	g.includeUsage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	s.serveGeneration(ctx, g, chatFormat{})
}

type chatFormat struct{}

type chatChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"`
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []chatChunkChoice `json:"choices"`
	Usage   *usage            `json:"usage,omitempty"`
}

type chatChunkChoice struct {
	Index        int            `json:"index"`
	Delta        map[string]any `json:"delta"`
	Logprobs     any            `json:"logprobs"`
	FinishReason *string        `json:"finish_reason"`
	StopReason   any            `json:"stop_reason,omitempty"`
}

func (chatFormat) chunk(g *genRequest, choices []chatChunkChoice) chatChunk {
	return chatChunk{ID: "chatcmpl-" + g.requestID, Object: "chat.completion.chunk", Created: g.created, Model: g.model, Choices: choices}
}

func (f chatFormat) token(e *sseWriter, g *genRequest, i int, finish string) error {
	if i == 0 {
		// vLLM's first chunk announces the role with empty content.
		role := f.chunk(g, []chatChunkChoice{{Delta: map[string]any{"role": "assistant", "content": ""}}})
		if err := e.event("", role); err != nil {
			return err
		}
	}
	c := chatChunkChoice{Delta: map[string]any{"content": pieceText(i)}}
	if finish != "" {
		c.FinishReason = &finish
	}
	return e.event("", f.chunk(g, []chatChunkChoice{c}))
}

func (f chatFormat) end(e *sseWriter, g *genRequest, res *genResult) error {
	if g.includeUsage {
		u := usageOf(g, res)
		c := f.chunk(g, []chatChunkChoice{})
		c.Usage = &u
		if err := e.event("", c); err != nil {
			return err
		}
	}
	return e.data("[DONE]")
}

func (chatFormat) body(g *genRequest, res *genResult) any {
	return map[string]any{
		"id":      "chatcmpl-" + g.requestID,
		"object":  "chat.completion",
		"created": g.created,
		"model":   g.model,
		"choices": []any{map[string]any{
			"index": 0,
			"message": map[string]any{
				"role": "assistant", "content": GeneratedText(len(res.tokens)), "refusal": nil,
				"annotations": nil, "audio": nil, "function_call": nil, "tool_calls": []any{},
				"reasoning_content": nil,
			},
			"logprobs":      nil,
			"finish_reason": res.finish,
			"stop_reason":   nil,
		}},
		"service_tier":       nil,
		"system_fingerprint": nil,
		"usage":              usageOf(g, res),
		"prompt_logprobs":    nil,
		"kv_transfer_params": kvOutOrNil(res),
	}
}

func kvOutOrNil(res *genResult) any {
	if res.kvOut == nil {
		return nil
	}
	return res.kvOut
}

// ---- /v1/completions ----

type completionRequest struct {
	Model            string            `json:"model"`
	Prompt           json.RawMessage   `json:"prompt"`
	MaxTokens        *int              `json:"max_tokens"`
	MinTokens        *int              `json:"min_tokens"`
	Stream           bool              `json:"stream"`
	StreamOptions    *streamOptions    `json:"stream_options"`
	KVTransferParams *kvTransferParams `json:"kv_transfer_params"`
}

// promptTokens accepts a prompt as a string, a list of token ids, or a batch of one.
func parsePrompt(raw json.RawMessage) ([]int, error) {
	var str string
	if err := json.Unmarshal(raw, &str); err == nil {
		return tokenize(str), nil
	}
	var ids []int
	if err := json.Unmarshal(raw, &ids); err == nil {
		return ids, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil && len(strs) == 1 {
		return tokenize(strs[0]), nil
	}
	var batch [][]int
	if err := json.Unmarshal(raw, &batch); err == nil && len(batch) == 1 {
		return batch[0], nil
	}
	return nil, badRequest("prompt", "prompt must be a string, a list of token ids, or a batch of one (the simulator does not batch)")
}

func (s *Server) handleCompletion(ctx *fasthttp.RequestCtx, rid string) {
	var req completionRequest
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	if err := checkStreamOptions(req.Stream, req.StreamOptions); err != nil {
		s.reject(ctx, err)
		return
	}
	prompt, err := parsePrompt(req.Prompt)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g, err := s.common(ctx, rid, req.Model, prompt, req.MaxTokens, req.MinTokens)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g.stream, g.kv = req.Stream, req.KVTransferParams
	g.includeUsage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	s.serveGeneration(ctx, g, completionFormat{})
}

type completionFormat struct{}

type completionChunk struct {
	ID      string                  `json:"id"`
	Object  string                  `json:"object"`
	Created int64                   `json:"created"`
	Model   string                  `json:"model"`
	Choices []completionChunkChoice `json:"choices"`
	Usage   *usage                  `json:"usage,omitempty"`
}

type completionChunkChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
	StopReason   any     `json:"stop_reason"`
}

func (completionFormat) chunk(g *genRequest, choices []completionChunkChoice) completionChunk {
	return completionChunk{ID: "cmpl-" + g.requestID, Object: "text_completion", Created: g.created, Model: g.model, Choices: choices}
}

func (f completionFormat) token(e *sseWriter, g *genRequest, i int, finish string) error {
	c := completionChunkChoice{Text: pieceText(i)}
	if finish != "" {
		c.FinishReason = &finish
	}
	return e.event("", f.chunk(g, []completionChunkChoice{c}))
}

func (f completionFormat) end(e *sseWriter, g *genRequest, res *genResult) error {
	if g.includeUsage {
		u := usageOf(g, res)
		c := f.chunk(g, []completionChunkChoice{})
		c.Usage = &u
		if err := e.event("", c); err != nil {
			return err
		}
	}
	return e.data("[DONE]")
}

func (completionFormat) body(g *genRequest, res *genResult) any {
	return map[string]any{
		"id":      "cmpl-" + g.requestID,
		"object":  "text_completion",
		"created": g.created,
		"model":   g.model,
		"choices": []any{map[string]any{
			"index": 0, "text": GeneratedText(len(res.tokens)), "logprobs": nil,
			"finish_reason": res.finish, "stop_reason": nil, "prompt_logprobs": nil,
		}},
		"service_tier":       nil,
		"system_fingerprint": nil,
		"usage":              usageOf(g, res),
		"kv_transfer_params": kvOutOrNil(res),
	}
}

// ---- /inference/v1/generate (tokens in, tokens out) ----

type generateRequest struct {
	RequestID      string `json:"request_id"`
	Model          string `json:"model"`
	TokenIDs       []int  `json:"token_ids"`
	SamplingParams struct {
		MaxTokens      *int `json:"max_tokens"`
		MinTokens      *int `json:"min_tokens"`
		PromptLogprobs *int `json:"prompt_logprobs"`
	} `json:"sampling_params"`
	Stream           bool              `json:"stream"`
	StreamOptions    *streamOptions    `json:"stream_options"`
	KVTransferParams *kvTransferParams `json:"kv_transfer_params"`
}

func (s *Server) handleGenerate(ctx *fasthttp.RequestCtx, rid string) {
	var req generateRequest
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	for _, t := range req.TokenIDs {
		if t < 0 || t >= vocabSize {
			s.reject(ctx, badRequest("token_ids", "token id %d is out of vocabulary", t))
			return
		}
	}
	if req.RequestID != "" && len(ctx.Request.Header.Peek("X-Request-Id")) == 0 {
		rid = req.RequestID
	}
	g, err := s.common(ctx, rid, req.Model, req.TokenIDs, req.SamplingParams.MaxTokens, req.SamplingParams.MinTokens)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g.stream, g.kv = req.Stream, req.KVTransferParams
	g.includeUsage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	f := generateFormat{s: s, promptLogprobs: req.SamplingParams.PromptLogprobs != nil && *req.SamplingParams.PromptLogprobs >= 0}
	s.serveGeneration(ctx, g, f)
}

type generateFormat struct {
	s              *Server
	promptLogprobs bool
}

type generateChoice struct {
	Index         int            `json:"index"`
	Logprobs      any            `json:"logprobs"`
	FinishReason  *string        `json:"finish_reason"`
	TokenIDs      []int          `json:"token_ids"`
	RoutedExperts *routedExperts `json:"routed_experts,omitempty"`
}

func (generateFormat) token(e *sseWriter, g *genRequest, i int, finish string) error {
	c := generateChoice{TokenIDs: []int{generatedToken(i)}}
	if finish != "" {
		c.FinishReason = &finish
	}
	return e.event("", map[string]any{"request_id": g.requestID, "choices": []generateChoice{c}})
}

func (generateFormat) end(e *sseWriter, g *genRequest, res *genResult) error {
	if g.includeUsage {
		if err := e.event("", map[string]any{"request_id": g.requestID, "choices": []generateChoice{}, "usage": usageOf(g, res)}); err != nil {
			return err
		}
	}
	return e.data("[DONE]")
}

func (f generateFormat) body(g *genRequest, res *genResult) any {
	finish := res.finish
	c := generateChoice{FinishReason: &finish, TokenIDs: res.tokens}
	out := map[string]any{
		"request_id":         g.requestID,
		"choices":            []*generateChoice{&c},
		"prompt_logprobs":    nil,
		"kv_transfer_params": kvOutOrNil(res),
		"usage":              usageOf(g, res),
	}
	// A decode leg that received its KV did not run the prompt, so, as in vLLM, it has no
	// prompt logprobs: proxies merge them from the prefill leg.
	if f.promptLogprobs && !res.kvHit {
		out["prompt_logprobs"] = promptLogprobs(g.prompt)
	}
	if f.s.cfg.ReturnRoutedExperts {
		seq := g.prompt
		if res.leg != legPrefill {
			seq = append(append([]int{}, g.prompt...), res.tokens...)
		}
		c.RoutedExperts = newRoutedExperts(seq, f.s.cfg.RoutedExpertLayers, f.s.cfg.RoutedExpertTopK)
		out["prompt_token_ids"] = g.prompt
	}
	return out
}

type logprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         int     `json:"rank"`
	DecodedToken string  `json:"decoded_token"`
}

// promptLogprobs is vLLM's list: null for the first token, then {id: logprob} per token.
func promptLogprobs(prompt []int) []map[string]logprob {
	out := make([]map[string]logprob, len(prompt))
	for i := 1; i < len(prompt); i++ {
		id := prompt[i]
		out[i] = map[string]logprob{strconv.Itoa(id): {Logprob: -float64(id%97) / 10, Rank: 1 + id%5, DecodedToken: tokenText(id)}}
	}
	return out
}

// routedExperts is the router-replay form: uint8 rows of [seq, layers, topk], base64.
type routedExperts struct {
	Data  string `json:"data"`
	Shape [3]int `json:"shape"`
	Start int    `json:"start"`
	Dtype string `json:"dtype"`
}

// RoutedExpert is the expert the simulator routes token tok at position pos to, for a
// layer and top-k slot: a pure function of its inputs, so prefill and decode legs agree.
func RoutedExpert(pos, tok, layer, k int) uint8 {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(pos))
	binary.LittleEndian.PutUint32(b[4:], uint32(tok))
	binary.LittleEndian.PutUint32(b[8:], uint32(layer))
	binary.LittleEndian.PutUint32(b[12:], uint32(k))
	return uint8(xxhash.Sum64(b[:]) % 64)
}

func newRoutedExperts(seq []int, layers, topk int) *routedExperts {
	data := make([]byte, 0, len(seq)*layers*topk)
	for pos, tok := range seq {
		for l := 0; l < layers; l++ {
			for k := 0; k < topk; k++ {
				data = append(data, RoutedExpert(pos, tok, l, k))
			}
		}
	}
	return &routedExperts{Data: base64.StdEncoding.EncodeToString(data), Shape: [3]int{len(seq), layers, topk}, Dtype: "uint8"}
}

// ---- /v1/responses (minimal) ----

type responsesRequest struct {
	Model            string            `json:"model"`
	Input            json.RawMessage   `json:"input"`
	Instructions     string            `json:"instructions"`
	MaxOutputTokens  *int              `json:"max_output_tokens"`
	Stream           bool              `json:"stream"`
	KVTransferParams *kvTransferParams `json:"kv_transfer_params"`
}

func (s *Server) handleResponses(ctx *fasthttp.RequestCtx, rid string) {
	var req responsesRequest
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	var msgs []rawMessage
	var text string
	if err := json.Unmarshal(req.Input, &text); err == nil {
		raw, _ := json.Marshal(text)
		msgs = []rawMessage{{Role: "user", Content: raw}}
	} else if err := json.Unmarshal(req.Input, &msgs); err != nil {
		s.reject(ctx, badRequest("input", "input must be a string or a list of messages"))
		return
	}
	prompt, err := renderMessages(req.Instructions, msgs)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g, err := s.common(ctx, rid, req.Model, prompt, req.MaxOutputTokens, nil)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g.stream, g.kv = req.Stream, req.KVTransferParams
	s.serveGeneration(ctx, g, responsesFormat{})
}

type responsesFormat struct{}

func (responsesFormat) response(g *genRequest, res *genResult) map[string]any {
	r := map[string]any{
		"id": "resp_" + g.requestID, "object": "response", "created_at": g.created, "model": g.model,
		"status": "in_progress", "incomplete_details": nil, "output": []any{}, "usage": nil,
	}
	if res == nil {
		return r
	}
	r["status"] = "completed"
	if res.finish == "length" {
		r["status"] = "incomplete"
		r["incomplete_details"] = map[string]string{"reason": "max_output_tokens"}
	}
	r["output"] = []any{map[string]any{
		"id": "msg_" + g.requestID, "type": "message", "role": "assistant", "status": "completed",
		"content": []any{map[string]any{"type": "output_text", "text": GeneratedText(len(res.tokens)), "annotations": []any{}, "logprobs": nil}},
	}}
	r["usage"] = map[string]any{
		"input_tokens": len(g.prompt), "input_tokens_details": map[string]int{"cached_tokens": res.cachedTokens},
		"output_tokens": len(res.tokens), "output_tokens_details": map[string]int{"reasoning_tokens": 0},
		"total_tokens": len(g.prompt) + len(res.tokens),
	}
	r["kv_transfer_params"] = kvOutOrNil(res)
	return r
}

func (f responsesFormat) token(e *sseWriter, g *genRequest, i int, _ string) error {
	if i == 0 {
		if err := e.event("response.created", map[string]any{"type": "response.created", "sequence_number": 0, "response": f.response(g, nil)}); err != nil {
			return err
		}
	}
	return e.event("response.output_text.delta", map[string]any{
		"type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_" + g.requestID,
		"output_index": 0, "content_index": 0, "delta": pieceText(i), "logprobs": []any{},
	})
}

func (f responsesFormat) end(e *sseWriter, g *genRequest, res *genResult) error {
	n := len(res.tokens)
	if err := e.event("response.output_text.done", map[string]any{
		"type": "response.output_text.done", "sequence_number": n + 1, "item_id": "msg_" + g.requestID,
		"output_index": 0, "content_index": 0, "text": GeneratedText(n), "logprobs": []any{},
	}); err != nil {
		return err
	}
	return e.event("response.completed", map[string]any{"type": "response.completed", "sequence_number": n + 2, "response": f.response(g, res)})
}

func (f responsesFormat) body(g *genRequest, res *genResult) any { return f.response(g, res) }

// ---- /v1/messages (minimal Anthropic shape) ----

type messagesRequest struct {
	Model            string            `json:"model"`
	System           json.RawMessage   `json:"system"`
	Messages         []rawMessage      `json:"messages"`
	MaxTokens        *int              `json:"max_tokens"`
	Stream           bool              `json:"stream"`
	KVTransferParams *kvTransferParams `json:"kv_transfer_params"`
}

func (s *Server) handleMessages(ctx *fasthttp.RequestCtx, rid string) {
	var req messagesRequest
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	system, err := textContent(req.System)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	prompt, err := renderMessages(system, req.Messages)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	if req.MaxTokens == nil {
		s.reject(ctx, &requestError{status: 400, typ: "Bad Request", param: "max_tokens", msg: "max_tokens: Field required"})
		return
	}
	g, err := s.common(ctx, rid, req.Model, prompt, req.MaxTokens, nil)
	if err != nil {
		s.reject(ctx, err)
		return
	}
	g.stream, g.kv = req.Stream, req.KVTransferParams
	s.serveGeneration(ctx, g, messagesFormat{})
}

type messagesFormat struct{}

func stopReason(finish string) string {
	if finish == "length" {
		return "max_tokens"
	}
	return "end_turn"
}

func (messagesFormat) token(e *sseWriter, g *genRequest, i int, _ string) error {
	if i == 0 {
		start := map[string]any{"type": "message_start", "message": map[string]any{
			"id": "msg_" + g.requestID, "type": "message", "role": "assistant", "model": g.model, "content": []any{},
			"stop_reason": nil, "stop_sequence": nil, "usage": map[string]int{"input_tokens": len(g.prompt), "output_tokens": 0},
		}}
		if err := e.event("message_start", start); err != nil {
			return err
		}
		if err := e.event("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": map[string]string{"type": "text", "text": ""}}); err != nil {
			return err
		}
	}
	return e.event("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
		"delta": map[string]string{"type": "text_delta", "text": pieceText(i)}})
}

func (messagesFormat) end(e *sseWriter, g *genRequest, res *genResult) error {
	if err := e.event("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}); err != nil {
		return err
	}
	if err := e.event("message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": stopReason(res.finish), "stop_sequence": nil},
		"usage": map[string]int{"output_tokens": len(res.tokens)}}); err != nil {
		return err
	}
	return e.event("message_stop", map[string]string{"type": "message_stop"})
}

func (messagesFormat) body(g *genRequest, res *genResult) any {
	return map[string]any{
		"id": "msg_" + g.requestID, "type": "message", "role": "assistant", "model": g.model,
		"content":     []any{map[string]string{"type": "text", "text": GeneratedText(len(res.tokens))}},
		"stop_reason": stopReason(res.finish), "stop_sequence": nil,
		"usage": map[string]int{"input_tokens": len(g.prompt), "output_tokens": len(res.tokens),
			"cache_read_input_tokens": res.cachedTokens},
		"kv_transfer_params": kvOutOrNil(res),
	}
}

// ---- /v1/embeddings, /tokenize, /detokenize ----

// embeddingDims is the size of the simulator's deterministic embeddings.
const embeddingDims = 8

func (s *Server) handleEmbeddings(ctx *fasthttp.RequestCtx, rid string) {
	var req struct {
		Model string          `json:"model"`
		Input json.RawMessage `json:"input"`
	}
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	if req.Model != "" && req.Model != s.cfg.Model && !contains(s.cfg.ModelAliases, req.Model) {
		s.reject(ctx, &requestError{status: 404, typ: "NotFoundError", param: "model", msg: fmt.Sprintf("The model `%s` does not exist.", req.Model)})
		return
	}
	var inputs [][]int
	var one string
	var many []string
	var ids []int
	var idBatch [][]int
	switch {
	case json.Unmarshal(req.Input, &one) == nil:
		inputs = [][]int{tokenize(one)}
	case json.Unmarshal(req.Input, &many) == nil:
		for _, m := range many {
			inputs = append(inputs, tokenize(m))
		}
	case json.Unmarshal(req.Input, &ids) == nil:
		inputs = [][]int{ids}
	case json.Unmarshal(req.Input, &idBatch) == nil:
		inputs = idBatch
	default:
		s.reject(ctx, badRequest("input", "input must be a string, a list of strings or token ids"))
		return
	}
	total := 0
	data := make([]any, len(inputs))
	for i, in := range inputs {
		total += len(in)
		h := promptHash(in)
		vec := make([]float64, embeddingDims)
		for d := range vec {
			vec[d] = float64(int64((h>>(d*8))&0xff)-128) / 128
		}
		data[i] = map[string]any{"index": i, "object": "embedding", "embedding": vec}
	}
	model := req.Model
	if model == "" {
		model = s.cfg.Model
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"id": "embd-" + rid, "object": "list", "created": time.Now().Unix(), "model": model, "data": data,
		"usage": usage{PromptTokens: total, TotalTokens: total},
	})
}

func (s *Server) handleTokenize(ctx *fasthttp.RequestCtx, _ string) {
	var req struct {
		Prompt   *string      `json:"prompt"`
		Messages []rawMessage `json:"messages"`
	}
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	var ids []int
	switch {
	case req.Prompt != nil:
		ids = tokenize(*req.Prompt)
	case req.Messages != nil:
		var err error
		if ids, err = renderMessages("", req.Messages); err != nil {
			s.reject(ctx, err)
			return
		}
	default:
		s.reject(ctx, &requestError{status: 400, typ: "Bad Request", param: "prompt", msg: "prompt or messages: Field required"})
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"count": len(ids), "max_model_len": s.cfg.MaxModelLen, "tokens": ids, "token_strs": nil})
}

func (s *Server) handleDetokenize(ctx *fasthttp.RequestCtx, _ string) {
	var req struct {
		Tokens []int `json:"tokens"`
	}
	if err := decodeBody(ctx, &req); err != nil {
		s.reject(ctx, err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]string{"prompt": detokenize(req.Tokens)})
}
