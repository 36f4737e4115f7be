/* The int8 SDNQ convolution (src/quant/sdnq_conv_i8.c, reached through qd_conv2d_acc)
 * against an independent double-precision reference of sdnq's quantized matmul for
 * Conv (spec sdnq.md §1.9, "Conv with qmm uses im2col"), written here from the spec:
 * the stored codes decoded by hand (int8 / uint8, transposed or not; uint4 packed low
 * nibble first), the int8 weight (the stored codes when they have one scale per output,
 * else the dequantized base re-quantized per output row, amax / 127), each output
 * pixel's im2col row (zero padding included) quantized per token, s = amax / 127,
 * q = RNE(x / s), the integer products summed exactly, then
 * y = s_x (s_w acc + zp sum(q)) + bias + (row . svd_down^T) . svd_up^T (+ beta y).
 * Scales are powers of two and zero points multiples of 2^-6, so the dequantized base
 * weight is exact in fp32 and the codes on both sides are the same: only the fp32
 * epilogue, the fp32 SVD branch and the order of float sums differ. Tolerance per case:
 * rel L2 <= 1e-5 and max-abs <= 1e-5 of max |ref| (measured ~1e-7).
 * Every case runs twice: default chunks, and chunks of a few rows with the SVD
 * branch's projections per chunk (qd_sdnq_conv_i8_limits).
 * Also: the matmul mode decision (CONFIG runs int8 for a qmm layer with >= 32 pixels,
 * exact below and for a layer without qmm; EXACT never), and the UNet of sd15-tiny
 * with its convs quantized (uint4 + SVD, quant_conv) in int8 mode against exact mode. */
#include "testutil.h"
#include "base/ctx.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_quantize.h"
#include "quant/sdnq_weight.h"
#include "quant/sdnq_conv_i8.h"
#include "tensor/conv.h"
#include "models/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rng = 2463534242u;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5; return rng; }
static float frand(void) { return (float)(rnd() % 200001) / 100000.0f - 1.0f; }

