#!/usr/bin/env bash
# NCCL correctness on a machine with an NVIDIA GPU (one GPU is enough):
#   scripts/gpu-nccl-check.sh
# Builds (unless NCCL_CHECK_BIN names a prebuilt binary) and runs
# collectives/examples/nccl_check.rs: a single-rank Lumen job, an NCCL
# communicator made from its world communicator, allreduce / bcast / reduce /
# allgather / reduce_scatter on device buffers (f32, i64, f16) checked against
# the host. Exit 0: passed. Exit 2: NOT RUN (no GPU, driver or libnccl), with
# the reason printed. Anything else: failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-nccl-check: NOT RUN: no NVIDIA GPU visible (nvidia-smi missing or failing)"
    exit 2
fi
nvidia-smi -L

# libnccl from the system, or from pip's nvidia-nccl-cu12/cu13 wheel if installed.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so'; then
    found=""
    for dir in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true) /usr/local /opt; do
        [ -d "$dir" ] || continue
        found=$(find "$dir" -maxdepth 6 -name 'libnccl.so*' -print -quit 2>/dev/null || true)
        [ -n "$found" ] && break
    done
    if [ -n "$found" ]; then
        libdir=$(dirname "$found")
        echo "gpu-nccl-check: using $found"
        # cudarc looks for libnccl.so; the wheels ship libnccl.so.2.
        mkdir -p "${TMPDIR:-/tmp}/lumen-nccl-lib"
        ln -sf "$found" "${TMPDIR:-/tmp}/lumen-nccl-lib/libnccl.so"
        export LD_LIBRARY_PATH="${TMPDIR:-/tmp}/lumen-nccl-lib:$libdir:${LD_LIBRARY_PATH:-}"
    fi
fi

bin="${NCCL_CHECK_BIN:-}"
if [ -z "$bin" ]; then
    if [ -x target/release/examples/nccl_check ]; then
        bin=target/release/examples/nccl_check
    else
        cargo build --release -p lumen-collectives --features nccl --example nccl_check
        bin=target/release/examples/nccl_check
    fi
fi
echo "gpu-nccl-check: running $bin"
exec "$bin"
