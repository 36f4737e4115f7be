/* SDNQ 4-bit weights straight into the bf16 GEMM's A strips (qd_sdnq_decode_base_bf16,
 * src/quant/sdnq_decode_fast.c) and the stacked low-rank path that uses it
 * (src/tensor/gemm_lowrank.c):
 *   1. the bf16 pairs vs the spec's dequantization (sdnq.md §1.8 step 2: q * scale
 *      (+ zero_point), an all-zero group giving the zero point, §1.10) computed here in double
 *      from the raw nibbles (§1.6: low nibble first, signed ints offset-binary), times
 *      alpha. Tolerance per element: |got - ref| <= 2^-8 |ref| + 2^-20 (|q scale| + |zp|)
 *      |alpha| (bf16 round-to-nearest is within 2^-9 relative; the fp32 multiply-add before
 *      it within 2^-23 of its terms). Layouts: uint4 Conv 3x3 grouped with zero points (one
 *      all-zero group), int4 Conv without, a Conv group that does not span whole vectors,
 *      uint4 Linear grouped (128 and 32) and row-wise; rectangles with odd widths, odd
 *      row counts and starts off the 64-column grid; the odd last pair's high half must be
 *      0 and nothing past the rectangle written. Also: the same bits as rounding the fp32
 *      decode (qd_sdnq_decode_fast_base) to bf16, and 0 returned for an odd k0.
 *   2. Convolutions and weight-as-A GEMMs with uint4 + SVD weights, the SVD term stacked
 *      under the weight (QD_LOWRANK=2) or (64x64 pixels) folded and, in bf16, decoded once
 *      for the whole call, bf16 and fp32 contexts, few outputs (<= 256: the
 *      whole result through the side buffer, gemm_thin.c for the conv) and many (the split
 *      at the last whole strip), an output count that is not a multiple of the strip, row
 *      bias, alpha and beta, vs a double-precision product with the spec's weight (+ up .
 *      down). Tolerance: relative L2 1e-5 (fp32), 2^-7 (bf16, the bf16 GEMM bound the
 *      other SDNQ tests use). Linears (the weight as B: bf16 pairs transposed into B strips)
 *      without SVD and with it through the side path, same tolerances. */
#include "testutil.h"
#include "quant/sdnq_weight.h"
#include "quant/sdnq_decode_fast.h"
#include "quant/sdnq_layout.h"
#include "tensor/gemm.h"
#include "tensor/conv.h"
#include "tensor/weight.h"
#include "base/half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rng_state = 777;
static uint32_t rnd(void) { rng_state = rng_state * 1664525u + 1013904223u; return rng_state >> 8; }
static float frand(void) { return (float)(rnd() % 20001) / 10000.0f - 1.0f; }

typedef struct {
    qd_sdnq_state *s;
    uint8_t *codes;
    float *scale, *zp, *up, *down;
    uint32_t *upb, *downb;
    int64_t out, cols, ks, gs;
    int sgn;
} layer;

/* A 4-bit layer by hand: dtype "uint4"/"int4", [out, in, ks], groups (0: row-wise), zero
 * points, SVD rank; zero_group >= 0: that group of row 1 gets scale 0. */
