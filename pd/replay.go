package pd

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
)

// ErrReplayMismatch means the prefill and decode responses' routed_experts cannot be
// stitched: only one side has them, or their layers, top-k or dtype differ, or a payload
// is malformed. The router answers 502: a training run must not get silently wrong
// router-replay data.
var ErrReplayMismatch = errors.New("pd: prefill and decode routed_experts do not match")

func replayErr(format string, args ...any) error {
	return fmt.Errorf("merging routed_experts: "+format+": %w", append(args, ErrReplayMismatch)...)
}

// routedExperts is prime-rl's compact routed-experts payload on a generate choice
// (prime-rl src/prime_rl/inference/vllm/routed_experts.py serialize_routed_experts):
// row r of data is token position start+r, each row layers*topk elements of dtype,
// little-endian, base64 (standard alphabet, padded).
type routedExperts struct {
	Data  *string  `json:"data"`
	Shape []uint64 `json:"shape"`
	Start uint64   `json:"start"`
	Dtype *string  `json:"dtype"`

	bytes    []byte // decoded Data
	itemSize uint64
	rowBytes uint64
}

// dtypeSize is the element size of the dtypes numpy names; prime-rl emits uint8 and
// uint16 (more than 256 experts), int16 or int32. A payload without dtype is uint8, the
// first format.
func dtypeSize(dtype string) uint64 {
	switch dtype {
	case "uint8", "int8", "bool":
		return 1
	case "uint16", "int16", "float16", "bfloat16":
		return 2
	case "uint32", "int32", "float32":
		return 4
	case "uint64", "int64", "float64":
		return 8
	}
	return 0
}

func (r *routedExperts) dtype() string {
	if r.Dtype == nil {
		return "uint8"
	}
	return *r.Dtype
}

func parseRoutedExperts(raw []byte, side string) (*routedExperts, error) {
	var r routedExperts
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, replayErr("%s routed_experts must be an object {data, shape, start, dtype}: %v", side, err)
	}
	if r.Data == nil {
		return nil, replayErr("%s routed_experts has no base64 data", side)
	}
	if len(r.Shape) != 3 {
		return nil, replayErr("%s routed_experts shape must be [seq, layers, topk]", side)
	}
	r.itemSize = dtypeSize(r.dtype())
	if r.itemSize == 0 {
		return nil, replayErr("%s routed_experts has unsupported dtype %q", side, r.dtype())
	}
	var err error
	r.bytes, err = base64.StdEncoding.DecodeString(*r.Data)
	if err != nil {
		return nil, replayErr("%s routed_experts data is not base64: %v", side, err)
	}
	hi, row := bits.Mul64(r.Shape[1], r.Shape[2])
	hi2, rowBytes := bits.Mul64(row, r.itemSize)
	hi3, total := bits.Mul64(r.Shape[0], rowBytes)
	if hi|hi2|hi3 != 0 || total != uint64(len(r.bytes)) {
		return nil, replayErr("%s routed_experts has %d data bytes, shape %v of %s wants %d",
			side, len(r.bytes), r.Shape, r.dtype(), total)
	}
	if _, carry := bits.Add64(r.Start, r.Shape[0], 0); carry != 0 {
		return nil, replayErr("%s routed_experts start %d overflows", side, r.Start)
	}
	r.rowBytes = rowBytes
	return &r, nil
}

// stitch returns the prompt rows of p followed by d's rows past p's coverage, as a
// routed_experts JSON object. Positions are absolute (start+row), so a decode payload
// that starts elsewhere than the prefill one is clipped to p's end, as the PI router's
// by-handle variant does; a gap between the two is a mismatch.
func stitch(p, d *routedExperts) ([]byte, error) {
	if p.Shape[1] != d.Shape[1] || p.Shape[2] != d.Shape[2] || p.dtype() != d.dtype() {
		return nil, replayErr("cannot concatenate prefill shape %v %s with decode shape %v %s",
			p.Shape, p.dtype(), d.Shape, d.dtype())
	}
	promptEnd := p.Start + p.Shape[0]
	if d.Start > promptEnd {
		return nil, replayErr("decode routed_experts start at position %d, after the prefill's end %d",
			d.Start, promptEnd)
	}
	drop := promptEnd - d.Start
	if drop > d.Shape[0] {
		return nil, replayErr("decode routed_experts has %d rows from position %d, expected at least %d",
			d.Shape[0], d.Start, drop)
	}
	merged := make([]byte, 0, len(p.bytes)+len(d.bytes)-int(drop*d.rowBytes))
	merged = append(merged, p.bytes...)
	merged = append(merged, d.bytes[drop*d.rowBytes:]...)

	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(merged))+96)
	out = append(out, `{"data":"`...)
	out = base64.StdEncoding.AppendEncode(out, merged)
	out = append(out, `","shape":[`...)
	out = strconv.AppendUint(out, p.Shape[0]+d.Shape[0]-drop, 10)
	out = append(out, ',')
	out = strconv.AppendUint(out, p.Shape[1], 10)
	out = append(out, ',')
	out = strconv.AppendUint(out, p.Shape[2], 10)
	out = append(out, `],"start":`...)
	out = strconv.AppendUint(out, p.Start, 10)
	if p.Dtype != nil || d.Dtype != nil {
		out = append(out, `,"dtype":`...)
		out = appendString(out, p.dtype())
	}
	return append(out, '}'), nil
}

// topFields are the top-level members of a generate response MergeGenerate reads.
type topFields struct {
	choices, promptTokenIDs, promptLogprobs []byte // raw values (last occurrence), nil when absent
}

