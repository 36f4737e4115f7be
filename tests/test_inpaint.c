/* Inpainting (qd_gen_params.mask) against independent references, all in fp32 (test_ctx_new):
 *  (a) the mask on the latent grid against hand-computed cases: diffusers' binarize (>= 0.5)
 *      + torch nearest (src = floor(dst * in / out)), ComfyUI's bilinear (align_corners
 *      False: src = (dst + 0.5) * in / out - 0.5, clamped at 0): exact / 1e-6;
 *  (b) the per-step blend of the diffusers path, (1 - m) * add_noise(x, n, next) + m * l,
 *      against the same computed here in double from the scheduler's sigma: max-abs 1e-6;
 *      and a whole 2-step SD3.5 run with a half mask against a loop written here in double
 *      (Euler flow steps, the blends, the final keep) around the two transformer calls and
 *      the seed's noise (qd_rng, torch's stream): rel L2 <= 1e-5;
 *  (c) end to end per family (SD1.5, SDXL, SD3.5, FLUX tiny models, init latents): a mask
 *      of ones is image-to-image bit for bit (both paths); a mask of zeros returns the init
 *      latents exactly (diffusers: the last blend is (1 - 0) * image_latents + 0 * x) and
 *      within 1e-5 relative for ComfyUI's euler (its last step lands on the blended x0);
 *      a half mask keeps the image latents exactly in the kept half (diffusers) and changes
 *      the other half (max-abs > 1e-3);
 *  (d) the trained shapes-sd model: the kept half of the picture stays as close to the
 *      input as the VAE round trip (PSNR), the repainted half moves away;
 *  bad input: a mask without an init image, values outside [0, 1] or NaN, mask_count. */
#include "testutil.h"
#include "pipeline/inpaint.h"
#include "pipeline/model.h"
#include "pipeline/prompt.h"
#include "base/rng.h"
#include "models/sd3_transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_resize(void) {
    /* 16x16 -> 2x2 nearest picks pixels (0,0), (0,8), (8,0), (8,8), binarized at 0.5 */
    float in[256], out[4];
    for (int i = 0; i < 256; i++) in[i] = 0.3f;
    in[0] = 0.5f; in[8] = 0.49f; in[8 * 16] = 1.0f; in[8 * 16 + 8] = 0.0f; in[1] = 1.0f;
    qd_inpaint_mask_nearest(in, 16, 16, 2, 2, out);
    check(out[0] == 1 && out[1] == 0 && out[2] == 1 && out[3] == 0, "nearest 16->2: %g %g %g %g (want 1 0 1 0)",
          out[0], out[1], out[2], out[3]);
    /* 3 -> 2 (scale 1.5): nearest rows/cols 0 and floor(1.5) = 1 */
    float a[9] = {0.9f, 0.1f, 0.2f, 0.1f, 0.6f, 0.9f, 0.7f, 0.8f, 0.0f}, b[4];
    qd_inpaint_mask_nearest(a, 3, 3, 2, 2, b);
    check(b[0] == 1 && b[1] == 0 && b[2] == 0 && b[3] == 1, "nearest 3->2: %g %g %g %g (want 1 0 0 1)", b[0], b[1],
          b[2], b[3]);
    /* bilinear 16 -> 2: src 3.5 and 11.5: the mean of the 2x2 pixels around (3.5, 3.5) ... */
    for (int i = 0; i < 256; i++) in[i] = (float)((i * 37) % 101) / 100.0f;
    qd_inpaint_mask_bilinear(in, 16, 16, 2, 2, out);
    for (int oi = 0; oi < 2; oi++)
        for (int oj = 0; oj < 2; oj++) {
            int y = 8 * oi + 3, x = 8 * oj + 3;
            double want = 0.25 * ((double)in[y * 16 + x] + in[y * 16 + x + 1] + in[(y + 1) * 16 + x] + in[(y + 1) * 16 + x + 1]);
            check(fabs(out[oi * 2 + oj] - want) < 1e-6, "bilinear 16->2 (%d,%d): %g (want %g)", oi, oj, out[oi * 2 + oj], want);
        }
    /* bilinear 3 -> 2: rows/cols at 0.25 (0 and 1) and 1.75 (1 and 2) */
    qd_inpaint_mask_bilinear(a, 3, 3, 2, 2, b);
    const double w[2][2] = {{0.75, 0.25}, {0.25, 0.75}};
    const int i0[2] = {0, 1};
    for (int oi = 0; oi < 2; oi++)
        for (int oj = 0; oj < 2; oj++) {
            double want = 0;
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) want += w[oi][dy] * w[oj][dx] * a[(i0[oi] + dy) * 3 + i0[oj] + dx];
            check(fabs(b[oi * 2 + oj] - want) < 1e-6, "bilinear 3->2 (%d,%d): %g (want %g)", oi, oj, b[oi * 2 + oj], want);
        }
}

