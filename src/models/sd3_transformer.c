/* SD3Transformer2DModel: config parsing, shape-checked loading and the forward pass.
 * Translated from diffusers 0.32.2 (transformer_sd3.py; JointTransformerBlock in
 * attention.py; JointAttnProcessor2_0 in attention_processor.py; AdaLayerNormZero,
 * SD35AdaLayerNormZeroX, AdaLayerNormContinuous in normalization.py; PatchEmbed,
 * get_2d_sincos_pos_embed, CombinedTimestepTextProjEmbeddings in embeddings.py;
 * Apache-2.0).
 *
 * Layout: the two streams are token-major ([B, N, D] image, [B, L, D] context). The
 * joint attention's Q/K/V live in one [B, N + L, D] buffer each, image rows first then
 * context rows (the order JointAttnProcessor2_0 concatenates them), so the projections
 * write straight into place; image and context queries attend in separate calls whose
 * outputs land already split. No concatenation or split copy anywhere. Every buffer of
 * a forward pass is allocated once up front and reused by every block. */
#include "models/sd3_transformer.h"
#include "models/params.h"
#include "base/threads.h"
#include "io/file.h"
#include "io/json.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TPROJ 256          /* Timesteps(num_channels=256) in CombinedTimestepTextProjEmbeddings */
#define LN_EPS 1e-6f       /* every LayerNorm and the qk RMSNorms of the model */
#define FF_ROWS 2048       /* feed-forward rows per GEMM pass: bounds the [rows, 4D] hidden buffer */
#define MAX_LAYERS 1024
#define MAX_DIM (1 << 20)

typedef struct {
    qd_linear_p q, k, v, out;       /* to_q, to_k, to_v, to_out.0 (image stream) */
    qd_linear_p aq, ak, av, aout;   /* add_{q,k,v}_proj, to_add_out (context; aq/aout unused when pre-only) */
    float *nq, *nk, *naq, *nak;     /* qk_norm "rms_norm" weights [head_dim], NULL without qk_norm */
} jattn;

typedef struct { qd_linear_p in, out; } ffn;   /* ff.net.0.proj (gelu tanh), ff.net.2 */

typedef struct {
    int pre_only;                   /* context_pre_only: the last block drops the context output */
    int dual;                       /* SD3.5 dual attention: attn2 on the image stream */
    qd_linear_p norm1, norm1_ctx;   /* AdaLayerNormZero(X) / AdaLayerNormContinuous linears */
    jattn attn, attn2;
    ffn ff, ff_ctx;
} sblock;

struct qd_sd3 {
    qd_params p;
    qd_sd3_info info;
    int heads, head_dim, qk_norm, pe_max;
    int64_t D;
    qd_conv_p patch;                /* pos_embed.proj */
    const qd_st_tensor *pe_stored;  /* use the checkpoint's table (see load_pos_embed), else NULL */
    float pe_step;                  /* grid coordinate = index / pe_step */
    double *omega;                  /* [D/4] sin-cos frequencies */
    qd_linear_p t1, t2, c1, c2;     /* timestep_embedder / text_embedder linear_1, linear_2 */
    qd_linear_p ctx_emb, norm_out, proj_out;
    sblock *blocks;
};

/* ---- config ---- */

typedef struct {
    int sample, patch, in_ch, out_ch, layers, head_dim, heads, joint, caption, pooled, pe_max, qk_norm;
    unsigned char *dual;            /* [layers] */
} scfg;

/* A positive integer key (diffusers' default when absent or null). */
static qd_status pos_int(qd_ctx *ctx, const char *path, const cJSON *cfg, const char *key, int def, int *out) {
    if (qd_json_int_range(cfg, key, 1, MAX_DIM, def, out) < 0)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "%s must be a positive integer", key);
    return QD_OK;
}

