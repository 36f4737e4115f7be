/* DPMSolverSinglestepScheduler: singlestep DPM-Solver(++) — each group of
 * `order` model calls restarts from the sample saved at the group's first
 * call. Orders follow get_order_list (e.g. [1,2,1,2,...,1,1] for order 2).
 * This class has no timestep_spacing: timesteps are always linspace. */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "solver_order",
    "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
    "solver_type", "lower_order_final", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "final_sigmas_type", "lambda_min_clipped", "variance_type", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE);   /* no timestep_spacing option: the value is unused */
    c->solver_order = 2;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->algorithm_type = QD_ALGO_DPMSOLVERPP;
    c->solver_type = QD_SOLVER_MIDPOINT;
    c->lower_order_final = 1;
    c->final_sigmas_zero = 1;
    c->lambda_min_clipped = -INFINITY;
    c->variance_type = QD_VAR_NONE;
}

typedef struct {
    float *m[3];        /* model_outputs, m[order-1] newest; NULL = None */
    int have[3];
    float *sample;      /* self.sample: start of the current group */
    float *noise;
    int *orders;
} state;

static int is_pp(int algo) { return algo == QD_ALGO_DPMSOLVERPP || algo == QD_ALGO_SDE_DPMSOLVERPP; }

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    qd_sched_config *c = &s->cfg;
    if (c->algorithm_type == QD_ALGO_DEIS) c->algorithm_type = QD_ALGO_DPMSOLVERPP;
    if (c->algorithm_type == QD_ALGO_SDE_DPMSOLVER)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: algorithm_type 'sde-dpmsolver' is not supported by qdiff yet",
                       s->cls->name);
    if (c->solver_type == QD_SOLVER_LOGRHO || c->solver_type == QD_SOLVER_BH1 || c->solver_type == QD_SOLVER_BH2)
        c->solver_type = QD_SOLVER_MIDPOINT;
    if (c->algorithm_type == QD_ALGO_DPMSOLVER && c->final_sigmas_zero)
        return qd_fail(ctx, QD_ERR_ARG,
                       "%s: final_sigmas_type 'zero' is not supported for 'dpmsolver'; use 'sigma_min'",
                       s->cls->name);
    if (c->variance_type == QD_VAR_LEARNED || c->variance_type == QD_VAR_LEARNED_RANGE)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: learned variance_type is not supported", s->cls->name);
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    s->init_noise_sigma = 1.0f;
    return QD_OK;
}

