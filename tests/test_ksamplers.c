/* The k-samplers against k-diffusion's own outputs (tests/fixtures/samplers):
 * every schedule x sampler case of kdiffusion_samplers.safetensors, run in
 * float64 on the fixture's analytic denoiser D(x, sigma) = (s^2 x + sigma^2 mu) /
 * (s^2 + sigma^2), s = 0.5, from x = x_init_unit * sigmas[0], with the stored
 * noise fed through the noise callback in order. Computed in float64: relative
 * L2 <= 1e-9. The five schedules are also computed and compared with
 * sigmas.<schedule>.
 *
 * Samplers without k-diffusion reference data are checked on the same
 * denoiser against the exact solution of its probability-flow ODE,
 * x(0) = mu + (x_T - mu) * s / sqrt(s^2 + sigma_T^2): every deterministic
 * sampler must converge to it as steps grow, and the flow-model forms
 * likewise on the flow version of the denoiser. The schedules without
 * fixtures are checked for their defining properties. */
#include "testutil.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "base/rng.h"
#include "sample/ksampler.h"
#include "sample/ksampler_noise.h"
#include "sample/ksched.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const double S_DATA = 0.5;

typedef struct {
    const double *mu;
    int64_t n;
    int flow;               /* x = (1 - sigma) x0 + sigma n with x0 ~ N(mu, s^2) */
    const qd_st_set *set;   /* stored noise */
    char prefix[160];       /* noise.<schedule>.<case>. */
    int draws;              /* noise values handed out */
    int missing;            /* asked for more noise than stored */
    int calls;
} fixture_io;

/* E[x0 | x] for x0 ~ N(mu, s^2): VE (x = x0 + sigma n) or flow. */
static qd_status analytic_denoise(void *user, const double *x, double sigma, double *x0, double *uncond) {
    fixture_io *f = user;
    double s2 = S_DATA * S_DATA;
    f->calls++;
    for (int64_t j = 0; j < f->n; j++) {
        if (!f->flow) {
            x0[j] = (s2 * x[j] + sigma * sigma * f->mu[j]) / (s2 + sigma * sigma);
        } else {
            double a = 1 - sigma, var = a * a * s2 + sigma * sigma;
            x0[j] = f->mu[j] + a * s2 / var * (x[j] - a * f->mu[j]);
        }
        if (uncond) uncond[j] = x0[j];
    }
    return QD_OK;
}

static double *tensor_f64(const qd_st_set *set, const char *name, int64_t *numel) {
    const qd_st_tensor *t = qd_st_find(set, name);
    if (!t || (t->dtype != QD_F32 && t->dtype != QD_F64)) return NULL;
    double *out = malloc(sizeof(double) * (size_t)t->numel);
    for (int64_t i = 0; i < t->numel; i++)
        out[i] = t->dtype == QD_F64 ? ((const double *)t->data)[i] : (double)((const float *)t->data)[i];
    if (numel) *numel = t->numel;
    return out;
}

static qd_status stored_noise(void *user, int kind, double sigma, double sigma_next, double *out) {
    fixture_io *f = user;
    if (!f->set) {   /* ODE runs: eta 0 multiplies whatever is drawn by 0 */
        for (int64_t j = 0; j < f->n; j++) out[j] = 0;
        f->draws++;
        return QD_OK;
    }
    char name[200];
    snprintf(name, sizeof name, "%s%d", f->prefix, f->draws);
    const qd_st_tensor *t = qd_st_find(f->set, name);
    f->draws++;
    if (!t || t->numel != f->n || t->dtype != QD_F32) {
        f->missing++;
        for (int64_t j = 0; j < f->n; j++) out[j] = 0;
        return QD_OK;
    }
    for (int64_t j = 0; j < f->n; j++) out[j] = ((const float *)t->data)[j];
    return QD_OK;
}

