//go:build !unix

package router

import "github.com/valyala/fasthttp"

// clientGone cannot probe the connection on this platform; decode always runs.
func clientGone(*fasthttp.RequestCtx) bool { return false }
