/* Schedulers: schedules derived by hand from diffusers' documented formulas
 * for the SD1.5 config, from_config semantics, and the step math of the
 * deterministic classes against k-diffusion's samplers (tests/fixtures/samplers:
 * same ODE solvers, same karras/exponential sigmas, analytic denoiser). */
#include "testutil.h"
#include "io/json.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static qd_ctx *ctx;
static cJSON *sd15;

static qd_scheduler *make(const char *cls, const char *overrides_json) {
    cJSON *ov = overrides_json ? cJSON_Parse(overrides_json) : NULL;
    qd_scheduler *s = NULL;
    if (qd_scheduler_new(ctx, sd15, cls, ov, &s) != QD_OK)
        fprintf(stderr, "  new %s: %s\n", cls ? cls : "(config)", qd_last_error(ctx));
    cJSON_Delete(ov);
    return s;
}

static int timesteps_are(qd_scheduler *s, int steps, const float *want, int n) {
    if (!s || qd_scheduler_set_timesteps(ctx, s, steps) != QD_OK) return 0;
    int ok = qd_scheduler_len(s) == n;
    for (int i = 0; ok && i < n; i++) ok = qd_scheduler_timestep(s, i) == want[i];
    if (!ok) {
        fprintf(stderr, "  %s timesteps:", qd_scheduler_class(s));
        for (int i = 0; i < qd_scheduler_len(s); i++) fprintf(stderr, " %g", qd_scheduler_timestep(s, i));
        fprintf(stderr, "\n");
    }
    return ok;
}

static int near(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b); }

/* ---------------------------------------------------------------- schedules */

