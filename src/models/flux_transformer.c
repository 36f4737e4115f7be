/* FluxTransformer2DModel: config parsing, shape-checked loading and the forward pass
 * around the blocks (flux_blocks.c). Translated from diffusers 0.32.2
 * (transformer_flux.py; CombinedTimestepGuidanceTextProjEmbeddings,
 * CombinedTimestepTextProjEmbeddings, FluxPosEmbed in embeddings.py;
 * AdaLayerNormContinuous in normalization.py; Apache-2.0).
 *
 * Every activation buffer of a forward pass is allocated once up front and reused by
 * every block; the residual stream is [B, L + N, D] with the text rows first (see
 * flux_blocks.h), so the embedders write straight into place and the double-to-single
 * transition needs no concatenation. */
#include "models/flux_transformer.h"
#include "models/flux_blocks.h"
#include "models/params.h"
#include "io/file.h"
#include "io/json.h"
#include "tensor/ops.h"
#include "tensor/rope.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TPROJ 256              /* Timesteps(num_channels=256) of the time/guidance embedders */
#define ROPE_THETA 10000.0     /* FluxPosEmbed(theta=10000) */
#define MLP_RATIO 4            /* FeedForward mult and FluxSingleTransformerBlock mlp_ratio */
#define MLP_CHUNK 1024         /* rows per MLP pass: bounds the [rows, 4D] and [rows, 5D] buffers */
#define MAX_LAYERS 1024
#define MAX_DIM (1 << 20)

struct qd_flux {
    qd_params p;
    qd_flux_info info;
    int heads, head_dim;
    int64_t D, F;
    qd_linear_p x_emb, ctx_emb;
    qd_linear_p t1, t2, g1, g2, c1, c2;   /* timestep_embedder, guidance_embedder, text_embedder linear_1/2 */
    qd_linear_p norm_out, proj_out;
    qd_flux_double *dbl;
    qd_flux_single *sgl;
};

/* ---- config ---- */

typedef struct {
    int patch, in_ch, out_ch, layers, single, head_dim, heads, joint, pooled, guidance;
    int axes[3];
} fcfg;

/* An integer key in [lo, hi] (diffusers' default when absent or null). */
static qd_status int_key(qd_ctx *ctx, const char *path, const cJSON *cfg, const char *key, int def, int lo, int hi,
                         int *out) {
    if (qd_json_int_range(cfg, key, lo, hi, def, out) < 0)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "%s must be an integer in [%d, %d]", key, lo, hi);
    return QD_OK;
}

static qd_status parse_config(qd_ctx *ctx, const char *path, const cJSON *cfg, fcfg *c) {
    memset(c, 0, sizeof *c);
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(cfg, "_class_name");
    if (cls && !cJSON_IsNull(cls) && (!cJSON_IsString(cls) || strcmp(cls->valuestring, "FluxTransformer2DModel")))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                            "_class_name '%s' not supported (only FluxTransformer2DModel)",
                            cJSON_IsString(cls) ? cls->valuestring : "(not a string)");
    QD_TRY(int_key(ctx, path, cfg, "patch_size", 1, 1, 64, &c->patch));
    if (c->patch != 1)   /* diffusers would only widen proj_out; no FLUX checkpoint does it */
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "patch_size %d not supported (only 1)", c->patch);
    QD_TRY(int_key(ctx, path, cfg, "in_channels", 64, 1, MAX_DIM, &c->in_ch));
    QD_TRY(int_key(ctx, path, cfg, "out_channels", c->in_ch, 1, MAX_DIM, &c->out_ch));   /* null: in_channels */
    QD_TRY(int_key(ctx, path, cfg, "num_layers", 19, 0, MAX_LAYERS, &c->layers));
    QD_TRY(int_key(ctx, path, cfg, "num_single_layers", 38, 0, MAX_LAYERS, &c->single));
    QD_TRY(int_key(ctx, path, cfg, "attention_head_dim", 128, 1, MAX_DIM, &c->head_dim));
    QD_TRY(int_key(ctx, path, cfg, "num_attention_heads", 24, 1, MAX_DIM, &c->heads));
    QD_TRY(int_key(ctx, path, cfg, "joint_attention_dim", 4096, 1, MAX_DIM, &c->joint));
    QD_TRY(int_key(ctx, path, cfg, "pooled_projection_dim", 768, 1, MAX_DIM, &c->pooled));
    if ((int64_t)c->heads * c->head_dim > MAX_DIM)
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "num_attention_heads * attention_head_dim = %lld too large",
                            (long long)c->heads * c->head_dim);

    const cJSON *g = cJSON_GetObjectItemCaseSensitive(cfg, "guidance_embeds");
    if (g && !cJSON_IsNull(g) && !cJSON_IsBool(g))
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "guidance_embeds must be true or false");
    c->guidance = cJSON_IsTrue(g);

    /* FluxPosEmbed: one slice of every head per id column, each even (get_1d_rotary_pos_embed
     * asserts it) and together the whole head (apply_rotary_emb multiplies elementwise) */
    const cJSON *ax = cJSON_GetObjectItemCaseSensitive(cfg, "axes_dims_rope");
    if (!ax || cJSON_IsNull(ax)) {
        c->axes[0] = 16; c->axes[1] = 56; c->axes[2] = 56;
    } else {
        if (!cJSON_IsArray(ax))
            return qd_json_fail(ctx, QD_ERR_FORMAT, path, "axes_dims_rope must be a list of integers");
        if (cJSON_GetArraySize(ax) != 3)
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                                "axes_dims_rope with %d axes not supported (3: the ids have 3 columns)",
                                cJSON_GetArraySize(ax));
        int k = 0;
        for (const cJSON *e = ax->child; e; e = e->next, k++) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
                e->valuedouble > MAX_DIM || (int)e->valuedouble % 2)
                return qd_json_fail(ctx, QD_ERR_FORMAT, path, "axes_dims_rope[%d] must be an even integer >= 0", k);
            c->axes[k] = (int)e->valuedouble;
        }
    }
    int sum = c->axes[0] + c->axes[1] + c->axes[2];
    if (sum != c->head_dim)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path,
                            "axes_dims_rope [%d, %d, %d] sums to %d, not attention_head_dim %d",
                            c->axes[0], c->axes[1], c->axes[2], sum, c->head_dim);
    return QD_OK;
}

