/* diffusers' FluxTransformer2DModel (0.32.2): the denoiser of FLUX.1 [dev] / [schnell]
 * (and the Fill / Depth / Canny variants, which differ only in in_channels), built
 * from the transformer folder's config.json and computed in float32 from the stored
 * weights (bf16/fp16/fp32 or quantized, decoded inside the GEMM).
 *
 * Supported: x_embedder, CombinedTimestep(Guidance)TextProjEmbeddings, context_embedder,
 * FluxPosEmbed (3-axis RoPE, theta 10000), FluxTransformerBlock x num_layers,
 * FluxSingleTransformerBlock x num_single_layers, norm_out (AdaLayerNormContinuous),
 * proj_out; patch_size 1 (every FLUX.1 checkpoint). Anything else in the config fails
 * at load with QD_ERR_UNSUPPORTED or QD_ERR_FORMAT naming "<dir>/config.json".
 * Not supported: ControlNet residuals, IP-Adapter, LoRA scale (joint_attention_kwargs). */
#ifndef QD_MODELS_FLUX_TRANSFORMER_H
#define QD_MODELS_FLUX_TRANSFORMER_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_flux qd_flux;

typedef struct {                       /* parsed from config.json; what the pipeline needs */
    int in_channels, out_channels;     /* out_channels: null in the config means in_channels */
    int joint_attention_dim, pooled_projection_dim;
    int num_layers, num_single_layers;
    int inner_dim;                     /* num_attention_heads * attention_head_dim */
    int guidance_embeds;               /* 1: forward needs guidance (FLUX.1 dev) */
    int axes_dims_rope[3];
} qd_flux_info;

/* dir = the "transformer" folder (config.json + weights). Missing or misshapen tensors
 * fail naming the weights file and the tensor. */
qd_status qd_flux_load(qd_ctx *ctx, const char *dir, qd_flux **out);
void qd_flux_free(qd_flux *m);
/* Its loaded parameters (generation-time LoRAs attach to their weights). */
struct qd_params *qd_flux_params(qd_flux *m);
const qd_flux_info *qd_flux_get_info(const qd_flux *m);

/* transformer(hidden_states, encoder_hidden_states=context, pooled_projections=pooled,
 * timestep, img_ids, txt_ids, guidance).sample
 * hidden [B, N_img, in_channels] packed 2x2 latents; timestep [B] as FluxPipeline passes
 * it: t / 1000 (sigma), the model multiplies by 1000; guidance [B] (the guidance scale,
 * also multiplied by 1000 inside) when guidance_embeds, else NULL (QD_ERR_ARG
 * otherwise, as diffusers refuses the mismatch); pooled [B, pooled_projection_dim];
 * context [B, L, joint_attention_dim]; img_ids [N_img, 3], txt_ids [L, 3] (shared by
 * the batch); out [B, N_img, out_channels]. Returns QD_ERR_CANCELLED if qd_cancel()
 * was called (checked between blocks). */
qd_status qd_flux_forward(qd_ctx *ctx, qd_flux *m, const float *hidden, int64_t B, int64_t N_img,
                          const float *timestep, const float *guidance, const float *pooled,
                          const float *context, int64_t L, const float *img_ids, const float *txt_ids, float *out);

#endif
