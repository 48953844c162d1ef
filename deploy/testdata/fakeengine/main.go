// Command fakeengine stands in for `vllm serve` in the launcher's tests: it takes
// vLLM's argv ("serve MODEL --port N ..."), ignores what it does not model, serves
// /health and a tiny /v1/completions that names the port that answered, and exits on
// SIGTERM. Knobs, by environment:
//
//	FAKE_ENGINE_CHILD=1          start a child that ignores SIGTERM and print "child pid N"
//	FAKE_ENGINE_EXIT_AFTER=200ms exit with status 3 that long after starting
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		signal.Ignore(syscall.SIGTERM)
		select {}
	}
	if len(os.Args) < 3 || os.Args[1] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: fakeengine serve MODEL [vllm flags]")
		os.Exit(2)
	}
	host, port, headless := "0.0.0.0", "8000", false
	for i := 3; i < len(os.Args); i++ {
		switch os.Args[i] {
		case "--host":
			host = os.Args[i+1]
		case "--port":
			port = os.Args[i+1]
		case "--headless":
			headless = true
		}
	}
	fmt.Printf("fake engine pid %d model %s cuda=%s side-channel=%s\n", os.Getpid(), os.Args[2],
		os.Getenv("CUDA_VISIBLE_DEVICES"), os.Getenv("VLLM_NIXL_SIDE_CHANNEL_PORT"))
	if os.Getenv("FAKE_ENGINE_CHILD") == "1" {
		child := exec.Command(os.Args[0], "child")
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		fmt.Printf("child pid %d\n", child.Process.Pid)
	}
	if d, err := time.ParseDuration(os.Getenv("FAKE_ENGINE_EXIT_AFTER")); err == nil {
		time.AfterFunc(d, func() {
			fmt.Fprintln(os.Stderr, "fake engine: exiting as told")
			os.Exit(3)
		})
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if headless {
		<-ctx.Done()
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		resp := map[string]any{"served_by": port, "choices": []any{map[string]any{"text": "ok"}}}
		if kv, ok := body["kv_transfer_params"].(map[string]any); ok {
			if kv["do_remote_decode"] == true {
				resp["kv_transfer_params"] = map[string]any{"do_remote_prefill": true, "remote_port": port}
			} else {
				resp["prefilled_by"] = kv["remote_port"]
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	fmt.Println("listening on " + ln.Addr().String() + " port " + strconv.Quote(port))
	_ = srv.Serve(ln)
}
