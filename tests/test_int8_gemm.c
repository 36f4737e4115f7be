/* The int8 GEMM primitives (src/quant/int8_gemm.c) against plain integer and double
 * references computed here: row quantization (sdnq's s = amax/127, RNE(x / s)), both
 * panel packings, and the blocked GEMM with its epilogue, on every kernel this CPU
 * runs, at shapes that hit every edge (M not a multiple of 6, N not of 64, K not of 4,
 * K above one 512-k block), 1 and 2 threads; and on 3 and 7 threads (more than the
 * cores) bitwise the 1-thread result where the work splits into many items; and an
 * output over 4 MiB (the VNNI epilogue's streaming stores). */
#include "testutil.h"
#include "base/ctx.h"
#include "quant/int8_gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }
static float frand(uint32_t *s) { return (float)lcg(s) / 16777216.0f * 2.0f - 1.0f; }

/* Reference quantization of one row, written out as the spec says. */
static float ref_quant(const float *x, int64_t K, int8_t *q, int32_t *sum) {
    float amax = 0;
    for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    float s = amax / 127.0f;
    *sum = 0;
    for (int64_t k = 0; k < K; k++) {
        float v = s > 0 ? nearbyintf(x[k] / s) : 0;
        if (v > 127) v = 127;
        if (!(v >= -127)) v = -127;
        q[k] = (int8_t)v;
        *sum += q[k];
    }
    return s > 0 ? s : 0;
}

static void test_quantize(void) {
    uint32_t seed = 7;
    static const int64_t Ks[] = {1, 15, 16, 17, 100, 1283};
    for (int isa = QD_I8_GENERIC; isa <= QD_I8_VNNI; isa++) {
        if (!qd_i8_supported((qd_i8_isa)isa)) { printf("skip %s (CPU lacks it)\n", qd_i8_isa_name((qd_i8_isa)isa)); continue; }
        int ok = 1;
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
            int64_t K = Ks[ki], kp = qd_i8_kpad(K);
            float *x = malloc(sizeof(float) * (size_t)K);
            int8_t *q = malloc((size_t)kp + 8), *r = malloc((size_t)K);
            for (int64_t k = 0; k < K; k++) x[k] = frand(&seed) * 3.0f;
            /* exact halves of the step (ties go to even), the extremes, a NaN */
            if (K > 4) { x[0] = -3.5f; x[1] = 3.5f; x[2] = 0.5f * 3.5f / 127.0f; x[3] = 1.5f * 3.5f / 127.0f; }
            if (K > 10) x[10] = NAN;
            memset(q, 0x55, (size_t)kp + 8);
            int32_t sum, rsum;
            float s = qd_i8_quantize_row((qd_i8_isa)isa, x, K, kp, q, &sum), rs = ref_quant(x, K, r, &rsum);
            ok = ok && s == rs && sum == rsum && memcmp(q, r, (size_t)K) == 0;
            for (int64_t k = K; k < kp; k++) ok = ok && q[k] == 0;
            ok = ok && (unsigned char)q[kp] == 0x55;   /* nothing written past kp */
            memset(x, 0, sizeof(float) * (size_t)K);
            s = qd_i8_quantize_row((qd_i8_isa)isa, x, K, kp, q, &sum);
            ok = ok && s == 0 && sum == 0 && q[0] == 0;
            free(x); free(q); free(r);
        }
        check(ok, "%s: row quantization = RNE(x / (amax/127)) clamped, code sums, zero tail, zero and NaN rows",
              qd_i8_isa_name((qd_i8_isa)isa));
    }
}

/* Rows built to hit x / s at and next to half-integers (the rounding ties; a kernel
 * that does not divide exactly as x / s gets some wrong), at scales from subnormal to
 * near FLT_MAX, random values mixed in, K = 333 (five 64-value steps and a tail):
 * every code and sum as the division reference gives. */
