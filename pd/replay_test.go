package pd

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestMergeGenerateGolden is built by hand: a two-token prompt whose routing the prefill
// worker computed ([10 11] [20 21]) and a decode worker that returns three rows, the
// first two of which are junk for the prompt it never computed ([0 0] [1 1]) and the
// last the completion token's routing ([30 31]). The client must see prompt rows then
// completion rows, every other decode byte unchanged, and the prefill's
// prompt_token_ids.
func TestMergeGenerateGolden(t *testing.T) {
	prefill := `{"request_id":"p","choices":[{"index":0,"token_ids":[5],"routed_experts":{"data":"CgsUFQ==","shape":[2,1,2],"start":0,"dtype":"uint8"}}],"prompt_token_ids":[1,2],"prompt_logprobs":[null,{"2":-0.5}],"kv_transfer_params":{"a":1}}`
	decode := "{\"request_id\":\"d\",\n \"choices\": [ {\"index\":0,\"token_ids\":[7],\"routed_experts\" : {\"data\":\"AAABAR4f\",\"shape\":[3,1,2],\"start\":0,\"dtype\":\"uint8\"},\"finish_reason\":\"length\"} ],\"prompt_logprobs\":null,\"usage\":{\"prompt_tokens\":2}}"
	want := "{\"request_id\":\"d\",\n \"choices\": [ {\"index\":0,\"token_ids\":[7],\"routed_experts\" : {\"data\":\"CgsUFR4f\",\"shape\":[3,1,2],\"start\":0,\"dtype\":\"uint8\"},\"finish_reason\":\"length\"} ],\"prompt_logprobs\":null,\"usage\":{\"prompt_tokens\":2},\"prompt_token_ids\":[1,2]}"
	got, err := MergeGenerate([]byte("d:"), []byte(prefill), []byte(decode), false)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "d:"+want {
		t.Fatalf("got  %s\nwant d:%s", got, want)
	}
	// With prompt logprobs wanted, the prefill's replace the decode's null.
	got, err = MergeGenerate(nil, []byte(prefill), []byte(decode), true)
	if err != nil {
		t.Fatal(err)
	}
	want = strings.Replace(want, `"prompt_logprobs":null`, `"prompt_logprobs":[null,{"2":-0.5}]`, 1)
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func routed(dtype string, start int, seq, layers, topk int, vals ...int) string {
	size := int(dtypeSize(dtype))
	if dtype == "" {
		size = 1
	}
	b := make([]byte, len(vals)*size)
	for i, v := range vals {
		switch size {
		case 1:
			b[i] = byte(v)
		case 2:
			binary.LittleEndian.PutUint16(b[i*2:], uint16(v))
		case 4:
			binary.LittleEndian.PutUint32(b[i*4:], uint32(v))
		}
	}
	s := `{"data":"` + base64.StdEncoding.EncodeToString(b) + `","shape":[` + itoa(seq) + `,` + itoa(layers) + `,` + itoa(topk) + `],"start":` + itoa(start)
	if dtype != "" {
		s += `,"dtype":"` + dtype + `"`
	}
	return s + "}"
}

func itoa(i int) string {
	return string(appendInt(nil, i))
}

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func TestMergeGenerate(t *testing.T) {
	gen := func(choices ...string) string {
		return `{"choices":[` + strings.Join(choices, ",") + `]}`
	}
	choice := func(re string) string { return `{"index":0,"routed_experts":` + re + `}` }
	tests := []struct {
		name, prefill, decode string
		want                  string
		err                   error
	}{
		{"uint16 golden by hand, prompt start 3",
			gen(choice(`{"data":"LAEtAZABkQE=","shape":[2,1,2],"start":3,"dtype":"uint16"}`)),
			gen(choice(`{"data":"AAAAAAAAAAD0AfUBWAJZAg==","shape":[4,1,2],"start":3,"dtype":"uint16"}`)),
			gen(choice(`{"data":"LAEtAZABkQH0AfUBWAJZAg==","shape":[4,1,2],"start":3,"dtype":"uint16"}`)), nil},
		{"decode starting earlier is clipped at the prompt's end",
			gen(choice(`{"data":"LAEtAZABkQE=","shape":[2,1,2],"start":3,"dtype":"uint16"}`)),
			gen(choice(`{"data":"CQAJAAAAAAAAAAAA9AH1AQ==","shape":[4,1,2],"start":2,"dtype":"uint16"}`)),
			gen(choice(`{"data":"LAEtAZABkQH0AfUB","shape":[3,1,2],"start":3,"dtype":"uint16"}`)), nil},
		{"int32 two layers",
			gen(choice(routed("int32", 0, 1, 2, 1, 70000, 70001))),
			gen(choice(routed("int32", 0, 3, 2, 1, 0, 0, 5, 6, 7, 8))),
			gen(choice(routed("int32", 0, 3, 2, 1, 70000, 70001, 5, 6, 7, 8))), nil},
		{"no dtype means uint8 and stays absent",
			gen(choice(routed("", 0, 1, 1, 1, 3))),
			gen(choice(routed("", 0, 2, 1, 1, 0, 4))),
			gen(choice(routed("", 0, 2, 1, 1, 3, 4))), nil},
		{"missing dtype matches uint8",
			gen(choice(routed("", 0, 1, 1, 1, 3))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 3, 4))), nil},
		{"every decode choice stitched",
			gen(choice(routed("uint8", 0, 1, 1, 1, 3))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4)), choice(routed("uint8", 0, 3, 1, 1, 0, 5, 6))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 3, 4)), choice(routed("uint8", 0, 3, 1, 1, 3, 5, 6))), nil},
		{"decode with no completion rows",
			gen(choice(routed("uint8", 0, 2, 1, 1, 3, 4))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 0, 0))),
			gen(choice(routed("uint8", 0, 2, 1, 1, 3, 4))), nil},
		{"neither side: unchanged", gen(`{"index":0}`), gen(`{"index":0,"token_ids":[1]}`), gen(`{"index":0,"token_ids":[1]}`), nil},
		{"null routed_experts count as none", gen(`{"routed_experts":null}`), gen(`{"routed_experts":null}`), gen(`{"routed_experts":null}`), nil},
		{"prompt_token_ids added when decode lacks them",
			`{"choices":[],"prompt_token_ids":[1,2]}`, `{"choices":[]}`, `{"choices":[],"prompt_token_ids":[1,2]}`, nil},
		{"prompt_token_ids replace decode null",
			`{"prompt_token_ids":[1,2]}`, `{"prompt_token_ids":null,"x":1}`, `{"prompt_token_ids":[1,2],"x":1}`, nil},
		{"decode prompt_token_ids kept without replay",
			`{"prompt_token_ids":[1,2]}`, `{"prompt_token_ids":[9]}`, `{"prompt_token_ids":[9]}`, nil},
		{"only prefill has routed_experts", gen(choice(routed("uint8", 0, 1, 1, 1, 3))), gen(`{"index":0}`), "", ErrReplayMismatch},
		{"only decode has routed_experts", gen(`{"index":0}`), gen(choice(routed("uint8", 0, 1, 1, 1, 3))), "", ErrReplayMismatch},
		{"one decode choice lacks them",
			gen(choice(routed("uint8", 0, 1, 1, 1, 3))), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4)), `{"index":1}`), "", ErrReplayMismatch},
		{"layers differ", gen(choice(routed("uint8", 0, 1, 1, 2, 3, 3))), gen(choice(routed("uint8", 0, 1, 2, 1, 0, 4))), "", ErrReplayMismatch},
		{"dtype differs", gen(choice(routed("uint8", 0, 1, 1, 1, 3))), gen(choice(routed("uint16", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"unsupported dtype", gen(choice(`{"data":"AA==","shape":[1,1,1],"start":0,"dtype":"complex64"}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"data length disagrees with shape", gen(choice(`{"data":"AAA=","shape":[1,1,1],"start":0}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"bad base64", gen(choice(`{"data":"!!","shape":[1,1,1],"start":0}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"string form rejected", gen(choice(`"k05VTVBZ"`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"shape not 3-d", gen(choice(`{"data":"AA==","shape":[1,1],"start":0}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"negative shape", gen(choice(`{"data":"AA==","shape":[-1,1,1],"start":0}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"overflowing shape", gen(choice(`{"data":"AA==","shape":[18446744073709551615,18446744073709551615,2],"start":0}`)), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"decode shorter than prompt", gen(choice(routed("uint8", 0, 3, 1, 1, 1, 2, 3))), gen(choice(routed("uint8", 0, 2, 1, 1, 0, 4))), "", ErrReplayMismatch},
		{"gap between prompt and decode", gen(choice(routed("uint8", 0, 1, 1, 1, 1))), gen(choice(routed("uint8", 2, 1, 1, 1, 4))), "", ErrReplayMismatch},
		{"prefill not JSON", `{"choices":[`, gen(), "", ErrBadJSON},
		{"decode not JSON", gen(), `oops`, "", ErrBadJSON},
		{"decode choices not an array", gen(), `{"choices":{}}`, "", ErrBadJSON},
		{"prefill choices not an array", `{"choices":1}`, gen(), "", ErrBadJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MergeGenerate([]byte("x"), []byte(tc.prefill), []byte(tc.decode), false)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				if string(got) != "x" {
					t.Fatalf("dst changed on error: %q", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("MergeGenerate: %v", err)
			}
			if string(got) != "x"+tc.want {
				t.Fatalf("got  %s\nwant x%s", got, tc.want)
			}
		})
	}
}

func TestMergeGenerateErrorIsClear(t *testing.T) {
	p := `{"choices":[{"routed_experts":` + routed("uint8", 0, 1, 1, 2, 1, 2) + `}]}`
	d := `{"choices":[{"routed_experts":` + routed("uint8", 0, 2, 1, 1, 1, 2) + `}]}`
	_, err := MergeGenerate(nil, []byte(p), []byte(d), false)
	if err == nil || !strings.Contains(err.Error(), "cannot concatenate prefill shape [1 1 2] uint8 with decode shape [2 1 1] uint8") {
		t.Fatalf("err = %v", err)
	}
}

// TestStitchProperty checks, over seeded random payloads of every integer dtype, that
// the merged rows are exactly the prefill's rows then the decode's rows past the
// prefill's coverage, with the shape and start to match.
func TestStitchProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 300; iter++ {
		dtype := []string{"uint8", "uint16", "int16", "int32", "uint32", "int64"}[rng.IntN(6)]
		size := int(dtypeSize(dtype))
		layers, topk := 1+rng.IntN(4), 1+rng.IntN(4)
		row := layers * topk * size
		pStart, pSeq := rng.IntN(5), rng.IntN(6)
		dStart := pStart + rng.IntN(pSeq+1) // decode starts inside or at the end of the prompt
		drop := pStart + pSeq - dStart
		dSeq := drop + rng.IntN(5)
		pData, dData := make([]byte, pSeq*row), make([]byte, dSeq*row)
		for i := range pData {
			pData[i] = byte(rng.Uint32())
		}
		for i := range dData {
			dData[i] = byte(rng.Uint32())
		}
		payload := func(data []byte, start, seq int) string {
			return `{"data":"` + base64.StdEncoding.EncodeToString(data) + `","shape":[` + itoa(seq) + `,` +
				itoa(layers) + `,` + itoa(topk) + `],"start":` + itoa(start) + `,"dtype":"` + dtype + `"}`
		}
		prefill := `{"choices":[{"routed_experts":` + payload(pData, pStart, pSeq) + `}]}`
		decode := `{"choices":[{"routed_experts":` + payload(dData, dStart, dSeq) + `}]}`
		got, err := MergeGenerate(nil, []byte(prefill), []byte(decode), false)
		if err != nil {
			t.Fatalf("iter %d: %v", iter, err)
		}
		wantData := append(append([]byte{}, pData...), dData[drop*row:]...)
		want := `{"choices":[{"routed_experts":` + payload(wantData, pStart, pSeq+dSeq-drop) + `}]}`
		if string(got) != want {
			t.Fatalf("iter %d:\ngot  %s\nwant %s", iter, got, want)
		}
	}
}
