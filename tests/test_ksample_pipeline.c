/* qd_generate with a ComfyUI / k-diffusion sampler (qd_gen_params.sampler) on the
 * tiny models.
 *
 * Where the k-sampler path and a diffusers scheduler class compute the same
 * thing, the k-sampler path must reproduce diffusers' golden:
 *   - euler + karras on sd15-tiny = EulerDiscreteScheduler(use_karras_sigmas):
 *     diffusers builds the Karras sigmas over [sigma(t_last), sigma(t_first)] of
 *     its "leading" timesteps (t = 831 ... 1 for 6 steps), so the karras schedule
 *     gets those as sigma_min / sigma_max; the Euler step x += (x - x0)/sigma * dt
 *     is the same; the UNet sees x / sqrt(sigma^2 + 1) at the timestep
 *     interpolated in log sigma (the same _sigma_to_t); the diffusers noise mode
 *     starts from randn * sqrt(sigma0^2 + 1) as diffusers' init_noise_sigma with
 *     leading spacing. Only rounding differs (float64 sampler, float32 diffusers).
 *   - euler + simple on flux-tiny = FlowMatchEulerDiscreteScheduler as
 *     FluxPipeline drives it: "simple" takes entries 1 - i/steps of FLUX's
 *     10000-entry table when steps divides 10000 (4 here), i.e. FluxPipeline's
 *     np.linspace(1, 1/4, 4) through the same dynamic (mu) shift; the Euler step
 *     along v is the same; the transformer sees sigma (t / 1000) in both.
 * "normal" is not compared with any golden: its sigmas (timesteps uniform in
 * [0, 999]) coincide with no diffusers configuration of these folders.
 * Everything else: every sampler runs on sd15-tiny (eps, with CFG) and on
 * flux-tiny (flow) to a finite result; a v-prediction run uses the same code;
 * noise modes, bad names and cancellation. */
#include "testutil.h"
#include "io/json.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    qd_model *m;
    int64_t nlat;
} model_t;

static int open_model(qd_ctx *ctx, const char *dir, model_t *out) {
    out->m = test_open_model(ctx, dir);
    return out->m != NULL;
}