static double rel_l2_d(const double *a, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* SD's scaled_linear table in float64: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2. */
static void sd_model_sampling(qd_model_sampling *ms) {
    int n = 1000;
    ms->kind = QD_MS_EPS;
    ms->n = n;
    ms->sigmas = malloc(sizeof(double) * n);
    ms->log_sigmas = malloc(sizeof(double) * n);
    ms->log_sigmas_f = malloc(sizeof(float) * n);
    double a = sqrt(0.00085), b = sqrt(0.012), step = (b - a) / (n - 1), ac = 1;
    for (int i = 0; i < n; i++) {
        double beta = i < n / 2 ? a + step * i : b - step * (n - 1 - i);   /* torch.linspace, float64 */
        beta *= beta;
        ac *= 1 - beta;
        ms->sigmas[i] = sqrt((1 - ac) / ac);
        ms->log_sigmas[i] = log(ms->sigmas[i]);
        ms->log_sigmas_f[i] = (float)ms->log_sigmas[i];
    }
}

static void check_schedules(qd_ctx *ctx, const qd_st_set *set) {
    qd_model_sampling ms = {0};
    sd_model_sampling(&ms);
    static const char *const names[][2] = {{"karras", "karras"},
                                           {"exponential", "exponential"},
                                           {"polyexponential_rho2", "polyexponential"},
                                           {"vp", "vp"},
                                           {"discrete_uniform", "normal"}};
    for (int c = 0; c < 5; c++) {
        char key[64];
        snprintf(key, sizeof key, "sigmas.%s", names[c][0]);
        int64_t n_ref = 0;
        double *ref = tensor_f64(set, key, &n_ref);
        qd_ksched_opts o;
        qd_ksched_opts_default(&o);
        if (c == 2) o.rho = 2;
        double *got = NULL;
        int n = 0;
        qd_status st = qd_ksched_sigmas(ctx, names[c][1], &ms, (int)n_ref - 1, &o, &got, &n);
        double worst = 0;
        for (int i = 0; st == QD_OK && ref && i < n && i < n_ref; i++) {
            double r = fabs(got[i] - ref[i]) / (ref[i] > 0 ? ref[i] : 1);
            if (r > worst) worst = r;
        }
        check(st == QD_OK && ref && n == n_ref && worst <= 1e-12, "schedule %s (%s): %d sigmas, max relative error %.3g",
              names[c][0], names[c][1], n, worst);
        free(ref);
        free(got);
    }
    qd_model_sampling_free(&ms);
}

static int descending_to_zero(const double *s, int n) {
    for (int i = 1; i < n; i++)
        if (!(s[i] < s[i - 1])) return 0;
    return n >= 2 && s[n - 1] == 0 && s[n - 2] > 0;
}

/* The schedules without k-diffusion fixtures, by their definitions. */
static void check_schedule_rules(qd_ctx *ctx) {
    qd_model_sampling sd = {0}, flux, sd3;
    sd_model_sampling(&sd);
    double mu = 0.9;
    qd_model_sampling_flow(ctx, &flux, 1, mu);
    qd_model_sampling_flow(ctx, &sd3, 0, 3.0);
    double *s = NULL;
    int n = 0;
    /* simple on FLUX's 10000-entry table with steps dividing it: sigma(1 - i/steps), as
     * FluxPipeline's np.linspace(1, 1/steps, steps) through the same shift */
    qd_status st = qd_ksched_sigmas(ctx, "simple", &flux, 4, NULL, &s, &n);
    double worst = 0;
    for (int i = 0; st == QD_OK && i < 4; i++) {
        double t = 1 - i / 4.0, want = exp(mu) / (exp(mu) + (1 / t - 1));
        if (fabs(s[i] - want) > worst) worst = fabs(s[i] - want);
    }
    check(st == QD_OK && n == 5 && descending_to_zero(s, n) && worst < 1e-15,
          "simple (FLUX, 4 steps) = shifted linspace(1, 1/4, 4): max diff %.3g", worst);
    free(s);
    /* simple on SD: every (1000/steps)-th table entry from the top */
    st = qd_ksched_sigmas(ctx, "simple", &sd, 10, NULL, &s, &n);
    check(st == QD_OK && n == 11 && s[0] == sd.sigmas[999] && s[1] == sd.sigmas[899] && s[9] == sd.sigmas[99] &&
              descending_to_zero(s, n), "simple (SD, 10 steps): table entries 999, 899, ..., 99, then 0");
    free(s);
    /* normal/sgm_uniform on SD3: timesteps from 1000 (sigma 1) linearly down */
    /* (ComfyUI maps sigma_min to a timestep and back through the shift once more, so
     * the last sigma is sigma(timestep(sigma_min)), not sigma_min) */
    st = qd_ksched_sigmas(ctx, "normal", &sd3, 5, NULL, &s, &n);
    double last = qd_ms_sigma(&sd3, qd_ms_timestep(&sd3, qd_ms_sigma_min(&sd3)));
    check(st == QD_OK && n == 6 && fabs(s[0] - 1) < 1e-15 && fabs(s[4] - last) < 1e-15 &&
              fabs(s[2] - qd_ms_sigma(&sd3, (1000 + qd_ms_timestep(&sd3, qd_ms_sigma_min(&sd3))) / 2)) < 1e-15 &&
              descending_to_zero(s, n), "normal (SD3): timesteps 1000 .. t(sigma_min) uniform, then 0");
    free(s);
    st = qd_ksched_sigmas(ctx, "sgm_uniform", &sd, 5, NULL, &s, &n);
    check(st == QD_OK && n == 6 && fabs(s[0] / sd.sigmas[999] - 1) < 1e-14 &&
              fabs(s[1] / qd_ms_sigma(&sd, 999 - 999.0 / 5) - 1) < 1e-14 &&
              descending_to_zero(s, n), "sgm_uniform (SD): linspace(999, 0, 6)[:-1] mapped to sigmas");
    free(s);
    /* ddim_uniform: table entries 1 + k * (1000 // steps) reversed; ComfyUI keeps
     * every one below 1000, so 7 steps give 8 */
    st = qd_ksched_sigmas(ctx, "ddim_uniform", &sd, 7, NULL, &s, &n);
    check(st == QD_OK && n == 9 && s[0] == sd.sigmas[995] && s[7] == sd.sigmas[1] && descending_to_zero(s, n),
          "ddim_uniform (SD, 7 steps): entries 995, 853, ..., 1, then 0 (%d values)", n);
    free(s);
    /* beta: Beta(0.6, 0.6) quantiles, symmetric: the middle step sits at t = 500 */
    st = qd_ksched_sigmas(ctx, "beta", &sd, 10, NULL, &s, &n);
    check(st == QD_OK && n == 11 && s[0] == sd.sigmas[999] && s[5] == sd.sigmas[500] && descending_to_zero(s, n),
          "beta (SD, 10 steps): starts at t 999, t 500 halfway");
    free(s);
    /* linear_quadratic: 1 - sigma grows linearly to 0.025 over half the steps */
    st = qd_ksched_sigmas(ctx, "linear_quadratic", &sd3, 10, NULL, &s, &n);
    check(st == QD_OK && n == 11 && s[0] == 1 && fabs(s[4] - (1 - 4 * 0.025 / 5)) < 1e-15 &&
              fabs(s[5] - (1 - 0.025)) < 1e-12 && descending_to_zero(s, n),
          "linear_quadratic (SD3, 10 steps): 1, 0.995, .., 0.975 at step 5");
    free(s);
    /* kl_optimal: from sigma_max to sigma_min through tan/atan */
    st = qd_ksched_sigmas(ctx, "kl_optimal", &sd, 8, NULL, &s, &n);
    check(st == QD_OK && n == 9 && fabs(s[0] / sd.sigmas[999] - 1) < 1e-14 && fabs(s[7] / sd.sigmas[0] - 1) < 1e-14 &&
              descending_to_zero(s, n), "kl_optimal (SD): sigma_max .. sigma_min");
    free(s);
    /* polyexponential with rho 1 is the exponential schedule */
    double *e = NULL;
    int ne = 0;
    st = qd_ksched_sigmas(ctx, "polyexponential", &sd, 9, NULL, &s, &n);
    if (st == QD_OK) st = qd_ksched_sigmas(ctx, "exponential", &sd, 9, NULL, &e, &ne);
    worst = 0;
    for (int i = 0; st == QD_OK && i < n && i < ne; i++)
        if (fabs(s[i] - e[i]) / (e[i] > 0 ? e[i] : 1) > worst) worst = fabs(s[i] - e[i]) / (e[i] > 0 ? e[i] : 1);
    check(st == QD_OK && n == ne && worst < 1e-14, "polyexponential rho 1 = exponential (%.3g)", worst);
    free(s);
    free(e);
    st = qd_ksched_sigmas(ctx, "nonsense", &sd, 9, NULL, &s, &n);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "karras") && strstr(qd_last_error(ctx), "kl_optimal"),
          "unknown schedule lists the known ones: %s", qd_last_error(ctx));
    check(qd_ksampler_find("nonsense") == NULL && qd_ksampler_find("dpmpp_2m_sde_gpu") != NULL,
          "sampler lookup by ComfyUI name");
    qd_model_sampling_free(&sd);
    qd_model_sampling_free(&flux);
    qd_model_sampling_free(&sd3);
}

