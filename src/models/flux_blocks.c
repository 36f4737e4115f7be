/* FLUX transformer blocks: weight loading and forward passes. Translated from
 * diffusers 0.32.2 (transformer_flux.py: FluxTransformerBlock,
 * FluxSingleTransformerBlock; FluxAttnProcessor2_0 in attention_processor.py;
 * AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous, RMSNorm in
 * normalization.py; apply_rotary_emb in embeddings.py; Apache-2.0).
 *
 * The elementwise steps between the GEMMs are fused into single row-parallel passes
 * that know which rows are text and which are image (see flux_blocks.h): LayerNorm +
 * modulation, qk RMSNorm + RoPE, the gated residual add, GELU + the single blocks'
 * concatenation. They are memory-bound; the GEMMs dominate. */
#include "models/flux_blocks.h"
#include "base/threads.h"
#include "tensor/ops.h"
#include "tensor/rope.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading ---- */

static qd_status load_norm(qd_params *p, float **out, int64_t dh, const char *pre, const char *name) {
    return qd_p_floats(p, out, 1, &dh, "%s.%s.weight", pre, name);
}

qd_status qd_flux_double_load(qd_params *p, qd_flux_double *b, int i, int64_t D, int64_t F, int64_t dh) {
    char pre[64], at[80];
    snprintf(pre, sizeof pre, "transformer_blocks.%d", i);
    snprintf(at, sizeof at, "%s.attn", pre);
    QD_TRY(qd_p_linear(p, &b->norm1, 6 * D, D, QD_BIAS, "%s.norm1.linear", pre));
    QD_TRY(qd_p_linear(p, &b->norm1_ctx, 6 * D, D, QD_BIAS, "%s.norm1_context.linear", pre));
    QD_TRY(qd_p_linear(p, &b->q, D, D, QD_BIAS, "%s.to_q", at));
    QD_TRY(qd_p_linear(p, &b->k, D, D, QD_BIAS, "%s.to_k", at));
    QD_TRY(qd_p_linear(p, &b->v, D, D, QD_BIAS, "%s.to_v", at));
    QD_TRY(qd_p_linear(p, &b->out, D, D, QD_BIAS, "%s.to_out.0", at));
    QD_TRY(qd_p_linear(p, &b->aq, D, D, QD_BIAS, "%s.add_q_proj", at));
    QD_TRY(qd_p_linear(p, &b->ak, D, D, QD_BIAS, "%s.add_k_proj", at));
    QD_TRY(qd_p_linear(p, &b->av, D, D, QD_BIAS, "%s.add_v_proj", at));
    QD_TRY(qd_p_linear(p, &b->aout, D, D, QD_BIAS, "%s.to_add_out", at));
    QD_TRY(load_norm(p, &b->nq, dh, at, "norm_q"));
    QD_TRY(load_norm(p, &b->nk, dh, at, "norm_k"));
    QD_TRY(load_norm(p, &b->naq, dh, at, "norm_added_q"));
    QD_TRY(load_norm(p, &b->nak, dh, at, "norm_added_k"));
    QD_TRY(qd_p_linear(p, &b->ff_in, F, D, QD_BIAS, "%s.ff.net.0.proj", pre));   /* GELU(approximate="tanh").proj */
    QD_TRY(qd_p_linear(p, &b->ff_out, D, F, QD_BIAS, "%s.ff.net.2", pre));
    QD_TRY(qd_p_linear(p, &b->ffc_in, F, D, QD_BIAS, "%s.ff_context.net.0.proj", pre));
    QD_TRY(qd_p_linear(p, &b->ffc_out, D, F, QD_BIAS, "%s.ff_context.net.2", pre));
    return QD_OK;
}

qd_status qd_flux_single_load(qd_params *p, qd_flux_single *b, int i, int64_t D, int64_t F, int64_t dh) {
    char pre[64], at[80];
    snprintf(pre, sizeof pre, "single_transformer_blocks.%d", i);
    snprintf(at, sizeof at, "%s.attn", pre);
    QD_TRY(qd_p_linear(p, &b->norm, 3 * D, D, QD_BIAS, "%s.norm.linear", pre));
    QD_TRY(qd_p_linear(p, &b->q, D, D, QD_BIAS, "%s.to_q", at));
    QD_TRY(qd_p_linear(p, &b->k, D, D, QD_BIAS, "%s.to_k", at));
    QD_TRY(qd_p_linear(p, &b->v, D, D, QD_BIAS, "%s.to_v", at));
    QD_TRY(load_norm(p, &b->nq, dh, at, "norm_q"));
    QD_TRY(load_norm(p, &b->nk, dh, at, "norm_k"));
    QD_TRY(qd_p_linear(p, &b->mlp, F, D, QD_BIAS, "%s.proj_mlp", pre));
    QD_TRY(qd_p_linear(p, &b->out, D, D + F, QD_BIAS, "%s.proj_out", pre));
    return QD_OK;
}

