/* AutoencoderKL, translated from diffusers 0.32.2 (Apache-2.0):
 * autoencoders/autoencoder_kl.py, autoencoders/vae.py (Encoder, Decoder),
 * unets/unet_2d_blocks.py (DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D),
 * resnet.py (ResnetBlock2D, Downsample2D, Upsample2D), attention_processor.py.
 *
 * Buffer discipline: every stage takes ownership of its input activation and
 * hands back a new one, freeing temporaries as soon as they are dead, so the
 * full-resolution stages hold at most three activation buffers. */
#include "models/vae.h"
#include "models/vae_tiles.h"
#include "models/params.h"
#include "io/json.h"
#include "io/file.h"
#include "tensor/ops.h"
#include "tensor/conv.h"
#include "tensor/conv_up2x.h"
#include "tensor/gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_MAX_BLOCKS 8
/* Encoder/Decoder hard-code eps 1e-6 for every GroupNorm (resnets, attention, conv_norm_out). */
#define VAE_EPS 1e-6f

typedef struct {
    int64_t cin, cout;
    qd_norm_p norm1, norm2;
    qd_conv_p conv1, conv2, shortcut;
    int has_shortcut;           /* 1x1 conv_shortcut when cin != cout */
} vae_resnet;

typedef struct {
    int64_t c;
    qd_norm_p norm;
    qd_linear_p q, k, v, out;
    float rescale;              /* rescale_output_factor: output_scale_factor, 1 for AutoencoderKL */
} vae_attn;

typedef struct {
    vae_resnet res[2];
    vae_attn attn;
    int has_attn;
} vae_mid;

typedef struct {
    vae_resnet *res;
    int n_res;
    qd_conv_p sample;           /* Downsample2D / Upsample2D conv */
    int has_sample;
} vae_block;

typedef struct {
    qd_conv_p conv_in, conv_out;
    qd_norm_p norm_out;
    vae_mid mid;
    vae_block blocks[VAE_MAX_BLOCKS];
    int n_blocks;
} vae_coder;

struct qd_vae {
    qd_vae_info info;
    qd_params p;
    int groups;
    vae_coder enc, dec;
    qd_conv_p quant_conv, post_quant_conv;
    int has_quant_conv, has_post_quant_conv;
    int64_t max_channels;
};

/* ---- config ---------------------------------------------------------------- */

typedef struct {
    int n_blocks, channels[VAE_MAX_BLOCKS], layers, groups;
    int latent, in_ch, out_ch, quant, post_quant, mid_attn;
    float scaling, shift;
} vae_cfg;

/* An integer key in [lo, hi], `def` when absent or null; anything else is an error. */
static qd_status cfg_int(qd_ctx *ctx, const char *path, const cJSON *root, const char *key,
                         int def, int lo, int hi, int *out) {
    if (qd_json_int_range(root, key, lo, hi, def, out) < 0)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "\"%s\" must be an integer in [%d, %d]", key, lo, hi);
    return QD_OK;
}

/* A list of block type names that must all equal `want` (the only type AutoencoderKL uses). */
static qd_status cfg_types(qd_ctx *ctx, const char *path, const cJSON *root, const char *key,
                           const char *want, int *n_out) {
    const char *types[VAE_MAX_BLOCKS];
    int n = qd_json_strs(root, key, types, VAE_MAX_BLOCKS);
    if (n < 0) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
        if (cJSON_IsArray(it) && cJSON_GetArraySize(it) > VAE_MAX_BLOCKS)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: \"%s\" has %d blocks, at most %d are supported",
                           path, key, cJSON_GetArraySize(it), VAE_MAX_BLOCKS);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: \"%s\" must be a list of block type names", path, key);
    }
    if (n == 0) { types[0] = want; n = 1; }   /* diffusers' default: one block */
    for (int i = 0; i < n; i++)
        if (strcmp(types[i], want) != 0)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: %s[%d] is '%s'; only %s is supported",
                           path, key, i, types[i], want);
    *n_out = n;
    return QD_OK;
}