static void run_fixture_cases(qd_ctx *ctx, const qd_st_set *set, const cJSON *cases) {
    int64_t n = 0;
    double *mu = tensor_f64(set, "mu", &n), *unit = tensor_f64(set, "x_init_unit", NULL);
    check(mu && unit && n > 0, "fixture: mu and x_init_unit");
    if (!mu || !unit) { free(mu); free(unit); return; }
    double *x = malloc(sizeof(double) * (size_t)n);
    int n_cases = 0;
    double worst = 0;
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *name = qd_json_str(c, "case", "?"), *sampler = qd_json_str(c, "sampler", "?");
        const char *sched = qd_json_str(c, "schedule", "?");
        const cJSON *kw = cJSON_GetObjectItemCaseSensitive(c, "kwargs");
        char key[200];
        snprintf(key, sizeof key, "sigmas.%s", sched);
        int64_t n_sig = 0;
        double *sig = tensor_f64(set, key, &n_sig);
        snprintf(key, sizeof key, "out.%s.%s", sched, name);
        double *ref = tensor_f64(set, key, NULL);
        const qd_ksampler *ks = qd_ksampler_find(sampler);
        qd_ks_opts o;
        qd_ks_opts_default(&o);
        o.kdiffusion = 1;
        o.eta = qd_json_num(kw, "eta", NAN);
        o.s_churn = qd_json_num(kw, "s_churn", 0);
        o.s_noise = qd_json_num(kw, "s_noise", 1);
        o.s_tmin = qd_json_num(kw, "s_tmin", 0);
        o.s_tmax = qd_json_num(kw, "s_tmax", INFINITY);
        if (!strcmp(qd_json_str(kw, "solver_type", "midpoint"), "heun")) ks = qd_ksampler_find("dpmpp_2m_sde_heun");
        fixture_io f = {mu, n, 0, set, "", 0, 0, 0};
        snprintf(f.prefix, sizeof f.prefix, "noise.%s.%s.", sched, name);
        qd_ks_io io = {analytic_denoise, stored_noise, &f};
        qd_status st = QD_ERR_ARG;
        if (ks && sig && ref) {
            for (int64_t j = 0; j < n; j++) x[j] = unit[j] * sig[0];
            st = qd_ksample(ctx, ks, &o, sig, (int)n_sig, x, n, &io);
        }
        double r = st == QD_OK ? rel_l2_d(x, ref, n) : INFINITY;
        int draws_ok = f.draws == qd_json_int(c, "noise_draws", -1) && !f.missing;
        check(st == QD_OK && r <= 1e-9 && draws_ok, "%s / %s (%s): rel_l2 %.3g, %d noise draws of %d%s", sched, name,
              sampler, r, f.draws, qd_json_int(c, "noise_draws", -1), st ? qd_last_error(ctx) : "");
        if (r > worst) worst = r;
        n_cases++;
        free(sig);
        free(ref);
    }
    printf("%d k-diffusion fixture cases, worst relative L2 %.3g (float64)\n", n_cases, worst);
    free(x);
    free(mu);
    free(unit);
}

