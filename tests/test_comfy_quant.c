/* comfy_quant reader (spec comfy-quant.md §1): files built here with known codes and
 * scales for every layout; the dequantized weights are compared with the spec's math
 * written out independently below (own fp8/e2m1/e8m0 decoders, the to_blocked swizzle
 * from its torch expression, a dense ConvRot Hadamard built from kron(H4)). Then tiles
 * through the qd_weight decode, a GEMM against the plain product, qd_read_tensor, the
 * _quantization_metadata override and malformed files (error names file, layer, problem). */
#include "testutil.h"
#include "io/safetensors.h"
#include "quant/comfy_quant.h"
#include "tensor/gemm.h"
#include "tensor/weight.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 11); }
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

/* ---- reference decoders (from the format definitions, not the library) ---- */
static double ref_e4m3(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return s ? -v : v;
}
static double ref_e5m2(uint8_t b) {
    int s = b >> 7, e = (b >> 2) & 31, m = b & 3;
    double v = e == 0 ? ldexp(m, -16) : ldexp(4 + m, e - 17);
    return s ? -v : v;
}
static const double e2m1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
static double ref_e2m1(int code) { return (code & 8 ? -1 : 1) * e2m1[code & 7]; }

/* to_blocked: A.view(R'/128,128,C'/4,4).permute(0,2,1,3).reshape(-1,4,32,4).transpose(1,2).reshape(-1,32,16) */
static void to_blocked(const uint8_t *A, int64_t R, int64_t C, uint8_t *out, int64_t *Rp, int64_t *Cp) {
    *Rp = (R + 127) / 128 * 128;
    *Cp = (C + 3) / 4 * 4;
    int64_t o = 0;
    for (int64_t rb = 0; rb < *Rp / 128; rb++)
        for (int64_t cb = 0; cb < *Cp / 4; cb++)            /* permute(0,2,1,3): (rb, cb, r128, c4) */
            for (int64_t b = 0; b < 32; b++)                /* transpose(1,2): (tile, b, a, c4) */
                for (int64_t a = 0; a < 4; a++)
                    for (int64_t c4 = 0; c4 < 4; c4++) {
                        int64_t r = rb * 128 + a * 32 + b, c = cb * 4 + c4;
                        out[o++] = (r < R && c < C) ? A[r * C + c] : 0;
                    }
}

/* Dense regular Hadamard: kron^k(H4)/sqrt(G). */
static double *dense_hadamard(int64_t G) {
    static const int h4[4][4] = {{1, 1, 1, -1}, {1, 1, -1, 1}, {1, -1, 1, 1}, {-1, 1, 1, 1}};
    int digits = 0;
    for (int64_t g = G; g > 1; g /= 4) digits++;
    double *H = malloc(sizeof(double) * (size_t)(G * G));
    for (int64_t i = 0; i < G; i++)
        for (int64_t j = 0; j < G; j++) {
            int sgn = 1;   /* kron: the product of H4 entries over the base-4 digits of i and j */
            int64_t a = i, b = j;
            for (int d = 0; d < digits; d++, a /= 4, b /= 4) sgn *= h4[a % 4][b % 4];
            H[i * G + j] = sgn / sqrt((double)G);
        }
    return H;
}

static void write_file(const char *path, qd_st_out *t, int n, const char *meta) {
    qd_ctx *ctx = test_ctx_new(1);
    qd_status st = qd_st_write(ctx, path, t, n, meta);
    if (st != QD_OK) check(0, "writing %s: %s", path, qd_last_error(ctx));
    qd_ctx_free(ctx);
}

static qd_st_out T(const char *name, qd_dtype d, int ndim, int64_t a, int64_t b, int64_t c, const void *data) {
    qd_st_out t = {name, d, ndim, {a, b, c}, data};
    return t;
}

/* Open `path`, find `layer`, dequantize, compare with ref[rows*cols] within rel 1e-6 (float rounding of
 * the products; the reference is in double). */
