/* KDPM2AncestralDiscreteScheduler (k-diffusion's sample_dpm_2_ancestral): like
 * KDPM2 but the full step goes to sigma_down and adds noise * sigma_up. Noise
 * is drawn only by the second half of each interval (diffusers 0.32 draws it
 * inside that branch; older releases drew on every call — the sd15-tiny
 * golden settles it). */
#include "sample/scheduler.h"

#include <stdlib.h>

/* config keys: qd_sched_kdiff_keys (sched_common.c) */

static void defaults(qd_sched_config *c) { qd_sched_defaults(c, 0.00085, 0.012, QD_SPACING_LINSPACE); }

typedef struct {
    float *interp, *up, *down;  /* same layout as s->sigmas (2n + 2) */
    float *sample, *noise;
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

static void free_arrays(state *st) {
    free(st->interp);
    free(st->up);
    free(st->down);
    free(st->sample);
    free(st->noise);
    st->interp = st->up = st->down = st->sample = st->noise = NULL;
}

static void free_state(qd_scheduler *s) {
    if (s->state) free_arrays(s->state);
    free(s->state);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    state *st = s->state;
    free_arrays(st);
    st->second = 0;
    const size_t L = (size_t)(2 * n + 2);
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    double *sig = qd_malloc(ctx, sizeof(double) * (size_t)(n + 2));
    float *v = qd_malloc(ctx, sizeof(float) * (size_t)(4 * (n + 1)));
    float *sigmas = qd_malloc(ctx, sizeof(float) * L);
    float *tsi = qd_malloc(ctx, sizeof(float) * (size_t)(2 * n - 1));
    st->interp = qd_malloc(ctx, sizeof(float) * L);
    st->up = qd_malloc(ctx, sizeof(float) * L);
    st->down = qd_malloc(ctx, sizeof(float) * L);
    int m = 0;
    qd_status stt = ts && sig && v && sigmas && tsi && st->interp && st->up && st->down ? QD_OK : QD_ERR_NOMEM;
    if (stt == QD_OK) stt = qd_sched_kdiff_sigmas(ctx, s, n, ts, sig, &m, 1);
    if (stt != QD_OK) {
        free(ts); free(sig); free(v); free(sigmas); free(tsi);
        free_arrays(st);
        return stt;
    }
    float *sv = v, *up = v + (n + 1), *down = v + 2 * (n + 1), *si = v + 3 * (n + 1);
    for (int i = 0; i < n; i++) sv[i] = (float)sig[i];
    sv[n] = 0.0f;
    for (int i = 0; i <= n; i++) {
        float sn = i < n ? sv[i + 1] : 0.0f;     /* roll(-1) with the last set to 0 */
        up[i] = sqrtf(sn * sn * (sv[i] * sv[i] - sn * sn) / (sv[i] * sv[i]));
        down[i] = sqrtf(sn * sn - up[i] * up[i]);
    }
    down[n] = 0.0f;
    for (int i = 0; i <= n; i++) si[i] = expf(qd_sched_lerp_half(logf(sv[i]), logf(down[i])));
    si[n] = 0.0f;
    if (n >= 1) si[n - 1] = 0.0f;
    qd_sched_interleave(sv, n, sigmas);
    qd_sched_interleave(si, n, st->interp);
    qd_sched_interleave(up, n, st->up);
    qd_sched_interleave(down, n, st->down);
    /* [t0, ti0, t1, ti1, ..., ti_{n-2}, t_{n-1}] */
    int k = 0;
    tsi[k++] = ts[0];
    for (int i = 1; i < n; i++) {
        tsi[k++] = (float)qd_sigma_to_t(si[i - 1], s->log_sigmas, s->n_train);
        tsi[k++] = ts[i];
    }
    free(ts); free(sig); free(v);
    qd_sched_set_arrays(s, tsi, k, sigmas, (int)L);
    s->num_inference_steps = n;
    s->init_noise_sigma = qd_sched_init_sigma_kdiff(s);
    return QD_OK;
}

static float model_sigma(const qd_scheduler *s, int i) {
    const state *st = s->state;
    return st->second ? st->interp[i - 1] : s->sigmas[i];
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    state *st = s->state;
    const int64_t n = batch * per_item;
    if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: step needs a generator", s->cls->name);
    if (!st->sample && !(st->sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    const int pred = s->cfg.prediction_type;
    if (!st->second) {
        const float sigma = s->sigmas[i], sigma_interpol = st->interp[i];
        const float dt = sigma_interpol - sigma;
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma, mo[j], x[j]);
            float d = (x[j] - x0) / sigma;
            st->sample[j] = x[j];
            x[j] = x[j] + d * dt;
        }
        st->second = 1;
    } else {
        const float sigma = s->sigmas[i - 1], sigma_interpol = st->interp[i - 1];
        const float sigma_up = st->up[i - 1], sigma_down = st->down[i - 1];
        const float dt = sigma_down - sigma;
        qd_rng_randn(rng, st->noise, n);   /* randn_tensor in the 2nd-order branch */
        for (int64_t j = 0; j < n; j++) {
            float x0 = qd_kd_x0(pred, sigma_interpol, mo[j], x[j]);
            float d = (x[j] - x0) / sigma_interpol;
            float y = st->sample[j] + d * dt;
            x[j] = y + st->noise[j] * sigma_up;
        }
        st->second = 0;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_kdpm2_ancestral = {
    .name = "KDPM2AncestralDiscreteScheduler",
    .keys = qd_sched_kdiff_keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
};
