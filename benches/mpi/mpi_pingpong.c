/*
 * mpi_pingpong: point-to-point latency and bandwidth baseline for Lumen.
 *
 * Our own small OSU-style benchmark (modelled on osu_latency and osu_bw from
 * the OSU Micro-Benchmarks, Ohio State University), built with `mpicc` against
 * the system MPI. Lumen's Rust benchmark harness runs it under `mpirun -n 2`
 * and parses stdout, so the output format below is a contract.
 *
 * Output (rank 0, stdout, one JSON object per line, no spaces):
 *   {"test":"latency","size":8,"usec":0.420}
 *   {"test":"bandwidth","size":4194304,"mbps":12345.67}
 * `usec` is half the round-trip time in microseconds; `mbps` is decimal
 * megabytes (1 MB = 1e6 bytes) per second. Diagnostics go to stderr.
 *
 * Latency (osu_latency): rank 0 sends `size` bytes, rank 1 answers with
 * `size` bytes; after warmup round trips, the timed round trips are averaged.
 *
 * Bandwidth (osu_bw): per iteration rank 0 posts a window of WINDOW (64)
 * MPI_Isend, rank 1 posts 64 MPI_Irecv into distinct slots, both wait, and
 * rank 1 acknowledges with a 4-byte message. Rate = size * 64 * iterations /
 * time.
 *
 * Iterations scale down with size: up to 8 KiB each test runs its base count;
 * above that the count is divided by size / 8 KiB, with a floor (latency:
 * base / 100, bandwidth: base / 10, warmup: 2; never below 1).
 *
 * Verification: the first (warmup) iteration of every size and test fills the
 * send buffers with a size- and rank-dependent pattern and clears the receive
 * buffers; received bytes are checked. On mismatch both ranks print to stderr
 * and exit with status 1 (so mpirun exits non-zero).
 *
 * Usage: mpi_pingpong [-t latency|bandwidth|all] [-i LAT_ITERS] [-w LAT_WARMUP]
 *                     [-b BW_ITERS] [-W BW_WARMUP] [-p] [SIZE[,SIZE...] ...]
 *   SIZE list: positional arguments and/or comma-separated; default
 *   8,64,512,4096,32768,262144,1048576,4194304. `-p`: every power of two from
 *   1 B to 4 MiB instead. Defaults: -i 10000 -w 100 -b 100 -W 10.
 */
#include <mpi.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW 64
#define SCALE_THRESHOLD 8192
#define MAX_SIZES 64
#define ACK_BYTES 4
#define TAG_DATA 1
#define TAG_ACK 2

static const size_t DEFAULT_SIZES[] = {8,     64,     512,     4096,
                                       32768, 262144, 1048576, 4194304};

struct options {
    int latency;
    int bandwidth;
    long lat_iters;
    long lat_warmup;
    long bw_iters;
    long bw_warmup;
    size_t sizes[MAX_SIZES];
    int nsizes;
};

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [-t latency|bandwidth|all] [-i LAT_ITERS] [-w LAT_WARMUP]\n"
            "          [-b BW_ITERS] [-W BW_WARMUP] [-p] [SIZE[,SIZE...] ...]\n",
            prog);
}

static int parse_long(const char *s, long min, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min) {
        return -1;
    }
    *out = v;
    return 0;
}

static int add_sizes(struct options *o, const char *arg) {
    char *copy = strdup(arg);
    if (copy == NULL) {
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (parse_long(tok, 1, &v) != 0 || o->nsizes >= MAX_SIZES) {
            fprintf(stderr, "mpi_pingpong: bad or too many sizes: '%s'\n", tok);
            rc = -1;
            break;
        }
        o->sizes[o->nsizes++] = (size_t)v;
    }
    free(copy);
    return rc;
}

