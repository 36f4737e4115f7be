/* ResnetBlock2D and Transformer2DModel for the UNet (diffusers 0.32.2 semantics).
 *
 * Layout tricks that save copies:
 * - The time embedding projection is folded into conv1's bias (one bias vector per
 *   batch item), so "h + temb[:, :, None, None]" costs nothing.
 * - The 1x1 conv_shortcut accumulates straight into conv2's output (GEMM beta = 1).
 * - Transformer2DModel never transposes: proj_in reads the NCHW GroupNorm output as a
 *   transposed operand and writes tokens [B, S, D]; proj_out writes back NCHW and adds
 *   the residual in the same GEMM. A 1x1 conv and a Linear are the same matrix here.
 * - Attention output projections and the feed-forward add into the token buffer. */
#include "models/unet_blocks.h"
#include "base/act_pool.h"
#include "base/threads.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "quant/sdnq_matmul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parallel elementwise helpers ---- */

typedef struct { float *y; const float *x; float s; } ew_args;

static void add_scaled_part(void *arg, int64_t b, int64_t e, int thread) {
    const ew_args *a = arg;
    if (a->s == 1.0f)
        for (int64_t i = b; i < e; i++) a->y[i] += a->x[i];
    else
        for (int64_t i = b; i < e; i++) a->y[i] = (a->y[i] + a->x[i]) / a->s;
}

void qd_unet_add_scaled(qd_ctx *ctx, float *y, const float *x, int64_t n, float scale) {
    double t0 = ctx->trace ? qd_now() : 0;
    ew_args a = {y, x, scale};
    qd_parallel_for(ctx, n, add_scaled_part, &a);
    if (ctx->trace) ctx->trace(ctx->trace_user, "add", &n, 1, qd_now() - t0);
}

static void div_part(void *arg, int64_t b, int64_t e, int thread) {
    const ew_args *a = arg;
    for (int64_t i = b; i < e; i++) a->y[i] /= a->s;
}

/* The fused GEMMs below are linears and 1x1 convs: report them to the benchmark trace
 * the way tensor/ops.c reports its own ops ("linear": tokens, in, out, bias; "conv2d":
 * B, Cin, H, W, Cout, kh, kw, stride, pads), so per-op timings stay complete. */
static void gemm_traced(qd_ctx *ctx, int conv, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C,
                        int64_t ldc, float beta, const float *row_bias, const float *col_bias) {
    double t0 = ctx->trace ? qd_now() : 0;
    qd_gemm(ctx, M, N, K, A, B, C, ldc, 1.0f, beta, row_bias, col_bias);
    if (!ctx->trace) return;
    int w_on_a = A.kind == QD_MAT_WEIGHT;       /* then M = output features, N = tokens/pixels */
    int64_t tokens = w_on_a ? N : M, outf = w_on_a ? M : N;
    if (conv) {
        int64_t d[12] = {1, K, 1, tokens, outf, 1, 1, 1, 0, 0, 0, 0};
        ctx->trace(ctx->trace_user, "conv2d", d, 12, qd_now() - t0);
    } else {
        int64_t d[4] = {tokens, K, outf, row_bias || col_bias};
        ctx->trace(ctx->trace_user, "linear", d, 4, qd_now() - t0);
    }
}

/* activations and scratch come from the context's step arena (base/act_pool.h) */
static float *alloc_f(qd_ctx *ctx, int64_t n) { return qd_act_floats(ctx, n); }

/* ---- SDNQ layers in int8 matmul mode ----
 * The fused GEMMs below read weights through decode() (exact mode). When an SDNQ layer
 * runs int8 (qd_sdnq_uses_int8_weight), these helpers do the same linear through the
 * int8 kernel instead; the fused layouts (NCHW in or out, accumulate) cost a transpose.
 * Each returns 0 when the layer does not run int8 or scratch is missing: the caller's
 * fused GEMM then runs as before. */

/* y[M, N] (+)= x[M, K] . W^T + bias, token-major, y row stride ldy; traced as gemm_traced
 * does (a 1x1 conv when conv is set). */