/* ---- loading ---- */

static qd_status build(qd_flux *m, const fcfg *c) {
    qd_params *p = &m->p;
    const int64_t D = m->D, F = m->F, dh = c->head_dim;
    QD_TRY(qd_p_linear(p, &m->x_emb, D, c->in_ch, QD_BIAS, "x_embedder"));
    QD_TRY(qd_p_linear(p, &m->ctx_emb, D, c->joint, QD_BIAS, "context_embedder"));
    QD_TRY(qd_p_linear(p, &m->t1, D, TPROJ, QD_BIAS, "time_text_embed.timestep_embedder.linear_1"));
    QD_TRY(qd_p_linear(p, &m->t2, D, D, QD_BIAS, "time_text_embed.timestep_embedder.linear_2"));
    if (c->guidance) {
        QD_TRY(qd_p_linear(p, &m->g1, D, TPROJ, QD_BIAS, "time_text_embed.guidance_embedder.linear_1"));
        QD_TRY(qd_p_linear(p, &m->g2, D, D, QD_BIAS, "time_text_embed.guidance_embedder.linear_2"));
    }
    QD_TRY(qd_p_linear(p, &m->c1, D, c->pooled, QD_BIAS, "time_text_embed.text_embedder.linear_1"));
    QD_TRY(qd_p_linear(p, &m->c2, D, D, QD_BIAS, "time_text_embed.text_embedder.linear_2"));
    m->dbl = qd_calloc(p->ctx, (size_t)(c->layers ? c->layers : 1), sizeof *m->dbl);
    m->sgl = qd_calloc(p->ctx, (size_t)(c->single ? c->single : 1), sizeof *m->sgl);
    if (!m->dbl || !m->sgl) return QD_ERR_NOMEM;
    for (int i = 0; i < c->layers; i++) QD_TRY(qd_flux_double_load(p, &m->dbl[i], i, D, F, dh));
    for (int i = 0; i < c->single; i++) QD_TRY(qd_flux_single_load(p, &m->sgl[i], i, D, F, dh));
    QD_TRY(qd_p_linear(p, &m->norm_out, 2 * D, D, QD_BIAS, "norm_out.linear"));
    QD_TRY(qd_p_linear(p, &m->proj_out, c->out_ch, D, QD_BIAS, "proj_out"));
    return QD_OK;
}

void qd_flux_free(qd_flux *m) {
    if (!m) return;
    free(m->dbl);
    free(m->sgl);
    qd_params_close(&m->p);
    free(m);
}

const qd_flux_info *qd_flux_get_info(const qd_flux *m) { return &m->info; }

