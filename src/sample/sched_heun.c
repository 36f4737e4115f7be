/* HeunDiscreteScheduler (Karras et al. 2022, Algorithm 2): each interval takes
 * two model calls, an Euler predictor and the trapezoidal corrector. sigmas
 * and timesteps are interleaved: [s0, s1, s1, s2, s2, ..., 0] and
 * [t0, t1, t1, t2, t2, ...] (2n - 1 model calls). */
#include "sample/scheduler.h"

#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "clip_sample", "clip_sample_range",
    "timestep_spacing", "steps_offset", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.00085, 0.012, QD_SPACING_LINSPACE);
    c->clip_sample_range = 1.0;
}

typedef struct {
    float *prev_derivative, *sample;
    int second;      /* dt is set: the next step is the corrector */
    float dt;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    qd_sched_init_sigma_train(s);
    return QD_OK;
}

static void reset(state *st) {
    free(st->prev_derivative);
    free(st->sample);
    st->prev_derivative = st->sample = NULL;
    st->second = 0;
}

static void free_state(qd_scheduler *s) {
    if (s->state) reset(s->state);
    free(s->state);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 2));
    int m = 0;
    qd_status st = ts && sig ? qd_sched_kdiff_sigmas(ctx, s, n, ts, sig, &m, 0) : QD_ERR_NOMEM;
    float *sigmas = NULL, *tsi = NULL;
    if (st == QD_OK) {
        /* cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]]) with s = sigmas + [0] */
        sigmas = qd_malloc(ctx, sizeof(float) * (size_t)(2 * m));
        tsi = qd_malloc(ctx, sizeof(float) * (size_t)(2 * n - 1));
        if (!sigmas || !tsi) st = QD_ERR_NOMEM;
    }
    if (st != QD_OK) {
        free(ts);
        free(sig);
        free(sigmas);
        free(tsi);
        return st;
    }
    int k = 0;
    sigmas[k++] = (float)sig[0];
    for (int i = 1; i < m; i++) {
        sigmas[k++] = (float)sig[i];
        sigmas[k++] = (float)sig[i];
    }
    sigmas[k++] = 0.0f;
    int nt = 0;
    tsi[nt++] = ts[0];
    for (int i = 1; i < n; i++) {
        tsi[nt++] = ts[i];
        tsi[nt++] = ts[i];
    }
    free(ts);
    free(sig);
    qd_sched_set_arrays(s, tsi, nt, sigmas, k);
    s->num_inference_steps = n;
    s->init_noise_sigma = qd_sched_init_sigma_kdiff(s);
    reset(s->state);
    return QD_OK;
}

static float model_sigma(const qd_scheduler *s, int i) { return s->sigmas[i]; }

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const int64_t n = batch * per_item;
    if (!st->prev_derivative && !(st->prev_derivative = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->sample && !(st->sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    const int first = !st->second;
    const float sigma = first ? s->sigmas[i] : s->sigmas[i - 1];
    const float sigma_next = first ? s->sigmas[i + 1] : s->sigmas[i];
    const float sigma_hat = sigma;          /* gamma = 0 */
    const float sigma_input = first ? sigma_hat : sigma_next;
    const int pred = s->cfg.prediction_type;
    const int clip = s->cfg.clip_sample;
    const float r = (float)s->cfg.clip_sample_range;
    if (first) {
        const float dt = sigma_next - sigma_hat;
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma_input, mo[j], x[j]);
            if (clip) x0 = x0 < -r ? -r : (x0 > r ? r : x0);
            float d = (x[j] - x0) / sigma_hat;
            st->prev_derivative[j] = d;
            st->sample[j] = x[j];
            x[j] = x[j] + d * dt;
        }
        st->dt = dt;
        st->second = 1;
    } else {
        const float dt = st->dt;
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma_input, mo[j], x[j]);
            if (clip) x0 = x0 < -r ? -r : (x0 > r ? r : x0);
            float d = (x[j] - x0) / sigma_next;
            d = (st->prev_derivative[j] + d) / 2.0f;
            x[j] = st->sample[j] + d * dt;
        }
        st->second = 0;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_heun = {
    .name = "HeunDiscreteScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
};
