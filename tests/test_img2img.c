/* Image-to-image against independent references (no diffusers img2img goldens exist):
 *  (a) the part of the schedule that runs: diffusers' get_timesteps (t_start =
 *      steps - int(steps * strength), times scheduler.order) and ComfyUI's
 *      KSampler.set_steps (the last steps+1 sigmas of int(steps/denoise) steps),
 *      against values computed here from the formulas (double precision);
 *  (b) the noised start latents of the diffusers path (SD1.5, SDXL, SD3.5, FLUX): VAE mean/logvar from diffusers'
 *      VAE goldens, torch's generator stream (tests/fixtures/img2img, made by
 *      tests/tools/make_img2img_noise.py with torch), latent_dist.sample, scaling and
 *      add_noise / scale_noise computed here: rel L2 <= 1e-4, max-abs <= 1e-3 of max
 *      (the VAE component tolerance);
 *  (c) end to end where the math fixes the answer: flow models at strength 1 start
 *      from pure noise, so given init latents they reproduce diffusers' txt2img goldens
 *      (latents rel L2 <= 1e-3); ComfyUI's KSampler at denoise 1 on a zero latent is
 *      its txt2img (bit-exact), and on any latent for flow models; the trained
 *      shapes-sd model keeps the picture at low strength (PSNR bounds below) and
 *      returns the encode-decode of the input as strength -> 0;
 *  bad input: strength out of range or leaving no step, init_count, both inputs.
 * All in fp32 (test_ctx_new). */
#include "testutil.h"
#include "io/json.h"
#include "pipeline/img2img.h"
#include "pipeline/ksample_loop.h"
#include "pipeline/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* scaled_linear betas of SD1.5 (0.00085 .. 0.012, 1000) -> alphas_cumprod[t], double */
static double sd_alphas_cumprod(int t) {
    double ac = 1;
    for (int i = 0; i <= t; i++) {
        double b = sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * i / 999.0;
        ac *= 1 - b * b;
    }
    return ac;
}

