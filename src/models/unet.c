/* UNet2DConditionModel: config parsing, weight loading and the forward pass.
 * The layers themselves live in unet_blocks.c. Translated from diffusers 0.32.2
 * (unet_2d_condition.py, unet_2d_blocks.py; Apache-2.0). */
#include "models/unet.h"
#include "models/unet_blocks.h"
#include "models/params.h"
#include "base/act_pool.h"
#include "base/threads.h"
#include "io/file.h"
#include "io/json.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BLOCKS 8
#define MAX_LAYERS 16     /* resnets per block */
#define MAX_DEPTH 64      /* transformer blocks per Transformer2DModel */

typedef struct {
    int cross;                  /* CrossAttn{Down,Up}Block2D / the mid block */
    int n, n_attn;              /* resnets; transformers (n when cross, 1 in the mid block) */
    qd_unet_resnet *res;
    qd_unet_xformer *attn;
    int sample;                 /* ends with Downsample2D / Upsample2D */
    qd_conv_p sconv;
} ublock;

struct qd_unet {
    qd_params p;
    qd_unet_info info;
    int nb;                     /* down blocks = up blocks */
    int64_t ch0, temb_dim;
    int groups;
    float eps;
    int flip_sin_to_cos;
    float freq_shift;
    int center_input, skip_time_act, down_pad, kin, kout;
    qd_conv_p conv_in, conv_out;
    qd_linear_p t1, t2;         /* time_embedding.linear_1/2 */
    int text_time;
    qd_linear_p a1, a2;         /* add_embedding.linear_1/2 */
    qd_norm_p norm_out;
    ublock down[MAX_BLOCKS], up[MAX_BLOCKS], mid;
    int has_mid;
    int max_skips;
};

/* ---- config ---- */

/* Everything the build needs, per block, after diffusers' defaults and reversals. */
typedef struct {
    int nb;
    const char *down_types[MAX_BLOCKS], *up_types[MAX_BLOCKS];
    int boc[MAX_BLOCKS], layers[MAX_BLOCKS], heads[MAX_BLOCKS];
    int depth_down[MAX_BLOCKS][MAX_LAYERS], depth_up[MAX_BLOCKS][MAX_LAYERS + 1];
    int cross_dim, in_ch, out_ch, groups, down_pad, kin, kout, linear_proj, has_mid;
    int temb_dim, text_time, add_dim, proj_dim;
    float eps, res_scale, mid_scale;
} ucfg;

/* An int or list of ints with one entry per block (diffusers repeats a scalar). */
static qd_status per_block(qd_ctx *ctx, const char *path, const cJSON *cfg, const char *key, int nb, int def,
                           int *out) {
    int n = qd_json_ints(cfg, key, out, nb);
    if (n == 0) {
        for (int i = 0; i < nb; i++) out[i] = def;
        return QD_OK;
    }
    if (n != nb) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "%s must be an int or a list of %d ints", key, nb);
    return QD_OK;
}

/* One block's transformer depths: an int (every layer) or a list of at least `n` ints. */
static int depths_of(const cJSON *it, int n, int *out) {
    if (cJSON_IsNumber(it)) {
        for (int i = 0; i < n; i++) out[i] = (int)it->valuedouble;
        return 0;
    }
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) < n) return -1;
    int k = 0;
    for (const cJSON *e = it->child; e && k < n; e = e->next) {
        if (!cJSON_IsNumber(e)) return -1;
        out[k++] = (int)e->valuedouble;
    }
    return 0;
}

