/* The context every library call carries: thread count, error text, log sink,
 * cancel flag. No global mutable state lives anywhere else. */
#ifndef QD_BASE_CTX_H
#define QD_BASE_CTX_H

#include <stddef.h>
#include <stdint.h>
#include "qdiff.h"

typedef struct qd_pool qd_pool;
typedef struct qd_act_pool qd_act_pool;

/* Op trace for benchmarks: op is "conv2d", "linear" or "attention" (dims as documented
 * at each call site in tensor/ops.c), or one of the passes between them: "group_norm",
 * "layer_norm", "geglu", "silu" (tensor/norm_act.c), "add", "copy" (model code); seconds
 * is the op's wall time. */
typedef void (*qd_trace_fn)(void *user, const char *op, const int64_t *dims, int ndims, double seconds);
double qd_now(void);   /* monotonic seconds */

struct qd_ctx {
    int n_threads;
    qd_pool *pool;              /* created lazily by qd_parallel_for */
    char err[2048];             /* last error message */
    qd_log_fn log;              /* may be NULL: then warnings go to stderr */
    void *log_user;
    volatile int cancel;        /* set by qd_cancel(); checked between steps */
    volatile int op_failed;     /* an op without a status return could not allocate scratch */
    qd_trace_fn trace;          /* benchmarks: called after every conv/linear/attention */
    void *trace_user;
    int matmul_mode;            /* SDNQ layers: 0 as the model's config asks, 1 exact, 2 int8 (qd_set_matmul) */
    int precision;              /* QD_PRECISION_* (qd_set_precision); read it through qd_ctx_bf16() */
    /* While a single-file checkpoint is opened as a model (pipeline/model.c): the
     * components it holds take their weights from it (models/params.c); else NULL. */
    const struct qd_single_file *weights_from;
    int vae_tile_px;            /* qd_set_vae_tiling: 0 automatic (the default), -1 never, else the tile side in pixels */
    int vae_tile_overlap;       /* pixels; 0 = the default */
    qd_act_pool *acts;          /* step arena (base/act_pool.h), created by the first qd_act_alloc */
};

/* Record an error: formats into ctx->err and returns `code` (never QD_OK). */
qd_status qd_fail(qd_ctx *ctx, qd_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the current error message with "prefix: " (adds context on the way up). */
qd_status qd_fail_prefix(qd_ctx *ctx, qd_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Ops that return nothing (GEMM, conv, attention) report a failed scratch
 * allocation here; model code turns it into an error with qd_op_status(). */
void qd_op_failed(qd_ctx *ctx, const char *what);
qd_status qd_op_status(qd_ctx *ctx);   /* QD_ERR_NOMEM once after a failure, else QD_OK */

/* Warnings and info go through the context's log sink. */
void qd_warn(qd_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qd_info(qd_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Whether dense math runs with bf16 operands: the precision asks for it (or AUTO
 * chooses it) and the CPU has AVX512_BF16. */
int qd_ctx_bf16(const qd_ctx *ctx);

/* Allocation that records an error on failure. */
void *qd_malloc(qd_ctx *ctx, size_t n);
void *qd_calloc(qd_ctx *ctx, size_t count, size_t size);
/* 64-byte aligned, free with free(). */
void *qd_malloc_aligned(qd_ctx *ctx, size_t n);

#define QD_TRY(expr) do { qd_status s__ = (expr); if (s__ != QD_OK) return s__; } while (0)

#endif
