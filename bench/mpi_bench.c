/* The same measurements as spmd's examples/osu_*.rs and idle_cpu.rs, written
 * against plain MPI, so scripts/bench-vs-mpi can run them under Open MPI and
 * MPICH on the same machine and compare. Output columns match the Rust
 * programs (and the OSU micro-benchmarks).
 *
 * usage: mpi_bench latency|bw|mbw_mr [max-bytes]
 *        mpi_bench steps
 *        mpi_bench allreduce|iallreduce|reduce|bcast|allgather|alltoall [max-bytes] [min-bytes] [iterations]
 *        mpi_bench barrier [iterations]
 *        mpi_bench idle [seconds]
 *        mpi_bench hello
 *
 * BENCH_REPEAT=N (a whole number, 1 when unset) multiplies every warm-up and
 * timed iteration count, as in spmd's examples/common/mod.rs.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define WINDOW 64

static int rank, size;
/* BENCH_REPEAT: how many times the usual iterations each figure runs. */
static int repeat = 1;

/* One ping-pong figure: messages of `s` bytes, received into buffers of
 * `room` bytes (at least `s`). */
static void ping_pong(char *buf, size_t s, size_t room) {
    int warmup = (s > 8192 ? 10 : 1000) * repeat, iters = (s > 8192 ? 100 : 10000) * repeat;
    double start = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 0; i < warmup + iters; i++) {
        if (i == warmup) start = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(buf, (int)s, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)room, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, (int)room, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)s, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    if (rank == 0) printf("%-10zu%20.2f\n", s, (MPI_Wtime() - start) * 1e6 / (2.0 * iters));
}

static void latency(size_t max) {
    char *buf = calloc(max > 0 ? max : 1, 1);
    if (rank == 0) printf("# mpi latency test\n%-10s%20s\n", "# Size", "Latency (us)");
    for (size_t s = 0; s <= max; s = s ? s * 2 : 1) {
        ping_pong(buf, s, s);
        if (s >= max) break;
    }
    free(buf);
}

/* Where the MPI's small-message path steps up: ping-pong latency at each
 * size from 8 to 32 bytes, received into 4 KiB buffers as spmd's MPI
 * backend receives (its header, then the payload). */
static void steps(void) {
    char *buf = calloc(4096, 1);
    if (rank == 0) printf("# mpi latency by size, 4 KiB receive buffers\n%-10s%20s\n", "# Size", "Latency (us)");
    for (size_t s = 8; s <= 32; s++) ping_pong(buf, s, 4096);
    free(buf);
}

/* The streaming loop of bw and mbw_mr, as spmd's examples/common/window.rs:
 * a sender posts a window of sends to `partner`, which has its receives
 * posted, then waits for its acknowledgement; returns the timed seconds. */