qd_status qd_flux_load(qd_ctx *ctx, const char *dir, qd_flux **out) {
    *out = NULL;
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, path, &cfg));
    fcfg c;
    qd_status st = parse_config(ctx, path, cfg, &c);
    cJSON_Delete(cfg);   /* fcfg holds no pointers into the tree */
    if (st != QD_OK) return st;
    qd_flux *m = qd_calloc(ctx, 1, sizeof *m);
    if (!m) return QD_ERR_NOMEM;
    m->heads = c.heads;
    m->head_dim = c.head_dim;
    m->D = (int64_t)c.heads * c.head_dim;
    m->F = MLP_RATIO * m->D;
    m->info = (qd_flux_info){c.in_ch, c.out_ch, c.joint, c.pooled, c.layers, c.single, (int)m->D, c.guidance,
                             {c.axes[0], c.axes[1], c.axes[2]}};
    st = qd_params_open(ctx, dir, "transformer", &m->p);
    if (st == QD_OK) st = build(m, &c);
    if (st != QD_OK) { qd_flux_free(m); return st; }
    *out = m;
    return QD_OK;
}

/* ---- forward ---- */

/* diffusers' get_timestep_embedding(t * 1000, 256, flip_sin_to_cos=True,
 * downscale_freq_shift=0), in float32 as torch computes it: t[i] -> out[i, 256]. */
static void timestep_proj(const float *t, int64_t n, float *out) {
    const int half = TPROJ / 2;
    for (int64_t i = 0; i < n; i++) {
        float ts = t[i] * 1000.0f;   /* timestep.to(dtype) * 1000 */
        float *o = out + i * TPROJ;
        for (int k = 0; k < half; k++) {
            float e = (float)-9.210340371976184 * (float)k / (float)half;   /* -ln(10000) * k / half */
            float a = ts * (float)exp((double)e);   /* correctly rounded, like torch's exp */
            o[half + k] = sinf(a);                  /* flip: [cos, sin] */
            o[k] = cosf(a);
        }
    }
}

/* out [B, D] = linear_2(silu(linear_1(x))): TimestepEmbedding and PixArtAlphaTextProjection. */
static void mlp_embed(qd_ctx *ctx, const qd_linear_p *l1, const qd_linear_p *l2, const float *x, int64_t B,
                      float *tmp, float *out) {
    qd_linear(ctx, x, B, &l1->w, l1->b, tmp);
    qd_silu(tmp, B * l1->w.rows);
    qd_linear(ctx, tmp, B, &l2->w, l2->b, out);
}

typedef struct {
    qd_flux_ws w;
    float *temb, *tmp, *tmp2, *tp, *cos_t, *sin_t;
} fwd_bufs;