static void test_schedules(void) {
    qd_scheduler *s = make(NULL, NULL);
    check(s && strcmp(qd_scheduler_class(s), "PNDMScheduler") == 0, "config's _class_name: PNDMScheduler");
    /* leading: step_ratio = 1000 // 6 = 166 -> [0,166,...,830] + offset 1; PLMS
     * without PRK repeats the second-to-last: [1,167,333,499,665,665,831] reversed */
    const float pndm[] = {831, 665, 665, 499, 333, 167, 1};
    check(timesteps_are(s, 6, pndm, 7), "PNDM 6 steps: [831 665 665 499 333 167 1]");
    check(s && qd_scheduler_init_noise_sigma(s) == 1.0f, "PNDM init_noise_sigma 1");
    qd_scheduler_free(s);

    const float lead6[] = {831, 665, 499, 333, 167, 1};
    const char *lead_classes[] = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
                                  "DDPMScheduler", "LMSDiscreteScheduler"};
    for (int k = 0; k < 5; k++) {
        s = make(lead_classes[k], NULL);
        check(timesteps_are(s, 6, lead6, 6), "%s 6 steps leading: [831 665 499 333 167 1]", lead_classes[k]);
        qd_scheduler_free(s);
    }
    /* DPM/DEIS/UniPC leading uses n + 1 points: 1000 // 7 = 142 -> [852..142] + 1 */
    const float lead7[] = {853, 711, 569, 427, 285, 143};
    const char *ms_classes[] = {"DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler"};
    for (int k = 0; k < 3; k++) {
        s = make(ms_classes[k], NULL);
        check(timesteps_are(s, 6, lead7, 6), "%s 6 steps: [853 711 569 427 285 143]", ms_classes[k]);
        qd_scheduler_free(s);
    }
    /* single-step has no timestep_spacing: linspace(0, 999, 7).round() half-to-even */
    s = make("DPMSolverSinglestepScheduler", NULL);
    const float single[] = {999, 832, 666, 500, 333, 166};
    check(timesteps_are(s, 6, single, 6), "DPMSolverSinglestep 6 steps: [999 832 666 500 333 166]");
    qd_scheduler_free(s);

    /* second-order classes: 2n - 1 model calls */
    const float heun4[] = {751, 501, 501, 251, 251, 1, 1};
    s = make("HeunDiscreteScheduler", NULL);
    check(timesteps_are(s, 4, heun4, 7), "Heun 4 steps: [751 501 501 251 251 1 1]");
    int ns = 0;
    const float *sg = s ? qd_scheduler_sigmas(s, &ns) : NULL;
    check(sg && ns == 8 && sg[1] == sg[2] && sg[3] == sg[4] && sg[7] == 0, "Heun sigmas interleaved, end at 0");
    qd_scheduler_free(s);
    const char *two[] = {"KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"};
    for (int k = 0; k < 2; k++) {
        s = make(two[k], NULL);
        int ok = s && qd_scheduler_set_timesteps(ctx, s, 4) == QD_OK && qd_scheduler_len(s) == 7 &&
                 qd_scheduler_timestep(s, 0) == 751 && qd_scheduler_timestep(s, 2) == 501 &&
                 qd_scheduler_timestep(s, 6) == 1;
        /* the interpolated timesteps lie between their neighbours */
        for (int i = 1; ok && i < 7; i += 2)
            ok = qd_scheduler_timestep(s, i) < qd_scheduler_timestep(s, i - 1) &&
                 qd_scheduler_timestep(s, i) > qd_scheduler_timestep(s, i + 1) - 1e-3f;
        check(ok, "%s 4 steps: len 7, [751 . 501 . 251 . 1]", two[k]);
        qd_scheduler_free(s);
    }

    /* trailing: arange(1000, 0, -1000/6).round() - 1 */
    s = make("EulerDiscreteScheduler",
             "{\"prediction_type\":\"v_prediction\",\"rescale_betas_zero_snr\":true,\"timestep_spacing\":\"trailing\"}");
    const float trail[] = {999, 832, 666, 499, 332, 166};
    check(timesteps_are(s, 6, trail, 6), "Euler trailing 6 steps: [999 832 666 499 332 166]");
    check(s && strcmp(qd_scheduler_prediction_type(s), "v_prediction") == 0, "override prediction_type");
    /* zero terminal SNR: alphas_cumprod[-1] = 2**-24, sigma_max = sqrt(2**24 - 1);
     * trailing spacing: init_noise_sigma = sigma_max itself */
    check(s && near(qd_scheduler_init_noise_sigma(s), 4096.0, 1e-6), "zsnr init_noise_sigma ~4096 (got %g)",
          s ? qd_scheduler_init_noise_sigma(s) : 0);
    qd_scheduler_free(s);
    /* np.arange(1000, 0, -1000/61) has 62 entries: diffusers then runs 62 calls
     * ending at t = -1; qdiff refuses instead of reproducing that */
    s = make("DDIMScheduler", "{\"timestep_spacing\":\"trailing\"}");
    check(s && qd_scheduler_set_timesteps(ctx, s, 61) == QD_ERR_UNSUPPORTED && strstr(qd_last_error(ctx), "61"),
          "trailing 61 steps refused: %s", qd_last_error(ctx));
    check(s && qd_scheduler_set_timesteps(ctx, s, 60) == QD_OK && qd_scheduler_len(s) == 60,
          "trailing 60 steps fine");
    qd_scheduler_free(s);
}

/* -------------------------------------------------------------- sigma values */

