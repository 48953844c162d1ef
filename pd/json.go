package pd

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// ErrBadJSON means a body is not valid JSON, is truncated, or does not have the shape
// the P/D rewrite needs (an object at the top level, an object where an object is
// edited). The router answers 400 for a client body and 502 for an upstream one.
// Every error from the scanner and editor wraps it.
var ErrBadJSON = errors.New("pd: malformed JSON")

// SyntaxError says where a JSON input went wrong. It wraps ErrBadJSON.
type SyntaxError struct {
	// Offset is the byte offset in the scanned input where the problem was found.
	Offset int
	// Msg says what was expected there.
	Msg string
}

func (e *SyntaxError) Error() string {
	return "pd: malformed JSON at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
}

func (e *SyntaxError) Unwrap() error { return ErrBadJSON }

func syntaxErr(off int, msg string) error { return &SyntaxError{Offset: off, Msg: msg} }

// maxDepth bounds nesting, as encoding/json does, so hostile input cannot exhaust the
// stack: the scanner recurses once per nested object or array.
const maxDepth = 10000

// Member is one key/value pair of a JSON object, located by byte offsets into the
// scanned input.
type Member struct {
	// Key is the raw key between its quotes, escapes not decoded. It aliases the input.
	Key []byte
	// KeyStart is the offset of the key's opening quote.
	KeyStart int
	// ValueStart is the offset of the value's first byte.
	ValueStart int
	// ValueEnd is the offset just past the value.
	ValueEnd int
}

// ScanObject calls fn for each member of the JSON object that makes up b (whitespace
// around it allowed), in input order, and validates all of b. Returning false from fn
// stops the walk early and leaves the rest of b unvalidated.
func ScanObject(b []byte, fn func(m Member) bool) error {
	it, err := openObject(b, skipWS(b, 0), 0)
	if err != nil {
		return err
	}
	for {
		m, ok, err := it.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if !fn(m) {
			return nil
		}
	}
	return expectEnd(b, it.end)
}

// Lookup returns the value of key in the JSON object that makes up b, after validating
// all of b. With duplicate keys the last one wins, as in Python's json module (which
// vLLM uses). The value aliases b. Keys are compared after decoding escapes.
func Lookup(b []byte, key string) (value []byte, ok bool, err error) {
	it, err := openObject(b, skipWS(b, 0), 0)
	if err != nil {
		return nil, false, err
	}
	for {
		m, more, err := it.next()
		if err != nil {
			return nil, false, err
		}
		if !more {
			break
		}
		if keyEquals(m.Key, key) {
			value, ok = b[m.ValueStart:m.ValueEnd], true
		}
	}
	if err := expectEnd(b, it.end); err != nil {
		return nil, false, err
	}
	return value, ok, nil
}

// Op is what an Edit does to the member it names.
type Op uint8

const (
	// OpSet replaces the member's value with Value, or adds the member when absent.
	OpSet Op = iota
	// OpReplace replaces the member's value with Value only when the member is present.
	OpReplace
	// OpDelete removes the member.
	OpDelete
	// OpCap replaces the value with Value when both are non-negative integer literals
	// and the value is greater. Anything else is left as it is (vLLM validates it).
	OpCap
	// OpEdit applies Nested to the member's value, which must be an object. When the
	// member is absent or null it is set to Value (nothing happens when Value is nil).
	OpEdit
)

// Edit is one change EditObject makes to an object's members.
type Edit struct {
	// Key is the member's decoded key.
	Key string
	// Op is the change.
	Op Op
	// Value is the new raw JSON value. EditObject copies it without checking it, so it
	// must be valid JSON.
	Value []byte
	// Nested are the edits OpEdit applies to the member's object value.
	Nested []Edit
}

// maxEdits bounds one EditObject call so the "seen" set fits in a word.
const maxEdits = 64

