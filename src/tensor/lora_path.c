/* See lora_path.h: decode() wrapped to add a LoRA's low-rank delta. */
#include "tensor/lora_path.h"
#include "tensor/gemm.h"

#include <immintrin.h>
#include <stdlib.h>

/* o[0..n) += sum_j b[j] * a_j[0..n), a_j = A + j * lda. The vector versions keep a chunk
 * of o in registers across all rank terms (A's block is small enough to stay in L1). */
static void add_low_rank(float *restrict o, const float *restrict b, const float *restrict A, int64_t lda, int64_t rank,
                         int64_t n) {
    for (int64_t j = 0; j < rank; j++) {
        float bj = b[j];
        if (bj == 0.0f) continue;   /* rows of a fused weight outside this LoRA part */
        const float *restrict a = A + j * lda;
        for (int64_t k = 0; k < n; k++) o[k] += bj * a[k];
    }
}

__attribute__((target("avx512f")))
static void add_low_rank_avx512(float *restrict o, const float *restrict b, const float *restrict A, int64_t lda,
                                int64_t rank, int64_t n) {
    for (int64_t k = 0; k < n; k += 32) {   /* full masks but at the tail */
        __mmask16 m0 = (__mmask16)(n - k >= 16 ? 0xFFFF : (1u << (n - k)) - 1);
        __mmask16 m1 = (__mmask16)(n - k > 16 ? (1u << (n - k - 16 >= 16 ? 16 : n - k - 16)) - 1 : 0);
        __m512 s0 = _mm512_maskz_loadu_ps(m0, o + k), s1 = _mm512_maskz_loadu_ps(m1, o + k + 16);
        for (int64_t j = 0; j < rank; j++) {
            __m512 bj = _mm512_set1_ps(b[j]);
            s0 = _mm512_fmadd_ps(bj, _mm512_maskz_loadu_ps(m0, A + j * lda + k), s0);
            s1 = _mm512_fmadd_ps(bj, _mm512_maskz_loadu_ps(m1, A + j * lda + k + 16), s1);
        }
        _mm512_mask_storeu_ps(o + k, m0, s0);
        _mm512_mask_storeu_ps(o + k + 16, m1, s1);
    }
}

__attribute__((target("avx2,fma")))
static void add_low_rank_avx2(float *restrict o, const float *restrict b, const float *restrict A, int64_t lda,
                              int64_t rank, int64_t n) {
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m256 s0 = _mm256_loadu_ps(o + k), s1 = _mm256_loadu_ps(o + k + 8);
        for (int64_t j = 0; j < rank; j++) {
            __m256 bj = _mm256_set1_ps(b[j]);
            s0 = _mm256_fmadd_ps(bj, _mm256_loadu_ps(A + j * lda + k), s0);
            s1 = _mm256_fmadd_ps(bj, _mm256_loadu_ps(A + j * lda + k + 8), s1);
        }
        _mm256_storeu_ps(o + k, s0);
        _mm256_storeu_ps(o + k + 8, s1);
    }
    if (k < n) add_low_rank(o + k, b, A + k, lda, rank, n - k);
}

enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512 };

static int pick_isa(void) {
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") ? ISA_AVX512
            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? ISA_AVX2 : ISA_GENERIC;
    }
    return v;
}

static void lora_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const qd_lora_delta *d = w->lora;
    d->base_decode(w, r0, nr, k0, nk, dst, ld);
    int isa = pick_isa();
    for (int64_t r = 0; r < nr; r++) {
        const float *b = d->B + (r0 + r) * d->rank;
        float *o = dst + r * ld;
        const float *a = d->A + k0;
        if (isa == ISA_AVX512) add_low_rank_avx512(o, b, a, w->cols, d->rank, nk);
        else if (isa == ISA_AVX2) add_low_rank_avx2(o, b, a, w->cols, d->rank, nk);
        else add_low_rank(o, b, a, w->cols, d->rank, nk);
    }
}

/* qd_linear's hook: few tokens (M (rows + cols) < rows cols) make the side path
 * y = base(x) + (x A^T) B^T cheaper than adding B.A to every decoded tile; so does a
 * format's own linear (SDNQ int8), which then keeps running. Otherwise 0: qd_linear runs
 * the GEMM over the delta-adding decode(). */
static int lora_linear(qd_ctx *ctx, const qd_weight *w, const float *x, int64_t M, const float *bias, float *y) {
    const qd_lora_delta *d = w->lora;
    qd_weight base = *w;
    base.decode = d->base_decode;
    base.linear = d->base_linear;
    base.decode_lowp = d->base_decode_lowp;
    base.decode_kmajor = d->base_decode_kmajor;
    base.decode_base = d->base_decode_base;
    base.lora = NULL;
    int done = base.linear && base.linear(ctx, &base, x, M, bias, y);
    if (!done && M * (w->rows + w->cols) >= w->rows * w->cols) return 0;
    float *t = qd_malloc(ctx, sizeof(float) * (size_t)(M * d->rank));
    if (!t) {
        qd_op_failed(ctx, "LoRA side path");
        return 1;
    }
    if (!done) qd_gemm(ctx, M, w->rows, w->cols, qd_rows(x, w->cols), qd_wmat(&base), y, w->rows, 1.0f, 0.0f, NULL, bias);
    qd_gemm(ctx, M, d->rank, w->cols, qd_rows(x, w->cols), qd_rows(d->A, w->cols), t, d->rank, 1.0f, 0.0f, NULL, NULL);
    qd_gemm(ctx, M, w->rows, d->rank, qd_rows(t, d->rank), qd_rows(d->B, d->rank), y, w->rows, 1.0f, 1.0f, NULL, NULL);
    free(t);
    return 1;
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
    /* the format's other decoders (bf16 SVD term, k-major panels, base without the
     * low-rank term for the GEMM's side path) would skip the delta */
    d->base_decode_lowp = w->decode_lowp;
    d->base_decode_kmajor = w->decode_kmajor;
    d->base_decode_base = w->decode_base;
    w->decode_lowp = NULL;
    w->decode_kmajor = NULL;
    w->decode_base = NULL;
    w->lora = d;
    w->linear = lora_linear;   /* the format's own matmul (if any) runs from there, plus the side path */
    w->decode = lora_decode;
    return QD_OK;
}

void qd_lora_delta_detach(qd_weight *w) {
    qd_lora_delta *d = w->lora;
    if (!d) return;
    w->decode = d->base_decode;
    w->linear = d->base_linear;
    w->decode_lowp = d->base_decode_lowp;
    w->decode_kmajor = d->base_decode_kmajor;
    w->decode_base = d->base_decode_base;
    w->lora = NULL;
    free(d->A);
    free(d->B);
    free(d);
}
