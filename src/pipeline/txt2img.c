/* Text-to-image (and image-to-image, img2img.c), step for step as diffusers'
 * pipelines' __call__: noise from the seeded generator (or an init image noised to
 * the first step run), the scheduler loop with classifier-free guidance (and
 * optional guidance rescale), VAE decode, [-1,1] -> [0,1]. One loop serves every
 * family; what differs (conditioning, latent layout, the denoiser call) is
 * dispatched on the family. */
#include "qdiff.h"
#include "base/ctx.h"
#include "base/rng.h"
#include "pipeline/img2img.h"
#include "pipeline/inpaint.h"
#include "pipeline/inpaint_fill.h"
#include "pipeline/ksample_loop.h"
#include "base/act_pool.h"
#include "pipeline/model.h"
#include "pipeline/model_lora.h"
#include "pipeline/preview.h"
#include "pipeline/prompt.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void qd_gen_params_default(qd_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->cfg_scale = -1;      /* the family's default */
    p->guidance = 3.5f;
    p->batch = 1;
    p->karras = -1;
    p->preview_max_size = 256;
}

size_t qd_gen_params_size(void) { return sizeof(qd_gen_params); }

/* diffusers' defaults per pipeline, except fewer SD steps (CPU time). */
static float default_cfg(const qd_model *m) {
    switch (m->family) {
    case QD_FAMILY_SD15: return 7.5f;
    case QD_FAMILY_SDXL: return 5.0f;
    case QD_FAMILY_SD3: return 7.0f;
    default: return 1.0f;   /* FLUX: guidance is embedded, no CFG */
    }
}

static int default_steps(const qd_model *m) {
    if (m->family == QD_FAMILY_FLUX) return qd_flux_get_info(m->flux)->guidance_embeds ? 28 : 4;
    return m->family == QD_FAMILY_SD3 ? 28 : 20;
}

void qd_gen_params_resolve(const qd_model *m, qd_gen_params *p) {
    qd_image_dims(m, p, &p->width, &p->height);
    if (p->steps == 0) p->steps = default_steps(m);
    if (p->cfg_scale < 0) p->cfg_scale = default_cfg(m);
    if (qd_img2img_on(p) && p->strength == 0) p->strength = qd_img2img_strength(m, p);
}

void qd_image_dims(const qd_model *m, const qd_gen_params *p, int *w, int *h) {
    *w = p->width > 0 ? p->width : m->default_size;
    *h = p->height > 0 ? p->height : m->default_size;
}

size_t qd_latent_shape(const qd_model *m, const qd_gen_params *p, int64_t shape[4], int *ndim) {
    int w, h;
    qd_image_dims(m, p, &w, &h);
    int64_t B = p->batch > 0 ? p->batch : 1, C = m->latent_channels;
    int64_t lh = h / m->vae_scale, lw = w / m->vae_scale;
    if (m->family == QD_FAMILY_FLUX) {   /* packed: [B, (h/2)*(w/2), 4C] */
        shape[0] = B; shape[1] = (lh / 2) * (lw / 2); shape[2] = 4 * C; shape[3] = 1;
        if (ndim) *ndim = 3;
        return (size_t)(shape[0] * shape[1] * shape[2]);
    }
    shape[0] = B; shape[1] = C; shape[2] = lh; shape[3] = lw;
    if (ndim) *ndim = 4;
    return (size_t)(B * C * lh * lw);
}

size_t qd_image_size(const qd_model *m, const qd_gen_params *p, qd_image_format fmt) {
    int w, h;
    qd_image_dims(m, p, &w, &h);
    size_t n = (size_t)(p->batch > 0 ? p->batch : 1) * (size_t)w * (size_t)h * 3;
    return fmt == QD_IMAGE_RGB8 ? n : n * sizeof(float);
}

/* diffusers' rescale_noise_cfg: match the guided prediction's std to the
 * conditional one per sample (torch.std, unbiased), then blend. */
