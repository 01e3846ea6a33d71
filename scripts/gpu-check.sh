#!/usr/bin/env bash
# Device objects on a machine with an NVIDIA GPU (issue 13): what exists so
# far, run for real, with the card and driver recorded beside the output.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]      (default: ./gpu-check-<host>-<date>)
#
# Runs, writing everything under OUT_DIR:
#   card.txt     nvidia-smi -L and the driver version
#   device.txt   the objstore `cuda` feature's tests on GPU 0: a device arena
#                in real GPU memory (put, read back, device-to-device copy,
#                allocator consistency), the pure bookkeeping tests beside them
#   runtime.txt  lumen/tests/rt_device.rs on the GPU, under lumen run -n 3:
#                put_device and get_host on the owner and on other ranks
#                (host staging); then three processes sharing GPU 0: device
#                results of a task and an actor, reads on another process by
#                CUDA IPC (cuIpcOpenMemHandle, one device-to-device copy), a
#                task's device argument pulled onto its GPU before it runs,
#                and every arena empty again when the last reference drops
#   bandwidth.txt  H2D and D2H through the CUDA domain beside plain cudarc
#                copies of the same sizes, rounds alternating
#                (the `device_bandwidth` example)
#
# Not run by this script: the paths between nodes, NCCL (built, feature
# cuda: lumen_objstore::device::nccl; two nodes with GPUs and libnccl) and
# GPU-direct RDMA (built: lumen_objstore::device::gpudirect; a verbs device
# with dma-buf support as well); GPU-to-GPU copies between two GPUs of one
# rank (cuMemcpyPeer; 2+ GPUs). Without a GPU this script says so and
# exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: NOT RUN: no NVIDIA GPU visible (nvidia-smi missing or failing)"
    exit 0
fi
out="${1:-gpu-check-$(hostname -s)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
{
    echo "# $(date -u +%FT%TZ) $(hostname) commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} | tee "$out/card.txt"

echo "gpu-check: device arena tests on the GPU"
cargo test --release -p lumen-objstore --features cuda --lib device -- --nocapture 2>&1 | tee "$out/device.txt"
if grep -q "SKIPPED: no GPU" "$out/device.txt"; then
    echo "gpu-check: the CUDA domain did not open although nvidia-smi sees a GPU; see $out/device.txt" >&2
    exit 3
fi

echo "gpu-check: device objects through the runtime (lumen run -n 3)"
cargo build --release -q -p lumen --bins
cargo test --release -p lumen --features cuda --test rt_device -- --nocapture 2>&1 | tee "$out/runtime.txt"

echo "gpu-check: bandwidth beside plain cudarc copies"
cargo run --release -q -p lumen-objstore --features cuda --example device_bandwidth 2>&1 | tee "$out/bandwidth.txt"
echo "gpu-check: done; results in $out (append them to BENCHMARKS.md with the card named)"
