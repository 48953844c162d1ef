package router

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a stream that never
// ended, a health checker that outlived its server, a worker connection left open.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp's process-wide DNS cache cleaner and its worker-pool cleaner, which
		// outlives Server.Shutdown by up to 10 s, then ends.
		goleak.IgnoreTopFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		// A HostClient's idle-connection cleaner wakes every MaxIdleConnDuration and ends
		// once Shutdown has closed the connections.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		// fasthttp's once-a-second date updater, started with the first server.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		// The tests' own HTTP client keeps idle connections to the router.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	)
}