static void rescale_cfg(float *cfg, const float *text, int64_t batch, int64_t per, float phi) {
    for (int64_t b = 0; b < batch; b++) {
        float *x = cfg + b * per;
        const float *t = text + b * per;
        double sx = 0, st = 0, qx = 0, qt = 0;
        for (int64_t i = 0; i < per; i++) { sx += x[i]; st += t[i]; }
        double mx = sx / per, mt = st / per;
        for (int64_t i = 0; i < per; i++) { qx += (x[i] - mx) * (x[i] - mx); qt += (t[i] - mt) * (t[i] - mt); }
        double stdx = sqrt(qx / (per - 1)), stdt = sqrt(qt / (per - 1));
        float f = (float)(stdt / stdx);
        for (int64_t i = 0; i < per; i++) x[i] = phi * (x[i] * f) + (1 - phi) * x[i];
    }
}

static qd_status make_scheduler(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_scheduler **out) {
    cJSON *over = NULL;
    if (p->scheduler_options && *p->scheduler_options) {
        over = cJSON_Parse(p->scheduler_options);
        if (!cJSON_IsObject(over)) {
            cJSON_Delete(over);
            return qd_fail(ctx, QD_ERR_ARG, "scheduler options are not a JSON object: %s", p->scheduler_options);
        }
    }
    if (p->karras >= 0) {
        if (!over) over = cJSON_CreateObject();
        cJSON_DeleteItemFromObjectCaseSensitive(over, "use_karras_sigmas");
        cJSON_AddBoolToObject(over, "use_karras_sigmas", p->karras);
    }
    qd_status st = qd_scheduler_new(ctx, m->scheduler_config, p->scheduler, over, out);
    cJSON_Delete(over);
    return st;
}

/* Flow schedulers take mu (dynamic shift from the image token count) and, for
 * FLUX, the pipeline's own sigmas np.linspace(1, 1/n, n). */
static qd_status set_timesteps(qd_ctx *ctx, qd_model *m, qd_scheduler *s, int steps, int64_t image_tokens) {
    int dynamic, base_seq, max_seq;
    double base_shift, max_shift;
    if (qd_scheduler_is_flow(s, &dynamic, &base_seq, &max_seq, &base_shift, &max_shift)) {
        double slope = (max_shift - base_shift) / (max_seq - base_seq);
        double mu = (double)image_tokens * slope + (base_shift - slope * base_seq);
        float *sig = NULL;
        if (m->family == QD_FAMILY_FLUX) {
            double *d = malloc(sizeof(double) * (size_t)steps);
            sig = malloc(sizeof(float) * (size_t)steps);
            if (!d || !sig) { free(d); free(sig); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
            qd_np_linspace(1.0, 1.0 / steps, steps, d);
            for (int i = 0; i < steps; i++) sig[i] = (float)d[i];
            free(d);
        }
        qd_status st = qd_scheduler_set_flow_inputs(ctx, s, dynamic, mu, sig, sig ? steps : 0);
        free(sig);
        QD_TRY(st);
    }
    return qd_scheduler_set_timesteps(ctx, s, steps);
}

typedef struct {
    qd_model *m;
    const qd_cond *cond;
    int64_t rows, C, h, w;      /* latent grid (unpacked) */
    float guidance;
    float *img_ids, *txt_ids, *ts, *gs;
    int64_t batch;              /* inpainting UNet: items of concat ... */
    float *concat, *wide;       /* ... [batch, 1 + C, h, w] (mask, masked-image latents) and the UNet input */
} denoiser;

/* One model evaluation on `rows` latents at scheduler time t. */
static qd_status denoise(qd_ctx *ctx, denoiser *d, const float *x, float t, float *out) {
    qd_model *m = d->m;
    for (int64_t r = 0; r < d->rows; r++) d->ts[r] = m->family == QD_FAMILY_FLUX ? t / 1000.0f : t;
    if (m->unet && d->concat) {   /* inpainting UNet: cat([x, mask, masked_image_latents], dim=1) per row */
        int64_t hw = d->h * d->w, cx = d->C * hw, cc = (1 + d->C) * hw;
        for (int64_t r = 0; r < d->rows; r++) {
            memcpy(d->wide + r * (cx + cc), x + r * cx, sizeof(float) * (size_t)cx);
            memcpy(d->wide + r * (cx + cc) + cx, d->concat + (r % d->batch) * cc, sizeof(float) * (size_t)cc);
        }
        x = d->wide;
    }
    if (m->unet)
        return qd_unet_forward(ctx, m->unet, x, d->rows, d->h, d->w, d->ts, d->cond->context, d->cond->L,
                               d->cond->pooled, d->cond->time_ids, out);
    if (m->sd3)
        return qd_sd3_forward(ctx, m->sd3, x, d->rows, d->h, d->w, d->ts, d->cond->context, d->cond->L,
                              d->cond->pooled, out);
    for (int64_t r = 0; r < d->rows; r++) d->gs[r] = d->guidance;
    return qd_flux_forward(ctx, m->flux, x, d->rows, (d->h / 2) * (d->w / 2), d->ts,
                           qd_flux_get_info(m->flux)->guidance_embeds ? d->gs : NULL, d->cond->pooled,
                           d->cond->context, d->cond->L, d->img_ids, d->txt_ids, out);
}

/* The same call for the k-sampler loop (ksample_loop.c), which knows the denoiser only as a pointer. */
static qd_status ks_model(qd_ctx *ctx, void *d, const float *x, float t, float *out) { return denoise(ctx, d, x, t, out); }

/* FLUX's 2x2 latent packing: [C, h, w] <-> [(h/2)*(w/2), 4C], channel-major within a token. */
static void pack_latents(const float *x, int64_t C, int64_t h, int64_t w, float *y, int unpack) {
    int64_t hw2 = w / 2;
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) {
                int64_t tok = (i / 2) * hw2 + j / 2, ch = c * 4 + (i % 2) * 2 + (j % 2);
                int64_t a = (c * h + i) * w + j, b = tok * 4 * C + ch;
                if (unpack) y[a] = x[b]; else y[b] = x[a];
            }
}

