/* DPMSolverMultistepScheduler: DPM-Solver (Lu et al. 2022) and DPM-Solver++
 * (2022b), multistep orders 1-3, ODE or SDE ("sde-dpmsolver++": DPM++ 2M SDE,
 * noise drawn every step). Works in sigma space with
 * alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma*alpha_t, lambda = log(alpha/sigma).
 * The default lower_order_final and final_sigmas_type "zero" make the last step
 * first order (and the one before second order when there are < 15 steps). */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "solver_order",
    "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
    "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas",
    "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
    "lambda_min_clipped", "variance_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr", NULL};

static void defaults(qd_sched_config *c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = QD_BETA_LINEAR;
    c->solver_order = 2;
    c->prediction_type = QD_PRED_EPSILON;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->algorithm_type = QD_ALGO_DPMSOLVERPP;
    c->solver_type = QD_SOLVER_MIDPOINT;
    c->lower_order_final = 1;
    c->flow_shift = 1.0;
    c->final_sigmas_zero = 1;
    c->lambda_min_clipped = -INFINITY;
    c->variance_type = QD_VAR_NONE;
    c->timestep_spacing = QD_SPACING_LINSPACE;
}

typedef struct {
    float *m[3];        /* model_outputs, m[order-1] newest */
    int lower_order_nums;
    float *noise;
} state;

static int is_pp(int algo) { return algo == QD_ALGO_DPMSOLVERPP || algo == QD_ALGO_SDE_DPMSOLVERPP; }
static int is_sde(int algo) { return algo == QD_ALGO_SDE_DPMSOLVERPP || algo == QD_ALGO_SDE_DPMSOLVER; }

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    qd_sched_config *c = &s->cfg;
    if (c->algorithm_type == QD_ALGO_DEIS) c->algorithm_type = QD_ALGO_DPMSOLVERPP;   /* register_to_config */
    if (c->solver_type == QD_SOLVER_LOGRHO || c->solver_type == QD_SOLVER_BH1 || c->solver_type == QD_SOLVER_BH2)
        c->solver_type = QD_SOLVER_MIDPOINT;
    if (!is_pp(c->algorithm_type) && c->final_sigmas_zero)
        return qd_fail(ctx, QD_ERR_ARG,
                       "%s: final_sigmas_type 'zero' is not supported for this algorithm_type; use 'sigma_min'",
                       s->cls->name);
    if (c->use_flow_sigmas)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: use_flow_sigmas is not supported", s->cls->name);
    if (c->variance_type == QD_VAR_LEARNED || c->variance_type == QD_VAR_LEARNED_RANGE)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: learned variance_type is not supported", s->cls->name);
    if (c->use_lu_lambdas + c->use_karras_sigmas + c->use_exponential_sigmas + c->use_beta_sigmas > 1)
        return qd_fail(ctx, QD_ERR_ARG, "%s: use_lu_lambdas cannot be combined with other sigma schedules",
                       s->cls->name);
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    s->init_noise_sigma = 1.0f;
    return QD_OK;
}