static void test_quantize_ties(void) {
    uint32_t seed = 11;
    static const float amaxes[] = {1.0f, 3.5f, 0.0123f, 7.77e-20f, 2.5e-37f, 1e-36f, 1e-40f, 1e-44f, 6.1e25f, 3.3e38f};
    const int64_t K = 333, kp = qd_i8_kpad(K);
    float *x = malloc(sizeof(float) * (size_t)K);
    int8_t *q = malloc((size_t)kp), *r = malloc((size_t)K);
    long rows = 0, bad = 0;
    for (int isa = QD_I8_GENERIC; isa <= QD_I8_VNNI; isa++) {
        if (!qd_i8_supported((qd_i8_isa)isa)) continue;
        for (size_t a = 0; a < sizeof amaxes / sizeof *amaxes; a++)
            for (int rep = 0; rep < 200; rep++) {
                float A = amaxes[a] * (1.0f + 0.37f * (float)(lcg(&seed) % 1000) / 1000.0f);
                float s = A / 127.0f;
                x[0] = rep % 2 ? A : -A;
                for (int64_t k = 1; k < K; k++) {
                    int kind = (int)(lcg(&seed) % 4);
                    if (kind == 0) { x[k] = frand(&seed) * A; continue; }
                    /* (n + 1/2) s rounded to float, then 0..3 ulps either way */
                    int n = (int)(lcg(&seed) % 255) - 127;
                    float v = (float)(((double)n + 0.5) * (double)s);
                    int steps = (int)(lcg(&seed) % 7) - 3;
                    for (; steps > 0; steps--) v = nextafterf(v, INFINITY);
                    for (; steps < 0; steps++) v = nextafterf(v, -INFINITY);
                    x[k] = fabsf(v) <= A ? v : (v > 0 ? A : -A);
                }
                int32_t sum, rsum;
                float sq = qd_i8_quantize_row((qd_i8_isa)isa, x, K, kp, q, &sum), rs = ref_quant(x, K, r, &rsum);
                rows++;
                if (!(sq == rs && sum == rsum && memcmp(q, r, (size_t)K) == 0)) bad++;
            }
    }
    check(bad == 0, "row quantization at and next to ties, amax 1e-44 .. 3.3e38: %ld of %ld rows differ from x / s", bad, rows);
    free(x); free(q); free(r);
}

typedef struct { int64_t M, N, K; } shape;

/* Checks ctx's result against the int64 reference; with `also`, that context's result
 * (same inputs, y reset) must be bitwise the same: items claimed by any thread in any
 * order, each output written once (accumulate would add a twice-run item twice). */
static void run_gemm_ld(qd_ctx *ctx, qd_ctx *also, qd_i8_isa isa, shape sh, int cols, int accumulate, int aligned,
                        uint32_t *seed) {
    int64_t M = sh.M, N = sh.N, K = sh.K, kp = qd_i8_kpad(K), Mp = (M + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
    /* aligned: y 64-byte aligned with rows of a multiple of 16 floats, as the step arena
     * gives; the VNNI kernel then writes full 64-output rows of large outputs with
     * streaming stores */
    int64_t npan = (N + QD_I8_NR - 1) / QD_I8_NR, ldy = aligned ? (N + 15) / 16 * 16 : N + 3;
    int8_t *xq = calloc((size_t)(Mp * kp), 1), *w = malloc((size_t)(N * K));
    uint8_t *wt = malloc((size_t)(K * N));                    /* [K, N] storage for pack_cols */
    uint8_t *pan = malloc((size_t)(npan * qd_i8_panel_bytes(kp)));
    float *sx = malloc(sizeof(float) * (size_t)M), *sw = malloc(sizeof(float) * (size_t)N);
    float *zp = malloc(sizeof(float) * (size_t)N), *bias = malloc(sizeof(float) * (size_t)N);
    float *y = aligned ? aligned_alloc(64, sizeof(float) * (size_t)(M * ldy)) : malloc(sizeof(float) * (size_t)(M * ldy));
    float *y0 = malloc(sizeof(float) * (size_t)(M * ldy));
    int32_t *xsum = malloc(sizeof(int32_t) * (size_t)M);
    for (int64_t m = 0; m < M; m++) {
        xsum[m] = 0;
        for (int64_t k = 0; k < K; k++) { xq[m * kp + k] = (int8_t)((int)(lcg(seed) % 255) - 127); xsum[m] += xq[m * kp + k]; }
        sx[m] = 0.01f + 0.001f * (float)(m % 7);
    }
    xq[0] = 127;
    xsum[0] += 127 - xq[0];
    xsum[0] = 0;
    for (int64_t k = 0; k < K; k++) xsum[0] += xq[k];
    for (int64_t i = 0; i < N * K; i++) w[i] = (int8_t)((int)(lcg(seed) % 256) - 128);
    w[0] = -128;
    /* uint8-style storage for the column packing: byte = w + 128, read back with flip 0x80 */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) wt[k * N + n] = (uint8_t)(w[n * K + k] + 128);
    for (int64_t n = 0; n < N; n++) { sw[n] = 0.02f + 0.0001f * (float)n; zp[n] = 0.003f * (float)(n % 5) - 0.006f; bias[n] = 0.1f * (float)(n % 3); }
    for (int64_t p = 0; p < npan; p++) {
        int nb = (int)(N - p * QD_I8_NR < QD_I8_NR ? N - p * QD_I8_NR : QD_I8_NR);
        uint8_t *panel = pan + p * qd_i8_panel_bytes(kp);
        if (cols) qd_i8_pack_cols(isa, wt, N, p * QD_I8_NR, nb, K, kp, 0x80, panel);
        else qd_i8_pack_rows(isa, w + p * QD_I8_NR * K, K, nb, K, kp, panel);
    }
    for (int64_t i = 0; i < M * ldy; i++) y[i] = y0[i] = (float)(i % 11) * 0.5f;
    qd_i8_gemm_args g = {xq, sx, xsum, M, kp, pan, N, sw, zp, bias, y, ldy, accumulate};
    int rc = qd_i8_gemm(ctx, isa, &g);
    int exact = 1;
    double d2 = 0, r2 = 0;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            int64_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int64_t)xq[m * kp + k] * w[n * K + k];
            double ref = (double)sx[m] * ((double)sw[n] * (double)acc + (double)zp[n] * xsum[m]) + bias[n];
            if (accumulate) ref += y0[m * ldy + n];
            double d = y[m * ldy + n] - ref;
            d2 += d * d;
            r2 += ref * ref;
            /* fp32 epilogue on an exact int32 sum: a few ulps of the largest term */
            double big = fabs((double)sx[m] * sw[n] * (double)acc) + fabs(ref) + 1e-3;
            if (fabs(d) > 4e-6 * big) exact = 0;
        }
        for (int64_t n = N; n < ldy; n++) exact = exact && y[m * ldy + n] == y0[m * ldy + n];   /* stride gap untouched */
    }
    check(rc == 0 && exact, "%s gemm M=%lld N=%lld K=%lld (%s panels, %s, %d thr%s): matches the int64 reference "
          "(rel_l2 %.2g, every element within 4e-6 of its largest term)", qd_i8_isa_name(isa), (long long)M, (long long)N,
          (long long)K, cols ? "column" : "row", accumulate ? "accumulate" : "overwrite", qd_threads(ctx),
          aligned ? ", aligned y" : "", sqrt(d2 / r2));
    if (also) {
        float *y1 = malloc(sizeof(float) * (size_t)(M * ldy));
        memcpy(y1, y, sizeof(float) * (size_t)(M * ldy));
        memcpy(y, y0, sizeof(float) * (size_t)(M * ldy));
        rc = qd_i8_gemm(also, isa, &g);
        check(rc == 0 && memcmp(y, y1, sizeof(float) * (size_t)(M * ldy)) == 0,
              "%s gemm M=%lld N=%lld K=%lld (%s): %d threads give bitwise the %d-thread result", qd_i8_isa_name(isa),
              (long long)M, (long long)N, (long long)K, accumulate ? "accumulate" : "overwrite", qd_threads(also),
              qd_threads(ctx));
        free(y1);
    }
    free(xq); free(w); free(wt); free(pan); free(sx); free(sw); free(zp); free(bias); free(y); free(y0); free(xsum);
}

