#include "base/ctx.h"
#include "base/threads.h"
#include "base/act_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

qd_ctx *qd_ctx_new(int n_threads) {
    qd_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    ctx->n_threads = n_threads;
    ctx->precision = QD_PRECISION_AUTO;   /* bf16 where the CPU has it: see qdiff.h */
    return ctx;
}

void qd_ctx_free(qd_ctx *ctx) {
    if (!ctx) return;
    qd_pool_destroy(ctx->pool);
    qd_act_pool_destroy(ctx);
    free(ctx);
}

int qd_ctx_threads(const qd_ctx *ctx) { return ctx->n_threads; }
const char *qd_last_error(const qd_ctx *ctx) { return ctx->err; }
void qd_set_log(qd_ctx *ctx, qd_log_fn fn, void *user) { ctx->log = fn; ctx->log_user = user; }
void qd_cancel(qd_ctx *ctx) { __atomic_store_n(&ctx->cancel, 1, __ATOMIC_RELAXED); }

qd_status qd_fail(qd_ctx *ctx, qd_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
    va_end(ap);
    return code == QD_OK ? QD_ERR_ARG : code;
}

qd_status qd_fail_prefix(qd_ctx *ctx, qd_status code, const char *fmt, ...) {
    char prefix[512], old[sizeof ctx->err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, ctx->err, sizeof old);
    snprintf(ctx->err, sizeof ctx->err, "%s: %s", prefix, old);
    return code == QD_OK ? QD_ERR_ARG : code;
}

void qd_op_failed(qd_ctx *ctx, const char *what) {
    if (!__atomic_exchange_n(&ctx->op_failed, 1, __ATOMIC_RELAXED))
        qd_fail(ctx, QD_ERR_NOMEM, "out of memory for %s scratch", what);
}

qd_status qd_op_status(qd_ctx *ctx) {
    return __atomic_exchange_n(&ctx->op_failed, 0, __ATOMIC_RELAXED) ? QD_ERR_NOMEM : QD_OK;
}

static void emit(qd_ctx *ctx, int level, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (ctx && ctx->log) ctx->log(ctx->log_user, level, msg);
    else if (level <= QD_LOG_WARN) fprintf(stderr, "qdiff: warning: %s\n", msg);
}

void qd_warn(qd_ctx *ctx, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); emit(ctx, QD_LOG_WARN, fmt, ap); va_end(ap);
}

void qd_info(qd_ctx *ctx, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); emit(ctx, QD_LOG_INFO, fmt, ap); va_end(ap);
}

void *qd_malloc(qd_ctx *ctx, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) qd_fail(ctx, QD_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *qd_calloc(qd_ctx *ctx, size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) qd_fail(ctx, QD_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *qd_malloc_aligned(qd_ctx *ctx, size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) p = NULL;
    if (!p) qd_fail(ctx, QD_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

double qd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void qd_set_precision(qd_ctx *ctx, int precision) {
    if (ctx && precision >= QD_PRECISION_AUTO && precision <= QD_PRECISION_BF16) ctx->precision = precision;
}

void qd_set_vae_tiling(qd_ctx *ctx, int tile_px, int overlap_px) {
    if (!ctx) return;
    ctx->vae_tile_px = tile_px < 0 ? 0 : tile_px == 0 ? -1 : tile_px;
    ctx->vae_tile_overlap = overlap_px < 0 ? 0 : overlap_px;
}

int qd_ctx_bf16(const qd_ctx *ctx) {
    /* The bf16 GEMM kernels need AVX512_BF16; QD_ISA=avx2|generic (forcing a lower GEMM
     * kernel, for tests) rules them out too. AUTO takes bf16 wherever it can. */
    static int has = -1;
    if (has < 0) {
        const char *force = getenv("QD_ISA");
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") &&
              !(force && (strcmp(force, "avx2") == 0 || strcmp(force, "generic") == 0));
    }
    return ctx && has && (ctx->precision == QD_PRECISION_BF16 || ctx->precision == QD_PRECISION_AUTO);
}

int qd_ctx_precision(const qd_ctx *ctx) { return qd_ctx_bf16(ctx) ? QD_PRECISION_BF16 : QD_PRECISION_FP32; }
