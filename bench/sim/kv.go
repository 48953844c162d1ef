package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The simulated NIXL side channel. A prefill leg (kv_transfer_params.do_remote_decode)
// leaves its prompt blocks under a lease and advertises them; the decode leg claims them
// from the named prefill worker over HTTP (POST /sim/kv/claim on remote_host:remote_port),
// standing in for NIXL's handshake and block read. A claim succeeds only if that worker
// really issued those blocks for that request, for the same prompt, and the lease is live;
// the claim releases the lease. An unclaimed lease expires and is counted, which is how a
// test proves that a router never strands prefilled KV.

const kvClaimPath = "/sim/kv/claim"

// kvTransferParams is a request's kv_transfer_params in the NixlConnector layout: what a
// proxy sends a prefill leg ({"do_remote_decode":true, remote_*: null}) or a decode leg
// (what the prefill leg returned). Pointer fields distinguish null; block ids stay raw
// because newer vLLM sends one list per KV cache group, which this simulator treats as
// params it cannot use (a miss), not as a bad request.
type kvTransferParams struct {
	DoRemoteDecode  bool            `json:"do_remote_decode"`
	DoRemotePrefill bool            `json:"do_remote_prefill"`
	RemoteEngineID  *string         `json:"remote_engine_id"`
	RemoteBlockIDs  json.RawMessage `json:"remote_block_ids"`
	RemoteHost      *string         `json:"remote_host"`
	RemotePort      *int            `json:"remote_port"`
	RemoteRequestID *string         `json:"remote_request_id"`
}

// kvTransferOut is what a prefill leg returns as top-level kv_transfer_params: the
// NixlConnector's request_finished() dict (the layout vLLM 0.26's scheduler returns).
type kvTransferOut struct {
	DoRemotePrefill bool   `json:"do_remote_prefill"`
	DoRemoteDecode  bool   `json:"do_remote_decode"`
	RemoteBlockIDs  []int  `json:"remote_block_ids"`
	RemoteEngineID  string `json:"remote_engine_id"`
	RemoteRequestID string `json:"remote_request_id"`
	RemoteHost      string `json:"remote_host"`
	RemotePort      int    `json:"remote_port"`
	TPSize          int    `json:"tp_size"`
}

// kvClaim is the side-channel request body.
type kvClaim struct {
	RemoteEngineID  string `json:"remote_engine_id"`
	RemoteRequestID string `json:"remote_request_id"`
	RemoteBlockIDs  []int  `json:"remote_block_ids"`
	// PromptHash identifies the decode leg's prompt tokens (hex), so a decode leg with a
	// different prompt than its prefill leg fails the claim: real vLLM would read the
	// wrong KV silently, a test wants to know.
	PromptHash string `json:"prompt_hash"`
}

// kvClaimReply is the side-channel response body.
type kvClaimReply struct {
	Claimed bool   `json:"claimed"`
	Reason  string `json:"reason,omitempty"`
}

// Claim refusal reasons, also the "reason" label of vllm:sim_kv_transfer_misses_total.
const (
	missInvalid     = "invalid_params"
	missUnreachable = "unreachable"
	missRefused     = "refused"
)

var errClaimRefused = errors.New("kv claim refused")

type kvLease struct {
	engine     *engine
	requestID  string
	blockIDs   []int
	promptHash uint64
	timer      *time.Timer
}

// leaseTable holds this worker's live prefill leases.
type leaseTable struct {
	engineID string
	onExpire func(*engine)

	mu        sync.Mutex
	leases    map[string]*kvLease
	nextBlock int
	closed    bool
}

func newLeaseTable(onExpire func(*engine)) *leaseTable {
	return &leaseTable{onExpire: onExpire, leases: make(map[string]*kvLease)}
}

// setEngineID names the engine whose leases this table holds (known once serving).
func (t *leaseTable) setEngineID(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.engineID = id
}

// issue leases nblocks fresh block ids of engine e to requestID for d.
func (t *leaseTable) issue(e *engine, requestID string, nblocks int, promptHash uint64, d time.Duration) []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]int, nblocks)
	for i := range ids {
		ids[i] = t.nextBlock
		t.nextBlock++
	}
	l := &kvLease{engine: e, requestID: requestID, blockIDs: ids, promptHash: promptHash}
	if t.closed {
		return ids
	}
	l.timer = time.AfterFunc(d, func() { t.expire(l) })
	t.leases[requestID] = l
	return ids
}