static qd_status parse_config(qd_ctx *ctx, const char *path, const cJSON *cfg, ucfg *c) {
    memset(c, 0, sizeof *c);
    const char *cls = qd_json_str(cfg, "_class_name", "UNet2DConditionModel");
    if (strcmp(cls, "UNet2DConditionModel"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "_class_name '%s' not supported", cls);

    /* options whose non-default values change the graph: refuse rather than guess */
    static const char *must_be_null[] = {
        "class_embed_type", "num_class_embeds", "encoder_hid_dim", "encoder_hid_dim_type",
        "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
    };
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++)
        if (qd_json_item(cfg, must_be_null[i]))
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "%s not supported (only null)", must_be_null[i]);
    static const char *must_be[][2] = {
        {"time_embedding_type", "positional"}, {"resnet_time_scale_shift", "default"}, {"attention_type", "default"},
    };
    for (size_t i = 0; i < sizeof must_be / sizeof *must_be; i++) {
        const char *v = qd_json_str(cfg, must_be[i][0], must_be[i][1]);
        if (strcmp(v, must_be[i][1]))
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "%s '%s' not supported (only '%s')", must_be[i][0], v,
                                must_be[i][1]);
    }
    const char *act = qd_json_str(cfg, "act_fn", "silu");
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "act_fn '%s' not supported (only silu)", act);
    if (qd_json_bool(cfg, "dual_cross_attention", 0))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "dual_cross_attention not supported");
    const cJSON *oca = cJSON_GetObjectItemCaseSensitive(cfg, "only_cross_attention");
    if (cJSON_IsTrue(oca)) return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "only_cross_attention not supported");
    if (cJSON_IsArray(oca))
        for (const cJSON *e = oca->child; e; e = e->next)
            if (cJSON_IsTrue(e)) return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                                                     "only_cross_attention not supported");

    /* blocks (defaults: diffusers' SD1.x layout) */
    static const char *def_down[] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
    static const char *def_up[] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    static const int def_boc[] = {320, 640, 1280, 1280};
    int nd = qd_json_strs(cfg, "down_block_types", c->down_types, MAX_BLOCKS);
    int nu = qd_json_strs(cfg, "up_block_types", c->up_types, MAX_BLOCKS);
    int nc = qd_json_ints(cfg, "block_out_channels", c->boc, MAX_BLOCKS);
    if (nd < 0 || nu < 0 || nc < 0)
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                            "down_block_types, up_block_types and block_out_channels must be lists of at most %d",
                            MAX_BLOCKS);
    if (nd == 0) { nd = 4; memcpy(c->down_types, def_down, sizeof def_down); }
    if (nu == 0) { nu = 4; memcpy(c->up_types, def_up, sizeof def_up); }
    if (nc == 0) { nc = 4; memcpy(c->boc, def_boc, sizeof def_boc); }
    if (nd != nu || nd != nc)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "%d down_block_types, %d up_block_types, %d block_out_channels",
                            nd, nu, nc);
    int nb = c->nb = nd;
    for (int i = 0; i < nb; i++) {
        if (strcmp(c->down_types[i], "CrossAttnDownBlock2D") && strcmp(c->down_types[i], "DownBlock2D"))
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "down_block_types[%d] '%s' not supported", i,
                                c->down_types[i]);
        if (strcmp(c->up_types[i], "CrossAttnUpBlock2D") && strcmp(c->up_types[i], "UpBlock2D"))
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "up_block_types[%d] '%s' not supported", i,
                                c->up_types[i]);
        if (c->boc[i] <= 0) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "block_out_channels[%d] = %d", i, c->boc[i]);
    }
    const cJSON *mbt = cJSON_GetObjectItemCaseSensitive(cfg, "mid_block_type");
    const char *mid = !mbt ? "UNetMidBlock2DCrossAttn" : cJSON_IsNull(mbt) ? NULL
                    : cJSON_IsString(mbt) ? mbt->valuestring : "(not a string)";
    if (mid && strcmp(mid, "UNetMidBlock2DCrossAttn"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "mid_block_type '%s' not supported", mid);
    c->has_mid = mid != NULL;

    QD_TRY(per_block(ctx, path, cfg, "layers_per_block", nb, 2, c->layers));
    for (int i = 0; i < nb; i++)
        if (c->layers[i] < 1 || c->layers[i] >= MAX_LAYERS)
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "layers_per_block %d not supported (1..%d)",
                                c->layers[i],
                                MAX_LAYERS - 1);

    /* diffusers' naming quirk: attention_head_dim is the head COUNT unless num_attention_heads is given */
    QD_TRY(per_block(ctx, path, cfg,
                     qd_json_item(cfg, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim", nb, 8,
                     c->heads));
    int cd[MAX_BLOCKS];
    QD_TRY(per_block(ctx, path, cfg, "cross_attention_dim", nb, 1280, cd));
    for (int i = 1; i < nb; i++)    /* one context feeds every block */
        if (cd[i] != cd[0])
            return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "cross_attention_dim differing per block not supported");
    c->cross_dim = cd[0];

    /* transformer_layers_per_block: int, a list per block, or a list of per-layer lists */
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(cfg, "transformer_layers_per_block");
    const cJSON *rtl = cJSON_GetObjectItemCaseSensitive(cfg, "reverse_transformer_layers_per_block");
    if (cJSON_IsNull(rtl)) rtl = NULL;
    for (int i = 0; i < nb; i++) {
        const cJSON *e = NULL;
        if (!tl || cJSON_IsNull(tl)) {
            for (int j = 0; j < c->layers[i]; j++) c->depth_down[i][j] = 1;
            continue;
        }
        if (cJSON_IsNumber(tl)) e = tl;
        else if (cJSON_IsArray(tl) && cJSON_GetArraySize(tl) == nb) e = cJSON_GetArrayItem(tl, i);
        if (!e || depths_of(e, c->layers[i], c->depth_down[i]))
            return qd_json_fail(ctx, QD_ERR_FORMAT, path, "transformer_layers_per_block malformed");
        if (cJSON_IsArray(e) && !rtl)   /* diffusers refuses this too */
            return qd_json_fail(ctx, QD_ERR_FORMAT, path,
                                "per-layer transformer_layers_per_block needs reverse_transformer_layers_per_block");
    }
    for (int i = 0; i < nb; i++) {
        int n = c->layers[nb - 1 - i] + 1;
        if (rtl) {
            const cJSON *e = cJSON_IsArray(rtl) && cJSON_GetArraySize(rtl) == nb ? cJSON_GetArrayItem(rtl, i) : NULL;
            if (!e || depths_of(e, n, c->depth_up[i]))
                return qd_json_fail(ctx, QD_ERR_FORMAT, path, "reverse_transformer_layers_per_block malformed");
        } else {
            for (int j = 0; j < n; j++) c->depth_up[i][j] = c->depth_down[nb - 1 - i][0];
        }
    }

    c->in_ch = qd_json_int(cfg, "in_channels", 4);
    c->out_ch = qd_json_int(cfg, "out_channels", 4);
    if (!qd_json_item(cfg, "norm_num_groups") && cJSON_GetObjectItemCaseSensitive(cfg, "norm_num_groups"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "norm_num_groups null not supported");
    c->groups = qd_json_int(cfg, "norm_num_groups", 32);
    c->eps = (float)qd_json_num(cfg, "norm_eps", 1e-5);
    c->down_pad = qd_json_int(cfg, "downsample_padding", 1);
    c->kin = qd_json_int(cfg, "conv_in_kernel", 3);
    c->kout = qd_json_int(cfg, "conv_out_kernel", 3);
    c->linear_proj = qd_json_bool(cfg, "use_linear_projection", 0);
    c->res_scale = (float)qd_json_num(cfg, "resnet_out_scale_factor", 1.0);
    c->mid_scale = (float)qd_json_num(cfg, "mid_block_scale_factor", 1.0);
    c->temb_dim = qd_json_int(cfg, "time_embedding_dim", 4 * c->boc[0]);
    if (c->in_ch <= 0 || c->out_ch <= 0 || c->groups <= 0 || c->cross_dim <= 0 || c->temb_dim <= 0 ||
        c->down_pad < 0 || c->down_pad > 1 || c->kin <= 0 || c->kin % 2 == 0 || c->kout <= 0 || c->kout % 2 == 0 ||
        !(c->res_scale != 0) || !(c->mid_scale != 0))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                            "in/out_channels, norm_num_groups, cross_attention_dim, time_embedding_dim, "
                            "downsample_padding (0 or 1), conv kernels (odd) or scale factors out of range");
    for (int i = 0; i < nb; i++) {
        /* heads[i] serves down block i, up block nb-1-i and (last) the mid block */
        int cross = !strcmp(c->down_types[i], "CrossAttnDownBlock2D") ||
                    !strcmp(c->up_types[nb - 1 - i], "CrossAttnUpBlock2D") || (c->has_mid && i == nb - 1);
        if (cross && (c->heads[i] < 1 || c->heads[i] > c->boc[i]))
            return qd_json_fail(ctx, QD_ERR_FORMAT, path, "%d attention heads for %d channels in block %d", c->heads[i],
                                c->boc[i], i);
        for (int j = 0; j < c->layers[i]; j++)
            if (c->depth_down[i][j] < 1 || c->depth_down[i][j] > MAX_DEPTH)
                return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "transformer depth %d not supported",
                                    c->depth_down[i][j]);
        for (int j = 0; j <= c->layers[nb - 1 - i]; j++)
            if (c->depth_up[i][j] < 1 || c->depth_up[i][j] > MAX_DEPTH)
                return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "transformer depth %d not supported",
                                    c->depth_up[i][j]);
    }

    const char *add = qd_json_str(cfg, "addition_embed_type", NULL);
    if (add && strcmp(add, "text_time"))
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "addition_embed_type '%s' not supported (only text_time)",
                            add);
    c->text_time = add != NULL;
    if (c->text_time) {
        c->add_dim = qd_json_int(cfg, "addition_time_embed_dim", 0);
        c->proj_dim = qd_json_int(cfg, "projection_class_embeddings_input_dim", 0);
        if (c->add_dim <= 0 || c->proj_dim <= 6 * c->add_dim)
            return qd_json_fail(ctx, QD_ERR_FORMAT, path,
                                "text_time needs addition_time_embed_dim > 0 and projection_class_embeddings_input_dim "
                                "> 6 * addition_time_embed_dim (got %d, %d)", c->add_dim, c->proj_dim);
    }
    return QD_OK;
}

