#!/usr/bin/env bash
# The exercises: each topic's key lines, left for you to write in exercises/<topic>/.
#
#   scripts/exercise.sh                 the exercises in reading order, and which are left
#   scripts/exercise.sh <topic>         check yours: run it, and compare with the fixed run
#   scripts/exercise.sh <topic> hint    a hint
#
# A check builds exercises/<topic>/ (package `exercise-<topic>`), runs it as the example
# runs (on the memory backend where the topic has one) and compares what it printed with
# tests/golden/<topic>.txt, what the example itself prints. Equal is solved. The solution is
# the example: examples/<topic>/, the lines between `exercise begins` and `exercise ends`.
set -euo pipefail
cd "$(dirname "$0")/.."

list=exercises/exercises.txt
done_dir=target/exercises/solved

topics() { grep -v '^#' "$list" | grep -v $'^\t' | cut -f1; }

left() {
  local topic solved=0 total=0
  echo "exercises, in the article's reading order (solved: checked here and passed):"
  for topic in $(topics); do
    total=$((total + 1))
    if [ -f "$done_dir/$topic" ]; then
      solved=$((solved + 1))
      printf '  [x] %s\n' "$topic"
    else
      printf '  [ ] %s\n' "$topic"
      grep -A9 "^$topic"$'\t' "$list" | tail -n +2 | sed -n $'/^\t/!q;p' | sed 's/^\t/        /'
    fi
  done
  echo "$solved of $total solved. Check one with: scripts/exercise.sh <topic>"
}

if [ $# -eq 0 ] || [ "$1" = list ]; then
  left
  exit 0
fi

topic=$1
if ! topics | grep -qx "$topic"; then
  echo "no exercise named \"$topic\"; the exercises are: $(topics | tr '\n' ' ')" >&2
  exit 2
fi

if [ "${2:-}" = hint ]; then
  cat "exercises/$topic/hint.txt"
  exit 0
elif [ $# -gt 1 ]; then
  echo "usage: scripts/exercise.sh [<topic> [hint]]" >&2
  exit 2
fi

backend=$(grep "^$topic"$'\t' "$list" | cut -f2)
args=()
[ "$backend" = memory ] && args=(--backend memory)

echo "== building exercises/$topic"
# The same packages as `cargo run --example <topic>` resolves features over (the workspace
# but its benches), so the dependencies already built for the examples are used as they are.
if ! cargo build --quiet --workspace --exclude micro-benches --example "exercise-$topic" \
  --features "exercise-$topic/exercise"; then
  echo "== it does not build yet: fix the errors above" >&2
  exit 1
fi
echo "== running it: exercise-$topic ${args[*]}"
mkdir -p target/exercises
actual=target/exercises/$topic.txt
status=0
# The same bound the tests give an example: a run that hangs is a failure too.
timeout 60 "target/debug/examples/exercise-$topic" "${args[@]}" >"$actual" 2>"target/exercises/$topic.stderr" || status=$?
if [ "$status" = 0 ] && cmp -s "$actual" "tests/golden/$topic.txt"; then
  mkdir -p "$done_dir" && touch "$done_dir/$topic"
  echo "== solved: it prints what the example prints"
  echo
  left
  exit 0
fi
rm -f "$done_dir/$topic"
echo "== not yet. Your run (+) against the fixed one (-):"
diff -u --label "fixed (tests/golden/$topic.txt)" --label "yours" "tests/golden/$topic.txt" "$actual" || true
if [ "$status" != 0 ]; then
  echo "== and it exited with status $status; the end of its stderr (all of it in target/exercises/$topic.stderr):"
  tail -n 5 "target/exercises/$topic.stderr"
fi
echo "== a hint: scripts/exercise.sh $topic hint"
exit 1
