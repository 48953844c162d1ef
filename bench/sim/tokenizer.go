package sim

import (
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// The fake tokenizer: one token per whitespace-separated word. Words of the generation
// vocabulary get their index as id, so generated text round-trips through /detokenize;
// any other word gets a stable id from its hash. Chat messages are rendered through a
// fixed ChatML-like template first, so a multi-turn conversation's prompt extends the
// previous turn's prompt token for token, which is what makes prefix caching visible.

// vocabSize bounds token ids, like a real vocabulary.
const vocabSize = 151936

// generationVocab is what the simulator "generates": token i of every completion is
// generationVocab[i % len(generationVocab)], so tests can assert content exactly.
var generationVocab = []string{
	"hello", "from", "the", "switchyard", "simulator", "this", "is", "token",
	"text", "that", "a", "router", "can", "check", "word", "by",
	"word", "and", "it", "never", "changes", "between", "runs", "so",
	"tests", "stay", "exact", "while", "load", "flows", "through", "workers",
}

var vocabIndex = func() map[string]int {
	m := make(map[string]int, len(generationVocab))
	for i, w := range generationVocab {
		if _, ok := m[w]; !ok {
			m[w] = i
		}
	}
	return m
}()

// tokenID maps one word to its id.
func tokenID(word string) int {
	if id, ok := vocabIndex[word]; ok {
		return id
	}
	reserved := uint64(len(generationVocab))
	return int(reserved + xxhash.Sum64String(word)%(vocabSize-reserved))
}

// tokenize splits text into word tokens.
func tokenize(text string) []int {
	fields := strings.Fields(text)
	ids := make([]int, len(fields))
	for i, f := range fields {
		ids[i] = tokenID(f)
	}
	return ids
}

// tokenText is the text of one token id: its vocabulary word, or "<id>" for ids outside
// the generation vocabulary (their word cannot be recovered from the hash).
func tokenText(id int) string {
	if id >= 0 && id < len(generationVocab) {
		return generationVocab[id]
	}
	return "<" + strconv.Itoa(id) + ">"
}

// detokenize joins token texts with single spaces.
func detokenize(ids []int) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(tokenText(id))
	}
	return b.String()
}

// generatedToken is the id of the i-th generated token (0-based).
func generatedToken(i int) int { return i % len(generationVocab) }

// GeneratedText is the exact text of a completion of n tokens, for tests that assert
// content: "hello from the switchyard simulator ...".
func GeneratedText(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(pieceText(i))
	}
	return b.String()
}

// pieceText is the text a stream chunk carries for generated token i: the word with a
// leading space except for the first one, so the pieces concatenate into GeneratedText.
func pieceText(i int) string {
	if i == 0 {
		return tokenText(generatedToken(0))
	}
	return " " + tokenText(generatedToken(i))
}

// chatMessage is one rendered chat message.
type chatMessage struct {
	Role    string
	Content string
}

// renderChat renders messages through the fixed template, ending with the generation
// prompt for the assistant, as vLLM's chat template would with add_generation_prompt.
func renderChat(msgs []chatMessage) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString("<|im_start|>")
		b.WriteString(m.Role)
		b.WriteString("\n")
		b.WriteString(m.Content)
		b.WriteString(" <|im_end|>\n")
	}
	b.WriteString("<|im_start|>assistant\n")
	return b.String()
}
