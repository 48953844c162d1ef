package policy

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Cache-aware defaults (vllm-router --cache-threshold, --balance-abs-threshold,
// --balance-rel-threshold, --max-tree-size).
const (
	DefaultCacheThreshold      = 0.3
	DefaultBalanceAbsThreshold = 64
	DefaultBalanceRelThreshold = 1.5
	DefaultMaxTreeSize         = 1 << 26
	DefaultPrefixBlockSize     = 64
)

// ErrCacheAwareConfig wraps every CacheAwareConfig error.
var ErrCacheAwareConfig = errors.New("policy: invalid cache_aware config")

// CacheAwareConfig configures CacheAware. The three thresholds are taken literally, zero
// included (BalanceAbsThreshold 0 is the known "always balance" setting), so start from
// DefaultCacheAwareConfig.
type CacheAwareConfig struct {
	// CacheThreshold is the fraction of the prompt (matched bytes / prompt bytes, in
	// [0, 1]) that must already be indexed under one worker for the request to follow it.
	// Default 0.3; zero means any match at all.
	CacheThreshold float64
	// BalanceAbsThreshold and BalanceRelThreshold: when the most loaded usable worker has
	// more than BalanceAbsThreshold in-flight requests over the least loaded one AND more
	// than BalanceRelThreshold times its load, the prefix is ignored and the least loaded
	// worker wins. Defaults 64 and 1.5; must be ≥ 0.
	BalanceAbsThreshold int64
	BalanceRelThreshold float64
	// MaxTreeSize bounds the prompt bytes indexed, summed over workers (vllm-router counts
	// characters per worker). Past it the least recently used blocks are evicted on insert.
	// Memory is about 50 bytes per BlockSize bytes indexed: ~52 MB at the default 2^26.
	// Zero means 2^26.
	MaxTreeSize int
	// BlockSize is the prefix granularity in bytes. Zero means 64 (about 16 tokens, vLLM's
	// default KV block); must be ≥ 1 if set.
	BlockSize int
}

// DefaultCacheAwareConfig returns vllm-router's defaults.
func DefaultCacheAwareConfig() CacheAwareConfig {
	return CacheAwareConfig{
		CacheThreshold:      DefaultCacheThreshold,
		BalanceAbsThreshold: DefaultBalanceAbsThreshold,
		BalanceRelThreshold: DefaultBalanceRelThreshold,
		MaxTreeSize:         DefaultMaxTreeSize,
		BlockSize:           DefaultPrefixBlockSize,
	}
}

// CacheAware routes a prompt to the worker that most recently served its longest prefix,
// so vLLM's prefix cache hits, unless the match is too short or the fleet is too
// imbalanced; then to the least loaded worker (vllm-router `cache_aware`, §7.6 of the
// research notes).
//
// The index is a chain of fixed-size blocks, not vllm-router's character radix tree:
// block k's key is mix64(key(k-1) ^ xxhash(bytes of block k)), so one map lookup per
// block finds the longest indexed prefix and the entry names the worker that last sent
// it. Why blocks: vLLM reuses KV cache per block (16 tokens by default), so a sub-block
// match buys nothing; the entries hold no pointers (a flat arena the GC does not scan);
// and memory is bounded exactly by an LRU over entries, evicted on insert, with no
// background goroutine. The final partial block is indexed too, so short prompts repeat.
//
// Unlike vllm-router, loads are the router's exact in-flight counts, never reset.
type CacheAware struct {
	cfg    CacheAwareConfig
	cursor atomic.Uint64

	mu    sync.Mutex
	index prefixIndex
}

var (
	_ Policy    = (*CacheAware)(nil)
	_ InputUser = (*CacheAware)(nil)
)

// NewCacheAware validates cfg and returns a CacheAware with an empty index.
func NewCacheAware(cfg CacheAwareConfig) (*CacheAware, error) {
	switch {
	case math.IsNaN(cfg.CacheThreshold) || cfg.CacheThreshold < 0 || cfg.CacheThreshold > 1:
		return nil, fmt.Errorf("%w: CacheThreshold %v not in [0, 1]", ErrCacheAwareConfig, cfg.CacheThreshold)
	case cfg.BalanceAbsThreshold < 0:
		return nil, fmt.Errorf("%w: BalanceAbsThreshold %d < 0", ErrCacheAwareConfig, cfg.BalanceAbsThreshold)
	case math.IsNaN(cfg.BalanceRelThreshold) || cfg.BalanceRelThreshold < 0:
		return nil, fmt.Errorf("%w: BalanceRelThreshold %v < 0", ErrCacheAwareConfig, cfg.BalanceRelThreshold)
	case cfg.MaxTreeSize < 0:
		return nil, fmt.Errorf("%w: MaxTreeSize %d < 0", ErrCacheAwareConfig, cfg.MaxTreeSize)
	case cfg.BlockSize < 0:
		return nil, fmt.Errorf("%w: BlockSize %d < 0", ErrCacheAwareConfig, cfg.BlockSize)
	}
	if cfg.MaxTreeSize == 0 {
		cfg.MaxTreeSize = DefaultMaxTreeSize
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultPrefixBlockSize
	}
	p := &CacheAware{cfg: cfg}
	p.index.init(max(1, cfg.MaxTreeSize/cfg.BlockSize))
	return p, nil
}

// Inputs reports that the policy reads Request.Text.
func (p *CacheAware) Inputs() Input { return InputText }

// Pick chooses by prefix match or load as described on CacheAware, then indexes the prompt
// under the chosen worker. O(len(eps) + len(Text)/BlockSize) under one mutex.
func (p *CacheAware) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	n := len(eps)
	if n == 0 {
		return -1, ErrNoEndpoint
	}
	p.mu.Lock()
	defer p.mu.Unlock()

	ix := &p.index
	matched, tenant, chain := ix.match(r.Text, p.cfg.BlockSize)
	tenantID := ""
	if tenant >= 0 {
		tenantID = ix.tenants[tenant]
	}

	// One scan: load extremes, least loaded (ties rotate), the tenant's position.
	start := int(p.cursor.Add(1) % uint64(n))
	least, tenantAt := -1, -1
	var minLoad, maxLoad int64
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		ep := eps[i]
		if !r.Usable(ep) {
			continue
		}
		load := ep.InFlight()
		if least < 0 || load < minLoad {
			least, minLoad = i, load
		}
		maxLoad = max(maxLoad, load)
		if tenant >= 0 && tenantAt < 0 && ep.ID() == tenantID {
			tenantAt = i
		}
	}
	if least < 0 {
		return -1, ErrNoEndpoint
	}

	choice := least
	imbalanced := maxLoad-minLoad > p.cfg.BalanceAbsThreshold &&
		float64(maxLoad) > float64(minLoad)*p.cfg.BalanceRelThreshold
	if !imbalanced && tenantAt >= 0 && len(r.Text) > 0 &&
		float64(matched)/float64(len(r.Text)) > p.cfg.CacheThreshold {
		choice = tenantAt
	}
	ix.insert(r.Text, p.cfg.BlockSize, matched, chain, ix.intern(eps[choice].ID()))
	return choice, nil
}

