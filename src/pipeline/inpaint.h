/* Inpainting (qd_gen_params.mask): the pieces qd_generate (txt2img.c) and the k-sampler
 * loop (ksample_loop.c) add to image-to-image. The mask on the latent grid (diffusers:
 * binarized + nearest; ComfyUI: bilinear), the diffusers start (strength 1, the masked
 * image's generator draw) and the blend. */
#ifndef QD_PIPELINE_INPAINT_H
#define QD_PIPELINE_INPAINT_H

#include "pipeline/model.h"
#include "base/rng.h"
#include "sample/scheduler.h"

/* Validate p->mask (if any) for a resolved p: an init image or latents, mask_count 0, 1
 * or init_count, values finite in [0, 1]. QD_ERR_ARG naming the problem. */
qd_status qd_inpaint_check(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p);

/* diffusers' mask_processor (do_binarize: >= 0.5 -> 1, else 0) followed by
 * torch.nn.functional.interpolate(mask, size=(h, w)) (mode "nearest":
 * src = min(floor(dst * (float)(H / h)), H - 1)). mask [H, W] -> out [h, w]. */
void qd_inpaint_mask_nearest(const float *mask, int64_t H, int64_t W, int64_t h, int64_t w, float *out);

/* ComfyUI's prepare_mask: interpolate(mode "bilinear", align_corners False), soft.
 * mask [H, W] -> out [h, w]. */
void qd_inpaint_mask_bilinear(const float *mask, int64_t H, int64_t W, int64_t h, int64_t w, float *out);

/* The mask of every batch item on the latent grid repeated over the C channels, in the
 * loop's layout ([B, C, h, w]; FLUX packed [B, tokens, 4C]): out holds B * per floats.
 * bilinear: ComfyUI's resize, else diffusers'. */
qd_status qd_inpaint_latent_mask(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, int64_t B, int bilinear,
                                 float *out);

/* A1111's latent "Masked content" (p->masked_content LATENT_NOISE / LATENT_NOTHING; else
 * nothing happens): in the unpacked latents x [B, C, h, w], the cells where the latent mask
 * (bilinear: ComfyUI's resize, else diffusers' nearest) is >= 0.5 become noise's (the run's
 * initial noise, same layout) or 0. */
qd_status qd_inpaint_latent_fill(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, int64_t B, int bilinear,
                                 const float *noise, float *x);

/* x = (1 - mask) * keep + mask * x, as diffusers writes it (float). */
void qd_inpaint_blend(const float *mask, const float *keep, float *x, int64_t n);

/* The diffusers InpaintPipelines' start for an ordinary denoiser (unpacked [batch, C, h, w]
 * outputs): image latents sampled from rng (as image-to-image), noise = the next randn,
 * latents = noise * init_noise_sigma at strength 1 (SD1.5/SDXL is_strength_max) or
 * add_noise / scale_noise(image latents, noise, timesteps[*begin]); then the masked
 * image's encode draw (prepare_mask_latents' retrieve_latents, [init_count, C, h, w],
 * its values unused by a 4/16-channel denoiser) when an image (not latents) was given. */
qd_status qd_inpaint_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                           qd_rng *rng, int *begin, float *latents, float *image_latents, float *noise);

/* Whether m's UNet is an inpainting UNet (in_channels = 2 * latent channels + 1: the noisy
 * latents, the mask and the masked image's latents concatenated on the channel axis). */
int qd_inpaint_concat_unet(const qd_model *m);

/* The diffusers InpaintPipelines' start for a concat (9-channel) UNet, p resolved and checked:
 * image latents encoded (a draw from rng) only when strength < 1, noise = the next randn,
 * latents = noise * init_noise_sigma at strength 1 else add_noise(image latents, noise,
 * timesteps[*begin]); then prepare_mask_latents: cond [batch, 1 + C, h, w] = the nearest mask
 * on the latent grid and the latents of init_image * (mask < 0.5) (sampled: the next draw
 * from rng, [init_count, C, h, w]). */
qd_status qd_inpaint_concat_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                                  qd_rng *rng, int *begin, float *latents, float *cond);

/* ComfyUI's InpaintModelConditioning for a concat UNet on the k-sampler path, p resolved and
 * checked: cond [batch, 1 + C, h, w] = round(bilinear(mask) on the latent grid) (torch.round:
 * halves to even) and the latents (the encoder's mean, scaled, as VAEEncode then
 * process_latent_in) of the image with the pixels where round(mask) = 1 set to 0.5. No draw. */
qd_status qd_inpaint_concat_cond_comfy(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, int64_t batch, float *cond);

#endif