static void run_gemm(qd_ctx *ctx, qd_ctx *also, qd_i8_isa isa, shape sh, int cols, int accumulate, uint32_t *seed) {
    run_gemm_ld(ctx, also, isa, sh, cols, accumulate, 0, seed);
}

int main(void) {
    test_quantize();
    test_quantize_ties();
    static const shape shapes[] = {{1, 1, 1}, {7, 64, 4}, {13, 65, 37}, {6, 128, 512}, {50, 200, 1030}, {97, 320, 640}};
    qd_ctx *c1 = test_ctx_new(1), *c2 = test_ctx_new(2);
    uint32_t seed = 3;
    for (int isa = QD_I8_GENERIC; isa <= QD_I8_VNNI; isa++) {
        if (!qd_i8_supported((qd_i8_isa)isa)) { printf("skip %s (CPU lacks it)\n", qd_i8_isa_name((qd_i8_isa)isa)); continue; }
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            run_gemm(i % 2 ? c2 : c1, NULL, (qd_i8_isa)isa, shapes[i], (int)(i % 3 == 1), (int)(i % 2), &seed);
            run_gemm(i % 2 ? c1 : c2, NULL, (qd_i8_isa)isa, shapes[i], (int)(i % 3 != 1), (int)(i % 2 == 0), &seed);
        }
    }
    /* many work items (token blocks x panel groups) on more threads than cores */
    static const shape many[] = {{200, 700, 300}, {1000, 130, 64}, {37, 2000, 96}};
    qd_ctx *c3 = test_ctx_new(3), *c7 = test_ctx_new(7);
    qd_i8_isa best = qd_i8_pick();
    for (size_t i = 0; i < sizeof many / sizeof *many; i++) {
        run_gemm(c1, c3, best, many[i], (int)(i % 2), 1, &seed);
        run_gemm(c1, c7, best, many[i], (int)(i % 2 == 0), 0, &seed);
    }
    /* outputs of >= 4 MiB into an aligned y: the streaming-store epilogue (full panels;
     * the last, 6-wide panel of N = 1030 with masked stores, the stride gap untouched),
     * overwrite and (regular stores) accumulate, and 3 threads bitwise 1 thread */
    static const shape big = {1031, 1030, 37};
    run_gemm_ld(c2, c3, best, big, 1, 0, 1, &seed);
    run_gemm_ld(c1, c7, best, big, 0, 1, 1, &seed);
    qd_ctx_free(c1);
    qd_ctx_free(c2);
    qd_ctx_free(c3);
    qd_ctx_free(c7);
    return test_summary();
}
