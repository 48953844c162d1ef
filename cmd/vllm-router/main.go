// Command vllm-router is Switchyard as a drop-in for vllm-router: the same flags, routes
// and metric names, so existing command lines (prime-rl's among them) run unchanged.
package main

import (
	"os"

	"github.com/switchyard/switchyard/router"
)

func main() { os.Exit(router.Main(os.Args[1:], os.Stdout, os.Stderr)) }