static void make(layer *L, const char *dtype, int64_t out, int64_t in, int64_t ks, int64_t groups, int zp, int rank,
                 int64_t zero_group) {
    memset(L, 0, sizeof *L);
    qd_sdnq_state *s = calloc(1, sizeof *s);
    qd_sdnq_layout *l = &s->l;
    if (qd_sdnq_dtype_parse(dtype, &l->dtype)) { check(0, "dtype %s parses", dtype); exit(1); }
    l->out = out; l->in = in; l->ksize = ks; l->cols = in * ks;
    l->cls = ks > 1 ? QD_SDNQ_CONV : QD_SDNQ_LINEAR;
    l->grouping = groups > 0 ? QD_SDNQ_GROUPED : QD_SDNQ_ROWWISE;
    l->groups = groups > 0 ? groups : 1;
    l->group_size = in / l->groups;
    l->zero_point = zp;
    l->svd = rank > 0;
    l->svd_rank = rank;
    qd_sdnq_scale_strides(l, &s->so, &s->sg, &s->sp);
    int64_t n = out * l->cols, ns = out * l->groups * ks;
    L->codes = malloc((size_t)(n / 2));
    for (int64_t i = 0; i < n / 2; i++) L->codes[i] = (uint8_t)rnd();
    L->scale = malloc(sizeof(float) * (size_t)ns);
    L->zp = malloc(sizeof(float) * (size_t)ns);
    for (int64_t i = 0; i < ns; i++) { L->scale[i] = 0.001f + 0.02f * (frand() + 1.0f); L->zp[i] = 0.1f * frand(); }
    if (zero_group >= 0)
        for (int64_t p = 0; p < ks; p++) L->scale[1 * s->so + zero_group * s->sg + p * s->sp] = 0.0f;
    s->codes = L->codes;
    s->scale = L->scale;
    s->zero_point = zp ? L->zp : NULL;
    if (rank) {
        int64_t rp = (rank + 1) / 2;
        L->up = malloc(sizeof(float) * (size_t)(out * rank));
        L->down = malloc(sizeof(float) * (size_t)(rank * l->cols));
        for (int64_t i = 0; i < out * rank; i++) L->up[i] = 0.05f * frand();
        for (int64_t i = 0; i < rank * l->cols; i++) L->down[i] = 0.05f * frand();
        L->upb = malloc(sizeof(uint32_t) * (size_t)(out * rp));
        L->downb = malloc(sizeof(uint32_t) * (size_t)(rp * l->cols));
        qd_sdnq_svd_bf16_pairs(L->up, L->down, out, l->cols, rank, L->upb, L->downb);
        s->svd_up = L->up; s->svd_down = L->down;
        s->svd_up_bf16 = L->upb; s->svd_down_bf16 = L->downb;
    }
    qd_sdnq_fast_init(s);
    L->s = s;
    L->out = out; L->cols = l->cols; L->ks = ks; L->gs = l->group_size;
    L->sgn = l->dtype.family == QD_SQ_INT;
}

static void drop(layer *L) {
    free(L->s); free(L->codes); free(L->scale); free(L->zp); free(L->up); free(L->down); free(L->upb); free(L->downb);
}

/* The spec's base value of element (o, k) in double, and |q scale| + |zp| (for the bound). */
static double spec_base(const layer *L, int64_t o, int64_t k, double *mag) {
    int64_t e = o * L->cols + k;
    int code = (L->codes[e / 2] >> (4 * (e & 1))) & 15;   /* low nibble first */
    double q = L->sgn ? code - 8 : code;                     /* signed ints: offset-binary */
    const qd_sdnq_state *s = L->s;
    int64_t g = (k / L->ks) / L->gs, p = k % L->ks;
    int64_t idx = o * s->so + g * s->sg + p * s->sp;
    double sc = L->scale[idx], z = s->zero_point ? L->zp[idx] : 0.0;
    *mag = fabs(q * sc) + fabs(z);
    return sc == 0 ? z : q * sc + z;   /* all-zero group: the codes are undefined, 0 (§1.10) */
}

static double bf16_val(uint16_t h) { return (double)qd_bf16_to_f32(h); }