static void test_t_start(void) {
    /* Python: int(steps * strength) with double strength */
    struct { int steps; double s; int want; } c[] = {
        {20, 0.3, 14},   /* 20 * 0.3 = 6.000000000000001 -> 6 */
        {10, 0.7, 3},    /* 7.000000000000001 -> 7 (a float strength would give 6.9999999 -> 6) */
        {100, 0.29, 72}, /* 28.999999999999996 -> 28 */
        {28, 0.6, 12},   /* 16.8 -> 16 */
        {4, 0.2, 4},     /* 0.8 -> 0: no step left */
        {10, 1.0, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        check(qd_img2img_t_start(c[i].steps, c[i].s) == c[i].want, "get_timesteps t_start(%d, %g) = %d (want %d)",
              c[i].steps, c[i].s, qd_img2img_t_start(c[i].steps, c[i].s), c[i].want);
    struct { int steps; double d; int want; } k[] = {{20, 0.5, 40}, {10, 0.3, 33}, {20, 1.0, 20}, {20, 0.99995, 20}, {3, 0.7, 4}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        check(qd_img2img_comfy_steps(k[i].steps, k[i].d) == k[i].want, "ComfyUI denoise schedule(%d, %g) = %d (want %d)",
              k[i].steps, k[i].d, qd_img2img_comfy_steps(k[i].steps, k[i].d), k[i].want);
}

/* diffusers' begin index and its timestep, for a scheduler class on sd15-tiny (leading
 * spacing, steps_offset 1: timesteps 901, 801, ..., 1 for 10 steps). */
static void test_begin(qd_ctx *ctx, qd_model *m, const char *cls, int steps, double strength, int want_begin,
                       float want_t) {
    qd_scheduler *s = NULL;
    qd_status st = qd_scheduler_new(ctx, m->scheduler_config, cls, NULL, &s);
    if (st == QD_OK) st = qd_scheduler_set_timesteps(ctx, s, steps);
    int begin = qd_img2img_t_start(steps, strength) * (s ? qd_scheduler_order(s) : 1);
    if (st == QD_OK) st = qd_scheduler_set_begin(ctx, s, begin);
    check(st == QD_OK && begin == want_begin && qd_scheduler_timestep(s, begin) == want_t,
          "%s steps %d strength %g: begins at index %d, timestep %g (want %d, %g)", cls, steps, strength, begin,
          st == QD_OK ? qd_scheduler_timestep(s, begin) : -1.0f, want_begin, want_t);
    qd_scheduler_free(s);
}

/* ComfyUI sigmas with denoise: karras (closed form) on sd15-tiny, simple on sd35-tiny (shift 3). */
static void test_comfy_sigmas(qd_ctx *ctx, qd_model *sd, qd_model *sd3) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "x";
    p.sampler = "euler";
    p.schedule = "karras";
    p.steps = 4;
    p.strength = 0.5;
    qd_gen_params_resolve(sd, &p);
    qd_scheduler *s = NULL;
    double *sig = NULL;
    int n = 0;
    qd_status st = qd_ksample_scheduler(ctx, sd, &p, &s);
    if (st == QD_OK) st = qd_ksample_sigmas(ctx, sd, &p, s, 1, &sig, &n);
    check(st == QD_OK && n == 5, "karras steps 4 denoise 0.5: %d sigmas (want 5) %s", n, st ? qd_last_error(ctx) : "");
    if (st == QD_OK && n == 5) {
        /* ComfyUI's model_sampling: alphas_cumprod (float64 cumprod) stored as float32, sigmas in float32 */
        float ac0 = (float)sd_alphas_cumprod(0), ac1 = (float)sd_alphas_cumprod(999);
        double smin = sqrtf((1.0f - ac0) / ac0), smax = sqrtf((1.0f - ac1) / ac1);
        double want[9], worst = 0;
        for (int i = 0; i < 8; i++) {   /* get_sigmas_karras(8, smin, smax, rho 7) + [0] */
            double r = i / 7.0, a = pow(smax, 1 / 7.0), b = pow(smin, 1 / 7.0);
            want[i] = pow(a + r * (b - a), 7);
        }
        want[8] = 0;
        for (int i = 0; i < 5; i++) {
            double e = fabs(sig[i] - want[4 + i]) / fmax(want[4 + i], 1e-3);
            if (e > worst) worst = e;
        }
        check(worst < 1e-5, "karras denoise 0.5: the last 5 of 8 steps' sigmas (max rel err %.2g, tol 1e-5)", worst);
    }
    free(sig);
    qd_scheduler_free(s);
    s = NULL;
    sig = NULL;
    qd_gen_params_default(&p);
    p.prompt = "x";
    p.sampler = "euler";
    p.steps = 3;
    p.strength = 0.5;
    qd_gen_params_resolve(sd3, &p);
    st = qd_ksample_scheduler(ctx, sd3, &p, &s);
    if (st == QD_OK) st = qd_ksample_sigmas(ctx, sd3, &p, s, 1, &sig, &n);
    check(st == QD_OK && n == 4, "flow simple steps 3 denoise 0.5: %d sigmas (want 4) %s", n, st ? qd_last_error(ctx) : "");
    if (st == QD_OK && n == 4) {
        /* simple over 6 steps: sigmas[-(1 + int(x * 1000/6))], sigma(t) = 3t / (1 + 2t), t = idx/1000 */
        int k[3] = {500, 666, 833};
        double worst = 0;
        for (int i = 0; i < 3; i++) {
            double t = (1000 - k[i]) / 1000.0, want = 3 * t / (1 + 2 * t);
            worst = fmax(worst, fabs(sig[i] - want) / want);
        }
        check(worst < 1e-6 && sig[3] == 0, "flow simple denoise 0.5: the last 4 of 6 steps' sigmas (max rel err %.2g)",
              worst);
    }
    free(sig);
    qd_scheduler_free(s);
}

/* The golden VAE input [1,3,64,64] in [-1,1] as an NHWC [0,1] init image. */
static float *golden_image(const char *model, float **mean, float **logvar) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s/vae.safetensors", fixture("goldens"), model);
    float *img = load_f32(path, "image", NULL, NULL, NULL);
    *mean = load_f32(path, "encoded_mean", NULL, NULL, NULL);
    *logvar = load_f32(path, "encoded_logvar", NULL, NULL, NULL);
    if (!img) return NULL;
    float *nhwc = malloc(sizeof(float) * 3 * 64 * 64);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 64 * 64; i++) nhwc[i * 3 + c] = (img[c * 4096 + i] + 1) / 2;
    free(img);
    return nhwc;
}

