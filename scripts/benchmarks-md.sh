#!/usr/bin/env bash
# Regenerates BENCHMARKS.md's generated sections from benchmark reports
# (the files `lumen bench SUITE --json FILE` writes), so that the tables
# never disagree with the data. Usage:
#   scripts/benchmarks-md.sh bench/transport.json [more.json ...]
# The reports live in bench-results/ by convention (committed beside
# BENCHMARKS.md); each suite's section sits between
# <!-- BEGIN generated: SUITE --> and <!-- END generated: SUITE -->.
set -euo pipefail
cd "$(dirname "$0")/.."
exe=target/release/lumen-bench
[[ -x $exe ]] || exe=target/debug/lumen-bench
[[ -x $exe ]] || { echo "build lumen-bench first: cargo build --release -p lumen-benches" >&2; exit 1; }
"$exe" markdown --update BENCHMARKS.md "$@"