/* One rectangle: the kernel vs the spec (and vs the fp32 decode rounded), canaries around it. */
static void rect_case(const char *name, const layer *L, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float alpha) {
    int64_t words = (nk + 1) / 2, ldw = words + 7;
    uint32_t *dst = malloc(sizeof(uint32_t) * (size_t)(nr * ldw));
    for (int64_t i = 0; i < nr * ldw; i++) dst[i] = 0xdeadbeefu;
    int ok = qd_sdnq_decode_base_bf16(L->s, r0, nr, k0, nk, dst, ldw, alpha);
    check(ok, "%s: rows %lld+%lld cols %lld+%lld alpha %g: the bf16 path takes it", name, (long long)r0, (long long)nr,
          (long long)k0, (long long)nk, alpha);
    if (!ok) { free(dst); return; }
    double worst = 0;
    int64_t bad = 0, canary = 0, tail = 0, bits = 0;
    float *f = malloc(sizeof(float) * (size_t)(nr * nk));
    qd_sdnq_decode_fast_base(L->s, r0, nr, k0, nk, f, nk);
    for (int64_t r = 0; r < nr; r++) {
        const uint32_t *row = dst + r * ldw;
        for (int64_t k = 0; k < nk; k++) {
            uint16_t h = (uint16_t)(row[k / 2] >> (16 * (k & 1)));
            double mag, ref = spec_base(L, r0 + r, k0 + k, &mag) * alpha;
            double err = fabs(bf16_val(h) - ref), tol = ldexp(fabs(ref), -8) + ldexp(mag * fabs(alpha), -20);
            if (err > tol) bad++;
            if (err / (tol > 0 ? tol : 1) > worst) worst = err / (tol > 0 ? tol : 1);
            if (h != qd_f32_to_bf16(f[r * nk + k] * alpha)) bits++;
        }
        if (nk & 1) tail += (row[nk / 2] >> 16) != 0;
        for (int64_t w = words; w < ldw; w++) canary += row[w] != 0xdeadbeefu;
    }
    check(bad == 0, "%s: rows %lld+%lld cols %lld+%lld alpha %g: every value within 2^-8 rel of the spec's (%lld out; worst "
                    "%.2f of the bound)", name, (long long)r0, (long long)nr, (long long)k0, (long long)nk, alpha,
          (long long)bad, worst);
    check(bits == 0, "%s: ... the same bits as the fp32 decode rounded to bf16 (%lld differ)", name, (long long)bits);
    check(tail == 0 && canary == 0, "%s: ... odd last pair's high half 0 (%lld rows not), nothing past the rows written (%lld)",
          name, (long long)tail, (long long)canary);
    free(f);
    free(dst);
}

static void test_kernel(void) {
    static const struct { const char *name, *dtype; int64_t out, in, ks, groups; int zp; int64_t zero_group; } L[] = {
        {"uint4 conv 3x3 g64 zp", "uint4", 9, 128, 9, 2, 1, 1},      /* 64 * 9 = 576 columns per group */
        {"int4 conv 3x3 g16", "int4", 7, 64, 9, 4, 0, 2},            /* 144 per group, no zero point */
        {"uint4 conv 3x3 g8 zp", "uint4", 5, 32, 9, 4, 1, 0},        /* 72 per group: not whole vectors */
        {"uint4 linear g128 zp", "uint4", 6, 512, 1, 4, 1, 3},
        {"uint4 linear g32 zp", "uint4", 5, 256, 1, 8, 1, 5},         /* runs shorter than 64 */
        {"uint4 linear row-wise", "uint4", 5, 300, 1, 0, 1, -1},
    };
    for (size_t i = 0; i < sizeof L / sizeof *L; i++) {
        layer l;
        make(&l, L[i].dtype, L[i].out, L[i].in, L[i].ks, L[i].groups, L[i].zp, 0, L[i].zero_group);
        int64_t cols = l.cols;
        rect_case(L[i].name, &l, 0, l.out, 0, cols, 1.0f);
        rect_case(L[i].name, &l, 1, 3, 64, cols - 64 < 256 ? cols - 64 : 256, 0.37f);
        rect_case(L[i].name, &l, 1, 2, 2, cols - 3, 1.0f);        /* odd width, start off the grid */
        rect_case(L[i].name, &l, l.out - 1, 1, cols - 34, 33, -2.5f);   /* odd width at the row end */
        uint32_t w[4] = {0};
        check(!qd_sdnq_decode_base_bf16(l.s, 0, 1, 1, 4, w, 4, 1.0f) && w[0] == 0,
              "%s: an odd first column is refused, nothing written", L[i].name);
        drop(&l);
    }
}

/* ---- 2. through the GEMM ---- */

/* The weight as the loader binds it (qd_sdnq_weight_open ends with qd_sdnq_weight_bind). */
static void as_weight(const layer *L, qd_weight *w) { qd_sdnq_weight_bind(w, L->s); }

/* the spec's whole weight, + up . down, in double */
static double *spec_weight(const layer *L) {
    int64_t r = L->s->l.svd_rank;
    double *W = malloc(sizeof(double) * (size_t)(L->out * L->cols));
    for (int64_t o = 0; o < L->out; o++)
        for (int64_t k = 0; k < L->cols; k++) {
            double mag, v = spec_base(L, o, k, &mag);
            for (int64_t t = 0; t < r; t++) v += (double)L->up[o * r + t] * L->down[t * L->cols + k];
            W[o * L->cols + k] = v;
        }
    return W;
}