/* ---- load ---- */

static void ublock_free(ublock *b) {
    if (b->attn)
        for (int i = 0; i < b->n_attn; i++) qd_unet_xformer_free(&b->attn[i]);
    free(b->res);
    free(b->attn);
    memset(b, 0, sizeof *b);
}

void qd_unet_free(qd_unet *u) {
    if (!u) return;
    for (int i = 0; i < MAX_BLOCKS; i++) { ublock_free(&u->down[i]); ublock_free(&u->up[i]); }
    ublock_free(&u->mid);
    qd_params_close(&u->p);
    free(u);
}

const qd_unet_info *qd_unet_get_info(const qd_unet *u) { return &u->info; }

static qd_status ublock_alloc(qd_ctx *ctx, ublock *b, int n, int n_attn) {
    b->n = n;
    b->n_attn = n_attn;
    b->res = calloc((size_t)n, sizeof *b->res);
    b->attn = n_attn ? calloc((size_t)n_attn, sizeof *b->attn) : NULL;
    if (!b->res || (n_attn && !b->attn)) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    b->cross = n_attn > 0;
    return QD_OK;
}

/* GroupNorm needs channels divisible by the group count (torch refuses otherwise). */
static qd_status check_groups(qd_ctx *ctx, const char *path, int groups, int64_t C) {
    if (C % groups)
        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "norm_num_groups %d does not divide %lld channels", groups,
                            (long long)C);
    return QD_OK;
}

