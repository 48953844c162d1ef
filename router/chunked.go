package router

import "errors"

// chunkDecoder undoes HTTP/1.1 chunked framing (RFC 9112 §7.1) incrementally and in
// place: the relay (relay_linux.go) reads a worker's chunked body in whatever pieces the
// socket gives, keeps only the payload, and frames it again for the client, so it can end
// or cut a stream at a chunk boundary of its own (an in-band error, a clean terminator).
// The zero value expects the first chunk-size line.
type chunkDecoder struct {
	state  uint8
	size   int64 // payload bytes left in the current chunk, or the size being parsed
	digits uint8 // hex digits of the size parsed so far
}

const (
	chunkSize        = iota // hex digits of a chunk size
	chunkExt                // ";ext" after the size, up to LF
	chunkSizeLF             // CR seen after the size line
	chunkData               // payload
	chunkDataCR             // CR after the payload
	chunkDataLF             // LF after the payload
	chunkTrailer            // start of a trailer line, or the final CRLF
	chunkTrailerLine        // inside a trailer field, up to LF
	chunkTrailerLF          // CR of the final empty line seen
	chunkDone               // the body ended
)

var errBadChunk = errors.New("malformed chunked encoding from worker")

// decode consumes p, moves the payload it carries to p's front and returns its length.
// done reports that the last chunk and its trailers ended; extra counts bytes after that
// end (a worker that sent more than one body: its connection must not be reused).
func (d *chunkDecoder) decode(p []byte) (n int, done bool, extra int, err error) {
	i := 0
	for i < len(p) {
		c := p[i]
		switch d.state {
		case chunkSize:
			switch {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
				if d.digits == 15 { // > 2^56 bytes: no real chunk, and int64 stays safe
					return n, false, 0, errBadChunk
				}
				d.size = d.size<<4 | int64(unhex(c))
				d.digits++
			case d.digits == 0:
				return n, false, 0, errBadChunk
			case c == ';' || c == ' ' || c == '\t':
				d.state = chunkExt
			case c == '\r':
				d.state = chunkSizeLF
			case c == '\n':
				d.endSizeLine()
			default:
				return n, false, 0, errBadChunk
			}
			i++
		case chunkExt:
			if c == '\n' {
				d.endSizeLine()
			}
			i++
		case chunkSizeLF:
			if c != '\n' {
				return n, false, 0, errBadChunk
			}
			d.endSizeLine()
			i++
		case chunkData:
			k := int64(len(p) - i)
			if k > d.size {
				k = d.size
			}
			n += copy(p[n:], p[i:i+int(k)])
			i += int(k)
			if d.size -= k; d.size == 0 {
				d.state = chunkDataCR
			}
		case chunkDataCR:
			switch c {
			case '\r':
				d.state = chunkDataLF
			case '\n':
				d.state = chunkSize
			default:
				return n, false, 0, errBadChunk
			}
			i++
		case chunkDataLF:
			if c != '\n' {
				return n, false, 0, errBadChunk
			}
			d.state = chunkSize
			i++
		case chunkTrailer:
			switch c {
			case '\r':
				d.state = chunkTrailerLF
			case '\n':
				d.state = chunkDone
			default:
				d.state = chunkTrailerLine
			}
			i++
		case chunkTrailerLine:
			if c == '\n' {
				d.state = chunkTrailer
			}
			i++
		case chunkTrailerLF:
			if c != '\n' {
				return n, false, 0, errBadChunk
			}
			d.state = chunkDone
			i++
		case chunkDone:
			return n, true, len(p) - i, nil
		}
	}
	return n, d.state == chunkDone, 0, nil
}

// endSizeLine moves past a chunk-size line: to the payload, or to the trailers after the
// last (zero-size) chunk.
func (d *chunkDecoder) endSizeLine() {
	d.digits = 0
	if d.size == 0 {
		d.state = chunkTrailer
		return
	}
	d.state = chunkData
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// appendChunkHeader frames n payload bytes: the size in hex and CRLF.
func appendChunkHeader(dst []byte, n int) []byte {
	const hexDigits = "0123456789abcdef"
	var tmp [16]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = hexDigits[n&15]
		n >>= 4
		if n == 0 {
			break
		}
	}
	dst = append(dst, tmp[i:]...)
	return append(dst, '\r', '\n')
}
