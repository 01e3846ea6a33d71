#!/usr/bin/env bash
# Runs the Open MPI point-to-point baseline (2 ranks on this machine) and
# prints its JSON lines on stdout, e.g.
#   {"test":"latency","size":8,"usec":0.420}
#   {"test":"bandwidth","size":4194304,"mbps":12345.67}
#
# Usage: scripts/run-mpi-baseline.sh [shm|tcp] [mpi_pingpong options...]
#   shm (default, also when the first argument is an option or a size):
#                  --mca btl self,vader (shared memory)
#   tcp:           --mca btl self,tcp over loopback (btl_tcp_if_include=lo)
# Remaining arguments go to mpi_pingpong (see benches/mpi/mpi_pingpong.c),
# e.g. `scripts/run-mpi-baseline.sh tcp -t latency 8 1048576`.
#
# Environment: MPI_BASELINE_DIR (default target/mpi-baseline) holds the
# binaries; they are built by scripts/build-mpi-baseline.sh when missing or
# stale. The ob1 PML is forced so that the BTL choice is what actually carries
# the data (Debian's Open MPI would otherwise pick UCX when it can).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${MPI_BASELINE_DIR:-$repo_root/target/mpi-baseline}"
transport=shm
case "${1:-}" in
    shm | tcp)
        transport="$1"
        shift
        ;;
    -h | --help)
        echo "usage: $0 [shm|tcp] [mpi_pingpong options...]"
        exit 0
        ;;
    "" | -* | [0-9]*) ;;
    *)
        echo "usage: $0 [shm|tcp] [mpi_pingpong options...]" >&2
        exit 2
        ;;
esac
case "$transport" in
    shm) btl="self,vader" ;;
    tcp) btl="self,tcp" ;;
esac

"$repo_root/scripts/build-mpi-baseline.sh" "$bin_dir" >/dev/null

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [[ "$transport" == tcp ]]; then
    export OMPI_MCA_btl_tcp_if_include=lo
fi
# Keep Open MPI's out-of-band channel on loopback as well: other interfaces
# (bridges, namespaces of concurrent tests) must not be probed.
export OMPI_MCA_oob_tcp_if_include="${OMPI_MCA_oob_tcp_if_include:-lo}"

exec mpirun -n 2 --oversubscribe --mca pml ob1 --mca btl "$btl" \
    "$bin_dir/mpi_pingpong" "$@"