static qd_status parse_config(qd_ctx *ctx, const char *path, const cJSON *cfg, scfg *c) {
    memset(c, 0, sizeof *c);
    const char *cls = qd_json_str(cfg, "_class_name", "SD3Transformer2DModel");
    if (strcmp(cls, "SD3Transformer2DModel"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                            "_class_name '%s' not supported (only SD3Transformer2DModel)",
                            cls);
    QD_TRY(pos_int(ctx, path, cfg, "sample_size", 128, &c->sample));
    QD_TRY(pos_int(ctx, path, cfg, "patch_size", 2, &c->patch));
    QD_TRY(pos_int(ctx, path, cfg, "in_channels", 16, &c->in_ch));
    QD_TRY(pos_int(ctx, path, cfg, "out_channels", c->in_ch, &c->out_ch));   /* null: in_channels */
    QD_TRY(pos_int(ctx, path, cfg, "num_layers", 18, &c->layers));
    QD_TRY(pos_int(ctx, path, cfg, "attention_head_dim", 64, &c->head_dim));
    QD_TRY(pos_int(ctx, path, cfg, "num_attention_heads", 18, &c->heads));
    QD_TRY(pos_int(ctx, path, cfg, "joint_attention_dim", 4096, &c->joint));
    QD_TRY(pos_int(ctx, path, cfg, "caption_projection_dim", 1152, &c->caption));
    QD_TRY(pos_int(ctx, path, cfg, "pooled_projection_dim", 2048, &c->pooled));
    const cJSON *pm = cJSON_GetObjectItemCaseSensitive(cfg, "pos_embed_max_size");
    if (cJSON_IsNull(pm))   /* then diffusers recomputes the table per latent size; no SD3 checkpoint does that */
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "pos_embed_max_size null not supported");
    QD_TRY(pos_int(ctx, path, cfg, "pos_embed_max_size", 96, &c->pe_max));
    if (c->layers > MAX_LAYERS)
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "num_layers %d not supported (at most %d)", c->layers,
                            MAX_LAYERS);
    if ((int64_t)c->heads * c->head_dim > MAX_DIM || c->pe_max > 4096 || c->patch > 64)
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "num_attention_heads * attention_head_dim, patch_size or "
                            "pos_embed_max_size out of range");
    /* context_embedder projects to caption_projection_dim, and the blocks take it as inner_dim */
    if (c->caption != c->heads * c->head_dim)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path,
                            "caption_projection_dim %d differs from num_attention_heads * attention_head_dim = %d",
                            c->caption, c->heads * c->head_dim);
    if (c->sample < c->patch)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "sample_size %d smaller than patch_size %d", c->sample, c->patch);

    const cJSON *qk = cJSON_GetObjectItemCaseSensitive(cfg, "qk_norm");
    if (qk && !cJSON_IsNull(qk)) {
        if (!cJSON_IsString(qk) || strcmp(qk->valuestring, "rms_norm"))
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "qk_norm '%s' not supported (only null or rms_norm)",
                                cJSON_IsString(qk) ? qk->valuestring : "(not a string)");
        c->qk_norm = 1;
    }

    c->dual = calloc((size_t)c->layers, 1);
    if (!c->dual) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    const cJSON *dl = cJSON_GetObjectItemCaseSensitive(cfg, "dual_attention_layers");
    if (dl && !cJSON_IsNull(dl)) {
        if (!cJSON_IsArray(dl))
            return qd_json_fail(ctx, QD_ERR_FORMAT, path, "dual_attention_layers must be a list of block indices");
        for (const cJSON *e = dl->child; e; e = e->next) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
                return qd_json_fail(ctx, QD_ERR_FORMAT, path, "dual_attention_layers must be a list of block indices");
            /* diffusers would silently ignore an index past the last block: refuse it as a broken config */
            if (e->valuedouble < 0 || e->valuedouble >= c->layers)
                return qd_json_fail(ctx, QD_ERR_FORMAT, path,
                                    "dual_attention_layers names block %g but num_layers is %d",
                                    e->valuedouble, c->layers);
            c->dual[(int)e->valuedouble] = 1;
        }
    }
    return QD_OK;
}

/* ---- loading ---- */

/* Row (i, j) of diffusers' get_2d_sincos_pos_embed(D, M, base_size) on the M x M grid
 * (interpolation_scale 1): [sin, cos of the column coordinate | sin, cos of the row
 * coordinate], D/4 frequencies each, in float64 like numpy/torch, from float32 grid
 * coordinates arange(M) / (M / base_size). Or the stored row, when that is in use. */
static void pos_row(const qd_sd3 *m, int64_t i, int64_t j, float *row) {
    const int64_t D = m->D, q = D / 4;
    if (m->pe_stored) {
        qd_st_to_f32(m->pe_stored, (i * m->pe_max + j) * D, D, row);
        return;
    }
    double ci = (double)((float)i / m->pe_step), cj = (double)((float)j / m->pe_step);
    for (int64_t k = 0; k < q; k++) {
        row[k] = (float)sin(cj * m->omega[k]);
        row[q + k] = (float)cos(cj * m->omega[k]);
        row[2 * q + k] = (float)sin(ci * m->omega[k]);
        row[3 * q + k] = (float)cos(ci * m->omega[k]);
    }
}

