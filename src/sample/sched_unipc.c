/* UniPCMultistepScheduler (Zhao et al. 2023): UniP predictor plus UniC
 * corrector (B(h) = expm1(-h) for "bh2"), on the data prediction (predict_x0)
 * or the noise prediction. The corrector refines the sample of the previous
 * step with the new model output before the next predictor runs. */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "solver_order",
    "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "predict_x0",
    "solver_type", "lower_order_final", "disable_corrector", "solver_p", "use_karras_sigmas",
    "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing", "steps_offset", "final_sigmas_type",
    "rescale_betas_zero_snr", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE);
    c->solver_order = 2;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->predict_x0 = 1;
    c->solver_type = QD_SOLVER_BH2;
    c->lower_order_final = 1;
    c->final_sigmas_zero = 1;
}

typedef struct {
    float *m[3];            /* converted model outputs, m[K-1] newest */
    float *last_sample, *conv;
    int has_last;
    int this_order, lower_order_nums;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    qd_sched_config *c = &s->cfg;
    if (c->solver_type != QD_SOLVER_BH1 && c->solver_type != QD_SOLVER_BH2)
        c->solver_type = QD_SOLVER_BH2;   /* midpoint / heun / logrho are mapped to bh2 */
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
    free(st->last_sample);
    free(st->conv);
    st->last_sample = st->conv = NULL;
    st->has_last = 0;
    st->this_order = 0;
    st->lower_order_nums = 0;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    reset(s->state);
    return qd_sched_multistep_set_timesteps(ctx, s, n, s->cfg.num_train_timesteps);
}

typedef qd_sched_ast ast;

/* Solve A x = b (k <= 3) by Gaussian elimination with partial pivoting. */
static void solve(int k, double A[3][3], double *b, double *x) {
    for (int c = 0; c < k; c++) {
        int p = c;
        for (int r = c + 1; r < k; r++)
            if (fabs(A[r][c]) > fabs(A[p][c])) p = r;
        for (int q = 0; q < k; q++) {
            double tq = A[c][q];
            A[c][q] = A[p][q];
            A[p][q] = tq;
        }
        double tb = b[c];
        b[c] = b[p];
        b[p] = tb;
        for (int r = c + 1; r < k; r++) {
            double f = A[r][c] / A[c][c];
            for (int q = c; q < k; q++) A[r][q] -= f * A[c][q];
            b[r] -= f * b[c];
        }
    }
    for (int r = k - 1; r >= 0; r--) {
        double v = b[r];
        for (int q = r + 1; q < k; q++) v -= A[r][q] * x[q];
        x[r] = v / A[r][r];
    }
}

/* R rows rks^(i-1) and b_i = h_phi_i * i! / B(h), i = 1..order. */
static void build_rb(int order, const double *rks, double hh, double B_h, double R[3][3], double *b) {
    double h_phi_1 = expm1(hh), h_phi_k = h_phi_1 / hh - 1, fact = 1;
    for (int i = 1; i <= order; i++) {
        for (int q = 0; q < order; q++) R[i - 1][q] = pow(rks[q], i - 1);
        b[i - 1] = h_phi_k * fact / B_h;
        fact *= i + 1;
        h_phi_k = h_phi_k / hh - 1 / fact;
    }
}

/* multistep_uni_p_bh_update: x (the sample at sigmas[i]) -> sample at sigmas[i+1] */
static void uni_p(const qd_scheduler *s, int i, int order, float *x, int64_t n) {
    const state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int K = c->solver_order;
    ast t = qd_sched_alpha_sigma(s->sigmas[i + 1]), s0 = qd_sched_alpha_sigma(s->sigmas[i]);
    const double h = t.lambda - s0.lambda;
    const float *m0 = st->m[K - 1];
    double rks[3], rhos[3] = {0, 0, 0};
    const float *mi[3];
    for (int k = 1; k < order; k++) {
        ast si = qd_sched_alpha_sigma(s->sigmas[i - k]);
        rks[k - 1] = (si.lambda - s0.lambda) / h;
        mi[k - 1] = st->m[K - 1 - k];
    }
    rks[order - 1] = 1.0;
    const double hh = c->predict_x0 ? -h : h;
    const double h_phi_1 = expm1(hh);
    const double B_h = c->solver_type == QD_SOLVER_BH1 ? hh : expm1(hh);
    if (order == 2) rhos[0] = 0.5;
    else if (order > 2) {
        double R[3][3], b[3];
        build_rb(order, rks, hh, B_h, R, b);
        solve(order - 1, R, b, rhos);   /* R[:-1, :-1], b[:-1] */
    }
    double cx, cm, cr;
    if (c->predict_x0) cx = t.sigma / s0.sigma, cm = -t.alpha * h_phi_1, cr = -t.alpha * B_h;
    else cx = t.alpha / s0.alpha, cm = -t.sigma * h_phi_1, cr = -t.sigma * B_h;
    for (int64_t j = 0; j < n; j++) {
        double res = 0;
        for (int k = 0; k < order - 1; k++) res += rhos[k] * (((double)mi[k][j] - m0[j]) / rks[k]);
        double v = cx * x[j] + cm * m0[j];
        if (order > 1) v += cr * res;
        x[j] = (float)v;
    }
}

