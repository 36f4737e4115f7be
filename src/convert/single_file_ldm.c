/* Original-SD (LDM) key maps: UNet, VAE, the CLIP text encoders (transformers
 * names under a prefix) and OpenCLIP (SDXL's second encoder), after diffusers'
 * convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint /
 * convert_open_clip_checkpoint. */
#include "convert/single_file_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UNet ---- */

/* ResBlock inner names -> ResnetBlock2D's. */
static const char *unet_resnet_part(const char *rest, const char **tail) {
    static const struct { const char *ldm, *diff; } m[] = {
        {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."}, {"emb_layers.1.", "time_emb_proj."},
        {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."},
    };
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if ((*tail = sf_after(rest, m[i].ldm))) return m[i].diff;
    return NULL;
}

/* Transformer2DModel inner names are the same in both layouts. */
static int unet_attention_part(const char *rest) {
    return sf_after(rest, "norm.") || sf_after(rest, "proj_in.") || sf_after(rest, "proj_out.") || sf_after(rest, "transformer_blocks.");
}

static int unet_resnet(sf_build *b, int comp, const char *base, const char *rest, const qd_st_tensor *src) {
    const char *tail, *part = unet_resnet_part(rest, &tail);
    if (!part) return SF_UNKNOWN;
    return sf_add_fmt(b, comp, src, SF_VIEW, "%s%s%s", base, part, tail);
}

int sf_map_ldm_unet(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src) {
    (void)prefix;
    static const struct { const char *ldm, *diff; } top[] = {
        {"time_embed.0.", "time_embedding.linear_1."}, {"time_embed.2.", "time_embedding.linear_2."},
        {"label_emb.0.0.", "add_embedding.linear_1."}, {"label_emb.0.2.", "add_embedding.linear_2."},
        {"input_blocks.0.0.", "conv_in."},             {"out.0.", "conv_norm_out."},
        {"out.2.", "conv_out."},
    };
    const char *r;
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if ((r = sf_after(key, top[i].ldm))) return sf_add_fmt(b, comp, src, SF_VIEW, "%s%s", top[i].diff, r);
    int L = sf_ldm_unet_layers(b);
    char base[160];
    if ((r = sf_after(key, "input_blocks."))) {
        long i = sf_take_index(&r), j = sf_take_index(&r);
        if (i < 1 || j < 0 || L < 1) return SF_UNKNOWN;
        long blk = (i - 1) / (L + 1), l = (i - 1) % (L + 1);
        if (l == L) {
            const char *t = sf_after(r, "op.");
            if (j != 0 || !t) return SF_UNKNOWN;
            return sf_add_fmt(b, comp, src, SF_VIEW, "down_blocks.%ld.downsamplers.0.conv.%s", blk, t);
        }
        if (j == 0) {
            snprintf(base, sizeof base, "down_blocks.%ld.resnets.%ld.", blk, l);
            return unet_resnet(b, comp, base, r, src);
        }
        if (j == 1 && unet_attention_part(r)) return sf_add_fmt(b, comp, src, SF_VIEW, "down_blocks.%ld.attentions.%ld.%s", blk, l, r);
        return SF_UNKNOWN;
    }
    if ((r = sf_after(key, "middle_block."))) {
        long j = sf_take_index(&r);
        if (j == 0 || j == 2) {
            snprintf(base, sizeof base, "mid_block.resnets.%ld.", j / 2);
            return unet_resnet(b, comp, base, r, src);
        }
        if (j == 1 && unet_attention_part(r)) return sf_add_fmt(b, comp, src, SF_VIEW, "mid_block.attentions.0.%s", r);
        return SF_UNKNOWN;
    }
    if ((r = sf_after(key, "output_blocks."))) {
        long i = sf_take_index(&r), j = sf_take_index(&r);
        if (i < 0 || j < 0 || L < 1) return SF_UNKNOWN;
        long blk = i / (L + 1), l = i % (L + 1);
        if (j == 0) {
            snprintf(base, sizeof base, "up_blocks.%ld.resnets.%ld.", blk, l);
            return unet_resnet(b, comp, base, r, src);
        }
        const char *t = sf_after(r, "conv.");
        if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "up_blocks.%ld.upsamplers.0.conv.%s", blk, t);
        if (j == 1 && unet_attention_part(r)) return sf_add_fmt(b, comp, src, SF_VIEW, "up_blocks.%ld.attentions.%ld.%s", blk, l, r);
        return SF_UNKNOWN;
    }
    return SF_UNKNOWN;
}

/* ---- VAE ---- */

static int vae_resnet(sf_build *b, int comp, const char *base, const char *rest, const qd_st_tensor *src) {
    static const char *same[] = {"norm1.", "conv1.", "norm2.", "conv2."};
    for (int i = 0; i < 4; i++)
        if (sf_after(rest, same[i])) return sf_add_fmt(b, comp, src, SF_VIEW, "%s%s", base, rest);
    const char *t = sf_after(rest, "nin_shortcut.");
    if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "%sconv_shortcut.%s", base, t);
    return SF_UNKNOWN;
}

