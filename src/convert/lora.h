/* LoRA merging before quantization (spec comfy-quant.md §2.8, issue 5 item 3):
 * W += scale_f * dampen^i * (alpha / rank) * up . down for every LoRA pair that names W,
 * where scale_f is the file's scale and i the pair's position among the pairs applied to
 * that weight, in file order (the fork's documented 0.9^i rule; the fork itself applies
 * it twice, spec §2.8, which we do not copy).
 *
 * Key conventions understood (the weight name is matched after both sides are
 * normalized: prefixes stripped, '.' -> '_', lower case):
 *   kohya     lora_unet_<name>.lora_down.weight / .lora_up.weight / .alpha,
 *             lora_te_ / lora_te1_ (text_encoder), lora_te2_ (text_encoder_2),
 *             lora_transformer_ (transformer); SDXL/FLUX kohya files use the
 *             original checkpoint's names (input_blocks_..., double_blocks_...).
 *             An LDM UNet name (input_blocks_/middle_block_/output_blocks_/time_embed_/
 *             label_emb_/out_ + LDM module words) is kept and also mapped to its
 *             diffusers name by the single-file LDM map (qd_sf_ldm_unet_name, 2 resnets
 *             per level), so it matches LDM single files and diffusers UNets alike.
 *   diffusers unet.<name>.lora.down.weight / .lora.up.weight, unet./transformer./
 *             text_encoder[_2]. + <name>.lora_A.weight / .lora_B.weight, and the old
 *             attention-processor form <...>.processor.to_q_lora.down.weight.
 *   PEFT      base_model.model.<name>.lora_A.weight / .lora_B.weight (any component).
 *   BFL/ComfyUI diffusion_model.<name>.lora_A.weight / lora_down (the denoiser).
 * FLUX: BFL names (double_blocks.N.img_attn.qkv, single_blocks.N.linear1, img_mod.lin, ...)
 * and diffusers names (transformer_blocks.N.attn.to_q, ...) are both mapped to diffusers'
 * names; a fused layer is split by rows (qkv: three equal thirds; linear1: q, k, v of the
 * hidden size each, then proj_mlp), so a diffusers LoRA merges into a BFL checkpoint's fused
 * qkv/linear1 rows and a BFL LoRA's fused up is split over separate to_q/to_k/to_v (down
 * shared). A part whose rows or inputs differ from the weight's is an error.
 * alpha: the "<base>.alpha" tensor; else, for lora_A/lora_B pairs with PEFT's
 * adapter_config.json beside the file, its lora_alpha and r (rank_pattern/alpha_pattern
 * per module, "(.*\.)?(KEY)$" as PEFT matches them; use_rslora: alpha/sqrt(r)); else the
 * header metadata "<base with _>_alpha" (what the fork reads); else the rank. Linear and
 * conv LoRAs (down [r, in, kh, kw], up [out, r, 1, 1]); LoHa, LoKr, DoRA and Tucker
 * (lora_mid) files are refused. */
#ifndef QD_CONVERT_LORA_H
#define QD_CONVERT_LORA_H

#include <stdint.h>
#include "base/ctx.h"

/* qd_lora_set_open, qd_lora_apply, qd_lora_set_report, qd_lora_set_check and
 * qd_lora_set_free are declared in qdiff.h. */

/* How many pairs would apply to this weight of the given shape (no arithmetic; to decide
 * whether an otherwise copied tensor must be converted). */
int qd_lora_touches(const qd_lora_set *set, const char *component, const char *tensor_name, const int64_t *shape,
                    int ndim);

/* Generation-time LoRA: the low-rank form of the deltas qd_lora_apply would add to this
 * weight ([rows, cols...]): delta = B . A with A [rank, cols] (the downs stacked) and
 * B [rows, rank] (each up times its factor, in its rows; zero elsewhere). Returns the
 * number of pairs (0: *A = *B = NULL), or -1 with the error in ctx. Counts as applied. */
int qd_lora_factors(qd_ctx *ctx, qd_lora_set *set, const char *component, const char *tensor_name,
                    const int64_t *shape, int ndim, float **A, float **B, int64_t *rank);

#endif
