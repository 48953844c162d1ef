package policy

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// This file reads the few JSON facts routing needs straight from the request body: a
// validating single-pass scanner over top-level keys, no encoding/json, no allocation on
// the common path. Malformed JSON yields nothing, never a panic.

// SessionIDFromBody returns the body's session id: the first non-empty string among
// session_params.session_id, then top-level user, session_id, user_id (vllm-router's order).
// Only top-level keys count: unlike vllm-router's substring scan, "user": inside prompt text
// is not a key. For a repeated key the last occurrence wins, as in encoding/json. The
// result aliases body unless the string holds escapes, in which case it is decoded into a
// new slice. Nil when there is no such field or body is not valid JSON.
func SessionIDFromBody(body []byte) []byte { return sessionID(body, false) }

// SessionIDFromHead is SessionIDFromBody for the first bytes of a body too large to hold:
// the fields within head count, and JSON cut short (or broken) after them is no error.
// A field after head is not seen.
func SessionIDFromHead(head []byte) []byte { return sessionID(head, true) }

func sessionID(body []byte, head bool) []byte {
	// Not the scanner's head mode: an id cut off at the end is no id.
	s := jsonScanner{b: body}
	var fields [4][]byte // in priority order: session_params.session_id, user, session_id, user_id
	ok := s.object(func(key []byte) bool {
		switch {
		case keyIs(key, "session_params"):
			fields[0] = nil
			if s.peek() != '{' {
				return s.skipValue()
			}
			return s.object(func(inner []byte) bool {
				if keyIs(inner, "session_id") {
					fields[0] = s.stringOrSkip()
					return !s.bad
				}
				return s.skipValue()
			})
		case keyIs(key, "user"):
			fields[1] = s.stringOrSkip()
		case keyIs(key, "session_id"):
			fields[2] = s.stringOrSkip()
		case keyIs(key, "user_id"):
			fields[3] = s.stringOrSkip()
		default:
			return s.skipValue()
		}
		return !s.bad
	})
	if !head && (!ok || !s.end()) {
		return nil
	}
	for _, f := range fields {
		if len(f) > 0 {
			return unescape(f)
		}
	}
	return nil
}

// PromptText appends the body's prompt text to dst and returns it: completions' "prompt"
// (a string, or an array of strings joined by '\n'), or chat "messages"[].content (a
// string, or an array of parts whose "text" strings are taken), each message's text
// followed by '\n' so a conversation's text is a prefix of its next turn's. Strings are
// JSON-decoded. On a body with neither, or invalid JSON, dst is returned unchanged.
func PromptText(dst, body []byte) []byte { return promptText(dst, body, false) }

// PromptTextHead is PromptText for the first bytes of a body too large to hold: the text
// within head, up to where head or the JSON ends (a prefix is what prefix matching needs).
func PromptTextHead(dst, head []byte) []byte { return promptText(dst, head, true) }

func promptText(dst, body []byte, head bool) []byte {
	orig := len(dst)
	s := jsonScanner{b: body, head: head}
	found := false
	ok := s.object(func(key []byte) bool {
		switch {
		case keyIs(key, "prompt"):
			switch s.peek() {
			case '"':
				raw, ok := s.str()
				if !ok {
					return false
				}
				dst, found = appendUnescaped(dst, raw), true
				return true
			case '[':
				first := true
				return s.array(func() bool {
					if s.peek() != '"' {
						return s.skipValue() // token ids: no text
					}
					raw, ok := s.str()
					if !ok {
						return false
					}
					if !first {
						dst = append(dst, '\n')
					}
					dst, found, first = appendUnescaped(dst, raw), true, false
					return true
				})
			}
			return s.skipValue()
		case keyIs(key, "messages"):
			if s.peek() != '[' {
				return s.skipValue()
			}
			return s.array(func() bool {
				if s.peek() != '{' {
					return s.skipValue()
				}
				return s.object(func(field []byte) bool {
					if !keyIs(field, "content") {
						return s.skipValue()
					}
					switch s.peek() {
					case '"':
						raw, ok := s.str()
						if !ok {
							return false
						}
						dst, found = appendUnescaped(dst, raw), true
						if !s.cut {
							dst = append(dst, '\n')
						}
						return true
					case '[':
						ok := s.array(func() bool {
							if s.peek() != '{' {
								return s.skipValue()
							}
							return s.object(func(part []byte) bool {
								if !keyIs(part, "text") || s.peek() != '"' {
									return s.skipValue()
								}
								raw, ok := s.str()
								if !ok {
									return false
								}
								dst, found = appendUnescaped(dst, raw), true
								return true
							})
						})
						if ok {
							dst = append(dst, '\n')
						}
						return ok
					}
					return s.skipValue()
				})
			})
		}
		return s.skipValue()
	})
	if !found || !head && (!ok || !s.end()) {
		return dst[:orig]
	}
	return dst
}

