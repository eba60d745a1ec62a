#!/usr/bin/env bash
# Builds ghostwire and runs `ghostwire demo` (needs root: it creates network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --bin ghostwire
exec ./target/release/ghostwire demo "$@"