/* mid.block_1/2, mid.attn_1 of the encoder or decoder (side = "encoder"/"decoder"). */
static int vae_mid(sf_build *b, int comp, const char *side, const char *r, const qd_st_tensor *src) {
    char base[160];
    const char *t;
    if ((t = sf_after(r, "block_1.")) || (t = sf_after(r, "block_2."))) {
        snprintf(base, sizeof base, "%s.mid_block.resnets.%d.", side, r[6] == '2');
        return vae_resnet(b, comp, base, t, src);
    }
    if (!(t = sf_after(r, "attn_1."))) return SF_UNKNOWN;
    static const struct { const char *ldm, *diff; } m[] = {
        {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."},
    };
    for (int i = 0; i < 5; i++) {
        const char *u = sf_after(t, m[i].ldm);
        if (!u) continue;
        /* the 1x1-conv projections become Linear weights (diffusers' conv_attn_to_linear) */
        int op = i > 0 && !strcmp(u, "weight") ? SF_LINEAR : SF_VIEW;
        return sf_add_fmt(b, comp, src, op, "%s.mid_block.attentions.0.%s%s", side, m[i].diff, u);
    }
    return SF_UNKNOWN;
}

int sf_map_ldm_vae(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src) {
    (void)prefix;
    static const char *same[] = {"encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
                                 "quant_conv.", "post_quant_conv."};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++)
        if (sf_after(key, same[i])) return sf_add_fmt(b, comp, src, SF_VIEW, "%s", key);
    const char *r;
    if ((r = sf_after(key, "encoder.norm_out."))) return sf_add_fmt(b, comp, src, SF_VIEW, "encoder.conv_norm_out.%s", r);
    if ((r = sf_after(key, "decoder.norm_out."))) return sf_add_fmt(b, comp, src, SF_VIEW, "decoder.conv_norm_out.%s", r);
    if ((r = sf_after(key, "encoder.mid."))) return vae_mid(b, comp, "encoder", r, src);
    if ((r = sf_after(key, "decoder.mid."))) return vae_mid(b, comp, "decoder", r, src);
    char base[160];
    if ((r = sf_after(key, "encoder.down."))) {
        long i = sf_take_index(&r), j;
        const char *t;
        if (i < 0) return SF_UNKNOWN;
        if ((t = sf_after(r, "downsample.conv."))) return sf_add_fmt(b, comp, src, SF_VIEW, "encoder.down_blocks.%ld.downsamplers.0.conv.%s", i, t);
        if (!(t = sf_after(r, "block.")) || (j = sf_take_index(&t)) < 0) return SF_UNKNOWN;
        snprintf(base, sizeof base, "encoder.down_blocks.%ld.resnets.%ld.", i, j);
        return vae_resnet(b, comp, base, t, src);
    }
    if ((r = sf_after(key, "decoder.up."))) {
        long i = sf_take_index(&r), j, n = sf_ldm_vae_levels(b);
        const char *t;
        if (i < 0 || i >= n) return SF_UNKNOWN;
        long u = n - 1 - i;   /* LDM counts decoder levels from the lowest resolution up */
        if ((t = sf_after(r, "upsample.conv."))) return sf_add_fmt(b, comp, src, SF_VIEW, "decoder.up_blocks.%ld.upsamplers.0.conv.%s", u, t);
        if (!(t = sf_after(r, "block.")) || (j = sf_take_index(&t)) < 0) return SF_UNKNOWN;
        snprintf(base, sizeof base, "decoder.up_blocks.%ld.resnets.%ld.", u, j);
        return vae_resnet(b, comp, base, t, src);
    }
    return SF_UNKNOWN;
}

/* ---- text encoders ---- */

