/* SD3 / SD3.5 key map: Stability MMDiT names (joint_blocks.N.{x,context}_block...,
 * as in the released checkpoints and ComfyUI's diffusion_models files) ->
 * SD3Transformer2DModel, after diffusers' convert_sd3_transformer_checkpoint_to_diffusers.
 * The fused attn.qkv is split by rows into q/k/v; the final modulation's halves and
 * those of the last block's (pre-only) context modulation are swapped (Stability
 * shift, scale; diffusers scale, shift). SD3.5-medium's dual-attention blocks carry
 * x_block.attn2 (its qkv split the same way into attn2.to_q/k/v). A full checkpoint's VAE and text
 * encoders are routed in single_file.c (LDM VAE map, HF CLIP/T5 names). */
#include "convert/single_file_map.h"

#include <stdio.h>
#include <string.h>

static const struct { const char *orig, *diff; } top_map[] = {
    {"x_embedder.proj.", "pos_embed.proj."},
    {"context_embedder.", "context_embedder."},
    {"t_embedder.mlp.0.", "time_text_embed.timestep_embedder.linear_1."},
    {"t_embedder.mlp.2.", "time_text_embed.timestep_embedder.linear_2."},
    {"y_embedder.mlp.0.", "time_text_embed.text_embedder.linear_1."},
    {"y_embedder.mlp.2.", "time_text_embed.text_embedder.linear_2."},
    {"final_layer.linear.", "proj_out."},
};

static const struct { const char *orig, *diff; } block_map[] = {
    {"x_block.attn.proj.", "attn.to_out.0."},
    {"context_block.attn.proj.", "attn.to_add_out."},
    {"x_block.attn2.proj.", "attn2.to_out.0."},
    {"x_block.attn2.ln_q.weight", "attn2.norm_q.weight"},
    {"x_block.attn2.ln_k.weight", "attn2.norm_k.weight"},
    {"x_block.attn.ln_q.weight", "attn.norm_q.weight"},
    {"x_block.attn.ln_k.weight", "attn.norm_k.weight"},
    {"context_block.attn.ln_q.weight", "attn.norm_added_q.weight"},
    {"context_block.attn.ln_k.weight", "attn.norm_added_k.weight"},
    {"x_block.adaLN_modulation.1.", "norm1.linear."},
    {"x_block.mlp.fc1.", "ff.net.0.proj."},
    {"x_block.mlp.fc2.", "ff.net.2."},
    {"context_block.mlp.fc1.", "ff_context.net.0.proj."},
    {"context_block.mlp.fc2.", "ff_context.net.2."},
};

/* Every tensor a block must have; the context side's projection and MLP in every
 * block but the last (which is pre-only: its context output is never used). */
static const char *block_required[] = {
    "x_block.attn.qkv.weight", "x_block.attn.qkv.bias", "context_block.attn.qkv.weight", "context_block.attn.qkv.bias",
    "x_block.attn.proj.weight", "x_block.attn.proj.bias", "x_block.adaLN_modulation.1.weight", "x_block.adaLN_modulation.1.bias",
    "context_block.adaLN_modulation.1.weight", "context_block.adaLN_modulation.1.bias", "x_block.mlp.fc1.weight",
    "x_block.mlp.fc1.bias", "x_block.mlp.fc2.weight", "x_block.mlp.fc2.bias", NULL,
};
/* A dual-attention block's second attention, whole when any of it is there. */
static const char *attn2_required[] = {
    "x_block.attn2.qkv.weight", "x_block.attn2.qkv.bias", "x_block.attn2.proj.weight", "x_block.attn2.proj.bias", NULL,
};
static const char *context_required[] = {
    "context_block.attn.proj.weight", "context_block.attn.proj.bias", "context_block.mlp.fc1.weight",
    "context_block.mlp.fc1.bias", "context_block.mlp.fc2.weight", "context_block.mlp.fc2.bias", NULL,
};

/* Whether joint block n is the last one (no block n + 1 in the file). */
static int is_last_block(sf_build *b, const char *prefix, long n) {
    char k[600];
    snprintf(k, sizeof k, "%sjoint_blocks.%ld.x_block.attn.qkv.weight", prefix, n + 1);
    if (sf_src(b, k)) return 0;
    snprintf(k, sizeof k, "%sjoint_blocks.%ld.x_block.adaLN_modulation.1.weight", prefix, n + 1);
    return !sf_src(b, k);
}