func scanTop(resp []byte, side string) (topFields, error) {
	var f topFields
	err := ScanObject(resp, func(m Member) bool {
		v := resp[m.ValueStart:m.ValueEnd]
		switch {
		case keyEquals(m.Key, "choices"):
			f.choices = v
		case keyEquals(m.Key, "prompt_token_ids"):
			f.promptTokenIDs = v
		case keyEquals(m.Key, "prompt_logprobs"):
			f.promptLogprobs = v
		}
		return true
	})
	if err != nil {
		return f, fmt.Errorf("reading %s response: %w", side, err)
	}
	return f, nil
}

func isNull(v []byte) bool { return len(v) == 0 || v[0] == 'n' }

// choiceRoutedExperts returns the last non-null routed_experts of a choice object, or
// nil. A choice that is not an object has none.
func choiceRoutedExperts(choice []byte) []byte {
	if choice[0] != '{' {
		return nil
	}
	v, ok, err := Lookup(choice, "routed_experts")
	if err != nil || !ok || isNull(v) {
		return nil
	}
	return v
}

// MergeGenerate appends to dst the client's answer to a non-streaming
// /inference/v1/generate request served by P/D, built from the prefill and decode
// workers' 2xx JSON responses ("router replay", prime-rl PR #3274):
//
//   - When both sides' choices carry routed_experts {data, shape, start, dtype}, each
//     decode choice's routed_experts becomes the prefill's prompt rows followed by the
//     decode's completion rows (the decode worker never computed the prompt), and the
//     prefill's prompt_token_ids are copied in. Only one side having them, or differing
//     layers, top-k or dtype, is ErrReplayMismatch.
//   - Otherwise the decode response passes unchanged, plus the prefill's
//     prompt_token_ids when the decode response lacks them.
//   - With wantPromptLogprobs, the prefill's top-level prompt_logprobs replace the
//     decode's (the decode worker read the prompt's KV and computed none).
//
// Every other byte of the decode response passes unchanged. Malformed JSON is ErrBadJSON.
func MergeGenerate(dst, prefillResp, decodeResp []byte, wantPromptLogprobs bool) ([]byte, error) {
	pf, err := scanTop(prefillResp, "prefill")
	if err != nil {
		return dst, err
	}
	df, err := scanTop(decodeResp, "decode")
	if err != nil {
		return dst, err
	}

	var prefillRE []byte
	if !isNull(pf.choices) {
		it, err := openArray(pf.choices, 0, 0)
		if err != nil {
			return dst, fmt.Errorf("reading prefill response: choices: %w", err)
		}
		if s, e, ok, _ := it.next(); ok {
			prefillRE = choiceRoutedExperts(pf.choices[s:e])
		}
	}
	decodeHas := false
	if !isNull(df.choices) {
		if df.choices[0] != '[' {
			return dst, fmt.Errorf("reading decode response: choices is not an array: %w", ErrBadJSON)
		}
		it, _ := openArray(df.choices, 0, 0)
		for {
			s, e, ok, _ := it.next() // validated by scanTop
			if !ok {
				break
			}
			if choiceRoutedExperts(df.choices[s:e]) != nil {
				decodeHas = true
			}
		}
	}

	var editBuf [3]Edit
	edits := editBuf[:0]
	switch {
	case prefillRE == nil && !decodeHas:
		if !isNull(pf.promptTokenIDs) && isNull(df.promptTokenIDs) {
			edits = append(edits, Edit{Key: "prompt_token_ids", Op: OpSet, Value: pf.promptTokenIDs})
		}
	case prefillRE == nil:
		return dst, replayErr("decode response has routed_experts, prefill response has none")
	case !decodeHas:
		return dst, replayErr("prefill response has routed_experts, decode response has none")
	default:
		choices, err := stitchChoices(prefillRE, df.choices)
		if err != nil {
			return dst, err
		}
		edits = append(edits, Edit{Key: "choices", Op: OpReplace, Value: choices})
		if !isNull(pf.promptTokenIDs) {
			edits = append(edits, Edit{Key: "prompt_token_ids", Op: OpSet, Value: pf.promptTokenIDs})
		}
	}
	if wantPromptLogprobs && !isNull(pf.promptLogprobs) {
		edits = append(edits, Edit{Key: "prompt_logprobs", Op: OpSet, Value: pf.promptLogprobs})
	}
	if len(edits) == 0 {
		return append(dst, decodeResp...), nil
	}
	out, err := EditObject(dst, decodeResp, edits)
	if err != nil {
		return dst, fmt.Errorf("merging generate responses: %w", err)
	}
	return out, nil
}

// stitchChoices returns the decode choices array with every choice's routed_experts
// stitched onto the prefill's; the bytes between and around choices pass unchanged.
func stitchChoices(prefillRE, choices []byte) ([]byte, error) {
	p, err := parseRoutedExperts(prefillRE, "prefill")
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(choices)+len(p.bytes)*2)
	it, _ := openArray(choices, 0, 0)
	prev, index := 0, 0
	for {
		s, e, ok, _ := it.next()
		if !ok {
			break
		}
		raw := choiceRoutedExperts(choices[s:e])
		if raw == nil {
			return nil, replayErr("decode choice %d has no routed_experts", index)
		}
		d, err := parseRoutedExperts(raw, "decode")
		if err != nil {
			return nil, err
		}
		merged, err := stitch(p, d)
		if err != nil {
			return nil, err
		}
		out = append(out, choices[prev:s]...)
		edit := [1]Edit{{Key: "routed_experts", Op: OpReplace, Value: merged}}
		if out, err = EditObject(out, choices[s:e], edit[:]); err != nil {
			return nil, err
		}
		prev = e
		index++
	}
	return append(out, choices[prev:]...), nil
}
