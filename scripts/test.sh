#!/usr/bin/env bash
# The whole test suite, as a newcomer (and CI) runs it:
#   scripts/test.sh
# Installs what is missing (apt-get, as root), builds once, runs every test with
# cargo-nextest, then a smoke run of the transport benchmark (tiny iteration
# counts: it checks the benchmark works end to end, it measures nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== build (debug, with examples)"
cargo build --workspace --all-targets --quiet
cargo build --workspace --examples --quiet

echo "== Slurm test cluster (netns mode: controller + 3 hosts; the slurm_* tests use it)"
if [[ "$(id -u)" == 0 ]]; then
    if scripts/slurm-cluster.sh status >/dev/null 2>&1; then
        echo "a Slurm test cluster is already running; it is left running afterwards"
    else
        # Stopped on every exit, also when a test or this script fails.
        trap 'scripts/slurm-cluster.sh stop >/dev/null 2>&1 || true' EXIT
    fi
    scripts/slurm-cluster.sh start netns
else
    echo "NOT ROOT: the Slurm test cluster cannot start; the slurm_* tests will skip" >&2
fi

echo "== tests"
cargo nextest run --workspace --no-fail-fast
echo "== MPI interop (feature mpi: Lumen's world from MPI_COMM_WORLD)"
cargo clippy -p lumen --features mpi --all-targets --quiet -- -D warnings
cargo build -p lumen --features mpi --examples --quiet
cargo nextest run -p lumen --features mpi --test mpi_launch --no-fail-fast
cargo test --workspace --doc --quiet

echo "== hwloc discovery (feature hwloc: the system's libhwloc before sysfs)"
cargo clippy -p lumen-sched --features hwloc --all-targets --quiet -- -D warnings
cargo test -p lumen-sched --features hwloc --lib --quiet topology

echo "== one-sided conformance suite: tcp, vm, libfabric (feature ofi: tcp;ofi_rxm, shm), verbs (feature verbs: built; skips without a device)"
cargo clippy -p lumen-transport --features ofi,verbs --all-targets --quiet -- -D warnings
cargo test -p lumen-transport --features ofi,verbs --lib --test fabric_conformance --quiet -- --test-threads=1
cargo clippy -p lumen-objstore --features ofi --all-targets --quiet -- -D warnings
cargo test -p lumen-objstore --features ofi --test objstore_pull_one_sided --quiet -- --test-threads=1
cargo clippy -p lumen --features ofi,verbs --all-targets --quiet -- -D warnings
cargo nextest run -p lumen --features ofi,verbs --test rt_fabric --no-fail-fast

echo "== benchmark smoke run"
target/debug/lumen bench transport --scale 0.01 --sizes 8,65536 --rounds 1 --json "${TMPDIR:-/tmp}/lumen-bench-smoke.json"
target/debug/lumen-bench markdown "${TMPDIR:-/tmp}/lumen-bench-smoke.json" >/dev/null
target/debug/lumen bench collectives --scale 0.01 --sizes 8,65536 --ranks 2,3 --json "${TMPDIR:-/tmp}/lumen-coll-bench-smoke.json"
target/debug/lumen-bench markdown "${TMPDIR:-/tmp}/lumen-coll-bench-smoke.json" >/dev/null
target/debug/lumen-bench plot "${TMPDIR:-/tmp}/lumen-coll-bench-smoke.json" --out "${TMPDIR:-/tmp}/lumen-coll-bench-smoke.svg" >/dev/null
target/debug/lumen bench startup --ranks 2,4 --rounds 1 --baseline-max-ranks 2 --plot "${TMPDIR:-/tmp}/lumen-startup-smoke.svg" --json "${TMPDIR:-/tmp}/lumen-startup-smoke.json"
target/debug/lumen-bench markdown "${TMPDIR:-/tmp}/lumen-startup-smoke.json" >/dev/null
target/debug/lumen bench sched --scale 0.01 --json "${TMPDIR:-/tmp}/lumen-sched-bench-smoke.json"
target/debug/lumen bench runtime --workers 1 --scale 0.02 --rounds 1 --baseline timeline --json "${TMPDIR:-/tmp}/lumen-runtime-bench-smoke.json"
target/debug/lumen-bench markdown "${TMPDIR:-/tmp}/lumen-runtime-bench-smoke.json" >/dev/null
target/debug/lumen bench runtime --metg --workers 1 --scale 0.05 --rounds 1
if [[ "$(id -u)" == 0 ]]; then
    cargo build -q -p lumen-benches --features ofi --bins
    target/debug/lumen bench objects --sizes 1M --rounds 1 --json "${TMPDIR:-/tmp}/lumen-objects-bench-smoke.json"
    target/debug/lumen bench transport --fabric all --sizes 8,65536 --rounds 1 --scale 0.01 --json "${TMPDIR:-/tmp}/lumen-fabric-bench-smoke.json"
fi

echo "== device objects (objstore feature cuda: builds without CUDA; bookkeeping tested here, the GPU test says it skipped)"
cargo clippy -p lumen-objstore --features cuda --all-targets --quiet -- -D warnings
cargo test -p lumen-objstore --features cuda --lib --quiet device
cargo clippy -p lumen --features cuda --all-targets --quiet -- -D warnings
cargo nextest run -p lumen --features cuda --test rt_device --no-fail-fast
cargo clippy -p lumen-sched --features cuda --all-targets --quiet -- -D warnings
cargo test -p lumen-sched --features cuda --lib --quiet topology

echo "== NCCL backend (builds without CUDA; at run time it must report the missing libraries)"
cargo clippy -p lumen-collectives --features nccl --all-targets --quiet -- -D warnings
cargo test -p lumen-collectives --features nccl --quiet