/* ---- fused row passes over [B * S, D] ---- */

/* Per-stream parameters: text rows (position < L in their batch item) use t, image rows i. */
typedef struct {
    const qd_flux_ws *w;
    const float *x;
    float *y;
    const float *t0, *t1, *i0, *i1;     /* ln_mod: shift, scale; gated_add: gate in t0 / i0 */
    int64_t ld;                         /* stride between batch items of the vectors */
} rows_args;

/* sum of x[i] (or of (x[i] - c)^2 when sq) in double, as qd_layer_norm / qd_rms_norm
 * do, but over four independent accumulators: one serial chain of dependent double
 * adds made these passes latency-bound. */
static double row_sum(const float *x, int64_t n, double c, int sq) {
    double a[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) {
            double d = (double)x[i + j] - c;
            a[j] += sq ? d * d : d;
        }
    for (; i < n; i++) {
        double d = (double)x[i] - c;
        a[0] += sq ? d * d : d;
    }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* y = LayerNorm(x) * (1 + scale) + shift (no affine, eps 1e-6): AdaLayerNormZero(Single)
 * and norm2 + modulation. Text rows are skipped when t0 is NULL. */
static void ln_mod_part(void *arg, int64_t b, int64_t e, int thread) {
    const rows_args *a = arg;
    const int64_t D = a->w->D, S = a->w->S, L = a->w->L;
    for (int64_t r = b; r < e; r++) {
        int64_t bi = r / S, txt = r % S < L;
        if (txt && !a->t0) continue;
        const float *sh = (txt ? a->t0 : a->i0) + bi * a->ld, *sc = (txt ? a->t1 : a->i1) + bi * a->ld;
        qd_ln_row(a->x + r * D, D, QD_FLUX_EPS, NULL, NULL, sc, sh, a->y + r * D);   /* vectorised, norm_act.c */
    }
}

static void ln_mod(qd_ctx *ctx, const qd_flux_ws *w, const float *t_shift, const float *t_scale,
                   const float *i_shift, const float *i_scale, int64_t ld) {
    rows_args a = {w, w->h, w->n, t_shift, t_scale, i_shift, i_scale, ld};
    qd_parallel_for(ctx, w->B * w->S, ln_mod_part, &a);
}

/* h += gate * y: the gated residual of every branch. */
static void gated_add_part(void *arg, int64_t b, int64_t e, int thread) {
    const rows_args *a = arg;
    const int64_t D = a->w->D, S = a->w->S, L = a->w->L;
    for (int64_t r = b; r < e; r++) {
        const float *g = (r % S < L ? a->t0 : a->i0) + (r / S) * a->ld, *x = a->x + r * D;
        float *y = a->y + r * D;
        for (int64_t i = 0; i < D; i++) y[i] += g[i] * x[i];
    }
}

static void gated_add(qd_ctx *ctx, const qd_flux_ws *w, const float *branch, const float *t_gate,
                      const float *i_gate, int64_t ld) {
    rows_args a = {w, branch, w->h, t_gate, NULL, i_gate, NULL, ld};
    qd_parallel_for(ctx, w->B * w->S, gated_add_part, &a);
}

/* Per head: RMSNorm (eps 1e-6, the stream's weight), then RoPE at the row's position. */
static void qk_part(void *arg, int64_t b, int64_t e, int thread) {
    const rows_args *a = arg;
    const qd_flux_ws *w = a->w;
    const int64_t D = w->D, S = w->S, L = w->L, dh = w->dh, half = dh / 2;
    for (int64_t r = b; r < e; r++) {
        int64_t pos = r % S;
        const float *g = pos < L ? a->t0 : a->i0, *c = w->cos_t + pos * half, *s = w->sin_t + pos * half;
        for (int h = 0; h < w->heads; h++) {
            float *x = a->y + r * D + h * dh;
            float inv = (float)(1.0 / sqrt(row_sum(x, dh, 0, 1) / dh + QD_FLUX_EPS));
            for (int64_t i = 0; i < dh; i++) x[i] = x[i] * inv * g[i];
            qd_rope_rotate(x, half, c, s);
        }
    }
}

static void qk_norm_rope(qd_ctx *ctx, const qd_flux_ws *w, float *x, const float *t_norm, const float *i_norm) {
    rows_args a = {w, NULL, x, t_norm, NULL, i_norm, NULL, 0};
    qd_parallel_for(ctx, w->B * w->S, qk_part, &a);
}

/* GELU, tanh approximation, as x * sigmoid(2u) = x / (1 + e^(-2u)) with
 * u = sqrt(2/pi) (x + 0.044715 x^3): the same function as 0.5 x (1 + tanh(u)), with
 * one exp instead of libm's slower tanhf and no cancellation in 1 + tanh(u). */
static inline float gelu_tanh(float v) {
    float u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
    return v / (1.0f + expf(-2.0f * u));
}

/* The same 8 lanes at a time: scalar expf made GELU the largest pass outside the GEMMs.
 * exp as Cephes' expf: 2^n * p(r), r = z - n ln2 in [-ln2/2, ln2/2], degree-6
 * polynomial (about 1 ulp). z is clamped to [-87, 88] so 2^n stays finite: beyond it
 * the result is x (z < -87: e^z < 2^-125) or ~0 (z > 88), as the scalar form gives. */
__attribute__((target("avx2,fma")))
static void gelu_avx2(const float *x, float *y, int64_t n) {
    const __m256 c0 = _mm256_set1_ps(0.79788456080286536f), c1 = _mm256_set1_ps(0.044715f);
    const __m256 m2 = _mm256_set1_ps(-2.0f), one = _mm256_set1_ps(1.0f);
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f), log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 p0 = _mm256_set1_ps(1.9875691500e-4f), p1 = _mm256_set1_ps(1.3981999507e-3f),
                 p2 = _mm256_set1_ps(8.3334519073e-3f), p3 = _mm256_set1_ps(4.1665795894e-2f),
                 p4 = _mm256_set1_ps(1.6666665459e-1f), p5 = _mm256_set1_ps(5.0000001201e-1f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 u = _mm256_mul_ps(c0, _mm256_add_ps(v, _mm256_mul_ps(_mm256_mul_ps(c1, v), _mm256_mul_ps(v, v))));
        __m256 z = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(m2, u), lo), hi);
        __m256 k = _mm256_round_ps(_mm256_mul_ps(z, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(k, ln2_lo, _mm256_fnmadd_ps(k, ln2_hi, z));
        __m256 p = _mm256_fmadd_ps(p0, r, p1);
        p = _mm256_fmadd_ps(p, r, p2);
        p = _mm256_fmadd_ps(p, r, p3);
        p = _mm256_fmadd_ps(p, r, p4);
        p = _mm256_fmadd_ps(p, r, p5);
        p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, one));
        __m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
        __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(e2));
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) y[i] = gelu_tanh(x[i]);
}

