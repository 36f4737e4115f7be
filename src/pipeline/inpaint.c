/* Inpainting for ordinary (4/16-channel) denoisers.
 * Diffusers classes, as diffusers 0.32's StableDiffusionInpaintPipeline,
 * StableDiffusionXLInpaintPipeline, StableDiffusion3InpaintPipeline and FluxInpaintPipeline
 * (pipelines/<family>/pipeline_<family>_inpaint.py, Apache-2.0) do it when the denoiser's
 * in_channels equal the latent channels:
 *   - mask_processor = VaeImageProcessor(do_normalize=False, do_binarize=True,
 *     do_convert_grayscale=True): mask >= 0.5 -> 1, else 0, at the pixel size;
 *   - prepare_latents: image_latents = _encode_vae_image(image, generator) (the sampled
 *     latent_dist: the first draw), noise = randn_tensor(shape, generator), latents =
 *     noise (* init_noise_sigma) when strength == 1 (is_strength_max, SD/SDXL/SD3; the
 *     flow schedulers' scale_noise at sigma 1 gives the same), else add_noise /
 *     scale_noise(image_latents, noise, timesteps[0]);
 *   - prepare_mask_latents: mask = F.interpolate(mask, size=(h, w)) (mode "nearest"),
 *     masked_image = init_image * (mask < 0.5) encoded with the generator (a draw of
 *     [images, C, h, w]; the 4/16-channel path never reads its values, so it is drawn and
 *     dropped here), nothing drawn when latents were given;
 *   - the loop, after scheduler.step: init_latents_proper = image_latents, noised with
 *     scheduler.add_noise / scale_noise(.., noise, timesteps[i + 1]) unless i is the last
 *     step; latents = (1 - init_mask) * init_latents_proper + init_mask * latents.
 * Concat (9-channel) UNets, as the same StableDiffusion(XL)InpaintPipeline do when
 * unet.config.in_channels == 9 (num_channels_unet != 4):
 *   - prepare_latents(return_image_latents=False): the image is encoded (its draw) only
 *     when not is_strength_max; latents = noise * init_noise_sigma at strength 1, else
 *     add_noise(image_latents, noise, latent_timestep);
 *   - prepare_mask_latents: mask_condition binarized at the pixel size, masked_image =
 *     init_image * (mask_condition < 0.5) in [-1, 1] (masked pixels become 0, mid gray),
 *     masked_image_latents = scaling_factor * _encode_vae_image(masked_image, generator)
 *     (sampled: the draw after the noise), mask = F.interpolate(mask, size=(h, w))
 *     (nearest); both repeated to the batch (and duplicated for CFG);
 *   - each step: latent_model_input = cat([scale_model_input(latents), mask,
 *     masked_image_latents], dim=1); no blend after scheduler.step.
 * Without an image or a mask those pipelines raise; qdiff fails the same way.
 * k-samplers with a concat UNet, as ComfyUI's InpaintModelConditioning(noise_mask=True) +
 * KSampler: the pixels where round(mask) = 1 set to 0.5 (mid gray) and VAE-encoded (mean),
 * the mask bilinear on the latent grid and rounded, both concatenated to every model input
 * after the scaled latents (BaseModel.concat_cond: mask, then the masked image's latents);
 * the latent image is the unmasked image's encode with the mask as its noise mask, so the
 * SetLatentNoiseMask blend below applies as well.
 * k-samplers, as ComfyUI documents SetLatentNoiseMask + KSampler: the noise mask resized to
 * the latent grid bilinearly (soft values kept); each model call sees
 * x * mask + noise_scaling(sigma, noise, latent) * (1 - mask) and its denoised output is
 * denoised * mask + latent * (1 - mask) (ksample_loop.c). */
#include "pipeline/inpaint.h"
#include "pipeline/img2img.h"
#include "base/ctx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int qd_inpaint_concat_unet(const qd_model *m) {
    return m->unet && qd_unet_get_info(m->unet)->in_channels == 2 * m->latent_channels + 1;
}