/* transformers' CLIPTextModel names, with or without the text_model. level of old
 * checkpoints; the position_ids buffer is dropped (transformers does not save it). */
int sf_map_clip(sf_build *b, int comp, const char *key, const qd_st_tensor *src) {
    const char *r = sf_after(key, "text_model.");
    const char *k = r ? r : key;
    if (!strcmp(k, "embeddings.position_ids")) return SF_MAPPED;
    if (!r && !strcmp(key, "text_projection.weight")) return sf_add_fmt(b, comp, src, SF_VIEW, "%s", key);
    if (sf_after(k, "embeddings.") || sf_after(k, "encoder.layers.") || sf_after(k, "final_layer_norm."))
        return sf_add_fmt(b, comp, src, SF_VIEW, "text_model.%s", k);
    return SF_UNKNOWN;
}

/* OpenCLIP's text tower (SDXL's conditioner.embedders.1.model.) as
 * CLIPTextModelWithProjection: in_proj splits into q/k/v by rows, text_projection
 * is stored transposed, logit_scale is dropped. */
int sf_map_open_clip(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src) {
    if (!strcmp(key, "logit_scale") || !strcmp(key, "attn_mask")) return SF_MAPPED;
    if (!strcmp(key, "token_embedding.weight")) return sf_add_fmt(b, comp, src, SF_VIEW, "text_model.embeddings.token_embedding.weight");
    if (!strcmp(key, "positional_embedding")) return sf_add_fmt(b, comp, src, SF_VIEW, "text_model.embeddings.position_embedding.weight");
    if (!strcmp(key, "text_projection")) return sf_add_fmt(b, comp, src, SF_TRANSPOSE, "text_projection.weight");
    const char *r;
    if ((r = sf_after(key, "ln_final."))) return sf_add_fmt(b, comp, src, SF_VIEW, "text_model.final_layer_norm.%s", r);
    if (!(r = sf_after(key, "transformer.resblocks."))) return SF_UNKNOWN;
    long n = sf_take_index(&r);
    if (n < 0) return SF_UNKNOWN;
    static const struct { const char *ldm, *diff; } m[] = {
        {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."}, {"mlp.c_fc.", "mlp.fc1."},
        {"mlp.c_proj.", "mlp.fc2."}, {"attn.out_proj.", "self_attn.out_proj."},
    };
    for (int i = 0; i < 5; i++) {
        const char *t = sf_after(r, m[i].ldm);
        if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "text_model.encoder.layers.%ld.%s%s", n, m[i].diff, t);
    }
    int is_w = !strcmp(r, "attn.in_proj_weight"), is_b = !strcmp(r, "attn.in_proj_bias");
    if (!is_w && !is_b) return SF_UNKNOWN;
    /* a fused group: both halves must be there (the bias split needs the weight's width) */
    char other[600];
    snprintf(other, sizeof other, "%stransformer.resblocks.%ld.attn.in_proj_%s", prefix, n, is_w ? "bias" : "weight");
    if (!sf_src(b, other)) {
        qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s%s' has no '%s' (an incomplete fused q/k/v group)", sf_file(b), prefix, key, other);
        return SF_FAILED;
    }
    if (src->shape[0] % 3 != 0) {
        qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s%s' has %lld rows, not 3 equal q/k/v parts", sf_file(b), prefix, key,
                (long long)src->shape[0]);
        return SF_FAILED;
    }
    char q[160], k[160], v[160];
    const char *sfx = is_w ? "weight" : "bias";
    snprintf(q, sizeof q, "text_model.encoder.layers.%ld.self_attn.q_proj.%s", n, sfx);
    snprintf(k, sizeof k, "text_model.encoder.layers.%ld.self_attn.k_proj.%s", n, sfx);
    snprintf(v, sizeof v, "text_model.encoder.layers.%ld.self_attn.v_proj.%s", n, sfx);
    const char *names[3] = {q, k, v};
    int64_t h = src->shape[0] / 3, rows[3] = {h, h, h};
    return sf_split(b, comp, names, rows, 3, src);
}

/* transformers' T5EncoderModel names are stored as they are (ComfyUI's t5xxl). */
int sf_map_t5(sf_build *b, int comp, const char *key, const qd_st_tensor *src) {
    if (sf_after(key, "encoder.") || !strcmp(key, "shared.weight")) return sf_add_fmt(b, comp, src, SF_VIEW, "%s", key);
    return SF_UNKNOWN;
}
