package sim

import (
	"container/list"
	"encoding/binary"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// prefixCache is vLLM's automatic prefix caching reduced to its bookkeeping: a prompt is
// cut into full blocks of blockSize tokens, block i is named by a hash chained over
// block i-1's hash and its own tokens, and a bounded LRU remembers which block hashes are
// resident. A hit is the longest run of resident blocks from the start of the prompt.
// It is safe for concurrent use.
type prefixCache struct {
	blockSize int
	capacity  int

	mu      sync.Mutex
	lru     *list.List // front = most recently used; values are uint64 hashes
	entries map[uint64]*list.Element
}

func newPrefixCache(blockSize, capacity int) *prefixCache {
	return &prefixCache{
		blockSize: blockSize,
		capacity:  capacity,
		lru:       list.New(),
		entries:   make(map[uint64]*list.Element),
	}
}

// blockHashes returns the chained hashes of the full blocks of tokens.
func blockHashes(tokens []int, blockSize int) []uint64 {
	n := len(tokens) / blockSize
	hashes := make([]uint64, n)
	var parent uint64
	var buf [8]byte
	d := xxhash.New()
	for b := 0; b < n; b++ {
		d.Reset()
		binary.LittleEndian.PutUint64(buf[:], parent)
		_, _ = d.Write(buf[:])
		for _, t := range tokens[b*blockSize : (b+1)*blockSize] {
			binary.LittleEndian.PutUint32(buf[:4], uint32(t))
			_, _ = d.Write(buf[:4])
		}
		parent = d.Sum64()
		hashes[b] = parent
	}
	return hashes
}

// match returns how many leading prompt tokens are cached, touching the matched blocks.
// Like vLLM, the last prompt token is never served from cache (one token must be
// computed to sample from), so only blocks within the first len-1 tokens count.
func (c *prefixCache) match(hashes []uint64, promptLen int) int {
	limit := 0
	if promptLen > 0 {
		limit = (promptLen - 1) / c.blockSize
	}
	if limit > len(hashes) {
		limit = len(hashes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	hit := 0
	for _, h := range hashes[:limit] {
		e, ok := c.entries[h]
		if !ok {
			break
		}
		c.lru.MoveToFront(e)
		hit++
	}
	return hit * c.blockSize
}

// store makes every block resident, evicting the least recently used beyond capacity.
func (c *prefixCache) store(hashes []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hashes {
		if e, ok := c.entries[h]; ok {
			c.lru.MoveToFront(e)
			continue
		}
		c.entries[h] = c.lru.PushFront(h)
		for c.lru.Len() > c.capacity {
			old := c.lru.Back()
			c.lru.Remove(old)
			delete(c.entries, old.Value.(uint64))
		}
	}
}

// reset empties the cache (POST /reset_prefix_cache).
func (c *prefixCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Init()
	clear(c.entries)
}

// blocks is the number of resident blocks.
func (c *prefixCache) blocks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
