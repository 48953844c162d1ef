// Package policy holds the routing decisions: given what a request offers (a session key,
// prompt text) and the workers that could serve it, pick one. Policies are pure: no I/O,
// no clocks they do not own, nothing retained from the request. They import no project
// package, so they can be read, tested and benchmarked alone.
package policy

import "errors"

// ErrNoEndpoint means no worker can take the request: none is configured, or every one
// is unhealthy, open-circuited or full. The router answers 503.
var ErrNoEndpoint = errors.New("policy: no available worker")

// Endpoint is what a policy may know of a worker. The router's Backend implements it with
// atomics; a policy calls these methods freely on the hot path.
type Endpoint interface {
	// ID is the worker's stable name, "http://host:port" or "http://host:port@rank" for a
	// data-parallel rank. It is the ring member name for hashing policies.
	ID() string
	// Available reports whether the worker may take a request now: healthy, circuit not
	// open, and under its in-flight bound.
	Available() bool
	// InFlight is the number of requests dispatched to the worker whose response, stream
	// included, has not ended.
	InFlight() int64
}

// Input says which request facts a policy reads, so the router computes only those.
type Input uint8

const (
	// InputKey asks for Request.Key (the consistent-hash key chain).
	InputKey Input = 1 << iota
	// InputSessionID asks for Request.SessionID (the sticky-session key chain).
	InputSessionID
	// InputText asks for Request.Text (the prompt text, for prefix-aware routing).
	InputText
)

// Request is what a policy may read. Byte slices alias request memory: valid only during
// Pick, never retained (copy what must outlive the call).
type Request struct {
	// Key is the first non-empty of the X-Session-ID, X-User-ID, X-Tenant-ID,
	// X-Correlation-ID, X-Request-ID, X-Trace-ID client headers, else the body's
	// session_params.session_id, user, session_id, user_id. Nil when there is none.
	Key []byte
	// SessionID is the first non-empty of X-Session-ID, X-User-ID, X-Tenant-ID,
	// X-Correlation-ID, else the same body fields as Key. Nil when there is none.
	SessionID []byte
	// Text is the prompt text (completions' prompt, chat messages' contents), or nil.
	Text []byte
	// Avoid lists workers that already failed this request; a policy treats them as
	// unavailable. Usually empty.
	Avoid []Endpoint
}

// Usable reports whether ep may be picked for r: available and not avoided.
func (r *Request) Usable(ep Endpoint) bool {
	if !ep.Available() {
		return false
	}
	for _, a := range r.Avoid {
		if a == ep {
			return false
		}
	}
	return true
}

// Policy picks one endpoint for a request. It must be safe for concurrent use, do no I/O,
// retain nothing from r or eps, and return ErrNoEndpoint when no endpoint is usable.
// The result is an index into eps.
type Policy interface {
	Pick(r *Request, eps []Endpoint) (int, error)
}

// InputUser is implemented by policies that read request facts beyond the endpoint list.
// A policy that does not implement it gets a zero Request.
type InputUser interface {
	Inputs() Input
}

// MembershipAware policies precompute from the configured member set (the hash ring).
// SetMembers is called off the hot path, before the first Pick with that set and whenever
// the configured workers change; never on health flaps.
type MembershipAware interface {
	SetMembers(eps []Endpoint)
}

// SessionFinisher is implemented by policies that hold per-session state, so the router's
// /finish_session can release it. Finishing an unknown session is a no-op.
type SessionFinisher interface {
	FinishSession(id []byte)
}

// Rand is the randomness a policy uses; tests inject a fixed sequence.
// IntN returns a value in [0, n); n > 0.
type Rand interface {
	IntN(n int) int
}