/* Deterministic samplers converge to the exact ODE solution; the error must
 * shrink with more steps and be small at 64 karras steps. */
static double ode_error(qd_ctx *ctx, const char *sampler, const char *sched, int steps, int flow, qd_status *st_out) {
    enum { N = 24 };
    double mu[N], x[N], exact[N];
    for (int j = 0; j < N; j++) {
        mu[j] = 0.3 * sin(j + 1.0) - 0.1;
        x[j] = cos(3.0 * j + 0.5);   /* unit noise */
    }
    qd_ksched_opts so;
    qd_ksched_opts_default(&so);
    qd_model_sampling ms;
    double *sig = NULL;
    int n_sig = 0;
    if (flow) {
        qd_model_sampling_flow(ctx, &ms, 0, 3.0);
    } else {
        so.sigma_min = 0.0292;
        so.sigma_max = 14.6146;
        sd_model_sampling(&ms);
    }
    const qd_ksampler *ks = qd_ksampler_find(sampler);
    /* without the final 0: the last step to 0 returns x0 = E[x0|x], which is not
     * the ODE's end point; every sampler ends at the last sigma instead */
    qd_status st = qd_ksched_sigmas(ctx, sched, &ms, steps, &so, &sig, &n_sig);
    if (st == QD_OK) n_sig--;
    double s2 = S_DATA * S_DATA, err = INFINITY;
    if (st == QD_OK && ks) {
        double s0 = sig[0];
        for (int j = 0; j < N; j++) {
            double z = x[j];
            /* x_T and the exact end point of the ODE through it */
            if (!flow) {
                x[j] = z * s0;
                exact[j] = mu[j] + (x[j] - mu[j]) * S_DATA / sqrt(s2 + s0 * s0);
            } else {
                double a = 1 - s0;
                x[j] = a * mu[j] + z * sqrt(a * a * s2 + s0 * s0);   /* a point on the trajectory of z */
                exact[j] = mu[j] + S_DATA * z;
            }
        }
        qd_ks_opts o;
        qd_ks_opts_default(&o);
        o.flow = flow;
        o.eta = 0;
        o.flow_sigma_start = qd_ms_percent_to_sigma(&ms, 1e-4);
        fixture_io f = {mu, N, flow, NULL, "", 0, 0, 0};
        qd_ks_io io = {analytic_denoise, stored_noise, &f};
        st = qd_ksample(ctx, ks, &o, sig, n_sig, x, N, &io);
        double s_end = sig[n_sig - 1];   /* the ODE solution there */
        for (int j = 0; j < N; j++) {
            double z = (exact[j] - mu[j]) / S_DATA;
            exact[j] = !flow ? mu[j] + z * sqrt(s2 + s_end * s_end)
                             : (1 - s_end) * mu[j] + z * sqrt((1 - s_end) * (1 - s_end) * s2 + s_end * s_end);
        }
        if (st == QD_OK) err = rel_l2_d(x, exact, N);
        int expect = qd_ksampler_calls(ks, sig, n_sig);
        if (st == QD_OK && expect >= 0 && expect != f.calls) {
            printf("  %s: %d model calls, qd_ksampler_calls says %d\n", sampler, f.calls, expect);
            err = INFINITY;
        }
    }
    free(sig);
    qd_model_sampling_free(&ms);
    *st_out = st;
    return err;
}

