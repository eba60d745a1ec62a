#!/bin/sh
# Regenerates crates/mesh-api/src/gen/ from crates/mesh-api/proto (pure Rust: protox and
# tonic-prost-build, dev-dependencies of mesh-api; no protoc needed).
set -eu
cd "$(dirname "$0")/.."
GW_REGEN_MESH_API=1 cargo test -q -p mesh-api --lib generated_code_is_current
cargo test -q -p mesh-api --lib generated_code_is_current