static int int8_gemm_traced(qd_ctx *ctx, int conv, const qd_weight *w, const qd_sdnq_i8_panels *pre, const float *x,
                            int64_t M, const float *bias, float *y, int64_t ldy, int accumulate) {
    double t0 = ctx->trace ? qd_now() : 0;
    if (!qd_sdnq_linear_into(ctx, w, pre, x, M, bias, y, ldy, accumulate)) return 0;
    if (ctx->trace && conv) {
        int64_t d[12] = {1, w->cols, 1, M, w->rows, 1, 1, 1, 0, 0, 0, 0};
        ctx->trace(ctx->trace_user, "conv2d", d, 12, qd_now() - t0);
    } else if (ctx->trace) {
        int64_t d[4] = {M, w->cols, w->rows, bias != NULL};
        ctx->trace(ctx->trace_user, "linear", d, 4, qd_now() - t0);
    }
    return 1;
}

static int int8_linear(qd_ctx *ctx, const qd_weight *w, const qd_sdnq_i8_panels *pre, const float *x, int64_t M,
                       const float *bias, float *y, int64_t ldy, int accumulate) {
    return int8_gemm_traced(ctx, 0, w, pre, x, M, bias, y, ldy, accumulate);
}

/* y[b, n, s] += t[b, s, n] for n < N, s < S. Blocks of 32 tokens x 32 features, read
 * along t's rows and written along y's: a plain transpose writing y with a stride of S
 * floats (16 KB at 64x64) thrashes L1 sets and cost ~5.6 ns per element (bench_sdnq
 * --ops: 0.14 s of an int8-mode SD1.5 step on one thread). */
typedef struct { float *y; const float *t; int64_t S, N, nb; } tadd_args;

static void add_transposed_part(void *arg, int64_t b, int64_t e, int thread) {
    const tadd_args *a = arg;
    for (int64_t it = b; it < e; it++) {
        int64_t bi = it / a->nb, n0 = it % a->nb * 32, n1 = n0 + 32 < a->N ? n0 + 32 : a->N;
        const float *t = a->t + bi * a->S * a->N;
        float *y = a->y + bi * a->N * a->S;
        for (int64_t s0 = 0; s0 < a->S; s0 += 32) {
            int64_t s1 = s0 + 32 < a->S ? s0 + 32 : a->S;
            for (int64_t n = n0; n < n1; n++) {
                float *yr = y + n * a->S;
                const float *tc = t + n;
                for (int64_t s = s0; s < s1; s++) yr[s] += tc[s * a->N];
            }
        }
    }
}

static void add_transposed(qd_ctx *ctx, float *y, const float *t, int64_t B, int64_t S, int64_t N) {
    double t0 = ctx->trace ? qd_now() : 0;
    tadd_args a = {y, t, S, N, (N + 31) / 32};
    qd_parallel_for(ctx, B * a.nb, add_transposed_part, &a);
    int64_t n = B * S * N;
    if (ctx->trace) ctx->trace(ctx->trace_user, "add", &n, 1, qd_now() - t0);
}

/* x [B, K, S] (NCHW) -> y [B, S, N] tokens (+ bias), or with nchw_out y [B, N, S] += .
 * conv: trace as the 1x1 conv it replaces. */
static int int8_nchw(qd_ctx *ctx, int conv, const qd_weight *w, const float *x, int64_t B, int64_t S, const float *bias,
                     float *y, int nchw_in, int nchw_out) {
    int64_t M = B * S, K = w->cols, N = w->rows;
    if (!qd_sdnq_uses_int8_weight(ctx, w, M)) return 0;
    float *xt = nchw_in ? alloc_f(ctx, M * K) : NULL, *yt = nchw_out ? alloc_f(ctx, M * N) : NULL;
    int ok = (!nchw_in || xt) && (!nchw_out || yt);
    if (ok && nchw_in) qd_transpose_cs(ctx, x, B, K, S, xt);
    ok = ok && int8_gemm_traced(ctx, conv, w, NULL, nchw_in ? xt : x, M, bias, nchw_out ? yt : y, N, 0);
    if (ok && nchw_out) add_transposed(ctx, y, yt, B, S, N);   /* y[b, n, s] += yt[b, s, n] */
    qd_act_free(ctx, xt);
    qd_act_free(ctx, yt);
    return ok;
}

/* ---- ResnetBlock2D ---- */