static qd_status build(qd_ctx *ctx, qd_unet *u, const ucfg *c, const char *path) {
    qd_params *p = &u->p;
    int nb = c->nb, g = c->groups;
    int64_t ch0 = c->boc[0], T = c->temb_dim;
    char pre[256];
    QD_TRY(check_groups(ctx, path, g, ch0));
    QD_TRY(qd_p_conv(p, &u->conv_in, ch0, c->in_ch, c->kin, QD_BIAS, "conv_in"));
    QD_TRY(qd_p_linear(p, &u->t1, T, ch0, QD_BIAS, "time_embedding.linear_1"));
    QD_TRY(qd_p_linear(p, &u->t2, T, T, QD_BIAS, "time_embedding.linear_2"));
    if (c->text_time) {
        QD_TRY(qd_p_linear(p, &u->a1, T, c->proj_dim, QD_BIAS, "add_embedding.linear_1"));
        QD_TRY(qd_p_linear(p, &u->a2, T, T, QD_BIAS, "add_embedding.linear_2"));
    }

    /* Simulate the skip stack (channels, resolution level) so a config whose up blocks
     * would not line up with the down blocks fails here, not mid-forward. */
    int sk_c[1 + MAX_BLOCKS * (MAX_LAYERS + 1)], sk_l[1 + MAX_BLOCKS * (MAX_LAYERS + 1)], ns = 0;
    sk_c[ns] = (int)ch0; sk_l[ns++] = 0;
    int out = c->boc[0];
    for (int i = 0; i < nb; i++) {
        ublock *b = &u->down[i];
        int in = out, cross = !strcmp(c->down_types[i], "CrossAttnDownBlock2D");
        out = c->boc[i];
        QD_TRY(ublock_alloc(ctx, b, c->layers[i], cross ? c->layers[i] : 0));
        for (int j = 0; j < b->n; j++) {
            int cin = j ? out : in;
            QD_TRY(check_groups(ctx, path, g, cin));
            QD_TRY(check_groups(ctx, path, g, out));
            snprintf(pre, sizeof pre, "down_blocks.%d.resnets.%d", i, j);
            QD_TRY(qd_unet_resnet_load(p, &b->res[j], cin, out, T, g, c->eps, c->res_scale, pre));
            if (cross) {
                snprintf(pre, sizeof pre, "down_blocks.%d.attentions.%d", i, j);
                QD_TRY(qd_unet_xformer_load(p, &b->attn[j], out, c->heads[i], c->depth_down[i][j], c->cross_dim, g,
                                            c->linear_proj, pre));
            }
            sk_c[ns] = out; sk_l[ns++] = i;
        }
        if (i < nb - 1) {
            b->sample = 1;
            QD_TRY(qd_p_conv(p, &b->sconv, out, out, 3, QD_BIAS, "down_blocks.%d.downsamplers.0.conv", i));
            sk_c[ns] = out; sk_l[ns++] = i + 1;
        }
    }
    u->max_skips = ns;

    int hc = c->boc[nb - 1];
    if (c->has_mid) {
        u->has_mid = 1;
        QD_TRY(ublock_alloc(ctx, &u->mid, 2, 1));
        for (int j = 0; j < 2; j++) {
            snprintf(pre, sizeof pre, "mid_block.resnets.%d", j);
            QD_TRY(qd_unet_resnet_load(p, &u->mid.res[j], hc, hc, T, g, c->eps, c->mid_scale, pre));
        }
        QD_TRY(qd_unet_xformer_load(p, &u->mid.attn[0], hc, c->heads[nb - 1], c->depth_down[nb - 1][0],
                                    c->cross_dim, g, c->linear_proj, "mid_block.attentions.0"));
    }

    out = c->boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        ublock *b = &u->up[i];
        int prev = out, cross = !strcmp(c->up_types[i], "CrossAttnUpBlock2D"), level = nb - 1 - i;
        out = c->boc[nb - 1 - i];
        int in = c->boc[nb - 1 - (i + 1 < nb ? i + 1 : nb - 1)];
        int n = c->layers[nb - 1 - i] + 1;
        QD_TRY(ublock_alloc(ctx, b, n, cross ? n : 0));
        for (int j = 0; j < n; j++) {
            int skip = j == n - 1 ? in : out, rin = j ? out : prev;
            if (ns == 0 || sk_c[ns - 1] != skip || sk_l[ns - 1] != level || hc != rin)
                return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path,
                                    "up_blocks.%d.resnets.%d does not line up with the down blocks' skip connections "
                                    "(asymmetric layers_per_block not supported)", i, j);
            ns--;
            QD_TRY(check_groups(ctx, path, g, rin + skip));
            snprintf(pre, sizeof pre, "up_blocks.%d.resnets.%d", i, j);
            QD_TRY(qd_unet_resnet_load(p, &b->res[j], rin + skip, out, T, g, c->eps, c->res_scale, pre));
            hc = out;
            if (cross) {
                snprintf(pre, sizeof pre, "up_blocks.%d.attentions.%d", i, j);
                QD_TRY(qd_unet_xformer_load(p, &b->attn[j], out, c->heads[nb - 1 - i], c->depth_up[i][j],
                                            c->cross_dim, g, c->linear_proj, pre));
            }
        }
        if (i < nb - 1) {
            b->sample = 1;
            QD_TRY(qd_p_conv(p, &b->sconv, out, out, 3, QD_BIAS, "up_blocks.%d.upsamplers.0.conv", i));
        }
    }
    if (ns != 0 || hc != ch0)
        return qd_json_fail(ctx, QD_ERR_UNSUPPORTED, path, "up blocks do not consume every skip connection");
    QD_TRY(qd_p_norm(p, &u->norm_out, ch0, QD_BIAS, "conv_norm_out"));
    QD_TRY(qd_p_conv(p, &u->conv_out, c->out_ch, ch0, c->kout, QD_BIAS, "conv_out"));
    return QD_OK;
}