/* (b) the diffusers blend with a real scheduler's add_noise at the next step, in double. */
static void test_blend(qd_ctx *ctx, qd_model *m, const char *cls, int flow) {
    qd_scheduler *s = NULL;
    qd_status st = qd_scheduler_new(ctx, m->scheduler_config, cls, NULL, &s);
    if (st == QD_OK && flow) st = qd_scheduler_set_flow_inputs(ctx, s, 0, 0, NULL, 0);
    if (st == QD_OK) st = qd_scheduler_set_timesteps(ctx, s, 2);
    check(st == QD_OK, "%s: 2-step schedule: %s", cls, st ? qd_last_error(ctx) : "ok");
    if (st != QD_OK) { qd_scheduler_free(s); return; }
    enum { N = 64 };
    float x[N], nz[N], lat[N], mk[N], keep[N];
    for (int i = 0; i < N; i++) {
        x[i] = (float)sin(0.3 * i); nz[i] = (float)cos(0.7 * i); lat[i] = (float)(0.01 * i - 0.3);
        mk[i] = (i % 3) / 2.0f;   /* 0, 0.5, 1 */
    }
    qd_scheduler_add_noise(s, 1, x, nz, N, keep);
    float got[N];
    memcpy(got, lat, sizeof lat);
    qd_inpaint_blend(mk, keep, got, N);
    double sigma = qd_scheduler_model_sigma(s, 1), worst = 0;
    for (int i = 0; i < N; i++) {
        double noised = flow ? sigma * nz[i] + (1 - sigma) * x[i] : x[i] + sigma * nz[i];
        double want = (1 - mk[i]) * noised + mk[i] * lat[i];
        worst = fmax(worst, fabs(got[i] - want));
    }
    check(worst <= 1e-6, "%s: blend with image latents noised to step 1 (sigma %g): max-abs %.2g (<= 1e-6)", cls,
          sigma, worst);
    qd_scheduler_free(s);
}

/* FLUX's _pack_latents, written out here: [C, h, w] -> [(h/2)(w/2), 4C]. */
static void pack(const float *x, int C, int h, int w, float *y) {
    for (int c = 0; c < C; c++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) y[((i / 2) * (w / 2) + j / 2) * 4 * C + c * 4 + (i % 2) * 2 + (j % 2)] = x[(c * h + i) * w + j];
}

/* Whether unpacked cell (c, i, j) of latents_out (packed for FLUX) is at k. */
static float cell(const qd_model *m, const float *lat, int C, int h, int w, int c, int i, int j) {
    if (m->family == QD_FAMILY_FLUX) return lat[((i / 2) * (w / 2) + j / 2) * 4 * C + c * 4 + (i % 2) * 2 + (j % 2)];
    return lat[(c * h + i) * w + j];
}

