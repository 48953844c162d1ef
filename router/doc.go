// Package router is Switchyard's HTTP core: a fasthttp server that takes OpenAI-compatible
// requests and proxies each to one vLLM worker chosen by a policy, or, in P/D mode, to a
// prefill worker and then a decode worker.
//
// # A request's path, file by file
//
//  1. server.go — New builds everything from a validated Config (config.go, parsed from
//     vllm-router's flags in flags.go); Start binds the client port at once (data routes
//     answer 503 until a worker is healthy) and the Prometheus port.
//  2. handler.go — handle is the fasthttp entry point. It takes the request id from the
//     first configured header or makes one (reqid.go), answers control routes itself
//     (admin.go: /health, /workers, /finish_session, fan-out /pause …), checks the API key,
//     and hands everything else to proxy. fillPolicyRequest computes only the request facts
//     the policies read: the session key from headers (or, failing those, the body), the
//     prompt text for cache_aware.
//  3. proxy.go — proxy takes a slot from the in-flight cap (limiter.go; 429 when its queue
//     is full), strips hop-by-hop headers, then loops: pick (the policy over the pool's
//     snapshot, pool.go; the worker's circuit breaker admits), forward. Only failures that
//     prove the worker did not process the request are retried, elsewhere, with backoff.
//  4. forward sends ctx.Request itself — the body byte for byte — through the worker's one
//     HostClient (backend.go). A request body over 1 MiB is not held: the router reads
//     its first 64 KiB for what it scans and streams the rest from the client to the
//     worker (body.go), so such a request is retried elsewhere only if nothing was sent.
//     The answer to a "stream":false request with a Content-Length up to 1 MiB is read
//     into the client's response (upstream.go's roundTrip decides from the header); a
//     larger or unknown-length one streams through fasthttp (writeStream, or the
//     exchange's Read for a fixed length).
//  5. relay_linux.go — a request that asked for a stream ("stream":true, generate) goes
//     out on one of the worker's stream connections (upstream_linux.go) and, once its
//     head is read, the handler hijacks the client connection and hands both sockets to
//     the relay: one goroutine serving an epoll set, so a quiet stream holds no
//     goroutine or buffer. It undoes the worker's chunking and chunks again
//     (chunked.go), writing each piece as it arrives; a client that stops reading gets
//     backpressure, one that leaves (EPOLLRDHUP) closes the worker stream at once, which
//     tells vLLM to stop generating. At the end the client connection returns to
//     fasthttp (Server.ServeConn), the worker connection to its pool. An HTTP/1.0 client
//     gets the bare payload and a closed connection at the end. Builds for other
//     systems take fasthttp's goroutine-per-stream path instead. Either way the
//     worker's in-flight count lasts until the body ended.
//  6. Timeouts: backend.go's timeoutConn bounds connect, the wait for the first response
//     byte, and the idle gap between body chunks; --request-timeout-secs, when set, caps
//     the whole request. The relay enforces the same two on a sweep every tenth of the
//     shortest. fasthttp's ReadTimeout is never used on worker connections: it would cut
//     a long stream.
//  7. errors.go — statusFor is the one mapping from errors to HTTP statuses; every error
//     answer is a JSON body. Mid-stream failures become an in-band SSE error event and
//     "data: [DONE]".
//  8. pdproxy.go — in P/D mode chat, completions, generate and responses run prefill (the
//     pd package rewrites the body) and then stream decode like any other response.
//  9. metrics.go — per-request series are resolved up front (atomic adds only on the hot
//     path); per-worker gauges are read from the pool when Prometheus scrapes.
//
// Health (package health) runs beside this: active checks push verdicts into the pool
// through health.StatusSetter; breakers record each request's outcome.
package router
