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
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE);
    c->solver_order = 2;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->algorithm_type = QD_ALGO_DPMSOLVERPP;
    c->solver_type = QD_SOLVER_MIDPOINT;
    c->lower_order_final = 1;
    c->flow_shift = 1.0;
    c->final_sigmas_zero = 1;
    c->lambda_min_clipped = -INFINITY;
    c->variance_type = QD_VAR_NONE;
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
    reset(s->state);
    /* lambda(t) clipped from below (cosine schedules) shortens the range */
    return qd_sched_multistep_set_timesteps(ctx, s, n, s->cfg.num_train_timesteps - qd_sched_lambda_clipped(s));
}

typedef qd_sched_ast ast;

static void first_order(const qd_scheduler *s, int i, const float *m0, float *x, const float *noise, int64_t n) {
    const int algo = s->cfg.algorithm_type;
    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]), s0 = qd_sched_alpha_sigma(s->sigmas[i]);
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
    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]), s0 = qd_sched_alpha_sigma(s->sigmas[i]),
        s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]);
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
    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]), s0 = qd_sched_alpha_sigma(s->sigmas[i]),
        s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]), s2 = qd_sched_alpha_sigma(s->sigmas[i - 2]);
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
    /* convert_model_output: x0 for DPM-Solver++, epsilon for DPM-Solver */
    QD_TRY(qd_sched_convert_output(ctx, s, i, is_pp(c->algorithm_type), mo, x, buf, batch, per_item));
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
