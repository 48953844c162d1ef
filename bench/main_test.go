package bench

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: Run, the simulators, the
// routers and the progress printer must all be stopped when their owner returns.
// fasthttp's worker-pool cleaner (inside the simulators) sleeps out its idle period after
// the server stops before it exits; it holds nothing.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"))
}