qd_status qd_unet_load(qd_ctx *ctx, const char *dir, qd_unet **out) {
    *out = NULL;
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, path, &cfg));
    ucfg c;
    qd_status st = parse_config(ctx, path, cfg, &c);
    if (st != QD_OK) { cJSON_Delete(cfg); return st; }
    qd_unet *u = qd_calloc(ctx, 1, sizeof *u);
    if (!u) { cJSON_Delete(cfg); return QD_ERR_NOMEM; }
    u->nb = c.nb;
    u->ch0 = c.boc[0];
    u->temb_dim = c.temb_dim;
    u->groups = c.groups;
    u->eps = c.eps;
    u->flip_sin_to_cos = qd_json_bool(cfg, "flip_sin_to_cos", 1);
    u->freq_shift = (float)qd_json_num(cfg, "freq_shift", 0);
    u->center_input = qd_json_bool(cfg, "center_input_sample", 0);
    u->skip_time_act = qd_json_bool(cfg, "resnet_skip_time_act", 0);
    u->down_pad = c.down_pad;
    u->kin = c.kin;
    u->kout = c.kout;
    u->text_time = c.text_time;
    u->info.in_channels = c.in_ch;
    u->info.out_channels = c.out_ch;
    u->info.sample_size = qd_json_int(cfg, "sample_size", 0);
    u->info.cross_attention_dim = c.cross_dim;
    u->info.addition_time_embed_dim = c.text_time ? c.add_dim : 0;
    u->info.projection_class_embeddings_input_dim = qd_json_int(cfg, "projection_class_embeddings_input_dim", 0);
    st = qd_params_open(ctx, dir, "unet", &u->p);
    if (st == QD_OK) st = build(ctx, u, &c, path);   /* c's strings point into cfg */
    cJSON_Delete(cfg);
    if (st != QD_OK) { qd_unet_free(u); return st; }
    *out = u;
    return QD_OK;
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