static qd_status parse_config(qd_ctx *ctx, const char *path, const cJSON *root, vae_cfg *c) {
    const char *cls = qd_json_str(root, "_class_name", NULL);
    if (cls && strcmp(cls, "AutoencoderKL") != 0)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: _class_name '%s' is not AutoencoderKL", path, cls);
    const char *act = qd_json_str(root, "act_fn", "silu");
    if (strcmp(act, "silu") != 0)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: act_fn '%s' is not supported (only silu)", path, act);

    int n_down, n_up;
    QD_TRY(cfg_types(ctx, path, root, "down_block_types", "DownEncoderBlock2D", &n_down));
    QD_TRY(cfg_types(ctx, path, root, "up_block_types", "UpDecoderBlock2D", &n_up));

    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels");
    if (!boc || cJSON_IsNull(boc)) {
        c->n_blocks = 1;
        c->channels[0] = 64;
    } else {
        if (!cJSON_IsArray(boc) || cJSON_GetArraySize(boc) < 1 || cJSON_GetArraySize(boc) > VAE_MAX_BLOCKS)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: \"block_out_channels\" must be a list of 1 to %d integers",
                           path, VAE_MAX_BLOCKS);
        int i = 0;
        for (const cJSON *e = boc->child; e; e = e->next, i++) {
            double d = cJSON_IsNumber(e) ? e->valuedouble : NAN;
            if (!(d >= 1 && d <= 65536) || d != floor(d))
                return qd_fail(ctx, QD_ERR_FORMAT, "%s: block_out_channels[%d] must be an integer in [1, 65536]",
                               path, i);
            c->channels[i] = (int)d;
        }
        c->n_blocks = i;
    }
    /* Encoder/Decoder index block_out_channels by block; other lengths would mean
     * a different architecture than the weights diffusers writes. */
    if (n_down != c->n_blocks || n_up != c->n_blocks)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED,
                       "%s: %d down blocks and %d up blocks for %d block_out_channels; they must match",
                       path, n_down, n_up, c->n_blocks);

    QD_TRY(cfg_int(ctx, path, root, "layers_per_block", 1, 1, 64, &c->layers));
    QD_TRY(cfg_int(ctx, path, root, "norm_num_groups", 32, 1, 65536, &c->groups));
    QD_TRY(cfg_int(ctx, path, root, "latent_channels", 4, 1, 65536, &c->latent));
    QD_TRY(cfg_int(ctx, path, root, "in_channels", 3, 1, 65536, &c->in_ch));
    QD_TRY(cfg_int(ctx, path, root, "out_channels", 3, 1, 65536, &c->out_ch));
    for (int i = 0; i < c->n_blocks; i++)
        if (c->channels[i] % c->groups != 0)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: block_out_channels[%d] = %d is not divisible by norm_num_groups %d",
                           path, i, c->channels[i], c->groups);
    c->scaling = (float)qd_json_num(root, "scaling_factor", 0.18215);
    c->shift = (float)qd_json_num(root, "shift_factor", 0.0);
    c->quant = qd_json_bool(root, "use_quant_conv", 1);
    c->post_quant = qd_json_bool(root, "use_post_quant_conv", 1);
    c->mid_attn = qd_json_bool(root, "mid_block_add_attention", 1);
    return QD_OK;
}

/* ---- parameters ------------------------------------------------------------ */

static qd_status load_resnet(qd_params *p, vae_resnet *r, int64_t cin, int64_t cout, const char *pre) {
    r->cin = cin;
    r->cout = cout;
    QD_TRY(qd_p_norm(p, &r->norm1, cin, QD_BIAS, "%s.norm1", pre));
    QD_TRY(qd_p_conv(p, &r->conv1, cout, cin, 3, QD_BIAS, "%s.conv1", pre));
    QD_TRY(qd_p_norm(p, &r->norm2, cout, QD_BIAS, "%s.norm2", pre));
    QD_TRY(qd_p_conv(p, &r->conv2, cout, cout, 3, QD_BIAS, "%s.conv2", pre));
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) QD_TRY(qd_p_conv(p, &r->shortcut, cout, cin, 1, QD_BIAS, "%s.conv_shortcut", pre));
    return QD_OK;
}

static qd_status load_attn(qd_params *p, vae_attn *a, int64_t c, const char *pre) {
    /* Checkpoints saved before diffusers 0.14 name the projections query/key/value/proj_attn
     * (the deprecated AttentionBlock); diffusers renames them on load, so do we. */
    int old = !qd_p_has(p, "%s.to_q.weight", pre) && qd_p_has(p, "%s.query.weight", pre);
    a->c = c;
    a->rescale = 1.0f;
    QD_TRY(qd_p_norm(p, &a->norm, c, QD_BIAS, "%s.group_norm", pre));
    QD_TRY(qd_p_linear(p, &a->q, c, c, QD_BIAS, "%s.%s", pre, old ? "query" : "to_q"));
    QD_TRY(qd_p_linear(p, &a->k, c, c, QD_BIAS, "%s.%s", pre, old ? "key" : "to_k"));
    QD_TRY(qd_p_linear(p, &a->v, c, c, QD_BIAS, "%s.%s", pre, old ? "value" : "to_v"));
    QD_TRY(qd_p_linear(p, &a->out, c, c, QD_BIAS, "%s.%s", pre, old ? "proj_attn" : "to_out.0"));
    return QD_OK;
}

