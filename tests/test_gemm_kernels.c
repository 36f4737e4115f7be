/* The blocked GEMM and the implicit-GEMM convolution, in fp32 and bf16 mode, on 1 and
 * 2 threads, against naive double-precision references computed here:
 *   - GEMM: odd sizes (edge tiles), A/B as rows, columns or a stored weight (f32, f16,
 *     bf16, f8_e4m3 and an SDNQ uint4+SVD layer from tests/fixtures/sdnq, whose
 *     reference weight is sdnq's own dequantization), alpha/beta/biases, K spanning
 *     several K blocks, C batched along N;
 *   - convolution: 1x1 and 3x3, stride 1 and 2, symmetric and asymmetric padding,
 *     batch 1-3, bias, every dense weight dtype and the SDNQ layer as a 1x1 conv, and
 *     convolutions over few pixels and GEMMs of few rows against a weight, with K over
 *     several blocks (tensor/gemm_thin.c), also on 3 threads.
 * Tolerances:
 *   fp32: relative L2 <= 1e-5 (fp32 accumulation over K <= 2600 gives ~1e-7..1e-6).
 *   bf16: two references. (a) The same sums over operands rounded to bf16 here
 *     (round to nearest even): relative L2 <= 1e-5, i.e. the kernel multiplies exactly
 *     the bf16 values and accumulates in fp32. (b) The exact operands: bf16 keeps 8
 *     significant bits, so rounding errs by at most 2^-8 relative and each product by
 *     at most ~2^-7 (two roundings). For sums of independent products the relative L2
 *     error is the RMS of the product errors, about 2^-8 * sqrt(2/3) = 3.2e-3 for
 *     uniformly distributed rounding errors; the bound is 2^-7 = 7.8e-3. The test also
 *     requires it to be > 1e-5, which proves the bf16 kernel really ran. */
#include "testutil.h"
#include "base/ctx.h"
#include "base/threads.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_weight.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "tensor/weight.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float frand(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f; }

/* float -> bf16 -> float, round to nearest even (written here, independent of the library) */
static float bf16r(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* Reference element decoders for the stored weights (IEEE half, bf16, e4m3fn). */
static float half_to_f(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 1024), e - 25);
    return h & 0x8000 ? -v : v;
}
static float e4m3_to_f(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(m | 8), e - 10);
    return b & 0x80 ? -v : v;
}

typedef struct {
    qd_st_tensor t;
    qd_weight w;
    void *data;
    float *ref;     /* the values the weight holds, as float */
} test_weight;

/* A rows x cols weight stored as dtype with values ~U(-1,1) (representable in it). */
static void make_weight(test_weight *tw, qd_dtype dt, int64_t rows, int64_t cols, unsigned seed) {
    size_t n = (size_t)(rows * cols), es = dt == QD_F32 ? 4 : dt == QD_F8_E4M3 ? 1 : 2;
    memset(tw, 0, sizeof *tw);
    tw->data = malloc(n * es);
    tw->ref = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        float v = frand(&seed);
        if (dt == QD_F32) { ((float *)tw->data)[i] = v; tw->ref[i] = v; }
        else if (dt == QD_F16) {
            /* exact half: sign, 10-bit mantissa, exponents -1..-8 */
            uint16_t h = (uint16_t)((v < 0 ? 0x8000 : 0) | ((7 + (seed >> 20) % 8) << 10) | ((seed >> 5) & 1023));
            ((uint16_t *)tw->data)[i] = h;
            tw->ref[i] = half_to_f(h);
        } else if (dt == QD_BF16) {
            float r = bf16r(v);
            uint32_t u;
            memcpy(&u, &r, 4);
            ((uint16_t *)tw->data)[i] = (uint16_t)(u >> 16);
            tw->ref[i] = r;
        } else {
            uint8_t b = (uint8_t)((v < 0 ? 0x80 : 0) | ((3 + (seed >> 20) % 5) << 3) | ((seed >> 9) & 7));
            ((uint8_t *)tw->data)[i] = b;
            tw->ref[i] = e4m3_to_f(b);
        }
    }
    tw->t.dtype = dt;
    tw->t.ndim = 2;
    tw->t.shape[0] = rows;
    tw->t.shape[1] = cols;
    tw->t.numel = (int64_t)n;
    tw->t.data = tw->data;
    tw->t.nbytes = n * es;
    qd_weight_dense(&tw->w, &tw->t, rows, cols);
}