static void test_sigmas(void) {
    /* SD1.5 training sigmas: sigma(999) = 14.6146, sigma(0) = 0.0292 (well known) */
    qd_scheduler *s = make("EulerDiscreteScheduler", "{\"timestep_spacing\":\"linspace\"}");
    int n = 0;
    const float *ac = s ? qd_scheduler_alphas_cumprod(s, &n) : NULL;
    check(ac && n == 1000, "1000 alphas_cumprod");
    if (ac) {
        double smax = sqrt((1 - ac[999]) / ac[999]), smin = sqrt((1 - ac[0]) / ac[0]);
        check(near(smax, 14.6146, 1e-4) && near(smin, 0.029168, 1e-3), "sigma range %.5f..%.4f", smin, smax);
        /* scaled_linear: beta_0 = 0.00085 */
        check(near(1 - ac[0], 0.00085, 1e-3), "beta_0 = 0.00085");
    }
    /* float32 bit patterns of torch's alphas_cumprod for this config (torch 1.13:
     * linspace(...)**2 then cumprod) at a few indices */
    static const int idx[6] = {0, 72, 115, 500, 831, 999};
    static const uint32_t want[6] = {0x3f7fc84bu, 0x3f6d71d2u, 0x3f600d2fu, 0x3e8d7b74u, 0x3ce44705u, 0x3b98b3b8u};
    int exact = ac != NULL;
    for (int k = 0; exact && k < 6; k++) {
        uint32_t u;
        memcpy(&u, &ac[idx[k]], 4);
        exact = u == want[k];
    }
    check(exact, "alphas_cumprod bit-exact with torch at 6 indices");
    /* before set_timesteps with linspace: max sigma; after: sigma(999) */
    check(s && near(qd_scheduler_init_noise_sigma(s), 14.6146, 1e-4), "Euler linspace init_noise_sigma 14.6146");
    qd_scheduler_free(s);

    s = make("EulerDiscreteScheduler", NULL);
    /* leading: init_noise_sigma = sqrt(sigma_max^2 + 1) */
    check(s && near(qd_scheduler_init_noise_sigma(s), sqrt(14.6146 * 14.6146 + 1), 1e-4),
          "Euler leading init_noise_sigma before set_timesteps sqrt(14.6146^2+1)");
    if (s && qd_scheduler_set_timesteps(ctx, s, 6) == QD_OK) {
        const float *sg = qd_scheduler_sigmas(s, &n);
        const float *a = qd_scheduler_alphas_cumprod(s, NULL);
        float s831 = sqrtf((1 - a[831]) / a[831]);
        check(n == 7 && sg[0] == s831 && sg[6] == 0, "Euler sigmas[0] = sigma(831), ends at 0");
        check(near(qd_scheduler_init_noise_sigma(s), sqrt((double)s831 * s831 + 1), 1e-6),
              "Euler init_noise_sigma = sqrt(sigma(831)^2 + 1) = %g", qd_scheduler_init_noise_sigma(s));
        float x[4] = {1, 2, 3, 4};
        qd_scheduler_scale_model_input(s, 0, x, 4);
        check(near(x[3], 4 / sqrt((double)s831 * s831 + 1), 1e-6), "scale_model_input divides by sqrt(sigma^2+1)");
    }
    qd_scheduler_free(s);

    /* FlowMatchEulerDiscreteScheduler has no scale_model_input: the SD3/FLUX
     * pipelines give the transformer the latents unscaled (dividing by
     * sqrt(sigma^2+1) put the sd35/flux goldens 0.105/0.069 off) */
    s = make("FlowMatchEulerDiscreteScheduler", "{\"shift\":3.0}");
    if (s && qd_scheduler_set_timesteps(ctx, s, 5) == QD_OK) {
        float x[4] = {1, 2, 3, 4};
        int same = 1;
        for (int i = 0; i < qd_scheduler_len(s); i++) {
            qd_scheduler_scale_model_input(s, i, x, 4);
            same &= x[0] == 1 && x[3] == 4;
        }
        const float *sg = qd_scheduler_sigmas(s, NULL);
        check(same && qd_scheduler_init_noise_sigma(s) == 1.0f, "flow match: model input unscaled, init_noise_sigma 1");
        check(qd_scheduler_model_sigma(s, 1) == sg[1], "flow match: model sigma is sigmas[i] (%g)",
              qd_scheduler_model_sigma(s, 1));
    } else {
        check(0, "FlowMatchEulerDiscreteScheduler constructs");
    }
    qd_scheduler_free(s);

    /* Karras (rho 7) over the full training range for DPM++ */
    s = make("DPMSolverMultistepScheduler", "{\"use_karras_sigmas\":true}");
    if (s && qd_scheduler_set_timesteps(ctx, s, 6) == QD_OK) {
        const float *sg = qd_scheduler_sigmas(s, &n);
        check(n == 7 && near(sg[0], 14.6146, 1e-4) && near(sg[5], 0.029168, 1e-3) && sg[6] == 0,
              "DPM++ karras sigmas 14.6146 .. 0.0292, then 0");
        double r = pow(14.6146, 1 / 7.0), q = pow(0.029168, 1 / 7.0);
        double mid = pow(r + 0.4 * (q - r), 7);   /* ramp[2] = 2/5 */
        check(near(sg[2], mid, 1e-3), "karras sigma[2] = %g (want %g)", sg[2], mid);
        check(qd_scheduler_timestep(s, 0) == 999 && qd_scheduler_timestep(s, 5) == 0,
              "karras timesteps 999 .. 0 (rounded)");
        for (int i = 0; i < 6; i++)
            if (qd_scheduler_timestep(s, i) != floorf(qd_scheduler_timestep(s, i))) {
                check(0, "karras timesteps are integers");
                break;
            }
    } else {
        check(0, "DPM++ karras set_timesteps");
    }
    qd_scheduler_free(s);
    s = make("EulerDiscreteScheduler", "{\"use_karras_sigmas\":true}");
    if (s && qd_scheduler_set_timesteps(ctx, s, 6) == QD_OK) {
        const float *sg = qd_scheduler_sigmas(s, &n);
        const float *a = qd_scheduler_alphas_cumprod(s, NULL);
        float s831 = sqrtf((1 - a[831]) / a[831]), s1 = sqrtf((1 - a[1]) / a[1]);
        /* Euler's karras spans its own spaced sigmas: sigma(831) .. sigma(1) */
        check(n == 7 && near(sg[0], s831, 1e-6) && near(sg[5], s1, 1e-6) && sg[6] == 0,
              "Euler karras spans sigma(831)..sigma(1)");
        check(near(qd_scheduler_timestep(s, 0), 831, 1e-5) && near(qd_scheduler_timestep(s, 5), 1, 1e-3),
              "Euler karras timesteps from _sigma_to_t (%g .. %g)", qd_scheduler_timestep(s, 0),
              qd_scheduler_timestep(s, 5));
    }
    qd_scheduler_free(s);
}