static qd_status load_mid(qd_params *p, vae_mid *m, int64_t c, int attn, const char *pre) {
    char name[128];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", pre);
    QD_TRY(load_resnet(p, &m->res[0], c, c, name));
    m->has_attn = attn;
    if (attn) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", pre);
        QD_TRY(load_attn(p, &m->attn, c, name));
    }
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", pre);
    return load_resnet(p, &m->res[1], c, c, name);
}

static qd_status alloc_resnets(qd_ctx *ctx, vae_block *b, int n) {
    b->res = qd_calloc(ctx, (size_t)n, sizeof *b->res);
    if (!b->res) return QD_ERR_NOMEM;
    b->n_res = n;
    return QD_OK;
}

static qd_status load_encoder(qd_vae *v, const vae_cfg *c) {
    qd_params *p = &v->p;
    vae_coder *e = &v->enc;
    int n = c->n_blocks;
    char name[128];
    QD_TRY(qd_p_conv(p, &e->conv_in, c->channels[0], c->in_ch, 3, QD_BIAS, "encoder.conv_in"));
    for (int i = 0; i < n; i++) {
        vae_block *b = &e->blocks[i];
        e->n_blocks = i + 1;
        int64_t cin = i == 0 ? c->channels[0] : c->channels[i - 1], cout = c->channels[i];
        QD_TRY(alloc_resnets(p->ctx, b, c->layers));
        for (int j = 0; j < c->layers; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            QD_TRY(load_resnet(p, &b->res[j], j == 0 ? cin : cout, cout, name));
        }
        b->has_sample = i < n - 1;
        if (b->has_sample)
            QD_TRY(qd_p_conv(p, &b->sample, cout, cout, 3, QD_BIAS, "encoder.down_blocks.%d.downsamplers.0.conv", i));
    }
    QD_TRY(load_mid(p, &e->mid, c->channels[n - 1], c->mid_attn, "encoder"));
    QD_TRY(qd_p_norm(p, &e->norm_out, c->channels[n - 1], QD_BIAS, "encoder.conv_norm_out"));
    return qd_p_conv(p, &e->conv_out, 2 * (int64_t)c->latent, c->channels[n - 1], 3, QD_BIAS, "encoder.conv_out");
}

static qd_status load_decoder(qd_vae *v, const vae_cfg *c) {
    qd_params *p = &v->p;
    vae_coder *d = &v->dec;
    int n = c->n_blocks;
    char name[128];
    QD_TRY(qd_p_conv(p, &d->conv_in, c->channels[n - 1], c->latent, 3, QD_BIAS, "decoder.conv_in"));
    QD_TRY(load_mid(p, &d->mid, c->channels[n - 1], c->mid_attn, "decoder"));
    for (int i = 0; i < n; i++) {
        vae_block *b = &d->blocks[i];
        d->n_blocks = i + 1;
        /* up blocks walk block_out_channels in reverse; each has layers_per_block + 1 resnets */
        int64_t cin = c->channels[i == 0 ? n - 1 : n - i], cout = c->channels[n - 1 - i];
        QD_TRY(alloc_resnets(p->ctx, b, c->layers + 1));
        for (int j = 0; j <= c->layers; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            QD_TRY(load_resnet(p, &b->res[j], j == 0 ? cin : cout, cout, name));
        }
        b->has_sample = i < n - 1;
        if (b->has_sample)
            QD_TRY(qd_p_conv(p, &b->sample, cout, cout, 3, QD_BIAS, "decoder.up_blocks.%d.upsamplers.0.conv", i));
    }
    QD_TRY(qd_p_norm(p, &d->norm_out, c->channels[0], QD_BIAS, "decoder.conv_norm_out"));
    return qd_p_conv(p, &d->conv_out, c->out_ch, c->channels[0], 3, QD_BIAS, "decoder.conv_out");
}

