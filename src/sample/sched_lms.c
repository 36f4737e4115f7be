/* LMSDiscreteScheduler: linear multistep on the ODE derivative, up to order 4,
 * with coefficients integrated over [sigma_i, sigma_{i+1}] (diffusers uses
 * scipy quad on a polynomial of degree <= 3; Gauss-Legendre with 4 nodes is
 * exact for it). */
#include "sample/scheduler.h"

#include <stdlib.h>

#define LMS_ORDER 4

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "use_karras_sigmas",
    "use_exponential_sigmas", "use_beta_sigmas", "prediction_type", "timestep_spacing", "steps_offset", NULL};

static void defaults(qd_sched_config *c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = QD_BETA_LINEAR;
    c->prediction_type = QD_PRED_EPSILON;
    c->timestep_spacing = QD_SPACING_LINSPACE;
}

typedef struct {
    float *der[LMS_ORDER];   /* der[0] newest */
    int n_der;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    float m = 0;
    for (int i = 0; i < s->n_train; i++)
        if (s->train_sigmas[i] > m) m = s->train_sigmas[i];
    int lin = s->cfg.timestep_spacing == QD_SPACING_LINSPACE || s->cfg.timestep_spacing == QD_SPACING_TRAILING;
    s->init_noise_sigma = lin ? m : sqrtf(m * m + 1.0f);
    return QD_OK;
}

static void reset(state *st) {
    for (int k = 0; k < LMS_ORDER; k++) {
        free(st->der[k]);
        st->der[k] = NULL;
    }
    st->n_der = 0;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
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
    sigmas[m] = 0.0f;
    free(sig);
    qd_sched_set_arrays(s, ts, n, sigmas, m + 1);
    s->num_inference_steps = n;
    s->init_noise_sigma = qd_sched_init_sigma_kdiff(s);
    reset(s->state);
    return QD_OK;
}

static float model_sigma(const qd_scheduler *s, int i) { return s->sigmas[i]; }

/* integral over [sigmas[t], sigmas[t+1]] of prod_{k != cur} (tau - s[t-k]) / (s[t-cur] - s[t-k]) */
static double lms_coeff(const float *sg, int order, int t, int cur) {
    static const double node[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                   0.8611363115940526};
    static const double wt[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                 0.3478548451374538};
    double a = sg[t], b = sg[t + 1], half = 0.5 * (b - a), mid = 0.5 * (a + b), sum = 0;
    for (int q = 0; q < 4; q++) {
        double tau = mid + half * node[q], prod = 1.0;
        for (int k = 0; k < order; k++) {
            if (k == cur) continue;
            prod *= (tau - sg[t - k]) / ((double)sg[t - cur] - sg[t - k]);
        }
        sum += wt[q] * prod;
    }
    return sum * half;
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const int64_t n = batch * per_item;
    /* the oldest buffer is reused for the new derivative */
    float *d = st->n_der == LMS_ORDER ? st->der[LMS_ORDER - 1] : NULL;
    if (!d && !(d = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    for (int k = (st->n_der == LMS_ORDER ? LMS_ORDER - 1 : st->n_der); k > 0; k--) st->der[k] = st->der[k - 1];
    st->der[0] = d;
    if (st->n_der < LMS_ORDER) st->n_der++;
    const float sigma = s->sigmas[i];
    const int pred = s->cfg.prediction_type;
    for (int64_t j = 0; j < n; j++) {
        float x0 = qd_kd_x0(pred, sigma, mo[j], x[j]);
        d[j] = (x[j] - x0) / sigma;
    }
    int order = i + 1 < LMS_ORDER ? i + 1 : LMS_ORDER;
    float coeff[LMS_ORDER];
    for (int k = 0; k < order; k++) coeff[k] = (float)lms_coeff(s->sigmas, order, i, k);
    for (int64_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (int k = 0; k < order; k++) acc = acc + coeff[k] * st->der[k][j];
        x[j] = x[j] + acc;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_lms = {
    .name = "LMSDiscreteScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
};