// maxJSONDepth matches encoding/json's nesting limit.
const maxJSONDepth = 10000

// jsonScanner walks JSON text. Methods return false (and set bad) on malformed input.
type jsonScanner struct {
	b    []byte
	i    int
	bad  bool
	head bool // b is a body's first bytes: a string cut off at the end yields what is there
	cut  bool // str returned such a string
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *jsonScanner) fail() bool {
	s.bad = true
	return false
}

// end reports whether only whitespace remains.
func (s *jsonScanner) end() bool {
	s.ws()
	return !s.bad && s.i == len(s.b)
}

// object parses an object, calling field with each raw key once the scanner stands at
// the value; field must consume the value.
func (s *jsonScanner) object(field func(key []byte) bool) bool {
	if s.peek() != '{' {
		return s.fail()
	}
	s.i++
	if s.peek() == '}' {
		s.i++
		return true
	}
	for {
		if s.peek() != '"' {
			return s.fail()
		}
		key, ok := s.str()
		if !ok {
			return false
		}
		if s.peek() != ':' {
			return s.fail()
		}
		s.i++
		s.ws()
		if !field(key) {
			return s.fail()
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return s.fail()
		}
	}
}

// array parses an array, calling elem with the scanner at each element; elem must
// consume it.
func (s *jsonScanner) array(elem func() bool) bool {
	if s.peek() != '[' {
		return s.fail()
	}
	s.i++
	if s.peek() == ']' {
		s.i++
		return true
	}
	for {
		s.ws()
		if !elem() {
			return s.fail()
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return s.fail()
		}
	}
}

// str consumes a string and returns its raw (still escaped) contents, validating escapes
// and rejecting control characters as JSON requires.
func (s *jsonScanner) str() ([]byte, bool) {
	if s.peek() != '"' {
		return nil, s.fail()
	}
	s.i++
	start := s.i
	for {
		j := bytes.IndexByte(s.b[s.i:], '"')
		cut := false
		if j < 0 {
			if !s.head {
				return nil, s.fail()
			}
			j, cut = len(s.b)-s.i, true
		}
		// Validate up to the quote; an escape may hide the quote, then continue past it.
		end := s.i + j
	scan:
		for k := s.i; k < end; k++ {
			c := s.b[k]
			if c < 0x20 {
				return nil, s.fail()
			}
			if c != '\\' {
				continue
			}
			if cut && (k+1 >= len(s.b) || s.b[k+1] == 'u' && k+5 >= len(s.b)) {
				end = k // an escape cut in half: the text ends before it
				break scan
			}
			if k+1 >= len(s.b) {
				return nil, s.fail()
			}
			switch s.b[k+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				k++
			case 'u':
				if k+5 >= len(s.b) || !isHex4(s.b[k+2:k+6]) {
					return nil, s.fail()
				}
				k += 5
			default:
				return nil, s.fail()
			}
			if k >= end { // the escape consumed the quote we found: search again after it
				s.i = k + 1
				goto next
			}
		}
		if cut {
			s.i, s.cut = len(s.b), true
			return s.b[start:end], true
		}
		s.i = end + 1
		return s.b[start:end], true
	next:
	}
}

// stringOrSkip returns the raw contents of a string value, or nil after skipping any
// other value.
func (s *jsonScanner) stringOrSkip() []byte {
	if s.peek() == '"' {
		raw, _ := s.str()
		return raw
	}
	s.skipValue()
	return nil
}

