//go:build !linux

package router

// streamRequestsSent: without the relay there is no separate streamed path to count.
func streamRequestsSent(*Server) int64 { return -1 }
