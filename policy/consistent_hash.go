package policy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Ring defaults; see ConsistentHashConfig. Measured in consistent_hash_test.go.
const (
	DefaultPartitionCount    = 65521
	DefaultReplicationFactor = 400
	DefaultLoad              = 1.15
	DefaultMaxFallbacks      = 8
)

// Bounds that keep a ring's memory sane: partitions cost 4·(1+MaxFallbacks) bytes each,
// virtual nodes 16 bytes each per member during SetMembers.
const (
	maxPartitionCount    = 1 << 20
	maxReplicationFactor = 4096
)

// ErrRingConfig wraps every ring configuration error.
var ErrRingConfig = errors.New("policy: invalid consistent_hash ring config")

// ConsistentHashConfig configures the ring of ConsistentHash: bounded-load consistent
// hashing with partitions, as in github.com/buraksezer/consistent v0.10.0.
type ConsistentHashConfig struct {
	// PartitionCount is the number of partitions keys hash into (key → xxhash % count); the
	// ring assigns partitions, not keys, to members. It should be ≫ members: with few
	// partitions per member, removing one member shifts the per-member bound and moves
	// keys between survivors (8191 partitions, 1 024 members: 6 % of survivors' keys moved;
	// 65521: 0.24 %). Memory: 4·(1+MaxFallbacks) bytes each (2.4 MB at the default).
	// Zero means 65521; at most 2^20. When the members outnumber it, it is raised to 4×
	// the members.
	PartitionCount int
	// ReplicationFactor is the number of virtual nodes per member. More spreads
	// partitions more evenly before the load bound applies, and moves fewer keys between
	// survivors when a member leaves. Zero means 400; at most 4096.
	ReplicationFactor int
	// Load bounds each member to ceil(Load · floor(partitions/members)) partitions. Near
	// 1.0 the partitions balance perfectly, but the bound then decides most owners and a
	// membership change moves keys between survivors; at 1.15 with 400 virtual nodes the
	// bound rarely binds below ~100 members (measured: no survivor key moved at 8 and 64
	// members) and no member holds over 1.15× the mean partitions (sessions per member
	// add sampling noise: max/mean 1.08 for 10 000 sessions on 8 members, measured in
	// consistent_hash_test.go). It is raised to the smallest value that fits
	// when the members do not divide the partitions (the library would panic). Zero means
	// 1.15; must be ≥ 1.0.
	Load float64
	// MaxFallbacks is how many distinct next members on the ring are tried, in ring order,
	// when a key's owner is unusable, before falling back to the least loaded endpoint.
	// Zero means 8; negative means none.
	MaxFallbacks int
}

// ConsistentHash routes each keyed request to the owner of the key's partition on a
// bounded-load consistent-hash ring, so a session's turns meet their KV cache (vllm-router
// `consistent_hash`, keyed by Request.Key, the X-Session-ID chain).
//
// The ring's members are the configured endpoints and change only in SetMembers, never on
// health flaps: while an owner is unusable (down, full or avoided) its keys go to the next
// distinct members on the ring — different successors for different partitions, so they
// spread instead of piling onto worker 0 as in vllm-router — and come back when it
// recovers. Keyless requests go to the least loaded endpoint.
//
// Pick touches no map and no lock: SetMembers precomputes, for every partition, the owner
// followed by its distinct ring successors, so Pick is a hash, a modulo and a slice walk.
type ConsistentHash struct {
	cfg     ConsistentHashConfig
	ring    atomic.Pointer[hashRing]
	buildMu sync.Mutex // serialises rebuilds
	cursor  atomic.Uint64
}

var (
	_ Policy          = (*ConsistentHash)(nil)
	_ InputUser       = (*ConsistentHash)(nil)
	_ MembershipAware = (*ConsistentHash)(nil)
)

// hashRing is an immutable snapshot: the member set it was built from and the per-partition
// candidate lists, flat: order[p*stride : p*stride+stride], owner first, -1 padded.
type hashRing struct {
	ids        []string
	partitions uint64
	stride     int
	order      []int32
}