static void bufs_free(fwd_bufs *f) {
    float *all[] = {f->w.h, f->w.n, f->w.q, f->w.k, f->w.v, f->w.att, f->w.hid, f->w.cat, f->w.tact,
                    f->w.mod, f->w.cmod, f->temb, f->tmp, f->tmp2, f->tp, f->cos_t, f->sin_t};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

static float *alloc_f(qd_ctx *ctx, int64_t n) { return qd_malloc_aligned(ctx, sizeof(float) * (size_t)(n > 0 ? n : 1)); }

qd_status qd_flux_forward(qd_ctx *ctx, qd_flux *m, const float *hidden, int64_t B, int64_t N_img,
                          const float *timestep, const float *guidance, const float *pooled,
                          const float *context, int64_t L, const float *img_ids, const float *txt_ids, float *out) {
    if (!m || !hidden || !timestep || !pooled || !context || !img_ids || !txt_ids || !out || B < 1 || N_img < 1 ||
        L < 1)
        return qd_fail(ctx, QD_ERR_ARG, "flux transformer forward: bad arguments");
    if (m->info.guidance_embeds && !guidance)
        return qd_fail(ctx, QD_ERR_ARG, "flux transformer forward: this model (guidance_embeds) needs guidance");
    if (!m->info.guidance_embeds && guidance)
        return qd_fail(ctx, QD_ERR_ARG, "flux transformer forward: guidance given but the model has no guidance "
                                        "embedding (guidance_embeds false)");
    const int64_t D = m->D, F = m->F, N = N_img, S = L + N, R = B * S, half = m->head_dim / 2;
    const int64_t Cin = m->info.in_channels, C = m->info.out_channels, J = m->info.joint_attention_dim;
    if ((double)R * (double)(D + F) > (double)(1LL << 46))   /* keeps every size product far from overflow */
        return qd_fail(ctx, QD_ERR_ARG, "flux transformer forward: %lld x (%lld + %lld) tokens is too large",
                       (long long)B, (long long)L, (long long)N);

    fwd_bufs f = {0};
    qd_flux_ws *w = &f.w;
    *w = (qd_flux_ws){.B = B, .L = L, .N = N, .S = S, .D = D, .F = F, .heads = m->heads, .dh = m->head_dim,
                      .chunk = R < MLP_CHUNK ? R : MLP_CHUNK};
    qd_status st = QD_OK;
    if (!(w->h = alloc_f(ctx, R * D)) || !(w->n = alloc_f(ctx, R * D)) || !(w->q = alloc_f(ctx, R * D)) ||
        !(w->k = alloc_f(ctx, R * D)) || !(w->v = alloc_f(ctx, R * D)) || !(w->att = alloc_f(ctx, R * D)) ||
        !(w->hid = alloc_f(ctx, w->chunk * F)) || !(w->cat = alloc_f(ctx, w->chunk * (D + F))) ||
        !(w->tact = alloc_f(ctx, B * D)) || !(w->mod = alloc_f(ctx, B * 6 * D)) ||
        !(w->cmod = alloc_f(ctx, B * 6 * D)) || !(f.temb = alloc_f(ctx, B * D)) || !(f.tmp = alloc_f(ctx, B * D)) ||
        !(f.tmp2 = alloc_f(ctx, B * D)) || !(f.tp = alloc_f(ctx, B * TPROJ)) || !(f.cos_t = alloc_f(ctx, S * half)) ||
        !(f.sin_t = alloc_f(ctx, S * half))) {
        st = QD_ERR_NOMEM;
        goto done;
    }

    /* embedders, straight into the rows of the residual stream: [text; image] per batch item */
    for (int64_t b = 0; b < B; b++) {
        qd_linear(ctx, context + b * L * J, L, &m->ctx_emb.w, m->ctx_emb.b, w->h + b * S * D);
        qd_linear(ctx, hidden + b * N * Cin, N, &m->x_emb.w, m->x_emb.b, w->h + (b * S + L) * D);
    }

    /* temb = (timestep_embedder(t) + guidance_embedder(g)) + text_embedder(pooled) */
    timestep_proj(timestep, B, f.tp);
    mlp_embed(ctx, &m->t1, &m->t2, f.tp, B, f.tmp, f.temb);
    if (guidance) {
        timestep_proj(guidance, B, f.tp);
        mlp_embed(ctx, &m->g1, &m->g2, f.tp, B, f.tmp, f.tmp2);
        qd_add(f.temb, f.tmp2, B * D);
    }
    mlp_embed(ctx, &m->c1, &m->c2, pooled, B, f.tmp, f.tmp2);
    qd_add(f.temb, f.tmp2, B * D);
    memcpy(w->tact, f.temb, sizeof(float) * (size_t)(B * D));
    qd_silu(w->tact, B * D);   /* every AdaLayerNorm takes silu(temb) */

    /* RoPE of ids = cat(txt_ids, img_ids) */
    if ((st = qd_rope_table(ctx, txt_ids, L, 3, m->info.axes_dims_rope, ROPE_THETA, f.cos_t, f.sin_t)) != QD_OK ||
        (st = qd_rope_table(ctx, img_ids, N, 3, m->info.axes_dims_rope, ROPE_THETA, f.cos_t + L * half,
                            f.sin_t + L * half)) != QD_OK)
        goto done;
    w->cos_t = f.cos_t;
    w->sin_t = f.sin_t;

    for (int i = 0; i < m->info.num_layers; i++) {
        if (ctx->cancel) { st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); goto done; }
        qd_flux_double_fwd(ctx, &m->dbl[i], w);
    }
    for (int i = 0; i < m->info.num_single_layers; i++) {
        if (ctx->cancel) { st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); goto done; }
        qd_flux_single_fwd(ctx, &m->sgl[i], w);
    }

    /* norm_out on the image rows, proj_out */
    qd_linear(ctx, w->tact, B, &m->norm_out.w, m->norm_out.b, w->mod);
    qd_flux_norm_out(ctx, w, w->mod);
    for (int64_t b = 0; b < B; b++)
        qd_linear(ctx, w->n + (b * S + L) * D, N, &m->proj_out.w, m->proj_out.b, out + b * N * C);
done:
    bufs_free(&f);
    return st;
}

struct qd_params *qd_flux_params(qd_flux *m) { return &m->p; }
