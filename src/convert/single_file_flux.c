/* FLUX.1 key map: BFL / ComfyUI names -> FluxTransformer2DModel, after diffusers'
 * convert_flux_transformer_checkpoint_to_diffusers. The fused projections are
 * split by rows (double blocks: qkv -> to_q/to_k/to_v, add_q/k/v_proj; single
 * blocks: linear1 -> to_q/to_k/to_v/proj_mlp) and the final modulation's halves
 * are swapped (BFL shift, scale; diffusers scale, shift). */
#include "convert/single_file_map.h"

#include <stdio.h>
#include <string.h>

static const struct { const char *bfl, *diff; } top_map[] = {
    {"img_in.", "x_embedder."},
    {"txt_in.", "context_embedder."},
    {"time_in.in_layer.", "time_text_embed.timestep_embedder.linear_1."},
    {"time_in.out_layer.", "time_text_embed.timestep_embedder.linear_2."},
    {"vector_in.in_layer.", "time_text_embed.text_embedder.linear_1."},
    {"vector_in.out_layer.", "time_text_embed.text_embedder.linear_2."},
    {"guidance_in.in_layer.", "time_text_embed.guidance_embedder.linear_1."},
    {"guidance_in.out_layer.", "time_text_embed.guidance_embedder.linear_2."},
    {"final_layer.linear.", "proj_out."},
};

static const struct { const char *bfl, *diff; } double_map[] = {
    {"img_mod.lin.", "norm1.linear."},
    {"txt_mod.lin.", "norm1_context.linear."},
    {"img_attn.norm.query_norm.scale", "attn.norm_q.weight"},
    {"img_attn.norm.key_norm.scale", "attn.norm_k.weight"},
    {"txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"},
    {"txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"},
    {"img_attn.proj.", "attn.to_out.0."},
    {"txt_attn.proj.", "attn.to_add_out."},
    {"img_mlp.0.", "ff.net.0.proj."},
    {"img_mlp.2.", "ff.net.2."},
    {"txt_mlp.0.", "ff_context.net.0.proj."},
    {"txt_mlp.2.", "ff_context.net.2."},
};

static const struct { const char *bfl, *diff; } single_map[] = {
    {"linear2.", "proj_out."},
    {"norm.query_norm.scale", "attn.norm_q.weight"},
    {"norm.key_norm.scale", "attn.norm_k.weight"},
    {"modulation.lin.", "norm.linear."},
};

/* Every tensor one block of each kind must have (BFL suffixes). */
static const char *double_required[] = {
    "img_mod.lin.weight", "img_mod.lin.bias", "txt_mod.lin.weight", "txt_mod.lin.bias",
    "img_attn.qkv.weight", "img_attn.qkv.bias", "txt_attn.qkv.weight", "txt_attn.qkv.bias",
    "img_attn.norm.query_norm.scale", "img_attn.norm.key_norm.scale",
    "txt_attn.norm.query_norm.scale", "txt_attn.norm.key_norm.scale",
    "img_attn.proj.weight", "img_attn.proj.bias", "txt_attn.proj.weight", "txt_attn.proj.bias",
    "img_mlp.0.weight", "img_mlp.0.bias", "img_mlp.2.weight", "img_mlp.2.bias",
    "txt_mlp.0.weight", "txt_mlp.0.bias", "txt_mlp.2.weight", "txt_mlp.2.bias", NULL,
};
static const char *single_required[] = {
    "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
    "norm.query_norm.scale", "norm.key_norm.scale", "modulation.lin.weight", "modulation.lin.bias", NULL,
};

static int fail(sf_build *b, const char *fmt, const char *a, const char *c, long long v) {
    qd_fail(sf_ctx(b), QD_ERR_FORMAT, fmt, sf_file(b), a, c, v);
    return SF_FAILED;
}

