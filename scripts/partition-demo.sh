#!/usr/bin/env bash
# Watch a partition happen: three test hosts (network namespaces) with a NATS node each,
# round-robin servers on hosts 1 and 2, a client on host 3; host 1 is cut off and joins
# again. Every line the processes print comes with its time, and the timeline's facts
# close the run. Explained in notes/partition.md. Needs root (ip netns) and nats-server;
# leaves nothing behind (namespaces and processes go with the run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

if [ "$(id -u)" != 0 ]; then
  echo "scripts/partition-demo.sh needs root: it creates network namespaces as test hosts" >&2
  exit 1
fi
for tool in ip nats-server setpriv; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "scripts/partition-demo.sh needs $tool (Debian: apt-get install iproute2 nats-server util-linux)" >&2
    exit 1
  }
done

cargo build --quiet --example round-robin
exec cargo test --quiet --test partition -- --exact discovery_and_round_robin_survive_a_cut_host --nocapture
