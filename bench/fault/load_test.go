package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// outcome is how one request ended, from the client's side.
type outcome uint8

const (
	succeeded  outcome = iota
	clearError         // a non-2xx answer with a JSON error body, or a stream ended by an in-band error event and [DONE]
	lost               // no answer in time, a dropped connection, an unclear error, or a stream cut without [DONE]
)

func (o outcome) String() string {
	return [...]string{"succeeded", "clear error", "lost"}[o]
}

// requestDeadline is the client-side bound on every request: far above the slowest
// legitimate answer (a 2 s idle or header timeout plus retries), far below the test's.
const requestDeadline = 12 * time.Second

// result is one finished request.
type result struct {
	session      int
	worker       string // X-Switchyard-Worker of the answer ("" when none)
	outcome      outcome
	status       int
	stream       bool
	inBand       bool // a stream ended by an in-band error event
	detail       string
	sentAt, done time.Time
}

// load is a bounded closed loop of multi-turn sessions: one goroutine per session, each
// sending its next turn when the previous one ended. Every third session streams.
type load struct {
	c        *http.Client
	router   string
	sessions []string

	mu      sync.Mutex
	results []result

	sent atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

func newLoad(c *http.Client, router string, sessions []string) *load {
	return &load{c: c, router: router, sessions: sessions, stop: make(chan struct{})}
}

func (l *load) start() {
	for i := range l.sessions {
		l.wg.Add(1)
		go l.session(i)
	}
}

// halt stops the loop and waits for the requests in flight.
func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}

func (l *load) session(i int) {
	defer l.wg.Done()
	stream := i%3 == 0
	var history []map[string]string
	for turn := 0; ; turn++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if len(history) >= 12 { // a new conversation in the same session keeps bodies bounded
			history = nil
		}
		history = append(history, map[string]string{"role": "user", "content": fmt.Sprintf("session %s turn %d: tell me more", l.sessions[i], turn)})
		body, _ := json.Marshal(map[string]any{"model": "sim-model", "messages": history, "max_tokens": 12, "stream": stream})
		r, reply := l.do(i, body, stream)
		if r.outcome == succeeded {
			history = append(history, map[string]string{"role": "assistant", "content": reply})
		} else {
			history = history[:len(history)-1]
		}
		l.mu.Lock()
		l.results = append(l.results, r)
		l.mu.Unlock()
	}
}

// do sends one chat turn and classifies its ending.
func (l *load) do(i int, body []byte, stream bool) (result, string) {
	l.sent.Add(1)
	return chatRequest(l.c, l.router, l.sessions[i], i, body, stream, nil)
}

// chatRequest posts body to /v1/chat/completions under the session's key and reads the
// answer to its end. firstEvent, when set, gets the answering worker's name once a
// stream's first event arrived; it must have room for it.
func chatRequest(c *http.Client, router, sessionID string, i int, body []byte, stream bool, firstEvent chan<- string) (result, string) {
	r := result{session: i, stream: stream, sentAt: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), requestDeadline)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+router+"/v1/chat/completions", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Session-ID", sessionID)
	finish := func(o outcome, detail string) (result, string) {
		r.outcome, r.detail, r.done = o, detail, time.Now()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.outcome, r.detail = lost, "client deadline fired (request hung): "+detail
		}
		return r, ""
	}
	resp, err := c.Do(req)
	if err != nil {
		return finish(lost, "no answer: "+err.Error())
	}
	defer resp.Body.Close()
	r.status, r.worker = resp.StatusCode, resp.Header.Get("X-Switchyard-Worker")
	if resp.StatusCode != http.StatusOK {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return finish(lost, fmt.Sprintf("status %d, body cut: %v", resp.StatusCode, err))
		}
		if !isJSONError(b) {
			return finish(lost, fmt.Sprintf("status %d without a JSON error body: %.200q", resp.StatusCode, b))
		}
		return finish(clearError, fmt.Sprintf("status %d: %.200s", resp.StatusCode, b))
	}
	if !stream {
		var out struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
			} `json:"choices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || len(out.Choices) == 0 {
			return finish(lost, fmt.Sprintf("200 without a completion: %v", err))
		}
		r.outcome, r.done = succeeded, time.Now()
		return r, out.Choices[0].Message.Content
	}
	var text strings.Builder
	events, sawError, sawDone, afterDone := 0, false, false, false
	err = scanSSE(resp.Body, func(data string) {
		if sawDone {
			afterDone = true
		}
		if data == "[DONE]" {
			sawDone = true
			return
		}
		events++
		if events == 1 && firstEvent != nil {
			firstEvent <- r.worker
		}
		var ev struct {
			Error   json.RawMessage `json:"error"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(data), &ev) != nil {
			return
		}
		if len(ev.Error) > 0 && string(ev.Error) != "null" {
			sawError = true
		}
		for _, ch := range ev.Choices {
			text.WriteString(ch.Delta.Content)
		}
	})
	switch {
	case err != nil:
		return finish(lost, fmt.Sprintf("stream cut after %d events: %v", events, err))
	case afterDone:
		return finish(lost, "events after data: [DONE]")
	case sawError && sawDone:
		r.inBand = true
		return finish(clearError, fmt.Sprintf("in-band error after %d events", events))
	case sawDone && events > 0:
		r.outcome, r.done = succeeded, time.Now()
		return r, text.String()
	}
	return finish(lost, fmt.Sprintf("stream of %d events ended without data: [DONE] (error event: %v)", events, sawError))
}

// isJSONError reports whether b is a JSON object with an "error" (OpenAI/router shape) or
// "detail" (FastAPI shape) member.
func isJSONError(b []byte) bool {
	var v map[string]json.RawMessage
	if json.Unmarshal(b, &v) != nil {
		return false
	}
	_, e := v["error"]
	_, d := v["detail"]
	return e || d
}

// snapshot copies the results so far.
func (l *load) snapshot() []result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.results...)
}

// tally counts outcomes.
type tally struct {
	sent, succeeded, clearErrors, inBand, lost int
	byStatus                                   map[int]int
}

func (t tally) String() string {
	var st []string
	keys := make([]int, 0, len(t.byStatus))
	for k := range t.byStatus {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		st = append(st, fmt.Sprintf("%d×%d", t.byStatus[k], k))
	}
	return fmt.Sprintf("requests sent %d, succeeded %d, failed with clear errors %d (in-band stream errors %d; statuses %s), lost %d",
		t.sent, t.succeeded, t.clearErrors, t.inBand, strings.Join(st, " "), t.lost)
}

func count(rs []result) tally {
	t := tally{sent: len(rs), byStatus: map[int]int{}}
	for _, r := range rs {
		switch r.outcome {
		case succeeded:
			t.succeeded++
		case clearError:
			t.clearErrors++
			if r.inBand {
				t.inBand++
			} else {
				t.byStatus[r.status]++
			}
		case lost:
			t.lost++
		}
	}
	return t
}
