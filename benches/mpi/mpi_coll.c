/*
 * mpi_coll: collective latency baseline for Lumen (`lumen bench collectives`).
 *
 * Our own small OSU-style benchmark (after osu_allreduce, osu_bcast,
 * osu_allgather, osu_reduce_scatter and osu_alltoall of the OSU
 * Micro-Benchmarks, Ohio State University), built with `mpicc` against the
 * system MPI and run under `mpirun -n N`. Lumen's worker
 * (benches/src/collectives.rs) runs the identical loop, so the output
 * format and the size conventions below are a contract.
 *
 * Sizes are bytes of float (4-byte) data:
 *   allreduce       SIZE bytes reduced (MPI_SUM) in place in every rank
 *   bcast           SIZE bytes from rank 0
 *   allgather       SIZE bytes contributed per rank (receive N * SIZE)
 *   reduce_scatter  SIZE bytes per rank's result (send N * SIZE), MPI_SUM
 *   alltoall        SIZE bytes per peer (send and receive N * SIZE)
 * A size below 4 bytes is rounded up to one float.
 *
 * Timing: per op and size, `warmup` untimed iterations, then TRIALS trials of
 * `iters` iterations each, each trial opened by an MPI_Barrier; a rank's
 * time is its best trial's average per iteration (trials absorb noise from
 * other processes on a shared machine; Lumen's worker does the same). The
 * reported latency is the average over ranks of that per-rank time
 * (osu's "Avg Latency(us)").
 *
 * Output (rank 0, stdout, one JSON object per line):
 *   {"test":"allreduce","size":8,"usec":1.234}
 *
 * Usage: mpi_coll [-i ITERS_SMALL] [-t TRIALS] [-o op,op,...] SIZE[,SIZE...]
 *   Iterations per trial: ITERS_SMALL up to 8 KiB, scaled down by size/8KiB
 *   above, never below 20.
 */
#include <mpi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZES 64

static int iterations(long size, int small) {
    long n = size <= 8192 ? small : (long)small * 8192 / size;
    return n < 20 ? 20 : (int)n;
}

static double run_op(const char *op, long size, int iters, int trials, float *a, float *b,
                     int rank, int nranks) {
    int count = (int)((size + 3) / 4);
    if (count < 1) count = 1;
    double best = 1e30;
    int warmup = iters / 10 < 2 ? 2 : iters / 10;
    for (int t = -1; t < trials; t++) {
        int n = t < 0 ? warmup : iters;
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (int i = 0; i < n; i++) {
            if (!strcmp(op, "allreduce")) {
                MPI_Allreduce(MPI_IN_PLACE, a, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            } else if (!strcmp(op, "bcast")) {
                MPI_Bcast(a, count, MPI_FLOAT, 0, MPI_COMM_WORLD);
            } else if (!strcmp(op, "allgather")) {
                MPI_Allgather(a, count, MPI_FLOAT, b, count, MPI_FLOAT, MPI_COMM_WORLD);
            } else if (!strcmp(op, "reduce_scatter")) {
                MPI_Reduce_scatter_block(a, b, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            } else if (!strcmp(op, "alltoall")) {
                MPI_Alltoall(a, count, MPI_FLOAT, b, count, MPI_FLOAT, MPI_COMM_WORLD);
            }
        }
        double per = (MPI_Wtime() - start) / n;
        if (t >= 0 && per < best) best = per;
    }
    (void)rank;
    (void)nranks;
    return best * 1e6;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    int small = 1000, trials = 3;
    char ops[256] = "allreduce,bcast,allgather,reduce_scatter,alltoall";
    long sizes[MAX_SIZES];
    int nsizes = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-i") && i + 1 < argc) {
            small = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            trials = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            snprintf(ops, sizeof ops, "%s", argv[++i]);
        } else {
            char *list = argv[i];
            for (char *tok = strtok(list, ","); tok && nsizes < MAX_SIZES; tok = strtok(NULL, ","))
                sizes[nsizes++] = atol(tok);
        }
    }
    if (small < 1) small = 1;
    if (trials < 1) trials = 1;
    long max = 4;
    for (int s = 0; s < nsizes; s++)
        if (sizes[s] > max) max = sizes[s];
    size_t floats = (size_t)(max + 3) / 4 * (size_t)nranks;
    float *a = calloc(floats, sizeof(float));
    float *b = calloc(floats, sizeof(float));
    if (!a || !b) {
        fprintf(stderr, "mpi_coll: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    char *saveptr = NULL;
    for (char *op = strtok_r(ops, ",", &saveptr); op; op = strtok_r(NULL, ",", &saveptr)) {
        for (int s = 0; s < nsizes; s++) {
            double usec = run_op(op, sizes[s], iterations(sizes[s], small), trials, a, b, rank, nranks);
            double sum = 0;
            MPI_Reduce(&usec, &sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
            if (rank == 0) {
                printf("{\"test\":\"%s\",\"size\":%ld,\"usec\":%.3f}\n", op, sizes[s], sum / nranks);
                fflush(stdout);
            }
        }
    }
    free(a);
    free(b);
    MPI_Finalize();
    return 0;
}
