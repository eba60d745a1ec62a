#!/bin/sh
# Makes deploy/pgo/ghostwire.profdata, the profile that scripts/image-build.sh (and so the
# production image) optimises with: builds the image binary instrumented, runs the mesh
# benchmark's loads through two of its proxies (HTTP/1.1 and HTTP/2, saturation and fixed
# rates, plaintext and mTLS; crates/mesh-proxy/benches/mesh.rs), and merges what the proxies
# counted. Run it again when the request path or its dependencies change much: a function
# that changed since builds without profile data. Needs root (the lab); installs wrk,
# h2load and the llvm-profdata of rustc's LLVM when missing (Debian/Ubuntu). About 20 minutes
# on 2 cores, most of it the two builds.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "pgo: the benchmark's lab needs root" >&2; exit 1; }
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
need=""
command -v "llvm-profdata-$llvm" >/dev/null || need="$need llvm-$llvm"
command -v wrk >/dev/null || need="$need wrk"
command -v h2load >/dev/null || need="$need nghttp2-client"
if [ -n "$need" ]; then
  echo "pgo: installing$need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
work=$(mktemp -d /tmp/ghostwire-pgo.XXXXXX)
trap 'rm -rf "$work" deploy/pgo/ghostwire.profdata.tmp' EXIT
trap 'exit 130' INT TERM
# The proxies run as uid 1337 and write their counts here when they exit (mktemp made
# $work for root alone).
chmod 755 "$work"
mkdir -m 1777 "$work/run"
# (A fixed path here, since another one rebuilds everything; the run below writes elsewhere.)
RUSTFLAGS="-Cprofile-generate=$PWD/target/pgo-train/profiles" \
  cargo build --profile image --no-default-features -p ghostwire --target-dir target/pgo-train
cargo build --release -p ghostwire # the benchmark's app-b runs from the build with the lab
# SIGTERM (the bench stops its processes so) ends a proxy through its drain, which the
# short timeout keeps within the bench's grace; then it writes its counts.
LLVM_PROFILE_FILE="$work/run/proxy-%m.profraw" GW_MESH_DRAIN_TIMEOUT=1s \
  GW_BENCH_PATHS=ghostwire,ghostwire-mtls GW_BENCH_SECONDS=5 GW_BENCH_ROUNDS=1 \
  GW_BENCH_GHOSTWIRE="$PWD/target/pgo-train/image/ghostwire" \
  GW_BENCH_APP="$PWD/target/release/ghostwire" \
  cargo bench -p mesh-proxy --bench mesh
ls "$work"/run/*.profraw >/dev/null 2>&1 || { echo "pgo: the proxies wrote no profile" >&2; exit 1; }
"llvm-profdata-$llvm" merge --sparse -o deploy/pgo/ghostwire.profdata.tmp "$work"/run/*.profraw
mv deploy/pgo/ghostwire.profdata.tmp deploy/pgo/ghostwire.profdata
echo "pgo: deploy/pgo/ghostwire.profdata from $(git rev-parse --short HEAD) with $(rustc -V)"
