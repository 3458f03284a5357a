#!/usr/bin/env bash
# The sidecar with a real program of another language: a Python HTTP server registers
# through the sidecar, is called through it, calls the Greeter through it, and leaves.
#
#   scripts/sidecar-demo.sh [port]     (default 8090; needs python3 and curl)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-8090}"
sidecar="http://127.0.0.1:$port"

for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "sidecar-demo.sh needs $tool" >&2; exit 1; }
done

cargo build --quiet --example sidecar
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

target/debug/examples/sidecar serve --port "$port" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "$sidecar/registry/greeter" && break; sleep 0.1; done

python3 scripts/shouter.py --sidecar "$sidecar" &
shouter=$!
pids+=("$shouter")
for _ in $(seq 50); do
  [ "$(curl -s "$sidecar/registry/shouter")" != "[]" ] && break
  sleep 0.1
done

call() { echo "\$ curl -X $1 $sidecar$2 ${3:-}"; curl -s -X "$1" -H 'content-type: application/json' ${3:+-d "$3"} "$sidecar$2"; echo; }
call GET /registry/shouter
call POST /shouter/upper '{"text":"hello from curl"}'
call POST /shouter/greet '{"name":"python"}'
call POST /greeter/SayHello '{"name":"curl"}'
call POST /greeter/SayHello '{"name":'
call POST /broker/shouts '{"text":"published, not awaited"}'

kill -TERM "$shouter"
wait "$shouter" || true
call GET /registry/shouter
call POST /shouter/upper '{"text":"still there?"}'