qd_status qd_inpaint_check(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p) {
    if (qd_inpaint_concat_unet(m)) {   /* diffusers: "`image` / `mask_image` input cannot be undefined" */
        int in = qd_unet_get_info(m->unet)->in_channels;
        if (!p->mask || !p->init_image)
            return qd_fail(ctx, QD_ERR_ARG, "this is an inpainting UNet (%d input channels): it needs an init image "
                           "and a mask%s", in, p->init_latents ? " (init latents cannot be masked: give the image)" : "");
    }
    if (p->masked_content < QD_MASKED_ORIGINAL || p->masked_content > QD_MASKED_LATENT_NOTHING)
        return qd_fail(ctx, QD_ERR_ARG, "masked_content %d is not one of 0..3 (original, fill, latent noise, latent "
                       "nothing)", p->masked_content);
    if (p->masked_content != QD_MASKED_ORIGINAL && !p->mask)
        return qd_fail(ctx, QD_ERR_ARG, "masked_content (what the masked area starts from) needs a mask");
    if (p->masked_content == QD_MASKED_FILL && !p->init_image)
        return qd_fail(ctx, QD_ERR_ARG, "masked content \"fill\" paints pixels: give the init image, not init latents");
    if (!p->mask) return QD_OK;
    if (!p->init_image && !p->init_latents)
        return qd_fail(ctx, QD_ERR_ARG, "inpainting: a mask needs an init image (or init latents) to keep");
    int images = p->init_count > 0 ? p->init_count : 1, masks = p->mask_count > 0 ? p->mask_count : 1;
    if (p->mask_count < 0 || (masks != 1 && masks != images))
        return qd_fail(ctx, QD_ERR_ARG, "inpainting: %d masks for %d init images (give 1 or %d)", p->mask_count,
                       images, images);
    int64_t n = (int64_t)masks * p->height * p->width;
    for (int64_t i = 0; i < n; i++)
        if (!(p->mask[i] >= 0.0f && p->mask[i] <= 1.0f))
            return qd_fail(ctx, QD_ERR_ARG, "inpainting: mask value %g at index %lld is not in [0, 1]",
                           (double)p->mask[i], (long long)i);
    return QD_OK;
}

/* torch's nearest_idx for mode "nearest" (scale as float, as the CPU kernel computes it). */
static int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int64_t s = (int64_t)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

void qd_inpaint_mask_nearest(const float *mask, int64_t H, int64_t W, int64_t h, int64_t w, float *out) {
    for (int64_t i = 0; i < h; i++) {
        int64_t y = nearest_src(i, H, h);
        for (int64_t j = 0; j < w; j++) out[i * w + j] = mask[y * W + nearest_src(j, W, w)] >= 0.5f ? 1.0f : 0.0f;
    }
}

/* torch's area_pixel_compute_source_index (align_corners False) + guard_index_and_lambda. */
static void bilinear_src(int64_t dst, int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *l0, float *l1) {
    float scale = (float)in / (float)out;
    float real = scale * ((float)dst + 0.5f) - 0.5f;
    if (real < 0) real = 0;
    int64_t i = (int64_t)floorf(real);
    if (i > in - 1) i = in - 1;
    float l = real - (float)i;
    l = l < 0 ? 0 : l > 1 ? 1 : l;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = l;
    *l0 = 1.0f - l;
}

void qd_inpaint_mask_bilinear(const float *mask, int64_t H, int64_t W, int64_t h, int64_t w, float *out) {
    for (int64_t i = 0; i < h; i++) {
        int64_t y0, y1;
        float a0, a1;
        bilinear_src(i, H, h, &y0, &y1, &a0, &a1);
        for (int64_t j = 0; j < w; j++) {
            int64_t x0, x1;
            float b0, b1;
            bilinear_src(j, W, w, &x0, &x1, &b0, &b1);
            out[i * w + j] = a0 * (b0 * mask[y0 * W + x0] + b1 * mask[y0 * W + x1]) +
                             a1 * (b0 * mask[y1 * W + x0] + b1 * mask[y1 * W + x1]);
        }
    }
}