/* (b): qd_img2img_start's latents against the reference computed here. kind: 0 sigma-space
 * (x0 + sigma n), 1 DDIM (sqrt(ac) x0 + sqrt(1-ac) n), 2 flow (sigma n + (1-sigma) x0). */
static void test_start(qd_ctx *ctx, qd_model *m, const char *golden, const char *cls, const char *noise_key,
                       uint64_t seed, int steps, double strength, int batch, int kind, double coef,
                       float scale, float shift) {
    float *mean, *logvar, *img = golden_image(golden, &mean, &logvar);
    char npath[512], key[64];
    snprintf(npath, sizeof npath, "%s", fixture("img2img/torch_noise.safetensors"));
    snprintf(key, sizeof key, "%s_sample", noise_key);
    float *e1 = load_f32(npath, key, NULL, NULL, NULL);
    snprintf(key, sizeof key, "%s_noise", noise_key);
    float *e2 = load_f32(npath, key, NULL, NULL, NULL);
    check(img && mean && logvar && e1 && e2, "%s: golden VAE and torch noise fixtures load", golden);
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "x";
    p.width = p.height = 64;
    p.steps = steps;
    p.batch = batch;
    p.seed = seed;
    p.strength = strength;
    p.init_image = img;
    p.scheduler = cls;
    qd_gen_params_resolve(m, &p);
    int64_t per = (int64_t)m->latent_channels * 64;
    float *got = malloc(sizeof(float) * (size_t)(batch * per)), *want = malloc(sizeof(float) * (size_t)(batch * per));
    qd_scheduler *s = NULL;
    qd_status st = img && mean && logvar && e1 && e2 ? qd_img2img_check(ctx, m, &p) : QD_ERR_ARG;
    if (st == QD_OK) st = qd_scheduler_new(ctx, m->scheduler_config, cls, NULL, &s);
    if (st == QD_OK && qd_scheduler_is_flow(s, NULL, NULL, NULL, NULL, NULL) && m->family == QD_FAMILY_FLUX) {
        /* FluxImg2ImgPipeline: sigmas np.linspace(1, 1/n, n) and mu from the 16 image tokens */
        float sg[64];
        for (int i = 0; i < steps; i++) sg[i] = (float)(1.0 + (1.0 / steps - 1.0) * i / (steps - 1));
        double slope = (1.15 - 0.5) / (4096 - 256), mu = 16 * slope + (0.5 - slope * 256);
        st = qd_scheduler_set_flow_inputs(ctx, s, 1, mu, sg, steps);
    }
    if (st == QD_OK) st = qd_scheduler_set_timesteps(ctx, s, steps);
    qd_rng rng;
    qd_rng_seed(&rng, seed);
    int begin = -1;
    if (st == QD_OK) st = qd_img2img_start(ctx, m, &p, s, batch, &rng, &begin, got);
    check(st == QD_OK, "%s %s img2img start: %s", golden, cls, st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        for (int64_t b = 0; b < batch; b++)
            for (int64_t i = 0; i < per; i++) {
                double x0 = ((double)mean[i] + exp(0.5 * logvar[i]) * e1[i] - shift) * scale;
                double n = e2[b * per + i], x;
                if (kind == 0) x = x0 + coef * n;
                else if (kind == 1) x = sqrt(coef) * x0 + sqrt(1 - coef) * n;
                else x = coef * n + (1 - coef) * x0;
                want[b * per + i] = (float)x;
            }
        char what[256];
        snprintf(what, sizeof what, "%s %s steps %d strength %g batch %d: start latents (begin %d)", golden, cls, steps,
                 strength, batch, begin);
        check_close(what, got, want, (size_t)(batch * per), 1e-4, 1e-3);
    }
    qd_scheduler_free(s);
    free(got); free(want); free(img); free(mean); free(logvar); free(e1); free(e2);
}