qd_status qd_unet_resnet_load(qd_params *p, qd_unet_resnet *r, int64_t cin, int64_t cout, int64_t temb_dim,
                              int groups, float eps, float out_scale, const char *prefix) {
    memset(r, 0, sizeof *r);
    r->cin = cin;
    r->cout = cout;
    r->groups = groups;
    r->eps = eps;
    r->out_scale = out_scale;
    QD_TRY(qd_p_norm(p, &r->norm1, cin, QD_BIAS, "%s.norm1", prefix));
    QD_TRY(qd_p_conv(p, &r->conv1, cout, cin, 3, QD_BIAS, "%s.conv1", prefix));
    QD_TRY(qd_p_linear(p, &r->temb_proj, cout, temb_dim, QD_BIAS, "%s.time_emb_proj", prefix));
    QD_TRY(qd_p_norm(p, &r->norm2, cout, QD_BIAS, "%s.norm2", prefix));
    QD_TRY(qd_p_conv(p, &r->conv2, cout, cout, 3, QD_BIAS, "%s.conv2", prefix));
    r->has_shortcut = cin != cout;     /* diffusers: use_in_shortcut = in != out */
    if (r->has_shortcut) QD_TRY(qd_p_conv(p, &r->shortcut, cout, cin, 1, QD_BIAS, "%s.conv_shortcut", prefix));
    return QD_OK;
}

qd_status qd_unet_resnet_fwd(qd_ctx *ctx, const qd_unet_resnet *r, const float *x, int64_t B, int64_t H,
                             int64_t W, const float *temb, float **out) {
    int64_t S = H * W, cin = r->cin, cout = r->cout;
    *out = NULL;
    float *h = alloc_f(ctx, B * cin * S), *tb = alloc_f(ctx, B * cout), *h2 = alloc_f(ctx, B * cout * S);
    if (!h || !tb || !h2) { qd_act_free(ctx, h); qd_act_free(ctx, tb); qd_act_free(ctx, h2); return QD_ERR_NOMEM; }
    qd_group_norm(ctx, x, B, cin, S, r->groups, r->eps, r->norm1.w, r->norm1.b, 1, h);
    /* conv1(h) + time_emb_proj(temb)[:, :, None, None]: conv1 runs once for the whole
     * batch (its weight packed once) and the per-item projection is added by norm2 as
     * it reads conv1's output, never stored */
    qd_linear(ctx, temb, B, &r->temb_proj.w, r->temb_proj.b, tb);
    qd_conv2d(ctx, h, B, cin, H, W, &r->conv1.w, r->conv1.b, 3, 3, 1, 1, h2);
    qd_act_free(ctx, h);
    qd_group_norm_bias(ctx, h2, tb, B, cout, S, r->groups, r->eps, r->norm2.w, r->norm2.b, 1, h2);
    qd_act_free(ctx, tb);
    float *y = alloc_f(ctx, B * cout * S);
    if (!y) { qd_act_free(ctx, h2); return QD_ERR_NOMEM; }
    qd_conv2d(ctx, h2, B, cout, H, W, &r->conv2.w, r->conv2.b, 3, 3, 1, 1, y);
    qd_act_free(ctx, h2);
    if (r->has_shortcut) {
        if (!int8_nchw(ctx, 1, &r->shortcut.w, x, B, S, r->shortcut.b, y, 1, 1))
            for (int64_t b = 0; b < B; b++)     /* y += conv_shortcut(x), a 1x1 conv as one GEMM */
                    gemm_traced(ctx, 1, cout, S, cin, qd_wmat(&r->shortcut.w), qd_cols(x + b * cin * S, S),
                            y + b * cout * S, S, 1.0f, r->shortcut.b, NULL);
        if (r->out_scale != 1.0f) {
            ew_args a = {y, NULL, r->out_scale};
            qd_parallel_for(ctx, B * cout * S, div_part, &a);
        }
    } else {
        qd_unet_add_scaled(ctx, y, x, B * cout * S, r->out_scale);
    }
    *out = y;
    return QD_OK;
}

/* ---- Transformer2DModel ---- */

