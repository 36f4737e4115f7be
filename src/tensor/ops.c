#include "tensor/ops.h"
#include "tensor/gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void qd_linear(qd_ctx *ctx, const float *x, int64_t M, const qd_weight *w, const float *bias, float *y) {
    double t0 = ctx->trace ? qd_now() : 0;
    if (!(w->linear && w->linear(ctx, w, x, M, bias, y)))
        qd_gemm(ctx, M, w->rows, w->cols, qd_rows(x, w->cols), qd_wmat(w), y, w->rows, 1.0f, 0.0f, NULL, bias);
    if (ctx->trace) {
        int64_t d[4] = {M, w->cols, w->rows, bias != NULL};       /* tokens, in, out, bias */
        ctx->trace(ctx->trace_user, "linear", d, 4, qd_now() - t0);
    }
}

/* ---- convolution: im2col into row chunks, then one GEMM per chunk ---- */

typedef struct {
    const float *x; float *col;
    int64_t Cin, H, W, Wo, row0, rows;
    int kh, kw, stride, pt, pl;
} im2col_args;

static void im2col_part(void *arg, int64_t b, int64_t e, int thread) {
    const im2col_args *a = arg;
    int64_t n = a->rows * a->Wo;
    for (int64_t r = b; r < e; r++) {          /* r = (c, ky, kx) */
        int64_t c = r / (a->kh * a->kw);
        int ky = (int)(r / a->kw % a->kh), kx = (int)(r % a->kw);
        const float *xc = a->x + c * a->H * a->W;
        float *dst = a->col + r * n;
        for (int64_t oy = 0; oy < a->rows; oy++) {
            int64_t iy = (a->row0 + oy) * a->stride - a->pt + ky;
            float *d = dst + oy * a->Wo;
            if (iy < 0 || iy >= a->H) { memset(d, 0, sizeof(float) * (size_t)a->Wo); continue; }
            const float *xr = xc + iy * a->W;
            for (int64_t ox = 0; ox < a->Wo; ox++) {
                int64_t ix = ox * a->stride - a->pl + kx;
                d[ox] = (ix >= 0 && ix < a->W) ? xr[ix] : 0.0f;
            }
        }
    }
}

static void conv_im2col(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                        const qd_weight *w, const float *bias, int kh, int kw, int stride, int pt, int pl,
                        int64_t Ho, int64_t Wo, float *y) {
    int64_t Cout = w->rows, K = Cin * kh * kw, S = Ho * Wo;
    /* Bound the im2col buffer to ~32 MB by converting a band of output rows at a time. */
    int64_t rows = (int64_t)((8u << 20) / (uint64_t)(K * Wo));
    if (rows < 1) rows = 1;
    if (rows > Ho) rows = Ho;
    float *col = malloc(sizeof(float) * (size_t)(K * rows * Wo));
    if (!col) {
        qd_op_failed(ctx, "convolution");
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        for (int64_t r0 = 0; r0 < Ho; r0 += rows) {
            int64_t nr = Ho - r0 < rows ? Ho - r0 : rows;
            im2col_args a = {x + b * Cin * H * W, col, Cin, H, W, Wo, r0, nr, kh, kw, stride, pt, pl};
            qd_parallel_for(ctx, K, im2col_part, &a);
            qd_gemm(ctx, Cout, nr * Wo, K, qd_wmat(w), qd_cols(col, nr * Wo), y + b * Cout * S + r0 * Wo, S,
                    1.0f, 0.0f, bias, NULL);
        }
    }
    free(col);
}

void qd_conv2d_pad(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pt, int pb, int pl, int pr, float *y) {
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    int64_t Cout = w->rows, K = Cin * kh * kw, S = Ho * Wo;
    double t0 = ctx->trace ? qd_now() : 0;
    if (kh == 1 && kw == 1 && stride == 1 && !pt && !pb && !pl && !pr) {
        for (int64_t b = 0; b < B; b++)
            qd_gemm(ctx, Cout, S, K, qd_wmat(w), qd_cols(x + b * Cin * H * W, S), y + b * Cout * S, S,
                    1.0f, 0.0f, bias, NULL);
    } else {
        conv_im2col(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pt, pl, Ho, Wo, y);
    }
    if (ctx->trace) {
        /* batch, Cin, H, W, Cout, kh, kw, stride, pad top, bottom, left, right */
        int64_t d[12] = {B, Cin, H, W, Cout, kh, kw, stride, pt, pb, pl, pr};
        ctx->trace(ctx->trace_user, "conv2d", d, 12, qd_now() - t0);
    }
}