/* The position table is a fixed buffer: diffusers computes it from the config and the
 * checkpoint holds a (bf16/fp16-rounded) copy. Compute it in float32 (the goldens match
 * the exact table, 4e-4 closer than the rounded copy) unless the stored copy is not a
 * rounding of it: then diffusers would use the stored one, and so do we. */
static qd_status load_pos_embed(qd_ctx *ctx, qd_sd3 *m, const scfg *c, const char *path) {
    const int64_t D = m->D, M = c->pe_max;
    const qd_st_tensor *t = NULL;
    if (qd_p_has(&m->p, "pos_embed.pos_embed")) {
        int64_t s[3] = {1, M * M, D};
        QD_TRY(qd_p_tensor(&m->p, &t, 3, s, "pos_embed.pos_embed"));
    }
    if (D % 4) {
        if (t) { m->pe_stored = t; return QD_OK; }
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                            "inner dim %lld is not a multiple of 4 (needed for the sin-cos position table)",
                            (long long)D);
    }
    m->pe_step = (float)((double)M / (c->sample / c->patch));
    if (!(m->omega = qd_malloc(ctx, sizeof(double) * (size_t)(D / 4)))) return QD_ERR_NOMEM;
    for (int64_t k = 0; k < D / 4; k++) m->omega[k] = 1.0 / pow(10000.0, (double)k / (double)(D / 4));
    if (!t) return QD_OK;
    /* compare a sample of rows (the whole table of SD3.5 Large is 90M values) */
    float *a = qd_malloc(ctx, sizeof(float) * (size_t)D), *b = qd_malloc(ctx, sizeof(float) * (size_t)D);
    if (!a || !b) { free(a); free(b); return QD_ERR_NOMEM; }
    double worst = 0;
    for (int64_t s = 0; s < 64 && worst <= 1.0 / 64; s++) {   /* first to last row */
        int64_t r = s * (M * M - 1) / 63;
        pos_row(m, r / M, r % M, a);
        qd_st_to_f32(t, r * D, D, b);
        for (int64_t k = 0; k < D; k++) {
            double d = fabs((double)a[k] - b[k]);
            if (!(d <= worst)) worst = d;   /* NaN sticks */
        }
    }
    free(a);
    free(b);
    if (!(worst <= 1.0 / 64)) {   /* bf16 rounds values in [-1, 1] by at most 2^-8 */
        qd_warn(ctx, "%s: pos_embed.pos_embed differs from the sin-cos table of sample_size %d, patch_size %d "
                "(by %.3g): using the stored table", m->p.name, c->sample, c->patch, worst);
        m->pe_stored = t;
    }
    return QD_OK;
}

static qd_status load_attn(qd_params *p, jattn *a, const char *pre, int64_t D, int64_t dh, int qk, int joint,
                           int pre_only) {
    QD_TRY(qd_p_linear(p, &a->q, D, D, QD_BIAS, "%s.to_q", pre));
    QD_TRY(qd_p_linear(p, &a->k, D, D, QD_BIAS, "%s.to_k", pre));
    QD_TRY(qd_p_linear(p, &a->v, D, D, QD_BIAS, "%s.to_v", pre));
    QD_TRY(qd_p_linear(p, &a->out, D, D, QD_BIAS, "%s.to_out.0", pre));
    if (qk) {
        QD_TRY(qd_p_floats(p, &a->nq, 1, &dh, "%s.norm_q.weight", pre));
        QD_TRY(qd_p_floats(p, &a->nk, 1, &dh, "%s.norm_k.weight", pre));
    }
    if (!joint) return QD_OK;
    /* a pre-only block's context queries and context output are never used: not loaded */
    QD_TRY(qd_p_linear(p, &a->ak, D, D, QD_BIAS, "%s.add_k_proj", pre));
    QD_TRY(qd_p_linear(p, &a->av, D, D, QD_BIAS, "%s.add_v_proj", pre));
    if (qk) QD_TRY(qd_p_floats(p, &a->nak, 1, &dh, "%s.norm_added_k.weight", pre));
    if (pre_only) return QD_OK;
    QD_TRY(qd_p_linear(p, &a->aq, D, D, QD_BIAS, "%s.add_q_proj", pre));
    QD_TRY(qd_p_linear(p, &a->aout, D, D, QD_BIAS, "%s.to_add_out", pre));
    if (qk) QD_TRY(qd_p_floats(p, &a->naq, 1, &dh, "%s.norm_added_q.weight", pre));
    return QD_OK;
}