/* Returns 0 on success; -1 on a usage error (already reported). */
static int parse_options(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof(*o));
    o->latency = 1;
    o->bandwidth = 1;
    o->lat_iters = 10000;
    o->lat_warmup = 100;
    o->bw_iters = 100;
    o->bw_warmup = 10;
    int powers = 0;
    int c;
    opterr = 0;
    while ((c = getopt(argc, argv, "t:i:w:b:W:ph")) != -1) {
        switch (c) {
        case 't':
            o->latency = strcmp(optarg, "latency") == 0 || strcmp(optarg, "all") == 0;
            o->bandwidth = strcmp(optarg, "bandwidth") == 0 || strcmp(optarg, "all") == 0;
            if (!o->latency && !o->bandwidth) {
                fprintf(stderr, "mpi_pingpong: unknown test '%s'\n", optarg);
                return -1;
            }
            break;
        case 'i':
            if (parse_long(optarg, 1, &o->lat_iters) != 0) return -1;
            break;
        case 'w':
            if (parse_long(optarg, 0, &o->lat_warmup) != 0) return -1;
            break;
        case 'b':
            if (parse_long(optarg, 1, &o->bw_iters) != 0) return -1;
            break;
        case 'W':
            if (parse_long(optarg, 0, &o->bw_warmup) != 0) return -1;
            break;
        case 'p':
            powers = 1;
            break;
        default:
            return -1;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (add_sizes(o, argv[i]) != 0) return -1;
    }
    if (powers) {
        o->nsizes = 0;
        for (size_t s = 1; s <= ((size_t)4 << 20); s <<= 1) {
            o->sizes[o->nsizes++] = s;
        }
    }
    if (o->nsizes == 0) {
        o->nsizes = (int)(sizeof(DEFAULT_SIZES) / sizeof(DEFAULT_SIZES[0]));
        memcpy(o->sizes, DEFAULT_SIZES, sizeof(DEFAULT_SIZES));
    }
    return 0;
}

/* Base count for sizes up to 8 KiB, divided by size / 8 KiB above, floored. */
static long scaled(long base, size_t size, long floor) {
    long n = base;
    if (size > SCALE_THRESHOLD) {
        n = base / (long)(size / SCALE_THRESHOLD);
    }
    if (n < floor) n = floor;
    if (n > base) n = base;
    return n < 1 && base > 0 ? 1 : n;
}

static unsigned char pattern_byte(size_t size, int rank, size_t i) {
    return (unsigned char)((i * 31u + size * 7u + (size_t)rank * 101u + 13u) & 0xffu);
}

static void fill(unsigned char *buf, size_t size, int rank) {
    for (size_t i = 0; i < size; i++) buf[i] = pattern_byte(size, rank, i);
}

/* Returns the number of mismatching bytes; reports the first one. */
static size_t check(const unsigned char *buf, size_t size, int from_rank,
                    const char *test, int me) {
    size_t bad = 0;
    for (size_t i = 0; i < size; i++) {
        unsigned char want = pattern_byte(size, from_rank, i);
        if (buf[i] != want) {
            if (bad == 0) {
                fprintf(stderr,
                        "mpi_pingpong: rank %d: %s size %zu: byte %zu is 0x%02x, "
                        "expected 0x%02x\n",
                        me, test, size, i, buf[i], want);
            }
            bad++;
        }
    }
    return bad;
}

/* Both ranks learn whether either saw corrupt data. */
static int any_error(int local) {
    int global = 0;
    MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return global;
}