/* (c) flow model, diffusers path, strength 1 with init latents = its txt2img golden. */
static void test_flow_strength1(qd_ctx *ctx, qd_model *m, const char *golden_dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/cases.json", fixture(golden_dir));
    cJSON *cases;
    if (qd_json_load(ctx, path, &cases) != QD_OK) { check(0, "%s", qd_last_error(ctx)); return; }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cases, "pipelines")->child;
    qd_gen_params p;
    char *opts = golden_case_params(m, c, &p);
    qd_gen_params_resolve(m, &p);
    int64_t shape[4];
    size_t nlat = qd_latent_shape(m, &p, shape, NULL);
    size_t nin = (size_t)m->latent_channels * (p.height / 8) * (p.width / 8);
    float *init = malloc(sizeof(float) * nin), *lat = malloc(sizeof(float) * nlat);
    for (size_t i = 0; i < nin; i++) init[i] = (float)sin(0.37 * i) * 2;   /* anything: strength 1 ignores it */
    p.init_latents = init;
    p.strength = 1.0;
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    check(st == QD_OK, "%s img2img strength 1: %s", golden_dir, st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        snprintf(path, sizeof path, "%s/%s", fixture(golden_dir), qd_json_str(c, "golden", ""));
        size_t nref = 0;
        float *ref = load_f32(path, "latents", NULL, NULL, &nref);
        double r = ref && nref == nlat ? rel_l2(lat, ref, nlat) : 1;
        check(r <= 1e-3, "%s: strength-1 img2img (scale_noise -> pure noise) = the txt2img golden: rel_l2 %.3g (tol 1e-3)",
              golden_dir, r);
        free(ref);
    }
    free(opts); free(init); free(lat); free(img);
    cJSON_Delete(cases);
}

/* (c) k-sampler at denoise 1: img2img of `init` (NULL: zeros) equals txt2img bit for bit. */
static void test_ksampler_identity(qd_ctx *ctx, qd_model *m, const char *name, int zeros) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.width = p.height = 64;
    p.steps = 3;
    p.seed = 5;
    p.sampler = "euler_ancestral";
    qd_gen_params_resolve(m, &p);
    int64_t shape[4];
    size_t nlat = qd_latent_shape(m, &p, shape, NULL), nin = (size_t)m->latent_channels * 64;
    float *a = malloc(sizeof(float) * nlat), *b = malloc(sizeof(float) * nlat), *init = calloc(nin, sizeof(float));
    for (size_t i = 0; !zeros && i < nin; i++) init[i] = (float)cos(0.11 * i);
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, a);
    p.init_latents = init;
    p.strength = 1.0;
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, b);
    check(st == QD_OK && !memcmp(a, b, sizeof(float) * nlat),
          "%s k-sampler denoise 1 on a %s latent = txt2img, bit-exact (%s)", name, zeros ? "zero" : "random",
          st ? qd_last_error(ctx) : "ok");
    free(a); free(b); free(init); free(img);
}

/* One init image (or latent) per batch item (init_count == batch): item b starts from input b.
 * The items of a batch are computed independently and their random draws are slices fixed by
 * the item's position, so inputs [A, B] must give item 0 of [A, A] and item 1 of [B, B]
 * bit for bit: on the diffusers path from images (the encode's samples are drawn for both
 * items at once), and on the k-sampler path from latents. */