void qd_conv2d(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
               const qd_weight *w, const float *bias, int kh, int kw, int stride, int pad, float *y) {
    qd_conv2d_pad(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pad, pad, pad, pad, y);
}

/* ---- normalisation ---- */

typedef struct {
    const float *x; float *y; int64_t C, S; int groups; float eps;
    const float *gamma, *beta; int silu;
} gn_args;

static void gn_part(void *arg, int64_t b, int64_t e, int thread) {
    const gn_args *a = arg;
    int64_t cpg = a->C / a->groups, n = cpg * a->S;
    for (int64_t bg = b; bg < e; bg++) {       /* bg = batch * groups + group */
        int64_t g = bg % a->groups;
        const float *x = a->x + bg * n;
        float *y = a->y + bg * n;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < n; i++) sum += x[i];
        double mean = sum / n;
        for (int64_t i = 0; i < n; i++) { double d = x[i] - mean; sq += d * d; }
        float inv = (float)(1.0 / sqrt(sq / n + a->eps)), m = (float)mean;
        for (int64_t c = 0; c < cpg; c++) {
            int64_t ch = g * cpg + c;
            float s = inv * (a->gamma ? a->gamma[ch] : 1.0f), o = a->beta ? a->beta[ch] : 0.0f;
            const float *xc = x + c * a->S;
            float *yc = y + c * a->S;
            for (int64_t i = 0; i < a->S; i++) {
                float v = (xc[i] - m) * s + o;
                yc[i] = a->silu ? v / (1.0f + expf(-v)) : v;
            }
        }
    }
}

void qd_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                   const float *gamma, const float *beta, int silu, float *y) {
    gn_args a = {x, y, C, S, groups, eps, gamma, beta, silu};
    qd_parallel_for(ctx, B * groups, gn_part, &a);
}

typedef struct { const float *x; float *y; int64_t C; float eps; const float *gamma, *beta; } ln_args;

static void ln_part(void *arg, int64_t b, int64_t e, int thread) {
    const ln_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        const float *x = a->x + r * a->C;
        float *y = a->y + r * a->C;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < a->C; i++) sum += x[i];
        double mean = sum / a->C;
        for (int64_t i = 0; i < a->C; i++) { double d = x[i] - mean; sq += d * d; }
        float inv = (float)(1.0 / sqrt(sq / a->C + a->eps)), m = (float)mean;
        for (int64_t i = 0; i < a->C; i++)
            y[i] = (x[i] - m) * inv * (a->gamma ? a->gamma[i] : 1.0f) + (a->beta ? a->beta[i] : 0.0f);
    }
}

void qd_layer_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps,
                   const float *gamma, const float *beta, float *y) {
    ln_args a = {x, y, C, eps, gamma, beta};
    qd_parallel_for(ctx, M, ln_part, &a);
}

/* ---- elementwise ---- */

void qd_silu(float *x, int64_t n) { for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i])); }
void qd_gelu(float *x, int64_t n) { for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f)); }
void qd_gelu_tanh(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    }
}
void qd_quick_gelu(float *x, int64_t n) { for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i])); }
void qd_add(float *y, const float *x, int64_t n) { for (int64_t i = 0; i < n; i++) y[i] += x[i]; }
void qd_scale(float *x, int64_t n, float s) { for (int64_t i = 0; i < n; i++) x[i] *= s; }

void qd_geglu(const float *x, int64_t M, int64_t F, float *y) {
    for (int64_t r = 0; r < M; r++) {
        const float *a = x + r * 2 * F, *g = a + F;
        float *o = y + r * F;
        for (int64_t i = 0; i < F; i++) o[i] = a[i] * 0.5f * g[i] * (1.0f + erff(g[i] * 0.70710678118654752f));
    }
}

/* ---- attention: one task per (batch, head, block of queries) ---- */

#define ATT_QBLOCK 128

typedef struct {
    const float *q, *k, *v; int64_t ldq, ldk, ldv;
    int64_t Lq, Lk, dh; int heads; int causal; float *out; int64_t qblocks;
    float **scratch;
    int failed;
} att_args;

