/* DDPMScheduler (Ho et al. 2020, eqs. 6-7): posterior mean from x0 and x_t,
 * plus noise of the fixed_small (or other) variance on every step with t > 0.
 * The previous timestep is the next entry of the schedule (previous_timestep). */
#include "sample/scheduler.h"

#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "variance_type",
    "clip_sample", "prediction_type", "thresholding", "dynamic_thresholding_ratio", "clip_sample_range",
    "sample_max_value", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LEADING);
    c->variance_type = QD_VAR_FIXED_SMALL;
    c->clip_sample = 1;
    c->dynamic_thresholding_ratio = 0.995;
    c->clip_sample_range = 1.0;
    c->sample_max_value = 1.0;
}

typedef struct {
    float *x0, *noise;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    if (s->cfg.variance_type == QD_VAR_LEARNED || s->cfg.variance_type == QD_VAR_LEARNED_RANGE)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: learned variance_type is not supported", s->cls->name);
    if (s->cfg.variance_type == QD_VAR_NONE) s->cfg.variance_type = QD_VAR_FIXED_SMALL;
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    s->init_noise_sigma = 1.0f;
    return QD_OK;
}

static void free_state(qd_scheduler *s) {
    state *st = s->state;
    if (st) {
        free(st->x0);
        free(st->noise);
    }
    free(st);
    s->state = NULL;
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int64_t n = batch * per_item;
    if (!st->x0 && !(st->x0 = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    const int t = (int)s->timesteps[i];
    const int prev_t = i + 1 < s->n_timesteps ? (int)s->timesteps[i + 1] : -1;
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : 1.0f;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float *x0 = st->x0;
    QD_TRY(qd_sched_ddpm_x0(ctx, c, sa, sb, mo, x, x0, batch, per_item));
    /* eq. 7: mean of q(x_{t-1} | x_t, x0) */
    const float c0 = (sqrtf(a_prev) * cur_beta) / b_t;
    const float cx = sqrtf(cur_alpha) * b_prev / b_t;
    for (int64_t j = 0; j < n; j++) x[j] = c0 * x0[j] + cx * x[j];
    if (t > 0) {
        if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: step needs a generator", s->cls->name);
        if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
        qd_rng_randn(rng, st->noise, n);
        /* _get_variance */
        float var = b_prev / b_t * cur_beta;
        if (var < 1e-20f) var = 1e-20f;
        float scale;
        switch (c->variance_type) {
        case QD_VAR_FIXED_SMALL_LOG: scale = expf(0.5f * logf(var)); break;   /* used as the std */
        case QD_VAR_FIXED_LARGE: scale = sqrtf(cur_beta); break;
        case QD_VAR_FIXED_LARGE_LOG: scale = sqrtf(logf(cur_beta)); break;  /* as diffusers (NaN) */
        default: scale = sqrtf(var); break;
        }
        for (int64_t j = 0; j < n; j++) x[j] = x[j] + scale * st->noise[j];
    }
    return QD_OK;
}

const qd_sched_class qd_sched_ddpm = {
    .name = "DDPMScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = qd_sched_discrete_set_timesteps,
    .step = step,
    .free_state = free_state,
};