// prefixIndex maps chained block keys to the worker that last sent that prefix, with LRU
// eviction over a fixed-capacity arena. Not safe for concurrent use.
type prefixIndex struct {
	slots      map[uint64]int32 // block key → arena position
	entries    []prefixEntry
	capacity   int
	head, tail int32 // most and least recently used; -1 when empty
	tenants    []string
	tenantOf   map[string]int32
	touched    []int32 // scratch for insert, reused
}

type prefixEntry struct {
	key        uint64
	tenant     int32
	prev, next int32 // LRU links, toward head and toward tail
}

func (ix *prefixIndex) init(capacity int) {
	ix.slots = make(map[uint64]int32)
	ix.capacity = capacity
	ix.head, ix.tail = -1, -1
	ix.tenantOf = make(map[string]int32)
}

// chainSeed starts every chain, so an empty prefix has a fixed key.
const chainSeed = 0x9e3779b97f4a7c15

// blockKey extends the chain by one block. The length is mixed in so a partial final
// block never shares a key with a full block of the same bytes.
func blockKey(prev uint64, block []byte) uint64 {
	return mix64(prev ^ xxhash.Sum64(block) ^ uint64(len(block))<<56)
}

// match returns how many bytes of text's longest indexed prefix there are, the worker
// that last sent that prefix (or -1), and the chain key after it. The matched entries are
// left in ix.touched for insert.
func (ix *prefixIndex) match(text []byte, blockSize int) (matched int, tenant int32, chain uint64) {
	tenant, chain = -1, chainSeed
	ix.touched = ix.touched[:0]
	for off := 0; off < len(text); off += blockSize {
		block := text[off:min(off+blockSize, len(text))]
		key := blockKey(chain, block)
		at, ok := ix.slots[key]
		if !ok {
			break
		}
		chain = key
		matched += len(block)
		tenant = ix.entries[at].tenant
		ix.touched = append(ix.touched, at)
	}
	return matched, tenant, chain
}

