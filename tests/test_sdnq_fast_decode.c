/* The vectorised SDNQ decode (src/quant/sdnq_decode_fast.c), the GEMM's tile-wise
 * weight packing and the few-token GEMV (src/tensor/gemv.c):
 *   1. every sdnq fixture layer: the fast decode vs sdnq's ref.dequantized_weight
 *      (rel. L2 <= 1e-6) and vs the scalar decode (max-abs <= 1e-6 of max |w|);
 *   2. synthetic layers the fixtures lack (Conv 3x3 grouped / row-wise with zero
 *      points, all-zero groups and SVD; tensor-wise; packed int1/2/4 and fp4/fp6/fp8 codes;
 *      odd starts): fast vs scalar on whole matrices and odd rectangles;
 *      transposed int8 layouts also k-major (decode_kmajor) vs the scalar decode;
 *      with SVD also the bf16 GEMM's decode (bf16 SVD products) vs sdnq (rel. L2 <= 2^-8)
 *      and bf16-mode GEMMs vs the double reference (<= 2^-7, the bf16 GEMM bound);
 *   3. qd_gemm with an SDNQ weight (packed path, M = 37, fp32 and bf16) and with dense
 *      bf16 / SDNQ weights for M = 1..QD_GEMV_MAX_M (GEMV path) against a double-precision
 *      product of the scalar-decoded weight;
 *   4. --matmul int8 for one token (sdnq_gemv_i8.c) against the packed int8 GEMM, which
 *      test_sdnq_layers checks against sdnq's algorithm in double precision. */
#include "testutil.h"
#include "base/ctx.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_unpack.h"
#include "quant/sdnq_weight.h"
#include "quant/sdnq_decode_fast.h"
#include "tensor/gemm.h"
#include "tensor/gemv.h"
#include "tensor/ops.h"
#include "base/half.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rng_state = 12345;
static uint32_t rnd(void) { rng_state = rng_state * 1664525u + 1013904223u; return rng_state >> 8; }
static float frand(void) { return (float)(rnd() % 20001) / 10000.0f - 1.0f; }

static double max_diff_rel(const float *a, const float *b, size_t n) {
    double m = max_abs(b, n);
    return max_abs_diff(a, b, n) / (m > 0 ? m : 1);
}

/* y[M, N] = x . W^T in double, W given as floats */
static void ref_gemm(const float *x, const float *w, int64_t M, int64_t N, int64_t K, const float *bias, float *y) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = bias ? bias[n] : 0;
            for (int64_t k = 0; k < K; k++) s += (double)x[m * K + k] * w[n * K + k];
            y[m * N + n] = (float)s;
        }
}

/* qd_gemm over the weight for M tokens vs the double product of `full`. */
static void check_gemm(qd_ctx *ctx, const char *what, const qd_weight *w, const float *full, int64_t M, double tol) {
    int64_t N = w->rows, K = w->cols;
    float *x = malloc(sizeof(float) * (size_t)(M * K)), *y = malloc(sizeof(float) * (size_t)(M * N));
    float *ref = malloc(sizeof(float) * (size_t)(M * N)), *bias = malloc(sizeof(float) * (size_t)N);
    for (int64_t i = 0; i < M * K; i++) x[i] = frand();
    for (int64_t i = 0; i < N; i++) bias[i] = frand();
    ref_gemm(x, full, M, N, K, bias, ref);
    qd_gemm(ctx, M, N, K, qd_rows(x, K), qd_wmat(w), y, N, 1.0f, 0.0f, NULL, bias);
    double r = rel_l2(y, ref, (size_t)(M * N));
    check(r <= tol, "%s: qd_gemm M=%lld N=%lld K=%lld vs double reference: rel_l2 %.3g (tol %.0e)", what, (long long)M,
          (long long)N, (long long)K, r, tol);
    free(x); free(y); free(ref); free(bias);
}

/* ---- 1. fixture layers ---- */