static void reset(state *st) {
    for (int k = 0; k < 3; k++) {
        free(st->m[k]);
        st->m[k] = NULL;
    }
    free(st->noise);
    st->noise = NULL;
    st->lower_order_nums = 0;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    const qd_sched_config *c = &s->cfg;
    const int N = s->n_train;
    reset(s->state);
    /* clip lambda(t) from below (cosine schedules): count of flipped lambdas < the bound */
    int clipped = 0;
    for (int i = N - 1; i >= 0; i--) {
        float a = sqrtf(s->alphas_cumprod[i]), sg = sqrtf(1.0f - s->alphas_cumprod[i]);
        float lam = logf(a) - logf(sg);
        if (lam < c->lambda_min_clipped) clipped++;
        else break;
    }
    int last_timestep = c->num_train_timesteps - clipped;
    double *t = qd_malloc(ctx, sizeof(double) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
    qd_status st = t && sig ? qd_sched_spacing_multistep(ctx, s, n, last_timestep, t) : QD_ERR_NOMEM;
    if (st != QD_OK) {
        free(t);
        free(sig);
        return st;
    }
    /* the full training sigmas reversed: [0] is the largest */
    const double smax = s->train_sigmas[N - 1], smin = s->train_sigmas[0];
    double last;
    if (c->use_karras_sigmas || c->use_exponential_sigmas || c->use_beta_sigmas || c->use_lu_lambdas) {
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
        last = c->final_sigmas_zero ? 0.0 : sig[n - 1];
    } else {
        for (int i = 0; i < n; i++) sig[i] = qd_np_interp_idx(t[i], s->train_sigmas, N);
        last = c->final_sigmas_zero ? 0.0 : (double)qd_sched_sigma_from_ac(s->alphas_cumprod[0]);
    }
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    float *sigmas = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
    if (!ts || !sigmas) {
        free(t); free(sig); free(ts); free(sigmas);
        return QD_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        ts[i] = (float)t[i];
        sigmas[i] = (float)sig[i];
    }
    sigmas[n] = (float)last;
    free(t);
    free(sig);
    qd_sched_set_arrays(s, ts, n, sigmas, n + 1);
    s->num_inference_steps = n;
    return QD_OK;
}

typedef struct {
    double alpha, sigma, lambda;
} ast;

static ast alpha_sigma(float sg) {
    ast r;
    r.alpha = 1.0 / sqrt((double)sg * sg + 1.0);
    r.sigma = sg * r.alpha;
    r.lambda = log(r.alpha) - log(r.sigma);   /* +inf at sigma = 0 */
    return r;
}

/* convert_model_output: x0 for DPM-Solver++, epsilon for DPM-Solver. */
static qd_status convert(qd_ctx *ctx, const qd_scheduler *s, int i, const float *mo, const float *x, float *out,
                         int64_t batch, int64_t per_item) {
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    ast a = alpha_sigma(s->sigmas[i]);
    const double al = a.alpha, sg = a.sigma;
    if (is_pp(c->algorithm_type)) {
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
        for (int64_t j = 0; j < n; j++) out[j] = (float)((x[j] - sg * out[j]) / al);
        QD_TRY(qd_sched_threshold(ctx, c, out, batch, per_item));
        for (int64_t j = 0; j < n; j++) out[j] = (float)((x[j] - al * out[j]) / sg);
    }
    return QD_OK;
}

static void first_order(const qd_scheduler *s, int i, const float *m0, float *x, const float *noise, int64_t n) {
    const int algo = s->cfg.algorithm_type;
    ast t = alpha_sigma(s->sigmas[i + 1]), s0 = alpha_sigma(s->sigmas[i]);
    const double h = t.lambda - s0.lambda;
    double cx, cm, cn = 0;
    if (algo == QD_ALGO_DPMSOLVERPP) {
        cx = t.sigma / s0.sigma;
        cm = -(t.alpha * (exp(-h) - 1.0));
    } else if (algo == QD_ALGO_DPMSOLVER) {
        cx = t.alpha / s0.alpha;
        cm = -(t.sigma * (exp(h) - 1.0));
    } else if (algo == QD_ALGO_SDE_DPMSOLVERPP) {
        cx = t.sigma / s0.sigma * exp(-h);
        cm = t.alpha * (1 - exp(-2.0 * h));
        cn = t.sigma * sqrt(1.0 - exp(-2 * h));
    } else {
        cx = t.alpha / s0.alpha;
        cm = -2.0 * (t.sigma * (exp(h) - 1.0));
        cn = t.sigma * sqrt(exp(2 * h) - 1.0);
    }
    for (int64_t j = 0; j < n; j++) {
        double v = cx * x[j] + cm * m0[j];
        if (noise) v += cn * noise[j];
        x[j] = (float)v;
    }
}

static void second_order(const qd_scheduler *s, int i, const float *m0, const float *m1, float *x,
                         const float *noise, int64_t n) {
    const int algo = s->cfg.algorithm_type, heun = s->cfg.solver_type == QD_SOLVER_HEUN;
    ast t = alpha_sigma(s->sigmas[i + 1]), s0 = alpha_sigma(s->sigmas[i]), s1 = alpha_sigma(s->sigmas[i - 1]);
    const double h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda, r0 = h0 / h;
    /* x_t = cx*x + c0*D0 + c1*D1 (+ cn*noise), D0 = m0, D1 = (m0 - m1)/r0 */
    double cx, c0, c1, cn = 0;
    if (algo == QD_ALGO_DPMSOLVERPP) {
        cx = t.sigma / s0.sigma;
        c0 = -(t.alpha * (exp(-h) - 1.0));
        c1 = heun ? t.alpha * ((exp(-h) - 1.0) / h + 1.0) : -0.5 * (t.alpha * (exp(-h) - 1.0));
    } else if (algo == QD_ALGO_DPMSOLVER) {
        cx = t.alpha / s0.alpha;
        c0 = -(t.sigma * (exp(h) - 1.0));
        c1 = heun ? -(t.sigma * ((exp(h) - 1.0) / h - 1.0)) : -0.5 * (t.sigma * (exp(h) - 1.0));
    } else if (algo == QD_ALGO_SDE_DPMSOLVERPP) {
        cx = t.sigma / s0.sigma * exp(-h);
        c0 = t.alpha * (1 - exp(-2.0 * h));
        c1 = heun ? t.alpha * ((1.0 - exp(-2.0 * h)) / (-2.0 * h) + 1.0) : 0.5 * (t.alpha * (1 - exp(-2.0 * h)));
        cn = t.sigma * sqrt(1.0 - exp(-2.0 * h));
    } else {
        cx = t.alpha / s0.alpha;
        c0 = -2.0 * (t.sigma * (exp(h) - 1.0));
        c1 = heun ? -2.0 * (t.sigma * ((exp(h) - 1.0) / h - 1.0)) : -(t.sigma * (exp(h) - 1.0));
        cn = t.sigma * sqrt(exp(2 * h) - 1.0);
    }
    const double inv_r0 = 1.0 / r0;
    for (int64_t j = 0; j < n; j++) {
        double d1 = inv_r0 * ((double)m0[j] - m1[j]);
        double v = cx * x[j] + c0 * m0[j] + c1 * d1;
        if (noise) v += cn * noise[j];
        x[j] = (float)v;
    }
}

static void third_order(const qd_scheduler *s, int i, const float *m0, const float *m1, const float *m2,
                        float *x, const float *noise, int64_t n) {
    const int algo = s->cfg.algorithm_type;
    ast t = alpha_sigma(s->sigmas[i + 1]), s0 = alpha_sigma(s->sigmas[i]), s1 = alpha_sigma(s->sigmas[i - 1]),
        s2 = alpha_sigma(s->sigmas[i - 2]);
    const double h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda, h1 = s1.lambda - s2.lambda;
    const double r0 = h0 / h, r1 = h1 / h;
    double cx, c0, c1, c2, cn = 0;
    if (algo == QD_ALGO_DPMSOLVERPP) {
        cx = t.sigma / s0.sigma;
        c0 = -(t.alpha * (exp(-h) - 1.0));
        c1 = t.alpha * ((exp(-h) - 1.0) / h + 1.0);
        c2 = -(t.alpha * ((exp(-h) - 1.0 + h) / (h * h) - 0.5));
    } else if (algo == QD_ALGO_DPMSOLVER) {
        cx = t.alpha / s0.alpha;
        c0 = -(t.sigma * (exp(h) - 1.0));
        c1 = -(t.sigma * ((exp(h) - 1.0) / h - 1.0));
        c2 = -(t.sigma * ((exp(h) - 1.0 - h) / (h * h) - 0.5));
    } else {
        /* sde-dpmsolver++ third order (later diffusers); sde-dpmsolver has none */
        cx = t.sigma / s0.sigma * exp(-h);
        c0 = t.alpha * (1.0 - exp(-2.0 * h));
        c1 = t.alpha * ((1.0 - exp(-2.0 * h)) / (-2.0 * h) + 1.0);
        c2 = t.alpha * ((1.0 - exp(-2.0 * h) - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5);
        cn = t.sigma * sqrt(1.0 - exp(-2.0 * h));
    }
    for (int64_t j = 0; j < n; j++) {
        double d10 = (1.0 / r0) * ((double)m0[j] - m1[j]), d11 = (1.0 / r1) * ((double)m1[j] - m2[j]);
        double d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11);
        double d2 = (1.0 / (r0 + r1)) * (d10 - d11);
        double v = cx * x[j] + c0 * m0[j] + c1 * d1 + c2 * d2;
        if (noise) v += cn * noise[j];
        x[j] = (float)v;
    }
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    const int order = c->solver_order, len = s->n_timesteps;
    const int lower_final = i == len - 1 && (c->euler_at_final || (c->lower_order_final && len < 15) ||
                                             c->final_sigmas_zero);
    const int lower_second = i == len - 2 && c->lower_order_final && len < 15;
    /* shift the history: the oldest buffer becomes the newest */
    float *buf = st->m[0];
    for (int k = 0; k < order - 1; k++) st->m[k] = st->m[k + 1];
    if (!buf && !(buf = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    st->m[order - 1] = buf;
    QD_TRY(convert(ctx, s, i, mo, x, buf, batch, per_item));
    const float *noise = NULL;
    if (is_sde(c->algorithm_type)) {
        if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: SDE variant needs a generator", s->cls->name);
        if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
        qd_rng_randn(rng, st->noise, n);
        noise = st->noise;
    }
    if (order == 1 || st->lower_order_nums < 1 || lower_final)
        first_order(s, i, st->m[order - 1], x, noise, n);
    else if (order == 2 || st->lower_order_nums < 2 || lower_second)
        second_order(s, i, st->m[order - 1], st->m[order - 2], x, noise, n);
    else {
        if (c->algorithm_type == QD_ALGO_SDE_DPMSOLVER)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: sde-dpmsolver has no third-order update", s->cls->name);
        third_order(s, i, st->m[2], st->m[1], st->m[0], x, noise, n);
    }
    if (st->lower_order_nums < order) st->lower_order_nums++;
    return QD_OK;
}

const qd_sched_class qd_sched_dpmsolver_multistep = {
    .name = "DPMSolverMultistepScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .step = step,
    .free_state = free_state,
    .zsnr_tiny_last = 1,
};