/* temb [B, T] = time_embedding(t) (+ add_embedding([text_embeds, time_ids embedding])). */
static qd_status time_embed(qd_ctx *ctx, const qd_unet *u, int64_t B, const float *timestep,
                            const float *text_embeds, const float *time_ids, float *temb) {
    int64_t T = u->temb_dim, ch0 = u->ch0;
    int64_t in_n = u->text_time ? u->info.projection_class_embeddings_input_dim : ch0;
    float *in = qd_malloc(ctx, sizeof(float) * (size_t)(B * (in_n > ch0 ? in_n : ch0)));
    float *h = qd_malloc(ctx, sizeof(float) * (size_t)(B * T));
    if (!in || !h) { free(in); free(h); return QD_ERR_NOMEM; }
    sinusoid(timestep, B, (int)ch0, u->flip_sin_to_cos, u->freq_shift, in);
    qd_linear(ctx, in, B, &u->t1.w, u->t1.b, h);
    qd_silu(h, B * T);
    qd_linear(ctx, h, B, &u->t2.w, u->t2.b, temb);
    if (u->text_time) {
        int ad = u->info.addition_time_embed_dim;
        int64_t pooled = in_n - 6 * ad;
        float *add = qd_malloc(ctx, sizeof(float) * (size_t)(B * T));
        if (!add) { free(in); free(h); return QD_ERR_NOMEM; }
        for (int64_t b = 0; b < B; b++) {   /* [text_embeds, sinusoid(time_ids).flatten()] */
            memcpy(in + b * in_n, text_embeds + b * pooled, sizeof(float) * (size_t)pooled);
            sinusoid(time_ids + b * 6, 6, ad, u->flip_sin_to_cos, u->freq_shift, in + b * in_n + pooled);
        }
        qd_linear(ctx, in, B, &u->a1.w, u->a1.b, h);
        qd_silu(h, B * T);
        qd_linear(ctx, h, B, &u->a2.w, u->a2.b, add);
        qd_add(temb, add, B * T);
        free(add);
    }
    free(in);
    free(h);
    return QD_OK;
}

/* torch's upsample_nearest index for one dimension (float scale in/out, as aten does). */
static int64_t nearest_src(int64_t o, int64_t in, int64_t out) {
    if (out == in) return o;
    if (out == 2 * in) return o >> 1;
    int64_t s = (int64_t)floorf((float)o * ((float)in / (float)out));
    return s < in - 1 ? s : in - 1;
}

typedef struct { const float *x; float *y; int64_t H, W, Ho, Wo; } resize_args;

static void resize_part(void *arg, int64_t b, int64_t e, int thread) {
    const resize_args *a = arg;
    for (int64_t p = b; p < e; p++)
        for (int64_t i = 0; i < a->Ho; i++) {
            const float *xr = a->x + (p * a->H + nearest_src(i, a->H, a->Ho)) * a->W;
            float *yr = a->y + (p * a->Ho + i) * a->Wo;
            for (int64_t j = 0; j < a->Wo; j++) yr[j] = xr[nearest_src(j, a->W, a->Wo)];
        }
}

typedef struct { float *p; int64_t C, H, W; } act;

typedef struct {
    act *skips;
    int ns;
    float *h, *temb, *tact, *xin;
} fwd_state;

static void fwd_state_free(qd_ctx *ctx, fwd_state *s) {
    for (int i = 0; i < s->ns; i++) qd_act_free(ctx, s->skips[i].p);
    free(s->skips);
    if (s->tact != s->temb) free(s->tact);
    free(s->temb);
    qd_act_free(ctx, s->h);
    qd_act_free(ctx, s->xin);
}

/* activations come from the context's step arena: after the first step of a sampler a
 * forward allocates nothing (base/act_pool.h) */