/* multistep_uni_c_bh_update: corrects x (the sample at sigmas[i], predicted
 * from last_sample at sigmas[i-1]) with the new converted output mt. */
static void uni_c(const qd_scheduler *s, int i, int order, const float *mt, float *x, int64_t n) {
    const state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int K = c->solver_order;
    ast t = qd_sched_alpha_sigma(s->sigmas[i]), s0 = qd_sched_alpha_sigma(s->sigmas[i - 1]);
    const double h = t.lambda - s0.lambda;
    const float *m0 = st->m[K - 1], *last = st->last_sample;
    double rks[3], rhos[3] = {0, 0, 0};
    const float *mi[3];
    for (int k = 1; k < order; k++) {
        ast si = qd_sched_alpha_sigma(s->sigmas[i - (k + 1)]);
        rks[k - 1] = (si.lambda - s0.lambda) / h;
        mi[k - 1] = st->m[K - 1 - k];
    }
    rks[order - 1] = 1.0;
    const double hh = c->predict_x0 ? -h : h;
    const double h_phi_1 = expm1(hh);
    const double B_h = c->solver_type == QD_SOLVER_BH1 ? hh : expm1(hh);
    if (order == 1) rhos[0] = 0.5;
    else {
        double R[3][3], b[3];
        build_rb(order, rks, hh, B_h, R, b);
        solve(order, R, b, rhos);
    }
    double cx, cm, cr;
    if (c->predict_x0) cx = t.sigma / s0.sigma, cm = -t.alpha * h_phi_1, cr = -t.alpha * B_h;
    else cx = t.alpha / s0.alpha, cm = -t.sigma * h_phi_1, cr = -t.sigma * B_h;
    for (int64_t j = 0; j < n; j++) {
        double corr = 0;
        for (int k = 0; k < order - 1; k++) corr += rhos[k] * (((double)mi[k][j] - m0[j]) / rks[k]);
        double d1t = (double)mt[j] - m0[j];
        x[j] = (float)(cx * last[j] + cm * m0[j] + cr * (corr + rhos[order - 1] * d1t));
    }
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    const int K = c->solver_order;
    if (!st->conv && !(st->conv = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->last_sample && !(st->last_sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    int use_corrector = i > 0 && st->has_last;
    for (int k = 0; k < c->n_disable_corrector; k++)
        if (c->disable_corrector[k] == i - 1) use_corrector = 0;
    /* convert_model_output with the uncorrected sample */
    float *mc = st->conv;
    QD_TRY(qd_sched_convert_output(ctx, s, i, c->predict_x0, mo, x, mc, batch, per_item));
    if (use_corrector) uni_c(s, i, st->this_order, mc, x, n);
    /* history shift: mc becomes the newest; the oldest buffer becomes conv */
    float *old = st->m[0];
    for (int k = 0; k < K - 1; k++) st->m[k] = st->m[k + 1];
    st->m[K - 1] = mc;
    st->conv = old;
    int order = c->lower_order_final ? (K < s->n_timesteps - i ? K : s->n_timesteps - i) : K;
    st->this_order = order < st->lower_order_nums + 1 ? order : st->lower_order_nums + 1;
    memcpy(st->last_sample, x, sizeof(float) * (size_t)n);
    st->has_last = 1;
    uni_p(s, i, st->this_order, x, n);
    if (st->lower_order_nums < K) st->lower_order_nums++;
    return QD_OK;
}

const qd_sched_class qd_sched_unipc = {
    .name = "UniPCMultistepScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .step = step,
    .free_state = free_state,
    .zsnr_tiny_last = 1,
};
