# Switchyard. `make demo` runs the main job; `make test` is what CI runs.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.PHONY: build test test-race test-allocs e2e slurm-e2e demo bench soak lint fuzz-short peerbench clean

build:
	$(GO) build -o $(BIN)/switchyard ./cmd/switchyard
	$(GO) build -o $(BIN)/vllm-router ./cmd/vllm-router

# The whole suite: race-enabled unit and socket tests (fault injection and bad input
# included), the allocation proofs (which the race detector would distort), and the
# end-to-end tests: the OpenAI Node SDK through the router, and a real SLURM cluster
# (brought up on this machine, needs root) running rendered jobs.
test: lint test-race test-allocs e2e slurm-e2e

test-race:
	$(GO) test -race -count=1 $(PKGS)

test-allocs:
	$(GO) test -count=1 -run 'Alloc' $(PKGS)

e2e: build
	bash bench/e2e/run.sh

slurm-e2e: build
	SWITCHYARD=$(abspath $(BIN))/switchyard bash deploy/slurm/run-test.sh

demo: build
	$(BIN)/switchyard demo

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./policy/ ./router/ ./pd/

# Ten minutes of constant load through a router process; reports its RSS and goroutines
# at start and end (not part of make test).
soak:
	SOAK_DURATION=$${SOAK_DURATION:-10m} $(GO) test -run '^$$' -bench Soak -benchtime 1x -timeout 30m ./bench/soak

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

fuzz-short:
	$(GO) test -run '^$$' -fuzz . -fuzztime 20s ./pd/

clean:
	rm -rf $(BIN)

# The router beside nginx, HAProxy and Go's httputil.ReverseProxy on this machine, same load
# and backends (bench/peer/RESULTS.md). Pinned table: `PB_PIN=1 PB_RUNS=5 make peerbench`;
# knobs (PB_MODES, PB_TARGETS, PB_DURATION ...) are listed at the top of bench/peer/run.sh.
# PEERBENCH_ROUTER_ARGS adds router flags, e.g. --disable-retries to price a feature.
PEERBENCH_ROUTER_ARGS ?=
peerbench: build
	ROUTER_NAME=router ROUTER_CMD='$(abspath $(BIN))/vllm-router --host 127.0.0.1 --port {PORT} --worker-urls {BACKEND_URLS} --policy {POLICY_NAME} --prometheus-port 0 $(PEERBENCH_ROUTER_ARGS)' \
		bash bench/peer/run.sh
