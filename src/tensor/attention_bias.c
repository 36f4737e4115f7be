#include "tensor/attention_bias.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "base/threads.h"

#include <stdlib.h>
#include <string.h>

/* One task per (batch, head, block of queries): the score block fits in cache. */
#define QBLOCK 128

typedef struct {
    const float *q, *k, *v, *bias;
    int64_t ldq, ldk, ldv, Lq, Lk, dh, qblocks;
    int heads;
    float scale;
    float *out;
    float **scratch;
    int failed;
} ab_args;

static void ab_part(void *arg, int64_t b, int64_t e, int thread) {
    const ab_args *a = arg;
    float *s = a->scratch[thread];
    int64_t ldo = a->heads * a->dh;
    for (int64_t task = b; task < e; task++) {
        int64_t qb = task % a->qblocks, bh = task / a->qblocks;
        int64_t h = bh % a->heads, bi = bh / a->heads;
        int64_t q0 = qb * QBLOCK, nq = a->Lq - q0 < QBLOCK ? a->Lq - q0 : QBLOCK;
        const float *q = a->q + (bi * a->Lq + q0) * a->ldq + h * a->dh;
        const float *k = a->k + bi * a->Lk * a->ldk + h * a->dh;
        const float *v = a->v + bi * a->Lk * a->ldv + h * a->dh;
        float *o = a->out + (bi * a->Lq + q0) * ldo + h * a->dh;
        /* scores = bias + scale * q k^T: the bias goes in first and the GEMM accumulates (beta 1) */
        float beta = 0.0f;
        if (a->bias) {
            memcpy(s, a->bias + (h * a->Lq + q0) * a->Lk, sizeof(float) * (size_t)(nq * a->Lk));
            beta = 1.0f;
        }
        int rc = qd_gemm_serial(nq, a->Lk, a->dh, qd_rows(q, a->ldq), qd_rows(k, a->ldk), s, a->Lk, a->scale, beta,
                                NULL, NULL);
        if (!rc) qd_softmax_rows(s, nq, a->Lk);
        if (!rc) rc = qd_gemm_serial(nq, a->dh, a->Lk, qd_rows(s, a->Lk), qd_cols(v, a->ldv), o, ldo, 1.0f, 0.0f, NULL, NULL);
        if (rc) {
            __atomic_store_n(&((ab_args *)arg)->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

qd_status qd_attention_bias(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                            const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads,
                            int64_t dh, float scale, const float *bias, float *out) {
    if (B <= 0 || Lq <= 0 || Lk <= 0 || heads <= 0 || dh <= 0) return QD_OK;
    double t0 = ctx->trace ? qd_now() : 0;
    int nt = qd_threads(ctx);
    float **scratch = calloc((size_t)nt, sizeof *scratch);
    int ok = scratch != NULL;
    for (int i = 0; ok && i < nt; i++) ok = (scratch[i] = malloc(sizeof(float) * (size_t)(QBLOCK * Lk))) != NULL;
    if (ok) {
        int64_t qblocks = (Lq + QBLOCK - 1) / QBLOCK;
        ab_args a = {q, k, v, bias, ldq, ldk, ldv, Lq, Lk, dh, qblocks, heads, scale, out, scratch, 0};
        qd_parallel_for(ctx, B * heads * qblocks, ab_part, &a);
        ok = !a.failed;
    }
    for (int i = 0; scratch && i < nt; i++) free(scratch[i]);
    free(scratch);
    if (!ok) return qd_fail(ctx, QD_ERR_NOMEM, "attention: out of memory (%lld keys)", (long long)Lk);
    if (ctx->trace) {
        int64_t d[6] = {B, heads, Lq, Lk, dh, 0};
        ctx->trace(ctx->trace_user, "attention", d, 6, qd_now() - t0);
    }
    return QD_OK;
}