static void free_weight(test_weight *tw) { free(tw->data); free(tw->ref); }

static const char *dtname(qd_dtype d) {
    return d == QD_F32 ? "f32" : d == QD_F16 ? "f16" : d == QD_BF16 ? "bf16" : d == QD_F8_E4M3 ? "f8e4m3" : "sdnq";
}

/* got vs the exact reference and (bf16) the bf16-operand reference, with the bounds above */
static void check_result(int bf16, const char *what, const float *got, const float *exact, const float *rounded,
                         size_t n) {
    double r = rel_l2(got, exact, n);
    if (!bf16) {
        check(r <= 1e-5, "fp32 %s: rel_l2 %.3g (tol 1e-5)", what, r);
        return;
    }
    double rr = rel_l2(got, rounded, n);
    check(rr <= 1e-5, "bf16 %s: vs bf16-rounded operands rel_l2 %.3g (tol 1e-5)", what, rr);
    check(r <= 1.0 / 128 && r > 1e-5, "bf16 %s: vs exact operands rel_l2 %.3g (within (1e-5, 2^-7])", what, r);
}

/* ---- GEMM ---- */

/* kind: 0 rows, 1 cols, 2 weight */
static void gemm_case(qd_ctx *ctx, int bf16, int64_t M, int64_t N, int64_t K, int ka, int kb, qd_dtype wdt,
                      const qd_weight *wext, const float *wext_ref, float alpha, float beta, int bias, int64_t cbatch) {
    unsigned seed = (unsigned)(M * 131 + N * 17 + K * 3 + ka * 7 + kb + (int)wdt * 11);
    float *a = malloc(sizeof(float) * (size_t)(M * K)), *b = malloc(sizeof(float) * (size_t)(N * K));
    float *at = malloc(sizeof(float) * (size_t)(M * K)), *bt = malloc(sizeof(float) * (size_t)(N * K));
    test_weight tw;
    memset(&tw, 0, sizeof tw);
    const qd_weight *w = wext;
    if (ka == 2 || kb == 2) {
        if (!wext) {
            make_weight(&tw, wdt, ka == 2 ? M : N, K, seed + 99);
            w = &tw.w;
        }
        memcpy(ka == 2 ? a : b, wext ? wext_ref : tw.ref, sizeof(float) * (size_t)((ka == 2 ? M : N) * K));
    }
    if (ka != 2) for (int64_t i = 0; i < M * K; i++) a[i] = frand(&seed);
    if (kb != 2) for (int64_t i = 0; i < N * K; i++) b[i] = frand(&seed);
    for (int64_t i = 0; i < M; i++) for (int64_t k = 0; k < K; k++) at[k * M + i] = a[i * K + k];
    for (int64_t j = 0; j < N; j++) for (int64_t k = 0; k < K; k++) bt[k * N + j] = b[j * K + k];
    float *rb = malloc(sizeof(float) * (size_t)M), *cb = malloc(sizeof(float) * (size_t)N);
    for (int64_t i = 0; i < M; i++) rb[i] = frand(&seed);
    for (int64_t j = 0; j < N; j++) cb[j] = frand(&seed);
    /* C: N split into batches of cbatch columns (0: plain row-major M x N) */
    int64_t nb = cbatch ? (N + cbatch - 1) / cbatch : 1, cols = cbatch ? cbatch : N;
    int64_t bstride = M * cols + 5, csize = nb * bstride;
    float *c = malloc(sizeof(float) * (size_t)csize), *exact = malloc(sizeof(float) * (size_t)(M * N)),
          *rounded = malloc(sizeof(float) * (size_t)(M * N)), *got = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t i = 0; i < csize; i++) c[i] = frand(&seed);
    float *c0copy = malloc(sizeof(float) * (size_t)csize);
    memcpy(c0copy, c, sizeof(float) * (size_t)csize);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float c0 = c[(j / cols) * bstride + i * cols + j % cols];
            double s = 0, sr = 0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)a[i * K + k] * b[j * K + k];
                sr += (double)bf16r(a[i * K + k]) * bf16r(b[j * K + k]);
            }
            double add = (beta != 0 ? beta * (double)c0 : 0) + (bias ? (double)rb[i] + cb[j] : 0);
            exact[i * N + j] = (float)(alpha * s + add);
            rounded[i * N + j] = (float)(alpha * sr + add);
        }
    qd_mat A = ka == 0 ? qd_rows(a, K) : ka == 1 ? qd_cols(at, M) : qd_wmat(w);
    qd_mat B = kb == 0 ? qd_rows(b, K) : kb == 1 ? qd_cols(bt, N) : qd_wmat(w);
    int rc = qd_gemm_cbatch(ctx, M, N, K, A, B, c, cols, cbatch, bstride, alpha, beta, bias ? rb : NULL, bias ? cb : NULL);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) got[i * N + j] = c[(j / cols) * bstride + i * cols + j % cols];
    /* the 5 floats after each batch of C are not C's: they must be untouched */
    int pad_ok = 1;
    for (int64_t bi = 0; bi < nb; bi++)
        for (int64_t q = M * cols; q < bstride; q++) pad_ok &= c[bi * bstride + q] == c0copy[bi * bstride + q];
    char what[256];
    static const char *kn[] = {"rows", "cols", "weight"};
    snprintf(what, sizeof what, "gemm M=%lld N=%lld K=%lld A=%s B=%s%s%s alpha=%g beta=%g bias=%d cbatch=%lld threads=%d",
             (long long)M, (long long)N, (long long)K, kn[ka], kn[kb], ka == 2 || kb == 2 ? " " : "",
             ka == 2 || kb == 2 ? (wext ? "sdnq" : dtname(wdt)) : "", alpha, beta, bias, (long long)cbatch,
             qd_threads(ctx));
    check(rc == 0 && pad_ok, "%s: ran, nothing outside C written", what);
    check_result(bf16, what, got, exact, rounded, (size_t)(M * N));
    free(a); free(b); free(at); free(bt); free(rb); free(cb); free(c); free(c0copy); free(exact); free(rounded);
    free(got);
    free_weight(&tw);
}