func (t *leaseTable) expire(l *kvLease) {
	t.mu.Lock()
	cur, ok := t.leases[l.requestID]
	if ok && cur == l {
		delete(t.leases, l.requestID)
	}
	t.mu.Unlock()
	if ok && cur == l {
		t.onExpire(l.engine)
	}
}

// claim releases the lease named by c if it matches, returning its engine; otherwise it
// says why not.
func (t *leaseTable) claim(c kvClaim) (*engine, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.RemoteEngineID != t.engineID {
		return nil, "unknown engine id " + strconv.Quote(c.RemoteEngineID)
	}
	l, ok := t.leases[c.RemoteRequestID]
	if !ok {
		return nil, "no live lease for request " + strconv.Quote(c.RemoteRequestID)
	}
	if !equalInts(l.blockIDs, c.RemoteBlockIDs) {
		return nil, "block ids do not match the lease"
	}
	if strconv.FormatUint(l.promptHash, 16) != c.PromptHash {
		return nil, "prompt differs from the prefill leg's prompt"
	}
	l.timer.Stop()
	delete(t.leases, c.RemoteRequestID)
	return l.engine, ""
}

// active counts live leases and the blocks they pin on engine e (all engines if nil).
func (t *leaseTable) active(e *engine) (leases, blocks int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.leases {
		if e == nil || l.engine == e {
			leases++
			blocks += len(l.blockIDs)
		}
	}
	return leases, blocks
}

// close stops every timer; leases pending at shutdown are neither claimed nor expired.
func (t *leaseTable) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for id, l := range t.leases {
		l.timer.Stop()
		delete(t.leases, id)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// decodeLegClaim validates kv_transfer_params of a decode leg the way vLLM's NIXL
// scheduler does (all remote_* fields present) and claims the blocks. It returns "" on
// success or the miss reason.
func (s *Server) decodeLegClaim(p *kvTransferParams, promptHash uint64) (string, error) {
	if p.RemoteEngineID == nil || p.RemoteRequestID == nil || p.RemoteHost == nil ||
		p.RemotePort == nil || len(p.RemoteBlockIDs) == 0 {
		return missInvalid, errors.New("incomplete kv_transfer_params")
	}
	var blockIDs []int
	if err := json.Unmarshal(p.RemoteBlockIDs, &blockIDs); err != nil || blockIDs == nil {
		return missInvalid, fmt.Errorf("remote_block_ids is not a list of ints: %s", p.RemoteBlockIDs)
	}
	body, err := json.Marshal(kvClaim{
		RemoteEngineID:  *p.RemoteEngineID,
		RemoteRequestID: *p.RemoteRequestID,
		RemoteBlockIDs:  blockIDs,
		PromptHash:      strconv.FormatUint(promptHash, 16),
	})
	if err != nil {
		return missInvalid, fmt.Errorf("encoding claim: %w", err)
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + net.JoinHostPort(*p.RemoteHost, strconv.Itoa(*p.RemotePort)) + kvClaimPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBody(body)
	if err := s.claimClient.DoTimeout(req, resp, s.cfg.KVClaimTimeout); err != nil {
		return missUnreachable, fmt.Errorf("claiming kv from %s:%d: %w", *p.RemoteHost, *p.RemotePort, err)
	}
	var reply kvClaimReply
	if err := json.Unmarshal(resp.Body(), &reply); err != nil || !reply.Claimed {
		return missRefused, fmt.Errorf("%w: status %d: %s", errClaimRefused, resp.StatusCode(), reply.Reason)
	}
	return "", nil
}

// serveKVClaim is the side channel's handler.
func (s *Server) serveKVClaim(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		writeDetail(ctx, fasthttp.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	var c kvClaim
	if err := json.Unmarshal(ctx.PostBody(), &c); err != nil {
		writeJSON(ctx, fasthttp.StatusBadRequest, kvClaimReply{Reason: "bad claim body: " + err.Error()})
		return
	}
	e, reason := s.leases.claim(c)
	if e == nil {
		writeJSON(ctx, fasthttp.StatusConflict, kvClaimReply{Reason: reason})
		return
	}
	s.stats.leasesClaimed.Add(1)
	s.updateKVUsage(e)
	writeJSON(ctx, fasthttp.StatusOK, kvClaimReply{Claimed: true})
}