// NewConsistentHash validates cfg and returns a ConsistentHash with an empty ring.
func NewConsistentHash(cfg ConsistentHashConfig) (*ConsistentHash, error) {
	if cfg.PartitionCount == 0 {
		cfg.PartitionCount = DefaultPartitionCount
	}
	if cfg.ReplicationFactor == 0 {
		cfg.ReplicationFactor = DefaultReplicationFactor
	}
	if cfg.Load == 0 {
		cfg.Load = DefaultLoad
	}
	if cfg.MaxFallbacks == 0 {
		cfg.MaxFallbacks = DefaultMaxFallbacks
	}
	if cfg.MaxFallbacks < 0 {
		cfg.MaxFallbacks = 0
	}
	switch {
	case cfg.PartitionCount < 1 || cfg.PartitionCount > maxPartitionCount:
		return nil, fmt.Errorf("%w: PartitionCount %d not in [1, %d]", ErrRingConfig, cfg.PartitionCount, maxPartitionCount)
	case cfg.ReplicationFactor < 1 || cfg.ReplicationFactor > maxReplicationFactor:
		return nil, fmt.Errorf("%w: ReplicationFactor %d not in [1, %d]", ErrRingConfig, cfg.ReplicationFactor, maxReplicationFactor)
	case math.IsNaN(cfg.Load) || cfg.Load < 1.0 || math.IsInf(cfg.Load, 0):
		return nil, fmt.Errorf("%w: Load %v, want ≥ 1.0", ErrRingConfig, cfg.Load)
	}
	return &ConsistentHash{cfg: cfg}, nil
}

// Inputs reports that the policy reads Request.Key.
func (p *ConsistentHash) Inputs() Input { return InputKey }

// SetMembers rebuilds the ring for the configured endpoints. It is O(partitions ·
// fallbacks + members · ReplicationFactor · log) and allocates; call it off the hot path.
func (p *ConsistentHash) SetMembers(eps []Endpoint) {
	p.buildMu.Lock()
	defer p.buildMu.Unlock()
	p.rebuildLocked(eps)
}

func (p *ConsistentHash) rebuildLocked(eps []Endpoint) {
	rg, err := buildHashRing(eps, p.cfg)
	if err != nil {
		// Not reachable with a validated config; an empty ring routes every key by load,
		// which is degraded but safe.
		rg = &hashRing{ids: endpointIDs(eps)}
	}
	p.ring.Store(rg)
}

// Pick returns the first usable endpoint among the key's owner and its ring successors,
// else the least loaded usable endpoint. It allocates nothing unless eps differs from the
// member set last given to SetMembers, in which case it rebuilds the ring first (a safety
// net: the router calls SetMembers).
func (p *ConsistentHash) Pick(r *Request, eps []Endpoint) (int, error) {
	r = requestOrEmpty(r)
	if len(r.Key) == 0 {
		return leastInFlight(r, eps, &p.cursor)
	}
	h := xxhash.Sum64(r.Key)
	for attempt := 0; attempt < 2; attempt++ {
		rg := p.ring.Load()
		if rg == nil || len(rg.ids) != len(eps) {
			p.rebuildIfStale(eps)
			continue
		}
		if rg.stride == 0 {
			break
		}
		base := int(h%rg.partitions) * rg.stride
		stale := false
		for _, i := range rg.order[base : base+rg.stride] {
			if i < 0 {
				break
			}
			ep := eps[i]
			if ep.ID() != rg.ids[i] {
				stale = true
				break
			}
			if r.Usable(ep) {
				return int(i), nil
			}
		}
		if !stale {
			break
		}
		p.rebuildIfStale(eps)
	}
	return leastInFlight(r, eps, &p.cursor)
}

// rebuildIfStale rebuilds the ring from eps unless another goroutine already did.
func (p *ConsistentHash) rebuildIfStale(eps []Endpoint) {
	p.buildMu.Lock()
	defer p.buildMu.Unlock()
	if rg := p.ring.Load(); rg != nil && sameIDs(rg.ids, eps) {
		return
	}
	p.rebuildLocked(eps)
}

func sameIDs(ids []string, eps []Endpoint) bool {
	if len(ids) != len(eps) {
		return false
	}
	for i, ep := range eps {
		if ids[i] != ep.ID() {
			return false
		}
	}
	return true
}

func endpointIDs(eps []Endpoint) []string {
	ids := make([]string, len(eps))
	for i, ep := range eps {
		ids[i] = ep.ID()
	}
	return ids
}

