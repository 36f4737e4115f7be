/* GEMM against a double-precision triple loop, for every operand kind, odd sizes
 * that exercise edge tiles, alpha/beta/bias, and each ISA kernel the CPU has. */
#include "testutil.h"
#include "tensor/gemm.h"
#include "tensor/weight.h"
#include "base/half.h"

#include <stdlib.h>
#include <string.h>

static float frand(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f; }

static void run(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, int kindA, int kindB, float alpha, float beta, int bias) {
    unsigned seed = (unsigned)(M * 31 + N * 7 + K + kindA * 3 + kindB);
    float *a = malloc(sizeof(float) * (size_t)(M * K)), *b = malloc(sizeof(float) * (size_t)(N * K));
    uint16_t *b16 = malloc(2 * (size_t)(N * K));
    float *c = malloc(sizeof(float) * (size_t)(M * N)), *ref = malloc(sizeof(float) * (size_t)(M * N));
    float *rb = malloc(sizeof(float) * (size_t)M), *cb = malloc(sizeof(float) * (size_t)N);
    for (int64_t i = 0; i < M * K; i++) a[i] = frand(&seed);
    for (int64_t i = 0; i < N * K; i++) { b16[i] = qd_f32_to_f16(frand(&seed)); b[i] = qd_f16_to_f32(b16[i]); }
    for (int64_t i = 0; i < M * N; i++) c[i] = ref[i] = frand(&seed);
    for (int64_t i = 0; i < M; i++) rb[i] = frand(&seed);
    for (int64_t i = 0; i < N; i++) cb[i] = frand(&seed);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)a[i * K + k] * b[j * K + k];
            ref[i * N + j] = (float)(alpha * s + (beta != 0 ? beta * ref[i * N + j] : 0) + (bias ? rb[i] + cb[j] : 0));
        }
    /* A as given or transposed; B as rows, cols, or an fp16 weight */
    float *at = malloc(sizeof(float) * (size_t)(M * K)), *bt = malloc(sizeof(float) * (size_t)(N * K));
    for (int64_t i = 0; i < M; i++) for (int64_t k = 0; k < K; k++) at[k * M + i] = a[i * K + k];
    for (int64_t j = 0; j < N; j++) for (int64_t k = 0; k < K; k++) bt[k * N + j] = b[j * K + k];
    qd_st_tensor t = {0};
    t.dtype = QD_F16; t.ndim = 2; t.shape[0] = N; t.shape[1] = K; t.numel = N * K; t.data = b16; t.nbytes = 2 * (size_t)(N * K);
    qd_weight w;
    qd_weight_dense(&w, &t, N, K);
    qd_mat A = kindA ? qd_cols(at, M) : qd_rows(a, K);
    qd_mat B = kindB == 0 ? qd_rows(b, K) : kindB == 1 ? qd_cols(bt, N) : qd_wmat(&w);
    qd_gemm(ctx, M, N, K, A, B, c, N, alpha, beta, bias ? rb : NULL, bias ? cb : NULL);
    double r = rel_l2(c, ref, (size_t)(M * N));
    check(r < 1e-6, "%s gemm M=%lld N=%lld K=%lld A=%s B=%s alpha=%g beta=%g bias=%d: rel_l2 %.2g",
          qd_gemm_isa(), (long long)M, (long long)N, (long long)K, kindA ? "cols" : "rows",
          kindB == 0 ? "rows" : kindB == 1 ? "cols" : "f16-weight", alpha, beta, bias, r);
    free(a); free(b); free(b16); free(c); free(ref); free(rb); free(cb); free(at); free(bt);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    static const int64_t sizes[][3] = {{1, 1, 1}, {7, 33, 5}, {64, 64, 64}, {100, 37, 300}, {9, 1000, 513}, {300, 20, 77}, {257, 130, 1030}};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (int ka = 0; ka < 2; ka++)
            for (int kb = 0; kb < 3; kb++)
                run(ctx, sizes[s][0], sizes[s][1], sizes[s][2], ka, kb, 1.0f, 0.0f, 0);
    run(ctx, 50, 70, 90, 0, 2, 0.5f, 1.0f, 1);
    run(ctx, 50, 70, 300, 1, 0, 2.0f, 0.25f, 1);
    run(ctx, 0 + 3, 5, 0 + 2, 0, 0, 1.0f, 0.0f, 1);
    qd_ctx_free(ctx);
    return test_summary();
}
