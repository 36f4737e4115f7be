/* diffusers' AutoencoderKL (0.32.2): the KL VAE of SD1.5, SDXL, SD3.x and FLUX.1,
 * built from the vae folder's config.json and computed in float32 from the
 * stored weights (mapped, decoded tile by tile inside the GEMM).
 *
 * Activations are NCHW float32. Peak memory stays at about three activation
 * buffers of the largest (full-resolution) stage; large images are processed in
 * overlapping tiles (qd_set_vae_tiling, vae_tiles.h) so that stage is a tile's. */
#ifndef QD_MODELS_VAE_H
#define QD_MODELS_VAE_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_vae qd_vae;

typedef struct {
    int latent_channels, in_channels, out_channels;
    int downscale;              /* image side / latent side: 2^(blocks-1) */
    float scaling_factor;
    float shift_factor;         /* 0 when null in the config */
} qd_vae_info;

/* dir = the "vae" folder (config.json + weights). An unsupported config fails with
 * QD_ERR_UNSUPPORTED naming "<dir>/config.json"; missing or misshapen tensors fail
 * naming the weights file and the tensor. */
qd_status qd_vae_load(qd_ctx *ctx, const char *dir, qd_vae **out);
void qd_vae_free(qd_vae *v);
const qd_vae_info *qd_vae_get_info(const qd_vae *v);

/* vae.decode(z).sample: z [B, latent_ch, h, w] (already divided by scaling_factor
 * and shifted by the caller) -> img [B, out_ch, h*f, w*f], f = downscale. In tiles
 * when the context's tiling rule (qd_set_vae_tiling) says so, else in one pass. */
qd_status qd_vae_decode(qd_ctx *ctx, qd_vae *v, const float *z, int64_t B, int64_t h, int64_t w, float *img);

/* vae.encode(img).latent_dist: img [B, in_ch, H, W] -> mean and logvar
 * [B, latent_ch, H/f, W/f] (integer division, as the stride-2 convs floor), logvar
 * clamped to [-30, 20] as diffusers does. H and W must be at least f. Tiled like
 * qd_vae_decode. */
qd_status qd_vae_encode(qd_ctx *ctx, qd_vae *v, const float *img, int64_t B, int64_t H, int64_t W,
                        float *mean, float *logvar);

#endif