// EditObject appends to dst the JSON object src with edits applied, and validates all
// of src. Every byte of src that no edit touches passes unchanged and in order: members,
// whitespace and separators. Added members go after the last member, in edits order,
// written compactly. An edit applies to every occurrence of a duplicated key. On error
// dst is returned unchanged in length.
func EditObject(dst, src []byte, edits []Edit) ([]byte, error) {
	start := len(dst)
	i := skipWS(src, 0)
	out, end, err := editObject(append(dst, src[:i]...), src, i, edits, 0)
	if err == nil {
		err = expectEnd(src, end)
	}
	if err != nil {
		return dst[:start], err
	}
	// Whitespace before and after the object passes too.
	return append(out, src[end:]...), nil
}

// editObject appends the object starting at src[i] == '{' with edits applied and returns
// the offset just past its closing brace.
func editObject(dst, src []byte, i int, edits []Edit, depth int) ([]byte, int, error) {
	if len(edits) > maxEdits {
		return dst, 0, errors.New("pd: too many edits")
	}
	it, err := openObject(src, i, depth)
	if err != nil {
		return dst, 0, err
	}
	dst = append(dst, src[i:it.i]...) // '{'
	var seen uint64
	prevEnd := it.i // end of the previous member, or just past '{'
	emitted := 0
	index := 0
	for {
		m, ok, err := it.next()
		if err != nil {
			return dst, 0, err
		}
		if !ok {
			break
		}
		e := -1
		for k := range edits {
			if keyEquals(m.Key, edits[k].Key) {
				e = k
				break
			}
		}
		keep := true
		var value []byte
		nested := false
		if e >= 0 {
			seen |= 1 << e
			ed := &edits[e]
			switch ed.Op {
			case OpSet, OpReplace:
				value = ed.Value
			case OpDelete:
				keep = false
			case OpCap:
				if greaterInt(src[m.ValueStart:m.ValueEnd], ed.Value) {
					value = ed.Value
				}
			case OpEdit:
				switch src[m.ValueStart] {
				case '{':
					nested = true
				case 'n':
					value = ed.Value
				default:
					return dst, 0, syntaxErr(m.ValueStart, strconv.Quote(ed.Key)+" is not an object")
				}
			}
		}
		if keep {
			// The original separator before this member (the comma and whitespace) is
			// kept, unless every member before it was deleted.
			if emitted > 0 || index == 0 {
				dst = append(dst, src[prevEnd:m.KeyStart]...)
			}
			switch {
			case nested:
				dst = append(dst, src[m.KeyStart:m.ValueStart]...)
				dst, _, err = editObject(dst, src, m.ValueStart, edits[e].Nested, depth+1)
				if err != nil {
					return dst, 0, err
				}
			case value != nil:
				dst = append(dst, src[m.KeyStart:m.ValueStart]...)
				dst = append(dst, value...)
			default:
				dst = append(dst, src[m.KeyStart:m.ValueEnd]...)
			}
			emitted++
		}
		prevEnd = m.ValueEnd
		index++
	}
	for k := range edits {
		ed := &edits[k]
		if seen&(1<<k) != 0 || ed.Value == nil || (ed.Op != OpSet && ed.Op != OpEdit) {
			continue
		}
		if emitted > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, ed.Key)
		dst = append(dst, ':')
		dst = append(dst, ed.Value...)
		emitted++
	}
	dst = append(dst, src[prevEnd:it.end]...)
	return dst, it.end, nil
}

// appendString appends s as a JSON string: quotes, backslashes and control characters
// escaped, every other byte as it is.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// objIter walks an object's members, validating as it goes.
type objIter struct {
	b     []byte
	i     int // next offset to read
	end   int // offset just past '}', once next has returned false
	n     int // members returned so far
	depth int
}

// openObject expects '{' at b[i] (after whitespace) and returns an iterator whose i is
// just past it.
func openObject(b []byte, i int, depth int) (objIter, error) {
	i = skipWS(b, i)
	if i >= len(b) {
		return objIter{}, syntaxErr(i, "unexpected end, want an object")
	}
	if b[i] != '{' {
		return objIter{}, syntaxErr(i, "want an object")
	}
	if depth >= maxDepth {
		return objIter{}, syntaxErr(i, "nested too deep")
	}
	return objIter{b: b, i: i + 1, depth: depth}, nil
}