/* --------------------------------------------------- errors, config handling */

static void test_config(void) {
    qd_scheduler *s = NULL;
    qd_status st = qd_scheduler_new(ctx, sd15, "NoSuchScheduler", NULL, &s);
    check(st == QD_ERR_UNSUPPORTED && !s && strstr(qd_last_error(ctx), "unknown scheduler class 'NoSuchScheduler'") &&
              strstr(qd_last_error(ctx), "known:") && strstr(qd_last_error(ctx), "EulerDiscreteScheduler"),
          "unknown class: %s", qd_last_error(ctx));
    cJSON *bad = cJSON_Parse("{\"timestep_spacing\":\"sideways\"}");
    st = qd_scheduler_new(ctx, sd15, "EulerDiscreteScheduler", bad, &s);
    check(st != QD_OK && strstr(qd_last_error(ctx), "sideways"), "bad timestep_spacing: %s", qd_last_error(ctx));
    cJSON_Delete(bad);
    bad = cJSON_Parse("{\"use_karras_sigmas\":true,\"use_exponential_sigmas\":true}");
    st = qd_scheduler_new(ctx, sd15, "EulerDiscreteScheduler", bad, &s);
    check(st != QD_OK, "karras + exponential rejected: %s", qd_last_error(ctx));
    cJSON_Delete(bad);
    cJSON *empty = cJSON_CreateObject();
    st = qd_scheduler_new(ctx, empty, NULL, NULL, &s);
    check(st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "_class_name"), "no _class_name: %s", qd_last_error(ctx));
    /* missing keys take the class defaults: DDIM's linear 0.0001..0.02 */
    st = qd_scheduler_new(ctx, empty, "DDIMScheduler", NULL, &s);
    const float *ac = s ? qd_scheduler_alphas_cumprod(s, NULL) : NULL;
    check(st == QD_OK && ac && near(1 - ac[0], 0.0001, 2e-3), "empty config: class defaults (beta_start 1e-4)");
    if (s) {
        check(qd_scheduler_set_timesteps(ctx, s, 4) == QD_OK && qd_scheduler_timestep(s, 0) == 750 &&
                  qd_scheduler_timestep(s, 3) == 0,
              "DDIM defaults: leading, offset 0 -> [750 500 250 0]");
        check(qd_scheduler_set_timesteps(ctx, s, 0) == QD_ERR_ARG, "0 steps rejected");
        check(qd_scheduler_set_timesteps(ctx, s, 1001) == QD_ERR_ARG, "1001 steps rejected");
    }
    qd_scheduler_free(s);
    cJSON_Delete(empty);

    /* steps run in order */
    s = make("EulerDiscreteScheduler", NULL);
    float x[8] = {0}, m[8] = {0};
    if (s) {
        qd_scheduler_set_timesteps(ctx, s, 4);
        check(qd_scheduler_step(ctx, s, 1, m, x, 1, 8, NULL) == QD_ERR_ARG, "step out of order rejected");
        check(qd_scheduler_step(ctx, s, 0, m, x, 1, 8, NULL) == QD_OK, "step 0 ok");
        check(qd_scheduler_step(ctx, s, 1, m, x, 2, 4, NULL) == QD_OK, "same element count, other batch split ok");
        check(qd_scheduler_step(ctx, s, 2, m, x, 1, 4, NULL) == QD_ERR_ARG, "changed sample size rejected");
    }
    qd_scheduler_free(s);
    s = make("EulerAncestralDiscreteScheduler", NULL);
    if (s) {
        qd_scheduler_set_timesteps(ctx, s, 4);
        check(qd_scheduler_step(ctx, s, 0, m, x, 1, 8, NULL) == QD_ERR_ARG, "ancestral without generator rejected");
    }
    qd_scheduler_free(s);
}

