/* Pieces several scheduler classes share verbatim in diffusers (each class
 * there carries its own copy): common defaults, DDIM/DDPM timesteps and x0, the k-diffusion-style classes'
 * key list and set_timesteps, the multistep solvers' alpha/sigma/lambda view
 * of a sigma, their convert_model_output and their set_timesteps. The classes'
 * own update rules stay in their sched_*.c files. */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>

void qd_sched_defaults(qd_sched_config *c, double beta_start, double beta_end, int spacing) {
    c->num_train_timesteps = 1000;
    c->beta_start = beta_start;
    c->beta_end = beta_end;
    c->beta_schedule = QD_BETA_LINEAR;
    c->prediction_type = QD_PRED_EPSILON;
    c->timestep_spacing = spacing;
}

/* ------------------------------------------------------------ DDIM, DDPM */

qd_status qd_sched_discrete_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    double *t = qd_malloc(ctx, sizeof(double) * (size_t)n);
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    qd_status st = t && ts ? qd_sched_spacing_int(ctx, s, n, t) : QD_ERR_NOMEM;
    for (int i = 0; st == QD_OK && i < n; i++) {
        if (t[i] < 0 || t[i] >= s->n_train)
            st = qd_fail(ctx, QD_ERR_ARG, "%s: timestep %.0f out of range (steps_offset?)", s->cls->name, t[i]);
        else ts[i] = (float)t[i];
    }
    free(t);
    if (st != QD_OK) {
        free(ts);
        return st;
    }
    qd_sched_set_arrays(s, ts, n, NULL, 0);
    s->num_inference_steps = n;
    return QD_OK;
}

qd_status qd_sched_ddpm_x0(qd_ctx *ctx, const qd_sched_config *c, float sa, float sb, const float *mo,
                           const float *x, float *x0, int64_t batch, int64_t per_item) {
    const int64_t n = batch * per_item;
    for (int64_t j = 0; j < n; j++) {
        if (c->prediction_type == QD_PRED_EPSILON) x0[j] = (x[j] - sb * mo[j]) / sa;
        else if (c->prediction_type == QD_PRED_SAMPLE) x0[j] = mo[j];
        else x0[j] = sa * x[j] - sb * mo[j];
    }
    if (c->thresholding) {
        QD_TRY(qd_sched_threshold(ctx, c, x0, batch, per_item));
    } else if (c->clip_sample) {
        const float r = (float)c->clip_sample_range;
        for (int64_t j = 0; j < n; j++) x0[j] = x0[j] < -r ? -r : (x0[j] > r ? r : x0[j]);
    }
    return QD_OK;
}

/* ------------------------------------------------ k-diffusion-style classes */

const char *const qd_sched_kdiff_keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "use_karras_sigmas",
    "use_exponential_sigmas", "use_beta_sigmas", "prediction_type", "timestep_spacing", "steps_offset", NULL};

qd_status qd_sched_kdiff_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n, float final_sigma) {
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 2));
    float *sigmas = qd_malloc(ctx, sizeof(float) * (size_t)(n + 2));
    int m = 0;
    qd_status st = ts && sig && sigmas ? qd_sched_kdiff_sigmas(ctx, s, n, ts, sig, &m, 0) : QD_ERR_NOMEM;
    if (st != QD_OK) {
        free(ts);
        free(sig);
        free(sigmas);
        return st;
    }
    for (int i = 0; i < m; i++) sigmas[i] = (float)sig[i];
    sigmas[m] = final_sigma;
    free(sig);
    qd_sched_set_arrays(s, ts, n, sigmas, m + 1);
    s->num_inference_steps = n;
    s->init_noise_sigma = qd_sched_init_sigma_kdiff(s);
    return QD_OK;
}

float qd_sched_lerp_half(float a, float b) { return b - (b - a) * 0.5f; }

void qd_sched_interleave(const float *v, int n, float *out) {
    int k = 0;
    out[k++] = v[0];
    for (int i = 1; i <= n; i++) {
        out[k++] = v[i];
        out[k++] = v[i];
    }
    out[k] = v[n];
}

/* ------------------------------------------ DPM-Solver, DEIS and UniPC */

qd_sched_ast qd_sched_alpha_sigma(float sg) {
    qd_sched_ast r;
    r.alpha = 1.0 / sqrt((double)sg * sg + 1.0);
    r.sigma = sg * r.alpha;
    r.lambda = log(r.alpha) - log(r.sigma);   /* +inf at sigma = 0 */
    return r;
}

int qd_sched_lambda_clipped(const qd_scheduler *s) {
    int clipped = 0;
    for (int i = s->n_train - 1; i >= 0; i--) {
        float a = sqrtf(s->alphas_cumprod[i]), sg = sqrtf(1.0f - s->alphas_cumprod[i]);
        float lam = logf(a) - logf(sg);
        if (lam < s->cfg.lambda_min_clipped) clipped++;
        else break;
    }
    return clipped;
}

