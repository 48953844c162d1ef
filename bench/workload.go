// Package bench drives a router over HTTP as a black box with RL-rollout-shaped traffic
// (multi-turn sessions, X-Session-ID, prompts that grow turn by turn), measures what users
// feel (request rate, latency, time to first token, per-worker spread, session stickiness,
// the workers' prefix-cache hit rate) and runs `switchyard demo` / `switchyard bench`:
// the same workload under several routing policies against in-process vLLM simulators.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBadWorkload means a Workload field is out of range; the message names it.
var ErrBadWorkload = errors.New("bench: invalid workload")

// Workload describes closed-loop multi-turn traffic: Sessions goroutines each run one session
// at a time, one request in flight, Turns turns per session, then start a fresh session.
// Each turn's prompt is the whole conversation so far (shared system prompt, the session's
// task, every earlier answer and tool result) plus a new tool result, as RL rollouts do.
type Workload struct {
	// URL is the base URL requests go to, e.g. "http://127.0.0.1:8000". Required.
	URL string
	// Path is the API path. Default "/v1/chat/completions"; a path ending in "/completions"
	// but not "/chat/completions" gets a "prompt" body instead of "messages".
	Path string
	// Model is the body's "model" field. Default "" leaves it out, which vLLM answers with
	// its (first) served model.
	Model string
	// Sessions is the number of concurrent sessions. Default 64.
	Sessions int
	// Turns is the number of requests per session before it ends. Default 8.
	Turns int
	// Duration bounds the run's wall time. Default 20 s.
	Duration time.Duration
	// MaxRequests bounds the number of requests sent. Zero means no bound but Duration.
	MaxRequests int
	// SystemPromptBytes is the size of the system prompt every session shares, in bytes.
	// Default 2048; negative means no system message.
	SystemPromptBytes int
	// TurnBytes is the size of the session-unique text each turn adds (the task on turn 1,
	// then a tool result), in bytes. Default 1024.
	TurnBytes int
	// MaxTokens is the body's "max_tokens". Default 32.
	MaxTokens int
	// Stream asks for server-sent events ("stream": true), which TTFT needs.
	Stream bool
	// FinishSession makes each ended session POST URL+"/finish_session?session_id=<id>", as
	// prime-rl does when a rollout ends; the answer is ignored.
	FinishSession bool
	// MetricsURLs are worker base URLs whose /metrics prefix-cache counters are read before
	// and after the run. Empty means no cache figures.
	MetricsURLs []string
	// ExpectWorkers are X-Switchyard-Worker names counted in Result.PerWorker even when they
	// serve nothing, so an idle worker shows in the load spread.
	ExpectWorkers []string
	// Seed fixes prompt text and session ids. Zero means a seed from the clock, so repeated
	// runs against one long-lived fleet do not hit each other's cache.
	Seed uint64
	// RequestTimeout bounds one request. Default 60 s.
	RequestTimeout time.Duration
	// Client sends the requests. Nil means a keep-alive client sized to Sessions, closed
	// when Run returns.
	Client *http.Client

	progressEvery time.Duration // progress line period; 1 s, tests shorten it
	errorPause    time.Duration // wait after a failed request, so a dead router is not spun on; 100 ms
}

// Workload defaults, shared with the demo's sizing.
const (
	defaultSessions          = 64
	defaultTurns             = 8
	defaultDuration          = 20 * time.Second
	defaultSystemPromptBytes = 2048
	defaultTurnBytes         = 1024
	defaultMaxTokens         = 32
)