static void test_per_item_init(qd_ctx *ctx, qd_model *m) {
    const int W = 64;
    size_t nimg = (size_t)W * W * 3, nl = (size_t)m->latent_channels * (W / 8) * (W / 8);
    for (int path = 0; path < 2; path++) {
        size_t nin = path == 0 ? nimg : nl;
        float *ab = malloc(sizeof(float) * 2 * nin), *aa = malloc(sizeof(float) * 2 * nin), *bb = malloc(sizeof(float) * 2 * nin);
        for (size_t i = 0; i < nin; i++) {
            float a = 0.5f + 0.4f * (float)sin(0.01 * i), b = 0.5f + 0.4f * (float)cos(0.013 * i);
            if (path == 1) { a = 2 * a - 1; b = 2 * b - 1; }
            ab[i] = aa[i] = aa[nin + i] = a;
            ab[nin + i] = bb[i] = bb[nin + i] = b;
        }
        qd_gen_params p;
        qd_gen_params_default(&p);
        p.prompt = "a red circle";
        p.width = p.height = W;
        p.steps = 4;
        p.seed = 11;
        p.batch = 2;
        p.init_count = 2;
        p.strength = 0.5;
        if (path == 0) p.scheduler = "EulerDiscreteScheduler";
        else p.sampler = "euler";
        int64_t shape[4];
        size_t nlat = qd_latent_shape(m, &p, shape, NULL);
        float *out[3];
        uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
        const float *ins[3] = {ab, aa, bb};
        qd_status st = QD_OK;
        for (int k = 0; k < 3; k++) {
            out[k] = malloc(sizeof(float) * nlat);
            if (path == 0) p.init_image = ins[k];
            else p.init_latents = ins[k];
            if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, out[k]);
        }
        size_t half = nlat / 2;
        check(st == QD_OK && !memcmp(out[0], out[1], sizeof(float) * half) &&
                  !memcmp(out[0] + half, out[2] + half, sizeof(float) * half) &&
                  memcmp(out[0], out[0] + half, sizeof(float) * half),
              "%s: inputs [A, B] = item 0 of [A, A] and item 1 of [B, B], bit for bit (%s)",
              path == 0 ? "diffusers Euler, init images" : "k-sampler euler, init latents", st ? qd_last_error(ctx) : "ok");
        for (int k = 0; k < 3; k++) free(out[k]);
        free(ab); free(aa); free(bb); free(img);
    }
}

static double psnr(const float *a, const float *b, size_t n) {
    double se = 0;
    for (size_t i = 0; i < n; i++) se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return se == 0 ? 99 : 10 * log10(1.0 / (se / n));
}