static void reset(state *st) {
    for (int k = 0; k < 3; k++) {
        free(st->m[k]);
        st->m[k] = NULL;
        st->have[k] = 0;
    }
    free(st->sample);
    free(st->noise);
    free(st->orders);
    st->sample = st->noise = NULL;
    st->orders = NULL;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

/* get_order_list */
static void order_list(const qd_sched_config *c, int steps, int *o) {
    int order = c->solver_order, k = 0;
    if (c->lower_order_final) {
        if (order == 3) {
            int reps = steps % 3 == 0 ? steps / 3 - 1 : steps / 3;
            for (int r = 0; r < reps; r++) o[k++] = 1, o[k++] = 2, o[k++] = 3;
            if (steps % 3 == 0) o[k++] = 1, o[k++] = 2, o[k++] = 1;
            else if (steps % 3 == 1) o[k++] = 1;
            else o[k++] = 1, o[k++] = 2;
        } else if (order == 2) {
            if (steps % 2 == 0) {
                for (int r = 0; r < steps / 2 - 1; r++) o[k++] = 1, o[k++] = 2;
                o[k++] = 1, o[k++] = 1;
            } else {
                for (int r = 0; r < steps / 2; r++) o[k++] = 1, o[k++] = 2;
                o[k++] = 1;
            }
        } else {
            for (int r = 0; r < steps; r++) o[k++] = 1;
        }
    } else {
        for (int r = 0; r < steps / order; r++)
            for (int q = 1; q <= order; q++) o[k++] = q;
    }
    if (c->final_sigmas_zero && k > 0) o[k - 1] = 1;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    qd_sched_config *c = &s->cfg;
    state *st = s->state;
    reset(st);
    const int clipped = qd_sched_lambda_clipped(s);
    double *t = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
    st->orders = qd_malloc(ctx, sizeof(int) * (size_t)(n + 3));
    qd_status stt = t && sig && st->orders ? QD_OK : QD_ERR_NOMEM;
    if (stt == QD_OK) {
        /* linspace(0, N - 1 - clipped, n + 1).round()[::-1][:-1] */
        qd_np_linspace(0, c->num_train_timesteps - 1 - clipped, n + 1, sig);
        for (int i = 0; i < n; i++) t[i] = qd_np_round(sig[n - i]);
        qd_sched_multistep_sigmas(s, n, t, sig);
        /* unlike the multistep classes, the converted sigmas also end at sigma_min */
        stt = qd_sched_store_schedule(ctx, s, n, t, sig,
                                      c->final_sigmas_zero ? 0.0f : qd_sched_sigma_from_ac(s->alphas_cumprod[0]));
    }
    free(t);
    free(sig);
    if (stt != QD_OK) return stt;
    /* diffusers switches lower_order_final on (in the config) when needed */
    if (!c->lower_order_final && (n % c->solver_order != 0 || c->final_sigmas_zero)) c->lower_order_final = 1;
    order_list(c, n, st->orders);
    return QD_OK;
}

typedef qd_sched_ast ast;

/* Writes the result to out; x0 is the group's starting sample. */
static void update(const qd_scheduler *s, int i, int order, float *const *m, const float *x0,
                   const float *noise, float *out, int64_t n) {
    const int algo = s->cfg.algorithm_type, heun = s->cfg.solver_type == QD_SOLVER_HEUN;
    const int K = s->cfg.solver_order;
    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]);
    if (order == 1) {
        ast s0 = qd_sched_alpha_sigma(s->sigmas[i]);
        const double h = t.lambda - s0.lambda;
        double cx, cm, cn = 0;
        if (algo == QD_ALGO_DPMSOLVERPP) cx = t.sigma / s0.sigma, cm = -(t.alpha * (exp(-h) - 1.0));
        else if (algo == QD_ALGO_DPMSOLVER) cx = t.alpha / s0.alpha, cm = -(t.sigma * (exp(h) - 1.0));
        else {
            cx = t.sigma / s0.sigma * exp(-h);
            cm = t.alpha * (1 - exp(-2.0 * h));
            cn = t.sigma * sqrt(1.0 - exp(-2 * h));
        }
        const float *m0 = m[K - 1];
        for (int64_t j = 0; j < n; j++) {
            double v = cx * x0[j] + cm * m0[j];
            if (noise) v += cn * noise[j];
            out[j] = (float)v;
        }
        return;
    }
    if (order == 2) {
        ast s0 = qd_sched_alpha_sigma(s->sigmas[i]), s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]);
        const double h = t.lambda - s1.lambda, h0 = s0.lambda - s1.lambda, r0 = h0 / h;
        /* D0 = m1 (older), D1 = (m0 - m1) / r0 */
        double cx, c0, c1, cn = 0;
        if (algo == QD_ALGO_DPMSOLVERPP) {
            cx = t.sigma / s1.sigma;
            c0 = -(t.alpha * (exp(-h) - 1.0));
            c1 = heun ? t.alpha * ((exp(-h) - 1.0) / h + 1.0) : -0.5 * (t.alpha * (exp(-h) - 1.0));
        } else if (algo == QD_ALGO_DPMSOLVER) {
            cx = t.alpha / s1.alpha;
            c0 = -(t.sigma * (exp(h) - 1.0));
            c1 = heun ? -(t.sigma * ((exp(h) - 1.0) / h - 1.0)) : -0.5 * (t.sigma * (exp(h) - 1.0));
        } else {
            cx = t.sigma / s1.sigma * exp(-h);
            c0 = t.alpha * (1 - exp(-2.0 * h));
            c1 = heun ? t.alpha * ((1.0 - exp(-2.0 * h)) / (-2.0 * h) + 1.0) : 0.5 * (t.alpha * (1 - exp(-2.0 * h)));
            cn = t.sigma * sqrt(1.0 - exp(-2.0 * h));
        }
        const float *m0 = m[K - 1], *m1 = m[K - 2];
        for (int64_t j = 0; j < n; j++) {
            double d1 = (1.0 / r0) * ((double)m0[j] - m1[j]);
            double v = cx * x0[j] + c0 * m1[j] + c1 * d1;
            if (noise) v += cn * noise[j];
            out[j] = (float)v;
        }
        return;
    }
    ast s0 = qd_sched_alpha_sigma(s->sigmas[i]), s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]),
        s2 = qd_sched_alpha_sigma(s->sigmas[i - 2]);
    const double h = t.lambda - s2.lambda, h0 = s0.lambda - s2.lambda, h1 = s1.lambda - s2.lambda;
    const double r0 = h0 / h, r1 = h1 / h;
    double cx, c0, c1, c2;
    int use_d11 = !heun;   /* midpoint uses D1_1 only */
    if (algo == QD_ALGO_DPMSOLVER) {
        cx = t.alpha / s2.alpha;
        c0 = -(t.sigma * (exp(h) - 1.0));
        c1 = -(t.sigma * ((exp(h) - 1.0) / h - 1.0));
        c2 = -(t.sigma * ((exp(h) - 1.0 - h) / (h * h) - 0.5));
    } else {
        cx = t.sigma / s2.sigma;
        c0 = -(t.alpha * (exp(-h) - 1.0));
        c1 = t.alpha * ((exp(-h) - 1.0) / h + 1.0);
        c2 = -(t.alpha * ((exp(-h) - 1.0 + h) / (h * h) - 0.5));
    }
    const float *m0 = m[K - 1], *m1 = m[K - 2], *m2 = m[K - 3];
    for (int64_t j = 0; j < n; j++) {
        double d10 = (1.0 / r1) * ((double)m1[j] - m2[j]), d11 = (1.0 / r0) * ((double)m0[j] - m2[j]);
        double v = cx * x0[j] + c0 * m2[j];
        if (use_d11) v += c1 * d11;
        else {
            double d1 = (r0 * d10 - r1 * d11) / (r0 - r1), d2 = 2.0 * (d11 - d10) / (r0 - r1);
            v += c1 * d1 + c2 * d2;
        }
        out[j] = (float)v;
    }
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    const int K = c->solver_order;
    float *buf = st->m[0];
    for (int k = 0; k < K - 1; k++) {
        st->m[k] = st->m[k + 1];
        st->have[k] = st->have[k + 1];
    }
    if (!buf && !(buf = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    st->m[K - 1] = buf;
    st->have[K - 1] = 1;
    /* convert_model_output: x0 for DPM-Solver++, epsilon for DPM-Solver */
    QD_TRY(qd_sched_convert_output(ctx, s, i, is_pp(c->algorithm_type), mo, x, buf, batch, per_item));
    const float *noise = NULL;
    if (c->algorithm_type == QD_ALGO_SDE_DPMSOLVERPP) {
        if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: SDE variant needs a generator", s->cls->name);
        if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
        qd_rng_randn(rng, st->noise, n);
        noise = st->noise;
    }
    int order = st->orders[i];
    while (order > 1 && !st->have[K - order]) order--;   /* img2img-style start */
    if (!st->sample && !(st->sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (order == 1) memcpy(st->sample, x, sizeof(float) * (size_t)n);
    update(s, i, order, st->m, st->sample, noise, x, n);
    return QD_OK;
}

const qd_sched_class qd_sched_dpmsolver_singlestep = {
    .name = "DPMSolverSinglestepScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .step = step,
    .free_state = free_state,
};