static float *alloc_act(qd_ctx *ctx, int64_t n) { return qd_act_floats(ctx, n); }

/* Run one block's resnets (+ transformers) on *h (C x H x W), replacing it. Down blocks
 * push every output as a skip; up blocks first concatenate the popped skip on channels. */
static qd_status run_layers(qd_ctx *ctx, const ublock *b, fwd_state *s, act *h, int64_t B, int down,
                            const float *context, int64_t L) {
    int64_t S = h->H * h->W;
    for (int j = 0; j < b->n; j++) {
        const qd_unet_resnet *r = &b->res[j];
        const float *in = h->p;
        float *cat = NULL, *y;
        if (!down) {    /* torch.cat([h, skip], dim=1) */
            act sk = s->skips[--s->ns];
            cat = alloc_act(ctx, B * r->cin * S);
            if (!cat) { qd_act_free(ctx, sk.p); return QD_ERR_NOMEM; }
            double t0 = ctx->trace ? qd_now() : 0;
            for (int64_t bi = 0; bi < B; bi++) {
                memcpy(cat + bi * r->cin * S, h->p + bi * h->C * S, sizeof(float) * (size_t)(h->C * S));
                memcpy(cat + (bi * r->cin + h->C) * S, sk.p + bi * sk.C * S, sizeof(float) * (size_t)(sk.C * S));
            }
            if (ctx->trace) {
                int64_t n = B * r->cin * S;
                ctx->trace(ctx->trace_user, "copy", &n, 1, qd_now() - t0);
            }
            qd_act_free(ctx, sk.p);
            qd_act_free(ctx, h->p);
            h->p = s->h = NULL;
            in = cat;
        }
        qd_status st = qd_unet_resnet_fwd(ctx, r, in, B, h->H, h->W, s->tact, &y);
        qd_act_free(ctx, cat);
        if (st != QD_OK) return st;
        if (b->cross && (st = qd_unet_xformer_fwd(ctx, &b->attn[j], y, B, h->H, h->W, context, L)) != QD_OK) {
            qd_act_free(ctx, y);
            return st;
        }
        h->p = y;
        h->C = r->cout;
        if (down) s->skips[s->ns++] = *h;   /* the stack owns it; h aliases it */
        else s->h = y;
    }
    return QD_OK;
}