qd_status qd_vae_load(qd_ctx *ctx, const char *dir, qd_vae **out) {
    *out = NULL;
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    cJSON *root;
    QD_TRY(qd_json_load(ctx, path, &root));
    vae_cfg c;
    memset(&c, 0, sizeof c);
    qd_status st = parse_config(ctx, path, root, &c);
    cJSON_Delete(root);
    if (st != QD_OK) return st;

    qd_vae *v = qd_calloc(ctx, 1, sizeof *v);
    if (!v) return QD_ERR_NOMEM;
    v->groups = c.groups;
    v->info.latent_channels = c.latent;
    v->info.in_channels = c.in_ch;
    v->info.out_channels = c.out_ch;
    v->info.downscale = 1 << (c.n_blocks - 1);
    v->info.scaling_factor = c.scaling;
    v->info.shift_factor = c.shift;
    v->max_channels = c.latent * 2 > c.in_ch ? 2 * (int64_t)c.latent : c.in_ch;
    if (c.out_ch > v->max_channels) v->max_channels = c.out_ch;
    for (int i = 0; i < c.n_blocks; i++)
        if (c.channels[i] > v->max_channels) v->max_channels = c.channels[i];

    st = qd_params_open(ctx, dir, "vae", &v->p);
    if (st != QD_OK) { free(v); return st; }
    st = load_encoder(v, &c);
    if (st == QD_OK) st = load_decoder(v, &c);
    v->has_quant_conv = c.quant;
    v->has_post_quant_conv = c.post_quant;
    if (st == QD_OK && c.quant)
        st = qd_p_conv(&v->p, &v->quant_conv, 2 * (int64_t)c.latent, 2 * (int64_t)c.latent, 1, QD_BIAS, "quant_conv");
    if (st == QD_OK && c.post_quant)
        st = qd_p_conv(&v->p, &v->post_quant_conv, c.latent, c.latent, 1, QD_BIAS, "post_quant_conv");
    if (st != QD_OK) { qd_vae_free(v); return st; }
    *out = v;
    return QD_OK;
}

void qd_vae_free(qd_vae *v) {
    if (!v) return;
    for (int i = 0; i < v->enc.n_blocks; i++) free(v->enc.blocks[i].res);
    for (int i = 0; i < v->dec.n_blocks; i++) free(v->dec.blocks[i].res);
    qd_params_close(&v->p);
    free(v);
}

const qd_vae_info *qd_vae_get_info(const qd_vae *v) { return &v->info; }

/* ---- layers ---------------------------------------------------------------- */

/* Activation buffers. Within one decode/encode, freed ones are kept for reuse: the large
 * ones would otherwise come fresh from mmap every time, and faulting in and zeroing
 * 134 MB costs about what a GroupNorm over it does. The stages take only the context,
 * so the cache of the running decode/encode is reached through a thread-local pointer.
 * Each buffer carries its size in a 64-byte header (keeping the data 64-byte aligned). */
enum { POOL_MAX = 6, HDR = 64 };
typedef struct { char *p[POOL_MAX]; size_t n[POOL_MAX]; int used; } act_pool;
static _Thread_local act_pool *tl_pool;

static void pool_drop(act_pool *pl, int i) {
    free(pl->p[i]);
    pl->used--;
    pl->p[i] = pl->p[pl->used];
    pl->n[i] = pl->n[pl->used];
}

static float *act_alloc(qd_ctx *ctx, int64_t n) {
    size_t bytes = sizeof(float) * (size_t)n;
    act_pool *pl = tl_pool;
    if (pl) {
        int best = -1;
        for (int i = 0; i < pl->used; i++)
            if (pl->n[i] >= bytes && (best < 0 || pl->n[i] < pl->n[best])) best = i;
        if (best >= 0 && pl->n[best] / 2 <= bytes) {   /* at most twice the size asked for */
            char *base = pl->p[best];
            pl->used--;
            pl->p[best] = pl->p[pl->used];
            pl->n[best] = pl->n[pl->used];
            return (float *)(base + HDR);
        }
        /* a miss: smaller cached buffers belong to stages already done */
        for (int i = 0; i < pl->used;)
            if (pl->n[i] < bytes) pool_drop(pl, i);
            else i++;
    }
    char *base = qd_malloc_aligned(ctx, bytes + HDR);
    if (!base) return NULL;
    memcpy(base, &bytes, sizeof bytes);
    return (float *)(base + HDR);
}

static void act_free(float *p) {
    if (!p) return;
    char *base = (char *)p - HDR;
    act_pool *pl = tl_pool;
    if (pl && pl->used < POOL_MAX) {
        memcpy(&pl->n[pl->used], base, sizeof(size_t));
        pl->p[pl->used++] = base;
    } else {
        free(base);
    }
}