/* ----------------------------------------- every class runs on random data */

static void test_all_classes(void) {
    const char *const *names = qd_scheduler_classes();
    int count = 0;
    const int64_t batch = 2, per = 4 * 8 * 8, n = batch * per;
    float *x = malloc(sizeof(float) * (size_t)n), *eps = malloc(sizeof(float) * (size_t)n);
    float *xin = malloc(sizeof(float) * (size_t)n);
    const char *variants[] = {NULL, "{\"prediction_type\":\"v_prediction\"}", "{\"use_karras_sigmas\":true}",
                              "{\"timestep_spacing\":\"trailing\"}", "{\"timestep_spacing\":\"linspace\"}",
                              "{\"solver_order\":3,\"thresholding\":true}"};
    for (int c = 0; names[c]; c++, count++) {
        for (int v = 0; v < 6; v++) {
            qd_scheduler *s = make(names[c], variants[v]);
            int flow = strcmp(names[c], "FlowMatchEulerDiscreteScheduler") == 0;
            if (flow && v == 2) {   /* karras sigmas on a flow schedule: refused, not silently ignored */
                check(!s && strstr(qd_last_error(ctx), "not supported"), "%s %s refused: %s", names[c],
                      variants[v], qd_last_error(ctx));
                qd_scheduler_free(s);
                continue;
            }
            if (!s) {
                check(0, "%s %s constructs", names[c], variants[v] ? variants[v] : "");
                continue;
            }
            int steps = v == 5 ? 7 : 6;
            int ok = qd_scheduler_set_timesteps(ctx, s, steps) == QD_OK;
            qd_rng rng;
            qd_rng_seed(&rng, 7);
            qd_rng_randn(&rng, x, n);
            float sig0 = qd_scheduler_init_noise_sigma(s);
            for (int64_t j = 0; j < n; j++) x[j] *= sig0;
            for (int i = 0; ok && i < qd_scheduler_len(s); i++) {
                memcpy(xin, x, sizeof(float) * (size_t)n);
                qd_scheduler_scale_model_input(s, i, xin, n);
                qd_rng_randn(&rng, eps, n);
                /* a plausible model: mostly the input's noise, plus fresh noise */
                for (int64_t j = 0; j < n; j++) eps[j] = 0.7f * xin[j] + 0.3f * eps[j];
                ok = qd_scheduler_step(ctx, s, i, eps, x, batch, per, &rng) == QD_OK;
                if (!ok) fprintf(stderr, "  %s step %d: %s\n", names[c], i, qd_last_error(ctx));
            }
            int finite = 1;
            for (int64_t j = 0; j < n; j++) finite &= isfinite(x[j]) != 0;
            check(ok && finite && qd_scheduler_len(s) > 0, "%s %s: %d calls, finite result", names[c],
                  variants[v] ? variants[v] : "(sd15 config)", qd_scheduler_len(s));
            qd_scheduler_free(s);
        }
    }
    check(count == 14, "14 classes listed (%d)", count);
    free(x);
    free(eps);
    free(xin);
}