qd_status qd_unet_forward(qd_ctx *ctx, qd_unet *u, const float *x, int64_t B, int64_t H, int64_t W,
                          const float *timestep, const float *context, int64_t L,
                          const float *text_embeds, const float *time_ids, float *out) {
    if (!u || !x || !timestep || !context || !out || B < 1 || H < 1 || W < 1 || L < 1)
        return qd_fail(ctx, QD_ERR_ARG, "unet forward: bad arguments");
    if (u->text_time && (!text_embeds || !time_ids))
        return qd_fail(ctx, QD_ERR_ARG, "unet forward: this UNet (addition_embed_type text_time) needs text_embeds "
                                        "and time_ids");
    int64_t T = u->temb_dim, ch0 = u->ch0, cin = u->info.in_channels;
    fwd_state s = {0};
    qd_status st = QD_OK;
    act h = {0};
    qd_act_begin(ctx);      /* every activation below comes from the step arena */
    s.skips = qd_calloc(ctx, (size_t)u->max_skips, sizeof *s.skips);
    s.temb = qd_malloc(ctx, sizeof(float) * (size_t)(B * T));
    if (!s.skips || !s.temb) { st = QD_ERR_NOMEM; goto done; }

    /* 1. time embedding; resnets see silu(temb) unless resnet_skip_time_act */
    if ((st = time_embed(ctx, u, B, timestep, text_embeds, time_ids, s.temb)) != QD_OK) goto done;
    s.tact = s.temb;
    if (!u->skip_time_act) {
        if (!(s.tact = qd_malloc(ctx, sizeof(float) * (size_t)(B * T)))) { st = QD_ERR_NOMEM; goto done; }
        memcpy(s.tact, s.temb, sizeof(float) * (size_t)(B * T));
        qd_silu(s.tact, B * T);
    }

    /* 2. conv_in */
    const float *xin = x;
    if (u->center_input) {      /* sample = 2 * sample - 1 */
        if (!(s.xin = alloc_act(ctx, B * cin * H * W))) { st = QD_ERR_NOMEM; goto done; }
        for (int64_t i = 0; i < B * cin * H * W; i++) s.xin[i] = 2.0f * x[i] - 1.0f;
        xin = s.xin;
    }
    h = (act){alloc_act(ctx, B * ch0 * H * W), ch0, H, W};
    if (!h.p) { st = QD_ERR_NOMEM; goto done; }
    qd_conv2d(ctx, xin, B, cin, H, W, &u->conv_in.w, u->conv_in.b, u->kin, u->kin, 1, (u->kin - 1) / 2, h.p);
    s.skips[s.ns++] = h;

    /* 3. down blocks */
    for (int i = 0; i < u->nb; i++) {
        const ublock *b = &u->down[i];
        if ((st = run_layers(ctx, b, &s, &h, B, 1, context, L)) != QD_OK) goto done;
        if (b->sample) {        /* Downsample2D: conv stride 2, padding 1 (or pad right/bottom by 1) */
            int p = u->down_pad;
            int64_t Ho = (h.H + (p ? 2 : 1) - 3) / 2 + 1, Wo = (h.W + (p ? 2 : 1) - 3) / 2 + 1;
            act d = {alloc_act(ctx, B * h.C * Ho * Wo), h.C, Ho, Wo};
            if (!d.p) { st = QD_ERR_NOMEM; goto done; }
            qd_conv2d_pad(ctx, h.p, B, h.C, h.H, h.W, &b->sconv.w, b->sconv.b, 3, 3, 2, p, 1, p, 1, d.p);
            s.skips[s.ns++] = h = d;
        }
        if (ctx->cancel) { st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); goto done; }
    }

    /* 4. mid block: resnet, transformer, resnet (h stops aliasing the skip stack here) */
    if (u->has_mid) {
        float *y;
        if ((st = qd_unet_resnet_fwd(ctx, &u->mid.res[0], h.p, B, h.H, h.W, s.tact, &y)) != QD_OK) goto done;
        s.h = y;
        if ((st = qd_unet_xformer_fwd(ctx, &u->mid.attn[0], y, B, h.H, h.W, context, L)) != QD_OK) goto done;
        if ((st = qd_unet_resnet_fwd(ctx, &u->mid.res[1], s.h, B, h.H, h.W, s.tact, &y)) != QD_OK) goto done;
        qd_act_free(ctx, s.h);
        s.h = h.p = y;
    } else {
        if (!(s.h = alloc_act(ctx, B * h.C * h.H * h.W))) { st = QD_ERR_NOMEM; goto done; }
        memcpy(s.h, h.p, sizeof(float) * (size_t)(B * h.C * h.H * h.W));
        h.p = s.h;
    }

    /* 5. up blocks */
    for (int i = 0; i < u->nb; i++) {
        const ublock *b = &u->up[i];
        if ((st = run_layers(ctx, b, &s, &h, B, 0, context, L)) != QD_OK) goto done;
        if (b->sample) {        /* Upsample2D: nearest to the next skip's size, then conv 3x3 */
            const act *nx = &s.skips[s.ns - 1];
            int64_t Ho = nx->H, Wo = nx->W, n = B * h.C * Ho * Wo;
            float *up = alloc_act(ctx, n), *y = alloc_act(ctx, n);
            if (!up || !y) { qd_act_free(ctx, up); qd_act_free(ctx, y); st = QD_ERR_NOMEM; goto done; }
            if (Ho == 2 * h.H && Wo == 2 * h.W) {
                qd_upsample_nearest2x(ctx, h.p, B * h.C, h.H, h.W, up);
            } else {
                resize_args a = {h.p, up, h.H, h.W, Ho, Wo};
                qd_parallel_for(ctx, B * h.C, resize_part, &a);
            }
            qd_act_free(ctx, s.h);
            qd_conv2d(ctx, up, B, h.C, Ho, Wo, &b->sconv.w, b->sconv.b, 3, 3, 1, 1, y);
            qd_act_free(ctx, up);
            s.h = h.p = y;
            h.H = Ho;
            h.W = Wo;
        }
        if (ctx->cancel) { st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); goto done; }
    }

    /* 6. conv_norm_out, silu, conv_out */
    qd_group_norm(ctx, h.p, B, h.C, H * W, u->groups, u->eps, u->norm_out.w, u->norm_out.b, 1, h.p);
    qd_conv2d(ctx, h.p, B, h.C, H, W, &u->conv_out.w, u->conv_out.b, u->kout, u->kout, 1, (u->kout - 1) / 2, out);
done:
    fwd_state_free(ctx, &s);
    qd_act_end(ctx);
    return st;
}

struct qd_params *qd_unet_params(qd_unet *u) { return &u->p; }
