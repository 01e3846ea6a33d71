#!/usr/bin/env bash
# Builds the Open MPI baseline benchmarks (benches/mpi/*.c) with `mpicc -O2`.
#
# Usage: scripts/build-mpi-baseline.sh [OUTDIR]     (default: target/mpi-baseline)
#
# Installs openmpi-bin and libopenmpi-dev with apt-get when they are missing
# (running `apt-get update -qq` only in that case). Idempotent: a binary newer
# than its source (and than this script) is not rebuilt. Prints the path of
# every binary on stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_dir="$repo_root/benches/mpi"
out_dir="${1:-$repo_root/target/mpi-baseline}"
MPI_PACKAGES="openmpi-bin libopenmpi-dev"

log() { echo "build-mpi-baseline: $*" >&2; }

missing=()
for pkg in $MPI_PACKAGES; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    sudo_cmd=()
    if [[ "$(id -u)" != 0 ]]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v mpicc >/dev/null || { log "mpicc not found after install"; exit 1; }

mkdir -p "$out_dir"
shopt -s nullglob
sources=("$src_dir"/*.c)
((${#sources[@]} > 0)) || { log "no sources in $src_dir"; exit 1; }
for src in "${sources[@]}"; do
    bin="$out_dir/$(basename "$src" .c)"
    if [[ -x "$bin" && "$bin" -nt "$src" && "$bin" -nt "${BASH_SOURCE[0]}" ]]; then
        log "up to date: $bin"
    else
        log "compiling $src"
        mpicc -O2 -Wall -Wextra -std=c11 -D_POSIX_C_SOURCE=200809L -o "$bin.tmp" "$src"
        mv -f "$bin.tmp" "$bin"
    fi
    echo "$bin"
done
