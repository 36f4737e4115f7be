/* A small persistent thread pool: one parallel_for is all the library needs. */
#ifndef QD_BASE_THREADS_H
#define QD_BASE_THREADS_H

#include <stdint.h>
#include "base/ctx.h"

/* fn(arg, begin, end, thread_index) is called on disjoint ranges covering [0, n).
 * Static split: part i of qd_threads(ctx) parts is [n*i/parts, n*(i+1)/parts) and is
 * always called with thread_index i, exactly once (empty parts are skipped), so a
 * function may keep per-index scratch or partial sums. Which thread runs a part is
 * not fixed (the caller takes the parts of workers that have not started), so parts
 * must not wait for each other. Runs inline (fn(arg, 0, n, 0)) when n < 2 or the
 * context has one thread. */
typedef void (*qd_range_fn)(void *arg, int64_t begin, int64_t end, int thread);
void qd_parallel_for(qd_ctx *ctx, int64_t n, qd_range_fn fn, void *arg);

/* Dynamic split: the threads claim [b, b + grain) ranges (the last one shorter) in
 * increasing b until none is left, so a thread that starts late or runs slower
 * takes fewer. thread_index is the running thread (0 = caller, < qd_threads(ctx)):
 * distinct among calls running at the same time, for per-thread scratch; which
 * ranges a thread gets varies, so results must not depend on it. One thread: the
 * ranges in order on the caller. */
void qd_parallel_for_dyn(qd_ctx *ctx, int64_t n, int64_t grain, qd_range_fn fn, void *arg);

/* Dynamic split whose claims shrink towards the end: each is about 1/(2*threads) of the
 * indices not yet claimed, rounded up to a multiple of align, at most grain (rounded down
 * to a multiple of align, at least align); the last range ends at n. A short job's
 * threads then finish within one small claim of each other, while the first claims stay
 * at grain. thread_index as in qd_parallel_for_dyn; one thread: ranges of grain in order. */
void qd_parallel_for_guided(qd_ctx *ctx, int64_t n, int64_t grain, int64_t align, qd_range_fn fn, void *arg);

/* Number of threads parallel_for may use (>= 1). */
int qd_threads(const qd_ctx *ctx);

void qd_pool_destroy(qd_pool *pool);

/* How the pool's threads found their jobs (tests, benchmarks): counts since the pool
 * was created. qd_set_thread_spin (qdiff.h) sets the polling window. */
typedef struct {
    uint64_t jobs_polled;       /* a worker saw the job while polling (no wake-up needed) */
    uint64_t jobs_woken;        /* a worker had blocked and was woken */
    uint64_t spins_preempted;   /* polling cut short: the thread had been descheduled */
    uint64_t spins_skipped;     /* no polling: paused after such a cut */
    uint64_t spins_timed_out;   /* the window ran out without a job (or the workers' end) */
    int workers_blocked;        /* now: workers blocked until the next job */
    int spin_us;                /* now: the polling window set (0: off) */
} qd_pool_stats;

/* Fills *out and returns 1; 0 (out untouched) while the context has no pool. */
int qd_pool_get_stats(qd_ctx *ctx, qd_pool_stats *out);

#endif
