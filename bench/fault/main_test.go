package fault

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// binDir holds the binaries the suites build once per test binary run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "switchyard-fault-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	goleak.VerifyTestMain(m,
		// fasthttp's process-wide dialer cache (the in-process simulators' KV claims dial
		// through it) keeps one cleaner goroutine for the life of the process.
		goleak.IgnoreTopFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"),
		// fasthttp's worker-pool cleaner outlives Server.Shutdown by up to 10 s, then ends.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		// The in-process simulators' fasthttp.Client (P/D KV claims) cleans its host
		// clients and their idle connections on timers that end a few seconds after use.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*Client).mCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.Cleanup(func(code int) {
			os.RemoveAll(dir)
			os.Exit(code)
		}))
}

var (
	buildOnce sync.Once
	buildErr  error
)

// binaries builds bin/switchyard and bin/vllm-router from this checkout (once), so the
// suites test the code they sit next to, not whatever `make build` left in bin/.
func binaries(t *testing.T) (switchyard, vllmRouter string) {
	t.Helper()
	switchyard, vllmRouter = filepath.Join(binDir, "switchyard"), filepath.Join(binDir, "vllm-router")
	buildOnce.Do(func() {
		for _, b := range []struct{ out, pkg string }{
			{switchyard, "github.com/switchyard/switchyard/cmd/switchyard"},
			{vllmRouter, "github.com/switchyard/switchyard/cmd/vllm-router"},
		} {
			out, err := exec.Command(goTool(), "build", "-o", b.out, b.pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return switchyard, vllmRouter
}

// goTool is the go command: the one on PATH, else the one of the toolchain running the test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