static double stream(const char *data, char *bufs, size_t s, int partner, int sending, int warmup, int iters) {
    MPI_Request req[WINDOW];
    double start = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 0; i < warmup + iters; i++) {
        if (i == warmup) start = MPI_Wtime();
        if (sending) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Isend(data, (int)s, MPI_CHAR, partner, 100, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Recv(NULL, 0, MPI_CHAR, partner, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            for (int w = 0; w < WINDOW; w++)
                MPI_Irecv(bufs + w * s, (int)s, MPI_CHAR, partner, 100, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Send(NULL, 0, MPI_CHAR, partner, 101, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - start;
}

/* Rank 0 to rank 1 (any other rank only meets the barriers), or, with
 * `pairs`, rank i of the first half to rank i + size/2 at once, as spmd's
 * examples/osu_mbw_mr.rs: every pair's bytes over the slowest pair's time,
 * and the message rate. */
static void streaming(size_t max, int multi) {
    int pairs = multi ? size / 2 : 1, sending = rank < pairs;
    int partner = sending ? rank + pairs : rank - pairs;
    int streams = rank < 2 * pairs;
    /* Written, as spmd's osu_bw writes its data: an untouched calloc is
     * the kernel's zero page, which a single-copy transfer reads from
     * cache, flattering MPI by a few percent at 1 MiB. */
    char *data = malloc(max);
    memset(data, 1, max);
    char *bufs = calloc(max * WINDOW, 1);
    if (rank == 0 && multi)
        printf("# mpi multiple bandwidth / message rate test (%d pairs)\n%-10s%20s%20s\n", pairs, "# Size", "MB/s",
               "Messages/s");
    else if (rank == 0)
        printf("# mpi bandwidth test\n%-10s%20s\n", "# Size", "Bandwidth (MB/s)");
    for (size_t s = 1; s <= max; s *= 2) {
        int warmup = (s > 8192 ? 2 : 10) * repeat, iters = (s > 8192 ? 20 : 100) * repeat;
        double t = 0, slowest = 0;
        if (streams)
            t = stream(data, bufs, s, partner, sending, warmup, iters);
        else
            MPI_Barrier(MPI_COMM_WORLD);
        if (!sending) t = 0;
        MPI_Reduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        double messages = (double)pairs * WINDOW * iters / slowest;
        if (rank == 0 && multi)
            printf("%-10zu%20.2f%20.2f\n", s, messages * (double)s / 1e6, messages);
        else if (rank == 0)
            printf("%-10zu%20.2f\n", s, messages * (double)s / 1e6);
    }
    free(data);
    free(bufs);
}

/* The collectives timed by `collective`, as spmd's examples/osu_allreduce.rs,
 * osu_reduce.rs, osu_bcast.rs, osu_allgather.rs and osu_alltoall.rs do
 * (root 0, sums of floats; an allgather's receive buffer holds every
 * rank's part, an alltoall's buffers one part per rank). */
enum which { ALLREDUCE, REDUCE, BCAST, ALLGATHER, ALLTOALL, IALLREDUCE };

static void call(enum which what, float *send, float *recv, int count) {
    switch (what) {
    case ALLREDUCE: MPI_Allreduce(send, recv, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); break;
    case REDUCE: MPI_Reduce(send, recv, count, MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD); break;
    case BCAST: MPI_Bcast(recv, count, MPI_FLOAT, 0, MPI_COMM_WORLD); break;
    case ALLGATHER: MPI_Allgather(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, MPI_COMM_WORLD); break;
    case ALLTOALL: MPI_Alltoall(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, MPI_COMM_WORLD); break;
    case IALLREDUCE: {
        MPI_Request request;
        MPI_Iallreduce(send, recv, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &request);
        MPI_Wait(&request, MPI_STATUS_IGNORE);
        break;
    }
    }
}

static void collective(enum which what, const char *name, size_t max, size_t min, int fixed_iters) {
    size_t n = max / 4;
    size_t send_parts = what == ALLTOALL ? (size_t)size : 1;
    size_t parts = what == ALLGATHER || what == ALLTOALL ? (size_t)size : 1;
    float *send = malloc(n * send_parts * sizeof(float)), *recv = malloc(n * parts * sizeof(float));
    for (size_t i = 0; i < n * send_parts; i++) send[i] = 1.0f;
    for (size_t i = 0; i < n * parts; i++) recv[i] = 1.0f;
    if (rank == 0) printf("# mpi %s latency test\n%-10s%20s\n", name, "# Size", "Avg Latency(us)");
    for (size_t s = min < 4 ? 4 : min; s <= max; s *= 2) {
        int warmup = s > 8192 ? 10 : 200, iters = s > 8192 ? 100 : 2000;
        if (fixed_iters > 0) { warmup = fixed_iters / 10; iters = fixed_iters; }
        warmup *= repeat;
        iters *= repeat;
        double start = 0, mine, total;
        MPI_Barrier(MPI_COMM_WORLD);
        for (int i = 0; i < warmup + iters; i++) {
            if (i == warmup) start = MPI_Wtime();
            call(what, send, recv, (int)(s / 4));
        }
        mine = (MPI_Wtime() - start) * 1e6 / iters;
        MPI_Reduce(&mine, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) printf("%-10zu%20.2f\n", s, total / size);
    }
    free(send);
    free(recv);
}

static void barrier(int iters) {
    if (iters <= 0) iters = 2000;
    int warmup = iters / 10 * repeat;
    iters *= repeat;
    double start = 0, mine, total;
    MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 0; i < warmup + iters; i++) {
        if (i == warmup) start = MPI_Wtime();
        MPI_Barrier(MPI_COMM_WORLD);
    }
    mine = (MPI_Wtime() - start) * 1e6 / iters;
    MPI_Reduce(&mine, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("# mpi barrier latency test\n%-10s%20s\n%-10d%20.2f\n", "# Size", "Avg Latency(us)", 0, total / size);
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

static void idle(double seconds) {
    double before, used, total;
    MPI_Barrier(MPI_COMM_WORLD);
    before = cpu_seconds();
    if (rank == 0) {
        usleep((useconds_t)(seconds * 1e6));
        for (int r = 1; r < size; r++) MPI_Send(NULL, 0, MPI_CHAR, r, 0, MPI_COMM_WORLD);
    } else {
        MPI_Recv(NULL, 0, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    used = rank == 0 ? 0 : cpu_seconds() - before;
    MPI_Reduce(&used, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%d ranks blocked in a receive for %g s used %.4f CPU-seconds in all\n", size - 1, seconds, total);
}

int main(int argc, char **argv) {
    /* MPI_BENCH_THREADS=multiple asks for MPI_THREAD_MULTIPLE, the level
     * spmd's MPI backend runs at, to tell its cost from spmd's own. */
    const char *threads = getenv("MPI_BENCH_THREADS");
    if (threads && !strcmp(threads, "multiple")) {
        int provided;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    } else {
        MPI_Init(&argc, &argv);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *mode = argc > 1 ? argv[1] : "hello";
    const char *repeat_text = getenv("BENCH_REPEAT");
    if (repeat_text) {
        char *end;
        long n = strtol(repeat_text, &end, 10);
        if (*repeat_text == '\0' || *end != '\0' || n < 1 || n > 1000000) {
            if (rank == 0) fprintf(stderr, "mpi_bench: BENCH_REPEAT must be a whole number of at least 1, got \"%s\"\n", repeat_text);
            MPI_Finalize();
            return 2;
        }
        repeat = (int)n;
    }
    double arg = argc > 2 ? atof(argv[2]) : 0;
    double arg2 = argc > 3 ? atof(argv[3]) : 0, arg3 = argc > 4 ? atof(argv[4]) : 0;
    if (!strcmp(mode, "latency")) latency(arg > 0 ? (size_t)arg : 4 << 20);
    else if (!strcmp(mode, "steps")) steps();
    else if (!strcmp(mode, "bw")) streaming(arg > 0 ? (size_t)arg : 4 << 20, 0);
    else if (!strcmp(mode, "mbw_mr")) streaming(arg > 0 ? (size_t)arg : 4 << 20, 1);
    else if (!strcmp(mode, "allreduce")) collective(ALLREDUCE, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "iallreduce")) collective(IALLREDUCE, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "reduce")) collective(REDUCE, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "bcast")) collective(BCAST, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "allgather")) collective(ALLGATHER, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "alltoall")) collective(ALLTOALL, mode, arg > 0 ? (size_t)arg : 1 << 20, (size_t)arg2, (int)arg3);
    else if (!strcmp(mode, "barrier")) barrier((int)arg);
    else if (!strcmp(mode, "idle")) idle(arg > 0 ? arg : 5);
    else if (!strcmp(mode, "hello")) MPI_Barrier(MPI_COMM_WORLD); /* launch + init + barrier + finalize */
    else {
        if (rank == 0) fprintf(stderr, "mpi_bench: unknown mode \"%s\" (see the usage at the top of mpi_bench.c)\n", mode);
        MPI_Finalize();
        return 2;
    }
    MPI_Finalize();
    return 0;
}