/* ------------------------------ step math vs k-diffusion (deterministic ODE) */

/* D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), s = 0.5 */
static float denoise(float x, float mu, double sigma) {
    double s2 = 0.25;
    return (float)((s2 * x + sigma * sigma * mu) / (s2 + sigma * sigma));
}

static void test_kdiffusion(void) {
    const char *file = fixture("samplers/kdiffusion_samplers.safetensors");
    size_t n = 0, nmu = 0, ns = 0;
    float *x_unit = load_f32(file, "x_init_unit", NULL, NULL, &n);
    float *mu = load_f32(file, "mu", NULL, NULL, &nmu);
    if (!x_unit || !mu || n != nmu) {
        check(0, "load k-diffusion fixture");
        free(x_unit);
        free(mu);
        return;
    }
    struct {
        const char *cls, *kcase;
        int vp;   /* DPM-Solver works on x_vp = x / sqrt(sigma^2 + 1) */
    } cases[] = {
        {"EulerDiscreteScheduler", "euler", 0}, {"HeunDiscreteScheduler", "heun", 0},
        {"KDPM2DiscreteScheduler", "dpm_2", 0}, {"LMSDiscreteScheduler", "lms", 0},
        {"DPMSolverMultistepScheduler", "dpmpp_2m", 1},
    };
    const char *scheds[] = {"karras", "exponential"};
    float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n);
    for (int sc = 0; sc < 2; sc++) {
        char key[128];
        snprintf(key, sizeof key, "sigmas.%s", scheds[sc]);
        float *ref_sig = load_f32(file, key, NULL, NULL, &ns);
        const int steps = (int)ns - 1;
        for (int k = 0; k < 5; k++) {
            char ov[160];
            snprintf(ov, sizeof ov, "{\"timestep_spacing\":\"linspace\",\"use_%s_sigmas\":true}", scheds[sc]);
            qd_scheduler *s = make(cases[k].cls, ov);
            if (!s || !ref_sig || qd_scheduler_set_timesteps(ctx, s, steps) != QD_OK) {
                check(0, "%s %s setup", cases[k].cls, scheds[sc]);
                qd_scheduler_free(s);
                continue;
            }
            /* the scheduler's distinct sigmas are k-diffusion's schedule */
            int nsig = 0;
            const float *sg = qd_scheduler_sigmas(s, &nsig);
            double worst = 0;
            for (int i = 0, j = 0; i < nsig && j < (int)ns; i++) {
                if (i > 0 && sg[i] == sg[i - 1]) continue;
                double d = fabs(sg[i] - ref_sig[j]) / (ref_sig[j] > 0 ? ref_sig[j] : 1);
                if (d > worst) worst = d;
                j++;
            }
            /* k-diffusion took SD's sigma range in float64: float32 rounding of
             * alphas_cumprod moves the ends by ~1e-5 relative */
            check(worst < 5e-5, "%s %s sigmas match k-diffusion (rel %.2g)", cases[k].cls, scheds[sc], worst);
            const int kind_vp = cases[k].vp;
            for (size_t j = 0; j < n; j++) {
                double s0 = ref_sig[0];
                x[j] = (float)(x_unit[j] * s0 / (kind_vp ? sqrt(s0 * s0 + 1) : 1));
            }
            int ok = 1;
            for (int i = 0; ok && i < qd_scheduler_len(s); i++) {
                double sigma = qd_scheduler_model_sigma(s, i);
                double a = kind_vp ? 1.0 / sqrt(sigma * sigma + 1) : 1.0;
                for (size_t j = 0; j < n; j++) {
                    float xv = (float)(x[j] / a);     /* VE sample */
                    eps[j] = (float)((xv - denoise(xv, mu[j], sigma)) / sigma);
                }
                ok = qd_scheduler_step(ctx, s, i, eps, x, 1, (int64_t)n, NULL) == QD_OK;
            }
            snprintf(key, sizeof key, "out.%s.%s", scheds[sc], cases[k].kcase);
            float *ref = load_f32(file, key, NULL, NULL, NULL);
            double err = ref && ok ? rel_l2(x, ref, n) : 1;
            check(err < 1e-5, "%s vs k-diffusion %s (%s): rel L2 %.2e", cases[k].cls, cases[k].kcase, scheds[sc], err);
            free(ref);
            qd_scheduler_free(s);
        }
        free(ref_sig);
    }
    free(x);
    free(eps);
    free(x_unit);
    free(mu);
}