/* ---- convolution ---- */

static void conv_case(qd_ctx *ctx, int bf16, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int kh, int kw,
                      int stride, int pt, int pb, int pl, int pr, qd_dtype wdt, const qd_weight *wext,
                      const float *wext_ref, int bias) {
    unsigned seed = (unsigned)(B * 7 + Cin * 13 + H * 5 + W * 3 + Cout + kh * 31 + stride * 17 + pt + pb * 2 + pl * 4 + pr * 8);
    int64_t K = Cin * kh * kw, Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    test_weight tw;
    memset(&tw, 0, sizeof tw);
    const qd_weight *w = wext;
    const float *wref = wext_ref;
    if (!wext) {
        make_weight(&tw, wdt, Cout, K, seed + 5);
        w = &tw.w;
        wref = tw.ref;
    }
    size_t nx = (size_t)(B * Cin * H * W), ny = (size_t)(B * Cout * Ho * Wo);
    float *x = malloc(sizeof(float) * nx), *bs = malloc(sizeof(float) * (size_t)Cout);
    float *y = malloc(sizeof(float) * ny), *exact = malloc(sizeof(float) * ny), *rounded = malloc(sizeof(float) * ny);
    for (size_t i = 0; i < nx; i++) x[i] = frand(&seed);
    for (int64_t i = 0; i < Cout; i++) bs[i] = frand(&seed);
    for (size_t i = 0; i < ny; i++) y[i] = NAN;   /* every output must be written */
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < Cout; o++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double s = 0, sr = 0;
                    for (int64_t c = 0; c < Cin; c++)
                        for (int ky = 0; ky < kh; ky++)
                            for (int kx = 0; kx < kw; kx++) {
                                int64_t iy = oy * stride - pt + ky, ix = ox * stride - pl + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                float xv = x[((b * Cin + c) * H + iy) * W + ix], wv = wref[o * K + (c * kh + ky) * kw + kx];
                                s += (double)xv * wv;
                                sr += (double)bf16r(xv) * bf16r(wv);
                            }
                    size_t at = (size_t)(((b * Cout + o) * Ho + oy) * Wo + ox);
                    exact[at] = (float)(s + (bias ? bs[o] : 0));
                    rounded[at] = (float)(sr + (bias ? bs[o] : 0));
                }
    qd_conv2d_pad(ctx, x, B, Cin, H, W, w, bias ? bs : NULL, kh, kw, stride, pt, pb, pl, pr, y);
    char what[256];
    snprintf(what, sizeof what, "conv B=%lld Cin=%lld %lldx%lld -> Cout=%lld k%dx%d s%d pad %d,%d,%d,%d %s bias=%d threads=%d",
             (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, kh, kw, stride, pt, pb, pl, pr,
             wext ? "sdnq" : dtname(wdt), bias, qd_threads(ctx));
    check(qd_op_status(ctx) == QD_OK, "%s: ran", what);
    check_result(bf16, what, y, exact, rounded, ny);
    free(x); free(bs); free(y); free(exact); free(rounded);
    free_weight(&tw);
}