static double rel_l2_d(const float *y, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) { num += (y[i] - ref[i]) * (y[i] - ref[i]); den += ref[i] * ref[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* conv 3x3 pad 1 of x [2, in, hw, hw] with the layer (+ bias), accumulated onto y = 0.25
 * (beta 1: a residual add), vs double */
static void conv_case(qd_ctx *ctx, const char *prec, double tol, const layer *L, const double *W, int64_t in, int64_t hw,
                      const char *how) {
    int64_t B = 2, out = L->out, P = hw * hw;
    float *x = malloc(sizeof(float) * (size_t)(B * in * P)), *y = malloc(sizeof(float) * (size_t)(B * out * P));
    float *bias = malloc(sizeof(float) * (size_t)out);
    double *ref = malloc(sizeof(double) * (size_t)(B * out * P));
    for (int64_t i = 0; i < B * in * P; i++) x[i] = frand();
    for (int64_t i = 0; i < out; i++) bias[i] = frand();
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < out; o++)
            for (int64_t oy = 0; oy < hw; oy++)
                for (int64_t ox = 0; ox < hw; ox++) {
                    double s = bias[o] + 0.25;
                    for (int64_t c = 0; c < in; c++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int64_t iy = oy + ky - 1, ix = ox + kx - 1;
                                if (iy < 0 || iy >= hw || ix < 0 || ix >= hw) continue;
                                s += W[o * L->cols + (c * 3 + ky) * 3 + kx] * x[((b * in + c) * hw + iy) * hw + ix];
                            }
                    ref[((b * out + o) * hw + oy) * hw + ox] = s;
                }
    qd_weight w;
    as_weight(L, &w);
    for (int64_t i = 0; i < B * out * P; i++) y[i] = 0.25f;
    qd_conv2d_acc(ctx, x, B, in, hw, hw, &w, bias, 3, 3, 1, 1, 1, 1, 1, 1.0f, y);
    double r = rel_l2_d(y, ref, B * out * P);
    check(r <= tol, "%s: conv 3x3 %lld -> %lld over 2 x %lldx%lld, beta 1, SVD %s, vs double: rel_l2 %.3g (tol %.1g)",
          prec, (long long)in, (long long)out, (long long)hw, (long long)hw, how, r, tol);
    free(x); free(y); free(bias); free(ref);
}

/* C[out, N] = 1 * beta + alpha W . X^T + row bias (the weight as A, X given as columns) vs double */
static void gemm_a_case(qd_ctx *ctx, const char *prec, double tol, const layer *L, const double *W, int64_t N) {
    int64_t out = L->out, K = L->cols;
    float *xt = malloc(sizeof(float) * (size_t)(K * N)), *y = malloc(sizeof(float) * (size_t)(out * N));
    float *bias = malloc(sizeof(float) * (size_t)out);
    double *ref = malloc(sizeof(double) * (size_t)(out * N));
    for (int64_t i = 0; i < K * N; i++) xt[i] = frand();
    for (int64_t i = 0; i < out; i++) bias[i] = frand();
    for (int64_t o = 0; o < out; o++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += W[o * K + k] * xt[k * N + n];
            ref[o * N + n] = 0.5 * 1.5 + 0.75 * s + bias[o];
        }
    for (int64_t i = 0; i < out * N; i++) y[i] = 0.5f;
    qd_weight w;
    as_weight(L, &w);
    qd_gemm(ctx, out, N, K, qd_wmat(&w), qd_cols(xt, N), y, N, 0.75f, 1.5f, bias, NULL);
    double r = rel_l2_d(y, ref, out * N);
    check(r <= tol, "%s: weight as A %lld x %lld x %lld, alpha 0.75, beta 1.5, row bias, SVD stacked, vs double: "
                    "rel_l2 %.3g (tol %.1g)", prec, (long long)out, (long long)N, (long long)K, r, tol);
    free(xt); free(y); free(bias); free(ref);
}

/* y[M, out] = x . W^T + col bias (the weight as B: a linear) vs double; plain: a layer
 * without SVD (its decode_bf16 is the whole weight), else the SVD layer (side path) */
static void linear_case(qd_ctx *ctx, const char *prec, double tol, const layer *L, const double *W, int64_t M, int plain) {
    int64_t out = L->out, K = L->cols;
    float *x = malloc(sizeof(float) * (size_t)(M * K)), *y = malloc(sizeof(float) * (size_t)(M * out));
    float *bias = malloc(sizeof(float) * (size_t)out);
    double *ref = malloc(sizeof(double) * (size_t)(M * out));
    for (int64_t i = 0; i < M * K; i++) x[i] = frand();
    for (int64_t i = 0; i < out; i++) bias[i] = frand();
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < out; o++) {
            double s = bias[o];
            for (int64_t k = 0; k < K; k++) s += W[o * K + k] * x[m * K + k];
            ref[m * out + o] = s;
        }
    qd_weight w;
    as_weight(L, &w);
    if (plain)
        check(w.decode_bf16 && !w.decode_base_bf16 && !w.decode_lowp && !w.lr_up,
              "%s: a 4-bit layer without SVD binds its base as the whole weight (decode_bf16)", prec);
    qd_gemm(ctx, M, out, K, qd_rows(x, K), qd_wmat(&w), y, out, 1.0f, 0.0f, NULL, bias);
    double r = rel_l2_d(y, ref, M * out);
    check(r <= tol, "%s: linear %lld tokens %lld -> %lld (weight as B), %s, vs double: rel_l2 %.3g (tol %.1g)", prec,
          (long long)M, (long long)K, (long long)out, plain ? "no SVD" : "SVD side path", r, tol);
    free(x); free(y); free(bias); free(ref);
}

