/* DEISMultistepScheduler (Zhang & Chen 2022, "logrho" variant): exponential
 * integrator on the noise prediction with polynomial extrapolation in
 * log(rho), rho = sigma_t / alpha_t. The final sigma is sigma_min (not 0). */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "solver_order",
    "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
    "solver_type", "lower_order_final", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "timestep_spacing", "steps_offset", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE);
    c->solver_order = 2;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->algorithm_type = QD_ALGO_DEIS;
    c->solver_type = QD_SOLVER_LOGRHO;
    c->lower_order_final = 1;
}

typedef struct {
    float *m[3];
    int lower_order_nums;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    qd_sched_config *c = &s->cfg;
    if (c->algorithm_type != QD_ALGO_DEIS) {
        if (c->algorithm_type == QD_ALGO_DPMSOLVER || c->algorithm_type == QD_ALGO_DPMSOLVERPP)
            c->algorithm_type = QD_ALGO_DEIS;
        else
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: algorithm_type is not supported by qdiff yet", s->cls->name);
    }
    if (c->solver_type != QD_SOLVER_LOGRHO) c->solver_type = QD_SOLVER_LOGRHO;   /* midpoint/heun/bh1/bh2 */
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
    st->lower_order_nums = 0;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

/* final_sigmas_type is not a DEIS option: the last sigma is sigma_min */
static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    reset(s->state);
    return qd_sched_multistep_set_timesteps(ctx, s, n, s->cfg.num_train_timesteps);
}

typedef qd_sched_ast ast;

/* integral of (log t - log c) / (log b - log c) */
static double ind2(double t, double b, double c) {
    return t * (-log(c) + log(t) - 1) / (log(b) - log(c));
}

/* integral of (log t - log c)(log t - log d) / ((log b - log c)(log b - log d)) */
static double ind3(double t, double b, double c, double d) {
    double lt = log(t), lc = log(c), ld = log(d), lb = log(b);
    double num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt * lt - 2 * lt + 2);
    return num / ((lb - lc) * (lb - ld));
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    const int K = c->solver_order, len = s->n_timesteps;
    const int lower_final = i == len - 1 && c->lower_order_final && len < 15;
    const int lower_second = i == len - 2 && c->lower_order_final && len < 15;
    float *buf = st->m[0];
    for (int k = 0; k < K - 1; k++) st->m[k] = st->m[k + 1];
    if (!buf && !(buf = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    st->m[K - 1] = buf;
    /* convert_model_output: x0, optional thresholding, back to epsilon */
    QD_TRY(qd_sched_convert_output(ctx, s, i, 1, mo, x, buf, batch, per_item));
    ast a = qd_sched_alpha_sigma(s->sigmas[i]);
    for (int64_t j = 0; j < n; j++) buf[j] = (float)((x[j] - a.alpha * buf[j]) / a.sigma);

    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]), s0 = a;
    if (K == 1 || st->lower_order_nums < 1 || lower_final) {
        const double h = t.lambda - s0.lambda;
        const double cx = t.alpha / s0.alpha, cm = -(t.sigma * (exp(h) - 1.0));
        for (int64_t j = 0; j < n; j++) x[j] = (float)(cx * x[j] + cm * buf[j]);
    } else if (K == 2 || st->lower_order_nums < 2 || lower_second) {
        ast s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]);
        const double rt = t.sigma / t.alpha, r0 = s0.sigma / s0.alpha, r1 = s1.sigma / s1.alpha;
        const double c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1);
        const double c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0);
        const float *m0 = st->m[K - 1], *m1 = st->m[K - 2];
        for (int64_t j = 0; j < n; j++) x[j] = (float)(t.alpha * (x[j] / s0.alpha + c1 * m0[j] + c2 * m1[j]));
    } else {
        ast s1 = qd_sched_alpha_sigma(s->sigmas[i - 1]), s2 = qd_sched_alpha_sigma(s->sigmas[i - 2]);
        const double rt = t.sigma / t.alpha, r0 = s0.sigma / s0.alpha, r1 = s1.sigma / s1.alpha,
                     r2 = s2.sigma / s2.alpha;
        const double c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2);
        const double c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0);
        const double c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1);
        const float *m0 = st->m[2], *m1 = st->m[1], *m2 = st->m[0];
        for (int64_t j = 0; j < n; j++)
            x[j] = (float)(t.alpha * (x[j] / s0.alpha + c1 * m0[j] + c2 * m1[j] + c3 * m2[j]));
    }
    if (st->lower_order_nums < K) st->lower_order_nums++;
    return QD_OK;
}

const qd_sched_class qd_sched_deis = {
    .name = "DEISMultistepScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .step = step,
    .free_state = free_state,
};