qd_status qd_inpaint_latent_mask(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, int64_t B, int bilinear,
                                 float *out) {
    int64_t H = p->height, W = p->width, h = H / m->vae_scale, w = W / m->vae_scale, C = m->latent_channels;
    int64_t masks = p->mask_count > 1 ? p->mask_count : 1, per = C * h * w;
    float *grid = malloc(sizeof(float) * (size_t)(h * w));
    if (!grid) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int64_t b = 0; b < B; b++) {
        const float *src = p->mask + (b % masks) * H * W;   /* one mask per init image; repeated over the batch */
        if (bilinear) qd_inpaint_mask_bilinear(src, H, W, h, w, grid);
        else qd_inpaint_mask_nearest(src, H, W, h, w, grid);
        float *dst = out + b * per;
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < h; i++)
                for (int64_t j = 0; j < w; j++) {
                    int64_t k = m->family == QD_FAMILY_FLUX   /* _pack_latents' token layout */
                                    ? ((i / 2) * (w / 2) + j / 2) * 4 * C + c * 4 + (i % 2) * 2 + (j % 2)
                                    : (c * h + i) * w + j;
                    dst[k] = grid[i * w + j];
                }
    }
    free(grid);
    return QD_OK;
}

/* prepare_latents: pure noise (x init_noise_sigma) at strength 1 on the eps/v path
 * (is_strength_max; the flow schedulers' scale_noise at sigma 1 is the same), else the
 * image latents noised to the start: add_noise / scale_noise. */
static void start_latents(qd_scheduler *s, int begin, int strength_max, const float *image_latents, const float *noise,
                          int64_t n, float *latents) {
    if (strength_max) {
        float sigma = qd_scheduler_init_noise_sigma(s);
        for (int64_t k = 0; k < n; k++) latents[k] = noise[k] * sigma;
    } else {
        qd_scheduler_add_noise(s, begin, image_latents, noise, n, latents);
    }
}

void qd_inpaint_blend(const float *mask, const float *keep, float *x, int64_t n) {
    for (int64_t k = 0; k < n; k++) x[k] = (1.0f - mask[k]) * keep[k] + mask[k] * x[k];
}

qd_status qd_inpaint_latent_fill(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, int64_t B, int bilinear,
                                 const float *noise, float *x) {
    int latent_noise = p->masked_content == QD_MASKED_LATENT_NOISE;
    if (!p->mask || (!latent_noise && p->masked_content != QD_MASKED_LATENT_NOTHING)) return QD_OK;
    int64_t H = p->height, W = p->width, h = H / m->vae_scale, w = W / m->vae_scale, C = m->latent_channels;
    int64_t masks = p->mask_count > 1 ? p->mask_count : 1;
    float *grid = malloc(sizeof(float) * (size_t)(h * w));
    if (!grid) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int64_t b = 0; b < B; b++) {
        const float *src = p->mask + (b % masks) * H * W;
        if (bilinear) qd_inpaint_mask_bilinear(src, H, W, h, w, grid);
        else qd_inpaint_mask_nearest(src, H, W, h, w, grid);
        for (int64_t c = 0; c < C; c++)
            for (int64_t k = 0; k < h * w; k++) {
                int64_t at = (b * C + c) * h * w + k;
                if (grid[k] >= 0.5f) x[at] = latent_noise ? noise[at] : 0.0f;
            }
    }
    free(grid);
    return QD_OK;
}

qd_status qd_inpaint_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                           qd_rng *rng, int *begin, float *latents, float *image_latents, float *noise) {
    int64_t per = (int64_t)m->latent_channels * (p->height / m->vae_scale) * (p->width / m->vae_scale);
    int64_t n = batch * per, count = p->init_count > 0 ? p->init_count : 1;
    QD_TRY(qd_img2img_begin(ctx, m, p, s, begin));
    QD_TRY(qd_img2img_latents(ctx, m, p, batch, rng, image_latents));   /* the encode's draw comes first */
    qd_rng_randn(rng, noise, n);
    QD_TRY(qd_inpaint_latent_fill(ctx, m, p, batch, 0, noise, image_latents));   /* A1111's masked content */
    start_latents(s, *begin, qd_img2img_strength(m, p) == 1.0 && !qd_family_is_flow(m->family), image_latents, noise,
                  n, latents);
    if (p->init_image) {   /* prepare_mask_latents: the masked image's retrieve_latents draw */
        float *drop = malloc(sizeof(float) * (size_t)(count * per));
        if (!drop) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        qd_rng_randn(rng, drop, count * per);
        free(drop);
    }
    return QD_OK;
}