static void pool_drain(act_pool *pl) {
    while (pl->used) pool_drop(pl, 0);
}

static int cancelled(qd_ctx *ctx) { return __atomic_load_n(&ctx->cancel, __ATOMIC_RELAXED); }

static void conv(qd_ctx *ctx, const qd_conv_p *c, const float *x, int64_t B, int64_t H, int64_t W, float *y) {
    qd_conv2d(ctx, x, B, c->cin, H, W, &c->w, c->b, c->k, c->k, 1, c->k / 2, y);
}

static void norm(qd_ctx *ctx, const qd_norm_p *n, int groups, const float *x, int64_t B, int64_t S, int silu, float *y) {
    qd_group_norm(ctx, x, B, n->n, S, groups, VAE_EPS, n->w, n->b, silu, y);
}

/* y = conv(x) + y: the residual add done by the GEMM as it stores. */
static void conv_add(qd_ctx *ctx, const qd_conv_p *c, const float *x, int64_t B, int64_t H, int64_t W, float *y) {
    qd_conv2d_acc(ctx, x, B, c->cin, H, W, &c->w, c->b, c->k, c->k, 1, c->k / 2, c->k / 2, c->k / 2, c->k / 2, 1.0f, y);
}

/* ResnetBlock2D without time embedding:
 *   out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), output_scale_factor 1.
 * Consumes *x ([B, cin, H, W]) and leaves [B, cout, H, W] there; on failure *x is NULL.
 * conv2 accumulates onto the shortcut (or onto x itself), so at most three buffers live. */
static qd_status resnet_fwd(qd_ctx *ctx, const vae_resnet *r, int groups, float **x,
                            int64_t B, int64_t H, int64_t W) {
    int64_t S = H * W, nout = B * r->cout * S;
    float *in = *x, *sc = NULL, *a = NULL, *h = NULL;
    *x = NULL;
    if (cancelled(ctx)) { act_free(in); return qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); }
    if (r->has_shortcut) {
        /* The shortcut is taken first so the input can be normalised in place:
         * x, shortcut and conv1's output are then the only live buffers. */
        if (!(sc = act_alloc(ctx, nout))) goto nomem;
        conv(ctx, &r->shortcut, in, B, H, W, sc);
        norm(ctx, &r->norm1, groups, in, B, S, 1, in);
        a = in;
        in = NULL;
    } else {
        if (!(a = act_alloc(ctx, B * r->cin * S))) goto nomem;
        norm(ctx, &r->norm1, groups, in, B, S, 1, a);
        sc = in;   /* cin == cout: the input is the residual */
        in = NULL;
    }
    if (!(h = act_alloc(ctx, nout))) goto nomem;
    conv(ctx, &r->conv1, a, B, H, W, h);
    act_free(a);
    a = NULL;
    norm(ctx, &r->norm2, groups, h, B, S, 1, h);
    conv_add(ctx, &r->conv2, h, B, H, W, sc);
    act_free(h);
    *x = sc;
    return QD_OK;
nomem:
    act_free(in); act_free(sc); act_free(a); act_free(h);
    return QD_ERR_NOMEM;
}

/* The projections below call qd_gemm directly (to skip transposes), so report
 * them to the benchmark trace as qd_linear would: tokens, in, out, bias. */
static void trace_linear(qd_ctx *ctx, int64_t tokens, int64_t in, int64_t out, double t0) {
    if (!ctx->trace) return;
    int64_t d[4] = {tokens, in, out, 1};
    ctx->trace(ctx->trace_user, "linear", d, 4, qd_now() - t0);
}

/* Attention with one head over all channels (heads = C / attention_head_dim = 1):
 * GroupNorm, q/k/v linear on the [S, C] token view, softmax(q k^T / sqrt(C)) v,
 * to_out, + residual, / rescale_output_factor. Updates x [B, C, S] in place. */