/* Generate; latents (nlat floats, malloc'd) or NULL on failure. */
static float *gen(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, qd_status *st_out, size_t *nlat) {
    int64_t shape[4];
    size_t n = qd_latent_shape(m, p, shape, NULL);
    float *lat = malloc(sizeof(float) * n);
    uint8_t *img = malloc(qd_image_size(m, p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, p, QD_IMAGE_RGB8, img, lat);
    free(img);
    if (st_out) *st_out = st;
    if (nlat) *nlat = n;
    if (st != QD_OK) {
        free(lat);
        return NULL;
    }
    return lat;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static void sd15_karras_golden(qd_ctx *ctx, qd_model *m) {
    const char *golden = fixture("goldens/sd15-tiny/pipe_euler_karras.safetensors");
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "UPPERCASE and MiXeD case, numbers 1234567890 and 3.14159";
    p.negative_prompt = "lowres";
    p.steps = 6;
    p.cfg_scale = 6.0f;
    p.seed = 608;
    p.width = p.height = 64;
    /* diffusers' karras range: the training sigmas at its first and last leading
     * timesteps, 5 * (1000 // 6) + 1 = 831 and 1 (steps_offset 1) */
    qd_scheduler *s = NULL;
    cJSON *config = NULL;
    qd_status st = qd_json_load(ctx, fixture("models/sd15-tiny/scheduler/scheduler_config.json"), &config);
    if (st == QD_OK) st = qd_scheduler_new(ctx, config, "EulerDiscreteScheduler", NULL, &s);
    cJSON_Delete(config);
    const float *ac = st == QD_OK ? qd_scheduler_alphas_cumprod(s, NULL) : NULL;
    char opts[256] = "{}";
    if (ac)
        snprintf(opts, sizeof opts, "{\"sigma_min\": %.17g, \"sigma_max\": %.17g}",
                 (double)qd_sched_sigma_from_ac(ac[1]), (double)qd_sched_sigma_from_ac(ac[831]));
    qd_scheduler_free(s);
    p.sampler = "euler";
    p.schedule = "karras";
    p.scheduler_options = opts;
    p.noise_mode = QD_NOISE_DIFFUSERS;
    size_t n = 0, n_ref = 0;
    float *lat = gen(ctx, m, &p, &st, &n), *ref = load_f32(golden, "latents", NULL, NULL, &n_ref);
    check(lat && ref && n == n_ref, "sd15-tiny euler + karras (%s): %s", opts, st ? qd_last_error(ctx) : "ok");
    if (lat && ref && n == n_ref) {
        double r = rel_l2(lat, ref, n);
        check(r <= 1e-3, "sd15-tiny euler + karras = EulerDiscreteScheduler(use_karras_sigmas) golden: rel_l2 %.3g", r);
        /* and the diffusers path of qdiff itself, run here: only rounding apart */
        qd_gen_params q = p;
        q.sampler = q.schedule = NULL;
        q.scheduler = "EulerDiscreteScheduler";
        q.scheduler_options = "{\"use_karras_sigmas\": true}";
        float *dl = gen(ctx, m, &q, &st, NULL);
        double rd = dl ? rel_l2(lat, dl, n) : INFINITY;
        check(rd <= 1e-5, "... and qdiff's own EulerDiscreteScheduler path: rel_l2 %.3g (float64 vs float32 math)", rd);
        free(dl);
    }
    free(lat);
    free(ref);
}

static void flux_simple_golden(qd_ctx *ctx, qd_model *m) {
    const char *golden = fixture("goldens/flux-tiny/pipe_flow_euler.safetensors");
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a photograph of an astronaut riding a horse";
    p.steps = 4;
    p.guidance = 3.5f;
    p.seed = 2024;
    p.width = 96;
    p.height = 64;
    p.max_sequence_length = 512;
    p.sampler = "euler";
    p.schedule = "simple";
    p.noise_mode = QD_NOISE_DIFFUSERS;
    qd_status st;
    size_t n = 0, n_ref = 0;
    float *lat = gen(ctx, m, &p, &st, &n), *ref = load_f32(golden, "latents", NULL, NULL, &n_ref);
    check(lat && ref && n == n_ref, "flux-tiny euler + simple: %s", st ? qd_last_error(ctx) : "ok");
    if (lat && ref && n == n_ref) {
        double r = rel_l2(lat, ref, n);
        check(r <= 1e-3, "flux-tiny euler + simple = FlowMatchEulerDiscreteScheduler golden: rel_l2 %.3g", r);
    }
    free(lat);
    free(ref);
}

/* Every sampler (and, with euler, every schedule) runs to a finite result. */
static void every_sampler(qd_ctx *ctx, qd_model *m, const char *label, int steps) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.negative_prompt = "blurry";
    p.steps = steps;
    p.width = p.height = 64;
    p.seed = 7;
    p.max_sequence_length = 32;
    int failed = 0, count = 0;
    for (int i = 0; qd_list(QD_LIST_SAMPLERS, i, NULL); i++, count++) {
        p.sampler = qd_list(QD_LIST_SAMPLERS, i, NULL);
        qd_status st;
        size_t n;
        float *lat = gen(ctx, m, &p, &st, &n);
        if (!lat || !all_finite(lat, n)) {
            failed++;
            check(0, "%s: %s: %s", label, p.sampler, st ? qd_last_error(ctx) : "not finite");
        }
        free(lat);
    }
    check(!failed, "%s: all %d samplers run (%d steps)", label, count, steps);
    failed = count = 0;
    p.sampler = "euler";
    for (int i = 0; qd_list(QD_LIST_SCHEDULES, i, NULL); i++, count++) {
        p.schedule = qd_list(QD_LIST_SCHEDULES, i, NULL);
        qd_status st;
        size_t n;
        float *lat = gen(ctx, m, &p, &st, &n);
        if (!lat || !all_finite(lat, n)) {
            failed++;
            check(0, "%s: euler + %s: %s", label, p.schedule, st ? qd_last_error(ctx) : "not finite");
        }
        free(lat);
    }
    check(!failed, "%s: euler with all %d schedules runs", label, count);
}

typedef struct { int calls, total, stop_at; } progress_log;

static int on_progress(void *user, int step, int total, double elapsed) {
    progress_log *l = user;
    l->calls = step;
    l->total = total;
    return l->stop_at && step >= l->stop_at;
}

static void noise_modes_and_errors(qd_ctx *ctx, qd_model *m) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.steps = 5;
    p.width = p.height = 64;
    p.seed = 11;
    p.sampler = "euler_ancestral";
    p.schedule = "karras";
    qd_status st;
    size_t n;
    float *a = gen(ctx, m, &p, &st, &n), *b = gen(ctx, m, &p, &st, NULL);
    p.noise_mode = QD_NOISE_DIFFUSERS;
    float *c = gen(ctx, m, &p, &st, NULL);
    check(a && b && c && rel_l2(a, b, n) == 0 && rel_l2(a, c, n) > 1e-3,
          "euler_ancestral: a seed repeats exactly; the diffusers noise mode differs from ComfyUI's (%.3g)",
          a && c ? rel_l2(a, c, n) : -1.0);
    free(a); free(b); free(c);

    /* the SDE samplers' Brownian noise also repeats with the seed */
    p.sampler = "dpmpp_sde";
    p.noise_mode = QD_NOISE_COMFYUI;
    a = gen(ctx, m, &p, &st, &n);
    b = gen(ctx, m, &p, &st, NULL);
    check(a && b && rel_l2(a, b, n) == 0, "dpmpp_sde: a seed repeats exactly");
    free(a); free(b);

    /* v-prediction: the same sampler code, only x0 = x/(s^2+1) - v s/sqrt(s^2+1) differs */
    p.sampler = "dpmpp_2m_sde";
    p.scheduler_options = "{\"prediction_type\": \"v_prediction\", \"rescale_betas_zero_snr\": true, \"eta\": 0.5}";
    p.guidance_rescale = 0.7f;
    a = gen(ctx, m, &p, &st, &n);
    check(a && all_finite(a, n), "v-prediction + zero-terminal-SNR + guidance_rescale with dpmpp_2m_sde: %s",
          st ? qd_last_error(ctx) : "ok");
    free(a);
    p.scheduler_options = NULL;
    p.guidance_rescale = 0;

    progress_log log = {0, 0, 0};
    p.sampler = "heun";
    p.progress = on_progress;
    p.progress_user = &log;
    a = gen(ctx, m, &p, &st, &n);
    check(a && log.calls == 9 && log.total == 9, "heun, 5 steps: progress counts 9 model calls (got %d of %d)",
          log.calls, log.total);
    free(a);
    log.stop_at = 3;
    a = gen(ctx, m, &p, &st, &n);
    check(!a && st == QD_ERR_CANCELLED && log.calls == 3, "cancel from the progress callback: %s", qd_last_error(ctx));
    free(a);
    p.progress = NULL;

    p.sampler = "euler_a";
    a = gen(ctx, m, &p, &st, &n);
    check(!a && st == QD_ERR_ARG && strstr(qd_last_error(ctx), "dpmpp_2m_sde") && strstr(qd_last_error(ctx), "uni_pc"),
          "an unknown sampler lists the known ones: %.80s...", qd_last_error(ctx));
    free(a);
    p.sampler = "euler";
    p.schedule = "karas";
    a = gen(ctx, m, &p, &st, &n);
    check(!a && st == QD_ERR_ARG && strstr(qd_last_error(ctx), "karras"), "an unknown schedule lists the known ones: %s",
          qd_last_error(ctx));
    free(a);
    p.schedule = "karras";
    p.scheduler_options = "{\"eta\": \"high\"}";
    a = gen(ctx, m, &p, &st, &n);
    check(!a && st == QD_ERR_ARG, "a non-numeric sampler option fails: %s", qd_last_error(ctx));
    free(a);
    p.scheduler_options = "[1]";
    a = gen(ctx, m, &p, &st, &n);
    check(!a && st == QD_ERR_ARG, "options that are not a JSON object fail: %s", qd_last_error(ctx));
    free(a);
}