int sf_map_flux(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src) {
    const char *r;
    for (size_t i = 0; i < sizeof top_map / sizeof *top_map; i++)
        if ((r = sf_after(key, top_map[i].bfl))) return sf_add_fmt(b, comp, src, SF_VIEW, "%s%s", top_map[i].diff, r);
    if ((r = sf_after(key, "final_layer.adaLN_modulation.1."))) {
        if (src->shape[0] % 2) return fail(b, "%s: '%s%s' has an odd number of rows (%lld): not shift and scale halves", prefix, key, src->shape[0]);
        return sf_add_fmt(b, comp, src, SF_SWAP, "norm_out.linear.%s", r);
    }
    if ((r = sf_after(key, "double_blocks."))) {
        long n = sf_take_index(&r);
        if (n < 0) return SF_UNKNOWN;
        for (size_t i = 0; i < sizeof double_map / sizeof *double_map; i++) {
            const char *t = sf_after(r, double_map[i].bfl);
            if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "transformer_blocks.%ld.%s%s", n, double_map[i].diff, t);
        }
        const char *t;
        int img = (t = sf_after(r, "img_attn.qkv.")) != NULL;
        if (!img && !(t = sf_after(r, "txt_attn.qkv."))) return SF_UNKNOWN;
        if (strcmp(t, "weight") && strcmp(t, "bias")) return SF_UNKNOWN;
        if (src->shape[0] % 3) return fail(b, "%s: '%s%s' has %lld rows, not 3 equal q/k/v parts", prefix, key, src->shape[0]);
        char q[160], k[160], v[160];
        snprintf(q, sizeof q, "transformer_blocks.%ld.attn.%s.%s", n, img ? "to_q" : "add_q_proj", t);
        snprintf(k, sizeof k, "transformer_blocks.%ld.attn.%s.%s", n, img ? "to_k" : "add_k_proj", t);
        snprintf(v, sizeof v, "transformer_blocks.%ld.attn.%s.%s", n, img ? "to_v" : "add_v_proj", t);
        const char *names[3] = {q, k, v};
        int64_t h = src->shape[0] / 3, rows[3] = {h, h, h};
        return sf_split(b, comp, names, rows, 3, src);
    }
    if ((r = sf_after(key, "single_blocks."))) {
        long n = sf_take_index(&r);
        if (n < 0) return SF_UNKNOWN;
        for (size_t i = 0; i < sizeof single_map / sizeof *single_map; i++) {
            const char *t = sf_after(r, single_map[i].bfl);
            if (t) return sf_add_fmt(b, comp, src, SF_VIEW, "single_transformer_blocks.%ld.%s%s", n, single_map[i].diff, t);
        }
        const char *t = sf_after(r, "linear1.");
        if (!t || (strcmp(t, "weight") && strcmp(t, "bias"))) return SF_UNKNOWN;
        /* [3H + mlp, H]: the hidden size H is the weight's width */
        char wname[600];
        snprintf(wname, sizeof wname, "%ssingle_blocks.%ld.linear1.weight", prefix, n);
        const qd_st_tensor *w = sf_src(b, wname);
        if (!w || w->ndim != 2) {
            qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s%s' needs a 2-D '%s' beside it (an incomplete fused group)", sf_file(b),
                    prefix, key, wname);
            return SF_FAILED;
        }
        int64_t h = w->shape[1];
        if (h <= 0 || src->shape[0] <= 3 * h)
            return fail(b, "%s: '%s%s' has %lld rows, not 3 x hidden + MLP", prefix, key, src->shape[0]);
        char q[160], k[160], v[160], m[160];
        snprintf(q, sizeof q, "single_transformer_blocks.%ld.attn.to_q.%s", n, t);
        snprintf(k, sizeof k, "single_transformer_blocks.%ld.attn.to_k.%s", n, t);
        snprintf(v, sizeof v, "single_transformer_blocks.%ld.attn.to_v.%s", n, t);
        snprintf(m, sizeof m, "single_transformer_blocks.%ld.proj_mlp.%s", n, t);
        const char *names[4] = {q, k, v, m};
        int64_t rows[4] = {h, h, h, src->shape[0] - 3 * h};
        return sf_split(b, comp, names, rows, 4, src);
    }
    return SF_UNKNOWN;
}

/* Each block that appears must be whole: a fused tensor or one of its partners
 * missing would leave the diffusers block without some of its layers. */
qd_status sf_check_flux(sf_build *b, const char *prefix) {
    char name[600];
    for (int kind = 0; kind < 2; kind++) {
        const char *blk = kind ? "single_blocks" : "double_blocks";
        const char **req = kind ? single_required : double_required;
        for (long n = 0;; n++) {
            int present = 0, first_missing = -1;
            for (int i = 0; req[i]; i++) {
                snprintf(name, sizeof name, "%s%s.%ld.%s", prefix, blk, n, req[i]);
                if (sf_src(b, name)) present++;
                else if (first_missing < 0) first_missing = i;
            }
            if (!present) {
                /* blocks are numbered 0..N-1: a later one means a gap */
                snprintf(name, sizeof name, "%s%s.%ld.%s", prefix, blk, n + 1, req[0]);
                if (sf_src(b, name))
                    return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: %s.%ld is missing (block %ld exists)", sf_file(b), blk, n, n + 1);
                break;
            }
            if (first_missing >= 0)
                return qd_fail(sf_ctx(b), QD_ERR_FORMAT, "%s: '%s%s.%ld.%s' is missing (the rest of its block is there)",
                               sf_file(b), prefix, blk, n, req[first_missing]);
        }
    }
    return QD_OK;
}
