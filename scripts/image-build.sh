#!/bin/sh
# Builds the binary the production image ships (deploy/Dockerfile runs this): no lab, the
# `image` profile, and profile-guided optimisation from deploy/pgo/ghostwire.profdata (made
# by scripts/pgo.sh). Functions changed since that profile was made build without it, as
# they would with no profile at all. Extra arguments go to cargo (`--locked`, `--target-dir DIR`).
# The binary: target/image/ghostwire (or under the --target-dir given).
set -eu
cd "$(dirname "$0")/.."
profile="$PWD/deploy/pgo/ghostwire.profdata"
[ -f "$profile" ] || { echo "image-build: $profile is missing (scripts/pgo.sh makes it)" >&2; exit 1; }
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" \
  exec cargo build --profile image --no-default-features -p ghostwire "$@"
