/* LMSDiscreteScheduler: linear multistep on the ODE derivative, up to order 4,
 * with coefficients integrated over [sigma_i, sigma_{i+1}] (diffusers uses
 * scipy quad on a polynomial of degree <= 3; Gauss-Legendre with 4 nodes is
 * exact for it). */
#include "sample/scheduler.h"

#include <stdlib.h>

#define LMS_ORDER 4

/* config keys: qd_sched_kdiff_keys (sched_common.c) */

static void defaults(qd_sched_config *c) { qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE); }

typedef struct {
    float *der[LMS_ORDER];   /* der[0] newest */
    int n_der;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    qd_sched_init_sigma_train(s);
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
    QD_TRY(qd_sched_kdiff_set_timesteps(ctx, s, n, 0.0f));
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
        /* diffusers zips the coefficients with the derivatives it has: after an
         * img2img start (step_index > 0) fewer than `order` */
        for (int k = 0; k < order && k < st->n_der; k++) acc = acc + coeff[k] * st->der[k][j];
        x[j] = x[j] + acc;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_lms = {
    .name = "LMSDiscreteScheduler",
    .keys = qd_sched_kdiff_keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
};
