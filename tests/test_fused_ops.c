/* The fused passes of tensor/norm_act.c (GroupNorm + SiLU with an optional per-channel
 * input bias, LayerNorm + adaLN modulation, GEGLU, SiLU, GELU) against straightforward
 * double-precision references computed here, at every ISA level this CPU has (scalar,
 * AVX2+FMA, AVX-512), on odd sizes (vector tails), groups longer than one statistics
 * block, and inputs with a large common offset (cancellation in the variance).
 * Tolerances: relative L2 and max-abs (as a fraction of max |ref|) stated per check;
 * 1 and 2 threads must give identical results (the work split is per group / row). */
#include "testutil.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned seed = 2024;
static float urand(void) {   /* uniform [-1, 1) */
    seed = seed * 1103515245u + 12345u;
    return (float)((seed >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

static double silu_d(double v) { return v / (1.0 + exp(-v)); }
static double gelu_d(double v) { return 0.5 * v * erfc(-v / sqrt(2.0)); }

static void close_to(const char *what, const float *got, const double *refd, size_t n, double rel_tol,
                     double abs_frac) {
    float *ref = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) ref[i] = (float)refd[i];
    check_close(what, got, ref, n, rel_tol, abs_frac);
    free(ref);
}

static void test_group_norm(qd_ctx *c1, qd_ctx *c2, int level, int64_t B, int64_t C, int64_t S, int G, float offset,
                            int silu, int with_bias) {
    int64_t n = B * C * S, cpg = C / G;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    float *gamma = malloc(sizeof(float) * C), *beta = malloc(sizeof(float) * C), *xb = malloc(sizeof(float) * B * C);
    double *ref = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < n; i++) x[i] = offset + 2.0f * urand() + 0.5f * (float)((i / S) % 3);
    for (int64_t c = 0; c < C; c++) { gamma[c] = 1.0f + 0.5f * urand(); beta[c] = 0.3f * urand(); }
    for (int64_t i = 0; i < B * C; i++) xb[i] = 3.0f * urand();
    for (int64_t b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            double sum = 0, sq = 0, cnt = (double)cpg * S;
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                for (int64_t s = 0; s < S; s++) sum += (double)x[(b * C + c) * S + s] + (with_bias ? xb[b * C + c] : 0);
            double mean = sum / cnt;
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                for (int64_t s = 0; s < S; s++) {
                    double d = (double)x[(b * C + c) * S + s] + (with_bias ? xb[b * C + c] : 0) - mean;
                    sq += d * d;
                }
            double inv = 1.0 / sqrt(sq / cnt + 1e-5);
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                for (int64_t s = 0; s < S; s++) {
                    int64_t i = (b * C + c) * S + s;
                    double v = ((double)x[i] + (with_bias ? xb[b * C + c] : 0) - mean) * inv * gamma[c] + beta[c];
                    ref[i] = silu ? silu_d(v) : v;
                }
        }
    qd_group_norm_bias(c1, x, with_bias ? xb : NULL, B, C, S, G, 1e-5f, gamma, beta, silu, y);
    memcpy(y2, x, sizeof(float) * n);     /* in place, 2 threads */
    qd_group_norm_bias(c2, y2, with_bias ? xb : NULL, B, C, S, G, 1e-5f, gamma, beta, silu, y2);
    char what[200];
    /* an offset of 1000 costs the inputs' own rounding (~6e-5 of 1000, over a std of ~1) */
    double rel = offset != 0 ? 2e-4 : 2e-6, ab = offset != 0 ? 2e-4 : 2e-6;
    snprintf(what, sizeof what, "isa %d group_norm B%lld C%lld S%lld G%d offset %g silu %d bias %d", level,
             (long long)B, (long long)C, (long long)S, G, offset, silu, with_bias);
    close_to(what, y, ref, (size_t)n, rel, ab);
    check(!memcmp(y, y2, sizeof(float) * n), "%s: 2 threads in place == 1 thread", what);
    free(x); free(y); free(y2); free(gamma); free(beta); free(xb); free(ref);
}

static void test_layer_norm(qd_ctx *c1, qd_ctx *c2, int level, int64_t M, int64_t C, float offset, int affine,
                            int mod) {
    int64_t n = M * C, rpb = (M + 1) / 2;     /* two "batch items" of rows */
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    float *gamma = malloc(sizeof(float) * C), *beta = malloc(sizeof(float) * C);
    float *shift = malloc(sizeof(float) * 2 * C), *scale = malloc(sizeof(float) * 2 * C);
    double *ref = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < n; i++) x[i] = offset + 3.0f * urand();
    for (int64_t c = 0; c < C; c++) { gamma[c] = 1.0f + 0.5f * urand(); beta[c] = 0.3f * urand(); }
    for (int64_t c = 0; c < 2 * C; c++) { shift[c] = urand(); scale[c] = 0.5f * urand(); }
    for (int64_t r = 0; r < M; r++) {
        double sum = 0, sq = 0;
        for (int64_t c = 0; c < C; c++) sum += x[r * C + c];
        double mean = sum / C;
        for (int64_t c = 0; c < C; c++) sq += (x[r * C + c] - mean) * (x[r * C + c] - mean);
        double inv = 1.0 / sqrt(sq / C + 1e-6);
        int64_t b = r / rpb;
        for (int64_t c = 0; c < C; c++) {
            double v = (x[r * C + c] - mean) * inv;
            if (affine) v = v * gamma[c] + beta[c];
            if (mod) v = v * (1.0 + scale[b * C + c]) + shift[b * C + c];
            ref[r * C + c] = v;
        }
    }
    qd_layer_norm_mod(c1, x, M, C, 1e-6f, affine ? gamma : NULL, affine ? beta : NULL, rpb, mod ? shift : NULL,
                      mod ? scale : NULL, C, y);
    memcpy(y2, x, sizeof(float) * n);
    qd_layer_norm_mod(c2, y2, M, C, 1e-6f, affine ? gamma : NULL, affine ? beta : NULL, rpb, mod ? shift : NULL,
                      mod ? scale : NULL, C, y2);
    char what[200];
    snprintf(what, sizeof what, "isa %d layer_norm M%lld C%lld offset %g affine %d modulation %d", level, (long long)M,
             (long long)C, offset, affine, mod);
    double tol = offset != 0 ? 2e-4 : 2e-6;
    close_to(what, y, ref, (size_t)n, tol, tol);
    check(!memcmp(y, y2, sizeof(float) * n), "%s: 2 threads in place == 1 thread", what);
    if (!affine && !mod) {      /* qd_layer_norm is the same op */
        qd_layer_norm(c1, x, M, C, 1e-6f, NULL, NULL, y2);
        check(!memcmp(y, y2, sizeof(float) * n), "%s: qd_layer_norm == qd_layer_norm_mod without vectors", what);
    }
    free(x); free(y); free(y2); free(gamma); free(beta); free(shift); free(scale); free(ref);
}

