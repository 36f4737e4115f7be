/* 9-channel inpainting UNets (latents + mask + masked-image latents, diffusers'
 * StableDiffusionInpaintPipeline with unet.config.in_channels == 9), fp32 (test_ctx_new),
 * on models derived from sd15-tiny at test time by tests/tools/make_inpaint_unet.py:
 *  (a) conv_in widened with zero weights: the 5 extra inputs contribute nothing, so
 *      - at strength 1 (the SD1.5 default) diffusers starts from noise * init_noise_sigma,
 *        the first draw (no image encode when is_strength_max and in_channels 9), the
 *        masked image's draw comes after it and there is no per-step blend: the final
 *        latents equal the txt2img golden pipe_euler (same prompt, seed 1234, Euler,
 *        6 steps, CFG 7.5) within the pipeline goldens' rel L2 1e-3, and qdiff's own
 *        4-channel txt2img run within rel L2 1e-6;
 *      - at strength 0.5 the draws are image encode, noise (as image-to-image): equal to
 *        the 4-channel image-to-image run (no mask) within rel L2 1e-6;
 *  (b) the mask channel reaches the UNet: weight V = 0.25 on the centre tap of input 4 only,
 *      an all-ones mask adds exactly V to conv_in's output everywhere, which is the
 *      4-channel model with conv_in.bias + V: latents within rel L2 1e-5 of that model's
 *      txt2img run, and more than 1e-3 (max-abs) away from the unmodified model's;
 *      with a half mask the run differs from the all-ones one (the mask is spatial);
 *  (c) the start itself (qd_inpaint_concat_start, batch 2, strength 1) against the draws
 *      and the masking redone here: latents = the first randn * init_noise_sigma (rel L2
 *      <= 1e-7), the mask channel = the half mask on the 8x8 grid (exact), the masked-image
 *      latents = scaling_factor * (mean + exp(logvar / 2) * the next randn) of
 *      qd_vae_encode(image with the repainted half set to 0 in [-1, 1]) (rel L2 <= 1e-6),
 *      the same for both batch items;
 *  k-samplers, as ComfyUI's InpaintModelConditioning(noise_mask=True) + KSampler:
 *  (d) zero extra weights: Euler with image + half mask = the 4-channel model's k-sampler
 *      inpainting run (SetLatentNoiseMask) with the same image and mask within rel L2 1e-6;
 *      the mask-channel model under an all-ones mask = the bias + 0.25 model's k-sampler run
 *      (rel L2 1e-5) and differs from the unmodified model's;
 *  (e) the concat itself (qd_inpaint_concat_cond_comfy, batch 2) against the resize,
 *      rounding and masking redone here: a horizontal ramp mask x / 63 gives the mask channel
 *      round((8j + 3.5) / 63) (torch's bilinear source index for 64 -> 8), and masked-image
 *      latents = scaling_factor * (mean - shift) of qd_vae_encode(image with the pixels of
 *      x >= 32 at 0 in [-1, 1]) (rel L2 <= 1e-6); a mask of 0.5 everywhere rounds to 0 (halves
 *      to even): mask channel 0 and the unmasked image's latents;
 *  bad input: no mask, no init image, init latents: QD_ERR_ARG. */
#include "testutil.h"
#include "io/json.h"
#include "pipeline/inpaint.h"
#include "base/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int make_model(const char *dst, const char *mode, const char *v) {
    char cmd[4096];
    const char *py = getenv("QD_PYTHON") ? getenv("QD_PYTHON") : "python3";
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s' %s %s", py, fixture("../tools/make_inpaint_unet.py"),
             fixture("models/sd15-tiny"), dst, mode, v ? v : "");
    int rc = system(cmd);
    check(rc == 0, "make_inpaint_unet.py %s %s -> %s (rc %d)", mode, v ? v : "", dst, rc);
    return rc == 0;
}

