package health

import (
	"testing"

	"go.uber.org/goleak"
)

// Every checker goroutine and probe connection must be gone when the tests end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