static qd_status attn_fwd(qd_ctx *ctx, const vae_attn *at, int groups, float *x, int64_t B, int64_t S) {
    int64_t C = at->c, n = B * C * S;
    double t0 = ctx->trace ? qd_now() : 0;
    float *xn = act_alloc(ctx, n), *q = act_alloc(ctx, n), *k = act_alloc(ctx, n), *v = act_alloc(ctx, n);
    if (!xn || !q || !k || !v) { act_free(xn); act_free(q); act_free(k); act_free(v); return QD_ERR_NOMEM; }
    norm(ctx, &at->norm, groups, x, B, S, 0, xn);
    for (int64_t b = 0; b < B; b++) {
        /* the normalised [C, S] image read as [S, C] tokens: no transpose needed */
        qd_mat xt = qd_cols(xn + b * C * S, S);
        qd_gemm(ctx, S, C, C, xt, qd_wmat(&at->q.w), q + b * S * C, C, 1.0f, 0.0f, NULL, at->q.b);
        qd_gemm(ctx, S, C, C, xt, qd_wmat(&at->k.w), k + b * S * C, C, 1.0f, 0.0f, NULL, at->k.b);
        qd_gemm(ctx, S, C, C, xt, qd_wmat(&at->v.w), v + b * S * C, C, 1.0f, 0.0f, NULL, at->v.b);
    }
    trace_linear(ctx, 3 * B * S, C, C, t0);
    float *o = xn;   /* xn is dead: reuse it for the attention output [B, S, C] */
    qd_attention(ctx, q, C, k, C, v, C, B, S, S, 1, C, 0, o);
    t0 = ctx->trace ? qd_now() : 0;
    act_free(q); act_free(k); act_free(v);
    /* to_out straight back into the [C, S] layout, adding onto the residual (beta = 1) */
    for (int64_t b = 0; b < B; b++)
        qd_gemm(ctx, C, S, C, qd_wmat(&at->out.w), qd_rows(o + b * S * C, C), x + b * C * S, S,
                1.0f, 1.0f, at->out.b, NULL);
    trace_linear(ctx, B * S, C, C, t0);
    act_free(o);
    if (at->rescale != 1.0f) qd_scale(x, n, 1.0f / at->rescale);
    return QD_OK;
}

static qd_status mid_fwd(qd_ctx *ctx, const vae_mid *m, int groups, float **x, int64_t B, int64_t H, int64_t W) {
    QD_TRY(resnet_fwd(ctx, &m->res[0], groups, x, B, H, W));
    if (m->has_attn) {
        qd_status st = attn_fwd(ctx, &m->attn, groups, *x, B, H * W);
        if (st != QD_OK) { act_free(*x); *x = NULL; return st; }
    }
    return resnet_fwd(ctx, &m->res[1], groups, x, B, H, W);
}

/* Downsample2D with padding=0: zero-pad right and bottom by one, 3x3 conv stride 2.
 * [B, C, H, W] -> [B, C, H/2, W/2] (floor). */
static qd_status downsample_fwd(qd_ctx *ctx, const qd_conv_p *c, float **x, int64_t B, int64_t H, int64_t W) {
    float *in = *x, *y = act_alloc(ctx, B * c->cout * (H / 2) * (W / 2));
    *x = NULL;
    if (!y) { act_free(in); return QD_ERR_NOMEM; }
    qd_conv2d_pad(ctx, in, B, c->cin, H, W, &c->w, c->b, 3, 3, 2, 0, 1, 0, 1, y);
    act_free(in);
    *x = y;
    return QD_OK;
}

/* Upsample2D: nearest 2x, then 3x3 conv (pad 1), as four 2x2 phase convs
 * (tensor/conv_up2x.h), the weights folded per call. */
static qd_status upsample_fwd(qd_ctx *ctx, const qd_conv_p *c, float **x, int64_t B, int64_t H, int64_t W) {
    int64_t C = c->cout, Ci = c->cin;
    float *in = *x, *w9 = NULL, *w4 = NULL, *ph = NULL, *y = NULL;
    *x = NULL;
    if (!(w9 = act_alloc(ctx, C * Ci * 9)) || !(w4 = act_alloc(ctx, 4 * C * Ci * 4))) goto nomem;
    qd_up2x_conv u;
    qd_up2x_fold(&c->w, C, Ci, w9, w4, c->w.t ? c->w.t->file : "", &u);
    act_free(w9);
    w9 = NULL;
    if (!(ph = act_alloc(ctx, B * C * H * W)) || !(y = act_alloc(ctx, B * C * 4 * H * W))) goto nomem;
    qd_up2x_conv_run(ctx, &u, in, B, H, W, c->b, ph, y);
    act_free(ph); act_free(w4); act_free(in);
    *x = y;
    return QD_OK;
nomem:
    act_free(in); act_free(w9); act_free(w4); act_free(ph); act_free(y);
    return QD_ERR_NOMEM;
}

/* ---- encode / decode ------------------------------------------------------- */