/* ------------------------------ noise draws: when diffusers calls randn_tensor */

/* Runs `steps` and writes per call: 0 (no draw), 1 (one randn of the sample
 * size), -1 (anything else). Returns the number of calls. */
static int draw_pattern(const char *cls, const char *ov, int steps, int *pat) {
    qd_scheduler *s = make(cls, ov);
    if (!s || qd_scheduler_set_timesteps(ctx, s, steps) != QD_OK) {
        qd_scheduler_free(s);
        return 0;
    }
    enum { N = 2 * 4 * 4 };
    float x[N], m[N], tmp[N];
    qd_rng rng;
    qd_rng_seed(&rng, 3);
    qd_rng_randn(&rng, x, N);
    int len = qd_scheduler_len(s);
    for (int i = 0; i < len; i++) {
        for (int j = 0; j < N; j++) m[j] = 0.5f * x[j];
        qd_rng before = rng;
        if (qd_scheduler_step(ctx, s, i, m, x, 2, N / 2, &rng) != QD_OK) {
            len = i;
            break;
        }
        if (memcmp(&before, &rng, sizeof rng) == 0) pat[i] = 0;
        else {
            qd_rng_randn(&before, tmp, N);
            pat[i] = memcmp(&before, &rng, sizeof rng) == 0 ? 1 : -1;
        }
    }
    qd_scheduler_free(s);
    return len;
}