static void check_convergence(qd_ctx *ctx) {
    /* eta = 0 turns the ancestral/SDE samplers into ODE solvers too */
    static const char *const ode[] = {"euler", "heun", "heunpp2", "dpm_2", "lms", "dpm_fast", "dpm_adaptive",
                                      "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                                      "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ipndm", "ipndm_v", "deis",
                                      "res_multistep", "gradient_estimation", "euler_ancestral", "dpm_2_ancestral",
                                      "exp_heun_2_x0", "seeds_2", "seeds_3", "uni_pc", "uni_pc_bh2", "euler_cfg_pp",
                                      "dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
                                      "gradient_estimation_cfg_pp", "ddim", "sa_solver", "sa_solver_pece",
                                      NULL};
    for (int flow = 0; flow <= 1; flow++)
        for (int i = 0; ode[i]; i++) {
            /* ipndm_v's step-ratio weights (as the reference has them) are not the exact
             * variable-step Adams-Bashforth ones; on the flow schedule's strongly varying
             * steps they do not converge, in ComfyUI as here */
            if (flow && !strcmp(ode[i], "ipndm_v")) continue;
            qd_status st1, st2;
            /* the multistep methods reach their asymptotic rate late on the flow
             * schedule (tiny lambda steps near sigma 1): compare more steps there */
            const char *sched = flow ? "simple" : "karras";
            int n1 = flow ? 64 : 16, n2 = 4 * n1;
            double e1 = ode_error(ctx, ode[i], sched, n1, flow, &st1), e2 = ode_error(ctx, ode[i], sched, n2, flow, &st2);
            /* dpm_adaptive picks its own steps (rtol 0.05); the Euler-like ones are first order */
            int adaptive = !strcmp(ode[i], "dpm_adaptive");
            int first_order = !strcmp(ode[i], "euler") || !strcmp(ode[i], "ddim") || !strcmp(ode[i], "heunpp2") ||
                              !strncmp(ode[i], "euler_", 6) || !strncmp(ode[i], "gradient_estimation", 19);
            double tol = adaptive ? 3e-2 : first_order ? 4e-2 : 1e-2;
            /* flow: the logSNR samplers start from sigma 0.99997 instead of 1 (ComfyUI's
             * offset_first_sigma_for_snr), an error floor of ~4e-5 */
            int ok = st1 == QD_OK && st2 == QD_OK && e2 <= tol && (e2 < 0.7 * e1 || e2 < 1e-4 || adaptive);
            check(ok, "%s ODE (%s %s): rel error %.2e at %d steps, %.2e at %d%s%s", ode[i], flow ? "flow" : "eps",
                  sched, e1, n1, e2, n2, st1 || st2 ? ": " : "", st1 || st2 ? qd_last_error(ctx) : "");
        }
}

