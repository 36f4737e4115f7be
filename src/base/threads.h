/* A small persistent thread pool: one parallel_for is all the library needs. */
#ifndef QD_BASE_THREADS_H
#define QD_BASE_THREADS_H

#include <stdint.h>
#include "base/ctx.h"

/* fn(arg, begin, end, thread_index) is called on disjoint ranges covering [0, n).
 * Ranges are contiguous chunks, one per thread (static split). Runs inline when
 * n is small or the context has one thread. */
typedef void (*qd_range_fn)(void *arg, int64_t begin, int64_t end, int thread);
void qd_parallel_for(qd_ctx *ctx, int64_t n, qd_range_fn fn, void *arg);

/* Number of threads parallel_for may use (>= 1). */
int qd_threads(const qd_ctx *ctx);

void qd_pool_destroy(qd_pool *pool);

#endif