static qd_status tblock_load(qd_params *p, qd_unet_tblock *b, int64_t D, int64_t cross, int64_t F,
                             const char *prefix) {
    QD_TRY(qd_p_norm(p, &b->norm1, D, QD_BIAS, "%s.norm1", prefix));
    QD_TRY(qd_p_linear(p, &b->q1, D, D, QD_NO_BIAS, "%s.attn1.to_q", prefix));
    QD_TRY(qd_p_linear(p, &b->k1, D, D, QD_NO_BIAS, "%s.attn1.to_k", prefix));
    QD_TRY(qd_p_linear(p, &b->v1, D, D, QD_NO_BIAS, "%s.attn1.to_v", prefix));
    QD_TRY(qd_p_linear(p, &b->o1, D, D, QD_BIAS, "%s.attn1.to_out.0", prefix));
    QD_TRY(qd_p_norm(p, &b->norm2, D, QD_BIAS, "%s.norm2", prefix));
    QD_TRY(qd_p_linear(p, &b->q2, D, D, QD_NO_BIAS, "%s.attn2.to_q", prefix));
    QD_TRY(qd_p_linear(p, &b->k2, D, cross, QD_NO_BIAS, "%s.attn2.to_k", prefix));
    QD_TRY(qd_p_linear(p, &b->v2, D, cross, QD_NO_BIAS, "%s.attn2.to_v", prefix));
    QD_TRY(qd_p_linear(p, &b->o2, D, D, QD_BIAS, "%s.attn2.to_out.0", prefix));
    QD_TRY(qd_p_norm(p, &b->norm3, D, QD_BIAS, "%s.norm3", prefix));
    QD_TRY(qd_p_linear(p, &b->ff1, 2 * F, D, QD_BIAS, "%s.ff.net.0.proj", prefix));
    QD_TRY(qd_p_linear(p, &b->ff2, D, F, QD_BIAS, "%s.ff.net.2", prefix));
    return QD_OK;
}

/* proj_in / proj_out: a Linear [out, in] with use_linear_projection, else a 1x1 Conv. */
static qd_status proj_load(qd_params *p, qd_linear_p *out, int64_t out_f, int64_t in_f, int linear,
                           const char *prefix, const char *name) {
    if (linear) {
        /* a dense linear projection must be 2-D (a [out, in, 1, 1] conv belongs to the other
         * config); an SDNQ one stores packed codes, which qd_p_linear checks itself */
        int64_t s[2] = {out_f, in_f};
        const qd_st_tensor *t;
        if (!qd_p_has(p, "%s.%s.scale", prefix, name)) QD_TRY(qd_p_tensor(p, &t, 2, s, "%s.%s.weight", prefix, name));
        return qd_p_linear(p, out, out_f, in_f, QD_BIAS, "%s.%s", prefix, name);
    }
    qd_conv_p c;
    QD_TRY(qd_p_conv(p, &c, out_f, in_f, 1, QD_BIAS, "%s.%s", prefix, name));
    out->w = c.w;
    qd_params_rebind(p, &c.w, &out->w);
    out->b = c.b;
    return QD_OK;
}

qd_status qd_unet_xformer_load(qd_params *p, qd_unet_xformer *t, int64_t C, int heads, int depth,
                               int64_t cross_dim, int groups, int linear_proj, const char *prefix) {
    memset(t, 0, sizeof *t);
    /* Transformer2DModel(heads, C // heads, in_channels=C): inner = heads * (C // heads) */
    t->C = C;
    t->heads = heads;
    t->dh = C / heads;
    t->inner = heads * t->dh;
    t->ff = 4 * t->inner;           /* FeedForward(mult=4) with GEGLU */
    t->cross_dim = cross_dim;
    t->groups = groups;
    t->depth = depth;
    QD_TRY(qd_p_norm(p, &t->norm, C, QD_BIAS, "%s.norm", prefix));
    QD_TRY(proj_load(p, &t->proj_in, t->inner, C, linear_proj, prefix, "proj_in"));
    t->blocks = calloc((size_t)depth, sizeof *t->blocks);
    if (!t->blocks) return qd_fail(p->ctx, QD_ERR_NOMEM, "out of memory");
    char name[512];
    for (int i = 0; i < depth; i++) {
        snprintf(name, sizeof name, "%s.transformer_blocks.%d", prefix, i);
        QD_TRY(tblock_load(p, &t->blocks[i], t->inner, cross_dim, t->ff, name));
    }
    QD_TRY(proj_load(p, &t->proj_out, C, t->inner, linear_proj, prefix, "proj_out"));
    return QD_OK;
}

void qd_unet_xformer_free(qd_unet_xformer *t) {
    free(t->blocks);
    t->blocks = NULL;
}

/* Scratch for one transformer call: `n` holds each LayerNorm output and then the
 * attention output (the norm is dead once q, k, v exist); q/k/v double as the
 * feed-forward's chunk buffers. */
typedef struct {
    float *tok, *n, *work;
    int64_t work_n, kv_rows;
} xf_scratch;