/* ---- the SDNQ layer ---- */

typedef struct {
    qd_st_set st;
    qd_sdnq_config *cfg;
    qd_weight w;
    void *state;
    float *ref;
    int64_t out, in;
} sdnq_layer;

static int sdnq_open(qd_ctx *ctx, const char *name, sdnq_layer *l) {
    char path[512], jpath[512];
    memset(l, 0, sizeof *l);
    snprintf(path, sizeof path, "%s%s.safetensors", fixture("sdnq/layers/"), name);
    snprintf(jpath, sizeof jpath, "%s%s.json", fixture("sdnq/layers/"), name);
    int64_t shape[8];
    int nd;
    l->ref = load_f32(path, "ref.dequantized_weight", shape, &nd, NULL);
    if (!l->ref) return 0;
    l->out = shape[0];
    l->in = shape[1];
    if (qd_sdnq_config_load_file(ctx, jpath, &l->cfg) != QD_OK || qd_st_open(ctx, path, &l->st) != QD_OK) return 0;
    int64_t ws[2] = {l->out, l->in};
    if (qd_sdnq_weight_open(ctx, l->cfg, &l->st, "model.layer", "layer", QD_SDNQ_LINEAR, 2, ws, &l->w, &l->state) != QD_OK)
        return 0;
    /* the kernels' bf16 semantics are checked on the exact decode; the bf16 SVD term of
     * decode_lowp has its own bound in test_sdnq_fast_decode */
    l->w.decode_lowp = NULL;
    return 1;
}

static void sdnq_close(sdnq_layer *l) {
    free(l->state);
    if (l->st.n_files) qd_st_close(&l->st);
    qd_sdnq_config_free(l->cfg);
    free(l->ref);
}