static void expect_weight(qd_ctx *ctx, const char *what, const char *path, const char *layer, int64_t rows,
                          int64_t cols, const double *ref) {
    qd_st_set st;
    qd_cq_model m;
    if (qd_st_open(ctx, path, &st) != QD_OK) { check(0, "%s: open: %s", what, qd_last_error(ctx)); return; }
    if (qd_cq_open(ctx, &st, path, &m) != QD_OK) {
        check(0, "%s: comfy_quant open: %s", what, qd_last_error(ctx));
        qd_st_close(&st);
        return;
    }
    const qd_cq_layer *l = qd_cq_find(&m, layer);
    check(l && l->rows == rows && l->cols == cols, "%s: layer found with logical shape [%lld, %lld]", what,
          (long long)rows, (long long)cols);
    if (l && l->rows == rows && l->cols == cols) {
        float *w = NULL;
        check(qd_cq_dequantize(ctx, l, &w) == QD_OK, "%s: dequantize", what);
        double maxerr = 0, maxref = 0;
        for (int64_t i = 0; i < rows * cols; i++) {
            maxerr = fmax(maxerr, fabs(w[i] - ref[i]));
            maxref = fmax(maxref, fabs(ref[i]));
        }
        check(maxerr <= 1e-6 * maxref, "%s: dequantized vs spec math: max abs err %.3g (max |W| %.3g, tol 1e-6 rel)",
              what, maxerr, maxref);
        /* tiles through the qd_weight: every 7x13 rectangle equals the full decode */
        qd_weight qw;
        qd_cq_weight(l, &qw);
        float tile[7 * 13];
        int same = 1;
        for (int64_t r0 = 0; r0 < rows; r0 += 7)
            for (int64_t k0 = 0; k0 < cols; k0 += 13) {
                int64_t nr = rows - r0 < 7 ? rows - r0 : 7, nk = cols - k0 < 13 ? cols - k0 : 13;
                qw.decode(&qw, r0, nr, k0, nk, tile, 13);
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t k = 0; k < nk; k++)
                        if (memcmp(&tile[r * 13 + k], &w[(r0 + r) * cols + k0 + k], 4)) same = 0;
            }
        check(same, "%s: 7x13 tiles decode bitwise like the whole weight", what);
        /* the GEMM over the weight: y = x . W^T against a double loop on the reference */
        int64_t M = 3;
        float *x = malloc(sizeof(float) * (size_t)(M * cols)), *y = malloc(sizeof(float) * (size_t)(M * rows));
        double *yr = malloc(sizeof(double) * (size_t)(M * rows));
        for (int64_t i = 0; i < M * cols; i++) x[i] = frand();
        qd_gemm(ctx, M, rows, cols, qd_rows(x, cols), qd_wmat(&qw), y, rows, 1.0f, 0.0f, NULL, NULL);
        double num = 0, den = 0;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < rows; j++) {
                double acc = 0;
                for (int64_t k = 0; k < cols; k++) acc += (double)x[i * cols + k] * ref[j * cols + k];
                num += (y[i * rows + j] - acc) * (y[i * rows + j] - acc);
                den += acc * acc;
            }
        check(sqrt(num / (den > 0 ? den : 1)) < 1e-5, "%s: GEMM through the qd_weight: rel L2 %.3g (tol 1e-5)", what,
              sqrt(num / (den > 0 ? den : 1)));
        free(x); free(y); free(yr); free(w);
    }
    qd_cq_close(&m);
    qd_st_close(&st);
}

static const char *cfg(const char *json) { return json; }
#define CQ(name, json) T(name, QD_U8, 1, (int64_t)strlen(json), 0, 0, json)