// insert records every block of text under tenant, given match's result for the same
// text (its matched entries in ix.touched, so they are not looked up twice), and marks
// them most recently used — finally in reverse order, so a prefix always outlives its
// extensions under eviction.
func (ix *prefixIndex) insert(text []byte, blockSize, matched int, chain uint64, tenant int32) {
	for _, at := range ix.touched {
		ix.entries[at].tenant = tenant
		ix.moveToFront(at) // now, so this insert never evicts its own earlier blocks
	}
	for off := matched; off < len(text); off += blockSize {
		chain = blockKey(chain, text[off:min(off+blockSize, len(text))])
		at, ok := ix.slots[chain]
		if !ok {
			at = ix.allocate(chain)
		}
		ix.entries[at].tenant = tenant
		ix.moveToFront(at)
		ix.touched = append(ix.touched, at)
	}
	for k := len(ix.touched) - 1; k >= 0; k-- {
		ix.moveToFront(ix.touched[k])
	}
}

// allocate returns a fresh arena slot for key, evicting the least recently used entry
// when full.
func (ix *prefixIndex) allocate(key uint64) int32 {
	var at int32
	if len(ix.entries) < ix.capacity {
		at = int32(len(ix.entries))
		ix.entries = append(ix.entries, prefixEntry{prev: -1, next: -1})
		ix.linkFront(at)
	} else {
		at = ix.tail
		delete(ix.slots, ix.entries[at].key)
		// Only a prompt longer than the whole index can evict its own earlier blocks;
		// the slot is then reused and its stale place in touched is harmless.
	}
	ix.entries[at].key = key
	ix.slots[key] = at
	return at
}

func (ix *prefixIndex) linkFront(at int32) {
	e := &ix.entries[at]
	e.prev, e.next = -1, ix.head
	if ix.head >= 0 {
		ix.entries[ix.head].prev = at
	}
	ix.head = at
	if ix.tail < 0 {
		ix.tail = at
	}
}

func (ix *prefixIndex) moveToFront(at int32) {
	if ix.head == at {
		return
	}
	e := &ix.entries[at]
	// Unlink; at is not the head, so it has a prev.
	ix.entries[e.prev].next = e.next
	if e.next >= 0 {
		ix.entries[e.next].prev = e.prev
	} else {
		ix.tail = e.prev
	}
	ix.linkFront(at)
}

// intern returns the tenant number of a worker ID, adding it on first sight. Tenants are
// never forgotten: their number is small (workers ever configured).
func (ix *prefixIndex) intern(id string) int32 {
	if t, ok := ix.tenantOf[id]; ok {
		return t
	}
	t := int32(len(ix.tenants))
	ix.tenants = append(ix.tenants, id)
	ix.tenantOf[id] = t
	return t
}

// Len returns the number of blocks indexed (for tests and metrics).
func (p *CacheAware) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.index.slots)
}
