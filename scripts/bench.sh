#!/usr/bin/env bash
# Runs every benchmark and prints one table: each pattern beside the raw library doing the
# same work, as a ratio from this one run. `--quick` makes it CI-sized (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
cargo bench --quiet -p micro-benches --bench patterns -- "$@"