int qd_sched_multistep_sigmas(const qd_scheduler *s, int n, double *t, double *sig) {
    const qd_sched_config *c = &s->cfg;
    const int N = s->n_train;
    if (!(c->use_karras_sigmas || c->use_exponential_sigmas || c->use_beta_sigmas || c->use_lu_lambdas)) {
        for (int i = 0; i < n; i++) sig[i] = qd_np_interp_idx(t[i], s->train_sigmas, N);
        return 0;
    }
    /* the full training sigmas reversed: [0] is the largest */
    const double smax = s->train_sigmas[N - 1], smin = s->train_sigmas[0];
    if (c->use_karras_sigmas) qd_sigmas_karras(smin, smax, n, sig);
    else if (c->use_exponential_sigmas) qd_sigmas_exponential(smin, smax, n, sig);
    else if (c->use_beta_sigmas) qd_sigmas_beta(smin, smax, n, sig);
    else {
        /* Lu et al. 2022: uniform in lambda = log sigma (rho = 1) */
        double lmax = s->log_sigmas[N - 1], lmin = s->log_sigmas[0];
        qd_np_linspace(0, 1, n, sig);
        for (int i = 0; i < n; i++) sig[i] = exp(lmax + sig[i] * (lmin - lmax));
    }
    for (int i = 0; i < n; i++) {
        double tt = qd_sigma_to_t(sig[i], s->log_sigmas, N);
        /* karras / lu round; exponential / beta are truncated by the int64 cast */
        t[i] = c->use_karras_sigmas || c->use_lu_lambdas ? qd_np_round(tt) : trunc(tt);
    }
    return 1;
}

qd_status qd_sched_store_schedule(qd_ctx *ctx, qd_scheduler *s, int n, const double *t, const double *sig,
                                  float last) {
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    float *sigmas = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
    if (!ts || !sigmas) {
        free(ts);
        free(sigmas);
        return QD_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        ts[i] = (float)t[i];
        sigmas[i] = (float)sig[i];
    }
    sigmas[n] = last;
    qd_sched_set_arrays(s, ts, n, sigmas, n + 1);
    s->num_inference_steps = n;
    return QD_OK;
}

qd_status qd_sched_multistep_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n, int last_timestep) {
    const qd_sched_config *c = &s->cfg;
    double *t = qd_malloc(ctx, sizeof(double) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
    qd_status st = t && sig ? qd_sched_spacing_multistep(ctx, s, n, last_timestep, t) : QD_ERR_NOMEM;
    if (st == QD_OK) {
        float last;
        if (qd_sched_multistep_sigmas(s, n, t, sig)) last = c->final_sigmas_zero ? 0.0f : (float)sig[n - 1];
        else last = c->final_sigmas_zero ? 0.0f : qd_sched_sigma_from_ac(s->alphas_cumprod[0]);
        st = qd_sched_store_schedule(ctx, s, n, t, sig, last);
    }
    free(t);
    free(sig);
    return st;
}

qd_status qd_sched_convert_output(qd_ctx *ctx, const qd_scheduler *s, int i, int to_x0, const float *mo,
                                  const float *x, float *out, int64_t batch, int64_t per_item) {
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    qd_sched_ast a = qd_sched_alpha_sigma(s->sigmas[i]);
    const double al = a.alpha, sg = a.sigma;
    if (to_x0) {
        for (int64_t j = 0; j < n; j++) {
            if (c->prediction_type == QD_PRED_EPSILON) out[j] = (float)((x[j] - sg * mo[j]) / al);
            else if (c->prediction_type == QD_PRED_SAMPLE) out[j] = mo[j];
            else out[j] = (float)(al * x[j] - sg * mo[j]);
        }
        if (c->thresholding) QD_TRY(qd_sched_threshold(ctx, c, out, batch, per_item));
        return QD_OK;
    }
    for (int64_t j = 0; j < n; j++) {
        if (c->prediction_type == QD_PRED_EPSILON) out[j] = mo[j];
        else if (c->prediction_type == QD_PRED_SAMPLE) out[j] = (float)((x[j] - al * mo[j]) / sg);
        else out[j] = (float)(al * mo[j] + sg * x[j]);
    }
    if (c->thresholding) {
        /* thresholding works on x0: there and back */
        for (int64_t j = 0; j < n; j++) out[j] = (float)((x[j] - sg * out[j]) / al);
        QD_TRY(qd_sched_threshold(ctx, c, out, batch, per_item));
        for (int64_t j = 0; j < n; j++) out[j] = (float)((x[j] - al * out[j]) / sg);
    }
    return QD_OK;
}