// skipValue consumes one value of any kind, iteratively (a bit stack records whether each
// open container is an object), so hostile nesting cannot exhaust the goroutine stack.
func (s *jsonScanner) skipValue() bool {
	var stack [maxJSONDepth/64 + 1]uint64
	depth := 0
	for {
		// A value is expected here.
		switch c := s.peek(); {
		case c == '{' || c == '[':
			if depth == maxJSONDepth {
				return s.fail()
			}
			s.i++
			isObject := c == '{'
			if isObject {
				stack[depth/64] |= 1 << (depth % 64)
			} else {
				stack[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			closer := byte(']')
			if isObject {
				closer = '}'
			}
			if s.peek() == closer {
				s.i++
				depth--
				break
			}
			if isObject && !s.key() {
				return false
			}
			continue
		case c == '"':
			if _, ok := s.str(); !ok {
				return false
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if !s.number() {
				return false
			}
		case c == 't':
			if !s.literal("true") {
				return false
			}
		case c == 'f':
			if !s.literal("false") {
				return false
			}
		case c == 'n':
			if !s.literal("null") {
				return false
			}
		default:
			return s.fail()
		}
		// A value ended: close containers until one continues with ','.
		for {
			if depth == 0 {
				return true
			}
			isObject := stack[(depth-1)/64]&(1<<((depth-1)%64)) != 0
			c := s.peek()
			if c == 0 {
				return s.fail()
			}
			s.i++
			switch {
			case c == ',':
				if isObject && !s.key() {
					return false
				}
			case (c == '}' && isObject) || (c == ']' && !isObject):
				depth--
				continue
			default:
				return s.fail()
			}
			break
		}
	}
}

// key consumes `"name":` inside an object.
func (s *jsonScanner) key() bool {
	if _, ok := s.str(); !ok {
		return false
	}
	if s.peek() != ':' {
		return s.fail()
	}
	s.i++
	return true
}

func (s *jsonScanner) literal(word string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		return s.fail()
	}
	s.i += len(word)
	return true
}

// number consumes -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return s.fail()
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return s.fail()
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return s.fail()
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	s.i = i
	return true
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// keyIs compares a raw (possibly escaped) key with a plain ASCII name.
func keyIs(raw []byte, name string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw) == name
	}
	// Decoding only shrinks, at most 6:1 (\u0041 → A): skip hopeless keys undecoded.
	var buf [32]byte
	if len(raw) < len(name) || len(raw) > 6*len(name) || len(name) > len(buf) {
		return false
	}
	return string(appendUnescaped(buf[:0], raw)) == name
}

// unescape returns raw decoded; raw itself when it holds no escape.
func unescape(raw []byte) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw
	}
	return appendUnescaped(make([]byte, 0, len(raw)), raw)
}

// appendUnescaped appends the decoding of validated raw string contents, as encoding/json
// would: \uXXXX pairs become UTF-8, lone surrogates U+FFFD.
func appendUnescaped(dst, raw []byte) []byte {
	for {
		j := bytes.IndexByte(raw, '\\')
		if j < 0 {
			return append(dst, raw...)
		}
		dst = append(dst, raw[:j]...)
		raw = raw[j:]
		if len(raw) < 2 {
			return dst // unreachable for validated input
		}
		switch c := raw[1]; c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			if len(raw) < 6 {
				return dst
			}
			r := rune(hex4(raw[2:6]))
			raw = raw[6:]
			if utf16.IsSurrogate(r) {
				if len(raw) >= 6 && raw[0] == '\\' && raw[1] == 'u' {
					if pair := utf16.DecodeRune(r, rune(hex4(raw[2:6]))); pair != utf8.RuneError {
						dst = utf8.AppendRune(dst, pair)
						raw = raw[6:]
						continue
					}
				}
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
		raw = raw[2:]
	}
}

func hex4(b []byte) uint32 {
	var v uint32
	for _, c := range b[:4] {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= uint32(c - '0')
		case c >= 'a' && c <= 'f':
			v |= uint32(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			v |= uint32(c - 'A' + 10)
		}
	}
	return v
}