static int fixture_case(qd_ctx *ctx, const char *name) {
    char path[512], jpath[512];
    snprintf(path, sizeof path, "%s%s.safetensors", fixture("sdnq/layers/"), name);
    snprintf(jpath, sizeof jpath, "%s%s.json", fixture("sdnq/layers/"), name);
    int64_t shape[8];
    int nd;
    float *ref = load_f32(path, "ref.dequantized_weight", shape, &nd, NULL);
    qd_sdnq_config *cfg = NULL;
    qd_st_set st;
    memset(&st, 0, sizeof st);
    qd_weight w;
    void *state = NULL;
    int fast = 0;
    if (!ref || qd_sdnq_config_load_file(ctx, jpath, &cfg) != QD_OK || qd_st_open(ctx, path, &st) != QD_OK ||
        qd_sdnq_weight_open(ctx, cfg, &st, "model.layer", "layer", QD_SDNQ_LINEAR, 2, shape, &w, &state) != QD_OK) {
        check(0, "%s: open (%s)", name, qd_last_error(ctx));
    } else {
        const qd_sdnq_state *s = state;
        fast = s->fast;
        size_t n = (size_t)(shape[0] * shape[1]);
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        w.decode(&w, 0, w.rows, 0, w.cols, a, w.cols);
        qd_sdnq_decode_scalar(s, 0, w.rows, 0, w.cols, b, w.cols);
        double r = rel_l2(a, ref, n), d = max_diff_rel(a, b, n);
        check(r <= 1e-6 && d <= 1e-6, "%s (%s%s): decode vs sdnq rel_l2 %.3g (tol 1e-6), vs scalar decode max-abs %.3g of max|w| (tol 1e-6)",
              name, s->l.dtype.name, fast ? ", fast path" : ", scalar path", r, d);
        /* odd rectangles: same bits as the whole decode */
        int64_t rects[][4] = {{1, 3, 1, 45}, {2, 5, 17, 33}, {w.rows - 2, 2, w.cols - 19, 19}};
        int same = 1;
        for (int i = 0; i < 3; i++) {
            int64_t r0 = rects[i][0], nr = rects[i][1], k0 = rects[i][2], nk = rects[i][3];
            if (r0 < 0 || k0 < 0 || r0 + nr > w.rows || k0 + nk > w.cols) continue;
            float *p = malloc(sizeof(float) * (size_t)(nr * nk));
            w.decode(&w, r0, nr, k0, nk, p, nk);
            for (int64_t q = 0; q < nr; q++)
                if (memcmp(p + q * nk, a + (r0 + q) * w.cols + k0, sizeof(float) * (size_t)nk)) same = 0;
            free(p);
        }
        check(same, "%s: odd rectangles decode to the same bits as the whole matrix", name);
        for (int64_t M = 1; M <= QD_GEMV_MAX_M; M += QD_GEMV_MAX_M - 1) check_gemm(ctx, name, &w, ref, M, 2e-6);
        check_gemm(ctx, name, &w, ref, 37, 2e-6);
        {   /* int8 matmul, one token: the GEMV vs the packed int8 GEMM (QD_NO_GEMV) */
            float *x = malloc(sizeof(float) * (size_t)w.cols), *y1 = malloc(sizeof(float) * (size_t)w.rows);
            float *y2 = malloc(sizeof(float) * (size_t)w.rows);
            for (int64_t k = 0; k < w.cols; k++) x[k] = frand();
            qd_set_matmul(ctx, QD_MATMUL_INT8);
            setenv("QD_I8_GEMV", "1", 1);   /* opt-in path */
            qd_linear(ctx, x, 1, &w, NULL, y1);
            unsetenv("QD_I8_GEMV");
            qd_linear(ctx, x, 1, &w, NULL, y2);
            qd_set_matmul(ctx, QD_MATMUL_CONFIG);
            double ri = rel_l2(y1, y2, (size_t)w.rows);
            check(ri <= 1e-6, "%s: int8 matmul, 1 token: GEMV vs packed int8 GEMM rel_l2 %.3g (tol 1e-6)", name, ri);
            free(x); free(y1); free(y2);
        }
        if (w.decode_kmajor) {   /* input-major storage decoded k-major: the same numbers, padding lanes 0 */
            int ok = 1;
            float *panel = malloc(sizeof(float) * (size_t)(w.cols * 32));
            for (int64_t r0 = 0; r0 < w.rows; r0 += 32) {
                int nr = (int)(w.rows - r0 < 32 ? w.rows - r0 : 32);
                w.decode_kmajor(&w, r0, nr, 0, w.cols, panel, 32);
                for (int64_t k = 0; k < w.cols; k++)
                    for (int r = 0; r < 32; r++) {
                        float want = r < nr ? b[(r0 + r) * w.cols + k] : 0.0f;
                        if (fabsf(panel[k * 32 + r] - want) > 1e-6f * (fabsf(want) + 1e-3f)) ok = 0;
                    }
            }
            check(ok, "%s: k-major decode (input-major storage) equals the scalar decode (rel 1e-6), padding lanes 0", name);
            free(panel);
        }
        if (w.decode_lowp) {   /* the bf16 GEMM's decode: SVD term from bf16 products */
            w.decode_lowp(&w, 0, w.rows, 0, w.cols, a, w.cols);
            double rl = rel_l2(a, ref, n);
            check(rl <= 1.0 / 256, "%s: bf16-GEMM decode (bf16 SVD products) vs sdnq rel_l2 %.3g (tol 2^-8)", name, rl);
            qd_set_precision(ctx, QD_PRECISION_BF16);
            check_gemm(ctx, name, &w, ref, 1, 1.0 / 128);
            check_gemm(ctx, name, &w, ref, 37, 1.0 / 128);
            qd_set_precision(ctx, QD_PRECISION_FP32);
        }
        free(a); free(b);
    }
    free(state);
    if (st.n_files) qd_st_close(&st);
    qd_sdnq_config_free(cfg);
    free(ref);
    return fast;
}

