#!/usr/bin/env bash
# Runs every benchmark and prints one table: each pattern beside the raw library doing the
# same work, as a ratio from this one run. `--quick` makes it CI-sized (about a minute);
# module names (api, grpc, health, broker-nats, broker-memory, tunnel, proxy, tls, trace, sharding, transport,
# retry; a prefix such as
# `broker` picks both brokers) run only those. Progress goes to stderr, the table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
cargo bench --quiet -p micro-benches --bench patterns -- "$@"