/* The model's estimate of the clean latents for batch item 0 at call i, from the
 * (guided) prediction and the input it was given: the UNet/transformer always sees
 * VP-normalised latents x = a*x0 + s*noise with a = 1/sqrt(1+sigma^2), s = sigma*a
 * (flow: x = (1-sigma)*x0 + sigma*noise, prediction v = noise - x0). */
static void predicted_x0(const qd_model *m, const qd_scheduler *s, int i, const float *x, const float *pred,
                         int64_t per, float *x0) {
    float sigma = qd_scheduler_model_sigma(s, i);
    const char *type = qd_scheduler_prediction_type(s);
    if (qd_family_is_flow(m->family)) {
        for (int64_t k = 0; k < per; k++) x0[k] = x[k] - sigma * pred[k];
    } else if (!strcmp(type, "v_prediction")) {
        float a = 1.0f / sqrtf(1.0f + sigma * sigma), sv = sigma * a;
        for (int64_t k = 0; k < per; k++) x0[k] = a * x[k] - sv * pred[k];
    } else if (!strcmp(type, "sample")) {
        memcpy(x0, pred, sizeof(float) * (size_t)per);
    } else {
        float r = sqrtf(1.0f + sigma * sigma);
        for (int64_t k = 0; k < per; k++) x0[k] = x[k] * r - sigma * pred[k];
    }
}

static void pack_latents(const float *x, int64_t C, int64_t h, int64_t w, float *y, int unpack);

/* The current clean-image estimate of the first image at scheduler step i, to the preview
 * callback as model call `call` of `total`. */
static qd_status send_preview(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_scheduler *s,
                              int i, int call, int total, const float *model_in, const float *pred, int64_t per,
                              int64_t C, int64_t h, int64_t w) {
    float *x0 = malloc(sizeof(float) * (size_t)per), *z = malloc(sizeof(float) * (size_t)per);
    qd_status st = x0 && z ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK) {
        predicted_x0(m, s, i, model_in, pred, per, x0);
        if (m->family == QD_FAMILY_FLUX) pack_latents(x0, C, h, w, z, 1);
        else memcpy(z, x0, sizeof(float) * (size_t)per);
        st = qd_send_preview(ctx, p, z, C, h, w, call, total);
    }
    free(x0); free(z);
    return st;
}

