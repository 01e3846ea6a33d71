#!/usr/bin/env bash
# Lamellar 0.8.1 from crates.io (default features off: the shmem lamellae
# only), the Rust baseline of `lumen bench runtime --baseline lamellar`
# (benches/lamellar). About 8 minutes on a 2-core machine; not needed by the
# tests and never built by CI.
#   scripts/install-lamellar-baseline.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --locked --manifest-path "$here/benches/lamellar/Cargo.toml"
echo "built $here/benches/lamellar/target/release/lumen-lamellar-baseline"
