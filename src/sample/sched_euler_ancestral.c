/* EulerAncestralDiscreteScheduler: Euler step to sigma_down, then fresh noise
 * scaled by sigma_up (k-diffusion's sample_euler_ancestral, eta = 1). Noise is
 * drawn on every step, the last included. */
#include "sample/scheduler.h"

#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "timestep_spacing", "steps_offset", "rescale_betas_zero_snr", NULL};

static void defaults(qd_sched_config *c) { qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE); }

typedef struct {
    float *noise;
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
    if (st) free(st->noise);
    free(st);
    s->state = NULL;
}

/* no sigma-schedule options here, so the training sigmas interpolated at the
 * spaced timesteps */
static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    QD_TRY(qd_sched_kdiff_set_timesteps(ctx, s, n, 0.0f));
    state *stt = s->state;
    free(stt->noise);
    stt->noise = NULL;
    return QD_OK;
}

static float model_sigma(const qd_scheduler *s, int i) { return s->sigmas[i]; }

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    state *st = s->state;
    const int64_t n = batch * per_item;
    if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: step needs a generator", s->cls->name);
    if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    const float sigma = s->sigmas[i], sigma_from = sigma, sigma_to = s->sigmas[i + 1];
    /* float32 scalar math, as on 0-dim torch tensors */
    const float sigma_up = sqrtf(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                                 (sigma_from * sigma_from));
    const float sigma_down = sqrtf(sigma_to * sigma_to - sigma_up * sigma_up);
    const float dt = sigma_down - sigma;
    const int pred = s->cfg.prediction_type;
    for (int64_t j = 0; j < n; j++) {
        float x0 = qd_kd_x0(pred, sigma, mo[j], x[j]);
        float d = (x[j] - x0) / sigma;
        x[j] = x[j] + d * dt;
    }
    qd_rng_randn(rng, st->noise, n);
    for (int64_t j = 0; j < n; j++) x[j] = x[j] + st->noise[j] * sigma_up;
    return QD_OK;
}

const qd_sched_class qd_sched_euler_ancestral = {
    .name = "EulerAncestralDiscreteScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .free_state = free_state,
    .zsnr_tiny_last = 1,
};