/* Every sampler with noise (ancestral, SDE) runs with eta 1 on both
 * parameterizations and gives a finite sample near mu (the analytic
 * posterior); the exact distribution is not checked. */
static qd_status gauss_noise(void *user, int kind, double sigma, double sigma_next, double *out) {
    fixture_io *f = user;
    for (int64_t j = 0; j < f->n; j++) {
        unsigned h = (unsigned)(f->draws * 7919 + j * 104729 + 17) * 2654435761u;
        double u1 = ((h >> 8) + 0.5) / 16777216.0, u2 = (((h * 2246822519u) >> 8) + 0.5) / 16777216.0;
        out[j] = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
    }
    f->draws++;
    return QD_OK;
}

static void check_all_run(qd_ctx *ctx) {
    int n_list;
    const qd_ksampler *list = qd_ksampler_list(&n_list);
    enum { N = 64 };
    double mu[N], x[N];
    for (int j = 0; j < N; j++) mu[j] = 0.3 * sin(j + 1.0);
    for (int flow = 0; flow <= 1; flow++) {
        qd_model_sampling ms;
        if (flow) qd_model_sampling_flow(ctx, &ms, 1, 0.8);
        else sd_model_sampling(&ms);
        int ok_all = 1;
        for (int i = 0; i < n_list; i++) {
            double *sig = NULL;
            int n_sig = 0;
            qd_status st = qd_ksched_sigmas(ctx, flow ? "simple" : "karras", &ms, 12, NULL, &sig, &n_sig);
            fixture_io f = {mu, N, flow, NULL, "", 0, 0, 0};
            qd_ks_io io = {analytic_denoise, gauss_noise, &f};
            qd_ks_opts o;
            qd_ks_opts_default(&o);
            o.flow = flow;
            o.flow_sigma_start = qd_ms_percent_to_sigma(&ms, 1e-4);
            for (int j = 0; j < N; j++) x[j] = sig[0] * cos(2.0 * j);
            if (st == QD_OK) st = qd_ksample(ctx, &list[i], &o, sig, n_sig, x, N, &io);
            double dist = 0;
            for (int j = 0; j < N; j++) dist += (x[j] - mu[j]) * (x[j] - mu[j]);
            dist = sqrt(dist / N);   /* ~ s = 0.5 for a sample of the posterior */
            int ok = st == QD_OK && dist < 3 * S_DATA;
            if (!ok) {
                ok_all = 0;
                check(0, "%s (%s) with noise: %s, rms distance to mu %.3g", list[i].name, flow ? "flow" : "eps",
                      st ? qd_last_error(ctx) : "ok", dist);
            }
            int needs_noise = (list[i].flags & QD_KS_ANCESTRAL) != 0;
            if (st == QD_OK && needs_noise != (f.draws > 0) && strcmp(list[i].name, "dpm_fast") &&
                strcmp(list[i].name, "dpm_adaptive")) {
                ok_all = 0;
                check(0, "%s (%s): drew %d noise vectors, flagged %s", list[i].name, flow ? "flow" : "eps", f.draws,
                      needs_noise ? "ancestral" : "deterministic");
            }
            free(sig);
        }
        check(ok_all, "all %d samplers run with noise on %s sampling", n_list, flow ? "flow" : "eps");
        qd_model_sampling_free(&ms);
    }
}

