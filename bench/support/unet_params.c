/* UNet2DConditionModel's parameters from its config (see unet_params.h). */
#include "unet_params.h"

#include <stdio.h>
#include <string.h>

/* ResnetBlock2D(in, out, temb_channels) */
static void resnet(plist *l, const char *pre, int64_t in, int64_t out, int64_t temb) {
    char n[128];
    snprintf(n, sizeof n, "%s.norm1", pre); norm(l, n, in);
    snprintf(n, sizeof n, "%s.conv1", pre); conv(l, n, out, in, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", pre); linear(l, n, out, temb, 1);
    snprintf(n, sizeof n, "%s.norm2", pre); norm(l, n, out);
    snprintf(n, sizeof n, "%s.conv2", pre); conv(l, n, out, out, 3);
    if (in != out) { snprintf(n, sizeof n, "%s.conv_shortcut", pre); conv(l, n, out, in, 1); }
}

/* Transformer2DModel(heads, C // heads, in_channels=C, num_layers=depth, cross_attention_dim) */
static void transformer(plist *l, const char *pre, int64_t C, int heads, int depth, int64_t cross, int lin) {
    char n[128];
    int64_t D = heads * (C / heads), F = 4 * D;
    snprintf(n, sizeof n, "%s.norm", pre); norm(l, n, C);
    snprintf(n, sizeof n, "%s.proj_in", pre);
    if (lin) linear(l, n, D, C, 1); else conv(l, n, D, C, 1);
    for (int i = 0; i < depth; i++) {
        char b[96];     /* names are < 80 characters; sized so no snprintf below can truncate */
        snprintf(b, sizeof b, "%s.transformer_blocks.%d", pre, i);
        for (int a = 1; a <= 2; a++) {
            int64_t kv = a == 1 ? D : cross;
            snprintf(n, sizeof n, "%s.norm%d", b, a); norm(l, n, D);
            snprintf(n, sizeof n, "%s.attn%d.to_q", b, a); linear(l, n, D, D, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_k", b, a); linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_v", b, a); linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_out.0", b, a); linear(l, n, D, D, 1);
        }
        snprintf(n, sizeof n, "%s.norm3", b); norm(l, n, D);
        snprintf(n, sizeof n, "%s.ff.net.0.proj", b); linear(l, n, 2 * F, D, 1);   /* GEGLU */
        snprintf(n, sizeof n, "%s.ff.net.2", b); linear(l, n, D, F, 1);
    }
    snprintf(n, sizeof n, "%s.proj_out", pre);
    if (lin) linear(l, n, C, D, 1); else conv(l, n, C, D, 1);
}

#define MAXB 8

/* An int or a list of nb ints (diffusers repeats a scalar). */
static void ints(const cJSON *cfg, const char *key, int nb, int def, int *out) {
    int n = qd_json_ints(cfg, key, out, nb);
    if (n == 0) for (int i = 0; i < nb; i++) out[i] = def;
    else if (n != nb) die("config: %s must be an int or a list of %d ints", key, nb);
}

static int is_set(const cJSON *cfg, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return it && !cJSON_IsNull(it);
}

void unet_params(const cJSON *cfg, plist *l) {
    const char *down[MAXB], *up[MAXB];
    int boc[MAXB], nb = qd_json_ints(cfg, "block_out_channels", boc, MAXB);
    if (nb <= 0 || qd_json_strs(cfg, "down_block_types", down, MAXB) != nb ||
        qd_json_strs(cfg, "up_block_types", up, MAXB) != nb)
        die("config: block_out_channels, down_block_types and up_block_types must be lists of one length");
    int layers[MAXB], heads[MAXB], cross[MAXB], tl[MAXB];
    ints(cfg, "layers_per_block", nb, 2, layers);
    /* attention_head_dim is the head COUNT in these configs unless num_attention_heads is set */
    ints(cfg, is_set(cfg, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim", nb, 8, heads);
    ints(cfg, "cross_attention_dim", nb, 1280, cross);
    ints(cfg, "transformer_layers_per_block", nb, 1, tl);
    if (is_set(cfg, "reverse_transformer_layers_per_block"))
        die("config: reverse_transformer_layers_per_block not supported by this generator");
    int lin = qd_json_bool(cfg, "use_linear_projection", 0);
    int64_t in_ch = qd_json_int(cfg, "in_channels", 4), out_ch = qd_json_int(cfg, "out_channels", 4);
    int kin = qd_json_int(cfg, "conv_in_kernel", 3), kout = qd_json_int(cfg, "conv_out_kernel", 3);
    int64_t T = qd_json_int(cfg, "time_embedding_dim", 4 * boc[0]);
    const char *mid = qd_json_str(cfg, "mid_block_type", "UNetMidBlock2DCrossAttn");
    char n[128];

    conv(l, "conv_in", boc[0], in_ch, kin);
    linear(l, "time_embedding.linear_1", T, boc[0], 1);   /* Timesteps(boc[0]) -> TimestepEmbedding */
    linear(l, "time_embedding.linear_2", T, T, 1);
    const char *add_type = qd_json_str(cfg, "addition_embed_type", NULL);
    if (add_type) {
        if (strcmp(add_type, "text_time")) die("config: addition_embed_type %s not supported", add_type);
        int64_t proj = qd_json_int(cfg, "projection_class_embeddings_input_dim", 0);
        linear(l, "add_embedding.linear_1", T, proj, 1);
        linear(l, "add_embedding.linear_2", T, T, 1);
    }
    int64_t out = boc[0];
    for (int i = 0; i < nb; i++) {
        int64_t in = out;
        out = boc[i];
        int xattn = !strcmp(down[i], "CrossAttnDownBlock2D");
        if (!xattn && strcmp(down[i], "DownBlock2D")) die("config: %s not supported", down[i]);
        for (int j = 0; j < layers[i]; j++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", i, j);
            resnet(l, n, j ? out : in, out, T);
            if (xattn) {
                snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", i, j);
                transformer(l, n, out, heads[i], tl[i], cross[i], lin);
            }
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i);
            conv(l, n, out, out, 3);
        }
    }
    if (mid && strcmp(mid, "UNetMidBlock2DCrossAttn")) die("config: mid_block_type %s not supported", mid);
    if (mid) {
        int64_t c = boc[nb - 1];
        resnet(l, "mid_block.resnets.0", c, c, T);
        transformer(l, "mid_block.attentions.0", c, heads[nb - 1], tl[nb - 1], cross[nb - 1], lin);
        resnet(l, "mid_block.resnets.1", c, c, T);
    }
    /* up blocks run on the reversed lists */
    out = boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        int r = nb - 1 - i;
        int64_t prev = out, in = boc[i + 1 < nb ? nb - 2 - i : 0];
        out = boc[r];
        int xattn = !strcmp(up[i], "CrossAttnUpBlock2D");
        if (!xattn && strcmp(up[i], "UpBlock2D")) die("config: %s not supported", up[i]);
        int nl = layers[r] + 1;
        for (int j = 0; j < nl; j++) {
            int64_t skip = j == nl - 1 ? in : out, rin = j ? out : prev;
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, j);
            resnet(l, n, rin + skip, out, T);
            if (xattn) {
                snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, j);
                transformer(l, n, out, heads[r], tl[r], cross[r], lin);
            }
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i);
            conv(l, n, out, out, 3);
        }
    }
    norm(l, "conv_norm_out", boc[0]);
    conv(l, "conv_out", out_ch, boc[0], kout);
}

void unet_require_sd1(const cJSON *cfg) {
    if (is_set(cfg, "addition_embed_type")) die("config: this benchmark writes SD1.x UNets (no addition_embed_type)");
}
