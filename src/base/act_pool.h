/* The step arena: the activation buffers of a model forward come from one reusable
 * buffer instead of malloc/free per op. A sampler runs the same forward with the same
 * shapes every step, so the allocations repeat exactly: the first forward (between
 * qd_act_begin and qd_act_end) runs on malloc and records each buffer's size and
 * lifetime; qd_act_end then plans offsets in one arena (greedy by size: buffers whose
 * lifetimes overlap never share bytes) and every later forward that makes the same
 * requests in the same order is served from it: no malloc, no page faults, and the
 * memory held is the planned peak. Each event of a replayed forward is checked against
 * the recording; at the first difference (other shapes, an error path) the rest of
 * that forward falls back to malloc and is recorded for a new plan. The arena is 2 MB
 * aligned and advised as transparent huge pages. qd_act_trim() frees it (txt2img does
 * before the VAE decode); the plan stays, so the next forward allocates it again. */
#ifndef QD_BASE_ACT_POOL_H
#define QD_BASE_ACT_POOL_H

#include <stddef.h>
#include "base/ctx.h"

/* Bracket one forward pass. Every buffer qd_act_alloc hands out inside must be given
 * back with qd_act_free before qd_act_end. Calls nest (only the outermost counts). */
void qd_act_begin(qd_ctx *ctx);
void qd_act_end(qd_ctx *ctx);

/* A 64-byte aligned buffer of at least `bytes` bytes (contents undefined), or NULL with
 * an out-of-memory error recorded in ctx. Outside begin/end: plain aligned malloc. */
void *qd_act_alloc(qd_ctx *ctx, size_t bytes);
static inline float *qd_act_floats(qd_ctx *ctx, int64_t n) {
    return (float *)qd_act_alloc(ctx, sizeof(float) * (size_t)(n > 0 ? n : 1));
}
/* Gives a buffer from qd_act_alloc back (NULL is ignored). */
void qd_act_free(qd_ctx *ctx, void *p);
/* Frees the arena (not the plan). */
void qd_act_trim(qd_ctx *ctx);

typedef struct {
    size_t held;        /* bytes of the arena now */
    size_t planned;     /* bytes the current plan needs */
    size_t peak_live;   /* most bytes live at once in the recorded forward */
    long fresh, reused; /* requests served by malloc / by the arena, since the pool was created */
    long plans;         /* plans made (1 when every forward after the first replayed) */
} qd_act_stats;
void qd_act_get_stats(qd_ctx *ctx, qd_act_stats *s);

/* For qd_ctx_free. */
void qd_act_pool_destroy(qd_ctx *ctx);

#endif
