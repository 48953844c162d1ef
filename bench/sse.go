package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Stream and body errors. The workload counts them by kind, next to HTTP statuses.
var (
	// ErrStreamTruncated means an SSE stream ended (EOF) before its "data: [DONE]" event.
	ErrStreamTruncated = errors.New("bench: stream ended before [DONE]")
	// ErrStreamError means the server sent an error object inside the stream, as vLLM does
	// when generation fails after the 200 header went out.
	ErrStreamError = errors.New("bench: error event in stream")
	// ErrBadBody means a response body was not the OpenAI JSON shape we expected.
	ErrBadBody = errors.New("bench: malformed response body")
)

// completionChunk is the part of an OpenAI (chat) completion object or stream chunk we read:
// chat streams carry delta.content, chat bodies message.content, completions text.
type completionChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		Text string `json:"text"`
	} `json:"choices"`
	Error json.RawMessage `json:"error"`
}

// content returns the generated text this chunk carries, whatever the API shape.
func (c *completionChunk) content() string {
	var b strings.Builder
	for i := range c.Choices {
		ch := &c.Choices[i]
		b.WriteString(ch.Delta.Content)
		b.WriteString(ch.Message.Content)
		b.WriteString(ch.Text)
	}
	return b.String()
}

// hasError reports whether the object carries a non-null "error" member.
func (c *completionChunk) hasError() bool {
	return len(c.Error) > 0 && !bytes.Equal(c.Error, []byte("null"))
}

// streamResult is what one SSE response told us.
type streamResult struct {
	// Content is the generated text, all content deltas concatenated.
	Content string
	// FirstContent is when the first event with non-empty content was read; zero if none.
	FirstContent time.Time
	// FirstContentEvent is that event's 1-based number among data events; 0 if none.
	FirstContentEvent int
	// Events counts dispatched data events, [DONE] included.
	Events int
}

// readSSE reads an OpenAI-style server-sent-event stream to its "data: [DONE]" event.
// Time to first token is the read time of the first event whose choices carry text (role-only
// and usage-only chunks do not count), taken from now. Events follow the SSE rules: data lines
// accumulate until a blank line; comments (":") and other fields are ignored; CRLF is accepted.
func readSSE(r io.Reader, now func() time.Time) (streamResult, error) {
	var (
		res     streamResult
		content strings.Builder
		data    []byte
		pending bool
	)
	br := bufio.NewReaderSize(r, 16<<10)
	dispatch := func() (done bool, err error) {
		payload := data
		data, pending = data[:0], false
		res.Events++
		if string(bytes.TrimSpace(payload)) == "[DONE]" {
			return true, nil
		}
		var chunk completionChunk
		if err := json.Unmarshal(payload, &chunk); err != nil {
			return false, fmt.Errorf("%w: event %d: %w", ErrBadBody, res.Events, err)
		}
		if chunk.hasError() {
			return false, fmt.Errorf("%w: %s", ErrStreamError, chunk.Error)
		}
		if text := chunk.content(); text != "" {
			if res.FirstContentEvent == 0 {
				res.FirstContent, res.FirstContentEvent = now(), res.Events
			}
			content.WriteString(text)
		}
		return false, nil
	}
	for {
		line, readErr := br.ReadSlice('\n')
		if errors.Is(readErr, bufio.ErrBufferFull) {
			// A long line: gather it whole. Rare (huge deltas), so the copy is fine.
			full := append([]byte(nil), line...)
			for errors.Is(readErr, bufio.ErrBufferFull) {
				line, readErr = br.ReadSlice('\n')
				full = append(full, line...)
			}
			line = full
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if pending {
				done, err := dispatch()
				if err != nil || done {
					res.Content = content.String()
					return res, err
				}
			}
		case bytes.HasPrefix(line, []byte("data:")):
			value := bytes.TrimPrefix(line[len("data:"):], []byte(" "))
			if pending {
				data = append(data, '\n')
			}
			data = append(data, value...)
			pending = true
		}
		if readErr != nil {
			res.Content = content.String()
			if pending {
				// The stream ended without the blank line closing its last event.
				done, err := dispatch()
				res.Content = content.String()
				if err != nil || done {
					return res, err
				}
			}
			if errors.Is(readErr, io.EOF) {
				return res, ErrStreamTruncated
			}
			return res, fmt.Errorf("reading stream: %w", readErr)
		}
	}
}

// readJSONBody reads a non-streaming completion and returns its generated text.
func readJSONBody(r io.Reader) (string, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("reading body: %w", err)
	}
	var c completionChunk
	if err := json.Unmarshal(body, &c); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadBody, err)
	}
	if c.hasError() {
		return "", fmt.Errorf("%w: %s", ErrStreamError, c.Error)
	}
	return c.content(), nil
}
