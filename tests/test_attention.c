/* qd_attention (flash-style, src/tensor/attention.c) against a naive double-precision
 * softmax(q k^T / sqrt(dh)) v written here: head sizes 64, 128, 40 (not a multiple of
 * 16) and 160, odd and unequal lengths (1, 77, 97, 300 keys: partial key and query
 * blocks), batch 2 with several heads and row strides wider than heads * dh (fused
 * qkv buffers), the causal mask, and large score ranges (the online softmax's
 * rescaling). Both the AVX-512 and the plain C kernels (QD_ISA=generic). fp32 bound:
 * rel_l2 <= 2e-6 and max-abs <= 1e-5 of max |ref| (fp32 sums over <= 300 keys and
 * the exp polynomial's 2e-7). */
#include "testutil.h"
#include "base/ctx.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }
static float frand(uint32_t *s) { return (float)lcg(s) / 8388608.0f - 1.0f; }

static void reference(const float *q, int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t B,
                      int64_t Lq, int64_t Lk, int heads, int64_t dh, int causal, float *out) {
    double *s = malloc(sizeof(double) * (size_t)Lk);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < Lq; i++) {
                double mx = -INFINITY;
                int64_t n = causal && i + 1 < Lk ? i + 1 : Lk;
                for (int64_t j = 0; j < n; j++) {
                    double a = 0;
                    for (int64_t d = 0; d < dh; d++)
                        a += (double)q[(b * Lq + i) * ldq + h * dh + d] * k[(b * Lk + j) * ldk + h * dh + d];
                    s[j] = a / sqrt((double)dh);
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < n; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                for (int64_t d = 0; d < dh; d++) {
                    double a = 0;
                    for (int64_t j = 0; j < n; j++) a += s[j] * v[(b * Lk + j) * ldv + h * dh + d];
                    out[(b * Lq + i) * heads * dh + h * dh + d] = (float)(a / sum);
                }
            }
    free(s);
}

typedef struct { int64_t B, Lq, Lk; int heads; int64_t dh; int causal, pad; float amp; } att_case;

static void run_case(qd_ctx *ctx, const att_case *c, const char *isa, double tol, double abs_frac) {
    int64_t D = c->heads * c->dh, ld = D + c->pad;
    uint32_t seed = (uint32_t)(c->Lq * 131 + c->Lk * 7 + c->dh);
    size_t nq = (size_t)(c->B * c->Lq * ld), nk = (size_t)(c->B * c->Lk * ld), no = (size_t)(c->B * c->Lq * D);
    float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nk);
    float *o = malloc(sizeof(float) * no), *r = malloc(sizeof(float) * no);
    for (size_t i = 0; i < nq; i++) q[i] = frand(&seed) * c->amp;
    for (size_t i = 0; i < nk; i++) { k[i] = frand(&seed) * c->amp; v[i] = frand(&seed); }
    qd_attention(ctx, q, ld, k, ld, v, ld, c->B, c->Lq, c->Lk, c->heads, c->dh, c->causal, o);
    reference(q, ld, k, ld, v, ld, c->B, c->Lq, c->Lk, c->heads, c->dh, c->causal, r);
    char what[200];
    snprintf(what, sizeof what, "%s: B=%lld Lq=%lld Lk=%lld heads=%d dh=%lld%s%s, score scale %g", isa,
             (long long)c->B, (long long)c->Lq, (long long)c->Lk, c->heads, (long long)c->dh,
             c->causal ? " causal" : "", c->pad ? " strided" : "", (double)(c->amp * c->amp));
    check_close(what, o, r, no, tol, abs_frac);
    free(q); free(k); free(v); free(o); free(r);
}

int main(void) {
    static const att_case cases[] = {
        {2, 97, 97, 3, 64, 0, 0, 1.0f},   {2, 97, 77, 2, 64, 0, 5, 1.0f},   {1, 300, 300, 2, 40, 0, 3, 1.0f},
        {1, 130, 130, 2, 128, 1, 0, 1.0f}, {2, 77, 77, 4, 64, 1, 8, 1.0f},  {1, 1, 1, 1, 64, 0, 0, 1.0f},
        {1, 5, 300, 1, 160, 0, 0, 1.0f},  {1, 200, 257, 2, 64, 0, 0, 4.0f}, {1, 97, 97, 1, 40, 1, 1, 4.0f},
    };
    qd_ctx *ctx = test_ctx_new(2);
    size_t n = sizeof cases / sizeof *cases;
    for (size_t i = 0; i < n; i++) run_case(ctx, &cases[i], "fp32 avx512 (or best)", 2e-6, 1e-5);
    setenv("QD_ISA", "generic", 1);
    for (size_t i = 0; i < n; i++) run_case(ctx, &cases[i], "fp32 generic", 2e-6, 1e-5);
    unsetenv("QD_ISA");
    /* bf16 operands (q, k, probabilities, v rounded to 8 significant bits: 2^-9 relative
     * each), fp32 accumulation and statistics. Bound: rel_l2 <= 1e-2 and max-abs <= 4e-2
     * of max |ref|, a few times the ~3e-3 that rounding q k^T's operands and P, V gives
     * at score scales up to 16 (measured 1.4e-3 .. 4.8e-3). */
    /* >= 16 blocks of 128 queries per head: bf16 K and V are converted once per call
     * (partial query and key blocks, causal, odd head size, strided rows) */
    static const att_case long_q[] = {
        {1, 2049, 203, 2, 40, 0, 3, 4.0f}, {2, 2050, 2050, 1, 24, 1, 0, 1.0f}, {1, 2048, 97, 1, 25, 0, 0, 1.0f},
    };
    qd_set_precision(ctx, QD_PRECISION_BF16);
    if (qd_ctx_bf16(ctx)) {
        for (size_t i = 0; i < n; i++) run_case(ctx, &cases[i], "bf16", 1e-2, 4e-2);
        for (size_t i = 0; i < sizeof long_q / sizeof *long_q; i++) run_case(ctx, &long_q[i], "bf16", 1e-2, 4e-2);
    } else
        printf("skip bf16 attention (CPU lacks AVX512_BF16)\n");
    qd_set_precision(ctx, QD_PRECISION_FP32);
    qd_ctx_free(ctx);
    return test_summary();
}