/* The Brownian noise source: each call a standard normal per coordinate;
 * dpmpp_sde's overlapping calls (sigma, mid) and (sigma, next) correlated by
 * sqrt(|sigma - mid| / |sigma - next|); the next step's calls independent. */
typedef struct { qd_rng rng; float *f; int64_t n; } randn_src;

static qd_status src_randn(void *user, double *out) {
    randn_src *r = user;
    qd_rng_randn(&r->rng, r->f, r->n);
    for (int64_t j = 0; j < r->n; j++) out[j] = r->f[j];
    return QD_OK;
}

static void moments(const double *a, const double *b, int64_t n, double *var_a, double *corr) {
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    for (int64_t j = 0; j < n; j++) {
        sa += a[j]; sb += b[j]; saa += a[j] * a[j]; sbb += b[j] * b[j]; sab += a[j] * b[j];
    }
    double ma = sa / n, mb = sb / n, va = saa / n - ma * ma, vb = sbb / n - mb * mb;
    *var_a = va;
    *corr = (sab / n - ma * mb) / sqrt(va * vb);
}

static void check_brownian(qd_ctx *ctx) {
    enum { N = 40000 };
    randn_src src;
    src.f = malloc(sizeof(float) * N);
    src.n = N;
    qd_rng_seed(&src.rng, 5);
    double *a = malloc(sizeof(double) * N), *b = malloc(sizeof(double) * N), *c = malloc(sizeof(double) * N);
    qd_brownian *br = NULL;
    qd_status st = qd_brownian_new(ctx, N, 0.03, src_randn, &src, &br);
    if (st == QD_OK) st = qd_brownian_noise(ctx, br, 10, 5, a);
    if (st == QD_OK) st = qd_brownian_noise(ctx, br, 10, 1, b);
    if (st == QD_OK) st = qd_brownian_noise(ctx, br, 1, 0.5, c);
    double va, vb, vc, ab, ac, bc;
    moments(a, b, N, &va, &ab);
    moments(b, c, N, &vb, &bc);
    moments(c, a, N, &vc, &ac);
    double want = sqrt(5.0 / 9.0);
    check(st == QD_OK && fabs(va - 1) < 0.03 && fabs(vb - 1) < 0.03 && fabs(vc - 1) < 0.03 && fabs(ab - want) < 0.02 &&
              fabs(bc) < 0.02 && fabs(ac) < 0.02,
          "Brownian noise: variances %.3f %.3f %.3f, overlapping calls correlated %.3f (want %.3f), disjoint %.3f %.3f",
          va, vb, vc, ab, want, bc, ac);
    qd_brownian_free(br);
    free(a); free(b); free(c); free(src.f);
}

/* SA-Solver with noise samples the right law: started from the exact marginal
 * at sigma_0 (x = alpha mu + sqrt(alpha^2 s^2 + sigma_0^2) z) and run with eta 1
 * over the whole schedule, the sample at the last sigma must have mean alpha mu
 * and variance alpha^2 s^2 + sigma_end^2 per coordinate. The discrete SDE
 * only approaches that law as steps shrink (at 30 steps the variance is off by
 * 0-40% depending on the order, at 120 by about 1%), so 150 steps are run and
 * 3% allowed; the sampling error of 40000 values is ~0.7%. A wrong decay or
 * noise coefficient misses by far more at any step count. */
typedef struct { fixture_io f; randn_src r; } sa_law_io;

static qd_status sa_law_noise(void *user, int kind, double sigma, double sigma_next, double *out) {
    return src_randn(&((sa_law_io *)user)->r, out);
}

static qd_status sa_law_denoise(void *user, const double *x, double sigma, double *x0, double *uncond) {
    return analytic_denoise(&((sa_law_io *)user)->f, x, sigma, x0, uncond);
}