static void test_geglu(qd_ctx *c1, qd_ctx *c2, int level, int64_t M, int64_t F) {
    float *x = malloc(sizeof(float) * M * 2 * F), *y = malloc(sizeof(float) * M * F), *y2 = malloc(sizeof(float) * M * F);
    double *ref = malloc(sizeof(double) * M * F);
    for (int64_t i = 0; i < M * 2 * F; i++) x[i] = 6.0f * urand();
    for (int64_t r = 0; r < M; r++)
        for (int64_t i = 0; i < F; i++) ref[r * F + i] = x[r * 2 * F + i] * gelu_d(x[r * 2 * F + F + i]);
    qd_geglu(c1, x, M, F, y);
    qd_geglu(c2, x, M, F, y2);
    char what[200];
    snprintf(what, sizeof what, "isa %d geglu M%lld F%lld", level, (long long)M, (long long)F);
    close_to(what, y, ref, (size_t)(M * F), 1e-6, 1e-6);
    check(!memcmp(y, y2, sizeof(float) * M * F), "%s: 2 threads == 1 thread", what);
    free(x); free(y); free(y2); free(ref);
}

/* elementwise SiLU and GELU over [-lim, lim] plus extremes: worst relative error */
static void test_act(int level) {
    enum { N = 2003 };
    float x[N], s[N], g[N];
    for (int i = 0; i < N; i++) x[i] = -20.0f + 40.0f * (float)i / (N - 1);
    x[0] = -100.0f; x[1] = 100.0f; x[2] = 0.0f; x[3] = -1e-20f; x[4] = 1e-3f;
    memcpy(s, x, sizeof x);
    memcpy(g, x, sizeof x);
    qd_silu(s, N);
    qd_gelu(g, N);
    double ws = 0, wg = 0;
    for (int i = 0; i < N; i++) {
        double rs = silu_d(x[i]), rg = gelu_d(x[i]);
        /* relative, with an absolute floor far below the values that matter */
        double es = fabs(s[i] - rs) / (fabs(rs) + 1e-30), eg = fabs(g[i] - rg) / (fabs(rg) + 1e-30);
        if (fabs(rs) < 1e-30) es = fabs(s[i]);
        if (fabs(rg) < 1e-30) eg = fabs(g[i]);
        if (!(es <= ws)) ws = es;
        if (!(eg <= wg) && x[i] >= -5.5) wg = eg;
        /* below -5.5 (|gelu| < 1e-7) the fp32 rounding of the exponent -x^2/2 costs up to
         * 1e-5 relative; beyond 13 gelu(x) is x, below -13 it is under 1e-37 */
        if (x[i] < -5.5 && !(eg <= (x[i] >= -13 ? 2e-5 : 1.0)))
            check(0, "isa %d gelu(%g) = %g (ref %g): relative error %.2g", level, x[i], g[i], rg, eg);
    }
    check(ws < 2e-6, "isa %d silu over [-100, 100]: max relative error %.2g (tol 2e-6)", level, ws);
    check(wg < 2e-6, "isa %d gelu over [-5.5, 20]: max relative error %.2g (tol 2e-6; 2e-5 down to -13)",
          level, wg);
    float p[3] = {NAN, INFINITY, -INFINITY};
    qd_silu(p, 3);
    check(isnan(p[0]) && p[1] == INFINITY, "isa %d silu(NaN) = NaN, silu(inf) = inf", level);
}

