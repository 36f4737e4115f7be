/* The thread pool (src/base/threads.c): qd_parallel_for's static split gives part i
 * the range [n*i/parts, n*(i+1)/parts) with thread index i exactly once, and
 * qd_parallel_for_dyn covers every index exactly once in grain-aligned ranges with a
 * thread index no other running call has, for many thread counts (more threads
 * than cores), sizes and grains, over thousands of back-to-back jobs (workers that
 * wake late skip finished jobs). A worker slowed down on purpose must not hold a
 * dynamic job back: the other threads take its share. */
#include "testutil.h"
#include "base/ctx.h"
#include "base/threads.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXN 5000
#define MAXT 16

typedef struct {
    int64_t n, grain;
    int parts;
    int hits[MAXN];          /* atomic: times each index was covered */
    int part_calls[MAXT];    /* atomic: static mode, calls per part index */
    int busy[MAXT];          /* atomic: a call with this thread index is running */
    int bad;                 /* atomic: wrong range/index seen */
    int slow_index;          /* dynamic: calls from this thread index sleep (-1: none) */
    int calls_by[MAXT];      /* atomic: dynamic, calls per thread index */
} job;

static void cover(job *j, int64_t b, int64_t e, int thread) {
    if (thread < 0 || thread >= MAXT || b < 0 || e > j->n || b >= e) { __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED); return; }
    if (__atomic_exchange_n(&j->busy[thread], 1, __ATOMIC_ACQ_REL)) __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    for (int64_t i = b; i < e; i++) __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&j->calls_by[thread], 1, __ATOMIC_RELAXED);
    if (thread == j->slow_index) {
        struct timespec d = {0, 2000000};   /* 2 ms */
        nanosleep(&d, NULL);
    }
    __atomic_store_n(&j->busy[thread], 0, __ATOMIC_RELEASE);
}

static void static_fn(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    int parts = j->n < 2 ? 1 : j->parts;   /* inline: fn(arg, 0, n, 0) */
    if (thread < 0 || thread >= parts || b != j->n * thread / parts || e != j->n * (thread + 1) / parts)
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&j->part_calls[thread], 1, __ATOMIC_RELAXED);
    cover(j, b, e, thread);
}

static void dyn_fn(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    if (b % j->grain != 0 || (e - b != j->grain && e != j->n)) __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    cover(j, b, e, thread);
}

/* Runs one job; returns 1 when every index was covered once and nothing bad was seen. */
static int run(qd_ctx *ctx, int dyn, int64_t n, int64_t grain, int slow_index, job *j) {
    memset(j, 0, sizeof *j);
    j->n = n;
    j->grain = grain;
    j->parts = qd_threads(ctx);
    j->slow_index = slow_index;
    if (dyn) qd_parallel_for_dyn(ctx, n, grain, dyn_fn, j);
    else qd_parallel_for(ctx, n, static_fn, j);
    int ok = !j->bad;
    for (int64_t i = 0; i < n; i++) ok = ok && j->hits[i] == 1;
    if (!dyn && n >= 2)
        for (int p = 0; p < j->parts; p++) {
            int nonempty = n * (p + 1) / j->parts > n * p / j->parts;
            ok = ok && j->part_calls[p] == nonempty;
        }
    return ok;
}

int main(void) {
    static const int threads[] = {1, 2, 3, 7, 16};
    static const int64_t sizes[] = {0, 1, 2, 3, 5, 16, 17, 100, 1000, MAXN};
    static const int64_t grains[] = {1, 3, 64, 10000};
    job *j = malloc(sizeof *j);
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        qd_ctx *ctx = test_ctx_new(threads[t]);
        int ok_static = 1, ok_dyn = 1;
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            ok_static = ok_static && run(ctx, 0, sizes[s], 1, -1, j);
            for (size_t g = 0; g < sizeof grains / sizeof *grains; g++) ok_dyn = ok_dyn && run(ctx, 1, sizes[s], grains[g], -1, j);
        }
        check(ok_static, "%d threads: static split, part i = [n*i/parts, n*(i+1)/parts) with index i once, n = 0..%d",
              threads[t], MAXN);
        check(ok_dyn, "%d threads: dynamic split covers every index once in grain-aligned ranges, distinct running "
              "thread indices, n = 0..%d, grain 1..10000", threads[t], MAXN);
        /* back-to-back small jobs: workers often wake after the job's work is all claimed */
        int ok_many = 1;
        for (int r = 0; r < 3000 && ok_many; r++) ok_many = run(ctx, r % 2, 2 + r % 29, 1 + r % 4, -1, j);
        check(ok_many, "%d threads: 3000 back-to-back small jobs (static and dynamic) each covered exactly once", threads[t]);
        qd_ctx_free(ctx);
    }
    /* one slow thread (every call of thread index 1 sleeps 2 ms; 200 grains of no work):
     * under dynamic claiming the others take the rest, so index 1 runs few calls */
    qd_ctx *c2 = test_ctx_new(2);
    int ok = run(c2, 1, 200, 1, 1, j);
    check(ok && j->calls_by[1] <= 50 && j->calls_by[0] >= 150,
          "2 threads, a worker slowed to 2 ms per call: the caller ran %d of 200 grains, the worker %d (<= 50; a static split: 100)",
          j->calls_by[0], j->calls_by[1]);
    qd_ctx_free(c2);
    free(j);
    return test_summary();
}