/* Reject sizes whose largest activation would not fit in memory or in int64 math. */
static qd_status check_size(qd_ctx *ctx, const qd_vae *v, const char *what, int64_t B, int64_t H, int64_t W,
                            int scale) {
    double elems = (double)B * (double)H * (double)W * scale * scale * (double)v->max_channels;
    if (!(elems < 1e14))
        return qd_fail(ctx, QD_ERR_ARG, "vae %s: size %lld x %lld x %lld is too large",
                       what, (long long)B, (long long)H, (long long)W);
    return QD_OK;
}

/* The whole decode in one pass (arguments checked by the caller). */
static qd_status decode_pass(qd_ctx *ctx, qd_vae *v, const float *z, int64_t B, int64_t h, int64_t w, float *img) {
    const vae_coder *d = &v->dec;
    int64_t L = v->info.latent_channels, H = h, W = w;
    float *zq = NULL, *x;
    if (v->has_post_quant_conv) {
        if (!(zq = act_alloc(ctx, B * L * H * W))) return QD_ERR_NOMEM;
        conv(ctx, &v->post_quant_conv, z, B, H, W, zq);
    }
    if (!(x = act_alloc(ctx, B * d->conv_in.cout * H * W))) { act_free(zq); return QD_ERR_NOMEM; }
    conv(ctx, &d->conv_in, zq ? zq : z, B, H, W, x);
    act_free(zq);
    QD_TRY(mid_fwd(ctx, &d->mid, v->groups, &x, B, H, W));
    for (int i = 0; i < d->n_blocks; i++) {
        const vae_block *b = &d->blocks[i];
        for (int j = 0; j < b->n_res; j++) QD_TRY(resnet_fwd(ctx, &b->res[j], v->groups, &x, B, H, W));
        if (b->has_sample) {
            QD_TRY(upsample_fwd(ctx, &b->sample, &x, B, H, W));
            H *= 2;
            W *= 2;
        }
    }
    norm(ctx, &d->norm_out, v->groups, x, B, H * W, 1, x);
    conv(ctx, &d->conv_out, x, B, H, W, img);
    act_free(x);
    return QD_OK;
}

/* The whole encode in one pass (arguments checked by the caller). */
static qd_status encode_pass(qd_ctx *ctx, qd_vae *v, const float *img, int64_t B, int64_t H, int64_t W,
                              float *mean, float *logvar) {
    const vae_coder *e = &v->enc;
    int64_t L = v->info.latent_channels;
    float *x = act_alloc(ctx, B * e->conv_in.cout * H * W), *m;
    if (!x) return QD_ERR_NOMEM;
    conv(ctx, &e->conv_in, img, B, H, W, x);
    for (int i = 0; i < e->n_blocks; i++) {
        const vae_block *b = &e->blocks[i];
        for (int j = 0; j < b->n_res; j++) QD_TRY(resnet_fwd(ctx, &b->res[j], v->groups, &x, B, H, W));
        if (b->has_sample) {
            QD_TRY(downsample_fwd(ctx, &b->sample, &x, B, H, W));
            H /= 2;
            W /= 2;
        }
    }
    QD_TRY(mid_fwd(ctx, &e->mid, v->groups, &x, B, H, W));
    int64_t S = H * W;
    norm(ctx, &e->norm_out, v->groups, x, B, S, 1, x);
    if (!(m = act_alloc(ctx, B * 2 * L * S))) { act_free(x); return QD_ERR_NOMEM; }
    conv(ctx, &e->conv_out, x, B, H, W, m);
    act_free(x);
    if (v->has_quant_conv) {
        float *mq = act_alloc(ctx, B * 2 * L * S);
        if (!mq) { act_free(m); return QD_ERR_NOMEM; }
        conv(ctx, &v->quant_conv, m, B, H, W, mq);
        act_free(m);
        m = mq;
    }
    /* DiagonalGaussianDistribution: moments.chunk(2, dim=1), logvar clamped to [-30, 20] */
    for (int64_t b = 0; b < B; b++) {
        const float *mb = m + b * 2 * L * S, *lb = mb + L * S;
        memcpy(mean + b * L * S, mb, sizeof(float) * (size_t)(L * S));
        float *lo = logvar + b * L * S;
        for (int64_t i = 0; i < L * S; i++) lo[i] = lb[i] < -30.0f ? -30.0f : lb[i] > 20.0f ? 20.0f : lb[i];
    }
    act_free(m);
    return QD_OK;
}

/* decode_pass / encode_pass with a buffer cache for their duration. */
static qd_status decode_whole(qd_ctx *ctx, qd_vae *v, const float *z, int64_t B, int64_t h, int64_t w, float *img) {
    act_pool pl = {0}, *outer = tl_pool;
    tl_pool = &pl;
    qd_status st = decode_pass(ctx, v, z, B, h, w, img);
    tl_pool = outer;
    pool_drain(&pl);
    return st;
}

