#!/usr/bin/env bash
# End-to-end test: two simulated vLLM workers behind the router (consistent_hash), driven
# by the official OpenAI Node SDK. Needs `make build` (bin/switchyard, bin/vllm-router)
# and Node >= 20. Exits non-zero on any failure; always stops what it started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN:-$root/bin}
ready_timeout=${E2E_READY_TIMEOUT:-30} # seconds

for b in switchyard vllm-router; do
  if [[ ! -x $bin/$b ]]; then
    echo "e2e: $bin/$b not found; run 'make build' first" >&2
    exit 1
  fi
done
command -v node >/dev/null || { echo "e2e: node not found" >&2; exit 1; }

cd "$here"
if [[ ! -f node_modules/openai/package.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

logs=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for f in "$logs"/*.log; do echo "--- $f"; tail -n 30 "$f"; done >&2
  fi
  rm -rf "$logs"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port asks the kernel for an unused loopback port.
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# wait_ready polls URL until it answers 200, for at most ready_timeout seconds.
wait_ready() {
  local url=$1 deadline=$((SECONDS + ready_timeout))
  until node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' "$url"; do
    if ((SECONDS >= deadline)); then
      echo "e2e: $url not ready after ${ready_timeout}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

p1=$(free_port); p2=$(free_port); pr=$(free_port); pm=$(free_port)
model=e2e/sim-model
"$bin/switchyard" sim --port "$p1" --host 127.0.0.1 --model "$model" --name sim-1 --ttft 5ms --itl 2ms >"$logs/sim-1.log" 2>&1 &
pids+=($!)
"$bin/switchyard" sim --port "$p2" --host 127.0.0.1 --model "$model" --name sim-2 --ttft 5ms --itl 2ms >"$logs/sim-2.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$p1/health"
wait_ready "http://127.0.0.1:$p2/health"

"$bin/vllm-router" --host 127.0.0.1 --port "$pr" --prometheus-port "$pm" --policy consistent_hash \
  --worker-urls "http://127.0.0.1:$p1" "http://127.0.0.1:$p2" >"$logs/router.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$pr/v1/models"

OPENAI_BASE_URL="http://127.0.0.1:$pr/v1" OPENAI_API_KEY=sk-e2e node --test openai.test.mjs