static void test_fixtures(qd_ctx *ctx) {
    char *text = test_read_file(fixture("sdnq/layers/index.json"), NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    int count = 0, fast = 0;
    for (const cJSON *e = cases ? cases->child : NULL; e; e = e->next) {
        const cJSON *name = cJSON_GetObjectItem(e, "case");
        if (cJSON_IsString(name)) { fast += fixture_case(ctx, name->valuestring); count++; }
    }
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    check(count >= 20, "ran %d fixture layers", count);
    /* all but hadamard, codebook and the transposed (qmm) layouts take the fast path */
    check(!avx512 || fast >= count - 4, "%d of %d fixture layers decoded by the fast path", fast, count);
    cJSON_Delete(root);
    free(text);
}

/* ---- 2. synthetic layers ---- */

typedef struct {
    const char *dtype;
    int64_t out, in, ksize, groups;   /* groups 0: row-wise; -1: tensor-wise */
    int zp, svd;
} synth;

static void test_synth(qd_ctx *ctx, const synth *c) {
    qd_sdnq_state *s = calloc(1, sizeof *s);
    qd_sdnq_layout *l = &s->l;
    if (qd_sdnq_dtype_parse(c->dtype, &l->dtype) != 0) { check(0, "parse %s", c->dtype); free(s); return; }
    snprintf(l->param, sizeof l->param, "synth.%s", c->dtype);
    l->cls = c->ksize > 1 ? QD_SDNQ_CONV : QD_SDNQ_LINEAR;
    l->out = c->out;
    l->in = c->in;
    l->ksize = c->ksize;
    l->cols = c->in * c->ksize;
    l->grouping = c->groups > 0 ? QD_SDNQ_GROUPED : c->groups == 0 ? QD_SDNQ_ROWWISE : QD_SDNQ_TENSORWISE;
    l->groups = c->groups > 0 ? c->groups : 1;
    l->group_size = c->in / l->groups;
    l->zero_point = c->zp;
    l->svd = c->svd > 0;
    l->svd_rank = c->svd;
    qd_sdnq_scale_strides(l, &s->so, &s->sg, &s->sp);
    int64_t n = l->out * l->cols;
    int64_t bytes = (l->dtype.packed ? qd_sdnq_storage_elems(&l->dtype, n) * l->dtype.word_bytes
                                     : n * (int64_t)qd_dtype_size(l->dtype.storage));
    uint8_t *codes = malloc((size_t)bytes);
    for (int64_t i = 0; i < bytes; i++) codes[i] = (uint8_t)rnd();
    int64_t nscale = l->out * l->groups * l->ksize;
    float *scale = malloc(sizeof(float) * (size_t)nscale), *zp = malloc(sizeof(float) * (size_t)nscale);
    for (int64_t i = 0; i < nscale; i++) {
        scale[i] = i % 7 == 3 ? 0.0f : 0.01f + 0.02f * fabsf(frand());   /* some all-zero groups (§1.10) */
        zp[i] = frand();
    }
    float *up = NULL, *down = NULL;
    if (l->svd) {
        up = malloc(sizeof(float) * (size_t)(l->out * c->svd));
        down = malloc(sizeof(float) * (size_t)(c->svd * l->cols));
        for (int64_t i = 0; i < l->out * c->svd; i++) up[i] = frand() * 0.1f;
        for (int64_t i = 0; i < c->svd * l->cols; i++) down[i] = frand() * 0.1f;
    }
    s->codes = codes;
    s->scale = scale;
    s->zero_point = c->zp ? zp : NULL;
    s->svd_up = up;
    s->svd_down = down;
    qd_sdnq_fast_init(s);
    float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    qd_sdnq_decode_scalar(s, 0, l->out, 0, l->cols, b, l->cols);
    int fast = qd_sdnq_decode_fast(s, 0, l->out, 0, l->cols, a, l->cols);
    /* random float codes include NaN and Inf: those must match exactly, the rest within tolerance */
    int nanfree = 1;
    double big = 0, worst = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(b[i]) && fabs(b[i]) > big) big = fabs(b[i]);
    for (int64_t i = 0; fast && i < n; i++) {
        if ((isnan(a[i]) && isnan(b[i])) || a[i] == b[i]) continue;
        if (!isfinite(a[i]) || !isfinite(b[i])) { nanfree = 0; continue; }
        if (fabs(a[i] - b[i]) > worst) worst = fabs(a[i] - b[i]);
    }
    double d = fast && nanfree ? worst / (big > 0 ? big : 1) : -1;
    /* odd rectangles vs the whole fast decode */
    int same = fast;
    int64_t rects[][4] = {{1, 2, 3, 61}, {l->out - 1, 1, l->cols - 37, 37}, {0, l->out, 13, 300}};
    for (int i = 0; i < 3 && fast; i++) {
        int64_t r0 = rects[i][0], nr = rects[i][1], k0 = rects[i][2], nk = rects[i][3];
        if (k0 + nk > l->cols) nk = l->cols - k0;
        float *p = malloc(sizeof(float) * (size_t)(nr * nk));
        qd_sdnq_decode_fast(s, r0, nr, k0, nk, p, nk);
        for (int64_t q = 0; q < nr; q++)   /* bit patterns: NaN == NaN here */
            if (memcmp(p + q * nk, a + (r0 + q) * l->cols + k0, sizeof(float) * (size_t)nk)) same = 0;
        free(p);
    }
    char what[160];
    snprintf(what, sizeof what, "synthetic %s [%lld x %lld x k%lld] groups %lld%s%s", c->dtype, (long long)c->out,
             (long long)c->in, (long long)c->ksize, (long long)c->groups, c->zp ? " zp" : "", c->svd ? " svd" : "");
    check(fast && nanfree && d <= 1e-6, "%s: fast vs scalar decode max-abs %.3g of max|w| (tol 1e-6)", what, d);
    check(same, "%s: odd rectangles equal the whole decode bit for bit", what);
    free(a); free(b); free(codes); free(scale); free(zp); free(up); free(down); free(s);
    (void)ctx;
}