static qd_status encode_whole(qd_ctx *ctx, qd_vae *v, const float *img, int64_t B, int64_t H, int64_t W,
                              float *mean, float *logvar) {
    act_pool pl = {0}, *outer = tl_pool;
    tl_pool = &pl;
    qd_status st = encode_pass(ctx, v, img, B, H, W, mean, logvar);
    tl_pool = outer;
    pool_drain(&pl);
    return st;
}

/* ---- tiling (qd_set_vae_tiling) -------------------------------------------- */

enum { AUTO_TILE_ABOVE = 1024 * 1024, AUTO_TILE_PX = 512, DEFAULT_OVERLAP_PX = 64 };

/* Whether an image of H x W pixels is processed in tiles, and their size and overlap in
 * image pixels (multiples of f). */
static int tile_plan(const qd_ctx *ctx, int64_t H, int64_t W, int f, int64_t *tile, int64_t *overlap) {
    int mode = ctx->vae_tile_px;
    if (mode < 0) return 0;
    int64_t t = mode == 0 ? AUTO_TILE_PX : mode;
    if (mode == 0 && H * W <= AUTO_TILE_ABOVE) return 0;
    t = t / f * f;
    if (t < 4 * f) t = 4 * f;
    if (H <= t && W <= t) return 0;
    int64_t o = ctx->vae_tile_overlap > 0 ? ctx->vae_tile_overlap : DEFAULT_OVERLAP_PX < t / 4 ? DEFAULT_OVERLAP_PX : t / 4;
    if (o > t / 2) o = t / 2;
    *tile = t;
    *overlap = o / f * f;
    return 1;
}

typedef struct { qd_vae *v; int64_t B; } tile_job;

static qd_status decode_tile(qd_ctx *ctx, void *user, const float *in, int64_t h, int64_t w, float *out0, float *out1) {
    const tile_job *j = user;
    (void)out1;
    return decode_whole(ctx, j->v, in, j->B, h, w, out0);
}

static qd_status encode_tile(qd_ctx *ctx, void *user, const float *in, int64_t h, int64_t w, float *out0, float *out1) {
    const tile_job *j = user;
    return encode_whole(ctx, j->v, in, j->B, h, w, out0, out1);
}

qd_status qd_vae_decode(qd_ctx *ctx, qd_vae *v, const float *z, int64_t B, int64_t h, int64_t w, float *img) {
    if (!v || !z || !img || B < 1 || h < 1 || w < 1)
        return qd_fail(ctx, QD_ERR_ARG, "vae decode: bad arguments (batch %lld, latent %lld x %lld)",
                       (long long)B, (long long)h, (long long)w);
    int f = v->info.downscale;
    QD_TRY(check_size(ctx, v, "decode", B, h, w, f));
    int64_t tile, overlap;
    if (!tile_plan(ctx, h * f, w * f, f, &tile, &overlap)) return decode_whole(ctx, v, z, B, h, w, img);
    /* in latent pixels: output = input * f */
    qd_tile_plan p = {B, v->info.latent_channels, h, w, v->info.out_channels, 1, f, 1, tile / f, overlap / f};
    tile_job u = {v, B};
    return qd_tiles_run(ctx, &p, z, decode_tile, &u, img, NULL);
}

qd_status qd_vae_encode(qd_ctx *ctx, qd_vae *v, const float *img, int64_t B, int64_t H, int64_t W,
                        float *mean, float *logvar) {
    int f = v ? v->info.downscale : 1;
    if (!v || !img || !mean || !logvar || B < 1 || H < f || W < f)
        return qd_fail(ctx, QD_ERR_ARG, "vae encode: bad arguments (batch %lld, image %lld x %lld, need at least %d x %d)",
                       (long long)B, (long long)H, (long long)W, f, f);
    QD_TRY(check_size(ctx, v, "encode", B, H, W, 1));
    int64_t tile, overlap;
    if (!tile_plan(ctx, H, W, f, &tile, &overlap)) return encode_whole(ctx, v, img, B, H, W, mean, logvar);
    /* in image pixels: output = input / f */
    qd_tile_plan p = {B, v->info.in_channels, H, W, v->info.latent_channels, 2, 1, f, tile, overlap};
    tile_job u = {v, B};
    return qd_tiles_run(ctx, &p, img, encode_tile, &u, mean, logvar);
}