/* (c) the trained shapes-sd model: a diffusers-made picture (its pipe_00 golden). */
static void test_shapes(qd_ctx *ctx, qd_model *m) {
    char path[512];
    snprintf(path, sizeof path, "%s", fixture("goldens/shapes-sd/pipe_00.safetensors"));
    float *in = load_f32(path, "image_nhwc", NULL, NULL, NULL);
    check(in != NULL, "shapes-sd pipe_00 image loads");
    if (!in) return;
    size_t n = 64 * 64 * 3;
    /* the encode-decode of the input (the VAE's mean) */
    qd_vae_model *vae = NULL;
    float *lat = malloc(sizeof(float) * 4 * 64), *rt = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n);
    qd_status st = qd_vae_open(ctx, fixture("models/shapes-sd/vae"), &vae);
    if (st == QD_OK) st = qd_vae_encode_image(ctx, vae, QD_IMAGE_F32, in, 1, 64, 64, lat);
    if (st == QD_OK) st = qd_vae_decode_latent(ctx, vae, lat, 1, 8, 8, QD_IMAGE_F32, rt);
    check(st == QD_OK, "shapes-sd VAE round trip: %s", st ? qd_last_error(ctx) : "ok");
    double rt_db = psnr(rt, in, n);
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle on a blue background";   /* pipe_00's prompt */
    p.cfg_scale = 5;
    p.seed = 3;
    p.init_image = in;
    double db[3] = {0, 0, 0};
    const double strengths[3] = {0.1, 0.3, 1.0};
    for (int k = 0; st == QD_OK && k < 3; k++) {
        p.strength = strengths[k];
        st = qd_generate(ctx, m, &p, QD_IMAGE_F32, out, NULL);
        db[k] = psnr(out, in, n);
    }
    check(st == QD_OK, "shapes-sd img2img: %s", st ? qd_last_error(ctx) : "ok");
    printf("  shapes-sd PSNR vs input: VAE round trip %.1f dB; strength 0.1 %.1f, 0.3 %.1f, 1.0 %.1f dB\n", rt_db,
           db[0], db[1], db[2]);
    /* this tiny VAE's round trip is only ~13 dB; the denoiser at low strength stays that close */
    check(db[0] >= rt_db - 1 && db[1] >= rt_db - 1,
          "strength 0.1 / 0.3 keep the picture: %.1f / %.1f dB (>= the VAE round trip %.1f - 1)", db[0], db[1], rt_db);
    check(db[0] > db[2] + 5, "strength 0.1 is closer to the input than strength 1.0 (%.1f vs %.1f dB, margin 5)", db[0],
          db[2]);
    /* strength -> 0 with a k-sampler (the mean, no sampling noise): the encode-decode */
    p.sampler = "euler";
    p.steps = 1;
    p.strength = 0.01;
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_F32, out, NULL);
    double d0 = st == QD_OK ? psnr(out, rt, n) : 0;
    check(st == QD_OK && d0 >= 35, "k-sampler denoise 0.01 returns the VAE round trip: %.1f dB (>= 35)", d0);
    qd_vae_close(vae);
    free(in); free(lat); free(rt); free(out);
}

/* Every diffusers class and k-sampler starts mid-schedule without reading state it does not
 * have (LMS: the derivatives it holds; multistep: lower order first; ASan checks the rest):
 * the run succeeds, is finite, makes steps - t_start model calls (x order), and differs from
 * the txt2img run of the same seed. */
static int calls_seen;
static int count_calls(void *user, int step, int total, double t) {
    (void)user; (void)total; (void)t;
    calls_seen = step;
    return 0;
}

static void test_every_class(qd_ctx *ctx, qd_model *m) {
    float *in, *mean, *logvar;
    in = golden_image("sd15-tiny", &mean, &logvar);
    free(mean);
    free(logvar);
    if (!in) return;
    float lat[4 * 64], ref[4 * 64];
    uint8_t out[64 * 64 * 3];
    for (int pass = 0; pass < 2; pass++) {
        const int what = pass ? QD_LIST_SAMPLERS : QD_LIST_SCHEDULER_CLASSES;
        for (int i = 0; qd_list(what, i, NULL); i++) {
            const char *name = qd_list(what, i, NULL);
            qd_gen_params p;
            qd_gen_params_default(&p);
            p.prompt = "a cat";
            p.width = p.height = 64;
            p.steps = 6;
            p.seed = 3;
            if (pass) p.sampler = name;
            else p.scheduler = name;
            qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, ref);
            p.init_image = in;
            p.strength = 0.5;
            p.progress = count_calls;
            calls_seen = 0;
            if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, lat);
            int finite = 1;
            for (int k = 0; k < 4 * 64; k++) finite &= isfinite(lat[k]) != 0;
            /* diffusers: 3 of 6 steps; Heun/KDPM2 make 2 calls a step but the last; PNDM 6 + 1 timesteps */
            int want = pass ? -1 : !strcmp(name, "PNDMScheduler") ? 4
                     : strstr(name, "Heun") || strstr(name, "KDPM2") ? 5 : 3;
            check(st == QD_OK && finite && (want < 0 || calls_seen == want) && rel_l2(lat, ref, 4 * 64) > 1e-3,
                  "img2img with %s %s (strength 0.5 of 6 steps): %d model calls%s, finite, not the txt2img result: %s",
                  pass ? "sampler" : "class", name, calls_seen, want < 0 ? "" : want == calls_seen ? " as expected" : " (WRONG)",
                  st ? qd_last_error(ctx) : "ok");
        }
    }
    free(in);
}

