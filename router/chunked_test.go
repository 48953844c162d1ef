package router

import (
	"bytes"
	"io"
	"net/http/httputil"
	"strings"
	"testing"
)

// decodeAll feeds in to a fresh decoder step bytes at a time, as a socket might.
func decodeAll(in []byte, step int) (payload []byte, done bool, extra int, err error) {
	var d chunkDecoder
	for off := 0; off < len(in); off += step {
		piece := append([]byte(nil), in[off:min(off+step, len(in))]...)
		n, fin, x, derr := d.decode(piece)
		payload = append(payload, piece[:n]...)
		if derr != nil {
			return payload, false, 0, derr
		}
		if fin {
			return payload, true, x + max(0, len(in)-(off+step)), nil
		}
	}
	return payload, false, 0, nil
}

func TestChunkDecoder(t *testing.T) {
	for _, tc := range []struct {
		name, in, payload string
		done              bool
		extra             int
		bad               bool
	}{
		{"two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world", true, 0, false},
		{"sse event", "e\r\ndata: {\"i\":0}\n\r\n", "data: {\"i\":0}\n", false, 0, false},
		{"upper hex and extension", "A;name=v\r\n0123456789\r\n0\r\n\r\n", "0123456789", true, 0, false},
		{"trailers", "3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", "abc", true, 0, false},
		{"bare LF framing", "3\nabc\n0\n\n", "abc", true, 0, false},
		{"bytes after the end", "0\r\n\r\nHTTP/1.1", "", true, 8, false},
		{"not hex", "zz\r\nabc\r\n", "", false, 0, true},
		{"empty size", "\r\nabc", "", false, 0, true},
		{"no CRLF after data", "3\r\nabcX", "abc", false, 0, true},
		{"size overflow", "1000000000000000\r\n", "", false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{1, 2, 3, 7, len(tc.in)} {
				payload, done, extra, err := decodeAll([]byte(tc.in), step)
				if (err != nil) != tc.bad {
					t.Fatalf("step %d: err %v, want bad=%v", step, err, tc.bad)
				}
				if tc.bad {
					continue
				}
				if string(payload) != tc.payload || done != tc.done || extra != tc.extra {
					t.Fatalf("step %d: payload %q done %v extra %d, want %q %v %d", step, payload, done, extra, tc.payload, tc.done, tc.extra)
				}
			}
		})
	}
}

func TestAppendChunkHeader(t *testing.T) {
	for n, want := range map[int]string{0: "0\r\n", 9: "9\r\n", 10: "a\r\n", 255: "ff\r\n", 4096: "1000\r\n"} {
		if got := string(appendChunkHeader(nil, n)); got != want {
			t.Fatalf("%d: %q, want %q", n, got, want)
		}
	}
}

// FuzzChunkDecoder: whatever Go's own chunked reader accepts whole, the decoder yields
// the same payload from any split of the input.
func FuzzChunkDecoder(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), 3)
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"), 1)
	f.Fuzz(func(t *testing.T, in []byte, step int) {
		if step <= 0 || step > len(in)+1 {
			step = len(in) + 1
		}
		want, werr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(in)))
		got, done, _, err := decodeAll(in, step)
		if werr == nil && err == nil && done && !bytes.Equal(got, want) {
			t.Fatalf("payload %q, Go's reader %q", got, want)
		}
		if werr == nil && !strings.Contains(string(in), ";") && err != nil && bytes.HasSuffix(in, []byte("0\r\n\r\n")) {
			t.Fatalf("rejected %q that Go's reader accepts: %v", in, err)
		}
	})
}