/* Checked on the calling thread for each pass (cheap), so no lazily set global.
 * QD_ISA=generic forces the scalar form, as it does for the GEMM (tests use it). */
static int cpu_avx2(void) {
    const char *force = getenv("QD_ISA");
    if (force && !strcmp(force, "generic")) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* y[i] = gelu_tanh(x[i]) (y == x allowed). */
static void gelu_row(const float *x, float *y, int64_t n, int avx2) {
    if (avx2) {
        gelu_avx2(x, y, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = gelu_tanh(x[i]);
}

typedef struct { float *x; const float *att; float *cat; int64_t F, D; int avx2; } gelu_args;

static void gelu_part(void *arg, int64_t b, int64_t e, int thread) {
    const gelu_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        float *x = a->x + r * a->F;
        if (!a->cat) {
            gelu_row(x, x, a->F, a->avx2);
            continue;
        }
        /* single blocks: cat row = [attention output, gelu(mlp)] (torch.cat([attn, mlp], dim=2)) */
        float *c = a->cat + r * (a->D + a->F);
        memcpy(c, a->att + r * a->D, sizeof(float) * (size_t)a->D);
        gelu_row(x, c + a->D, a->F, a->avx2);
    }
}

/* FeedForward(gelu-approximate) on `rows` rows of x into y, `chunk` rows per pass. */
static void feed_forward(qd_ctx *ctx, const qd_flux_ws *w, const qd_linear_p *in, const qd_linear_p *out,
                         const float *x, int64_t rows, float *y) {
    for (int64_t r0 = 0; r0 < rows; r0 += w->chunk) {
        int64_t n = rows - r0 < w->chunk ? rows - r0 : w->chunk;
        qd_linear(ctx, x + r0 * w->D, n, &in->w, in->b, w->hid);
        gelu_args g = {w->hid, NULL, NULL, w->F, w->D, cpu_avx2()};
        qd_parallel_for(ctx, n, gelu_part, &g);
        qd_linear(ctx, w->hid, n, &out->w, out->b, y + r0 * w->D);
    }
}

/* ---- blocks ---- */

void qd_flux_double_fwd(qd_ctx *ctx, const qd_flux_double *b, qd_flux_ws *w) {
    const int64_t B = w->B, L = w->L, N = w->N, S = w->S, D = w->D, ld = 6 * D;
    /* norm1 / norm1_context chunks: shift, scale, gate (attention); shift, scale, gate (MLP) */
    qd_linear(ctx, w->tact, B, &b->norm1.w, b->norm1.b, w->mod);
    qd_linear(ctx, w->tact, B, &b->norm1_ctx.w, b->norm1_ctx.b, w->cmod);
    const float *m = w->mod, *c = w->cmod;
    ln_mod(ctx, w, c, c + D, m, m + D, ld);

    /* joint attention: text rows through add_*_proj, image rows through to_*, written in place */
    for (int64_t bi = 0; bi < B; bi++) {
        int64_t t = bi * S * D, i = t + L * D;
        qd_linear(ctx, w->n + t, L, &b->aq.w, b->aq.b, w->q + t);
        qd_linear(ctx, w->n + t, L, &b->ak.w, b->ak.b, w->k + t);
        qd_linear(ctx, w->n + t, L, &b->av.w, b->av.b, w->v + t);
        qd_linear(ctx, w->n + i, N, &b->q.w, b->q.b, w->q + i);
        qd_linear(ctx, w->n + i, N, &b->k.w, b->k.b, w->k + i);
        qd_linear(ctx, w->n + i, N, &b->v.w, b->v.b, w->v + i);
    }
    qk_norm_rope(ctx, w, w->q, b->naq, b->nq);
    qk_norm_rope(ctx, w, w->k, b->nak, b->nk);
    qd_attention(ctx, w->q, D, w->k, D, w->v, D, B, S, S, w->heads, w->dh, 0, w->att);
    for (int64_t bi = 0; bi < B; bi++) {   /* output projections into the now free q */
        int64_t t = bi * S * D, i = t + L * D;
        qd_linear(ctx, w->att + t, L, &b->aout.w, b->aout.b, w->q + t);
        qd_linear(ctx, w->att + i, N, &b->out.w, b->out.b, w->q + i);
    }
    gated_add(ctx, w, w->q, c + 2 * D, m + 2 * D, ld);

    /* norm2 / norm2_context + modulation, the two feed-forwards, gated */
    ln_mod(ctx, w, c + 3 * D, c + 4 * D, m + 3 * D, m + 4 * D, ld);
    for (int64_t bi = 0; bi < B; bi++) {
        int64_t t = bi * S * D, i = t + L * D;
        feed_forward(ctx, w, &b->ffc_in, &b->ffc_out, w->n + t, L, w->q + t);
        feed_forward(ctx, w, &b->ff_in, &b->ff_out, w->n + i, N, w->q + i);
    }
    gated_add(ctx, w, w->q, c + 5 * D, m + 5 * D, ld);
}

void qd_flux_single_fwd(qd_ctx *ctx, const qd_flux_single *b, qd_flux_ws *w) {
    const int64_t R = w->B * w->S, D = w->D, F = w->F, ld = 3 * D;
    /* AdaLayerNormZeroSingle chunks: shift, scale, gate */
    qd_linear(ctx, w->tact, w->B, &b->norm.w, b->norm.b, w->mod);
    const float *m = w->mod;
    ln_mod(ctx, w, m, m + D, m, m + D, ld);

    qd_linear(ctx, w->n, R, &b->q.w, b->q.b, w->q);
    qd_linear(ctx, w->n, R, &b->k.w, b->k.b, w->k);
    qd_linear(ctx, w->n, R, &b->v.w, b->v.b, w->v);
    qk_norm_rope(ctx, w, w->q, b->nq, b->nq);
    qk_norm_rope(ctx, w, w->k, b->nk, b->nk);
    qd_attention(ctx, w->q, D, w->k, D, w->v, D, w->B, w->S, w->S, w->heads, w->dh, 0, w->att);

    /* proj_out([attn, gelu(proj_mlp(n))]) in passes of `chunk` rows, into the free q */
    for (int64_t r0 = 0; r0 < R; r0 += w->chunk) {
        int64_t n = R - r0 < w->chunk ? R - r0 : w->chunk;
        qd_linear(ctx, w->n + r0 * D, n, &b->mlp.w, b->mlp.b, w->hid);
        gelu_args g = {w->hid, w->att + r0 * D, w->cat, F, D, cpu_avx2()};
        qd_parallel_for(ctx, n, gelu_part, &g);
        qd_linear(ctx, w->cat, n, &b->out.w, b->out.b, w->q + r0 * D);
    }
    gated_add(ctx, w, w->q, m + 2 * D, m + 2 * D, ld);
}

void qd_flux_norm_out(qd_ctx *ctx, qd_flux_ws *w, const float *mod) {
    ln_mod(ctx, w, NULL, NULL, mod + w->D, mod, 2 * w->D);
}