static void test_gemm(void) {
    setenv("QD_LOWRANK", "2", 1);
    layer l;
    make(&l, "uint4", 40, 64, 9, 1, 1, 8, 0);   /* 40 outputs: strips of 14 end at 28, 2 more rows */
    double *W = spec_weight(&l);
    for (int bf = 0; bf <= 1; bf++) {
        qd_ctx *ctx = test_ctx_new(2);
        if (bf) qd_set_precision(ctx, QD_PRECISION_BF16);
        const char *prec = bf && qd_ctx_bf16(ctx) ? "bf16" : "fp32";
        double tol = bf && qd_ctx_bf16(ctx) ? ldexp(1.0, -7) : 1e-5;
        conv_case(ctx, prec, tol, &l, W, 64, 8, "stacked");    /* 128 outputs: gemm_thin, all rows via the side buffer */
        conv_case(ctx, prec, tol, &l, W, 64, 16, "stacked");   /* 512: the split at the last whole strip */
        /* 8192 outputs, by the cost model: the fold, in bf16 decoded once into bf16 rows and
         * run as a dense-like weight (gemm_lowrank.c's predecoded path, the driver's L2 slab) */
        unsetenv("QD_LOWRANK");
        conv_case(ctx, prec, tol, &l, W, 64, 64, bf ? "folded, decoded once" : "folded");
        setenv("QD_LOWRANK", "2", 1);
        gemm_a_case(ctx, prec, tol, &l, W, 100);
        gemm_a_case(ctx, prec, tol, &l, W, 300);
        qd_ctx_free(ctx);
    }
    free(W);
    drop(&l);
    /* linears: the weight as B, 40 outputs (a 32-wide strip and 8 columns), K 1000 (two
     * K blocks in bf16, a short last tile); the SVD one through the side path */
    setenv("QD_LOWRANK", "1", 1);
    layer p, q;
    make(&p, "uint4", 40, 1024, 1, 8, 1, 0, 2);
    make(&q, "int4", 40, 1000, 1, 0, 0, 8, -1);
    double *Wp = spec_weight(&p), *Wq = spec_weight(&q);
    for (int bf = 0; bf <= 1; bf++) {
        qd_ctx *ctx = test_ctx_new(2);
        if (bf) qd_set_precision(ctx, QD_PRECISION_BF16);
        const char *prec = bf && qd_ctx_bf16(ctx) ? "bf16" : "fp32";
        double tol = bf && qd_ctx_bf16(ctx) ? ldexp(1.0, -7) : 1e-5;
        linear_case(ctx, prec, tol, &p, Wp, 37, 1);
        linear_case(ctx, prec, tol, &q, Wq, 37, 0);
        qd_ctx_free(ctx);
    }
    free(Wp); free(Wq);
    drop(&p); drop(&q);
    unsetenv("QD_LOWRANK");
}

int main(void) {
    test_kernel();
    test_gemm();
    return test_summary();
}
