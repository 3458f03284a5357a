#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every example built, every test.
# It needs nats-server for the NATS half of the tests and installs Debian's package when it
# can; the tests start their own private servers, never a shared one.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

if ! command -v nats-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing nats-server (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "scripts/test.sh needs nats-server: install it (Debian/Ubuntu: sudo apt-get install nats-server)" >&2
    exit 1
  fi
fi
echo "== $(nats-server --version)"

# Headless Chromium for the web example's browser check (tests/web.rs), which fails, never
# skips, without it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "scripts/test.sh needs chromium for the browser check: install it (Debian: sudo apt-get install chromium)" >&2
    exit 1
  fi
fi
echo "== $(chromium --version 2>/dev/null || chromium-browser --version)"

# A program of another language for the sidecar's process test (tests/sidecar.rs).
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
  else
    echo "scripts/test.sh needs python3 for the sidecar test" >&2
    exit 1
  fi
fi

# A Python virtual environment for the interop tests (clients nobody here wrote: nats-py for
# tests/transport.rs), in target/py. It installs scripts/requirements.txt again only when that
# file changed since the last install.
if [ ! -x target/py/bin/python ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== installing python3-venv (Debian package)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    else
      echo "scripts/test.sh needs Python's venv module: install it (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  echo "== python3 -m venv target/py"
  mkdir -p target
  python3 -m venv target/py || { rm -rf target/py; exit 1; }
fi
if ! cmp -s scripts/requirements.txt target/py/installed-requirements.txt; then
  echo "== pip install -r scripts/requirements.txt (into target/py)"
  target/py/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt target/py/installed-requirements.txt
fi

# Every process this run starts inherits this mark, so the end of the run can tell its own
# leftovers from anything else on the machine (see the check at the bottom).
export MICRO_TEST_RUN="test-$$-$(date +%s)"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo build --examples"
cargo build --examples --quiet

# --no-fail-fast: one failing test binary must not hide the results of the others.
echo "== cargo test"
status=0
cargo test --workspace --no-fail-fast || status=$?

# Nothing this run started may still be running: no example, no private nats-server, no
# Python peer. A leftover is a bug (a child that outlived its parent), so it fails the run.
leftovers() {
  local env pid
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}
    pid=${pid%/environ}
    { [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ]; } && continue
    if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "MICRO_TEST_RUN=$MICRO_TEST_RUN"; then
      echo "$pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
    fi
  done
}
for _ in $(seq 50); do
  left=$(leftovers)
  [ -z "$left" ] && break
  sleep 0.1
done
if [ -n "$left" ]; then
  echo "== processes started by this run are still running:" >&2
  echo "$left" >&2
  status=1
else
  echo "== no process of this run is left running"
fi
exit "$status"