static void check_lists(void) {
    int ok = 1;
    const char *about;
    for (int w = 0; w < 3; w++) {
        int count = 0;
        for (int i = 0; qd_list(w, i, &about); i++, count++)
            if (!about || !*about) ok = 0;
        if (count < (w == 0 ? 40 : w == 1 ? 11 : 14)) ok = 0;
    }
    check(ok && !qd_list(QD_LIST_SAMPLERS, -1, NULL) && !qd_list(99, 0, NULL),
          "qd_list: samplers, schedules and scheduler classes, each with a description");
}

/* Dynamic thresholding on the k-sampler path (diffusers' keys as options): one
 * Euler step to sigma 0 returns x0 itself, so the thresholded run must equal
 * the plain run's latents put through diffusers' _threshold_sample, computed
 * here: s = clamp(quantile(|x0|, ratio), 1, sample_max_value) per image (torch's
 * linear-interpolated quantile), x0 = clamp(x0, -s, s) / s. */
static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void thresholding(qd_ctx *ctx, qd_model *m) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red square";
    p.steps = 1;
    p.batch = 2;
    p.seed = 21;
    p.sampler = "euler";
    qd_status st_a, st_b;
    size_t n;
    float *a = gen(ctx, m, &p, &st_a, &n);
    p.scheduler_options = "{\"thresholding\": true, \"dynamic_thresholding_ratio\": 0.9, \"sample_max_value\": 100}";
    float *b = gen(ctx, m, &p, &st_b, NULL);
    check(st_a == QD_OK && st_b == QD_OK, "thresholding runs: %s", st_a || st_b ? qd_last_error(ctx) : "ok");
    if (a && b) {
        size_t per = n / 2;
        float *want = malloc(sizeof(float) * n), *mag = malloc(sizeof(float) * per);
        double s_used[2];
        for (int i = 0; i < 2; i++) {
            const float *x = a + i * per;
            for (size_t j = 0; j < per; j++) mag[j] = fabsf(x[j]);
            qsort(mag, per, sizeof(float), cmp_float);
            double rank = 0.9 * (double)(per - 1), fl = floor(rank);
            size_t lo = (size_t)fl, hi = lo + 1 < per ? lo + 1 : lo;
            double q = mag[lo] + (rank - fl) * (mag[hi] - mag[lo]);
            double sc = q < 1 ? 1 : q > 100 ? 100 : q;
            s_used[i] = sc;
            for (size_t j = 0; j < per; j++) {
                double v = x[j] < -sc ? -sc : x[j] > sc ? sc : x[j];
                want[i * per + j] = (float)(v / sc);
            }
        }
        double e = rel_l2(b, want, n), ma = max_abs_diff(b, want, n);
        check(e < 1e-5 && ma < 1e-5 && (s_used[0] > 1 || s_used[1] > 1),
              "k-sampler dynamic thresholding = diffusers' _threshold_sample: rel L2 %.2e, max abs %.2e (s %.3f, %.3f)",
              e, ma, s_used[0], s_used[1]);
        free(want);
        free(mag);
    }
    free(a);
    free(b);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    check_lists();
    model_t sd = {0}, flux = {0};
    if (open_model(ctx, "models/sd15-tiny", &sd)) {
        sd15_karras_golden(ctx, sd.m);
        noise_modes_and_errors(ctx, sd.m);
        thresholding(ctx, sd.m);
        every_sampler(ctx, sd.m, "sd15-tiny", 4);
        qd_model_free(sd.m);
    }
    if (open_model(ctx, "models/flux-tiny", &flux)) {
        flux_simple_golden(ctx, flux.m);
        every_sampler(ctx, flux.m, "flux-tiny", 3);
        qd_model_free(flux.m);
    }
    qd_ctx_free(ctx);
    return test_summary();
}
