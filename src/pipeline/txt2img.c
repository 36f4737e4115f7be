/* Text-to-image, step for step as diffusers' StableDiffusion(XL)Pipeline.__call__:
 * noise from the seeded generator, scheduler loop with classifier-free guidance
 * (and optional guidance rescale), VAE decode, [-1,1] -> [0,1]. */
#include "qdiff.h"
#include "base/ctx.h"
#include "base/rng.h"
#include "pipeline/model.h"
#include "pipeline/prompt.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void qd_gen_params_default(qd_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->steps = 20;
    p->cfg_scale = 7.5f;
    p->batch = 1;
    p->karras = -1;
}

static void resolve(const qd_model *m, const qd_gen_params *p, int *w, int *h) {
    int side = qd_model_default_size(m);
    *w = p->width > 0 ? p->width : side;
    *h = p->height > 0 ? p->height : side;
}

void qd_image_dims(const qd_model *m, const qd_gen_params *p, int *width, int *height) {
    resolve(m, p, width, height);
}

size_t qd_latent_shape(const qd_model *m, const qd_gen_params *p, int64_t shape[4]) {
    int w, h;
    resolve(m, p, &w, &h);
    shape[0] = p->batch > 0 ? p->batch : 1;
    shape[1] = qd_unet_get_info(m->unet)->in_channels;
    shape[2] = h / m->vae_scale;
    shape[3] = w / m->vae_scale;
    return (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
}

size_t qd_image_size(const qd_model *m, const qd_gen_params *p, qd_image_format fmt) {
    int w, h;
    resolve(m, p, &w, &h);
    size_t n = (size_t)(p->batch > 0 ? p->batch : 1) * (size_t)w * (size_t)h * 3;
    return fmt == QD_IMAGE_RGB8 ? n : n * sizeof(float);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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

typedef struct {
    float *latents, *model_in, *model_out, *noise_pred;
    qd_cond cond;
    qd_scheduler *sched;
} gen_state;

static void gen_state_free(gen_state *g) {
    free(g->latents); free(g->model_in); free(g->model_out); free(g->noise_pred);
    qd_cond_free(&g->cond);
    qd_scheduler_free(g->sched);
}

static qd_status decode_images(qd_ctx *ctx, qd_model *m, const float *latents, int64_t B, int64_t C,
                               int64_t h, int64_t w, qd_image_format fmt, void *image) {
    const qd_vae_info *vi = qd_vae_get_info(m->vae);
    int64_t H = h * m->vae_scale, W = w * m->vae_scale, per = C * h * w;
    float *z = malloc(sizeof(float) * (size_t)per), *img = malloc(sizeof(float) * (size_t)(3 * H * W));
    qd_status st = (!z || !img) ? qd_fail(ctx, QD_ERR_NOMEM, "out of memory") : QD_OK;
    /* one image at a time: the decoder's activations dominate peak memory */
    for (int64_t b = 0; st == QD_OK && b < B; b++) {
        for (int64_t i = 0; i < per; i++) z[i] = latents[b * per + i] / vi->scaling_factor + vi->shift_factor;
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

qd_status qd_generate(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_image_format fmt,
                      void *image, float *latents_out) {
    if (!m || !p || !image) return qd_fail(ctx, QD_ERR_ARG, "qd_generate: model, params and image are required");
    ctx->cancel = 0;
    int width, height;
    resolve(m, p, &width, &height);
    if (width % m->vae_scale || height % m->vae_scale || width > 16384 || height > 16384)
        return qd_fail(ctx, QD_ERR_ARG, "width and height must be multiples of %d up to 16384 (got %dx%d)",
                       m->vae_scale, width, height);
    if (p->steps < 1 || p->steps > 10000) return qd_fail(ctx, QD_ERR_ARG, "steps must be 1..10000 (got %d)", p->steps);
    if (p->batch < 1 || p->batch > 64) return qd_fail(ctx, QD_ERR_ARG, "batch must be 1..64 (got %d)", p->batch);
    if (fmt != QD_IMAGE_F32 && fmt != QD_IMAGE_RGB8) return qd_fail(ctx, QD_ERR_ARG, "unknown image format %d", (int)fmt);

    int64_t shape[4];
    qd_latent_shape(m, p, shape);
    int64_t B = shape[0], C = shape[1], h = shape[2], w = shape[3], per = C * h * w, n = B * per;
    int guidance = p->cfg_scale > 1.0f;
    int64_t rows = guidance ? 2 * B : B;

    gen_state g = {0};
    qd_status st = make_scheduler(ctx, m, p, &g.sched);
    if (st == QD_OK) st = qd_scheduler_set_timesteps(ctx, g.sched, p->steps);
    if (st == QD_OK) st = qd_encode_prompts(ctx, m, p->prompt, p->negative_prompt, (int)B, guidance, width, height, &g.cond);
    if (st == QD_OK) {
        g.latents = malloc(sizeof(float) * (size_t)n);
        g.model_in = malloc(sizeof(float) * (size_t)(rows * per));
        g.model_out = malloc(sizeof(float) * (size_t)(rows * per));
        g.noise_pred = malloc(sizeof(float) * (size_t)n);
        if (!g.latents || !g.model_in || !g.model_out || !g.noise_pred) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    qd_rng rng;
    qd_rng_seed(&rng, p->seed);
    if (st == QD_OK) {
        qd_rng_randn(&rng, g.latents, n);
        float sigma = qd_scheduler_init_noise_sigma(g.sched);
        for (int64_t i = 0; i < n; i++) g.latents[i] *= sigma;
    }
    int total = st == QD_OK ? qd_scheduler_len(g.sched) : 0;
    double t0 = now_seconds();
    for (int i = 0; st == QD_OK && i < total; i++) {
        float t = qd_scheduler_timestep(g.sched, i);
        for (int64_t r = 0; r < rows; r++)
            memcpy(g.model_in + r * per, g.latents + (r % B) * per, sizeof(float) * (size_t)per);
        qd_scheduler_scale_model_input(g.sched, i, g.model_in, rows * per);
        float *ts = malloc(sizeof(float) * (size_t)rows);
        if (!ts) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        for (int64_t r = 0; r < rows; r++) ts[r] = t;
        st = qd_unet_forward(ctx, m->unet, g.model_in, rows, h, w, ts, g.cond.context, g.cond.L,
                             g.cond.text_embeds, g.cond.time_ids, g.model_out);
        free(ts);
        if (st != QD_OK) break;
        if (guidance) {
            const float *un = g.model_out, *tx = g.model_out + n;
            for (int64_t k = 0; k < n; k++) g.noise_pred[k] = un[k] + p->cfg_scale * (tx[k] - un[k]);
            if (p->guidance_rescale > 0) rescale_cfg(g.noise_pred, tx, B, per, p->guidance_rescale);
        } else {
            memcpy(g.noise_pred, g.model_out, sizeof(float) * (size_t)n);
        }
        st = qd_scheduler_step(ctx, g.sched, i, g.noise_pred, g.latents, B, per, &rng);
        if (st == QD_OK && p->progress && p->progress(p->progress_user, i + 1, total, now_seconds() - t0))
            ctx->cancel = 1;
        if (st == QD_OK && ctx->cancel) st = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled at step %d of %d", i + 1, total);
    }
    if (st == QD_OK && latents_out) memcpy(latents_out, g.latents, sizeof(float) * (size_t)n);
    if (st == QD_OK) st = decode_images(ctx, m, g.latents, B, C, h, w, fmt, image);
    gen_state_free(&g);
    return st;
}
