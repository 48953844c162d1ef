//go:build !linux

package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// The relay (relay_linux.go) needs epoll; elsewhere streams take fasthttp's
// goroutine-per-stream path.
type relay struct{}

type streamConns struct{}

func newRelay(*Server) *relay                           { return nil }
func (*relay) start()                                   {}
func (*relay) beginDrain()                              {}
func (*relay) drain(<-chan struct{})                    {}
func (*relay) collectors() []prometheus.Collector       { return nil }
func newStreamConns(string, time.Duration) *streamConns { return &streamConns{} }
func (*streamConns) closeIdle()                         {}
func (s *Server) relayable(*fasthttp.RequestCtx) bool   { return false }
func (s *Server) forwardRelay(*fasthttp.RequestCtx, *exchange, *Backend, *fasthttp.Request, bool) error {
	panic("relay: not on this platform")
}