// withDefaults returns w with zero fields defaulted, or an error naming a bad field.
func (w Workload) withDefaults() (Workload, error) {
	u, err := url.Parse(w.URL)
	if w.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return w, fmt.Errorf("%w: URL %q is not an http(s) base URL", ErrBadWorkload, w.URL)
	}
	w.URL = strings.TrimRight(w.URL, "/")
	setDefault(&w.Path, "/v1/chat/completions")
	setDefault(&w.Sessions, defaultSessions)
	setDefault(&w.Turns, defaultTurns)
	setDefault(&w.Duration, defaultDuration)
	setDefault(&w.SystemPromptBytes, defaultSystemPromptBytes)
	setDefault(&w.TurnBytes, defaultTurnBytes)
	setDefault(&w.MaxTokens, defaultMaxTokens)
	setDefault(&w.RequestTimeout, 60*time.Second)
	setDefault(&w.progressEvery, time.Second)
	setDefault(&w.errorPause, 100*time.Millisecond)
	switch {
	case !strings.HasPrefix(w.Path, "/"):
		return w, fmt.Errorf("%w: Path %q must start with /", ErrBadWorkload, w.Path)
	case w.Sessions < 0, w.Turns < 0, w.MaxRequests < 0, w.TurnBytes < 0, w.MaxTokens < 0:
		return w, fmt.Errorf("%w: Sessions, Turns, MaxRequests, TurnBytes and MaxTokens must not be negative", ErrBadWorkload)
	case w.Duration < 0, w.RequestTimeout < 0:
		return w, fmt.Errorf("%w: Duration and RequestTimeout must not be negative", ErrBadWorkload)
	}
	if w.Seed == 0 {
		w.Seed = uint64(time.Now().UnixNano())
	}
	return w, nil
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// Run drives w until its Duration or MaxRequests is reached or ctx ends, writing a progress
// line per second to progress (nil for none; overwritten in place when it is a terminal).
// A ctx cancel returns what was measured so far together with ctx's error.
func Run(ctx context.Context, w Workload, progress io.Writer) (Result, error) {
	w, err := w.withDefaults()
	if err != nil {
		return Result{}, err
	}
	client := w.Client
	if client == nil {
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        2 * w.Sessions,
			MaxIdleConnsPerHost: 2 * w.Sessions,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}
		defer tr.CloseIdleConnections()
		client = &http.Client{Transport: tr}
	}

	r := &runner{w: w, client: client, sys: systemPrompt(w.SystemPromptBytes, w.Seed)}
	r.res.ErrorsByKind = map[string]int{}
	r.res.PerWorker = map[string]int{}
	for _, name := range w.ExpectWorkers {
		r.res.PerWorker[name] = 0
	}

	var before CacheCounters
	if len(w.MetricsURLs) > 0 {
		before, r.res.CacheError = scrapeCache(ctx, client, w.MetricsURLs)
	}

	runCtx, cancel := context.WithTimeout(ctx, w.Duration)
	defer cancel()
	start := time.Now()
	stopProgress := startProgress(progress, isTerminal(progress), w.progressEvery, start, &r.done, &r.failed)
	var wg sync.WaitGroup
	for range w.Sessions {
		wg.Go(func() { r.loop(runCtx) })
	}
	wg.Wait()
	r.res.Elapsed = time.Since(start)
	stopProgress()

	if len(w.MetricsURLs) > 0 && r.res.CacheError == nil && ctx.Err() == nil {
		after, err := scrapeCache(ctx, client, w.MetricsURLs)
		r.res.CacheError = err
		if err == nil {
			r.res.Cache, r.res.CacheScraped = after.sub(before), true
		}
	}
	slices.Sort(r.res.Latency)
	slices.Sort(r.res.TTFT)
	if n := r.res.Requests + r.res.Errors; n > 0 {
		r.res.PromptBytes = int(r.bodyBytes / int64(n))
	}
	return r.res, ctx.Err()
}

// runner is one Run's shared state. Goroutines own their sessions and report into res
// under mu; done/failed are read by the progress printer.
type runner struct {
	w      Workload
	client *http.Client
	sys    string

	sent         atomic.Int64 // requests started, for MaxRequests
	done, failed atomic.Int64
	sessionSeq   atomic.Uint64

	mu        sync.Mutex
	res       Result
	bodyBytes int64
}