static void check_sa_solver_law(qd_ctx *ctx) {
    enum { N = 40000 };
    static const char *const names[] = {"sa_solver", "sa_solver_pece"};
    double *mu = malloc(sizeof(double) * N), *x = malloc(sizeof(double) * N), *d = malloc(sizeof(double) * N);
    sa_law_io io_state;
    io_state.r.f = malloc(sizeof(float) * N);
    io_state.r.n = N;
    for (int64_t j = 0; j < N; j++) mu[j] = 0.3 * sin(j + 1.0);
    for (int flow = 0; flow <= 1; flow++)
        for (int v = 0; v < 2; v++) {
            qd_model_sampling ms;
            qd_ksched_opts so;
            qd_ksched_opts_default(&so);
            if (flow) {
                qd_model_sampling_flow(ctx, &ms, 0, 3.0);
            } else {
                so.sigma_min = 0.0292;
                so.sigma_max = 14.6146;
                sd_model_sampling(&ms);
            }
            double *sig = NULL;
            int n_sig = 0;
            qd_status st = qd_ksched_sigmas(ctx, flow ? "simple" : "karras", &ms, 150, &so, &sig, &n_sig);
            if (st == QD_OK) n_sig--;   /* end at the last sigma > 0 */
            if (st == QD_OK && flow) {   /* start below sigma 1, where logSNR is finite */
                int first = 0;
                while (sig[first] > 0.95) first++;
                memmove(sig, sig + first, sizeof(double) * (size_t)(n_sig - first));
                n_sig -= first;
            }
            qd_rng_seed(&io_state.r.rng, 11 + v + 2 * flow);
            double s0 = st == QD_OK ? sig[0] : 1, s2 = S_DATA * S_DATA;
            if (st == QD_OK) {
                qd_rng_randn(&io_state.r.rng, io_state.r.f, N);
                for (int64_t j = 0; j < N; j++) {
                    double a = flow ? 1 - s0 : 1;
                    x[j] = a * mu[j] + sqrt(a * a * s2 + s0 * s0) * io_state.r.f[j];
                }
            }
            fixture_io f = {mu, N, flow, NULL, "", 0, 0, 0};
            io_state.f = f;
            qd_ks_io io = {sa_law_denoise, sa_law_noise, &io_state};
            qd_ks_opts o;
            qd_ks_opts_default(&o);
            o.flow = flow;
            o.eta = 1;
            if (st == QD_OK) st = qd_ksample(ctx, qd_ksampler_find(names[v]), &o, sig, n_sig, x, N, &io);
            double se = st == QD_OK ? sig[n_sig - 1] : 0, a = flow ? 1 - se : 1;
            for (int64_t j = 0; j < N; j++) d[j] = x[j] - a * mu[j];
            double mean = 0, var = 0;
            for (int64_t j = 0; j < N; j++) mean += d[j];
            mean /= N;
            for (int64_t j = 0; j < N; j++) var += (d[j] - mean) * (d[j] - mean);
            var /= N;
            double want = a * a * s2 + se * se;
            check(st == QD_OK && fabs(mean) < 4 * sqrt(want / N) && fabs(var / want - 1) < 0.03,
                  "%s (%s) with eta 1: sample mean offset %.4f, variance %.5f vs %.5f (ratio %.4f)%s%s", names[v],
                  flow ? "flow" : "eps", mean, var, want, var / want, st ? ": " : "", st ? qd_last_error(ctx) : "");
            free(sig);
            qd_model_sampling_free(&ms);
        }
    free(io_state.r.f);
    free(mu); free(x); free(d);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(1);
    char path[4096];
    snprintf(path, sizeof path, "%s", fixture("samplers/kdiffusion_samplers.json"));
    cJSON *doc = NULL;
    qd_st_set set = {0};
    qd_status st = qd_json_load(ctx, path, &doc);
    if (st == QD_OK) st = qd_st_open(ctx, fixture("samplers/kdiffusion_samplers.safetensors"), &set);
    check(st == QD_OK, "open the sampler fixtures: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        check_schedules(ctx, &set);
        run_fixture_cases(ctx, &set, cJSON_GetObjectItemCaseSensitive(doc, "cases"));
        qd_st_close(&set);
    }
    cJSON_Delete(doc);
    check_schedule_rules(ctx);
    check_brownian(ctx);
    check_convergence(ctx);
    check_all_run(ctx);
    check_sa_solver_law(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