/* cond [batch, 1 + C, h, w] of a concat UNet: the mask on the latent grid, then the scaled
 * latents of the image with its repainted pixels at 0.5 (mid grey). rng: diffusers'
 * prepare_mask_latents (repaint where mask >= 0.5, nearest grid, sampled encode: a draw);
 * NULL: ComfyUI's InpaintModelConditioning (repaint where round(mask) = 1, bilinear grid
 * rounded, the encoder's mean). torch.round rounds halves to even, as nearbyintf does. */
static qd_status concat_cond(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, int64_t batch, qd_rng *rng,
                             float *cond) {
    int64_t H = p->height, W = p->width, h = H / m->vae_scale, w = W / m->vae_scale, C = m->latent_channels;
    int64_t hw = h * w, per = C * hw, count = p->init_count > 0 ? p->init_count : 1;
    int64_t masks = p->mask_count > 1 ? p->mask_count : 1;
    float *il = malloc(sizeof(float) * (size_t)(batch * per)), *grid = malloc(sizeof(float) * (size_t)hw);
    float *masked = malloc(sizeof(float) * (size_t)(count * H * W * 3));
    qd_status st = il && grid && masked ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK) {
        for (int64_t b = 0; b < count; b++)
            for (int64_t i = 0; i < H * W; i++) {
                float mk = p->mask[(b % masks) * H * W + i];
                int repaint = rng ? mk >= 0.5f : nearbyintf(mk) != 0.0f;
                for (int c = 0; c < 3; c++)
                    masked[(b * H * W + i) * 3 + c] = repaint ? 0.5f : p->init_image[(b * H * W + i) * 3 + c];
            }
        qd_gen_params mp = *p;
        mp.init_image = masked;
        st = qd_img2img_latents(ctx, m, &mp, batch, rng, il);
    }
    for (int64_t b = 0; st == QD_OK && b < batch; b++) {
        float *dst = cond + b * (1 + C) * hw;
        const float *src = p->mask + (b % masks) * H * W;
        if (rng) {
            qd_inpaint_mask_nearest(src, H, W, h, w, dst);
        } else {
            qd_inpaint_mask_bilinear(src, H, W, h, w, grid);
            for (int64_t k = 0; k < hw; k++) dst[k] = nearbyintf(grid[k]);
        }
        memcpy(dst + hw, il + b * per, sizeof(float) * (size_t)per);
    }
    free(il);
    free(grid);
    free(masked);
    return st;
}

qd_status qd_inpaint_concat_start(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler *s, int64_t batch,
                                  qd_rng *rng, int *begin, float *latents, float *cond) {
    int64_t n = batch * m->latent_channels * (p->height / m->vae_scale) * (p->width / m->vae_scale);
    int strength_max = qd_img2img_strength(m, p) == 1.0;   /* a UNet: never a flow model */
    QD_TRY(qd_img2img_begin(ctx, m, p, s, begin));
    float *il = strength_max ? NULL : malloc(sizeof(float) * (size_t)n), *noise = malloc(sizeof(float) * (size_t)n);
    qd_status st = (il || strength_max) && noise ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK && !strength_max) st = qd_img2img_latents(ctx, m, p, batch, rng, il);
    if (st == QD_OK) {
        qd_rng_randn(rng, noise, n);
        if (!strength_max) st = qd_inpaint_latent_fill(ctx, m, p, batch, 0, noise, il);   /* A1111's masked content */
    }
    if (st == QD_OK) {
        start_latents(s, *begin, strength_max, il, noise, n, latents);
        st = concat_cond(ctx, m, p, batch, rng, cond);   /* the masked image's encode: the next draw */
    }
    free(il);
    free(noise);
    return st;
}

qd_status qd_inpaint_concat_cond_comfy(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, int64_t batch, float *cond) {
    return concat_cond(ctx, m, p, batch, NULL, cond);
}
