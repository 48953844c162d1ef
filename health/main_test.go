package health

import (
	"testing"

	"go.uber.org/goleak"
)

// Every checker goroutine and probe connection must be gone when the tests end. The one
// exception is fasthttp's process-wide default dialer, whose address-cache cleaner lives
// for the whole process by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"))
}
