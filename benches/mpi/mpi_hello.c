/* The start-up baseline: MPI_Init, one barrier, MPI_Finalize. Rank 0
 * prints, as a JSON line, the time from argv[1] (the launcher's start,
 * CLOCK_REALTIME nanoseconds) to leaving the barrier: launch to ready. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Barrier(MPI_COMM_WORLD);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0 && argc > 1) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        long long t0 = atoll(argv[1]);
        long long t = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
        printf("{\"ready_ms\": %.3f}\n", (double)(t - t0) / 1e6);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
