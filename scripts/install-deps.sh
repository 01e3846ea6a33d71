#!/usr/bin/env bash
# Installs the system packages and tools the Lumen test suite needs.
#
# Usage: scripts/install-deps.sh
#
# Idempotent: packages already installed (per dpkg-query) are left alone, and
# `apt-get update -qq` runs only when something is missing. Also makes sure
# cargo-nextest is available (`cargo install cargo-nextest --locked` if not).
# Prints what it checked and what it did. Needs root (or sudo) only when it
# has something to install.
set -euo pipefail

# System packages for the test suite; extend this list (space-separated).
#   openmpi-bin libopenmpi-dev  MPI baseline (benches/mpi) and mpirun tests
#   iproute2                    `ip`: network-namespace clusters (lumen-testkit)
#   iperf3                      TCP throughput reference between namespaces
#   bc                          arithmetic in benchmark scripts
#   slurm-wlm munge             a real Slurm for the srun/sbatch tests (scripts/slurm-cluster.sh)
#   mpich                       mpiexec.mpich (Hydra, PMI-1) launch tests
#   libclang-dev                bindgen for rsmpi (lumen feature `mpi`) and ibverbs-sys
#   libhwloc-dev libudev-dev    hwloc topology discovery (lumen-sched feature `hwloc`)
#   libfabric-dev libfabric-bin libfabric backend (feature `ofi`) and fi_pingpong
#   cmake libnl-3-dev libnl-route-3-dev libibverbs-dev
#                               the verbs backend (lumen-transport feature `verbs`):
#                               ibverbs-sys builds rdma-core's headers for bindgen
DEPS_PACKAGES="openmpi-bin libopenmpi-dev iproute2 iperf3 bc slurm-wlm munge mpich libclang-dev libhwloc-dev libudev-dev pkg-config libfabric-dev libfabric-bin cmake libnl-3-dev libnl-route-3-dev libibverbs-dev"

log() { echo "install-deps: $*"; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

missing=()
for pkg in $DEPS_PACKAGES; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" == "installed" ]]; then
        log "$pkg: already installed ($(dpkg-query -W -f='${Version}' "$pkg"))"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    log "installed: ${missing[*]}"
else
    log "all system packages present, nothing to install"
fi

if cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest: already installed ($(cargo nextest --version 2>/dev/null | head -n1))"
else
    log "cargo-nextest: missing, running cargo install cargo-nextest --locked"
    cargo install cargo-nextest --locked
    log "cargo-nextest: installed ($(cargo nextest --version 2>/dev/null | head -n1))"
fi