int main(void) {
    sdnq_layer sq;
    qd_ctx *octx = test_ctx_new(1);
    int have_sdnq = sdnq_open(octx, "uint4_svd_r8", &sq);
    if (!have_sdnq) printf("  %s\n", qd_last_error(octx));
    check(have_sdnq, "SDNQ fixture layer uint4_svd_r8 opens (%lld x %lld)", (long long)sq.out, (long long)sq.in);
    for (int threads = 1; threads <= 2; threads++) {
        qd_ctx *ctx = test_ctx_new(threads);
        for (int bf16 = 0; bf16 <= 1; bf16++) {
            qd_set_precision(ctx, bf16 ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
            if (bf16 && !qd_ctx_bf16(ctx)) {
                printf("note: no bf16 kernel here (CPU without AVX512_BF16, or QD_ISA): bf16 mode runs fp32, not tested\n");
                continue;
            }
            printf("-- %s, %d thread(s), kernel %s\n", bf16 ? "bf16" : "fp32", threads, qd_gemm_kernel_name(ctx));
            static const int64_t sizes[][3] = {{1, 1, 1}, {13, 33, 7}, {29, 95, 600}, {200, 47, 77}, {15, 300, 1031}};
            for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
                for (int ka = 0; ka < 3; ka++)
                    for (int kb = 0; kb < 3; kb++) {
                        if (ka == 2 && kb == 2) continue;
                        gemm_case(ctx, bf16, sizes[s][0], sizes[s][1], sizes[s][2], ka, kb, QD_F16, NULL, NULL, 1.0f,
                                  0.0f, 0, 0);
                    }
            static const qd_dtype dts[] = {QD_F32, QD_F16, QD_BF16, QD_F8_E4M3};
            for (size_t d = 0; d < 4; d++) {
                gemm_case(ctx, bf16, 70, 150, 530, 0, 2, dts[d], NULL, NULL, 1.0f, 0.0f, 1, 0);   /* linear */
                gemm_case(ctx, bf16, 45, 130, 300, 2, 1, dts[d], NULL, NULL, 1.0f, 0.0f, 1, 0);   /* conv-like */
            }
            gemm_case(ctx, bf16, 40, 260, 1200, 0, 2, QD_F16, NULL, NULL, 1.0f, 1.0f, 1, 0);      /* beta 1 */
            if (!bf16) gemm_case(ctx, bf16, 33, 70, 90, 1, 0, QD_F32, NULL, NULL, 0.5f, 0.25f, 1, 0);
            gemm_case(ctx, bf16, 31, 200, 300, 2, 1, QD_F16, NULL, NULL, 1.0f, 0.0f, 1, 45);      /* C batched */
            if (have_sdnq) {
                gemm_case(ctx, bf16, 37, sq.out, sq.in, 0, 2, 0, &sq.w, sq.ref, 1.0f, 0.0f, 1, 0);
                gemm_case(ctx, bf16, sq.out, 53, sq.in, 2, 0, 0, &sq.w, sq.ref, 1.0f, 0.0f, 0, 0);
                conv_case(ctx, bf16, 2, sq.in, 5, 7, sq.out, 1, 1, 1, 0, 0, 0, 0, 0, &sq.w, sq.ref, 1);
            }
            for (size_t d = 0; d < 4; d++) conv_case(ctx, bf16, 2, 5, 9, 11, 19, 3, 3, 1, 1, 1, 1, 1, dts[d], NULL, NULL, 1);
            conv_case(ctx, bf16, 1, 7, 12, 10, 16, 3, 3, 2, 0, 1, 0, 1, QD_F16, NULL, NULL, 1);   /* downsampler pad */
            conv_case(ctx, bf16, 3, 4, 13, 9, 5, 3, 3, 2, 1, 1, 1, 1, QD_F16, NULL, NULL, 0);
            /* stride 2 over rows of >= 32 outputs: the vectorised even-lane gather, with padding at both ends */
            conv_case(ctx, bf16, 2, 3, 7, 130, 9, 3, 3, 2, 0, 1, 0, 1, QD_F16, NULL, NULL, 1);
            conv_case(ctx, bf16, 1, 5, 6, 128, 7, 3, 3, 2, 1, 1, 1, 1, QD_F32, NULL, NULL, 1);
            conv_case(ctx, bf16, 2, 33, 8, 8, 40, 1, 1, 1, 0, 0, 0, 0, QD_F16, NULL, NULL, 1);
            conv_case(ctx, bf16, 1, 3, 40, 45, 30, 3, 3, 1, 2, 0, 1, 2, QD_BF16, NULL, NULL, 1);  /* asymmetric */
            conv_case(ctx, bf16, 2, 70, 6, 37, 33, 3, 3, 1, 1, 1, 1, 1, QD_F16, NULL, NULL, 1);   /* K > 1 block */
            conv_case(ctx, bf16, 1, 2, 5, 4, 3, 5, 3, 1, 2, 2, 1, 1, QD_F32, NULL, NULL, 1);     /* 5x3 kernel */
            /* few output pixels and K over several blocks: tensor/gemm_thin.c (odd Cin, a short
             * last strip of 3 rows, 32-column strips across images, stride 2, every dtype) */
            conv_case(ctx, bf16, 2, 75, 8, 8, 45, 3, 3, 1, 1, 1, 1, 1, QD_F16, NULL, NULL, 1);
            conv_case(ctx, bf16, 3, 61, 5, 7, 33, 3, 3, 1, 1, 1, 1, 1, QD_BF16, NULL, NULL, 1);
            conv_case(ctx, bf16, 2, 64, 9, 9, 20, 3, 3, 2, 0, 1, 0, 1, QD_F32, NULL, NULL, 0);
            conv_case(ctx, bf16, 1, 130, 4, 6, 31, 3, 3, 1, 1, 1, 1, 1, QD_F8_E4M3, NULL, NULL, 1);
            conv_case(ctx, bf16, 1, 64, 8, 8, 400, 3, 3, 1, 1, 1, 1, 1, QD_F16, NULL, NULL, 1);   /* many groups */
            /* few tokens against a weight, K over several blocks: the small-M split of
             * tensor/gemm_thin.c (cross-attention's k/v shape with an edge strip of N, 512
             * rows with a short last strip, A as columns, beta, C batched, every dtype) */
            gemm_case(ctx, bf16, 154, 330, 768, 0, 2, QD_F16, NULL, NULL, 1.0f, 0.0f, 1, 0);
            gemm_case(ctx, bf16, 512, 97, 1100, 0, 2, QD_BF16, NULL, NULL, 1.0f, 0.0f, 1, 0);
            gemm_case(ctx, bf16, 61, 700, 1030, 1, 2, QD_F32, NULL, NULL, 1.0f, 0.5f, 1, 0);
            gemm_case(ctx, bf16, 40, 200, 700, 0, 2, QD_F8_E4M3, NULL, NULL, 1.0f, 0.0f, 1, 45);
            if (!bf16) gemm_case(ctx, bf16, 23, 90, 1300, 0, 2, QD_F16, NULL, NULL, 0.5f, 0.25f, 1, 0);
        }
        qd_ctx_free(ctx);
    }
    /* more threads than this machine's CPUs: the split's claims and waits still cover every tile once */
    qd_ctx *ctx3 = test_ctx_new(3);
    printf("-- fp32, 3 threads\n");
    gemm_case(ctx3, 0, 154, 330, 768, 0, 2, QD_F16, NULL, NULL, 1.0f, 0.0f, 1, 0);
    gemm_case(ctx3, 0, 300, 1000, 2100, 0, 2, QD_BF16, NULL, NULL, 1.0f, 1.0f, 1, 0);
    conv_case(ctx3, 0, 2, 75, 8, 8, 300, 3, 3, 1, 1, 1, 1, 1, QD_F16, NULL, NULL, 1);
    qd_ctx_free(ctx3);
    sdnq_close(&sq);
    qd_ctx_free(octx);
    return test_summary();
}