static int run_latency(int rank, size_t size, const struct options *o,
                       unsigned char *sbuf, unsigned char *rbuf) {
    long iters = scaled(o->lat_iters, size, o->lat_iters / 100);
    long warmup = scaled(o->lat_warmup, size, 2);
    int peer = 1 - rank;
    int bad = 0;
    double start = 0.0;

    fill(sbuf, size, rank);
    memset(rbuf, 0, size);
    MPI_Barrier(MPI_COMM_WORLD);
    /* Iteration 0 (a warmup round trip, or the first timed one) is verified. */
    for (long it = 0; it < warmup + iters; it++) {
        if (it == warmup) start = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(sbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(rbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
            MPI_Send(sbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
        }
        if (it == 0 && check(rbuf, size, peer, "latency", rank) != 0) bad = 1;
    }
    double elapsed = MPI_Wtime() - start;
    if (any_error(bad)) return -1;
    if (rank == 0) {
        double usec = elapsed * 1e6 / (2.0 * (double)iters);
        printf("{\"test\":\"latency\",\"size\":%zu,\"usec\":%.3f}\n", size, usec);
        fflush(stdout);
    }
    return 0;
}

static int run_bandwidth(int rank, size_t size, const struct options *o,
                         unsigned char *sbuf, unsigned char *rbuf) {
    long iters = scaled(o->bw_iters, size, o->bw_iters / 10);
    long warmup = scaled(o->bw_warmup, size, 2);
    MPI_Request reqs[WINDOW];
    unsigned char ack[ACK_BYTES] = {0};
    int bad = 0;
    double start = 0.0;

    if (rank == 0) {
        fill(sbuf, size, rank);
    } else {
        memset(rbuf, 0, size * WINDOW);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (long it = 0; it < warmup + iters; it++) {
        if (it == warmup) start = MPI_Wtime();
        if (rank == 0) {
            /* Concurrent sends from one buffer are allowed since MPI-3.0. */
            for (int w = 0; w < WINDOW; w++) {
                MPI_Isend(sbuf, (int)size, MPI_BYTE, 1, TAG_DATA, MPI_COMM_WORLD,
                          &reqs[w]);
            }
            MPI_Waitall(WINDOW, reqs, MPI_STATUSES_IGNORE);
            MPI_Recv(ack, ACK_BYTES, MPI_BYTE, 1, TAG_ACK, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        } else {
            /* Each receive gets its own slot: overlapping receive buffers are
             * erroneous in MPI, and distinct slots let us verify every one. */
            for (int w = 0; w < WINDOW; w++) {
                MPI_Irecv(rbuf + (size_t)w * size, (int)size, MPI_BYTE, 0, TAG_DATA,
                          MPI_COMM_WORLD, &reqs[w]);
            }
            MPI_Waitall(WINDOW, reqs, MPI_STATUSES_IGNORE);
            if (it == 0) {
                for (int w = 0; w < WINDOW && !bad; w++) {
                    if (check(rbuf + (size_t)w * size, size, 0, "bandwidth", rank) != 0)
                        bad = 1;
                }
            }
            MPI_Send(ack, ACK_BYTES, MPI_BYTE, 0, TAG_ACK, MPI_COMM_WORLD);
        }
    }
    double elapsed = MPI_Wtime() - start;
    if (any_error(bad)) return -1;
    if (rank == 0) {
        double mbps = (double)size * WINDOW * (double)iters / elapsed / 1e6;
        printf("{\"test\":\"bandwidth\",\"size\":%zu,\"mbps\":%.2f}\n", size, mbps);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, nranks = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    struct options o;
    if (parse_options(argc, argv, &o) != 0) {
        if (rank == 0) usage(argv[0]);
        MPI_Finalize();
        return 2;
    }
    if (nranks != 2) {
        if (rank == 0)
            fprintf(stderr, "mpi_pingpong: needs exactly 2 ranks, got %d\n", nranks);
        MPI_Finalize();
        return 2;
    }

    size_t max_size = 0;
    for (int i = 0; i < o.nsizes; i++) {
        if (o.sizes[i] > (size_t)0x7fffffff) {
            if (rank == 0) fprintf(stderr, "mpi_pingpong: size %zu too large\n", o.sizes[i]);
            MPI_Finalize();
            return 2;
        }
        if (o.sizes[i] > max_size) max_size = o.sizes[i];
    }
    /* Rank 1 needs WINDOW receive slots for the bandwidth test. */
    size_t rlen = max_size * (rank == 1 && o.bandwidth ? WINDOW : 1);
    unsigned char *sbuf = malloc(max_size);
    unsigned char *rbuf = malloc(rlen);
    int alloc_failed = any_error(sbuf == NULL || rbuf == NULL);
    if (alloc_failed) {
        if (rank == 0) fprintf(stderr, "mpi_pingpong: out of memory\n");
        free(sbuf);
        free(rbuf);
        MPI_Finalize();
        return 1;
    }

    int status = 0;
    if (o.latency) {
        for (int i = 0; i < o.nsizes && status == 0; i++) {
            if (run_latency(rank, o.sizes[i], &o, sbuf, rbuf) != 0) status = 1;
        }
    }
    if (o.bandwidth) {
        for (int i = 0; i < o.nsizes && status == 0; i++) {
            if (run_bandwidth(rank, o.sizes[i], &o, sbuf, rbuf) != 0) status = 1;
        }
    }
    if (status != 0 && rank == 0) {
        fprintf(stderr, "mpi_pingpong: data verification failed\n");
    }

    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return status;
}