/* Run the golden pipe_euler case on model_dir with optional init image / mask / strength. */
static float *run(qd_ctx *ctx, const char *model_dir, const float *image, const float *mask, double strength,
                  const char *sampler, int init_latents, qd_status *st_out, size_t *n) {
    cJSON *cases = NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/cases.json", fixture("goldens/sd15-tiny"));
    if (qd_json_load(ctx, path, &cases) != QD_OK) { check(0, "%s", qd_last_error(ctx)); return NULL; }
    const cJSON *c = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cases, "pipelines"))
        if (!strcmp(qd_json_str(it, "golden", ""), "pipe_euler.safetensors")) c = it;
    qd_model *m = NULL;
    if (!c || qd_model_open(ctx, model_dir, &m) != QD_OK) {
        check(0, "open %s: %s", model_dir, c ? qd_last_error(ctx) : "no pipe_euler case");
        cJSON_Delete(cases);
        if (st_out) *st_out = QD_ERR_IO;
        return NULL;
    }
    qd_gen_params p;
    char *opts = golden_case_params(m, c, &p);
    p.init_image = image;
    p.mask = mask;
    p.strength = strength;
    p.sampler = sampler;
    float *lat0 = NULL;
    if (init_latents) {
        lat0 = calloc(4 * 8 * 8, sizeof(float));
        p.init_latents = lat0;
        p.init_image = NULL;
    }
    int64_t shape[4];
    *n = qd_latent_shape(m, &p, shape, NULL);
    float *lat = malloc(sizeof(float) * *n);
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    if (st_out) *st_out = st;
    else check(st == QD_OK, "generate on %s: %s", model_dir, st ? qd_last_error(ctx) : "ok");
    if (st != QD_OK) { free(lat); lat = NULL; }
    free(img);
    free(opts);
    free(lat0);
    qd_model_free(m);
    cJSON_Delete(cases);
    return lat;
}

static void expect_err(qd_ctx *ctx, const char *dir, const float *image, const float *mask, const char *sampler,
                       int init_latents, qd_status want, const char *text, const char *what) {
    qd_status st;
    size_t n;
    float *lat = run(ctx, dir, image, mask, 0, sampler, init_latents, &st, &n);
    check(!lat && st == want && strstr(qd_last_error(ctx), text), "%s: status %d, '%s'", what, (int)st,
          qd_last_error(ctx));
    free(lat);
}

