#include "tensor/ops.h"
#include "tensor/gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Multi-head attention: one task per (batch, head, block of queries). */

#define ATT_QBLOCK 128

typedef struct {
    const float *q, *k, *v; int64_t ldq, ldk, ldv;
    int64_t Lq, Lk, dh; int heads; int causal; float *out; int64_t qblocks;
    float **scratch;
    int failed;
} att_args;

static void att_part(void *arg, int64_t b, int64_t e, int thread) {
    const att_args *a = arg;
    float *s = a->scratch[thread];
    float scale = 1.0f / sqrtf((float)a->dh);
    int64_t ldo = a->heads * a->dh;
    for (int64_t task = b; task < e; task++) {
        int64_t qb = task % a->qblocks, bh = task / a->qblocks;
        int64_t h = bh % a->heads, bi = bh / a->heads;
        int64_t q0 = qb * ATT_QBLOCK, nq = a->Lq - q0 < ATT_QBLOCK ? a->Lq - q0 : ATT_QBLOCK;
        const float *q = a->q + (bi * a->Lq + q0) * a->ldq + h * a->dh;
        const float *k = a->k + bi * a->Lk * a->ldk + h * a->dh;
        const float *v = a->v + bi * a->Lk * a->ldv + h * a->dh;
        float *o = a->out + (bi * a->Lq + q0) * ldo + h * a->dh;
        if (qd_gemm_serial(nq, a->Lk, a->dh, qd_rows(q, a->ldq), qd_rows(k, a->ldk), s, a->Lk, scale, 0.0f, NULL, NULL)) {
            __atomic_store_n(&((att_args *)arg)->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        if (a->causal)
            for (int64_t i = 0; i < nq; i++)
                for (int64_t j = q0 + i + 1; j < a->Lk; j++) s[i * a->Lk + j] = -INFINITY;
        qd_softmax_rows(s, nq, a->Lk);
        if (qd_gemm_serial(nq, a->dh, a->Lk, qd_rows(s, a->Lk), qd_cols(v, a->ldv), o, ldo, 1.0f, 0.0f, NULL, NULL)) {
            __atomic_store_n(&((att_args *)arg)->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

void qd_attention(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                  const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads, int64_t dh,
                  int causal, float *out) {
    double t0 = ctx->trace ? qd_now() : 0;
    int t = qd_threads(ctx);
    float **scratch = calloc((size_t)t, sizeof(float *));
    int ok = scratch != NULL;
    for (int i = 0; ok && i < t; i++) ok = (scratch[i] = malloc(sizeof(float) * (size_t)(ATT_QBLOCK * Lk))) != NULL;
    int64_t qblocks = (Lq + ATT_QBLOCK - 1) / ATT_QBLOCK;
    att_args a = {q, k, v, ldq, ldk, ldv, Lq, Lk, dh, heads, causal, out, qblocks, scratch, 0};
    if (ok) qd_parallel_for(ctx, B * heads * qblocks, att_part, &a);
    if (!ok || a.failed) qd_op_failed(ctx, "attention");
    for (int i = 0; scratch && i < t; i++) free(scratch[i]);
    free(scratch);
    if (ctx->trace) {
        int64_t d[6] = {B, heads, Lq, Lk, dh, causal};
        ctx->trace(ctx->trace_user, "attention", d, 6, qd_now() - t0);
    }
}
