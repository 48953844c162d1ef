// Command pprofrouter is vllm-router with net/http/pprof on a side port, for profiling
// the router under the peer benchmark's load without adding a listener to the router.
// It takes vllm-router's flags unchanged; PPROF_ADDR (default 127.0.0.1:6060) is the
// pprof listener. It lives in its own module (built through a go.work that profile.sh
// writes), so the main module's bench packages still never import the router.
package main

import (
	"context"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/switchyard/switchyard/router"
)

func main() {
	addr := os.Getenv("PPROF_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6060"
	}
	pprofSrv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := pprofSrv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, "pprofrouter: pprof listener:", err)
			os.Exit(1)
		}
	}()
	log, err := router.NewLogger("warn", "", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprofrouter:", err)
		os.Exit(2)
	}
	srv, err := router.StartArgs(os.Args[1:], log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprofrouter:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	<-ctx.Done()
	stop()
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	_ = pprofSrv.Close()
}