static void test_start(qd_ctx *ctx, const char *dir, const float *image, const float *half) {
    qd_model *m = NULL;
    qd_scheduler *s = NULL;
    if (qd_model_open(ctx, dir, &m) != QD_OK || qd_scheduler_new(ctx, m->scheduler_config, NULL, NULL, &s) != QD_OK ||
        qd_scheduler_set_timesteps(ctx, s, 6) != QD_OK) {
        check(0, "(c) open %s: %s", dir, qd_last_error(ctx));
        qd_scheduler_free(s);
        qd_model_free(m);
        return;
    }
    enum { S = 64, h = 8, C = 4, per = C * h * h, B = 2 };
    qd_gen_params p;
    memset(&p, 0, sizeof p);
    p.width = p.height = S;
    p.steps = 6;
    p.strength = 1.0;
    p.batch = B;
    p.init_image = image;
    p.mask = half;
    float *lat = malloc(sizeof(float) * B * per), *cond = malloc(sizeof(float) * B * (1 + C) * h * h);
    float *noise = malloc(sizeof(float) * B * per), *e = malloc(sizeof(float) * per), *img = malloc(sizeof(float) * 3 * S * S);
    float *mean = malloc(sizeof(float) * per), *lv = malloc(sizeof(float) * per), *ref = malloc(sizeof(float) * per);
    qd_rng rng, r2;
    qd_rng_seed(&rng, 77);
    qd_rng_seed(&r2, 77);
    int begin = -1;
    qd_status st = qd_inpaint_concat_start(ctx, m, &p, s, B, &rng, &begin, lat, cond);
    check(st == QD_OK && begin == 0, "(c) qd_inpaint_concat_start: %s, begin %d", st ? qd_last_error(ctx) : "ok", begin);
    if (st == QD_OK) {
        qd_rng_randn(&r2, noise, B * per);
        float sigma = qd_scheduler_init_noise_sigma(s);
        for (int i = 0; i < B * per; i++) noise[i] *= sigma;
        double r = rel_l2(lat, noise, B * per);
        check(r <= 1e-7, "(c) latents = first randn * init_noise_sigma %g: rel L2 %.3g", (double)sigma, r);
        for (int c = 0; c < 3; c++)   /* NCHW in [-1, 1], the repainted (x < 32) half zeroed */
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    img[(c * S + y) * S + x] = x < S / 2 ? 0.0f : image[(y * S + x) * 3 + c] * 2.0f - 1.0f;
        st = qd_vae_encode(ctx, m->vae, img, 1, S, S, mean, lv);
        check(st == QD_OK, "(c) reference encode: %s", st ? qd_last_error(ctx) : "ok");
        qd_rng_randn(&r2, e, per);
        const qd_vae_info *vi = qd_vae_get_info(m->vae);
        for (int i = 0; i < per; i++) ref[i] = (mean[i] + expf(0.5f * lv[i]) * e[i] - vi->shift_factor) * vi->scaling_factor;
        for (int b = 0; st == QD_OK && b < B; b++) {
            const float *mk = cond + b * (1 + C) * h * h;
            int bad = 0;
            for (int i = 0; i < h; i++)
                for (int j = 0; j < h; j++) bad += mk[i * h + j] != (j < h / 2 ? 1.0f : 0.0f);
            check(bad == 0, "(c) item %d: mask channel = the half mask on the latent grid (%d cells differ)", b, bad);
            r = rel_l2(mk + h * h, ref, per);
            check(r <= 1e-6, "(c) item %d: masked-image latents = scaling * sampled encode of the masked image, drawn "
                  "after the noise: rel L2 %.3g (tol 1e-6)", b, r);
        }
    }
    free(lat); free(cond); free(noise); free(e); free(img); free(mean); free(lv); free(ref);
    qd_scheduler_free(s);
    qd_model_free(m);
}