/* hidden = hidden + attn(norm(hidden), kv_src) for one Attention module. */
static void attention(qd_ctx *ctx, const qd_unet_xformer *t, xf_scratch *s, int64_t B, int64_t S,
                      const qd_linear_p *q, const qd_linear_p *k, const qd_linear_p *v, const qd_linear_p *o,
                      const float *kv_src, int64_t Lk) {
    int64_t D = t->inner, M = B * S;
    float *qb = s->work, *kb = qb + M * D, *vb = kb + s->kv_rows * D;
    qd_linear(ctx, s->n, M, &q->w, NULL, qb);
    qd_linear(ctx, kv_src, B * Lk, &k->w, NULL, kb);
    qd_linear(ctx, kv_src, B * Lk, &v->w, NULL, vb);
    qd_attention(ctx, qb, D, kb, D, vb, D, B, S, Lk, t->heads, t->dh, 0, s->n);
    if (!int8_linear(ctx, &o->w, NULL, s->n, M, o->b, s->tok, D, 1))
        gemm_traced(ctx, 0, M, D, D, qd_rows(s->n, D), qd_wmat(&o->w), s->tok, D, 1.0f, NULL, o->b);
}

/* A weight the feed-forward may split: its GEMM is plain decode (no linear hook that
 * would run int8 or a LoRA side path over all M tokens instead). */
static int ff_splittable(const qd_ctx *ctx, const qd_weight *w, int64_t M) {
    return !w->linear || (w->linear == qd_sdnq_linear && !qd_sdnq_uses_int8_weight(ctx, w, M));
}

/* The feed-forward in chunks of Fc hidden features, over all M tokens at once: f1 =
 * [value | gate] columns [j0, j0+Fc) and [F+j0, F+j0+Fc) of ff1 (one GEMM through a
 * two-run view), GEGLU, then tok += f2 . ff2[:, j0:j0+Fc]^T (bias with the first chunk).
 * Every weight element is decoded once per call; chunking the tokens instead decoded
 * both weights once per token chunk (4 times per block in SD1.5: the scratch holds
 * M x 3D floats, the projection needs M x 3F = M x 12D). Returns 0 (nothing done)
 * when a weight must go through its linear hook or the scratch is too small. */
static int ff_by_features(qd_ctx *ctx, const qd_unet_xformer *t, const qd_unet_tblock *b, xf_scratch *s, int64_t M) {
    int64_t D = t->inner, F = t->ff;
    if (!ff_splittable(ctx, &b->ff1.w, M) || !ff_splittable(ctx, &b->ff2.w, M)) return 0;
    int64_t Fc = s->work_n / (3 * M) / 32 * 32;   /* whole 32-wide panels: no strip spans value and gate */
    if (Fc >= F) Fc = F;
    if (Fc < 32 || Fc * 4 < D) return 0;   /* too thin to be worth the extra calls: token chunks */
    float *f1 = s->work, *f2 = s->work + M * 2 * Fc;
    float *bias = b->ff1.b ? alloc_f(ctx, 2 * Fc) : NULL;
    if (b->ff1.b && !bias) return 0;
    for (int64_t j0 = 0; j0 < F; j0 += Fc) {
        int64_t n = F - j0 < Fc ? F - j0 : Fc;
        qd_weight w1, w2;
        qd_weight_view(&w1, &b->ff1.w, j0, F + j0, n, 0, D);
        qd_weight_view(&w2, &b->ff2.w, 0, -1, D, j0, n);
        if (bias) {
            memcpy(bias, b->ff1.b + j0, sizeof(float) * (size_t)n);
            memcpy(bias + n, b->ff1.b + F + j0, sizeof(float) * (size_t)n);
        }
        gemm_traced(ctx, 0, M, 2 * n, D, qd_rows(s->n, D), qd_wmat(&w1), f1, 2 * n, 0.0f, NULL, bias);
        qd_geglu(ctx, f1, M, n, f2);
        gemm_traced(ctx, 0, M, D, n, qd_rows(f2, n), qd_wmat(&w2), s->tok, D, 1.0f, NULL, j0 == 0 ? b->ff2.b : NULL);
    }
    qd_act_free(ctx, bias);
    return 1;
}