static int all_finite_f(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

typedef struct {
    const char *name, *dtype;
    int64_t cout, cin;
    int k, stride, pt, pb, pl, pr;
    int64_t B, H, W;
    int group_size, svd, qmm;
    int zero_block;     /* zero a 4x4 corner of batch item 0: all-zero im2col rows */
    float beta;
} conv_case;

typedef struct {
    qd_sdnq_config *cfg;
    qd_st_set st;
    qd_weight w;
    void *state;
    qd_sdnq_layout l;
    float *up, *down;   /* logical [out, r], [r, cols] */
    int open;
} layer;

static void layer_close(layer *L) {
    if (L->open) free(L->state);
    if (L->st.n_files) qd_st_close(&L->st);
    qd_sdnq_config_free(L->cfg);
    free(L->up);
    free(L->down);
    memset(L, 0, sizeof *L);
}

/* Random stored tensors for the layout the config derives, written and opened as a layer. */
static int layer_make(qd_ctx *ctx, const conv_case *c, layer *L) {
    memset(L, 0, sizeof *L);
    char json[512], path[512];
    snprintf(json, sizeof json,
             "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"%s\",\"group_size\":%d,\"quant_conv\":true,"
             "\"use_svd\":%s,\"svd_rank\":%d,\"use_quantized_matmul_conv\":%s}",
             c->dtype, c->group_size, c->svd ? "true" : "false", c->svd ? c->svd : 32, c->qmm ? "true" : "false");
    snprintf(path, sizeof path, "%s", scratch_path("config.json"));
    write_text_file(path, json);
    if (qd_sdnq_config_load_file(ctx, path, &L->cfg) != QD_OK) return 0;
    int64_t shape[4] = {c->cout, c->cin, c->k, c->k};
    if (qd_sdnq_layout_derive(ctx, L->cfg, "l.weight", QD_SDNQ_CONV, 4, shape, &L->l) != QD_OK) return 0;
    const qd_sdnq_layout *l = &L->l;
    qd_st_out t[QD_SQ_NTENSORS];
    int present[QD_SQ_NTENSORS];
    qd_sdnq_stored_tensors(l, QD_F32, t, present);
    static const char *names[] = {"l.weight", "l.scale", "l.zero_point", "l.svd_up", "l.svd_down"};
    void *bufs[QD_SQ_NTENSORS] = {0};
    qd_st_out outs[QD_SQ_NTENSORS];
    int n = 0;
    int64_t r = l->svd_rank;
    if (present[3]) {
        L->up = malloc(sizeof(float) * (size_t)(l->out * r));
        L->down = malloc(sizeof(float) * (size_t)(r * l->cols));
        for (int64_t i = 0; i < l->out * r; i++) L->up[i] = frand() * 0.25f;
        for (int64_t i = 0; i < r * l->cols; i++) L->down[i] = frand() * 0.25f;
    }
    for (int i = 0; i < QD_SQ_NTENSORS; i++) {
        if (!present[i]) continue;
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= t[i].shape[d];
        size_t bytes = (size_t)numel * qd_dtype_size(t[i].dtype);
        bufs[i] = malloc(bytes);
        if (i == 0) {
            for (size_t b = 0; b < bytes; b++) ((uint8_t *)bufs[i])[b] = (uint8_t)rnd();
        } else if (i == 1 || i == 2) {
            float *f = bufs[i];
            for (int64_t e = 0; e < numel; e++) {
                if (i == 1) f[e] = ldexpf(1.0f, -5 - (int)(rnd() % 4)) * (e % 11 == 7 && !l->transposed ? 0.0f : 1.0f);
                else f[e] = (float)((int)(rnd() % 65) - 32) / 64.0f;
            }
        } else {   /* svd factors in their stored orientation */
            float *f = bufs[i];
            const float *src = i == 3 ? L->up : L->down;
            int64_t rows = i == 3 ? l->out : r, cols = i == 3 ? r : l->cols;
            for (int64_t a = 0; a < rows; a++)
                for (int64_t b = 0; b < cols; b++)
                    f[l->svd_transposed ? b * rows + a : a * cols + b] = src[a * cols + b];
        }
        outs[n] = t[i];
        outs[n].name = names[i];
        outs[n].data = bufs[i];
        n++;
    }
    snprintf(path, sizeof path, "%s", scratch_path("w.safetensors"));
    int ok = qd_st_write(ctx, path, outs, n, NULL) == QD_OK;
    for (int i = 0; i < QD_SQ_NTENSORS; i++) free(bufs[i]);
    ok = ok && qd_st_open(ctx, path, &L->st) == QD_OK;
    ok = ok && qd_sdnq_weight_open(ctx, L->cfg, &L->st, "l", "l", QD_SDNQ_CONV, 4, shape, &L->w, &L->state) == QD_OK;
    L->open = ok;
    return ok;
}

/* ---- the reference (doubles, from the stored bytes) ---- */

static float ref_code(const layer *L, int64_t o, int64_t col) {
    const qd_sdnq_layout *l = &L->l;
    const qd_st_tensor *wt = qd_st_find(&L->st, "l.weight");
    const uint8_t *b = wt->data;
    int64_t i = l->transposed ? col * l->out + o : o * l->cols + col;
    if (l->dtype.bits == 4) return (float)((b[i / 2] >> (4 * (i & 1))) & 15);   /* uint4, low nibble first */
    return l->dtype.family == QD_SQ_INT ? (float)(int8_t)b[i] : (float)b[i];
}

static int64_t ref_scale_index(const layer *L, int64_t o, int64_t col) {
    const qd_sdnq_layout *l = &L->l;
    int64_t c = col / l->ksize, tap = col % l->ksize;
    if (l->grouping == QD_SDNQ_TENSORWISE) return 0;
    if (l->transposed) return o;
    if (l->grouping == QD_SDNQ_ROWWISE) return o * l->ksize + tap;
    return (o * l->groups + c / l->group_size) * l->ksize + tap;
}

static float f32_at(const layer *L, const char *name, int64_t i) {
    const qd_st_tensor *t = qd_st_find(&L->st, name);
    float v = 0.0f;   /* the file's tensor data need not be 4-byte aligned */
    if (t) memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
    return v;
}

static int8_t rne_i8(float v) {
    float r = rintf(v);   /* default rounding: to nearest even */
    return (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
}

/* The int8 weight sdnq's quantized matmul uses: wq [out, cols] (stored column order), sw, zp. */
static void ref_weight(const layer *L, int8_t *wq, double *sw, double *zp) {
    const qd_sdnq_layout *l = &L->l;
    int direct = l->grouping != QD_SDNQ_GROUPED && (l->transposed || l->grouping == QD_SDNQ_TENSORWISE || l->ksize == 1);
    float *row = malloc(sizeof(float) * (size_t)l->cols);
    for (int64_t o = 0; o < l->out; o++) {
        if (direct) {
            int64_t si = ref_scale_index(L, o, 0);
            float sc = f32_at(L, "l.scale", si), z = f32_at(L, "l.zero_point", si);
            int shift = l->dtype.family == QD_SQ_UINT && l->dtype.bits == 8 ? 128 : 0;
            for (int64_t k = 0; k < l->cols; k++) wq[o * l->cols + k] = (int8_t)(ref_code(L, o, k) - (float)shift);
            sw[o] = sc;
            zp[o] = (double)z + shift * (double)sc;
            continue;
        }
        float amax = 0;
        for (int64_t k = 0; k < l->cols; k++) {
            int64_t si = ref_scale_index(L, o, k);
            float sc = f32_at(L, "l.scale", si), z = f32_at(L, "l.zero_point", si);
            row[k] = sc == 0 ? z : ref_code(L, o, k) * sc + z;   /* exact: powers of two */
            if (fabsf(row[k]) > amax) amax = fabsf(row[k]);
        }
        float s = amax / 127.0f;
        for (int64_t k = 0; k < l->cols; k++) wq[o * l->cols + k] = s > 0 ? rne_i8(row[k] / s) : 0;
        sw[o] = s;
        zp[o] = 0;
    }
    free(row);
}

static void ref_conv(const conv_case *c, const layer *L, const float *x, const float *bias, const float *y0,
                     double *ref) {
    const qd_sdnq_layout *l = &L->l;
    int64_t Ho = (c->H + c->pt + c->pb - c->k) / c->stride + 1, Wo = (c->W + c->pl + c->pr - c->k) / c->stride + 1;
    int64_t K = l->cols, N = l->out, ks = (int64_t)c->k * c->k, r = l->svd ? l->svd_rank : 0;
    int8_t *wq = malloc((size_t)(N * K)), *xq = malloc((size_t)K);
    double *sw = malloc(sizeof(double) * (size_t)N), *zp = malloc(sizeof(double) * (size_t)N);
    double *t = malloc(sizeof(double) * (size_t)(r + 1));
    float *row = malloc(sizeof(float) * (size_t)K);
    ref_weight(L, wq, sw, zp);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                float amax = 0;
                for (int64_t ci = 0; ci < c->cin; ci++)   /* im2col in the stored (c, ky, kx) order */
                    for (int ky = 0; ky < c->k; ky++)
                        for (int kx = 0; kx < c->k; kx++) {
                            int64_t iy = oy * c->stride - c->pt + ky, ix = ox * c->stride - c->pl + kx;
                            float v = iy < 0 || iy >= c->H || ix < 0 || ix >= c->W ? 0.0f
                                      : x[((b * c->cin + ci) * c->H + iy) * c->W + ix];
                            row[ci * ks + ky * c->k + kx] = v;
                            if (fabsf(v) > amax) amax = fabsf(v);
                        }
                float s = amax / 127.0f;
                int64_t qsum = 0;
                for (int64_t k = 0; k < K; k++) { xq[k] = s > 0 ? rne_i8(row[k] / s) : 0; qsum += xq[k]; }
                for (int64_t q = 0; q < r; q++) {
                    double a = 0;
                    for (int64_t k = 0; k < K; k++) a += (double)row[k] * L->down[q * K + k];
                    t[q] = a;
                }
                for (int64_t n = 0; n < N; n++) {
                    int64_t acc = 0;
                    for (int64_t k = 0; k < K; k++) acc += (int64_t)xq[k] * wq[n * K + k];
                    double v = (double)s * (sw[n] * (double)acc + zp[n] * (double)qsum) + (bias ? bias[n] : 0.0);
                    for (int64_t q = 0; q < r; q++) v += t[q] * L->up[n * r + q];
                    int64_t yi = ((b * N + n) * Ho + oy) * Wo + ox;
                    ref[yi] = v + (c->beta != 0 ? (double)c->beta * y0[yi] : 0.0);
                }
            }
    free(wq); free(xq); free(sw); free(zp); free(t); free(row);
}

static void compare(const char *what, const float *y, const double *ref, int64_t n, double rel_tol, double abs_frac) {
    double num = 0, den = 0, mx = 0, mref = 0;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
        double d = y[i] - ref[i];
        if (!isfinite(y[i])) finite = 0;
        num += d * d;
        den += ref[i] * ref[i];
        if (fabs(d) > mx) mx = fabs(d);
        if (fabs(ref[i]) > mref) mref = fabs(ref[i]);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    check(finite && rel <= rel_tol && mx <= abs_frac * mref,
          "%s: rel_l2 %.3g (<= %.0e), max-abs %.3g of max|ref| %.3g (<= %.0e)", what, rel, rel_tol,
          mref > 0 ? mx / mref : mx, mref, abs_frac);
}

static void run_case(qd_ctx *ctx, const conv_case *c) {
    layer L;
    if (!layer_make(ctx, c, &L)) {
        check(0, "%s: layer built and opened (%s)", c->name, qd_last_error(ctx));
        layer_close(&L);
        return;
    }
    int64_t Ho = (c->H + c->pt + c->pb - c->k) / c->stride + 1, Wo = (c->W + c->pl + c->pr - c->k) / c->stride + 1;
    int64_t nx = c->B * c->cin * c->H * c->W, ny = c->B * c->cout * Ho * Wo;
    float *x = malloc(sizeof(float) * (size_t)nx), *y = malloc(sizeof(float) * (size_t)ny);
    float *y0 = malloc(sizeof(float) * (size_t)ny), *bias = malloc(sizeof(float) * (size_t)c->cout);
    double *ref = malloc(sizeof(double) * (size_t)ny);
    for (int64_t i = 0; i < nx; i++) x[i] = frand() * (i % 13 == 0 ? 4.0f : 1.0f);
    if (c->zero_block)
        for (int64_t ci = 0; ci < c->cin; ci++)
            for (int64_t h = 0; h < 4 && h < c->H; h++)
                for (int64_t w = 0; w < 4 && w < c->W; w++) x[(ci * c->H + h) * c->W + w] = 0;
    for (int64_t i = 0; i < c->cout; i++) bias[i] = frand();
    for (int64_t i = 0; i < ny; i++) y[i] = y0[i] = frand();
    ref_conv(c, &L, x, bias, y0, ref);
    qd_set_matmul(ctx, QD_MATMUL_INT8);
    int ran = qd_sdnq_conv_i8(ctx, x, c->B, c->cin, c->H, c->W, &L.w, bias, c->k, c->k, c->stride, c->pt, c->pb,
                              c->pl, c->pr, c->beta, y);
    char what[256];
    snprintf(what, sizeof what, "%s (%s%s%s, [%lld x %lld x %dx%d] stride %d, %lldx%lldx%lld -> %lldx%lld%s)", c->name,
             c->dtype, L.l.grouping == QD_SDNQ_GROUPED ? " grouped" : L.l.transposed ? " transposed"
             : L.l.grouping == QD_SDNQ_TENSORWISE ? " tensor-wise" : " row-wise",
             L.l.svd ? " svd" : "", (long long)c->cout, (long long)c->cin, c->k, c->k, c->stride, (long long)c->B,
             (long long)c->H, (long long)c->W, (long long)Ho, (long long)Wo, c->beta != 0 ? ", accumulating" : "");
    check(ran == 1, "%s: int8 mode runs the int8 conv", what);
    compare(what, y, ref, ny, 1e-5, 1e-5);
    /* the same through qd_conv2d_acc (the models' entry point) */
    for (int64_t i = 0; i < ny; i++) y[i] = y0[i];
    qd_conv2d_acc(ctx, x, c->B, c->cin, c->H, c->W, &L.w, bias, c->k, c->k, c->stride, c->pt, c->pb, c->pl, c->pr,
                  c->beta, y);
    snprintf(what, sizeof what, "%s via qd_conv2d_acc", c->name);
    compare(what, y, ref, ny, 1e-5, 1e-5);
    /* exact mode never runs it: it dequantizes instead (differs from the int8 reference) */
    qd_set_matmul(ctx, QD_MATMUL_EXACT);
    check(qd_sdnq_conv_i8(ctx, x, c->B, c->cin, c->H, c->W, &L.w, bias, c->k, c->k, c->stride, c->pt, c->pb, c->pl,
                          c->pr, c->beta, y) == 0, "%s: exact mode declines the int8 conv", c->name);
    qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    free(x); free(y); free(y0); free(bias); free(ref);
    layer_close(&L);
}

/* CONFIG: int8 for a qmm layer over >= 32 pixels (bitwise the INT8 result), exact below
 * 32 pixels and for a layer the config does not give quantized matmul (bitwise EXACT). */
static void test_config_mode(qd_ctx *ctx) {
    conv_case qmm = {"config qmm", "int8", 48, 16, 3, 1, 1, 1, 1, 1, 1, 7, 6, 0, 0, 1, 0, 0};
    conv_case plain = {"config plain", "int8", 48, 16, 3, 1, 1, 1, 1, 1, 1, 7, 6, 0, 0, 0, 0, 0};
    const conv_case *cs[2] = {&qmm, &plain};
    for (int ci = 0; ci < 2; ci++) {
        layer L;
        if (!layer_make(ctx, cs[ci], &L)) { check(0, "config layer opened"); layer_close(&L); continue; }
        for (int big = 0; big < 2; big++) {
            int64_t H = big ? 7 : 4, W = big ? 6 : 4, n = 16 * H * W, ny = 48 * H * W;   /* 42 or 16 pixels */
            float *x = malloc(sizeof(float) * (size_t)n), *ya = malloc(sizeof(float) * (size_t)ny);
            float *yb = malloc(sizeof(float) * (size_t)ny);
            for (int64_t i = 0; i < n; i++) x[i] = frand();
            qd_set_matmul(ctx, QD_MATMUL_CONFIG);
            qd_conv2d_acc(ctx, x, 1, 16, H, W, &L.w, NULL, 3, 3, 1, 1, 1, 1, 1, 0.0f, ya);
            int want_int8 = ci == 0 && big;
            qd_set_matmul(ctx, want_int8 ? QD_MATMUL_INT8 : QD_MATMUL_EXACT);
            qd_conv2d_acc(ctx, x, 1, 16, H, W, &L.w, NULL, 3, 3, 1, 1, 1, 1, 1, 0.0f, yb);
            check(L.l.qmm == (ci == 0) && memcmp(ya, yb, sizeof(float) * (size_t)ny) == 0,
                  "CONFIG, %s layer (qmm %d), %lld pixels: equals %s mode bit for bit", ci ? "plain" : "qmm", L.l.qmm,
                  (long long)(H * W), want_int8 ? "INT8" : "EXACT");
            if (want_int8) {   /* and that is not the exact result */
                qd_set_matmul(ctx, QD_MATMUL_EXACT);
                qd_conv2d_acc(ctx, x, 1, 16, H, W, &L.w, NULL, 3, 3, 1, 1, 1, 1, 1, 0.0f, yb);
                double r = rel_l2(ya, yb, (size_t)ny);
                check(r > 1e-5 && r < 0.05, "CONFIG qmm layer: int8 vs exact rel_l2 %.3g (int8 ran; < 0.05)", r);
            }
            free(x); free(ya); free(yb);
        }
        qd_set_matmul(ctx, QD_MATMUL_CONFIG);
        layer_close(&L);
    }
}

/* ---- the UNet with quantized convs ---- */

static void test_unet(qd_ctx *ctx) {
    char out[512];
    snprintf(out, sizeof out, "%s", scratch_path("sd15q"));
    qd_quant_params p;
    qd_quant_params_default(&p);
    p.weights_dtype = "uint4";
    p.use_svd = 1;
    p.svd_rank = 8;
    p.quant_conv = 1;
    p.min_numel = 0;
    p.min_channels = 16;
    /* only the 3x3 convs: the Linear layers and 1x1 convs (int8 through the linear path)
     * stay dense, so int8 mode differs from exact mode by the int8 convs alone */
    static const char *const skip[] = {"transformer_blocks", "proj_in", "proj_out", "conv_shortcut",
                                       "time_emb_proj", "time_embedding"};
    p.skip = skip;
    p.n_skip = 6;
    char *report = NULL;
    qd_status s = qd_quantize(ctx, fixture("models/sd15-tiny"), out, &p, &report);
    int convs = 0;
    for (const char *q = report; q && (q = strstr(q, "\"Conv\"")) != NULL; q++) {   /* quantized Conv entries */
        const char *end = strchr(q, '}'), *sk = strstr(q, "\"skipped\"");
        if (!sk || (end && sk > end)) convs++;
    }
    qd_free(report);
    check(s == QD_OK && convs >= 10, "sd15-tiny UNet's 3x3 convs quantized (uint4 + SVD r8, quant_conv): %d Conv "
          "layers%s%s", convs, s ? ": " : "", s ? qd_last_error(ctx) : "");
    if (s != QD_OK) return;
    char unet_dir[600];
    snprintf(unet_dir, sizeof unet_dir, "%s/unet", out);
    const char *g = fixture("goldens/sd15-tiny/unet.safetensors");
    int64_t xs[4], cs[3];
    size_t n;
    float *x = load_f32(g, "sample", xs, NULL, &n), *t = load_f32(g, "timestep", NULL, NULL, NULL);
    float *c = load_f32(g, "encoder_hidden_states", cs, NULL, NULL);
    float *ye = malloc(sizeof(float) * n), *y8 = malloc(sizeof(float) * n);
    qd_unet *u = NULL;
    s = x && t && c ? qd_unet_load(ctx, unet_dir, &u) : QD_ERR_IO;
    check(s == QD_OK, "quantized UNet loads%s%s", s ? ": " : "", s ? qd_last_error(ctx) : "");
    if (s == QD_OK) {
        qd_set_matmul(ctx, QD_MATMUL_EXACT);
        qd_status s1 = qd_unet_forward(ctx, u, x, xs[0], xs[2], xs[3], t, c, cs[1], NULL, NULL, ye);
        qd_set_matmul(ctx, QD_MATMUL_INT8);
        qd_status s2 = qd_unet_forward(ctx, u, x, xs[0], xs[2], xs[3], t, c, cs[1], NULL, NULL, y8);
        qd_set_matmul(ctx, QD_MATMUL_CONFIG);
        double r = rel_l2(y8, ye, n);
        /* 8-bit activations on every 3x3 conv of the tiny random UNet (per layer ~0.5-1%,
         * as the Linear layers in test_sdnq_layers): bound 0.05 */
        check(s1 == QD_OK && s2 == QD_OK && all_finite_f(y8, n) && r > 1e-5 && r < 0.05,
              "sd15-tiny UNet (quantized convs) int8 mode vs exact mode: rel_l2 %.3g (int8 ran; < 0.05)", r);
    }
    qd_unet_free(u);
    free(x); free(t); free(c); free(ye); free(y8);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    scratch_make("sdnq_conv_i8");
    const conv_case cases[] = {
        /* name, dtype, cout, cin, k, stride, pads t b l r, B, H, W, group_size, svd, qmm, zero_block, beta */
        {"uint4 groups + SVD, odd image", "uint4", 40, 48, 3, 1, 1, 1, 1, 1, 2, 9, 11, 16, 4, 0, 0, 0},
        {"uint4 groups, stride 2 pad (0,1)", "uint4", 64, 32, 3, 2, 0, 1, 0, 1, 1, 13, 13, 16, 0, 0, 0, 0},
        {"int8 qmm (transposed) + SVD", "int8", 48, 16, 3, 1, 1, 1, 1, 1, 3, 7, 6, 0, 8, 1, 0, 0},
        {"int8 row-wise (re-quantized), Cin 37, zero rows", "int8", 33, 37, 3, 1, 1, 1, 1, 1, 1, 5, 8, 0, 0, 0, 1, 0},
        {"uint4 1x1 + SVD", "uint4", 32, 64, 1, 1, 0, 0, 0, 0, 2, 5, 5, 16, 4, 0, 0, 0},
        {"uint8 qmm (transposed), stride 2, beta 1", "uint8", 32, 32, 3, 2, 1, 1, 1, 1, 1, 10, 10, 0, 0, 1, 0, 1.0f},
        {"uint4 + SVD, chunks across the batch, beta 0.5", "uint4", 24, 320, 3, 1, 1, 1, 1, 1, 2, 37, 20, 0, 8, 0, 1, 0.5f},
        {"int8 tensor-wise, Cin 6", "int8", 16, 6, 3, 1, 1, 1, 1, 1, 2, 6, 5, -2, 0, 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(ctx, &cases[i]);
    /* again with small chunks (a few rows of codes) and the SVD projections per chunk */
    qd_sdnq_conv_i8_limits(4096, 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        conv_case c = cases[i];
        char name[160];
        snprintf(name, sizeof name, "%s, small chunks", c.name);
        c.name = name;
        run_case(ctx, &c);
    }
    qd_sdnq_conv_i8_limits(0, 0);
    test_config_mode(ctx);
    test_unet(ctx);
    scratch_remove();
    qd_ctx_free(ctx);
    return test_summary();
}