/* (e) InpaintModelConditioning's concat: mask channel and masked-image latents. */
static void test_comfy_cond(qd_ctx *ctx, const char *dir, const float *image) {
    qd_model *m = NULL;
    if (qd_model_open(ctx, dir, &m) != QD_OK) {
        check(0, "(e) open %s: %s", dir, qd_last_error(ctx));
        return;
    }
    enum { S = 64, h = 8, C = 4, per = C * h * h, B = 2 };
    float *ramp = malloc(sizeof(float) * S * S), *flat = malloc(sizeof(float) * S * S);
    float *cond = malloc(sizeof(float) * B * (1 + C) * h * h), *img = malloc(sizeof(float) * 3 * S * S);
    float *mean = malloc(sizeof(float) * per), *lv = malloc(sizeof(float) * per), *ref = malloc(sizeof(float) * per);
    const qd_vae_info *vi = qd_vae_get_info(m->vae);
    for (int i = 0; i < S * S; i++) {
        ramp[i] = (float)(i % S) / 63.0f;
        flat[i] = 0.5f;
    }
    for (int pass = 0; pass < 2; pass++) {
        const float *mask = pass ? flat : ramp;
        const char *name = pass ? "mask 0.5" : "ramp mask";
        qd_gen_params p;
        memset(&p, 0, sizeof p);
        p.width = p.height = S;
        p.batch = B;
        p.init_image = image;
        p.mask = mask;
        qd_status st = qd_inpaint_concat_cond_comfy(ctx, m, &p, B, cond);
        check(st == QD_OK, "(e) %s: qd_inpaint_concat_cond_comfy: %s", name, st ? qd_last_error(ctx) : "ok");
        if (st != QD_OK) continue;
        for (int c = 0; c < 3; c++)   /* NCHW in [-1, 1]; repainted pixels 0 */
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    img[(c * S + y) * S + x] = !pass && x >= 32 ? 0.0f : image[(y * S + x) * 3 + c] * 2.0f - 1.0f;
        st = qd_vae_encode(ctx, m->vae, img, 1, S, S, mean, lv);
        check(st == QD_OK, "(e) reference encode: %s", st ? qd_last_error(ctx) : "ok");
        for (int i = 0; i < per; i++) ref[i] = (mean[i] - vi->shift_factor) * vi->scaling_factor;
        for (int b = 0; st == QD_OK && b < B; b++) {
            const float *mk = cond + b * (1 + C) * h * h;
            int bad = 0;
            for (int i = 0; i < h; i++)
                for (int j = 0; j < h; j++) {
                    double v = pass ? 0.0 : floor((8.0 * j + 3.5) / 63.0 + 0.5);   /* no ties on the ramp */
                    bad += mk[i * h + j] != (float)v;
                }
            check(bad == 0, "(e) %s, item %d: mask channel = round(bilinear mask) (%d cells differ)", name, b, bad);
            double r = rel_l2(mk + h * h, ref, per);
            check(r <= 1e-6, "(e) %s, item %d: masked-image latents = scaling * (mean - shift) of the encode of the "
                  "image with round(mask) = 1 pixels at mid gray: rel L2 %.3g (tol 1e-6)", name, b, r);
        }
    }
    free(ramp); free(flat); free(cond); free(img); free(mean); free(lv); free(ref);
    qd_model_free(m);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    if (!scratch_make("inpaint9")) return test_summary();
    char zero[1024], v25[1024], b25[1024], sd[1024];   /* fixture() and scratch_path() buffers rotate */
    snprintf(zero, sizeof zero, "%s", scratch_path("zero"));
    snprintf(v25, sizeof v25, "%s", scratch_path("v25"));
    snprintf(b25, sizeof b25, "%s", scratch_path("b25"));
    snprintf(sd, sizeof sd, "%s", fixture("models/sd15-tiny"));
    int ok = make_model(zero, "concat", NULL) & make_model(v25, "concat", "0.25") & make_model(b25, "bias", "0.25");
    const int S = 64;
    float *image = malloc(sizeof(float) * S * S * 3), *half = malloc(sizeof(float) * S * S),
          *ones = malloc(sizeof(float) * S * S);
    for (int i = 0; i < S * S * 3; i++) image[i] = (float)((i * 7919) % 256) / 255.0f;   /* a fixed pattern */
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            half[y * S + x] = x < S / 2 ? 1.0f : 0.0f;
            ones[y * S + x] = 1.0f;
        }
    if (ok) {
        size_t n = 0, nr = 0, n4 = 0;
        char path[1024];
        snprintf(path, sizeof path, "%s/pipe_euler.safetensors", fixture("goldens/sd15-tiny"));
        float *ref = load_f32(path, "latents", NULL, NULL, &nr);
        /* (a) strength 1 (default) */
        float *l9 = run(ctx, zero, image, half, 0, NULL, 0, NULL, &n);
        float *l4 = run(ctx, sd, NULL, NULL, 0, NULL, 0, NULL, &n4);
        if (l9 && ref && nr == n) {
            double r = rel_l2(l9, ref, n);
            check(r <= 1e-3, "(a) zero-extra 9-channel, strength 1 = txt2img golden pipe_euler: rel L2 %.3g (tol 1e-3)", r);
        } else check(0, "(a) golden comparison: run or golden missing");
        if (l9 && l4 && n4 == n) {
            double r = rel_l2(l9, l4, n);
            check(r <= 1e-6, "(a) zero-extra 9-channel, strength 1 = 4-channel txt2img: rel L2 %.3g (tol 1e-6)", r);
        }
        free(l9); free(l4); free(ref);
        /* (a) strength 0.5: image encode draw, then noise, as image-to-image */
        l9 = run(ctx, zero, image, half, 0.5, NULL, 0, NULL, &n);
        l4 = run(ctx, sd, image, NULL, 0.5, NULL, 0, NULL, &n4);
        if (l9 && l4 && n4 == n) {
            double r = rel_l2(l9, l4, n);
            check(r <= 1e-6, "(a) zero-extra 9-channel, strength 0.5 = 4-channel image-to-image: rel L2 %.3g (tol 1e-6)", r);
        } else check(0, "(a) strength 0.5 runs");
        free(l9); free(l4);
        /* (b) the mask channel: V on its centre tap = conv_in.bias + V under an all-ones mask */
        float *lv = run(ctx, v25, image, ones, 0, NULL, 0, NULL, &n);
        float *lb = run(ctx, b25, NULL, NULL, 0, NULL, 0, NULL, &n4);
        float *lp = run(ctx, sd, NULL, NULL, 0, NULL, 0, NULL, &n4);
        float *lh = run(ctx, v25, image, half, 0, NULL, 0, NULL, &n4);
        if (lv && lb && lp && lh && n4 == n) {
            double r = rel_l2(lv, lb, n), d = max_abs_diff(lv, lp, n), dh = max_abs_diff(lv, lh, n);
            check(r <= 1e-5, "(b) mask-channel weight 0.25, all-ones mask = 4-channel with conv_in.bias + 0.25: "
                  "rel L2 %.3g (tol 1e-5)", r);
            check(d > 1e-3, "(b) ... and differs from the unmodified model: max-abs %.3g (> 1e-3)", d);
            check(dh > 1e-3, "(b) a half mask differs from the all-ones mask: max-abs %.3g (> 1e-3)", dh);
        } else check(0, "(b) runs");
        free(lv); free(lb); free(lp); free(lh);
        test_start(ctx, zero, image, half);
        /* bad input */
        expect_err(ctx, zero, NULL, NULL, NULL, 0, QD_ERR_ARG, "needs an init image and a mask", "no image, no mask");
        expect_err(ctx, zero, image, NULL, NULL, 0, QD_ERR_ARG, "needs an init image and a mask", "no mask");
        expect_err(ctx, zero, NULL, half, NULL, 1, QD_ERR_ARG, "init latents cannot be masked", "init latents");
        /* (d) k-samplers (ComfyUI InpaintModelConditioning + KSampler) */
        l9 = run(ctx, zero, image, half, 0, "euler", 0, NULL, &n);
        l4 = run(ctx, sd, image, half, 0, "euler", 0, NULL, &n4);
        if (l9 && l4 && n4 == n) {
            double r = rel_l2(l9, l4, n);
            check(r <= 1e-6, "(d) zero-extra 9-channel, euler = 4-channel k-sampler inpainting (noise mask): rel L2 "
                  "%.3g (tol 1e-6)", r);
        } else check(0, "(d) k-sampler runs");
        free(l9); free(l4);
        lv = run(ctx, v25, image, ones, 0, "euler", 0, NULL, &n);
        lb = run(ctx, b25, image, ones, 0, "euler", 0, NULL, &n4);
        lp = run(ctx, sd, image, ones, 0, "euler", 0, NULL, &n4);
        if (lv && lb && lp && n4 == n) {
            double r = rel_l2(lv, lb, n), d = max_abs_diff(lv, lp, n);
            check(r <= 1e-5, "(d) euler: mask-channel weight 0.25, all-ones mask = 4-channel with conv_in.bias + 0.25: "
                  "rel L2 %.3g (tol 1e-5)", r);
            check(d > 1e-3, "(d) euler: ... and differs from the unmodified model: max-abs %.3g (> 1e-3)", d);
        } else check(0, "(d) k-sampler mask-channel runs");
        free(lv); free(lb); free(lp);
        test_comfy_cond(ctx, zero, image);
    }
    free(image); free(half); free(ones);
    scratch_remove();
    qd_ctx_free(ctx);
    return test_summary();
}