static void test_noise_draws(void) {
    struct {
        const char *cls, *ov;
        int steps;
        const char *want;   /* one char per model call */
    } cases[] = {
        {"EulerAncestralDiscreteScheduler", NULL, 4, "1111"},
        /* only the second half of each interval draws (the sd15-tiny golden shows it) */
        {"KDPM2AncestralDiscreteScheduler", NULL, 4, "0101010"},
        /* every step with t > 0: sd15 leading + offset 1 ends at t = 1 */
        {"DDPMScheduler", NULL, 4, "1111"},
        {"DDPMScheduler", "{\"steps_offset\":0}", 4, "1110"},
        {"DPMSolverMultistepScheduler", "{\"algorithm_type\":\"sde-dpmsolver++\"}", 4, "1111"},
        {"DPMSolverSinglestepScheduler", "{\"algorithm_type\":\"sde-dpmsolver++\"}", 4, "1111"},
        {"DDIMScheduler", "{\"eta\":0.5}", 4, "1111"},
        {"DDIMScheduler", NULL, 4, "0000"},
        {"EulerDiscreteScheduler", NULL, 4, "0000"},
        {"DPMSolverMultistepScheduler", NULL, 4, "0000"},
        {"PNDMScheduler", NULL, 4, "00000"},
        {"LMSDiscreteScheduler", NULL, 4, "0000"},
        {"HeunDiscreteScheduler", NULL, 4, "0000000"},
        {"KDPM2DiscreteScheduler", NULL, 4, "0000000"},
        {"DEISMultistepScheduler", NULL, 4, "0000"},
        {"UniPCMultistepScheduler", NULL, 4, "0000"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int pat[16];
        int len = draw_pattern(cases[k].cls, cases[k].ov, cases[k].steps, pat);
        char got[17];
        for (int i = 0; i < len && i < 16; i++) got[i] = pat[i] < 0 ? '?' : (char)('0' + pat[i]);
        got[len < 16 ? len : 16] = 0;
        check(strcmp(got, cases[k].want) == 0, "%s %s noise draws per call: %s (want %s)", cases[k].cls,
              cases[k].ov ? cases[k].ov : "", got, cases[k].want);
    }
}

/* ------------------------------------------------------------ thresholding */

static void test_threshold(void) {
    qd_sched_config c;
    memset(&c, 0, sizeof c);
    c.dynamic_thresholding_ratio = 0.75;
    c.sample_max_value = 1.5;
    /* item 0: |x| sorted 0.5 1 2 3 4; rank 0.75*4 = 3 -> s = 3, clamped to 1.5 */
    /* item 1: all small: s clamps up to 1 -> unchanged */
    float x[10] = {-4, 3, 0.5f, -1, 2, 0.1f, -0.2f, 0.3f, 0.4f, -0.5f};
    check(qd_sched_threshold(ctx, &c, x, 2, 5) == QD_OK, "threshold runs");
    check(x[0] == -1 && x[1] == 1 && near(x[2], 0.5 / 1.5, 1e-6) && near(x[3], -1 / 1.5, 1e-6),
          "item 0 clamped to +-1.5 and divided");
    check(x[5] == 0.1f && x[9] == -0.5f, "item 1: s = 1, unchanged");
    /* interpolated quantile: ratio 0.9 over 0..9 -> rank 8.1 -> 8.1 */
    float y[10];
    for (int i = 0; i < 10; i++) y[i] = (float)i;
    c.dynamic_thresholding_ratio = 0.9;
    c.sample_max_value = 100;
    qd_sched_threshold(ctx, &c, y, 1, 10);
    check(near(y[9], 1.0, 1e-6) && near(y[5], 5 / 8.1, 1e-5), "quantile interpolates (s = 8.1)");
}

static void quiet(void *user, int level, const char *msg) {
    (void)user;
    (void)level;
    (void)msg;
}

int main(void) {
    ctx = test_ctx_new(1);
    qd_set_log(ctx, quiet, NULL);   /* "ignoring option" warnings are expected here */
    if (qd_json_load(ctx, fixture("models/sd15-tiny/scheduler/scheduler_config.json"), &sd15) != QD_OK) {
        check(0, "load sd15 scheduler config: %s", qd_last_error(ctx));
        return test_summary();
    }
    test_schedules();
    test_sigmas();
    test_config();
    test_threshold();
    test_noise_draws();
    test_all_classes();
    test_kdiffusion();
    cJSON_Delete(sd15);
    qd_ctx_free(ctx);
    return test_summary();
}