/* Progress and previews count the model calls of the shortened run: 1..calls of calls. */
static int prev_steps[16], prev_total[16], n_prev;
static void on_preview(void *user, int step, int total, const uint8_t *rgb, int w, int h) {
    (void)user; (void)rgb; (void)w; (void)h;
    if (n_prev < 16) { prev_steps[n_prev] = step; prev_total[n_prev] = total; n_prev++; }
}

static void test_previews(qd_ctx *ctx, qd_model *m) {
    float *mean, *logvar, *in = golden_image("sd15-tiny", &mean, &logvar);
    free(mean);
    free(logvar);
    qd_vae_model *vae = NULL;
    qd_status st = in ? qd_vae_open(ctx, fixture("models/sd15-tiny/vae"), &vae) : QD_ERR_ARG;
    uint8_t out[64 * 64 * 3];
    for (int pass = 0; st == QD_OK && pass < 2; pass++) {
        qd_gen_params p;
        qd_gen_params_default(&p);
        p.prompt = "a cat";
        p.width = p.height = 64;
        p.steps = 6;
        p.init_image = in;
        p.strength = 0.5;
        p.scheduler = pass ? NULL : "EulerDiscreteScheduler";
        p.sampler = pass ? "euler" : NULL;
        p.preview_vae = vae;
        p.preview = on_preview;
        p.preview_every = 1;
        n_prev = 0;
        st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, NULL);
        int want = pass ? 6 : 3, good = st == QD_OK && n_prev == want;
        for (int k = 0; good && k < n_prev; k++) good = prev_steps[k] == k + 1 && prev_total[k] == want;
        check(good, "img2img previews (%s): %d of them, steps 1..%d of %d (%s)", pass ? "euler" : "Euler class", n_prev,
              want, want, st ? qd_last_error(ctx) : "ok");
    }
    qd_vae_close(vae);
    free(in);
}