static qd_status decode_images(qd_ctx *ctx, qd_model *m, const float *latents, int64_t B, int64_t C,
                               int64_t h, int64_t w, qd_image_format fmt, void *image) {
    const qd_vae_info *vi = qd_vae_get_info(m->vae);
    int64_t H = h * m->vae_scale, W = w * m->vae_scale, per = C * h * w;
    float *z = malloc(sizeof(float) * (size_t)per), *img = malloc(sizeof(float) * (size_t)(3 * H * W));
    qd_status st = (!z || !img) ? qd_fail(ctx, QD_ERR_NOMEM, "out of memory") : QD_OK;
    /* one image at a time: the decoder's activations dominate peak memory */
    for (int64_t b = 0; st == QD_OK && b < B; b++) {
        if (m->family == QD_FAMILY_FLUX) pack_latents(latents + b * per, C, h, w, z, 1);
        else memcpy(z, latents + b * per, sizeof(float) * (size_t)per);
        for (int64_t i = 0; i < per; i++) z[i] = z[i] / vi->scaling_factor + vi->shift_factor;
        st = qd_vae_decode(ctx, m->vae, z, 1, h, w, img);
        if (st != QD_OK) break;
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                for (int c = 0; c < 3; c++) {
                    float v = img[(c * H + y) * W + x] / 2 + 0.5f;
                    v = v < 0 ? 0 : v > 1 ? 1 : v;
                    size_t o = (size_t)(((b * H + y) * W + x) * 3 + c);
                    if (fmt == QD_IMAGE_RGB8) ((uint8_t *)image)[o] = (uint8_t)lrintf(v * 255.0f);
                    else ((float *)image)[o] = v;
                }
    }
    free(z);
    free(img);
    return st;
}

typedef struct {
    float *latents, *model_in, *model_out, *noise_pred;
    float *mask, *keep, *keep_noise;   /* inpainting: latent mask, image latents and their noise (loop layout) */
    qd_cond cond;
    qd_scheduler *sched;
    denoiser d;
} gen_state;

static void gen_state_free(gen_state *g) {
    free(g->latents); free(g->model_in); free(g->model_out); free(g->noise_pred);
    free(g->mask); free(g->keep); free(g->keep_noise);
    free(g->d.img_ids); free(g->d.txt_ids); free(g->d.ts); free(g->d.gs); free(g->d.concat); free(g->d.wide);
    qd_cond_free(&g->cond);
    qd_scheduler_free(g->sched);
}

/* Initial noise: torch.randn(latent shape) from the seeded generator, packed for FLUX. */
static void initial_noise(qd_model *m, qd_rng *rng, gen_state *g, int64_t B, int64_t per, float sigma) {
    int64_t n = B * per;
    qd_rng_randn(rng, g->model_out, n);
    for (int64_t b = 0; b < B; b++) {
        if (m->family == QD_FAMILY_FLUX) pack_latents(g->model_out + b * per, g->d.C, g->d.h, g->d.w, g->latents + b * per, 0);
        else memcpy(g->latents + b * per, g->model_out + b * per, sizeof(float) * (size_t)per);
    }
    for (int64_t i = 0; i < n; i++) g->latents[i] *= sigma;
}

/* [B, per] unpacked -> the loop's layout (packed for FLUX). */
static void to_loop_layout(const qd_model *m, const gen_state *g, const float *src, int64_t B, int64_t per, float *dst) {
    for (int64_t b = 0; b < B; b++) {
        if (m->family == QD_FAMILY_FLUX) pack_latents(src + b * per, g->d.C, g->d.h, g->d.w, dst + b * per, 0);
        else memcpy(dst + b * per, src + b * per, sizeof(float) * (size_t)per);
    }
}

/* Image-to-image start. Diffusers classes: the init latents (encode sampled from rng),
 * then noise from rng, add_noise at timestep index begin = t_start * order, packed
 * for FLUX into g->latents (inpainting: qd_inpaint_start, and the image latents, their
 * noise and the nearest mask kept in g for the blend). k-samplers: *init gets the
 * encoder's mean (packed), the loop noises it itself (inpainting: g->mask bilinear). */
