/* Image-to-image as diffusers 0.32.2's StableDiffusionImg2ImgPipeline,
 * StableDiffusionXLImg2ImgPipeline, StableDiffusion3Img2ImgPipeline and
 * FluxImg2ImgPipeline (pipelines/<family>/pipeline_<family>_img2img.py, Apache-2.0) do it, and as
 * ComfyUI's VAEEncode + KSampler(denoise) behave for the k-sampler path:
 *   - get_timesteps: init_timestep = min(int(steps * strength), steps),
 *     t_start = max(steps - init_timestep, 0); timesteps[t_start * order:] run and
 *     scheduler.set_begin_index(t_start * order) makes add_noise / scale_noise use
 *     sigmas[t_start * order];
 *   - prepare_latents: retrieve_latents(vae.encode(image), generator) with the
 *     default sample_mode "sample" (latent_dist.sample: mean + std * randn from the
 *     pipeline's generator, drawn before the noise), then scaling_factor * x (SD1.5,
 *     SDXL without latents_mean/std) or (x - shift_factor) * scaling_factor (SD3,
 *     FLUX); one image for a larger batch is repeated; noise = randn_tensor(shape,
 *     generator) of the unpacked shape, then add_noise / scale_noise; FLUX packs after.
 *   - latents given directly (image.shape[1] == latent channels) skip the encode
 *     and its draws, as in those pipelines.
 * The preprocessing (resize to the size, [0,1] -> [-1,1]) is VaeImageProcessor's: the
 * library takes the image already at the output size; the CLI resizes. */
#include "pipeline/img2img.h"
#include "base/ctx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double qd_img2img_strength(const qd_model *m, const qd_gen_params *p) {
    if (p->strength != 0) return p->strength;
    if (p->mask) switch (m->family) {   /* the __call__ defaults of each InpaintPipeline */
        case QD_FAMILY_SD15: return 1.0;
        case QD_FAMILY_SDXL: return 0.9999;
        default: return 0.6;
        }
    switch (m->family) {   /* the __call__ defaults of each Img2ImgPipeline */
    case QD_FAMILY_SD15: return 0.8;
    case QD_FAMILY_SDXL: return 0.3;
    default: return 0.6;   /* SD3, FLUX */
    }
}

int qd_img2img_t_start(int steps, double strength) {
    double prod = steps * strength;
    int init = prod >= steps ? steps : (int)prod;   /* Python int(): truncation */
    int t = steps - init;
    return t > 0 ? t : 0;
}

int qd_img2img_comfy_steps(int steps, double denoise) {
    if (denoise > 0.9999) return steps;
    double total = steps / denoise;
    return total >= 1e6 ? 1000000 : (int)total;
}

qd_status qd_img2img_check(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p) {
    if (p->init_image && p->init_latents)
        return qd_fail(ctx, QD_ERR_ARG, "image-to-image: give init_image or init_latents, not both");
    double s = qd_img2img_strength(m, p);
    if (!(s > 0 && s <= 1))
        return qd_fail(ctx, QD_ERR_ARG, "strength (denoise) must be in (0, 1] (got %g)", p->strength);
    int count = p->init_count > 0 ? p->init_count : 1;
    if (p->init_count < 0 || (count != 1 && count != p->batch))
        return qd_fail(ctx, QD_ERR_ARG, "image-to-image: %d init images for a batch of %d (give 1 or %d)",
                       p->init_count, p->batch, p->batch);
    if (p->sampler) {
        if (qd_img2img_comfy_steps(p->steps, s) > 100000)
            return qd_fail(ctx, QD_ERR_ARG, "denoise %g with %d steps needs a schedule of %d steps (at most 100000)",
                           s, p->steps, qd_img2img_comfy_steps(p->steps, s));
    } else if (p->steps - qd_img2img_t_start(p->steps, s) < 1) {
        /* diffusers: "the number of pipeline steps is 0 which is < 1 and not appropriate" */
        return qd_fail(ctx, QD_ERR_ARG, "strength %g with %d steps leaves no step to run (int(steps * strength) "
                       "must be at least 1): raise the strength or the steps", s, p->steps);
    }
    return QD_OK;
}

