/* The tiny autoencoders of madebyollin/taesd (TAESD family): taesd (SD1.x/2),
 * taesdxl, taesd3, taef1, taef2 (FLUX.2: GroupNorm "pool" in the blocks nearest
 * the latent) and the 32x variant (taesana). Computed in float32 from the
 * stored weights.
 *
 * The architecture is read from the tensors, never from file names: which of
 * encoder/decoder a tensor set holds, the latent channels, 8x or 32x, and which
 * blocks carry the GroupNorm pool. Accepted key spellings:
 *   "0.weight", "1.conv.0.weight", ...            taesd.py's nn.Sequential indices
 *   "encoder.layers.N.", "decoder.layers.N."      diffusers' AutoencoderTiny (decoder N = index - 1)
 *   "taesd_encoder.N.", "taesd_decoder.N."        ComfyUI's combined file
 *
 * Conventions (taesd.py): the encoder takes images in [0, 1] and returns the
 * latents the diffusion model works in (already "scaled": no scaling_factor);
 * the decoder returns images in about [0, 1] (the caller clamps). */
#ifndef QD_MODELS_TAESD_H
#define QD_MODELS_TAESD_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"

typedef struct qd_taesd qd_taesd;

typedef struct {
    int latent_channels;    /* 0 until a coder is added */
    int downscale;          /* 8, or 32 for the f32 variant */
    int has_encoder, has_decoder;
    int pool_blocks;        /* blocks with the GroupNorm pool (taef2: 3 per coder) */
    const char *variant;    /* best guess for messages: "taesd/taesdxl", "taesd3/taef1", "taef2", "taesana", ... */
} qd_taesd_info;

qd_taesd *qd_taesd_new(qd_ctx *ctx);
void qd_taesd_free(qd_taesd *t);

/* Load the encoder and/or decoder found among `tensors` (n of them, sorted by
 * name as qd_st_set keeps them). The tensors' data must outlive the model.
 * `file` names the source in messages. Fails when the set holds neither, when a
 * coder is given twice, or when encoder and decoder disagree on the latent space. */
qd_status qd_taesd_add(qd_ctx *ctx, qd_taesd *t, const qd_st_tensor *tensors, int64_t n, const char *file);

const qd_taesd_info *qd_taesd_get_info(const qd_taesd *t);

/* img [B, 3, H, W] in [0, 1] -> latent [B, C, H/f, W/f]; H and W multiples of f. */
qd_status qd_taesd_encode(qd_ctx *ctx, qd_taesd *t, const float *img, int64_t B, int64_t H, int64_t W,
                          float *latent);

/* latent [B, C, h, w] -> img [B, 3, h*f, w*f], unclamped. */
qd_status qd_taesd_decode(qd_ctx *ctx, qd_taesd *t, const float *latent, int64_t B, int64_t h, int64_t w,
                          float *img);

#endif