int sf_map_sd3(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src) {
    const char *r;
    for (size_t i = 0; i < sizeof top_map / sizeof *top_map; i++)
        if ((r = sf_after(key, top_map[i].orig))) return sf_add_fmt(b, comp, src, SF_VIEW, "%s%s", top_map[i].diff, r);
    if (!strcmp(key, "pos_embed")) return sf_add(b, comp, "pos_embed.pos_embed", src, 0, -1, SF_VIEW);
    if ((r = sf_after(key, "final_layer.adaLN_modulation.1."))) return sf_add_fmt(b, comp, src, SF_SWAP, "norm_out.linear.%s", r);
    if (!(r = sf_after(key, "joint_blocks."))) return SF_UNKNOWN;
    long n = sf_take_index(&r);
    if (n < 0) return SF_UNKNOWN;
    for (size_t i = 0; i < sizeof block_map / sizeof *block_map; i++) {
        const char *t = sf_after(r, block_map[i].orig);
        if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "transformer_blocks.%ld.%s%s", n, block_map[i].diff, t);
    }
    const char *t;
    if ((t = sf_after(r, "context_block.adaLN_modulation.1.")))
        return sf_add_fmt(b, comp, src, is_last_block(b, prefix, n) ? SF_SWAP : SF_VIEW, "transformer_blocks.%ld.norm1_context.linear.%s", n, t);
    const char *attn = "attn";
    int x = (t = sf_after(r, "x_block.attn.qkv.")) != NULL;
    if (!x && (t = sf_after(r, "x_block.attn2.qkv.")) != NULL) x = 1, attn = "attn2";
    if (!x && !(t = sf_after(r, "context_block.attn.qkv."))) return SF_UNKNOWN;
    if (strcmp(t, "weight") && strcmp(t, "bias")) return SF_UNKNOWN;
    if (src->ndim < 1 || src->shape[0] % 3) {
        qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s%s' has %lld rows, not 3 equal q/k/v parts", sf_file(b), prefix, key,
                src->ndim ? (long long)src->shape[0] : 0LL);
        return SF_FAILED;
    }
    char q[160], k[160], v[160];
    snprintf(q, sizeof q, "transformer_blocks.%ld.%s.%s.%s", n, attn, x ? "to_q" : "add_q_proj", t);
    snprintf(k, sizeof k, "transformer_blocks.%ld.%s.%s.%s", n, attn, x ? "to_k" : "add_k_proj", t);
    snprintf(v, sizeof v, "transformer_blocks.%ld.%s.%s.%s", n, attn, x ? "to_v" : "add_v_proj", t);
    const char *names[3] = {q, k, v};
    int64_t h = src->shape[0] / 3, rows[3] = {h, h, h};
    return sf_split(b, comp, names, rows, 3, src);
}

/* Each block that appears must be whole (a fused qkv or a partner missing would
 * leave the diffusers block without some of its layers), numbered 0..N-1. */
qd_status sf_check_sd3(sf_build *b, const char *prefix) {
    char name[600];
    for (long n = 0;; n++) {
        int present = 0, first_missing = -1;
        for (int i = 0; block_required[i]; i++) {
            snprintf(name, sizeof name, "%sjoint_blocks.%ld.%s", prefix, n, block_required[i]);
            if (sf_src(b, name)) present++;
            else if (first_missing < 0) first_missing = i;
        }
        int last = is_last_block(b, prefix, n);
        if (!present) {
            if (!last)
                return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: joint_blocks.%ld is missing (block %ld exists)", sf_file(b), n, n + 1);
            if (n == 0) return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: no joint_blocks in this SD3 checkpoint", sf_file(b));
            return QD_OK;
        }
        if (first_missing >= 0)
            return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%sjoint_blocks.%ld.%s' is missing (the rest of its block is there)",
                           sf_file(b), prefix, n, block_required[first_missing]);
        int has2 = 0, miss2 = -1;
        for (int i = 0; attn2_required[i]; i++) {
            snprintf(name, sizeof name, "%sjoint_blocks.%ld.%s", prefix, n, attn2_required[i]);
            if (sf_src(b, name)) has2 = 1;
            else if (miss2 < 0) miss2 = i;
        }
        if (has2 && miss2 >= 0)
            return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%sjoint_blocks.%ld.%s' is missing (the rest of its attn2 is there)",
                           sf_file(b), prefix, n, attn2_required[miss2]);
        for (int i = 0; !last && context_required[i]; i++) {
            snprintf(name, sizeof name, "%sjoint_blocks.%ld.%s", prefix, n, context_required[i]);
            if (!sf_src(b, name))
                return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s' is missing (only the last block's context side is pre-only)",
                               sf_file(b), name);
        }
    }
}