static qd_status init_latents(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, gen_state *g, int64_t B, int64_t per,
                              qd_rng *rng, int *begin, float **init) {
    int64_t n = B * per;
    if (qd_inpaint_concat_unet(m)) {   /* 9-channel UNet: the concat inputs */
        g->d.batch = B;
        g->d.concat = malloc(sizeof(float) * (size_t)(B * (1 + g->d.C) * g->d.h * g->d.w));
        g->d.wide = malloc(sizeof(float) * (size_t)(g->d.rows * (1 + 2 * g->d.C) * g->d.h * g->d.w));
        if (!g->d.concat || !g->d.wide) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        if (!p->sampler)   /* diffusers: no blend (g->mask stays NULL) */
            return qd_inpaint_concat_start(ctx, m, p, g->sched, B, rng, begin, g->latents, g->d.concat);
        /* ComfyUI: InpaintModelConditioning's concat, then its noise mask as below */
        QD_TRY(qd_inpaint_concat_cond_comfy(ctx, m, p, B, g->d.concat));
    }
    int inpaint = p->mask != NULL;
    float *x0 = malloc(sizeof(float) * (size_t)n), *noise = malloc(sizeof(float) * (size_t)n);
    float *il = inpaint ? malloc(sizeof(float) * (size_t)n) : NULL;
    qd_status st = x0 && noise && (il || !inpaint) ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK && inpaint) {
        g->mask = malloc(sizeof(float) * (size_t)n);
        if (!p->sampler) {
            g->keep = malloc(sizeof(float) * (size_t)n);
            g->keep_noise = malloc(sizeof(float) * (size_t)n);
        }
        if (!g->mask || (!p->sampler && (!g->keep || !g->keep_noise))) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        if (st == QD_OK) st = qd_inpaint_latent_mask(ctx, m, p, B, p->sampler != NULL, g->mask);
    }
    if (st == QD_OK && p->sampler) {
        st = qd_img2img_latents(ctx, m, p, B, NULL, x0);
        if (st == QD_OK && p->masked_content == QD_MASKED_LATENT_NOISE) {   /* the loop's first draw: the seed's randn */
            qd_rng first;
            qd_rng_seed(&first, p->seed);
            qd_rng_randn(&first, noise, n);
        }
        if (st == QD_OK) st = qd_inpaint_latent_fill(ctx, m, p, B, 1, noise, x0);   /* A1111's masked content */
    }
    else if (st == QD_OK && inpaint) st = qd_inpaint_start(ctx, m, p, g->sched, B, rng, begin, x0, il, noise);
    else if (st == QD_OK) st = qd_img2img_start(ctx, m, p, g->sched, B, rng, begin, x0);
    if (st == QD_OK && p->sampler) {
        to_loop_layout(m, g, x0, B, per, noise);
    } else if (st == QD_OK) {
        to_loop_layout(m, g, x0, B, per, g->latents);
        if (inpaint) {
            to_loop_layout(m, g, il, B, per, g->keep);
            to_loop_layout(m, g, noise, B, per, g->keep_noise);
        }
    }
    free(x0);
    free(il);
    if (st == QD_OK && p->sampler) *init = noise;
    else free(noise);
    return st;
}

/* Masked content "fill": p->init_image replaced by a painted copy (*out, to free). */
static qd_status fill_init_images(qd_ctx *ctx, qd_gen_params *p, float **out) {
    int64_t H = p->height, W = p->width, images = p->init_count > 0 ? p->init_count : 1;
    int64_t masks = p->mask_count > 1 ? p->mask_count : 1;
    float *f = malloc(sizeof(float) * (size_t)(images * H * W * 3));
    if (!f) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int64_t b = 0; b < images; b++) {
        qd_status st = qd_inpaint_fill(ctx, p->init_image + b * H * W * 3, p->mask + (b % masks) * H * W, H, W,
                                       f + b * H * W * 3);
        if (st != QD_OK) { free(f); return st; }
    }
    p->init_image = *out = f;
    return QD_OK;
}