static void test_family(qd_ctx *ctx, qd_model *m, const char *name, const char *sampler) {
    const int S = 64;
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.width = p.height = S;
    p.steps = 4;
    p.seed = 11;
    p.sampler = sampler;
    p.strength = 0.75;
    qd_gen_params_resolve(m, &p);
    int C = m->latent_channels, h = S / m->vae_scale, w = S / m->vae_scale;
    int64_t shape[4];
    size_t nlat = qd_latent_shape(m, &p, shape, NULL), nin = (size_t)C * h * w;
    float *init = malloc(sizeof(float) * nin), *ref = malloc(sizeof(float) * nlat), *got = malloc(sizeof(float) * nlat);
    float *mask = malloc(sizeof(float) * S * S), *init_l = malloc(sizeof(float) * nlat);
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    for (size_t i = 0; i < nin; i++) init[i] = (float)(0.8 * cos(0.13 * i));
    if (m->family == QD_FAMILY_FLUX) pack(init, C, h, w, init_l);
    else memcpy(init_l, init, sizeof(float) * nin);
    p.init_latents = init;
    const char *path = sampler ? sampler : "diffusers";
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, ref);   /* image-to-image */
    for (int i = 0; i < S * S; i++) mask[i] = 1;
    p.mask = mask;
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, got);
    check(st == QD_OK && !memcmp(ref, got, sizeof(float) * nlat), "%s %s: mask of ones = image-to-image bit for bit (%s)",
          name, path, st ? qd_last_error(ctx) : "ok");
    for (int i = 0; i < S * S; i++) mask[i] = 0;
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, got);
    if (!sampler)
        check(st == QD_OK && !memcmp(init_l, got, sizeof(float) * nlat), "%s %s: mask of zeros returns the init latents "
              "exactly (%s)", name, path, st ? qd_last_error(ctx) : "ok");
    else
        check(st == QD_OK && rel_l2(got, init_l, nlat) <= 1e-5, "%s %s: mask of zeros returns the init latents: "
              "rel L2 %.2g (<= 1e-5)", name, path, st == QD_OK ? rel_l2(got, init_l, nlat) : -1.0);
    /* left half (pixel columns < S/2) repainted */
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) mask[y * S + x] = x < S / 2 ? 1.0f : 0.0f;
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, got);
    double kept = 0, moved = 0, kept_ref = 0;
    /* ComfyUI's bilinear mask is soft at the seam: compare columns clear of it */
    for (int c = 0; st == QD_OK && c < C; c++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                double d = fabs((double)cell(m, got, C, h, w, c, i, j) - init[(c * h + i) * w + j]);
                if (j < w / 2 - 1) moved = fmax(moved, d);
                else if (j > w / 2) kept = fmax(kept, d);
                if (j > w / 2) kept_ref = fmax(kept_ref, fabs((double)init[(c * h + i) * w + j]));
            }
    double kept_tol = sampler ? 1e-5 * kept_ref : 0;
    check(st == QD_OK && kept <= kept_tol && moved > 1e-3, "%s %s: half mask keeps the image latents (max-abs %.2g, <= %.2g) "
          "and repaints the other half (max-abs change %.3g > 1e-3) (%s)", name, path, kept, kept_tol, moved,
          st ? qd_last_error(ctx) : "ok");
    free(init); free(ref); free(got); free(mask); free(init_l); free(img);
}

static double psnr_region(const float *a, const float *b, int S, int x0, int x1) {
    double se = 0;
    size_t n = 0;
    for (int y = 0; y < S; y++)
        for (int x = x0; x < x1; x++)
            for (int c = 0; c < 3; c++, n++) {
                double d = (double)a[(y * S + x) * 3 + c] - b[(y * S + x) * 3 + c];
                se += d * d;
            }
    return se == 0 ? 99 : 10 * log10(1.0 / (se / n));
}

