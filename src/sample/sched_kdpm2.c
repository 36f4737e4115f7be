/* KDPM2DiscreteScheduler (k-diffusion's sample_dpm_2): each interval takes an
 * Euler step to the log-midpoint sigma, evaluates the model there, and uses
 * that derivative for the full step. Timesteps interleave [t0, tm1, t1, tm2,
 * t2, ...] (2n - 1 model calls). */
#include "sample/scheduler.h"

#include <stdlib.h>

/* config keys: qd_sched_kdiff_keys (sched_common.c) */

static void defaults(qd_sched_config *c) { qd_sched_defaults(c, 0.00085, 0.012, QD_SPACING_LINSPACE); }

typedef struct {
    float *sigmas_interpol;     /* same layout as s->sigmas */
    float *sample;              /* saved by the first-order half */
    int second;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    if (s->cfg.prediction_type == QD_PRED_SAMPLE)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: prediction_type 'sample' is not supported by qdiff yet", s->cls->name);
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    qd_sched_init_sigma_train(s);
    return QD_OK;
}

static void free_state(qd_scheduler *s) {
    state *st = s->state;
    if (st) {
        free(st->sigmas_interpol);
        free(st->sample);
    }
    free(st);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    state *st = s->state;
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 2));
    float *sv = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
    float *si = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
    float *sigmas = qd_malloc(ctx, sizeof(float) * (size_t)(2 * n + 2));
    float *sinterp = qd_malloc(ctx, sizeof(float) * (size_t)(2 * n + 2));
    float *tsi = qd_malloc(ctx, sizeof(float) * (size_t)(2 * n - 1));
    int m = 0;
    qd_status stt = ts && sig && sv && si && sigmas && sinterp && tsi ? QD_OK : QD_ERR_NOMEM;
    if (stt == QD_OK) stt = qd_sched_kdiff_sigmas(ctx, s, n, ts, sig, &m, 1);
    if (stt != QD_OK) {
        free(ts); free(sig); free(sv); free(si); free(sigmas); free(sinterp); free(tsi);
        return stt;
    }
    for (int i = 0; i < n; i++) sv[i] = (float)sig[i];
    sv[n] = 0.0f;
    /* log-space midpoints with the previous sigma (roll(1): index 0 pairs with
     * the final 0, giving NaN there and 0 at the end, as in torch) */
    for (int i = 0; i <= n; i++) si[i] = expf(qd_sched_lerp_half(logf(sv[i]), logf(sv[i == 0 ? n : i - 1])));
    qd_sched_interleave(sv, n, sigmas);
    qd_sched_interleave(si, n, sinterp);
    int k = 0;
    tsi[k++] = ts[0];
    for (int i = 1; i < n; i++) {
        tsi[k++] = (float)qd_sigma_to_t(si[i], s->log_sigmas, s->n_train);
        tsi[k++] = ts[i];
    }
    free(ts); free(sig); free(sv); free(si);
    qd_sched_set_arrays(s, tsi, k, sigmas, 2 * n + 2);
    free(st->sigmas_interpol);
    st->sigmas_interpol = sinterp;
    free(st->sample);
    st->sample = NULL;
    st->second = 0;
    s->num_inference_steps = n;
    s->init_noise_sigma = qd_sched_init_sigma_kdiff(s);
    return QD_OK;
}

/* the second half evaluates the model at the interpolated sigma */
static float model_sigma(const qd_scheduler *s, int i) {
    const state *st = s->state;
    return st->second ? st->sigmas_interpol[i] : s->sigmas[i];
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const int64_t n = batch * per_item;
    if (!st->sample && !(st->sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    const int pred = s->cfg.prediction_type;
    if (!st->second) {
        const float sigma = s->sigmas[i], sigma_interpol = st->sigmas_interpol[i + 1];
        const float dt = sigma_interpol - sigma;
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma, mo[j], x[j]);
            float d = (x[j] - x0) / sigma;
            st->sample[j] = x[j];
            x[j] = x[j] + d * dt;
        }
        st->second = 1;
    } else {
        const float sigma = s->sigmas[i - 1], sigma_interpol = st->sigmas_interpol[i];
        const float sigma_next = s->sigmas[i];
        const float dt = sigma_next - sigma;
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma_interpol, mo[j], x[j]);
            float d = (x[j] - x0) / sigma_interpol;
            x[j] = st->sample[j] + d * dt;
        }
        st->second = 0;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_kdpm2 = {
    .name = "KDPM2DiscreteScheduler",
    .keys = qd_sched_kdiff_keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
};
