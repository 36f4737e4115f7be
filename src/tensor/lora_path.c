/* See lora_path.h: decode() wrapped to add a LoRA's low-rank delta. */
#include "tensor/lora_path.h"

#include <stdlib.h>

/* o[0..n) += sum_j b[j] * a_j[0..n), a_j = A + j * lda */
static void add_low_rank(float *restrict o, const float *restrict b, const float *restrict A, int64_t lda, int64_t rank,
                         int64_t n) {
    for (int64_t j = 0; j < rank; j++) {
        float bj = b[j];
        if (bj == 0.0f) continue;   /* rows of a fused weight outside this LoRA part */
        const float *restrict a = A + j * lda;
        for (int64_t k = 0; k < n; k++) o[k] += bj * a[k];
    }
}

__attribute__((target("avx2,fma")))
static void add_low_rank_avx2(float *restrict o, const float *restrict b, const float *restrict A, int64_t lda,
                              int64_t rank, int64_t n) {
    for (int64_t j = 0; j < rank; j++) {
        float bj = b[j];
        if (bj == 0.0f) continue;
        const float *restrict a = A + j * lda;
        for (int64_t k = 0; k < n; k++) o[k] += bj * a[k];
    }
}

static int have_avx2(void) {
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return v;
}

static void lora_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const qd_lora_delta *d = w->lora;
    d->base_decode(w, r0, nr, k0, nk, dst, ld);
    int avx2 = have_avx2();
    for (int64_t r = 0; r < nr; r++) {
        const float *b = d->B + (r0 + r) * d->rank;
        if (avx2) add_low_rank_avx2(dst + r * ld, b, d->A + k0, w->cols, d->rank, nk);
        else add_low_rank(dst + r * ld, b, d->A + k0, w->cols, d->rank, nk);
    }
}

qd_status qd_lora_delta_attach(qd_ctx *ctx, qd_weight *w, float *A, float *B, int64_t rank) {
    if (w->lora) {
        free(A);
        free(B);
        return qd_fail(ctx, QD_ERR_ARG, "a LoRA is already attached to this weight");
    }
    qd_lora_delta *d = calloc(1, sizeof *d);
    if (!d) {
        free(A);
        free(B);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    d->rank = rank;
    d->A = A;
    d->B = B;
    d->base_decode = w->decode;
    d->base_linear = w->linear;
    w->lora = d;
    w->linear = NULL;   /* the format's own matmul would not see the delta */
    w->decode = lora_decode;
    return QD_OK;
}

void qd_lora_delta_detach(qd_weight *w) {
    qd_lora_delta *d = w->lora;
    if (!d) return;
    w->decode = d->base_decode;
    w->linear = d->base_linear;
    w->lora = NULL;
    free(d->A);
    free(d->B);
    free(d);
}