static void test_shapes(qd_ctx *ctx, qd_model *m) {
    float *in = load_f32(fixture("goldens/shapes-sd/pipe_00.safetensors"), "image_nhwc", NULL, NULL, NULL);
    check(in != NULL, "shapes-sd pipe_00 image loads");
    if (!in) return;
    const int S = 64;
    size_t n = (size_t)S * S * 3;
    float *out = malloc(sizeof(float) * n), *mask = malloc(sizeof(float) * S * S), *rt = malloc(sizeof(float) * n);
    float lat[4 * 64];
    qd_vae_model *vae = NULL;
    qd_status st = qd_vae_open(ctx, fixture("models/shapes-sd/vae"), &vae);
    if (st == QD_OK) st = qd_vae_encode_image(ctx, vae, QD_IMAGE_F32, in, 1, S, S, lat);
    if (st == QD_OK) st = qd_vae_decode_latent(ctx, vae, lat, 1, 8, 8, QD_IMAGE_F32, rt);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) mask[y * S + x] = x < S / 2 ? 1.0f : 0.0f;
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a green square on a yellow background";   /* not pipe_00's prompt: the left half must change */
    p.cfg_scale = 5;
    p.seed = 3;
    p.init_image = in;
    p.mask = mask;   /* strength 0: SD1.5's inpaint default 1.0 */
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_F32, out, NULL);
    check(st == QD_OK, "shapes-sd inpaint: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        /* columns 40.. are kept (the decoder's receptive field blurs a few pixels past the seam at 32) */
        double rt_kept = psnr_region(rt, in, S, 40, S), kept = psnr_region(out, in, S, 40, S);
        double rep = psnr_region(out, in, S, 0, 24), rt_rep = psnr_region(rt, in, S, 0, 24);
        printf("  shapes-sd inpaint PSNR vs input: kept cols 40-63 %.1f dB (VAE round trip %.1f), repainted cols 0-23 "
               "%.1f dB (round trip %.1f)\n", kept, rt_kept, rep, rt_rep);
        check(kept >= rt_kept - 1, "kept region as close as the VAE round trip: %.1f dB (>= %.1f - 1)", kept, rt_kept);
        check(rep < rt_rep - 3, "repainted region changed: %.1f dB (< round trip %.1f - 3)", rep, rt_rep);
    }
    qd_vae_close(vae);
    free(in); free(out); free(mask); free(rt);
}

/* (b) the 2-step diffusers-path run of FlowMatchEuler on sd35-tiny (no CFG), half mask,
 * init latents given (no encode draw), recomputed here: x = s0 n + (1 - s0) init;
 * x1 = x + (s1 - s0) v(x, t0); x1 = (1 - m) (s1 n + (1 - s1) init) + m x1;
 * x2 = x1 + (0 - s1) v(x1, t1); final = (1 - m) init + m x2. */
static void test_two_steps(qd_ctx *ctx, qd_model *m) {
    const int S = 64, h = 8, w = 8, C = m->latent_channels, n = C * h * w;
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.width = p.height = S;
    p.steps = 2;
    p.seed = 17;
    p.cfg_scale = 1;   /* one row: no guidance */
    p.strength = 1.0;
    float *init = malloc(sizeof(float) * n), *mask = malloc(sizeof(float) * S * S), *got = malloc(sizeof(float) * n);
    float *nz = malloc(sizeof(float) * n), *xf = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
    double *x = malloc(sizeof(double) * n), *mk = malloc(sizeof(double) * n), *want = malloc(sizeof(double) * n);
    uint8_t *img = malloc((size_t)S * S * 3);
    for (int i = 0; i < n; i++) init[i] = (float)(0.7 * sin(0.37 * i));
    for (int y = 0; y < S; y++)
        for (int xx = 0; xx < S; xx++) mask[y * S + xx] = xx < S / 2 ? 1.0f : 0.0f;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) mk[(c * h + i) * w + j] = j < w / 2 ? 1.0 : 0.0;   /* nearest: pixel 8j */
    p.init_latents = init;
    p.mask = mask;
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, got);
    check(st == QD_OK, "sd35-tiny 2-step inpaint run: %s", st ? qd_last_error(ctx) : "ok");
    /* the reference */
    qd_scheduler *s = NULL;
    qd_cond cond = {0};
    qd_rng rng;
    qd_rng_seed(&rng, p.seed);
    qd_rng_randn(&rng, nz, n);
    int dynamic, bs, ms;
    double b0, b1;
    if (st == QD_OK) st = qd_scheduler_new(ctx, m->scheduler_config, NULL, NULL, &s);
    if (st == QD_OK && qd_scheduler_is_flow(s, &dynamic, &bs, &ms, &b0, &b1)) {
        double slope = (b1 - b0) / (ms - bs), mu = 16 * slope + (b0 - slope * bs);
        st = qd_scheduler_set_flow_inputs(ctx, s, dynamic, mu, NULL, 0);
    }
    if (st == QD_OK) st = qd_scheduler_set_timesteps(ctx, s, 2);
    if (st == QD_OK) st = qd_encode_prompts(ctx, m, p.prompt, NULL, 1, 0, S, S, 0, &cond);
    double sg[3] = {0, 0, 0};
    if (st == QD_OK) {
        sg[0] = qd_scheduler_model_sigma(s, 0);
        sg[1] = qd_scheduler_model_sigma(s, 1);
        for (int i = 0; i < n; i++) x[i] = sg[0] * nz[i] + (1 - sg[0]) * init[i];
    }
    for (int k = 0; st == QD_OK && k < 2; k++) {
        for (int i = 0; i < n; i++) xf[i] = (float)x[i];
        float t = qd_scheduler_timestep(s, k);
        st = qd_sd3_forward(ctx, m->sd3, xf, 1, h, w, &t, cond.context, cond.L, cond.pooled, v);
        if (st == QD_OK) st = qd_op_status(ctx);
        for (int i = 0; st == QD_OK && i < n; i++) {
            double stepped = x[i] + (sg[k + 1] - sg[k]) * v[i];
            double keep = k == 0 ? sg[1] * nz[i] + (1 - sg[1]) * init[i] : init[i];
            x[i] = (1 - mk[i]) * keep + mk[i] * stepped;
        }
    }
    check(st == QD_OK, "2-step reference: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        double num = 0, den = 0;
        for (int i = 0; i < n; i++) {
            want[i] = x[i];
            num += (got[i] - want[i]) * (got[i] - want[i]);
            den += want[i] * want[i];
        }
        double r = sqrt(num / den);
        check(r <= 1e-5, "sd35-tiny 2-step half-mask run = the loop recomputed in double (sigmas %g, %g): rel L2 %.2g "
              "(<= 1e-5)", sg[0], sg[1], r);
    }
    qd_cond_free(&cond);
    qd_scheduler_free(s);
    free(init); free(mask); free(got); free(nz); free(xf); free(v); free(x); free(mk); free(want); free(img);
}

