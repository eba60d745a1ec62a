#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, and all tests (unit, real-kernel, API, kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if ! command -v kubectl >/dev/null; then
  echo "warning: kubectl not found; the lab API's kubectl tests need it at /usr/bin/kubectl" >&2
fi
start=$(date +%s)
# CI builds once from scratch: incremental caches would only cost disk (4.5 GB) and time.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi
# Lab Pods bind-mount volumes over host paths such as /shared; nothing may be written beneath them.
shared_before=$(ls -A /shared 2>/dev/null || true)
# Nor in the temp dir: the labs' directories (gw-lab-*), the tests' own (gw-*), and what the
# peers they run make there (nsd-xfr-*).
tmp_dir=${TMPDIR:-/tmp}
tmp_ours() { ls -A "$tmp_dir" 2>/dev/null | grep -E '^(gw-|nsd-xfr-)' || true; }
tmp_before=$(tmp_ours)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
# The tests must leave the host as they found it.
left=$(ip netns list | grep -E '^(gwl[0-9]|gwt-)' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind:" >&2
  echo "$left" >&2
  exit 1
fi
shared_after=$(ls -A /shared 2>/dev/null || true)
if [ "$shared_after" != "$shared_before" ]; then
  echo "tests wrote to the host's /shared (a ghostwire init outside a Pod's mounts?):" >&2
  ls -la /shared >&2
  exit 1
fi
tmp_left=$(comm -13 <(echo "$tmp_before" | sort) <(tmp_ours | sort))
if [ -n "$tmp_left" ]; then
  echo "tests left files in $tmp_dir:" >&2
  echo "$tmp_left" >&2
  exit 1
fi
echo "all checks passed in $(( $(date +%s) - start ))s"
