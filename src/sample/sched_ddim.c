/* DDIMScheduler (Song et al. 2020, eq. 12). eta = 0 as StableDiffusionPipeline
 * passes it (deterministic); an "eta" override enables the stochastic variant.
 * The previous timestep is always t - num_train_timesteps // num_inference_steps,
 * whatever the spacing (diffusers does the same). */
#include "sample/scheduler.h"

#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
    "set_alpha_to_one", "steps_offset", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
    "clip_sample_range", "sample_max_value", "timestep_spacing", "rescale_betas_zero_snr", "eta", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LEADING);
    c->clip_sample = 1;
    c->set_alpha_to_one = 1;
    c->dynamic_thresholding_ratio = 0.995;
    c->clip_sample_range = 1.0;
    c->sample_max_value = 1.0;
}

typedef struct {
    float *x0, *noise;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
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
    const int prev_t = t - c->num_train_timesteps / s->num_inference_steps;
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float *x0 = st->x0;
    /* 3-4. x0 from the model output, clipped or thresholded */
    QD_TRY(qd_sched_ddpm_x0(ctx, c, sa, sb, mo, x, x0, batch, per_item));
    /* 5. variance sigma_t(eta) (eq. 16) */
    const float b_prev = 1.0f - a_prev;
    const float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
    const float std_dev = (float)c->eta * sqrtf(variance);
    const float dir_coef = sqrtf(1.0f - a_prev - std_dev * std_dev);
    const float sa_prev = sqrtf(a_prev);
    for (int64_t j = 0; j < n; j++) {
        /* eps: the model output, or re-derived from x0 for sample / v prediction
         * (diffusers derives it before clipping; use_clipped_model_output=False) */
        float eps;
        if (c->prediction_type == QD_PRED_EPSILON) eps = mo[j];
        else if (c->prediction_type == QD_PRED_SAMPLE) eps = (x[j] - sa * mo[j]) / sb;
        else eps = sa * mo[j] + sb * x[j];
        x[j] = sa_prev * x0[j] + dir_coef * eps;
    }
    if (c->eta > 0) {
        if (!rng) return qd_fail(ctx, QD_ERR_ARG, "%s: eta > 0 needs a generator", s->cls->name);
        if (!st->noise && !(st->noise = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
        qd_rng_randn(rng, st->noise, n);
        for (int64_t j = 0; j < n; j++) x[j] = x[j] + std_dev * st->noise[j];
    }
    return QD_OK;
}

const qd_sched_class qd_sched_ddim = {
    .name = "DDIMScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = qd_sched_discrete_set_timesteps,
    .step = step,
    .free_state = free_state,
};