static void test_bad(qd_ctx *ctx, qd_model *m) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "x";
    p.width = p.height = 64;
    p.steps = 2;
    float *mask = calloc(64 * 64, sizeof(float)), *init = calloc(4 * 64, sizeof(float));
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    p.mask = mask;
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "needs an init image"), "mask without init image refused: %s",
          qd_last_error(ctx));
    p.init_latents = init;
    mask[100] = 1.5f;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "not in [0, 1]"), "mask value 1.5 refused: %s", qd_last_error(ctx));
    mask[100] = NAN;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "not in [0, 1]"), "NaN mask refused: %s", qd_last_error(ctx));
    mask[100] = 0;
    p.mask_count = 2;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "masks for"), "2 masks for 1 image refused: %s", qd_last_error(ctx));
    free(mask); free(init); free(img);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    test_resize();
    qd_model *sd = test_open_model(ctx, "models/sd15-tiny"), *sdxl = test_open_model(ctx, "models/sdxl-tiny");
    qd_model *sd3 = test_open_model(ctx, "models/sd35-tiny"), *flux = test_open_model(ctx, "models/flux-tiny");
    qd_model *shapes = test_open_model(ctx, "models/shapes-sd");
    if (sd) {
        test_blend(ctx, sd, "EulerDiscreteScheduler", 0);
        test_bad(ctx, sd);
    }
    if (sd3) {
        test_blend(ctx, sd3, "FlowMatchEulerDiscreteScheduler", 1);
        test_two_steps(ctx, sd3);
    }
    qd_model *all[4] = {sd, sdxl, sd3, flux};
    const char *names[4] = {"sd15-tiny", "sdxl-tiny", "sd35-tiny", "flux-tiny"};
    for (int i = 0; i < 4; i++)
        if (all[i]) {
            test_family(ctx, all[i], names[i], NULL);
            test_family(ctx, all[i], names[i], "euler");
        }
    if (shapes) test_shapes(ctx, shapes);
    for (int i = 0; i < 4; i++) qd_model_free(all[i]);
    qd_model_free(shapes);
    qd_ctx_free(ctx);
    return test_summary();
}
