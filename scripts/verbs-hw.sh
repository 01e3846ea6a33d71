#!/usr/bin/env bash
# Runs the verbs backend's tests and benchmark on a machine with an
# InfiniBand or RoCE card, and records the card beside the figures.
#
# Usage: scripts/verbs-hw.sh [OUT_DIR]      (default: ./verbs-hw-<host>-<date>)
#
# What it does, in order, writing everything under OUT_DIR:
#   1. card.txt       the card: ibv_devinfo -v (rdma-core's ibverbs-utils) or,
#                     without it, /sys/class/infiniband; lspci lines of
#                     Mellanox/NVIDIA/Broadcom/Intel RDMA functions
#   2. conformance.txt  the one-sided conformance suite with the verbs feature:
#                     verbs runs here for real (reads and writes 1 B..1 GiB at
#                     odd offsets, foreign keys and ranges refused, a bogus rkey
#                     reported, 8 threads x 64 concurrent reads, 10 000 views
#                     of one registration, a SIGKILLed peer reported in time)
#   3. bench.txt / bench.json   `lumen bench transport --fabric verbs,tcp,vm`
#                     beside fi_pingpong (verbs;ofi_rxm) and Open MPI
#   4. perftest.txt   ib_read_lat / ib_read_bw (perftest) on the same card,
#                     where perftest is installed: the hardware's own numbers
#
# Environment: LUMEN_VERBS_DEVICE=mlx5_0[:port] picks the card (default: the
# first with an active port); LUMEN_VERBS_GID_INDEX=N the GID for RoCE
# (default 0; RoCE v2 is often 1 or 3: `show_gids` tells).
# Needs: the build packages of scripts/install-deps.sh (it runs it), a card
# with an active port, and memlock limits high enough to register 1 GiB
# (`ulimit -l unlimited`, as MPI jobs need too).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-verbs-hw-$(hostname -s)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
echo "verbs-hw: writing to $out"

scripts/install-deps.sh >"$out/install-deps.txt" 2>&1 || {
    echo "verbs-hw: scripts/install-deps.sh failed; see $out/install-deps.txt" >&2
    exit 1
}

{
    echo "# $(date -u +%FT%TZ) $(hostname) $(uname -r)"
    echo "# commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    if command -v ibv_devinfo >/dev/null; then
        ibv_devinfo -v
    elif [[ -d /sys/class/infiniband ]]; then
        for dev in /sys/class/infiniband/*; do
            echo "== $(basename "$dev")"
            cat "$dev"/node_type "$dev"/fw_ver 2>/dev/null || true
            for port in "$dev"/ports/*; do
                echo "port $(basename "$port"): $(cat "$port/state" 2>/dev/null) $(cat "$port/rate" 2>/dev/null) $(cat "$port/link_layer" 2>/dev/null)"
            done
        done
    else
        echo "no /sys/class/infiniband: this machine has no RDMA device"
    fi
    lspci 2>/dev/null | grep -Ei 'infiniband|mellanox|connectx|rdma|ethernet.*(broadcom|intel).*rdma' || true
    echo "memlock: $(ulimit -l)"
} >"$out/card.txt" 2>&1
cat "$out/card.txt"

if ! grep -q "PORT_ACTIVE\|ACTIVE" "$out/card.txt"; then
    echo "verbs-hw: no active RDMA port found (see $out/card.txt); nothing to measure" >&2
    exit 2
fi

echo "verbs-hw: conformance suite (verbs feature)"
cargo test --release -p lumen-transport --features verbs,ofi --lib --test fabric_conformance \
    -- --test-threads=1 --nocapture 2>&1 | tee "$out/conformance.txt"
if grep -q "SKIPPED: fabric backend verbs" "$out/conformance.txt"; then
    echo "verbs-hw: the suite skipped verbs although a port is active; see $out/conformance.txt" >&2
    exit 3
fi

echo "verbs-hw: benchmark"
cargo build --release -q -p lumen -p lumen-benches --features lumen-benches/ofi,lumen-benches/verbs --bins
target/release/lumen bench transport --fabric verbs,tcp,vm --sizes 8,4096,65536,1048576,4194304 \
    --rounds 5 --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"

if command -v ib_read_lat >/dev/null; then
    echo "verbs-hw: perftest on the same card"
    dev_args=()
    if [[ -n "${LUMEN_VERBS_DEVICE:-}" ]]; then
        dev_args=(-d "${LUMEN_VERBS_DEVICE%%:*}")
    fi
    {
        for t in ib_read_lat ib_read_bw; do
            echo "== $t"
            "$t" "${dev_args[@]}" -a >/dev/null 2>&1 &
            server=$!
            sleep 1
            "$t" "${dev_args[@]}" -a localhost || true
            wait "$server" || true
        done
    } >"$out/perftest.txt" 2>&1
else
    echo "perftest not installed (apt-get install perftest): no hardware reference" >"$out/perftest.txt"
fi
echo "verbs-hw: done; the figures and the card are in $out"