static void tblock_fwd(qd_ctx *ctx, const qd_unet_xformer *t, const qd_unet_tblock *b, xf_scratch *s,
                       int64_t B, int64_t S, const float *context, int64_t L) {
    int64_t D = t->inner, M = B * S, F = t->ff;
    qd_layer_norm(ctx, s->tok, M, D, 1e-5f, b->norm1.w, b->norm1.b, s->n);
    attention(ctx, t, s, B, S, &b->q1, &b->k1, &b->v1, &b->o1, s->n, S);
    qd_layer_norm(ctx, s->tok, M, D, 1e-5f, b->norm2.w, b->norm2.b, s->n);
    attention(ctx, t, s, B, S, &b->q2, &b->k2, &b->v2, &b->o2, context, L);
    qd_layer_norm(ctx, s->tok, M, D, 1e-5f, b->norm3.w, b->norm3.b, s->n);
    if (ff_by_features(ctx, t, b, s, M)) return;
    /* feed-forward in row chunks that fit the scratch: [R, 2F] projection + [R, F] GEGLU */
    int64_t R = s->work_n / (3 * F);
    if (R > M) R = M;
    float *f1 = s->work, *f2 = s->work + R * 2 * F;
    /* int8 layers: pack each weight once for all the chunks; whether a layer runs int8
     * is decided for all M tokens, as one diffusers call would */
    qd_sdnq_i8_panels *p1 = qd_sdnq_i8_prepack(ctx, &b->ff1.w, M), *p2 = qd_sdnq_i8_prepack(ctx, &b->ff2.w, M);
    for (int64_t r0 = 0; r0 < M; r0 += R) {
        int64_t nr = M - r0 < R ? M - r0 : R;
        if (!int8_linear(ctx, &b->ff1.w, p1, s->n + r0 * D, nr, b->ff1.b, f1, 2 * F, 0))
            qd_linear(ctx, s->n + r0 * D, nr, &b->ff1.w, b->ff1.b, f1);
        qd_geglu(ctx, f1, nr, F, f2);
        if (!int8_linear(ctx, &b->ff2.w, p2, f2, nr, b->ff2.b, s->tok + r0 * D, D, 1))
            gemm_traced(ctx, 0, nr, D, F, qd_rows(f2, F), qd_wmat(&b->ff2.w), s->tok + r0 * D, D, 1.0f, NULL,
                        b->ff2.b);
    }
    qd_sdnq_i8_panels_free(p1);
    qd_sdnq_i8_panels_free(p2);
}

qd_status qd_unet_xformer_fwd(qd_ctx *ctx, const qd_unet_xformer *t, float *x, int64_t B, int64_t H, int64_t W,
                              const float *context, int64_t L) {
    int64_t S = H * W, C = t->C, D = t->inner, M = B * S;
    xf_scratch s = {0};
    s.kv_rows = M > B * L ? M : B * L;
    s.work_n = (M + 2 * s.kv_rows) * D;
    if (s.work_n < 3 * t->ff) s.work_n = 3 * t->ff;   /* at least one feed-forward row */
    s.tok = alloc_f(ctx, M * D);
    s.n = alloc_f(ctx, M * (C > D ? C : D));     /* also holds the GroupNorm output [B, C, S] */
    s.work = alloc_f(ctx, s.work_n);
    if (!s.tok || !s.n || !s.work) {
        qd_act_free(ctx, s.tok); qd_act_free(ctx, s.n); qd_act_free(ctx, s.work);
        return QD_ERR_NOMEM;
    }
    qd_group_norm(ctx, x, B, C, S, t->groups, 1e-6f, t->norm.w, t->norm.b, 0, s.n);
    if (!int8_nchw(ctx, 0, &t->proj_in.w, s.n, B, S, t->proj_in.b, s.tok, 1, 0))
        for (int64_t b = 0; b < B; b++)     /* tokens[s, :] = W_in . norm[:, s] + b_in */
            gemm_traced(ctx, 0, S, D, C, qd_cols(s.n + b * C * S, S), qd_wmat(&t->proj_in.w), s.tok + b * S * D,
                        D, 0.0f, NULL, t->proj_in.b);
    for (int i = 0; i < t->depth; i++) tblock_fwd(ctx, t, &t->blocks[i], &s, B, S, context, L);
    if (!int8_nchw(ctx, 0, &t->proj_out.w, s.tok, B, S, t->proj_out.b, x, 0, 1))
        for (int64_t b = 0; b < B; b++)     /* x[:, s] += W_out . tokens[s, :] + b_out */
            gemm_traced(ctx, 0, C, S, D, qd_wmat(&t->proj_out.w), qd_rows(s.tok + b * S * D, D), x + b * C * S, S,
                        1.0f, t->proj_out.b, NULL);
    qd_act_free(ctx, s.tok);
    qd_act_free(ctx, s.n);
    qd_act_free(ctx, s.work);
    return QD_OK;
}