/* ---- 3. dense weights through the GEMV and packed paths ---- */

static void test_dense(qd_ctx *ctx, qd_dtype dt, const char *name, int64_t max_m, double tol) {
    int64_t N = 77, K = 1000;
    size_t es = qd_dtype_size(dt);
    uint8_t *raw = malloc((size_t)(N * K) * es);
    float *full = malloc(sizeof(float) * (size_t)(N * K));
    for (int64_t i = 0; i < N * K; i++) {
        float v = frand();
        if (dt == QD_BF16) { uint16_t h = qd_f32_to_bf16(v); memcpy(raw + 2 * i, &h, 2); full[i] = qd_bf16_to_f32(h); }
        else { memcpy(raw + 4 * i, &v, 4); full[i] = v; }
    }
    qd_st_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ndim = 2;
    t.shape[0] = N;
    t.shape[1] = K;
    t.numel = N * K;
    t.data = raw;
    qd_weight w;
    qd_weight_dense(&w, &t, N, K);
    for (int64_t M = 1; M <= max_m; M++) check_gemm(ctx, name, &w, full, M, tol);
    free(raw);
    free(full);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    test_fixtures(ctx);
    static const synth cases[] = {
        {"uint4", 40, 96, 9, 3, 1, 32}, {"uint4", 33, 64, 9, 0, 1, 0}, {"int4", 20, 128, 1, 4, 0, 8},
        {"int8", 24, 320, 9, 5, 0, 16}, {"uint8", 17, 200, 1, 0, 1, 0}, {"int8", 9, 301, 1, -1, 0, 0},
        {"uint2", 11, 96, 1, 3, 1, 0}, {"uint1", 10, 128, 1, 2, 1, 4}, {"uint3", 12, 64, 1, 2, 1, 0},
        {"int5", 8, 64, 9, 2, 0, 0}, {"float8_e4m3fn", 16, 130, 1, 0, 0, 0}, {"float8_e5m2", 16, 64, 1, 2, 0, 0},
        {"float4_e2m1fn", 12, 96, 1, 3, 0, 0}, {"float6_e3m2fn", 12, 96, 1, 0, 0, 0},
        {"float8_e4m3fn_sdnq", 12, 96, 1, 0, 0, 8}, {"bfloat16", 12, 96, 1, 0, 0, 0}, {"float16", 12, 97, 1, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) test_synth(ctx, &cases[i]);
    test_dense(ctx, QD_BF16, "dense bf16", QD_GEMV_MAX_M + 1, 2e-6);
    test_dense(ctx, QD_F32, "dense f32", QD_GEMV_MAX_M + 1, 2e-6);
    qd_set_precision(ctx, QD_PRECISION_BF16);
    test_dense(ctx, QD_BF16, "dense bf16, bf16 precision", QD_GEMV_MAX_M + 1, 1.0 / 128);
    qd_ctx_free(ctx);
    return test_summary();
}
