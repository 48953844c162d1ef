//go:build unix

package router

import (
	"errors"
	"net"
	"syscall"

	"github.com/valyala/fasthttp"
)

// clientGone reports whether the client has closed its connection, without consuming
// anything from it: a non-blocking MSG_PEEK reads 0 bytes only at end of stream. Used
// between P/D legs, where no write would otherwise reveal a departed client.
func clientGone(ctx *fasthttp.RequestCtx) bool {
	tc, ok := ctx.Conn().(*net.TCPConn)
	if !ok {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	var buf [1]byte
	_ = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = (n == 0 && err == nil) || errors.Is(err, syscall.ECONNRESET)
		return true // never wait: this is a probe
	})
	return gone
}
