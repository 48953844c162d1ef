// Package fault holds Switchyard's resilience suites, as tests: the fault-injection suite
// (real simulator and router processes killed, stopped, flapped and slowed under steady
// load) and the bad-input suite (malformed, oversized, slow and smuggling-shaped requests
// against a running router). It has no API; `go test ./bench/fault/` runs both.
package fault