func (it *objIter) next() (Member, bool, error) {
	b := it.b
	i := skipWS(b, it.i)
	if i >= len(b) {
		return Member{}, false, syntaxErr(i, "unexpected end inside an object")
	}
	if b[i] == '}' {
		it.end = i + 1
		return Member{}, false, nil
	}
	if it.n > 0 {
		if b[i] != ',' {
			return Member{}, false, syntaxErr(i, "want ',' or '}' after an object member")
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return Member{}, false, syntaxErr(i, "unexpected end inside an object")
		}
	}
	if b[i] != '"' {
		return Member{}, false, syntaxErr(i, "want a string key")
	}
	keyEnd, err := scanString(b, i)
	if err != nil {
		return Member{}, false, err
	}
	m := Member{Key: b[i+1 : keyEnd-1], KeyStart: i}
	i = skipWS(b, keyEnd)
	if i >= len(b) || b[i] != ':' {
		return Member{}, false, syntaxErr(i, "want ':' after an object key")
	}
	i = skipWS(b, i+1)
	m.ValueStart = i
	m.ValueEnd, err = scanValue(b, i, it.depth+1)
	if err != nil {
		return Member{}, false, err
	}
	it.i = m.ValueEnd
	it.n++
	return m, true, nil
}

// arrIter walks an array's elements, validating as it goes.
type arrIter struct {
	b     []byte
	i     int
	end   int
	n     int
	depth int
}

func openArray(b []byte, i int, depth int) (arrIter, error) {
	i = skipWS(b, i)
	if i >= len(b) {
		return arrIter{}, syntaxErr(i, "unexpected end, want an array")
	}
	if b[i] != '[' {
		return arrIter{}, syntaxErr(i, "want an array")
	}
	if depth >= maxDepth {
		return arrIter{}, syntaxErr(i, "nested too deep")
	}
	return arrIter{b: b, i: i + 1, depth: depth}, nil
}

// next returns the next element's span.
func (it *arrIter) next() (start, end int, ok bool, err error) {
	b := it.b
	i := skipWS(b, it.i)
	if i >= len(b) {
		return 0, 0, false, syntaxErr(i, "unexpected end inside an array")
	}
	if b[i] == ']' {
		it.end = i + 1
		return 0, 0, false, nil
	}
	if it.n > 0 {
		if b[i] != ',' {
			return 0, 0, false, syntaxErr(i, "want ',' or ']' after an array element")
		}
		i = skipWS(b, i+1)
	}
	end, err = scanValue(b, i, it.depth+1)
	if err != nil {
		return 0, 0, false, err
	}
	it.i = end
	it.n++
	return i, end, true, nil
}

// expectEnd checks that only whitespace follows offset i.
func expectEnd(b []byte, i int) error {
	if i = skipWS(b, i); i != len(b) {
		return syntaxErr(i, "unexpected data after the top-level value")
	}
	return nil
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanValue validates the value starting at b[i] and returns the offset just past it.
func scanValue(b []byte, i int, depth int) (int, error) {
	if i >= len(b) {
		return 0, syntaxErr(i, "unexpected end, want a value")
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '{':
		it, err := openObject(b, i, depth)
		if err != nil {
			return 0, err
		}
		for {
			_, ok, err := it.next()
			if err != nil {
				return 0, err
			}
			if !ok {
				return it.end, nil
			}
		}
	case c == '[':
		it, err := openArray(b, i, depth)
		if err != nil {
			return 0, err
		}
		for {
			_, _, ok, err := it.next()
			if err != nil {
				return 0, err
			}
			if !ok {
				return it.end, nil
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	default:
		return 0, syntaxErr(i, "want a value")
	}
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, syntaxErr(i, "want "+lit)
	}
	return i + len(lit), nil
}

func scanNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return 0, syntaxErr(start, "bad number")
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return 0, syntaxErr(start, "bad number fraction")
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return 0, syntaxErr(start, "bad number exponent")
		}
		i = j
	}
	return i, nil
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// SWAR constants: a string's body is checked eight bytes at a time for the three byte
// classes that end the fast path ('"', '\\', control characters). Strings are nearly all
// of a chat body, so this loop is the scanner's speed.
const (
	swarOnes  = 0x0101010101010101
	swarHighs = 0x8080808080808080
)