static void test_bad(qd_ctx *ctx, qd_model *m) {
    float img[64 * 64 * 3] = {0};
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "x";
    p.width = p.height = 64;
    p.init_image = img;
    uint8_t out[64 * 64 * 3];
    struct { double s; int steps; const char *want; } c[] = {
        {1.5, 10, "strength"}, {-0.5, 10, "strength"}, {NAN, 10, "strength"}, {0.05, 10, "no step"}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        p.strength = c[i].s;
        p.steps = c[i].steps;
        qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, NULL);
        check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), c[i].want), "strength %g, %d steps rejected: %s", c[i].s,
              c[i].steps, qd_last_error(ctx));
    }
    p.strength = 0.5;
    p.steps = 4;
    p.init_count = 3;
    p.batch = 2;
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "init images"), "3 init images for a batch of 2 rejected: %s",
          qd_last_error(ctx));
    p.init_count = 1;
    p.batch = 1;
    p.init_latents = img;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "not both"), "init_image with init_latents rejected: %s",
          qd_last_error(ctx));
    p.init_latents = NULL;
    img[5] = NAN;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "non-finite"), "NaN pixel rejected: %s", qd_last_error(ctx));
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    test_t_start();
    qd_model *sd = test_open_model(ctx, "models/sd15-tiny"), *sd3 = test_open_model(ctx, "models/sd35-tiny");
    qd_model *flux = test_open_model(ctx, "models/flux-tiny"), *shapes = test_open_model(ctx, "models/shapes-sd");
    qd_model *sdxl = test_open_model(ctx, "models/sdxl-tiny");
    if (sdxl) {
        /* SDXL (scaling 0.13025, no latents_mean): Euler at t = 401, and DPM-Solver++ with
         * leading spacing over 11 points (901, 811, ..., 91): strength 0.3 of 10 steps ->
         * int(3.0000000000000004) = 3, t_start 7, t = 271, alpha_t x0 + sigma_t n */
        test_begin(ctx, sdxl, "DPMSolverMultistepScheduler", 10, 0.3, 7, 271);
        double ac = sd_alphas_cumprod(401);
        test_start(ctx, sdxl, "sdxl-tiny", "EulerDiscreteScheduler", "sd15", 42, 10, 0.5, 2, 0, sqrt((1 - ac) / ac),
                   0.13025f, 0);
        test_start(ctx, sdxl, "sdxl-tiny", "DPMSolverMultistepScheduler", "sd15", 42, 10, 0.3, 2, 1,
                   sd_alphas_cumprod(271), 0.13025f, 0);
    }
    if (sd3) {
        /* SD3 (shift 3, static): timesteps linspace(1000 sigma_max, 1000 sigma_min, 5), sigma_min the
         * shifted 1/1000; steps 5, strength 0.6 -> t_start 2: s = (1 + sigma_min) / 2, shifted again */
        double smin = 3 * 0.001 / (1 + 2 * 0.001), s = (1.0 + smin) / 2, sigma = 3 * s / (1 + 2 * s);
        test_start(ctx, sd3, "sd35-tiny", "FlowMatchEulerDiscreteScheduler", "flux", 7, 5, 0.6, 1, 2, sigma, 1.5305f,
                   0.0609f);
    }
    if (sd) {
        test_begin(ctx, sd, "EulerDiscreteScheduler", 10, 0.5, 5, 401);
        test_begin(ctx, sd, "DDIMScheduler", 10, 0.75, 3, 601);
        test_begin(ctx, sd, "HeunDiscreteScheduler", 10, 0.5, 10, 401);   /* order 2: index 2 * t_start */
        test_begin(ctx, sd, "PNDMScheduler", 20, 0.3, 14, 301);            /* plms list 951, 901, 901, 851, ..., 1 */
        /* Euler adds x0 + sigma n at t = 401; one image, batch 2 */
        double ac = sd_alphas_cumprod(401);
        test_start(ctx, sd, "sd15-tiny", "EulerDiscreteScheduler", "sd15", 42, 10, 0.5, 2, 0, sqrt((1 - ac) / ac),
                   0.18215f, 0);
        test_start(ctx, sd, "sd15-tiny", "DDIMScheduler", "sd15", 42, 10, 0.75, 2, 1, sd_alphas_cumprod(601), 0.18215f, 0);
        test_bad(ctx, sd);
        test_every_class(ctx, sd);
        test_previews(ctx, sd);
        test_per_item_init(ctx, sd);
    }
    if (flux) {   /* steps 4, strength 0.6 -> t_start 2, sigma = time_shift(mu, linspace(1, 1/4, 4)[2] = 0.5) */
        double slope = (1.15 - 0.5) / (4096 - 256), mu = 16 * slope + (0.5 - slope * 256);
        double sigma = exp(mu) / (exp(mu) + (1 / 0.5 - 1));
        test_start(ctx, flux, "flux-tiny", "FlowMatchEulerDiscreteScheduler", "flux", 7, 4, 0.6, 1, 2, sigma, 0.3611f,
                   0.1159f);
        test_flow_strength1(ctx, flux, "goldens/flux-tiny");
        test_ksampler_identity(ctx, flux, "flux-tiny", 0);   /* init latents unpacked, packed inside */
    }
    if (sd && sd3) test_comfy_sigmas(ctx, sd, sd3);
    if (sd3) {
        test_flow_strength1(ctx, sd3, "goldens/sd35-tiny");
        test_ksampler_identity(ctx, sd3, "sd35-tiny", 0);
    }
    if (sd) test_ksampler_identity(ctx, sd, "sd15-tiny", 1);
    if (shapes) test_shapes(ctx, shapes);
    qd_model_free(sdxl);
    qd_model_free(sd); qd_model_free(sd3); qd_model_free(flux); qd_model_free(shapes);
    qd_ctx_free(ctx);
    return test_summary();
}
