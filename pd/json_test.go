package pd

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
	"strings"
	"testing"
)

func TestEditObject(t *testing.T) {
	one := []byte("1")
	tests := []struct {
		name  string
		src   string
		edits []Edit
		want  string
	}{
		{"no edits keeps every byte", " {\"a\" : 1 ,\n\t\"b\":[1, {\"c\":null}] } \n", nil,
			" {\"a\" : 1 ,\n\t\"b\":[1, {\"c\":null}] } \n"},
		{"set replaces in place", `{"a": 1, "b" :  2, "c":3}`, []Edit{{Key: "b", Op: OpSet, Value: []byte(`"x"`)}},
			`{"a": 1, "b" :  "x", "c":3}`},
		{"set adds at the end", `{"a": 1 }`, []Edit{{Key: "z", Op: OpSet, Value: one}},
			`{"a": 1,"z":1 }`},
		{"set adds to empty object", `{ }`, []Edit{{Key: "z", Op: OpSet, Value: one}, {Key: "y", Op: OpSet, Value: one}},
			`{"z":1,"y":1 }`},
		{"added key escaped as JSON", `{}`, []Edit{{Key: "a\"b\\\n\x01é", Op: OpSet, Value: one}},
			`{"a\"b\\\u000a\u0001é":1}`},
		{"replace absent does nothing", `{"a":1}`, []Edit{{Key: "b", Op: OpReplace, Value: one}}, `{"a":1}`},
		{"replace present", `{"a":5}`, []Edit{{Key: "a", Op: OpReplace, Value: one}}, `{"a":1}`},
		{"delete first", `{"a":1, "b":2, "c":3}`, []Edit{{Key: "a", Op: OpDelete}}, `{"b":2, "c":3}`},
		{"delete middle", `{"a":1, "b":2, "c":3}`, []Edit{{Key: "b", Op: OpDelete}}, `{"a":1, "c":3}`},
		{"delete last", `{"a":1, "b":2, "c":3}`, []Edit{{Key: "c", Op: OpDelete}}, `{"a":1, "b":2}`},
		{"delete only", `{ "a" : {"x":[1]} }`, []Edit{{Key: "a", Op: OpDelete}}, `{ }`},
		{"delete all then add", `{"a":1,"b":2}`, []Edit{{Key: "a", Op: OpDelete}, {Key: "b", Op: OpDelete}, {Key: "c", Op: OpSet, Value: one}},
			`{"c":1}`},
		{"delete first two keeps third", `{"a":1, "b":2, "c":3}`, []Edit{{Key: "a", Op: OpDelete}, {Key: "b", Op: OpDelete}}, `{"c":3}`},
		{"duplicates all edited", `{"a":1,"a":2,"b":3}`, []Edit{{Key: "a", Op: OpSet, Value: []byte("9")}}, `{"a":9,"a":9,"b":3}`},
		{"duplicates all deleted", `{"a":1,"b":3,"a":2}`, []Edit{{Key: "a", Op: OpDelete}}, `{"b":3}`},
		{"escaped key matches", `{"str\u0065am":true}`, []Edit{{Key: "stream", Op: OpSet, Value: []byte("false")}}, `{"str\u0065am":false}`},
		{"escaped slash key matches", `{"a\/b":1}`, []Edit{{Key: "a/b", Op: OpDelete}}, `{}`},
		{"unicode key matches", `{"\u00e9t\u00E9":1,"été":2}`, []Edit{{Key: "été", Op: OpReplace, Value: []byte("0")}}, `{"\u00e9t\u00E9":0,"été":0}`},
		{"surrogate pair key matches", `{"\ud83d\ude00":1}`, []Edit{{Key: "😀", Op: OpDelete}}, `{}`},
		{"key is case sensitive", `{"Stream":true}`, []Edit{{Key: "stream", Op: OpDelete}}, `{"Stream":true}`},
		{"nested key untouched", `{"x":{"stream":true}}`, []Edit{{Key: "stream", Op: OpDelete}}, `{"x":{"stream":true}}`},
		{"cap larger", `{"m": 7}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m": 1}`},
		{"cap huge", `{"m":123456789012345678901234567890}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":1}`},
		{"cap equal", `{"m":1}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":1}`},
		{"cap smaller", `{"m":0}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":0}`},
		{"cap leaves float", `{"m":2.5}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":2.5}`},
		{"cap leaves negative", `{"m":-3}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":-3}`},
		{"cap leaves string", `{"m":"9"}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{"m":"9"}`},
		{"cap absent does nothing", `{}`, []Edit{{Key: "m", Op: OpCap, Value: one}}, `{}`},
		{"nested edit", `{"sp": { "a":1 , "b":5 }, "z":0}`,
			[]Edit{{Key: "sp", Op: OpEdit, Value: []byte(`{"new":1}`), Nested: []Edit{
				{Key: "a", Op: OpSet, Value: []byte("2")}, {Key: "c", Op: OpSet, Value: []byte("3")}}}},
			`{"sp": { "a":2 , "b":5,"c":3 }, "z":0}`},
		{"nested edit absent adds default", `{"z":0}`,
			[]Edit{{Key: "sp", Op: OpEdit, Value: []byte(`{"new":1}`), Nested: []Edit{{Key: "a", Op: OpSet, Value: one}}}},
			`{"z":0,"sp":{"new":1}}`},
		{"nested edit null replaced by default", `{"sp":null}`,
			[]Edit{{Key: "sp", Op: OpEdit, Value: []byte(`{"new":1}`), Nested: []Edit{{Key: "a", Op: OpSet, Value: one}}}},
			`{"sp":{"new":1}}`},
		{"nested edit without default leaves absent", `{}`,
			[]Edit{{Key: "sp", Op: OpEdit, Nested: []Edit{{Key: "a", Op: OpSet, Value: one}}}}, `{}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("PREFIX")
			got, err := EditObject(prefix, []byte(tc.src), tc.edits)
			if err != nil {
				t.Fatalf("EditObject: %v", err)
			}
			if string(got) != "PREFIX"+tc.want {
				t.Fatalf("got  %s\nwant PREFIX%s", got, tc.want)
			}
			if !json.Valid(got[len("PREFIX"):]) {
				t.Fatalf("output is not valid JSON: %s", got)
			}
		})
	}
}

func TestEditObjectNotObject(t *testing.T) {
	_, err := EditObject(nil, []byte(`{"sp":[1]}`), []Edit{{Key: "sp", Op: OpEdit, Nested: []Edit{{Key: "a", Op: OpDelete}}}})
	if !errors.Is(err, ErrBadJSON) {
		t.Fatalf("err = %v, want ErrBadJSON", err)
	}
}

// malformed lists inputs every parser must reject with ErrBadJSON.
var malformed = []string{
	``, ` `, `{`, `}`, `[]`, `"x"`, `1`, `null`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`,
	`{"a":1 "b":2}`, `{"a" 1}`, `{a:1}`, `{'a':1}`, `{"a":1}}`, `{"a":1} x`, `{"a":1}{}`,
	`{"a":"unterminated}`, `{"a":"bad \x escape"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`,
	"{\"a\":\"ctl \x01 char\"}", "{\"a\":\"tab\tinside\"}", `{"a":tru}`, `{"a":nul}`, `{"a":falsey}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`,
	`{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{"a":[}`, `{"a":{"b":1}`, `{"a":[1,2`, `{"a":"x\`,
	`{"a":NaN}`, `{"a":Infinity}`, "{\"a\":1}\x00", `{"a":1,"b":{"c":[{"d":"e"}]}`,
}

func TestMalformed(t *testing.T) {
	for _, in := range malformed {
		t.Run(in, func(t *testing.T) {
			if json.Valid([]byte(in)) && strings.HasPrefix(strings.TrimSpace(in), "{") {
				t.Fatalf("test bug: %q is valid JSON", in)
			}
			checks := map[string]error{}
			_, checks["EditObject"] = EditObject(nil, []byte(in), []Edit{{Key: "a", Op: OpSet, Value: []byte("1")}})
			checks["ScanObject"] = ScanObject([]byte(in), func(Member) bool { return true })
			_, _, checks["Lookup"] = Lookup([]byte(in), "zz")
			_, checks["PrefillBody"] = PrefillBody(nil, KindChat, []byte(in))
			_, checks["DecodeBody"] = DecodeBody(nil, []byte(in), []byte(`{}`))
			_, _, checks["KVTransferParams"] = KVTransferParams([]byte(in))
			for name, err := range checks {
				if !errors.Is(err, ErrBadJSON) {
					t.Errorf("%s: err = %v, want ErrBadJSON", name, err)
				}
			}
		})
	}
}

func TestSyntaxErrorOffset(t *testing.T) {
	_, err := EditObject(nil, []byte(`{"a":[1,2,x]}`), nil)
	var se *SyntaxError
	if !errors.As(err, &se) || se.Offset != 10 {
		t.Fatalf("err = %#v, want SyntaxError at offset 10", err)
	}
}

func TestDepthLimit(t *testing.T) {
	deep := `{"a":` + strings.Repeat("[", maxDepth+5) + strings.Repeat("]", maxDepth+5) + `}`
	if _, err := EditObject(nil, []byte(deep), nil); !errors.Is(err, ErrBadJSON) {
		t.Fatalf("too deep: err = %v, want ErrBadJSON", err)
	}
	ok := `{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`
	if _, err := EditObject(nil, []byte(ok), nil); err != nil {
		t.Fatalf("depth 100: %v", err)
	}
}

func TestScanObjectAndLookup(t *testing.T) {
	src := []byte(` {"a" : "x\"y", "b":[1,{"c":2}], "a":{"k":true} , "e\u0301":null}`)
	var keys []string
	err := ScanObject(src, func(m Member) bool {
		keys = append(keys, string(m.Key)+"="+string(src[m.ValueStart:m.ValueEnd]))
		if src[m.KeyStart] != '"' {
			t.Errorf("KeyStart %d is not a quote", m.KeyStart)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `a="x\"y"|b=[1,{"c":2}]|a={"k":true}|e\u0301=null`
	if got := strings.Join(keys, "|"); got != want {
		t.Fatalf("members %s, want %s", got, want)
	}
	tests := []struct {
		key, want string
		ok        bool
	}{
		{"a", `{"k":true}`, true}, // last duplicate wins
		{"b", `[1,{"c":2}]`, true},
		{"e\u0301", "null", true},
		{"c", "", false},
	}
	for _, tc := range tests {
		v, ok, err := Lookup(src, tc.key)
		if err != nil || ok != tc.ok || string(v) != tc.want {
			t.Errorf("Lookup(%q) = %s, %v, %v; want %s, %v", tc.key, v, ok, err, tc.want, tc.ok)
		}
	}
	// Stopping early skips validation of the rest.
	n := 0
	if err := ScanObject([]byte(`{"a":1,"b":`), func(Member) bool { n++; return false }); err != nil || n != 1 {
		t.Fatalf("early stop: n=%d err=%v", n, err)
	}
}

// TestStringScannerEdges walks the SWAR fast path across every alignment of the bytes
// that must stop it.
func TestStringScannerEdges(t *testing.T) {
	for pad := 0; pad < 48; pad++ {
		p := strings.Repeat("é", pad/2) + strings.Repeat("x", pad%2)
		for _, tail := range []string{`\"`, `\\`, `\u00e9`, `\n`, "\x7f", "\xff"} {
			in := `{"k":"` + p + tail + p + `"}`
			v, ok, err := Lookup([]byte(in), "k")
			if err != nil || !ok || string(v) != `"`+p+tail+p+`"` {
				t.Fatalf("pad %d tail %q: %s %v %v", pad, tail, v, ok, err)
			}
		}
		for _, bad := range []string{"\x00", "\x1f", "\n", `\x`, `\u12`} {
			in := `{"k":"` + p + bad + p + `"}`
			if _, _, err := Lookup([]byte(in), "k"); !errors.Is(err, ErrBadJSON) {
				t.Fatalf("pad %d bad %q: err = %v", pad, bad, err)
			}
		}
		// Truncated after the padding.
		if _, _, err := Lookup([]byte(`{"k":"`+p), "k"); !errors.Is(err, ErrBadJSON) {
			t.Fatalf("pad %d truncated: err = %v", pad, err)
		}
	}
}

func TestSwarSpecial(t *testing.T) {
	for c := 0; c < 256; c++ {
		want := c == '"' || c == '\\' || c < 0x20
		for pos := 0; pos < 8; pos++ {
			var b [8]byte
			for i := range b {
				b[i] = 'a'
			}
			b[pos] = byte(c)
			w := binary.LittleEndian.Uint64(b[:])
			m := swarSpecial(w)
			if (m != 0) != want || (want && bits.TrailingZeros64(m)>>3 != pos) {
				t.Fatalf("byte %#x at %d: mask %#x, want special=%v", c, pos, m, want)
			}
			// A special byte before this one is found first, whatever follows.
			b[0] = '"'
			w = binary.LittleEndian.Uint64(b[:])
			if m := swarSpecial(w); bits.TrailingZeros64(m)>>3 != 0 {
				t.Fatalf("byte %#x at %d after a quote: mask %#x", c, pos, m)
			}
		}
	}
}