static void test_fp8(qd_ctx *ctx) {
    enum { N = 24, K = 40 };
    uint8_t q[N * K], q5[N * K];
    for (int i = 0; i < N * K; i++) {
        do q[i] = (uint8_t)rnd(); while ((q[i] & 0x7f) == 0x7f);
        do q5[i] = (uint8_t)rnd(); while (((q5[i] >> 2) & 31) == 31);
    }
    float s = 0.0123f, srow[N];
    for (int i = 0; i < N; i++) srow[i] = 0.001f * (float)(i + 1);
    const char *c1 = cfg("{\"format\": \"float8_e4m3fn\"}"), *c2 = cfg("{\"format\": \"float8_e5m2\"}"),
               *c3 = cfg("{\"format\": \"float8_e4m3fn_rowwise\"}");
    float one = 1.0f;
    qd_st_out t[] = {
        CQ("a.comfy_quant", c1), T("a.weight", QD_F8_E4M3, 2, N, K, 0, q), T("a.weight_scale", QD_F32, 0, 0, 0, 0, &s),
        T("a.input_scale", QD_F32, 0, 0, 0, 0, &one),
        CQ("b.comfy_quant", c2), T("b.weight", QD_F8_E5M2, 2, N, K, 0, q5), T("b.weight_scale", QD_F32, 0, 0, 0, 0, &s),
        CQ("c.comfy_quant", c3), T("c.weight", QD_F8_E4M3, 2, N, K, 0, q), T("c.weight_scale", QD_F32, 1, N, 0, 0, srow),
        T("plain.weight", QD_F32, 1, 1, 0, 0, &one),
    };
    const char *path = scratch_path("fp8.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), NULL);
    double *ref = malloc(sizeof(double) * N * K);
    for (int i = 0; i < N * K; i++) ref[i] = ref_e4m3(q[i]) * s;
    expect_weight(ctx, "float8_e4m3fn tensor-wise", path, "a", N, K, ref);
    for (int i = 0; i < N * K; i++) ref[i] = ref_e5m2(q5[i]) * s;
    expect_weight(ctx, "float8_e5m2 tensor-wise", path, "b.weight", N, K, ref);
    for (int i = 0; i < N * K; i++) ref[i] = ref_e4m3(q[i]) * srow[i / K];
    expect_weight(ctx, "float8_e4m3fn_rowwise", path, "c", N, K, ref);

    /* the input scale is bound; a plain tensor of the same file still reads as itself */
    qd_st_set st;
    qd_cq_model m;
    if (qd_st_open(ctx, path, &st) == QD_OK) {
        if (qd_cq_open(ctx, &st, path, &m) == QD_OK) {
            const qd_cq_layer *a = qd_cq_find(&m, "a");
            check(a && a->has_input_scale && a->input_scale == 1.0f && m.n_layers == 3 && !qd_cq_find(&m, "plain"),
                  "input_scale bound, 3 layers");
            qd_cq_close(&m);
        }
        qd_st_close(&st);
    }
    float *d = NULL;
    int64_t shape[8];
    int nd = 0;
    check(qd_read_tensor(ctx, path, "a.weight", &d, shape, &nd) == QD_OK && nd == 2 && shape[0] == N && shape[1] == K &&
              fabs(d[5] - ref_e4m3(q[5]) * s) < 1e-9,
          "qd_read_tensor returns the dequantized comfy_quant weight");
    free(d);
    d = NULL;
    check(qd_read_tensor(ctx, path, "plain.weight", &d, shape, &nd) == QD_OK && nd == 1 && d[0] == 1.0f,
          "qd_read_tensor still reads plain tensors");
    free(d);
    free(ref);
}

static void test_int8(qd_ctx *ctx) {
    enum { N = 20, K = 64 };
    int8_t q[N * K];
    for (int i = 0; i < N * K; i++) q[i] = (int8_t)(rnd() % 255 - 127);
    float s = 0.02f, srow[N];
    for (int i = 0; i < N; i++) srow[i] = 0.01f + 0.003f * (float)i;
    int64_t g = 16;
    qd_st_out t[] = {
        CQ("m.t.comfy_quant", "{\"format\": \"int8_tensorwise\"}"), T("m.t.weight", QD_I8, 2, N, K, 0, q),
        T("m.t.weight_scale", QD_F32, 0, 0, 0, 0, &s),
        CQ("m.r.comfy_quant", "{\"format\": \"int8_tensorwise\", \"per_row\": true}"), T("m.r.weight", QD_I8, 2, N, K, 0, q),
        T("m.r.weight_scale", QD_F32, 2, N, 1, 0, srow),
        CQ("m.c.comfy_quant", "{\"format\": \"int8_tensorwise\", \"convrot\": true, \"convrot_groupsize\": 16}"),
        T("m.c.weight", QD_I8, 2, N, K, 0, q), T("m.c.weight_scale", QD_F32, 2, N, 1, 0, srow),
        /* legacy "params" nesting (spec §1.3) */
        CQ("m.p.comfy_quant", "{\"format\": \"int8_tensorwise\", \"params\": {\"convrot\": true, \"convrot_groupsize\": 64}}"),
        T("m.p.weight", QD_I8, 2, N, K, 0, q), T("m.p.weight_scale", QD_F32, 1, N, 0, 0, srow),
    };
    const char *path = scratch_path("int8.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), NULL);
    double *ref = malloc(sizeof(double) * N * K);
    for (int i = 0; i < N * K; i++) ref[i] = q[i] * (double)s;
    expect_weight(ctx, "int8_tensorwise scalar", path, "m.t", N, K, ref);
    for (int i = 0; i < N * K; i++) ref[i] = q[i] * (double)srow[i / K];
    expect_weight(ctx, "int8_tensorwise per-row [N,1]", path, "m.r", N, K, ref);
    /* ConvRot: W = (q*s) . H per 16-column group */
    for (int64_t gs = 16; gs <= 64; gs *= 4) {
        double *H = dense_hadamard(gs);
        for (int64_t r = 0; r < N; r++)
            for (int64_t b = 0; b < K; b += gs)
                for (int64_t j = 0; j < gs; j++) {
                    double acc = 0;
                    for (int64_t i = 0; i < gs; i++) acc += q[r * K + b + i] * (double)srow[r] * H[i * gs + j];
                    ref[r * K + b + j] = acc;
                }
        free(H);
        expect_weight(ctx, gs == 16 ? "int8_tensorwise ConvRot G=16" : "int8_tensorwise ConvRot G=64 (params nesting)",
                      path, gs == 16 ? "m.c" : "m.p", N, K, ref);
    }
    /* int8_blockwise: 4x4 tiles [5, 16]; the fork's row-group [20, 16, 1] under the same name */
    float tile[5 * 16], rg[N * 16];
    for (int i = 0; i < 5 * 16; i++) tile[i] = 0.001f * (float)(i + 1);
    for (int i = 0; i < N * 16; i++) rg[i] = 0.002f * (float)(i % 37 + 1);
    qd_st_out tb[] = {
        CQ("b.t.comfy_quant", "{\"format\": \"int8_blockwise\", \"group_size\": 4}"), T("b.t.weight", QD_I8, 2, N, K, 0, q),
        T("b.t.weight_scale", QD_F32, 2, 5, 16, 0, tile),
        CQ("b.g.comfy_quant", "{\"format\": \"int8_blockwise\"}"), T("b.g.weight", QD_I8, 2, N, K, 0, q),
        T("b.g.weight_scale", QD_F32, 3, N, 16, 1, rg),
    };
    const char *pb = scratch_path("int8b.safetensors");
    write_file(pb, tb, (int)(sizeof tb / sizeof tb[0]), NULL);
    for (int i = 0; i < N * K; i++) ref[i] = q[i] * (double)tile[(i / K / 4) * 16 + (i % K) / 4];
    expect_weight(ctx, "int8_blockwise 4x4 tiles", pb, "b.t", N, K, ref);
    for (int i = 0; i < N * K; i++) ref[i] = q[i] * (double)rg[(i / K) * 16 + (i % K) / 4];
    expect_weight(ctx, "int8_blockwise row-groups [N, K/4, 1]", pb, "b.g", N, K, ref);
    (void)g;
    free(ref);
}

/* nvfp4 [N=20, K=40]: storage padded to [32, 48/2], block scales [32, 3] swizzled to [128, 4]. */
static void test_nvfp4(qd_ctx *ctx) {
    enum { N = 20, K = 40, NP = 32, KP = 48 };
    uint8_t codes[NP * KP] = {0}, packed[NP * KP / 2], bs[NP * (KP / 16)], swz[128 * 4];
    for (int r = 0; r < N; r++)
        for (int c = 0; c < K; c++) codes[r * KP + c] = (uint8_t)(rnd() & 15);
    for (int i = 0; i < NP * KP / 2; i++) packed[i] = (uint8_t)(codes[2 * i] << 4 | codes[2 * i + 1]);   /* hi_first */
    for (int i = 0; i < NP * (KP / 16); i++) bs[i] = (uint8_t)(0x20 + rnd() % 0x50);   /* positive e4m3 */
    int64_t Rp, Cp;
    to_blocked(bs, NP, KP / 16, swz, &Rp, &Cp);
    float g = 0.0371f;
    float pqs[K];
    for (int i = 0; i < K; i++) pqs[i] = 0.5f + 0.01f * (float)i;
    const char *c = "{\"format\": \"nvfp4\", \"group_size\": 16, \"orig_dtype\": \"torch.bfloat16\", \"orig_shape\": [20, 40]}";
    qd_st_out t[] = {
        CQ("n.comfy_quant", c), T("n.weight", QD_U8, 2, NP, KP / 2, 0, packed),
        T("n.weight_scale", QD_F8_E4M3, 2, Rp, Cp, 0, swz), T("n.weight_scale_2", QD_F32, 0, 0, 0, 0, &g),
        CQ("p.comfy_quant", c), T("p.weight", QD_U8, 2, NP, KP / 2, 0, packed),
        T("p.weight_scale", QD_U8, 2, Rp, Cp, 0, swz), T("p.weight_scale_2", QD_F32, 0, 0, 0, 0, &g),
        T("p.pre_quant_scale", QD_F32, 1, K, 0, 0, pqs),
    };
    check(Rp == 128 && Cp == 4, "to_blocked pads [32,3] to [128,4]");
    const char *path = scratch_path("nvfp4.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), NULL);
    double *ref = malloc(sizeof(double) * N * K);
    for (int r = 0; r < N; r++)
        for (int k = 0; k < K; k++) ref[r * K + k] = ref_e2m1(codes[r * KP + k]) * ((double)g * ref_e4m3(bs[r * 3 + k / 16]));
    expect_weight(ctx, "nvfp4 (padded, swizzled, hi nibble first)", path, "n", N, K, ref);
    for (int r = 0; r < N; r++)
        for (int k = 0; k < K; k++) ref[r * K + k] *= pqs[k];
    expect_weight(ctx, "nvfp4 with pre_quant_scale (U8 block scales)", path, "p", N, K, ref);
    free(ref);
}

/* mxfp8 [N=40, K=70]: storage [64, 96], E8M0 scales [64, 3] swizzled to [128, 4]; one block all-zero (e=0). */
static void test_mxfp8(qd_ctx *ctx) {
    enum { N = 40, K = 70, NP = 64, KP = 96 };
    uint8_t q[NP * KP] = {0}, e[NP * 3], swz[128 * 4];
    for (int r = 0; r < N; r++)
        for (int k = 0; k < K; k++) do q[r * KP + k] = (uint8_t)rnd(); while ((q[r * KP + k] & 0x7f) == 0x7f);
    for (int i = 0; i < NP * 3; i++) e[i] = (uint8_t)(110 + rnd() % 30);
    e[5 * 3 + 1] = 0;
    int64_t Rp, Cp;
    to_blocked(e, NP, 3, swz, &Rp, &Cp);
    const char *c = "{\"format\": \"mxfp8\", \"group_size\": 32, \"orig_shape\": [40, 70]}";
    qd_st_out t[] = {
        CQ("x.comfy_quant", c), T("x.weight", QD_F8_E4M3, 2, NP, KP, 0, q), T("x.weight_scale", QD_U8, 2, Rp, Cp, 0, swz),
        CQ("y.comfy_quant", "{\"format\": \"hybrid_mxfp8\"}"), T("y.weight", QD_F8_E4M3, 2, NP, KP, 0, q),
        T("y.weight_scale", QD_F8_E8M0, 2, Rp, Cp, 0, swz),
    };
    const char *path = scratch_path("mxfp8.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), NULL);
    double *ref = malloc(sizeof(double) * NP * KP);
    for (int r = 0; r < N; r++)
        for (int k = 0; k < K; k++) {
            int ex = e[r * 3 + k / 32];
            ref[r * K + k] = ex ? ref_e4m3(q[r * KP + k]) * ldexp(1, ex - 127) : 0.0;
        }
    expect_weight(ctx, "mxfp8 (padded, swizzled E8M0 as U8, zero block)", path, "x", N, K, ref);
    for (int r = 0; r < NP; r++)
        for (int k = 0; k < KP; k++) {
            int ex = e[r * 3 + k / 32];
            ref[r * KP + k] = ex ? ref_e4m3(q[r * KP + k]) * ldexp(1, ex - 127) : 0.0;
        }
    expect_weight(ctx, "hybrid_mxfp8 without orig_shape (padded shape, F8_E8M0 scales)", path, "y", NP, KP, ref);
    free(ref);
}

/* __metadata__._quantization_metadata overrides the tensors; its keys lack model.diffusion_model. */
static void test_metadata_override(qd_ctx *ctx) {
    enum { N = 8, K = 16 };
    uint8_t q[N * K];
    for (int i = 0; i < N * K; i++) do q[i] = (uint8_t)rnd(); while ((q[i] & 0x7f) == 0x7f);
    float s = 0.5f;
    qd_st_out t[] = {
        /* the tensor config is wrong for an E4M3 weight; the header's entry wins */
        CQ("model.diffusion_model.l.comfy_quant", "{\"format\": \"float8_e5m2\"}"),
        T("model.diffusion_model.l.weight", QD_F8_E4M3, 2, N, K, 0, q),
        T("model.diffusion_model.l.weight_scale", QD_F32, 0, 0, 0, 0, &s),
        T("model.diffusion_model.h.weight", QD_F8_E4M3, 2, N, K, 0, q),     /* header only */
        T("model.diffusion_model.h.weight_scale", QD_F32, 0, 0, 0, 0, &s),
    };
    const char *meta = "\"_quantization_metadata\":\"{\\\"format_version\\\": \\\"1.0\\\", \\\"layers\\\": "
                       "{\\\"l\\\": {\\\"format\\\": \\\"float8_e4m3fn\\\"}, \\\"h\\\": {\\\"format\\\": \\\"float8_e4m3fn\\\"}}}\"";
    const char *path = scratch_path("meta.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), meta);
    double ref[N * K];
    for (int i = 0; i < N * K; i++) ref[i] = ref_e4m3(q[i]) * s;
    expect_weight(ctx, "_quantization_metadata overrides a tensor config", path, "model.diffusion_model.l", N, K, ref);
    expect_weight(ctx, "_quantization_metadata creates a layer config", path, "model.diffusion_model.h", N, K, ref);
}

/* Legacy scaled_fp8 (§1.2): marker [2] -> full_precision_matrix_mult; .scale_weight is the scale,
 * .scale_input the input scale unless it is 1.0; a dummy scale on a BF16 weight is no layer. */
static void test_legacy_scaled_fp8(qd_ctx *ctx) {
    enum { N = 8, K = 16 };
    uint8_t q[N * K], marker[2] = {0, 0};
    uint16_t bf[N * K];
    for (int i = 0; i < N * K; i++) { do q[i] = (uint8_t)rnd(); while ((q[i] & 0x7f) == 0x7f); bf[i] = 0x3f80; }
    float s = 0.25f, si = 0.5f, one = 1.0f;
    qd_st_out t[] = {
        T("scaled_fp8", QD_F8_E4M3, 1, 2, 0, 0, marker),
        T("a.weight", QD_F8_E4M3, 2, N, K, 0, q), T("a.scale_weight", QD_F32, 0, 0, 0, 0, &s),
        T("a.scale_input", QD_F32, 0, 0, 0, 0, &si),
        T("b.weight", QD_F8_E4M3, 2, N, K, 0, q), T("b.scale_weight", QD_F32, 1, 1, 0, 0, &s),
        T("b.scale_input", QD_F32, 0, 0, 0, 0, &one),
        T("c.weight", QD_BF16, 2, N, K, 0, bf), T("c.scale_weight", QD_F32, 0, 0, 0, 0, &one),
    };
    const char *path = scratch_path("legacy.safetensors");
    write_file(path, t, (int)(sizeof t / sizeof t[0]), NULL);
    double ref[N * K];
    for (int i = 0; i < N * K; i++) ref[i] = ref_e4m3(q[i]) * s;
    expect_weight(ctx, "legacy scaled_fp8 layer", path, "a", N, K, ref);
    qd_st_set st;
    qd_cq_model m;
    if (qd_st_open(ctx, path, &st) == QD_OK) {
        if (qd_cq_open(ctx, &st, path, &m) == QD_OK) {
            const qd_cq_layer *a = qd_cq_find(&m, "a"), *b = qd_cq_find(&m, "b");
            check(m.n_layers == 2 && a && b && !qd_cq_find(&m, "c") && a->full_precision_mm && a->has_input_scale &&
                      a->input_scale == 0.5f && !b->has_input_scale && !strcmp(a->format_name, "float8_e4m3fn"),
                  "legacy: 2 layers, full_precision_matrix_mult from the 2-element marker, input scale 0.5 kept, 1.0 dropped");
            qd_cq_close(&m);
        } else {
            check(0, "legacy open: %s", qd_last_error(ctx));
        }
        qd_st_close(&st);
    }
}

static void expect_bad(qd_ctx *ctx, const char *what, qd_st_out *t, int n, const char *meta, const char *want1,
                       const char *want2) {
    const char *path = scratch_path("bad.safetensors");
    write_file(path, t, n, meta);
    qd_st_set st;
    if (qd_st_open(ctx, path, &st) != QD_OK) { check(0, "%s: reader refused the file: %s", what, qd_last_error(ctx)); return; }
    qd_cq_model m;
    qd_status s = qd_cq_open(ctx, &st, path, &m);
    const char *e = qd_last_error(ctx);
    check(s != QD_OK && strstr(e, path) && strstr(e, want1) && (!want2 || strstr(e, want2)), "%s: %s", what, e);
    if (s == QD_OK) qd_cq_close(&m);
    qd_st_close(&st);
    float *d = NULL;
    int64_t shape[8];
    int nd;
    check(qd_read_tensor(ctx, path, "l.weight", &d, shape, &nd) != QD_OK && d == NULL, "%s: qd_read_tensor fails too", what);
}

static void test_bad(qd_ctx *ctx) {
    int8_t q[8 * 16] = {0};
    uint8_t u[64 * 64] = {0};
    float s = 1, s3[3] = {1, 1, 1}, nan = NAN;
    float srow[8] = {1, 1, 1, 1, 1, 1, 1, 1};
#define BAD(what, meta, w1, w2, ...) do { qd_st_out t_[] = {__VA_ARGS__}; \
        expect_bad(ctx, what, t_, (int)(sizeof t_ / sizeof t_[0]), meta, w1, w2); } while (0)
    BAD("unknown format", NULL, "layer 'l'", "format 'int4_magic' is unknown",
        CQ("l.comfy_quant", "{\"format\": \"int4_magic\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("core format qdiff lacks", NULL, "'convrot_w4a4'", "not supported",
        CQ("l.comfy_quant", "{\"format\": \"convrot_w4a4\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("no format", NULL, "layer 'l'", "no \"format\"",
        CQ("l.comfy_quant", "{\"convrot\": true}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("config not JSON", NULL, "layer 'l'", "not a JSON object",
        CQ("l.comfy_quant", "{\"format\": "), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("config not U8", NULL, "layer 'l'", "1-D U8",
        T("l.comfy_quant", QD_F32, 0, 0, 0, 0, &s), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("missing scale", NULL, "layer 'l'", "l.weight_scale' is missing",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q));
    BAD("missing weight", NULL, "layer 'l'", "l.weight' is missing",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\"}"), T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("scale shape fits nothing", NULL, "weight_scale has shape [3]", "[8, 16]",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 1, 3, 0, 0, s3));
    BAD("NaN scale", NULL, "layer 'l'", "weight_scale[0] is nan",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &nan));
    BAD("weight dtype", NULL, "weight is I8 [8,16]", "F8_E4M3",
        CQ("l.comfy_quant", "{\"format\": \"float8_e4m3fn\"}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("convrot group not a power of 4", NULL, "convrot_groupsize 8", "power of 4",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\", \"convrot\": true, \"convrot_groupsize\": 8}"),
        T("l.weight", QD_I8, 2, 8, 16, 0, q), T("l.weight_scale", QD_F32, 1, 8, 0, 0, srow));
    BAD("convrot group does not divide K", NULL, "convrot_groupsize 64", "16 input features",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\", \"convrot\": true, \"convrot_groupsize\": 64}"),
        T("l.weight", QD_I8, 2, 8, 16, 0, q), T("l.weight_scale", QD_F32, 1, 8, 0, 0, srow));
    BAD("nvfp4 scale size", NULL, "swizzled block scales [128, 4]", "layer 'l'",
        CQ("l.comfy_quant", "{\"format\": \"nvfp4\"}"), T("l.weight", QD_U8, 2, 16, 8, 0, u),
        T("l.weight_scale", QD_F8_E4M3, 2, 16, 1, 0, u), T("l.weight_scale_2", QD_F32, 0, 0, 0, 0, &s));
    BAD("nvfp4 without weight_scale_2", NULL, "weight_scale_2", "layer 'l'",
        CQ("l.comfy_quant", "{\"format\": \"nvfp4\"}"), T("l.weight", QD_U8, 2, 16, 8, 0, u),
        T("l.weight_scale", QD_F8_E4M3, 2, 128, 4, 0, u));
    BAD("nvfp4 orig_shape that does not fit", NULL, "orig_shape", "layer 'l'",
        CQ("l.comfy_quant", "{\"format\": \"nvfp4\", \"orig_shape\": [40, 16]}"), T("l.weight", QD_U8, 2, 16, 8, 0, u),
        T("l.weight_scale", QD_F8_E4M3, 2, 128, 4, 0, u), T("l.weight_scale_2", QD_F32, 0, 0, 0, 0, &s));
    uint8_t nanscale[512] = {0};
    nanscale[0] = 0x7f;
    BAD("nvfp4 NaN block scale", NULL, "block scale (0, 0) is NaN", "layer 'l'",
        CQ("l.comfy_quant", "{\"format\": \"nvfp4\"}"), T("l.weight", QD_U8, 2, 16, 8, 0, u),
        T("l.weight_scale", QD_F8_E4M3, 2, 128, 4, 0, nanscale), T("l.weight_scale_2", QD_F32, 0, 0, 0, 0, &s));
    uint8_t e255[512] = {0};
    e255[16 * 1] = 255;   /* row 1, column 0 */
    BAD("mxfp8 E8M0 NaN", NULL, "block scale (1, 0) is NaN", "layer 'l'",
        CQ("l.comfy_quant", "{\"format\": \"mxfp8\"}"), T("l.weight", QD_F8_E4M3, 2, 32, 32, 0, u),
        T("l.weight_scale", QD_U8, 2, 128, 4, 0, e255));
    BAD("MoE banks", NULL, "num_experts", "not supported",
        CQ("l.comfy_quant", "{\"format\": \"int8_tensorwise\", \"num_experts\": 4}"), T("l.weight", QD_I8, 2, 8, 16, 0, q),
        T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
    BAD("metadata not JSON", "\"_quantization_metadata\":\"{oops\"", "_quantization_metadata", NULL,
        T("l.weight", QD_I8, 2, 8, 16, 0, q));
    BAD("metadata layer with a bad format", "\"_quantization_metadata\":\"{\\\"layers\\\": {\\\"l\\\": {\\\"format\\\": \\\"fp3\\\"}}}\"",
        "format 'fp3' is unknown", "layer 'l'",
        T("l.weight", QD_I8, 2, 8, 16, 0, q), T("l.weight_scale", QD_F32, 0, 0, 0, 0, &s));
#undef BAD
}

int main(void) {
    if (!scratch_make("cq_test")) return test_summary();
    qd_ctx *ctx = test_ctx_new(2);
    test_fp8(ctx);
    test_int8(ctx);
    test_nvfp4(ctx);
    test_mxfp8(ctx);
    test_metadata_override(ctx);
    test_legacy_scaled_fp8(ctx);
    test_bad(ctx);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
