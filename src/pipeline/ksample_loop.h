/* The generation loop with a ComfyUI / k-diffusion sampler (qd_gen_params.sampler):
 * txt2img.c sets up conditioning and buffers as for a diffusers scheduler and
 * hands the loop over to qd_ksample_loop. */
#ifndef QD_PIPELINE_KSAMPLE_LOOP_H
#define QD_PIPELINE_KSAMPLE_LOOP_H

#include "pipeline/model.h"
#include "sample/scheduler.h"

/* One model evaluation: `rows` latents x in the model's input space (already
 * scaled by c_in), model timestep t, raw output (eps, v or flow velocity) into out. */
typedef qd_status (*qd_ks_model_fn)(qd_ctx *ctx, void *user, const float *x, float t, float *out);

/* The scheduler that describes the model's noise for the k-sampler path: the
 * folder's scheduler_config.json read as EulerDiscreteScheduler (eps / v models:
 * alphas_cumprod, prediction_type, timestep_spacing) or
 * FlowMatchEulerDiscreteScheduler (flow models: shift, dynamic shifting), with
 * the scheduler_options keys that describe the model's noise (betas,
 * prediction_type, rescale_betas_zero_snr, timestep_spacing, shift...). The
 * k-sampler's own keys are read by qd_ksample_loop; any other key (including
 * the class's schedule keys such as use_karras_sigmas) draws a warning. Also
 * checks the sampler and schedule names. */
qd_status qd_ksample_scheduler(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, qd_scheduler **out);

/* The sigmas qd_ksample_loop runs over for p (resolved), img2img: with an init latent
 * (p->strength as ComfyUI's denoise). *sig (free() it) gets *n_sig = steps + 1 values. */
qd_status qd_ksample_sigmas(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_scheduler *s,
                            int img2img, double **sig, int *n_sig);

/* Sample with p->sampler over p->schedule for p->steps: draw the initial noise
 * from p->seed (p->noise_mode), call model() on `rows` latents (rows = 2 * batch
 * with classifier-free guidance, unconditional rows first), apply CFG (and
 * guidance_rescale), report progress and previews, honour cancellation. p must
 * be resolved (qd_gen_params_resolve). latents [batch, per] (FLUX: packed)
 * receive the final sample. init: NULL (text-to-image: a zero latent), or the
 * image-to-image start [batch, per] (packed), noised to the first sigma of the
 * denoise-shortened schedule (p->strength) as ComfyUI's KSampler does. mask: NULL, or
 * (inpainting, with init) ComfyUI's noise mask on the latent grid [batch, per] (packed):
 * every model call sees x * mask + noise_scaling(sigma, noise, init) * (1 - mask) and
 * returns x0 * mask + init * (1 - mask), as ComfyUI's KSampler with SetLatentNoiseMask. */
qd_status qd_ksample_loop(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_scheduler *s,
                          qd_ks_model_fn model, void *model_user, const float *init, const float *mask,
                          float *latents, int64_t batch, int64_t per, int64_t rows);

#endif