/* One image, NHWC [0,1] -> NCHW [-1,1] (VaeImageProcessor.normalize). */
static void to_nchw(const float *src, int64_t H, int64_t W, float *dst) {
    int64_t S = H * W;
    for (int64_t i = 0; i < S; i++)
        for (int c = 0; c < 3; c++) dst[c * S + i] = src[i * 3 + c] * 2.0f - 1.0f;
}

qd_status qd_img2img_latents(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, int64_t batch, qd_rng *rng,
                             float *out) {
    int64_t count = p->init_count > 0 ? p->init_count : 1;
    int64_t H = p->height, W = p->width, h = H / m->vae_scale, w = W / m->vae_scale;
    int64_t per = (int64_t)m->latent_channels * h * w;
    if (p->init_latents) {
        memcpy(out, p->init_latents, sizeof(float) * (size_t)(count * per));
    } else {
        const qd_vae_info *vi = qd_vae_get_info(m->vae);
        float *img = malloc(sizeof(float) * (size_t)(3 * H * W)), *logvar = malloc(sizeof(float) * (size_t)(count * per));
        float *e = rng ? malloc(sizeof(float) * (size_t)(count * per)) : NULL;
        qd_status st = img && logvar && (e || !rng) ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        for (int64_t b = 0; st == QD_OK && b < count; b++) {   /* one image at a time: activations dominate */
            for (int64_t i = 0; i < 3 * H * W; i++)
                if (!isfinite(p->init_image[b * 3 * H * W + i])) {
                    st = qd_fail(ctx, QD_ERR_ARG, "init image %lld holds a non-finite value", (long long)b);
                    break;
                }
            if (st != QD_OK) break;
            to_nchw(p->init_image + b * 3 * H * W, H, W, img);
            st = qd_vae_encode(ctx, m->vae, img, 1, H, W, out + b * per, logvar + b * per);
            if (st == QD_OK) st = qd_op_status(ctx);
        }
        if (st == QD_OK && rng) {   /* DiagonalGaussianDistribution.sample: mean + exp(0.5 logvar) * randn */
            qd_rng_randn(rng, e, count * per);
            for (int64_t i = 0; i < count * per; i++) out[i] = out[i] + expf(0.5f * logvar[i]) * e[i];
        }
        if (st == QD_OK)
            for (int64_t i = 0; i < count * per; i++) out[i] = (out[i] - vi->shift_factor) * vi->scaling_factor;
        free(img);
        free(logvar);
        free(e);
        QD_TRY(st);
    }
    for (int64_t b = count; b < batch; b++) memcpy(out + b * per, out, sizeof(float) * (size_t)per);
    return QD_OK;
}

qd_status qd_img2img_begin(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, qd_scheduler *s, int *begin) {
    *begin = qd_img2img_t_start(p->steps, qd_img2img_strength(m, p)) * qd_scheduler_order(s);
    return qd_scheduler_set_begin(ctx, s, *begin);
}

qd_status qd_img2img_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                           qd_rng *rng, int *begin, float *out) {
    int64_t n = batch * (int64_t)m->latent_channels * (p->height / m->vae_scale) * (p->width / m->vae_scale);
    QD_TRY(qd_img2img_begin(ctx, m, p, s, begin));
    QD_TRY(qd_img2img_latents(ctx, m, p, batch, rng, out));   /* the encode's draw comes first */
    float *noise = malloc(sizeof(float) * (size_t)n);
    if (!noise) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_rng_randn(rng, noise, n);
    qd_scheduler_add_noise(s, *begin, out, noise, n, out);
    free(noise);
    return QD_OK;
}
