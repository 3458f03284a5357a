#!/usr/bin/env bash
# Builds the Go programs of interop/go into target/go/bin, offline, in GOPATH mode, against
# Debian's packages (golang-go, golang-google-grpc-dev, golang-google-protobuf-dev,
# protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc) and nats.go unpacked by
# scripts/test.sh into target/go/deps. No module proxy is asked for anything.
#
# The stubs are generated here, on every build, from the .proto files the Rust side
# compiles: one contract, never a stale copy of it. Go's build cache (target/go/cache)
# makes a build with nothing changed take about a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# The target folder cargo uses, so a moved CARGO_TARGET_DIR moves this too.
out=${CARGO_TARGET_DIR:-$root/target}/go
deps=$out/deps/usr/share/gocode

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "interop/go/build.sh needs $tool: run scripts/test.sh, which installs Go and its gRPC and protobuf packages from Debian" >&2
    exit 1
  fi
done
if [ ! -d "$deps/src/github.com/nats-io/nats.go" ]; then
  echo "interop/go/build.sh needs nats.go in $deps: run scripts/test.sh, which unpacks Debian's golang-github-nats-io-go-nats-dev there" >&2
  exit 1
fi

# The import path microkit/interop is this folder, copied afresh into a GOPATH of our own.
src=$out/src/microkit/interop
rm -rf "$src"
mkdir -p "$src" "$out/bin"
cp -R "$root/interop/go/registry" "$root/interop/go/cmd" "$src/"

# The protos name no Go package; the M options give each file its import path.
mapping=""
for pair in greeter.proto=greeterpb events.proto=eventspb calc.proto=calcpb; do
  mapping="$mapping,M${pair%%=*}=microkit/interop/${pair#*=}"
done
protoc -I "$root/shared/proto" -I "$root/examples/proxy" \
  --go_out="$out/src" --go_opt="${mapping#,}" \
  --go-grpc_out="$out/src" --go-grpc_opt="${mapping#,}" \
  greeter.proto events.proto calc.proto

export GO111MODULE=off GOFLAGS= GOPROXY=off
export GOPATH="$out:$deps:/usr/share/gocode"
export GOCACHE="$out/cache"
cd "$src"
go vet ./...
go build -o "$out/bin/" ./cmd/...