static qd_status load_ff(qd_params *p, ffn *f, const char *pre, int64_t D) {
    QD_TRY(qd_p_linear(p, &f->in, 4 * D, D, QD_BIAS, "%s.net.0.proj", pre));   /* FeedForward mult=4 */
    QD_TRY(qd_p_linear(p, &f->out, D, 4 * D, QD_BIAS, "%s.net.2", pre));
    return QD_OK;
}

static qd_status build(qd_ctx *ctx, qd_sd3 *m, const scfg *c, const char *path) {
    qd_params *p = &m->p;
    int64_t D = m->D, dh = c->head_dim;
    QD_TRY(qd_p_conv(p, &m->patch, D, c->in_ch, c->patch, QD_BIAS, "pos_embed.proj"));
    QD_TRY(load_pos_embed(ctx, m, c, path));
    QD_TRY(qd_p_linear(p, &m->t1, D, TPROJ, QD_BIAS, "time_text_embed.timestep_embedder.linear_1"));
    QD_TRY(qd_p_linear(p, &m->t2, D, D, QD_BIAS, "time_text_embed.timestep_embedder.linear_2"));
    QD_TRY(qd_p_linear(p, &m->c1, D, c->pooled, QD_BIAS, "time_text_embed.text_embedder.linear_1"));
    QD_TRY(qd_p_linear(p, &m->c2, D, D, QD_BIAS, "time_text_embed.text_embedder.linear_2"));
    QD_TRY(qd_p_linear(p, &m->ctx_emb, D, c->joint, QD_BIAS, "context_embedder"));

    if (!(m->blocks = qd_calloc(ctx, (size_t)c->layers, sizeof *m->blocks))) return QD_ERR_NOMEM;
    char pre[128], sub[160];
    for (int i = 0; i < c->layers; i++) {
        sblock *b = &m->blocks[i];
        b->pre_only = i == c->layers - 1;
        b->dual = c->dual[i];
        snprintf(pre, sizeof pre, "transformer_blocks.%d", i);
        QD_TRY(qd_p_linear(p, &b->norm1, (b->dual ? 9 : 6) * D, D, QD_BIAS, "%s.norm1.linear", pre));
        QD_TRY(qd_p_linear(p, &b->norm1_ctx, (b->pre_only ? 2 : 6) * D, D, QD_BIAS, "%s.norm1_context.linear", pre));
        snprintf(sub, sizeof sub, "%s.attn", pre);
        QD_TRY(load_attn(p, &b->attn, sub, D, dh, c->qk_norm, 1, b->pre_only));
        if (b->dual) {
            snprintf(sub, sizeof sub, "%s.attn2", pre);
            QD_TRY(load_attn(p, &b->attn2, sub, D, dh, c->qk_norm, 0, 0));
        }
        snprintf(sub, sizeof sub, "%s.ff", pre);
        QD_TRY(load_ff(p, &b->ff, sub, D));
        if (!b->pre_only) {
            snprintf(sub, sizeof sub, "%s.ff_context", pre);
            QD_TRY(load_ff(p, &b->ff_ctx, sub, D));
        }
    }
    QD_TRY(qd_p_linear(p, &m->norm_out, 2 * D, D, QD_BIAS, "norm_out.linear"));
    QD_TRY(qd_p_linear(p, &m->proj_out, (int64_t)c->patch * c->patch * c->out_ch, D, QD_BIAS, "proj_out"));
    return QD_OK;
}

void qd_sd3_free(qd_sd3 *m) {
    if (!m) return;
    free(m->blocks);
    free(m->omega);
    qd_params_close(&m->p);
    free(m);
}

const qd_sd3_info *qd_sd3_get_info(const qd_sd3 *m) { return &m->info; }

qd_status qd_sd3_load(qd_ctx *ctx, const char *dir, qd_sd3 **out) {
    *out = NULL;
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, path, &cfg));
    scfg c;
    qd_status st = parse_config(ctx, path, cfg, &c);
    cJSON_Delete(cfg);   /* scfg holds no pointers into the tree */
    if (st != QD_OK) { free(c.dual); return st; }
    qd_sd3 *m = qd_calloc(ctx, 1, sizeof *m);
    if (!m) { free(c.dual); return QD_ERR_NOMEM; }
    m->heads = c.heads;
    m->head_dim = c.head_dim;
    m->qk_norm = c.qk_norm;
    m->pe_max = c.pe_max;
    m->D = (int64_t)c.heads * c.head_dim;
    m->info = (qd_sd3_info){c.in_ch, c.out_ch, c.patch, c.sample, c.joint, c.pooled, c.layers, (int)m->D};
    st = qd_params_open(ctx, dir, "transformer", &m->p);
    if (st == QD_OK) st = build(ctx, m, &c, path);
    free(c.dual);
    if (st != QD_OK) { qd_sd3_free(m); return st; }
    *out = m;
    return QD_OK;
}