// swarSpecial returns a mask with the high bit set in every byte of w that is '"',
// '\\' or below 0x20, in little-endian order. Bits above the first special byte may be
// spurious (borrows), but the lowest set bit is exact, which is all the scanner uses.
func swarSpecial(w uint64) uint64 {
	q := w ^ (swarOnes * '"')
	s := w ^ (swarOnes * '\\')
	return ((q-swarOnes)&^q | (s-swarOnes)&^s | (w-swarOnes*0x20)&^w) & swarHighs
}

// skipPlain returns the offset of the first '"', '\\' or control byte at or after i,
// or a position within 8 bytes of the end of b when there is none before it. Sixteen
// bytes per iteration halve the loop overhead on long plain runs (prompts, base64).
func skipPlain(b []byte, i int) int {
	for i+16 <= len(b) {
		if m := swarSpecial(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
		if m := swarSpecial(binary.LittleEndian.Uint64(b[i+8:])); m != 0 {
			return i + 8 + bits.TrailingZeros64(m)>>3
		}
		i += 16
	}
	if i+8 <= len(b) {
		if m := swarSpecial(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
		i += 8
	}
	return i
}

// scanString validates the string starting at b[i] == '"' and returns the offset just
// past its closing quote.
func scanString(b []byte, i int) (int, error) {
	start := i
	i++
	for {
		i = skipPlain(b, i)
		if i >= len(b) {
			return 0, syntaxErr(start, "unterminated string")
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(b) {
				return 0, syntaxErr(start, "unterminated string")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(b)-i < 6 || !isHex4(b[i+2:i+6]) {
					return 0, syntaxErr(i, `bad \u escape`)
				}
				i += 6
			default:
				return 0, syntaxErr(i, "bad escape")
			}
		case c < 0x20:
			return 0, syntaxErr(i, "control character in string")
		default:
			i++
		}
	}
}

func isHex4(b []byte) bool {
	for _, c := range b[:4] {
		if hexVal(c) < 0 {
			return false
		}
	}
	return true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// keyEquals reports whether the raw (escaped) key decodes to want. The common case has
// no backslash and is a plain comparison; an escaped key is decoded into a stack buffer
// (keys this package looks for are short, so a longer decoding cannot match).
func keyEquals(raw []byte, want string) bool {
	hasEscape := false
	for _, c := range raw {
		if c == '\\' {
			hasEscape = true
			break
		}
	}
	if !hasEscape {
		return string(raw) == want
	}
	var buf [64]byte
	n := 0
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			if n >= len(buf) {
				return false
			}
			buf[n] = c
			n++
			i++
			continue
		}
		// The scanner validated the escapes already.
		esc := raw[i+1]
		i += 2
		var r rune
		switch esc {
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			r = hex4(raw[i:])
			i += 4
			if r >= 0xD800 && r < 0xDC00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				if lo := hex4(raw[i+2:]); lo >= 0xDC00 && lo < 0xE000 {
					r = (r-0xD800)<<10 | (lo - 0xDC00) + 0x10000
					i += 6
				}
			}
			if r >= 0xD800 && r < 0xE000 {
				r = utf8.RuneError
			}
		default: // '"', '\\', '/'
			r = rune(esc)
		}
		if n+utf8.UTFMax > len(buf) {
			return false
		}
		n += utf8.EncodeRune(buf[n:], r)
	}
	return string(buf[:n]) == want
}

func hex4(b []byte) rune {
	return rune(hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3]))
}

// greaterInt reports whether v and limit are both non-negative integer literals and
// v > limit. Valid JSON integers have no leading zeros, so a longer literal is larger.
func greaterInt(v, limit []byte) bool {
	if !allDigits(v) || !allDigits(limit) {
		return false
	}
	if len(v) != len(limit) {
		return len(v) > len(limit)
	}
	return string(v) > string(limit)
}

func allDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
