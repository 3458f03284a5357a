#!/usr/bin/env bash
# How long a learner's first `cargo build --example <topic>` takes, beside a bare crate that
# compiles exactly the crates the topic's build needs and nothing of ours, in one run:
# alternating, in empty target directories, with the crates already downloaded, the same
# lockfile and the same profile. Only the ratio means anything (the machine's speed drifts).
#
#   scripts/first-run.sh [topic] [rounds]      e.g. scripts/first-run.sh metadata 2
#
# The bare crate's dependencies are read off `cargo metadata`: the registry crates that the
# topic's package (with its dev-dependencies, which cargo builds for its example) and the
# crates of ours under it name directly, with the features the resolver gave them, so the
# bare build does the same work minus the repository's own code. Nothing is left behind
# outside target/first-run/.
set -euo pipefail
cd "$(dirname "$0")/.."
topic=${1:-metadata}
rounds=${2:-2}
work=$(pwd)/target/first-run
rm -rf "$work"
mkdir -p "$work"

# A clean checkout of what is committed, as a learner's fresh clone would be.
git worktree add --quiet --detach "$work/clone" HEAD
trap 'git worktree remove --force "$work/clone" >/dev/null 2>&1 || true' EXIT
cargo fetch --quiet --manifest-path "$work/clone/Cargo.toml"

bare="$work/bare"
mkdir -p "$bare/src"
{
  echo '[package]'
  echo 'name = "bare"'
  echo 'version = "0.1.0"'
  echo 'edition = "2024"'
  echo 'publish = false'
  # A workspace of its own: it sits under target/, inside this repository's workspace.
  echo '[workspace]'
  echo '[dependencies]'
  python3 - "$topic" <<'EOF'
import json, subprocess, sys
topic = sys.argv[1]
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"]))
packages = {p["id"]: p for p in meta["packages"]}
local = {p["id"] for p in meta["packages"] if p["source"] is None}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
start = next(p["id"] for p in meta["packages"] if p["name"] == topic and p["source"] is None)
# Walk our own crates reachable from the topic by normal and build edges (and the topic's
# own dev edges: its example program is built with them); collect the registry crates they
# name directly, with the features the resolver gave them.
seen, todo, wanted = set(), [start], {}
while todo:
    pid = todo.pop()
    if pid in seen:
        continue
    seen.add(pid)
    for dep in nodes[pid]["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if not kinds & ({None, "build", "dev"} if pid == start else {None, "build"}):
            continue
        if dep["pkg"] in local:
            todo.append(dep["pkg"])
        else:
            wanted[dep["pkg"]] = nodes[dep["pkg"]]["features"]
for pid, features in sorted(wanted.items(), key=lambda kv: packages[kv[0]]["name"]):
    p = packages[pid]
    feats = ", ".join(f'"{f}"' for f in features if f != "default")
    default = "true" if "default" in features else "false"
    print(f'{p["name"]} = {{ version = "={p["version"]}", default-features = {default}, features = [{feats}] }}')
EOF
  # The same profile as the workspace.
  sed -n '/^\[profile/,$p' Cargo.toml
} >"$bare/Cargo.toml"
echo 'fn main() {}' >"$bare/src/main.rs"
cp Cargo.lock "$bare/Cargo.lock"

# Prints "<wall seconds> <CPU seconds>" of one cold build. CPU time (user + system) moves
# far less than the wall clock when other work shares the machine, so both are reported.
build() { # dir, target, args...
  local dir=$1 target=$2
  shift 2
  rm -rf "$target"
  (cd "$dir" && CARGO_TARGET_DIR="$target" /usr/bin/time -f '%e %U %S' -o "$work/time.txt" \
    cargo build --quiet --offline "$@") >&2 ||
    { echo "the build in $dir failed" >&2; exit 1; }
  awk '{ printf "%.1f %.1f\n", $1, $2 + $3 }' "$work/time.txt"
}
command -v /usr/bin/time >/dev/null || { echo "first-run.sh needs GNU time (Debian: apt-get install time)" >&2; exit 1; }

echo "round | ours: cargo build --example $topic, wall s (CPU s) | bare crate, wall s (CPU s) | ratio wall | ratio CPU | load average"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    ours=$(build "$work/clone" "$work/t-ours" --example "$topic") || exit 1
    bare_s=$(build "$bare" "$work/t-bare") || exit 1
  else
    bare_s=$(build "$bare" "$work/t-bare") || exit 1
    ours=$(build "$work/clone" "$work/t-ours" --example "$topic") || exit 1
  fi
  read -r ours_wall ours_cpu <<<"$ours"
  read -r bare_wall bare_cpu <<<"$bare_s"
  printf '%s | %s (%s) | %s (%s) | %.2f | %.2f | %s\n' "$round" "$ours_wall" "$ours_cpu" \
    "$bare_wall" "$bare_cpu" "$(echo "$ours_wall / $bare_wall" | bc -l)" \
    "$(echo "$ours_cpu / $bare_cpu" | bc -l)" "$(cut -d' ' -f1-3 /proc/loadavg)"
done
rm -rf "$work/t-ours" "$work/t-bare"

# Then every other topic in the article's reading order, one after another in the clone's
# target directory as a learner would build them: each build's time and the crates it
# compiled. A crate compiled twice (the same name and version) means a feature set changed
# between topics, which the workspace's shared features exist to prevent.
if [ -n "${SEQUENCE:-}" ]; then
  order=$(grep -o '](\(zh/\)\?[a-z-]*\.md)' notes/README.md | sed 's/](//; s/\.md)//' | awk '!seen[$0]++')
  target="$work/t-sequence"
  rm -rf "$target"
  echo
  echo "topic | seconds | crates compiled"
  for topic in $order; do
    [ -f "$work/clone/examples/$topic/Cargo.toml" ] || continue
    start=$(date +%s.%N)
    log=$(cd "$work/clone" && CARGO_TARGET_DIR="$target" cargo build --offline --example "$topic" 2>&1)
    end=$(date +%s.%N)
    echo "$log" | grep '^ *Compiling ' | sed 's/^ *Compiling //; s/ (.*//' >>"$work/compiled.txt"
    printf '%s | %.1f | %s\n' "$topic" "$(echo "$end - $start" | bc)" "$(echo "$log" | grep -c '^ *Compiling ' || true)"
  done
  twice=$(sort "$work/compiled.txt" | uniq -d)
  echo "compiled twice: ${twice:-none}"
  rm -rf "$target"
fi