/* ---- row-parallel elementwise helpers (memory-bound; the GEMMs dominate) ---- */

typedef struct {
    float *x;                       /* [rows, D], updated in place */
    const float *y;                 /* gated add: addend */
    const float *shift, *scale, *gate;   /* batch 0's vectors; batch b at + b * ldm */
    int64_t ldm, rpb, D;            /* rows per batch item */
} rows_args;

/* x += gate[b] * y: the gated residual of every branch. */
static void gated_add_part(void *arg, int64_t b, int64_t e, int thread) {
    const rows_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        const float *g = a->gate + (r / a->rpb) * a->ldm, *y = a->y + r * a->D;
        float *x = a->x + r * a->D;
        for (int64_t i = 0; i < a->D; i++) x[i] += g[i] * y[i];
    }
}

static void gated_add(qd_ctx *ctx, float *x, const float *y, int64_t rows, int64_t rpb, int64_t D, const float *gate,
                      int64_t ldm) {
    rows_args a = {x, y, NULL, NULL, gate, ldm, rpb, D};
    qd_parallel_for(ctx, rows, gated_add_part, &a);
}

#define EW_CHUNK 4096

typedef struct { float *x; int64_t n; } vec_args;

/* GELU, tanh approximation, as x * sigmoid(2u) = x / (1 + e^(-2u)) with
 * u = sqrt(2/pi) (x + 0.044715 x^3): the same function as 0.5 x (1 + tanh(u)) but one
 * expf instead of libm's tanhf, which made this a tenth of a block at 4096 tokens
 * (and no cancellation in 1 + tanh(u) for negative x). */
static void gelu_part(void *arg, int64_t b, int64_t e, int thread) {
    const vec_args *a = arg;
    int64_t lo = b * EW_CHUNK, hi = e * EW_CHUNK < a->n ? e * EW_CHUNK : a->n;
    float *x = a->x;
    for (int64_t i = lo; i < hi; i++) {
        float v = x[i], u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
        x[i] = v / (1.0f + expf(-2.0f * u));
    }
}

/* On the context's threads: the hidden layer is [rows, 4D]. */
static void gelu_tanh_par(qd_ctx *ctx, float *x, int64_t n) {
    vec_args a = {x, n};
    qd_parallel_for(ctx, (n + EW_CHUNK - 1) / EW_CHUNK, gelu_part, &a);
}

/* ---- forward ---- */

/* diffusers' get_timestep_embedding, in float32 as torch computes it: t[i] -> out[i, dim]. */
static void sinusoid(const float *t, int64_t n, int dim, int flip, float shift, float *out) {
    int half = dim / 2;
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * dim;
        for (int k = 0; k < half; k++) {
            float e = (float)-9.210340371976184 * (float)k / ((float)half - shift);   /* -ln(10000) * k / ... */
            float a = t[i] * (float)exp((double)e);   /* correctly rounded, like torch's exp */
            o[flip ? half + k : k] = sinf(a);
            o[flip ? k : half + k] = cosf(a);
        }
        if (dim % 2) o[dim - 1] = 0.0f;
    }
}

/* The position rows of an h x w latent: diffusers' cropped_pos_embed (centred crop). */
typedef struct { const qd_sd3 *m; float *dst; int64_t top, left, wd; } pe_args;

static void pe_part(void *arg, int64_t b, int64_t e, int thread) {
    const pe_args *a = arg;
    for (int64_t r = b; r < e; r++) pos_row(a->m, a->top + r / a->wd, a->left + r % a->wd, a->dst + r * a->m->D);
}

/* Every activation buffer of one forward pass (S = N + L joint tokens). */
typedef struct {
    float *img, *txt;               /* residual streams [B, N, D], [B, L, D] */
    float *q, *k, *v;               /* joint attention [B, S, D]: image rows, then context rows */
    float *nimg, *nimg2, *ntxt;     /* a branch's normalized + modulated input, then its attention output */
    float *hid;                     /* feed-forward hidden [FF_ROWS, 4D] */
    float *temb, *tact, *mod, *cmod, *tp, *tmp;   /* [B, D], [B, D], [B, 9D], [B, 6D], [B, 256], [B, D] */
    float *po;                      /* proj_out [B, N, p * p * out_channels] */
} fwd_ws;