// effectiveRing returns the partition count and load factor the library can honour for n
// members: it needs partitions ≥ members, and n·ceil(floor(P/n)·Load) ≥ P or
// distributeWithLoad panics ("not enough room to distribute partitions").
func effectiveRing(n, partitions int, load float64) (int, float64) {
	if partitions < n {
		partitions = 4 * n
	}
	q := partitions / n
	for n*int(math.Ceil(float64(q)*load)) < partitions {
		load = float64(q+1) / float64(q) // ceil(q·load) ≥ q+1 > q + (P mod n)/n
		if n*int(math.Ceil(float64(q)*load)) < partitions {
			load = math.Nextafter(load, math.Inf(1))
		}
	}
	return partitions, load
}

// buildHashRing assigns partitions to members with the bounded-load algorithm of
// github.com/buraksezer/consistent v0.10.0 (distributePartitions/distributeWithLoad), on
// the same virtual-node positions, and lists each partition's distinct ring successors.
//
// It re-implements the library's assignment instead of calling consistent.New because
// New re-sorts the whole ring once per member: O(members²·ReplicationFactor·log) — 56 s
// for 1 024 members at ReplicationFactor 400, 0.8 s even at 16 — where this is
// O(members·ReplicationFactor·log + partitions·walk). TestConsistentHashMatchesLibrary
// pins the owners to the library's, partition by partition.
func buildHashRing(eps []Endpoint, cfg ConsistentHashConfig) (*hashRing, error) {
	ids := endpointIDs(eps)
	index := make(map[string]int32, len(ids)) // first position of each distinct ID
	var distinct []int32
	for i, id := range ids {
		if _, dup := index[id]; !dup {
			index[id] = int32(i)
			distinct = append(distinct, int32(i))
		}
	}
	n := len(distinct)
	if n == 0 {
		return &hashRing{ids: ids}, nil
	}
	partitions, load := effectiveRing(n, cfg.PartitionCount, cfg.Load)

	type vnode struct {
		hash   uint64
		member int32 // position in eps
	}
	vnodes := make([]vnode, 0, n*cfg.ReplicationFactor)
	var key []byte
	for _, pos := range distinct {
		for v := 0; v < cfg.ReplicationFactor; v++ {
			key = strconv.AppendInt(append(key[:0], ids[pos]...), int64(v), 10) // the library's "%s%d"
			vnodes = append(vnodes, vnode{xxhash.Sum64(key), pos})
		}
	}
	slices.SortFunc(vnodes, func(a, b vnode) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.member, b.member)
	})

	// The library's bound: ceil(floor(P/n)·Load) partitions per member.
	capacity := int(math.Ceil(float64(partitions/n) * load))
	owned := make([]int, len(ids))
	stride := 1 + min(cfg.MaxFallbacks, n-1)
	rg := &hashRing{ids: ids, partitions: uint64(partitions), stride: stride,
		order: make([]int32, partitions*stride)}
	seen := make([]int, len(ids)) // seen[member] == p+1: already listed for partition p
	var buf [8]byte
	for p := 0; p < partitions; p++ {
		binary.LittleEndian.PutUint64(buf[:], uint64(p))
		ph := xxhash.Sum64(buf[:])
		start, _ := slices.BinarySearchFunc(vnodes, ph, func(v vnode, h uint64) int { return cmp.Compare(v.hash, h) })
		if start == len(vnodes) {
			start = 0
		}
		// Owner: the first member clockwise with room. The library gives up after
		// len-1 steps (and panics); effectiveRing guarantees room, so this cannot fail
		// unless that arithmetic is wrong.
		owner := int32(-1)
		for k := 0; k < len(vnodes); k++ {
			m := vnodes[(start+k)%len(vnodes)].member
			if owned[m] < capacity {
				owner = m
				break
			}
		}
		if owner < 0 {
			return nil, fmt.Errorf("%w: no room for partition %d (%d members, %d partitions, load %v)",
				ErrRingConfig, p, n, partitions, load)
		}
		owned[owner]++
		row := rg.order[p*stride : (p+1)*stride]
		row[0] = owner
		seen[owner] = p + 1
		filled := 1
		for k := 0; k < len(vnodes) && filled < stride; k++ {
			m := vnodes[(start+k)%len(vnodes)].member
			if seen[m] != p+1 {
				seen[m] = p + 1
				row[filled] = m
				filled++
			}
		}
		for ; filled < stride; filled++ {
			row[filled] = -1
		}
	}
	return rg, nil
}