int main(void) {
    qd_ctx *c1 = qd_ctx_new(1), *c2 = qd_ctx_new(2);
    int top = qd_norm_act_force_isa(-1);
    for (int level = 0; level <= top; level++) {
        qd_norm_act_force_isa(level);
        test_group_norm(c1, c2, level, 2, 12, 37, 4, 0, 1, 0);
        test_group_norm(c1, c2, level, 2, 12, 37, 4, 0, 0, 1);
        test_group_norm(c1, c2, level, 1, 8, 5000, 2, 0, 1, 1);     /* 4 channels x 5000: blocks of 4096 + tail */
        test_group_norm(c1, c2, level, 2, 32, 64, 32, 0, 1, 1);     /* one channel per group */
        test_group_norm(c1, c2, level, 1, 6, 999, 3, 1000.0f, 1, 0);
        test_layer_norm(c1, c2, level, 7, 77, 0, 1, 0);
        test_layer_norm(c1, c2, level, 5, 1280, 0, 0, 0);
        test_layer_norm(c1, c2, level, 6, 3072 + 5, 0, 0, 1);
        test_layer_norm(c1, c2, level, 4, 320, 500.0f, 1, 1);
        test_layer_norm(c1, c2, level, 3, 5000, 0, 1, 0);          /* wider than one statistics block */
        test_geglu(c1, c2, level, 5, 37);
        test_geglu(c1, c2, level, 9, 1280);
        test_act(level);
    }
    qd_norm_act_force_isa(-1);
    qd_ctx_free(c1);
    qd_ctx_free(c2);
    return test_summary();
}
