// Command launcher is `switchyard launch` for the SLURM script test: deploy.LaunchMain
// with a minimal in-process router that understands the planned vllm-router argv
// (round-robin over --worker-urls, or prefill then decode for --vllm-pd-disaggregation).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/switchyard/switchyard/deploy"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "launch" {
		os.Stderr.WriteString("usage: launcher launch CONFIG [flags]\n")
		os.Exit(2)
	}
	os.Exit(deploy.LaunchMain(context.Background(), os.Args[2:], os.Stdout, os.Stderr, startRouter))
}

func startRouter(ctx context.Context, argv []string) (func(context.Context) error, error) {
	var host, port string
	var workers, prefill, decode []string
	for i := 0; i < len(argv); i++ {
		switch argv[i] {
		case "--host":
			host = argv[i+1]
		case "--port":
			port = argv[i+1]
		case "--worker-urls":
			for i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "--") {
				i++
				workers = append(workers, argv[i])
			}
		case "--prefill":
			prefill = append(prefill, argv[i+1])
		case "--decode":
			decode = append(decode, argv[i+1])
		}
	}
	post := func(url string, body map[string]any) (map[string]any, error) {
		js, _ := json.Marshal(body)
		resp, err := http.Post(url+"/v1/completions", "application/json", bytes.NewReader(js))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var out map[string]any
		return out, json.NewDecoder(resp.Body).Decode(&out)
	}
	var n atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		i := int(n.Add(1))
		var out map[string]any
		var err error
		if len(prefill) > 0 {
			var p map[string]any
			pre := map[string]any{"prompt": body["prompt"], "kv_transfer_params": map[string]any{"do_remote_decode": true}}
			if p, err = post(prefill[i%len(prefill)], pre); err == nil {
				body["kv_transfer_params"] = p["kv_transfer_params"]
				out, err = post(decode[i%len(decode)], body)
			}
		} else {
			out, err = post(workers[i%len(workers)], body)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	return srv.Shutdown, nil
}