static void ws_free(fwd_ws *w) {
    float *all[] = {w->img, w->txt, w->q, w->k, w->v, w->nimg, w->nimg2, w->ntxt, w->hid,
                    w->temb, w->tact, w->mod, w->cmod, w->tp, w->tmp, w->po};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

static float *alloc_f(qd_ctx *ctx, int64_t n) { return qd_malloc_aligned(ctx, sizeof(float) * (size_t)(n > 0 ? n : 1)); }

/* y[rows, D_out] = FeedForward(x) in passes of FF_ROWS rows: linear, gelu (tanh), linear. */
static void feed_forward(qd_ctx *ctx, const ffn *f, const float *x, int64_t rows, int64_t D, float *hid, float *y) {
    int64_t F = f->in.w.rows;
    for (int64_t r0 = 0; r0 < rows; r0 += FF_ROWS) {
        int64_t n = rows - r0 < FF_ROWS ? rows - r0 : FF_ROWS;
        qd_linear(ctx, x + r0 * D, n, &f->in.w, f->in.b, hid);
        gelu_tanh_par(ctx, hid, n * F);
        qd_linear(ctx, hid, n, &f->out.w, f->out.b, y + r0 * D);
    }
}

/* In-place RMSNorm over each head of `rows` rows of width heads*dh (diffusers' norm_q/norm_k). */
static void head_rms(qd_ctx *ctx, float *x, int64_t rows, int heads, int64_t dh, const float *w) {
    if (w) qd_rms_norm(ctx, x, rows * heads, dh, LN_EPS, w, x);
}

/* One JointTransformerBlock (diffusers' forward order). The context stream is left
 * untouched by the last, pre-only block: nothing reads it afterwards. */
static void block_fwd(qd_ctx *ctx, const qd_sd3 *m, const sblock *blk, fwd_ws *w, int64_t B, int64_t N, int64_t L) {
    const int64_t D = m->D, S = N + L, dh = m->head_dim;
    const int heads = m->heads;
    const jattn *a = &blk->attn;

    /* AdaLayerNormZero(X): shift, scale, gate (msa), shift, scale, gate (mlp)[, shift, scale, gate (msa2)] */
    int64_t nm = blk->dual ? 9 : 6, nc = blk->pre_only ? 2 : 6;
    qd_linear(ctx, w->tact, B, &blk->norm1.w, blk->norm1.b, w->mod);
    qd_linear(ctx, w->tact, B, &blk->norm1_ctx.w, blk->norm1_ctx.b, w->cmod);
    const float *md = w->mod, *cm = w->cmod;
    int64_t ldm = nm * D, ldc = nc * D;

    /* LayerNorm and the adaLN modulation in one pass (tensor/norm_act.c) */
    if (blk->dual) qd_layer_norm_mod(ctx, w->img, B * N, D, LN_EPS, NULL, NULL, N, md + 6 * D, md + 7 * D, ldm, w->nimg2);
    qd_layer_norm_mod(ctx, w->img, B * N, D, LN_EPS, NULL, NULL, N, md, md + D, ldm, w->nimg);
    if (blk->pre_only)   /* AdaLayerNormContinuous chunks as (scale, shift) */
        qd_layer_norm_mod(ctx, w->txt, B * L, D, LN_EPS, NULL, NULL, L, cm + D, cm, ldc, w->ntxt);
    else
        qd_layer_norm_mod(ctx, w->txt, B * L, D, LN_EPS, NULL, NULL, L, cm, cm + D, ldc, w->ntxt);

    /* joint attention over [image, context] tokens of each batch item */
    for (int64_t b = 0; b < B; b++) {
        const float *xi = w->nimg + b * N * D, *xc = w->ntxt + b * L * D;
        float *qb = w->q + b * S * D, *kb = w->k + b * S * D, *vb = w->v + b * S * D;
        qd_linear(ctx, xi, N, &a->q.w, a->q.b, qb);
        qd_linear(ctx, xi, N, &a->k.w, a->k.b, kb);
        qd_linear(ctx, xi, N, &a->v.w, a->v.b, vb);
        head_rms(ctx, qb, N, heads, dh, a->nq);
        head_rms(ctx, kb, N, heads, dh, a->nk);
        qd_linear(ctx, xc, L, &a->ak.w, a->ak.b, kb + N * D);
        qd_linear(ctx, xc, L, &a->av.w, a->av.b, vb + N * D);
        head_rms(ctx, kb + N * D, L, heads, dh, a->nak);
        if (!blk->pre_only) {
            qd_linear(ctx, xc, L, &a->aq.w, a->aq.b, qb + N * D);
            head_rms(ctx, qb + N * D, L, heads, dh, a->naq);
        }
    }
    /* Image and context queries in separate calls: the outputs land split, in the now free
     * nimg / ntxt, and a pre-only block skips the context queries (its output is dropped). */
    for (int64_t b = 0; b < B; b++) {
        const float *kb = w->k + b * S * D, *vb = w->v + b * S * D;
        qd_attention(ctx, w->q + b * S * D, D, kb, D, vb, D, 1, N, S, heads, dh, 0, w->nimg + b * N * D);
        if (!blk->pre_only)
            qd_attention(ctx, w->q + b * S * D + N * D, D, kb, D, vb, D, 1, L, S, heads, dh, 0, w->ntxt + b * L * D);
    }
    qd_linear(ctx, w->nimg, B * N, &a->out.w, a->out.b, w->q);   /* q, k, v are free from here on */
    gated_add(ctx, w->img, w->q, B * N, N, D, md + 2 * D, ldm);
    if (!blk->pre_only) {   /* the streams are independent now: diffusers' order of updates does not matter */
        qd_linear(ctx, w->ntxt, B * L, &a->aout.w, a->aout.b, w->k);
        gated_add(ctx, w->txt, w->k, B * L, L, D, cm + 2 * D, ldc);
    }

    /* SD3.5 dual attention: self-attention of the image stream on its own modulation */
    if (blk->dual) {
        const jattn *a2 = &blk->attn2;
        qd_linear(ctx, w->nimg2, B * N, &a2->q.w, a2->q.b, w->q);
        qd_linear(ctx, w->nimg2, B * N, &a2->k.w, a2->k.b, w->k);
        qd_linear(ctx, w->nimg2, B * N, &a2->v.w, a2->v.b, w->v);
        head_rms(ctx, w->q, B * N, heads, dh, a2->nq);
        head_rms(ctx, w->k, B * N, heads, dh, a2->nk);
        qd_attention(ctx, w->q, D, w->k, D, w->v, D, B, N, N, heads, dh, 0, w->nimg2);
        qd_linear(ctx, w->nimg2, B * N, &a2->out.w, a2->out.b, w->q);
        gated_add(ctx, w->img, w->q, B * N, N, D, md + 8 * D, ldm);
    }

    /* image feed-forward (its output goes to the now free q buffer) */
    qd_layer_norm_mod(ctx, w->img, B * N, D, LN_EPS, NULL, NULL, N, md + 3 * D, md + 4 * D, ldm, w->nimg);
    feed_forward(ctx, &blk->ff, w->nimg, B * N, D, w->hid, w->q);
    gated_add(ctx, w->img, w->q, B * N, N, D, md + 5 * D, ldm);

    if (blk->pre_only) return;
    qd_layer_norm_mod(ctx, w->txt, B * L, D, LN_EPS, NULL, NULL, L, cm + 3 * D, cm + 4 * D, ldc, w->ntxt);
    feed_forward(ctx, &blk->ff_ctx, w->ntxt, B * L, D, w->hid, w->q);
    gated_add(ctx, w->txt, w->q, B * L, L, D, cm + 5 * D, ldc);
}

qd_status qd_sd3_forward(qd_ctx *ctx, qd_sd3 *m, const float *x, int64_t B, int64_t H, int64_t W,
                         const float *timestep, const float *context, int64_t L, const float *pooled,
                         float *out) {
    if (!m || !x || !timestep || !context || !pooled || !out || B < 1 || H < 1 || W < 1 || L < 1)
        return qd_fail(ctx, QD_ERR_ARG, "sd3 transformer forward: bad arguments");
    const int64_t P = m->info.patch_size, D = m->D, C = m->info.out_channels, Cin = m->info.in_channels,
                  M = m->pe_max;
    if (H % P || W % P)
        return qd_fail(ctx, QD_ERR_ARG, "sd3 transformer forward: latent %lldx%lld is not a multiple of patch_size %lld",
                       (long long)H, (long long)W, (long long)P);
    const int64_t h = H / P, wd = W / P, N = h * wd, S = N + L, PPC = P * P * C;
    if (h > M || wd > M)   /* diffusers' cropped_pos_embed refuses this too */
        return qd_fail(ctx, QD_ERR_ARG, "sd3 transformer forward: latent %lldx%lld exceeds pos_embed_max_size %lld "
                       "patches of %lld", (long long)H, (long long)W, (long long)M, (long long)P);

    int any_dual = 0;
    for (int i = 0; i < m->info.num_layers; i++) any_dual |= m->blocks[i].dual;
    int64_t ffr = (B * N > B * L ? B * N : B * L) < FF_ROWS ? (B * N > B * L ? B * N : B * L) : FF_ROWS;
    fwd_ws w = {0};
    qd_status st = QD_OK;
    if (!(w.img = alloc_f(ctx, B * N * D)) || !(w.txt = alloc_f(ctx, B * L * D)) || !(w.q = alloc_f(ctx, B * S * D)) ||
        !(w.k = alloc_f(ctx, B * S * D)) || !(w.v = alloc_f(ctx, B * S * D)) ||
        !(w.nimg = alloc_f(ctx, B * N * D)) || (any_dual && !(w.nimg2 = alloc_f(ctx, B * N * D))) ||
        !(w.ntxt = alloc_f(ctx, B * L * D)) || !(w.hid = alloc_f(ctx, ffr * 4 * D)) ||
        !(w.temb = alloc_f(ctx, B * D)) || !(w.tact = alloc_f(ctx, B * D)) || !(w.mod = alloc_f(ctx, B * 9 * D)) ||
        !(w.cmod = alloc_f(ctx, B * 6 * D)) || !(w.tp = alloc_f(ctx, B * TPROJ)) || !(w.tmp = alloc_f(ctx, B * D)) ||
        !(w.po = alloc_f(ctx, B * N * PPC))) {
        st = QD_ERR_NOMEM;
        goto done;
    }

    /* PatchEmbed: conv p x p stride p, to tokens, + the table cropped to the centre h x w */
    qd_conv2d(ctx, x, B, Cin, H, W, &m->patch.w, m->patch.b, (int)P, (int)P, (int)P, 0, w.q);
    qd_transpose_cs(ctx, w.q, B, D, N, w.img);
    pe_args pa = {m, w.nimg, (M - h) / 2, (M - wd) / 2, wd};   /* nimg is free until block 0 */
    qd_parallel_for(ctx, N, pe_part, &pa);
    for (int64_t b = 0; b < B; b++) qd_add(w.img + b * N * D, w.nimg, N * D);

    /* temb = TimestepEmbedding(Timesteps(t)) + PixArtAlphaTextProjection(pooled) */
    sinusoid(timestep, B, TPROJ, 1, 0.0f, w.tp);
    qd_linear(ctx, w.tp, B, &m->t1.w, m->t1.b, w.tmp);
    qd_silu(w.tmp, B * D);
    qd_linear(ctx, w.tmp, B, &m->t2.w, m->t2.b, w.temb);
    qd_linear(ctx, pooled, B, &m->c1.w, m->c1.b, w.tmp);
    qd_silu(w.tmp, B * D);
    qd_linear(ctx, w.tmp, B, &m->c2.w, m->c2.b, w.tact);
    qd_add(w.temb, w.tact, B * D);
    memcpy(w.tact, w.temb, sizeof(float) * (size_t)(B * D));
    qd_silu(w.tact, B * D);   /* every AdaLayerNorm takes silu(temb) */

    qd_linear(ctx, context, B * L, &m->ctx_emb.w, m->ctx_emb.b, w.txt);

    for (int i = 0; i < m->info.num_layers; i++) {
        if (ctx->cancel) { st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); goto done; }
        block_fwd(ctx, m, &m->blocks[i], &w, B, N, L);
    }

    /* norm_out (AdaLayerNormContinuous: scale, shift), proj_out, unpatchify */
    qd_linear(ctx, w.tact, B, &m->norm_out.w, m->norm_out.b, w.mod);
    qd_layer_norm_mod(ctx, w.img, B * N, D, LN_EPS, NULL, NULL, N, w.mod + D, w.mod, 2 * D, w.nimg);
    qd_linear(ctx, w.nimg, B * N, &m->proj_out.w, m->proj_out.b, w.po);
    /* token (b, i, j) holds [p, q, c]: out[b, c, i*P + p, j*P + q] ("nhwpqc->nchpwq") */
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < wd; j++) {
                const float *t = w.po + ((b * h + i) * wd + j) * PPC;
                for (int64_t pi = 0; pi < P; pi++)
                    for (int64_t qj = 0; qj < P; qj++)
                        for (int64_t c = 0; c < C; c++)
                            out[((b * C + c) * H + i * P + pi) * W + j * P + qj] = t[(pi * P + qj) * C + c];
            }
done:
    ws_free(&w);
    return st;
}

struct qd_params *qd_sd3_params(qd_sd3 *m) { return &m->p; }