qd_status qd_generate(qd_ctx *ctx, qd_model *m, const qd_gen_params *params, qd_image_format fmt,
                      void *image, float *latents_out) {
    if (!m || !params || !image) return qd_fail(ctx, QD_ERR_ARG, "qd_generate: model, params and image are required");
    ctx->cancel = 0;
    qd_op_status(ctx);   /* a stale failure from an earlier call is not this run's */
    qd_gen_params resolved = *params;
    const qd_gen_params *p = &resolved;
    qd_gen_params_resolve(m, &resolved);
    int width = p->width, height = p->height, unit = qd_model_size_unit(m), steps = p->steps;
    float cfg = p->cfg_scale;
    if (width % unit || height % unit || width > 16384 || height > 16384)
        return qd_fail(ctx, QD_ERR_ARG, "width and height must be multiples of %d up to 16384 (got %dx%d)",
                       unit, width, height);
    if (steps < 1 || steps > 10000) return qd_fail(ctx, QD_ERR_ARG, "steps must be 1..10000 (got %d)", steps);
    if (p->batch < 1 || p->batch > 64) return qd_fail(ctx, QD_ERR_ARG, "batch must be 1..64 (got %d)", p->batch);
    if (fmt != QD_IMAGE_F32 && fmt != QD_IMAGE_RGB8) return qd_fail(ctx, QD_ERR_ARG, "unknown image format %d", (int)fmt);
    int img2img = qd_img2img_on(p);
    if (img2img) QD_TRY(qd_img2img_check(ctx, m, p));
    QD_TRY(qd_inpaint_check(ctx, m, p));
    QD_TRY(qd_model_use_loras(ctx, m, p->loras, p->lora_scales, p->n_loras));
    int previews = p->preview && p->preview_vae && p->preview_every > 0;
    if (previews && qd_vae_describe(p->preview_vae)->latent_channels != m->latent_channels)
        return qd_fail(ctx, QD_ERR_ARG, "the preview VAE takes %d latent channels but this %s model makes %d: "
                       "it belongs to another model family", qd_vae_describe(p->preview_vae)->latent_channels,
                       qd_model_family(m), m->latent_channels);

    int64_t shape[4];
    int64_t n = (int64_t)qd_latent_shape(m, p, shape, NULL), B = shape[0], per = n / B;
    int guidance = cfg > 1.0f;
    int64_t rows = guidance ? 2 * B : B;

    float *filled = NULL;   /* A1111's masked content "fill": the init images painted first */
    if (p->mask && p->masked_content == QD_MASKED_FILL) QD_TRY(fill_init_images(ctx, &resolved, &filled));
    gen_state g = {0};
    g.d.m = m;
    g.d.rows = rows;
    g.d.C = m->latent_channels;
    g.d.h = height / m->vae_scale;
    g.d.w = width / m->vae_scale;
    g.d.guidance = p->guidance;
    qd_status st = p->sampler ? qd_ksample_scheduler(ctx, m, p, &g.sched) : make_scheduler(ctx, m, p, &g.sched);
    int64_t image_tokens = (g.d.h / 2) * (g.d.w / 2);
    if (st == QD_OK) st = set_timesteps(ctx, m, g.sched, steps, image_tokens);
    if (st == QD_OK)
        st = qd_encode_prompts(ctx, m, p->prompt, p->negative_prompt, (int)B, guidance, width, height,
                               p->max_sequence_length, &g.cond);
    if (st == QD_OK) st = qd_op_status(ctx);
    g.d.cond = &g.cond;
    if (st == QD_OK) {
        g.latents = malloc(sizeof(float) * (size_t)n);
        g.model_in = malloc(sizeof(float) * (size_t)(rows * per));
        g.model_out = malloc(sizeof(float) * (size_t)(rows * per));
        g.noise_pred = malloc(sizeof(float) * (size_t)n);
        g.d.ts = malloc(sizeof(float) * (size_t)rows);
        g.d.gs = malloc(sizeof(float) * (size_t)rows);
        if (m->family == QD_FAMILY_FLUX) {
            g.d.img_ids = calloc((size_t)(image_tokens * 3), sizeof(float));
            g.d.txt_ids = calloc((size_t)(g.cond.L * 3), sizeof(float));
        }
        if (!g.latents || !g.model_in || !g.model_out || !g.noise_pred || !g.d.ts || !g.d.gs ||
            (m->family == QD_FAMILY_FLUX && (!g.d.img_ids || !g.d.txt_ids)))
            st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    if (st == QD_OK && g.d.img_ids)   /* _prepare_latent_image_ids: (0, row, col) per token */
        for (int64_t i = 0; i < image_tokens; i++) {
            g.d.img_ids[i * 3 + 1] = (float)(i / (g.d.w / 2));
            g.d.img_ids[i * 3 + 2] = (float)(i % (g.d.w / 2));
        }
    qd_rng rng;
    qd_rng_seed(&rng, p->seed);
    int begin = 0;   /* img2img: the first scheduler step run */
    float *init = NULL;
    if (st == QD_OK && img2img)
        st = init_latents(ctx, m, p, &g, B, per, &rng, &begin, &init);
    else if (st == QD_OK)
        initial_noise(m, &rng, &g, B, per, qd_scheduler_init_noise_sigma(g.sched));
    int total = st == QD_OK && !p->sampler ? qd_scheduler_len(g.sched) : 0;
    double t0 = qd_now();
    if (st == QD_OK && p->sampler)   /* a ComfyUI / k-diffusion sampler runs its own loop */
        st = qd_ksample_loop(ctx, m, p, g.sched, ks_model, &g.d, init, g.mask, g.latents, B, per, rows);
    free(init);
    for (int i = begin; st == QD_OK && i < total; i++) {
        for (int64_t r = 0; r < rows; r++)
            memcpy(g.model_in + r * per, g.latents + (r % B) * per, sizeof(float) * (size_t)per);
        qd_scheduler_scale_model_input(g.sched, i, g.model_in, rows * per);
        st = denoise(ctx, &g.d, g.model_in, qd_scheduler_timestep(g.sched, i), g.model_out);
        if (st == QD_OK) st = qd_op_status(ctx);   /* an op that ran out of scratch memory */
        if (st != QD_OK) break;
        if (guidance) {
            const float *un = g.model_out, *tx = g.model_out + n;
            for (int64_t k = 0; k < n; k++) g.noise_pred[k] = un[k] + cfg * (tx[k] - un[k]);
            if (p->guidance_rescale > 0) rescale_cfg(g.noise_pred, tx, B, per, p->guidance_rescale);
        } else {
            memcpy(g.noise_pred, g.model_out, sizeof(float) * (size_t)n);
        }
        int call = i + 1 - begin, calls = total - begin;   /* model calls made / to make */
        if (previews && (call % p->preview_every == 0 || call == calls))
            st = send_preview(ctx, m, p, g.sched, i, call, calls, g.model_in, g.noise_pred, per, g.d.C, g.d.h, g.d.w);
        if (st != QD_OK) break;
        st = qd_scheduler_step(ctx, g.sched, i, g.noise_pred, g.latents, B, per, &rng);
        if (st == QD_OK && g.mask) {   /* the InpaintPipelines: kept cells = image latents noised to the next step */
            if (i + 1 < total) qd_scheduler_add_noise(g.sched, i + 1, g.keep, g.keep_noise, n, g.model_out);
            else memcpy(g.model_out, g.keep, sizeof(float) * (size_t)n);
            qd_inpaint_blend(g.mask, g.model_out, g.latents, n);
        }
        if (st == QD_OK && p->progress && p->progress(p->progress_user, call, calls, qd_now() - t0))
            ctx->cancel = 1;
        if (st == QD_OK && ctx->cancel) st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled at step %d of %d", call, calls);
    }
    if (st == QD_OK && latents_out) memcpy(latents_out, g.latents, sizeof(float) * (size_t)n);
    qd_act_trim(ctx);   /* the denoiser's pooled activations: the decoder does not use them */
    if (st == QD_OK) st = decode_images(ctx, m, g.latents, B, g.d.C, g.d.h, g.d.w, fmt, image);
    if (st == QD_OK) st = qd_op_status(ctx);
    gen_state_free(&g);
    free(filled);
    return st;
}
