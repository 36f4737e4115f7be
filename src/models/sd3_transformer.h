/* diffusers' SD3Transformer2DModel (0.32.2): the MMDiT denoiser of Stable Diffusion 3
 * and 3.5, built from the transformer folder's config.json and computed in float32
 * from the stored weights (bf16/fp16/fp32 or quantized, decoded inside the GEMM).
 *
 * Supported: PatchEmbed with the cropped 2-D sin-cos position table (pos_embed_max_size),
 * CombinedTimestepTextProjEmbeddings, JointTransformerBlock with AdaLayerNormZero (the
 * last block's context stream: AdaLayerNormContinuous, context_pre_only), qk_norm null or
 * "rms_norm", SD3.5's dual_attention_layers (SD35AdaLayerNormZeroX + attn2), norm_out,
 * proj_out and unpatchify. Anything else in the config fails at load with
 * QD_ERR_UNSUPPORTED or QD_ERR_FORMAT naming "<dir>/config.json".
 *
 * The position table is computed from the config in float32, as diffusers builds the
 * buffer; the checkpoint's (bf16-rounded) pos_embed.pos_embed is used instead only when
 * it is not a rounding of that table (a warning says so). */
#ifndef QD_MODELS_SD3_TRANSFORMER_H
#define QD_MODELS_SD3_TRANSFORMER_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_sd3 qd_sd3;

typedef struct {                       /* parsed from config.json; what the pipeline needs */
    int in_channels, out_channels, patch_size, sample_size;
    int joint_attention_dim, pooled_projection_dim, num_layers;
    int inner_dim;                     /* num_attention_heads * attention_head_dim */
} qd_sd3_info;

/* dir = the "transformer" folder (config.json + weights). Missing or misshapen tensors
 * fail naming the weights file and the tensor. */
qd_status qd_sd3_load(qd_ctx *ctx, const char *dir, qd_sd3 **out);
void qd_sd3_free(qd_sd3 *m);
/* Its loaded parameters (generation-time LoRAs attach to their weights). */
struct qd_params *qd_sd3_params(qd_sd3 *m);
const qd_sd3_info *qd_sd3_get_info(const qd_sd3 *m);

/* transformer(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
 * timestep=timestep).sample
 * x [B, in_channels, H, W] latents (H, W multiples of patch_size, at most
 * patch_size * pos_embed_max_size), timestep [B] (the pipeline passes t = sigma * 1000),
 * context [B, L, joint_attention_dim], pooled [B, pooled_projection_dim];
 * out [B, out_channels, H, W]. Returns QD_ERR_CANCELLED if qd_cancel() was called
 * (checked between blocks). */
qd_status qd_sd3_forward(qd_ctx *ctx, qd_sd3 *m, const float *x, int64_t B, int64_t H, int64_t W,
                         const float *timestep, const float *context, int64_t L, const float *pooled,
                         float *out);

#endif