static void att_part(void *arg, int64_t b, int64_t e, int thread) {
    const att_args *a = arg;
    float *s = a->scratch[thread];
    float scale = 1.0f / sqrtf((float)a->dh);
    int64_t ldo = a->heads * a->dh;
    for (int64_t task = b; task < e; task++) {
        int64_t qb = task % a->qblocks, bh = task / a->qblocks;
        int64_t h = bh % a->heads, bi = bh / a->heads;
        int64_t q0 = qb * ATT_QBLOCK, nq = a->Lq - q0 < ATT_QBLOCK ? a->Lq - q0 : ATT_QBLOCK;
        const float *q = a->q + (bi * a->Lq + q0) * a->ldq + h * a->dh;
        const float *k = a->k + bi * a->Lk * a->ldk + h * a->dh;
        const float *v = a->v + bi * a->Lk * a->ldv + h * a->dh;
        float *o = a->out + (bi * a->Lq + q0) * ldo + h * a->dh;
        if (qd_gemm_serial(nq, a->Lk, a->dh, qd_rows(q, a->ldq), qd_rows(k, a->ldk), s, a->Lk, scale, 0.0f, NULL, NULL)) {
            __atomic_store_n(&((att_args *)arg)->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        if (a->causal)
            for (int64_t i = 0; i < nq; i++)
                for (int64_t j = q0 + i + 1; j < a->Lk; j++) s[i * a->Lk + j] = -INFINITY;
        qd_softmax_rows(s, nq, a->Lk);
        if (qd_gemm_serial(nq, a->dh, a->Lk, qd_rows(s, a->Lk), qd_cols(v, a->ldv), o, ldo, 1.0f, 0.0f, NULL, NULL)) {
            __atomic_store_n(&((att_args *)arg)->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

void qd_attention(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                  const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads, int64_t dh,
                  int causal, float *out) {
    double t0 = ctx->trace ? qd_now() : 0;
    int t = qd_threads(ctx);
    float **scratch = calloc((size_t)t, sizeof(float *));
    int ok = scratch != NULL;
    for (int i = 0; ok && i < t; i++) ok = (scratch[i] = malloc(sizeof(float) * (size_t)(ATT_QBLOCK * Lk))) != NULL;
    int64_t qblocks = (Lq + ATT_QBLOCK - 1) / ATT_QBLOCK;
    att_args a = {q, k, v, ldq, ldk, ldv, Lq, Lk, dh, heads, causal, out, qblocks, scratch, 0};
    if (ok) qd_parallel_for(ctx, B * heads * qblocks, att_part, &a);
    if (!ok || a.failed) qd_op_failed(ctx, "attention");
    for (int i = 0; scratch && i < t; i++) free(scratch[i]);
    free(scratch);
    if (ctx->trace) {
        int64_t d[6] = {B, heads, Lq, Lk, dh, causal};
        ctx->trace(ctx->trace_user, "attention", d, 6, qd_now() - t0);
    }
}

/* ---- layout ---- */

typedef struct { const float *x; float *y; int64_t H, W; } up_args;

static void up_part(void *arg, int64_t b, int64_t e, int thread) {
    const up_args *a = arg;
    for (int64_t p = b; p < e; p++) {
        const float *x = a->x + p * a->H * a->W;
        float *y = a->y + p * 4 * a->H * a->W;
        for (int64_t i = 0; i < a->H; i++) {
            float *r0 = y + (2 * i) * 2 * a->W, *r1 = r0 + 2 * a->W;
            for (int64_t j = 0; j < a->W; j++) r0[2 * j] = r0[2 * j + 1] = x[i * a->W + j];
            memcpy(r1, r0, sizeof(float) * (size_t)(2 * a->W));
        }
    }
}

void qd_upsample_nearest2x(qd_ctx *ctx, const float *x, int64_t BC, int64_t H, int64_t W, float *y) {
    up_args a = {x, y, H, W};
    qd_parallel_for(ctx, BC, up_part, &a);
}

typedef struct { const float *x; float *y; int64_t C, S; } tr_args;

static void tr_part(void *arg, int64_t b, int64_t e, int thread) {
    const tr_args *a = arg;
    for (int64_t bi = b; bi < e; bi++) {
        const float *x = a->x + bi * a->C * a->S;
        float *y = a->y + bi * a->C * a->S;
        for (int64_t c0 = 0; c0 < a->C; c0 += 32)
            for (int64_t s0 = 0; s0 < a->S; s0 += 32)
                for (int64_t c = c0; c < c0 + 32 && c < a->C; c++)
                    for (int64_t s = s0; s < s0 + 32 && s < a->S; s++) y[s * a->C + c] = x[c * a->S + s];
    }
}

void qd_transpose_cs(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, float *y) {
    tr_args a = {x, y, C, S};
    qd_parallel_for(ctx, B, tr_part, &a);
}