// session is one rollout's conversation; owned by one goroutine.
type session struct {
	id        string
	rng       *rand.Rand
	messages  []chatMessage
	turns     int
	firstSeen string // worker that answered the first successful turn
	split     bool
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// loop runs sessions back to back until ctx ends or the request budget is spent.
func (r *runner) loop(ctx context.Context) {
	for ctx.Err() == nil {
		s := r.newSession()
		finished := true
		for s.turns < r.w.Turns {
			if r.w.MaxRequests > 0 && r.sent.Add(1) > int64(r.w.MaxRequests) {
				r.endSession(ctx, s, false)
				return
			}
			if !r.turn(ctx, s) {
				finished = false
				break
			}
		}
		r.endSession(ctx, s, finished)
		if !finished && ctx.Err() == nil {
			pause(ctx, r.w.errorPause)
		}
	}
}

func (r *runner) newSession() *session {
	n := r.sessionSeq.Add(1)
	s := &session{
		id:  fmt.Sprintf("rollout-%08x-%06d", uint32(r.w.Seed), n),
		rng: rand.New(rand.NewPCG(r.w.Seed, n)),
	}
	if r.sys != "" {
		s.messages = append(s.messages, chatMessage{Role: "system", Content: r.sys})
	}
	task := "Task " + s.id + ": " + words(s.rng, r.w.TurnBytes)
	s.messages = append(s.messages, chatMessage{Role: "user", Content: task})
	return s
}

// turn sends the session's conversation, records the outcome and, on success, extends the
// conversation with the answer and a new tool result. It reports whether the session goes on.
func (r *runner) turn(ctx context.Context, s *session) bool {
	body, err := r.requestBody(s)
	if err != nil {
		r.recordError("bad body")
		return false
	}
	out := r.send(ctx, s.id, body)
	if ctx.Err() != nil && out.err != nil {
		return false // cut short by the end of the run: neither success nor error
	}
	r.mu.Lock()
	r.bodyBytes += int64(len(body))
	r.mu.Unlock()
	if out.err != nil {
		r.recordError(out.kind)
		return false
	}
	if s.turns == 0 {
		s.firstSeen = out.worker
	} else if out.worker != s.firstSeen {
		s.split = true
	}
	s.turns++
	r.mu.Lock()
	r.res.Requests++
	r.res.Latency = append(r.res.Latency, out.latency)
	if r.w.Stream {
		r.res.TTFT = append(r.res.TTFT, out.ttft)
	}
	r.res.PerWorker[out.worker]++
	r.mu.Unlock()
	r.done.Add(1)

	s.messages = append(s.messages,
		chatMessage{Role: "assistant", Content: out.answer},
		chatMessage{Role: "user", Content: "Tool result:\n" + words(s.rng, r.w.TurnBytes)})
	return true
}

func (r *runner) recordError(kind string) {
	r.mu.Lock()
	r.res.Errors++
	r.res.ErrorsByKind[kind]++
	r.mu.Unlock()
	r.failed.Add(1)
}

// endSession records the session's stickiness and, if asked, tells the router it ended.
func (r *runner) endSession(ctx context.Context, s *session, finished bool) {
	if s.turns > 0 {
		r.mu.Lock()
		r.res.Sessions++
		if s.split {
			r.res.SplitSessions++
		}
		if finished {
			r.res.FinishedSessions++
		}
		r.mu.Unlock()
	}
	if r.w.FinishSession && s.turns > 0 && ctx.Err() == nil {
		r.finishSession(ctx, s.id)
	}
}

// finishSession posts /finish_session; failures are ignored, as prime-rl ignores them.
func (r *runner) finishSession(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := r.w.URL + "/finish_session?session_id=" + url.QueryEscape(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}

type chatBody struct {
	Model         string         `json:"model,omitempty"`
	Messages      []chatMessage  `json:"messages,omitempty"`
	Prompt        string         `json:"prompt,omitempty"`
	MaxTokens     int            `json:"max_tokens"`
	Temperature   float64        `json:"temperature"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

func (r *runner) requestBody(s *session) ([]byte, error) {
	b := chatBody{Model: r.w.Model, MaxTokens: r.w.MaxTokens, Temperature: 1, Stream: r.w.Stream}
	if r.w.Stream {
		b.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	if strings.HasSuffix(r.w.Path, "/completions") && !strings.HasSuffix(r.w.Path, "/chat/completions") {
		var p strings.Builder
		for _, m := range s.messages {
			p.WriteString(m.Role + ": " + m.Content + "\n")
		}
		b.Prompt = p.String()
	} else {
		b.Messages = s.messages
	}
	return json.Marshal(&b)
}

// outcome is one request's result; kind names the failure when err is set.
type outcome struct {
	answer, worker string
	latency, ttft  time.Duration
	kind           string
	err            error
}

func (r *runner) send(ctx context.Context, sessionID string, body []byte) outcome {
	ctx, cancel := context.WithTimeout(ctx, r.w.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.w.URL+r.w.Path, bytes.NewReader(body))
	if err != nil {
		return outcome{kind: "transport", err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Session-ID", sessionID)
	if r.w.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	start := time.Now()
	resp, err := r.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return outcome{kind: "timeout", err: err}
		}
		return outcome{kind: "transport", err: err}
	}
	defer resp.Body.Close()
	out := outcome{worker: resp.Header.Get("X-Switchyard-Worker")}
	if resp.StatusCode/100 != 2 {
		_, _ = io.Copy(io.Discard, resp.Body)
		out.kind, out.err = fmt.Sprintf("HTTP %d", resp.StatusCode), fmt.Errorf("status %d", resp.StatusCode)
		return out
	}
	if r.w.Stream {
		sr, err := readSSE(resp.Body, time.Now)
		out.answer, out.err = sr.Content, err
		if !sr.FirstContent.IsZero() {
			out.ttft = sr.FirstContent.Sub(start)
		}
	} else {
		out.answer, out.err = readJSONBody(resp.Body)
	}
	out.latency = time.Since(start)
	if out.ttft == 0 {
		out.ttft = out.latency // an answer with no text: its first token is its end
	}
	switch {
	case out.err == nil:
	case errors.Is(out.err, ErrStreamTruncated):
		out.kind = "truncated stream"
	case errors.Is(out.err, ErrStreamError):
		out.kind = "stream error"
	case errors.Is(out.err, ErrBadBody):
		out.kind = "bad body"
	case errors.Is(out.err, context.DeadlineExceeded):
		out.kind = "timeout"
	default:
		out.kind = "transport"
	}
	return out
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// vocabulary makes prompt text that looks like text to a tokenizer: about 5 bytes per
// word, and a word is a token to the simulator.
var vocabulary = strings.Fields(`the a of to and in is for on with that by as from at this be are
	file line error value return function call result test output input path config request
	model token cache session worker policy router score reward step agent tool answer check
	list read write open close start stop run build parse count index table query search`)

// bytesPerWord is the mean size of a vocabulary word and its separating space.
var bytesPerWord = func() float64 {
	total := 0
	for _, w := range vocabulary {
		total += len(w) + 1
	}
	return float64(total) / float64(len(vocabulary))
}()

// words returns n bytes of space-separated words drawn from rng.
func words(rng *rand.Rand, n int) string {
	if n <= 0 {
		return ""
	}
	var b strings.Builder
	b.Grow(n + 16)
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(vocabulary[rng.IntN(len(vocabulary))])
	}
	return b.String()[:n]
}

// systemPrompt is the instruction text every session of a run shares.
func systemPrompt(n int, seed uint64) string {
	if n < 0 {
		return ""
	}
	return words(rand.New(rand.NewPCG(seed, 0)), n)
}

// startProgress prints a status line every period until the returned stop is called.
// On a terminal the line is rewritten in place; elsewhere (logs, CI) one line per period.
func startProgress(w io.Writer, tty bool, period time.Duration, start time.Time, done, failed *atomic.Int64) (stop func()) {
	if w == nil {
		return func() {}
	}
	quit, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(period)
		defer t.Stop()
		last, lastAt := int64(0), start
		for {
			select {
			case <-quit:
				if tty {
					fmt.Fprintln(w)
				}
				return
			case now := <-t.C:
				n := done.Load()
				rate := float64(n-last) / now.Sub(lastAt).Seconds()
				last, lastAt = n, now
				line := fmt.Sprintf("%5.1fs  %7d requests  %8.1f req/s  %d errors",
					now.Sub(start).Seconds(), n, rate, failed.Load())
				if tty {
					fmt.Fprintf(w, "\r%s\x1b[K", line)
				} else {
					fmt.Fprintln(w, line)
				}
			}
		}
	}()
	return func() { close(quit); <-exited }
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
