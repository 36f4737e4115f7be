/* Image-to-image: the pieces qd_generate (txt2img.c) and the k-sampler loop
 * (ksample_loop.c) add when qd_gen_params has init_image / init_latents. Which
 * part of the schedule runs (diffusers' get_timesteps, ComfyUI's denoise), the
 * init latents (VAE encode, sampled or mean, scaled), the checks. */
#ifndef QD_PIPELINE_IMG2IMG_H
#define QD_PIPELINE_IMG2IMG_H

#include "pipeline/model.h"
#include "base/rng.h"
#include "sample/scheduler.h"

/* Whether p asks for image-to-image. */
static inline int qd_img2img_on(const qd_gen_params *p) { return p->init_image || p->init_latents; }

/* The strength in effect: p->strength, or the family's diffusers Img2ImgPipeline default
 * (0.8 SD1.5, 0.3 SDXL, 0.6 SD3 and FLUX) when it is 0; with a mask, the InpaintPipeline's
 * (1.0 SD1.5, 0.9999 SDXL, 0.6 SD3 and FLUX). */
double qd_img2img_strength(const qd_model *m, const qd_gen_params *p);

/* diffusers' get_timesteps: t_start = max(steps - min(int(steps * strength), steps), 0),
 * the number of schedule steps skipped (before multiplying by scheduler.order). */
int qd_img2img_t_start(int steps, double strength);

/* ComfyUI KSampler.set_steps: the schedule is computed for int(steps / denoise) steps
 * (steps when denoise > 0.9999) and its last steps + 1 sigmas are used. */
int qd_img2img_comfy_steps(int steps, double denoise);

/* Validate the image-to-image fields of a resolved p (strength range, init_count, a
 * strength that leaves no step): QD_ERR_ARG with a message naming the problem. */
qd_status qd_img2img_check(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p);

/* The init latents for `batch` items, [batch, C, h, w] (unpacked) in the model's latent
 * space: p->init_latents copied, or p->init_image VAE-encoded. rng != NULL: sampled as
 * diffusers' retrieve_latents(vae.encode(image), generator) does, mean + std * randn
 * with one randn draw of [init_count, C, h, w]; rng NULL: the mean (ComfyUI's
 * VAEEncode). Then (x - shift_factor) * scaling_factor, and items repeated when one
 * image serves the batch. */
qd_status qd_img2img_latents(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, int64_t batch, qd_rng *rng,
                             float *out);

/* *begin = t_start x the scheduler's order (get_timesteps), made the scheduler's begin
 * index (set_begin_index): where every image-to-image and inpainting run starts. */
qd_status qd_img2img_begin(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, qd_scheduler *s, int *begin);

/* The diffusers classes' start: the init latents sampled from rng (qd_img2img_latents),
 * *begin = t_start * scheduler.order made the scheduler's first step
 * (qd_scheduler_set_begin), noise = the next randn of [batch, C, h, w] from rng, and
 * out = add_noise(latents, noise, timesteps[*begin]) unpacked [batch, C, h, w]. p resolved
 * and checked (qd_img2img_check); the scheduler's timesteps set. */
qd_status qd_img2img_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                           qd_rng *rng, int *begin, float *out);

#endif
