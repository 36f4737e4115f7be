/* Default skip lists and the dynamic type order. */
#include "convert/quant_rules.h"
#include "quant/sdnq_unpack.h"

#include <stdio.h>
#include <string.h>

/* §1.3, per class. "Any other class" gets the common list plus the class's
 * _skip_layerwise_casting_patterns / _keep_in_fp32_modules / _tied_weights_keys,
 * spelled out below for the classes qdiff loads. */
#define COMMON ".time_embed", ".context_embedder", ".condition_embedder", ".x_embedder", ".t_embedder", ".y_embedder", \
    ".proj_in", ".emb_in", ".txt_in", ".img_in", ".vid_in", ".proj_out", ".norm_out", ".emb_out", ".txt_out", \
    ".img_out", ".vid_out", ".final_layer", "multi_modal_projector", "time_text_embed", "patch_embedding", \
    "patch_embed", "patch_emb", "lm_head", "wte"

static const char *const flux[] = {"single_transformer_blocks.0.norm.linear.weight", "time_text_embed", "time_embed",
                                   "context_embedder", "x_embedder", ".proj_out", "norm_out", NULL};
static const char *const flux2[] = {"double_stream_modulation_img", "double_stream_modulation_txt",
                                    "single_stream_modulation", "time_guidance_embed", "context_embedder",
                                    "x_embedder", ".proj_out", "norm_out", NULL};
static const char *const qwen[] = {"transformer_blocks.0.img_mod.1.weight", "time_text_embed", "txt_in", "img_in",
                                   "proj_out", "norm_out", NULL};
static const char *const zimage[] = {"layers.0.adaLN_modulation.0.weight", "t_embedder", "cap_embedder",
                                     "siglip_embedder", "all_x_embedder", "all_final_layer", NULL};
static const char *const wan[] = {"scale_shift_table", "patch_embedding", "condition_embedder", "proj_out", "norm_out", NULL};
static const char *const chroma[] = {"distilled_guidance_layer", "time_text_embed", "context_embedder", "x_embedder",
                                     ".proj_out", "norm_out", NULL};
static const char *const unet[] = {COMMON, "norm", NULL};                  /* _skip_layerwise_casting_patterns */
static const char *const sd3[] = {COMMON, "pos_embed", "norm", NULL};
static const char *const t5[] = {COMMON, "wo", "encoder.embed_tokens.weight", NULL};  /* _keep_in_fp32_modules, tied */
static const char *const common[] = {COMMON, NULL};

const char *const *qd_quant_default_skips(const char *c) {
    static const struct { const char *cls; const char *const *list; } table[] = {
        {"FluxTransformer2DModel", flux}, {"Flux2Transformer2DModel", flux2},
        {"QwenImageTransformer2DModel", qwen}, {"ZImageTransformer2DModel", zimage},
        {"WanTransformer3DModel", wan}, {"ChronoEditTransformer3DModel", wan},
        {"ChromaTransformer2DModel", chroma}, {"UNet2DConditionModel", unet},
        {"SD3Transformer2DModel", sd3}, {"T5EncoderModel", t5},
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (c && !strcmp(c, table[i].cls)) return table[i].list;
    return common;
}

static int add(char (*all)[40], int n, const char *name) {
    qd_sdnq_dtype d;
    if (n >= QD_QUANT_MAX_ORDER || qd_sdnq_dtype_parse(name, &d) != 0) return n;
    snprintf(all[n], sizeof all[n], "%s", d.name);
    return n + 1;
}

int qd_quant_dynamic_order(const char *start, int codebook, char (*names)[40], int cap) {
    char all[QD_QUANT_MAX_ORDER][40];
    int n = 0;
    char buf[40];
    for (int b = 1; b <= 16; b++) {
        if (b >= 2 && !codebook) { snprintf(buf, sizeof buf, "int%d", b); n = add(all, n, buf); }
        for (int e = 1; e <= 5 && !codebook; e++) {
            int m = b - 1 - e;
            if (m < 0) break;
            if (b == 8 && e == 4) snprintf(buf, sizeof buf, "float8_e4m3fn_sdnq");
            else snprintf(buf, sizeof buf, "float%d_e%dm%dfn", b, e, m);
            n = add(all, n, buf);
        }
        snprintf(buf, sizeof buf, "uint%d", b);
        n = add(all, n, buf);
        for (int e = 1; e <= 5 && !codebook; e++) {
            int m = b - e;
            if (m < 0) break;
            snprintf(buf, sizeof buf, "float%d_e%dm%dfnu", b, e, m);
            n = add(all, n, buf);
        }
    }
    qd_sdnq_dtype s;
    int have = qd_sdnq_dtype_parse(start, &s) == 0;
    int k = 0, from = -1;
    for (int i = 0; i < n; i++)
        if (have && !strcmp(all[i], s.name)) { from = i; break; }
    if (from < 0) {   /* a type outside the order (native floats): itself, then wider types */
        if (have && k < cap) snprintf(names[k++], 40, "%s", s.name);
        for (int i = 0; i < n && k < cap; i++) {
            qd_sdnq_dtype d;
            qd_sdnq_dtype_parse(all[i], &d);
            if (have && d.bits > s.bits) snprintf(names[k++], 40, "%s", all[i]);
        }
        return k;
    }
    for (int i = from; i < n && k < cap; i++) snprintf(names[k++], 40, "%s", all[i]);
    return k;
}
