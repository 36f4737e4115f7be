/* diffusers' UNet2DConditionModel (0.32.2): the denoiser of SD1.5 and SDXL, built
 * from the unet folder's config.json and computed in float32 from the stored
 * weights (fp16/bf16/fp32, mapped and decoded tile by tile inside the GEMM).
 *
 * Supported: CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn (or no mid
 * block), CrossAttnUpBlock2D / UpBlock2D, positional time embedding and the SDXL
 * "text_time" addition embedding. Anything else in the config fails at load with
 * QD_ERR_UNSUPPORTED naming "<dir>/config.json". Activations are NCHW float32. */
#ifndef QD_MODELS_UNET_H
#define QD_MODELS_UNET_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_unet qd_unet;

typedef struct {                       /* parsed from config.json; what the pipeline needs */
    int in_channels, out_channels, sample_size, cross_attention_dim;
    int addition_time_embed_dim;       /* 0 unless addition_embed_type == "text_time" (SDXL) */
    int projection_class_embeddings_input_dim;   /* 0 when null */
} qd_unet_info;

/* dir = the "unet" folder (config.json + weights). Missing or misshapen tensors fail
 * naming the weights file and the tensor. */
qd_status qd_unet_load(qd_ctx *ctx, const char *dir, qd_unet **out);
void qd_unet_free(qd_unet *u);
/* Its loaded parameters (generation-time LoRAs attach to their weights). */
struct qd_params *qd_unet_params(qd_unet *u);
const qd_unet_info *qd_unet_get_info(const qd_unet *u);

/* unet(x, timestep, context, added_cond_kwargs).sample
 * x [B, in_ch, H, W], timestep [B] (float; diffusers passes the scheduler's t), context
 * [B, L, cross_dim], text_embeds [B, pooled_dim] and time_ids [B, 6] for text_time models
 * (NULL otherwise; pooled_dim = projection_class_embeddings_input_dim - 6 *
 * addition_time_embed_dim); out [B, out_ch, H, W]. H and W need not be multiples of
 * 2^(blocks-1): upsampling then targets the skip connection's size, as diffusers does.
 * Returns QD_ERR_CANCELLED if qd_cancel() was called (checked between blocks). */
qd_status qd_unet_forward(qd_ctx *ctx, qd_unet *u, const float *x, int64_t B, int64_t H, int64_t W,
                          const float *timestep, const float *context, int64_t L,
                          const float *text_embeds, const float *time_ids, float *out);

#endif
