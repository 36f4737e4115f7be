/* EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2, with s_churn = 0):
 * x0 from the model output at sigma_i, then one Euler step of the
 * probability-flow ODE to sigma_{i+1}. No noise is drawn (gamma == 0). */
#include "sample/scheduler.h"

#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
    "sigma_max", "timestep_spacing", "timestep_type", "steps_offset", "rescale_betas_zero_snr",
    "final_sigmas_type", NULL};

static void defaults(qd_sched_config *c) {
    qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LINSPACE);
    c->final_sigmas_zero = 1;
}

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    (void)ctx;
    /* before set_timesteps: all training sigmas (descending) and a final 0 */
    qd_sched_init_sigma_train(s);
    return QD_OK;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    const qd_sched_config *c = &s->cfg;
    QD_TRY(qd_sched_kdiff_set_timesteps(ctx, s, n,
                                        c->final_sigmas_zero ? 0.0f : qd_sched_sigma_from_ac(s->alphas_cumprod[0])));
    if (c->timestep_continuous && c->prediction_type == QD_PRED_V)
        for (int i = 0; i < n; i++) s->timesteps[i] = 0.25f * logf(s->sigmas[i]);   /* EDM c_noise */
    return QD_OK;
}

static float model_sigma(const qd_scheduler *s, int i) { return s->sigmas[i]; }

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)ctx;
    (void)rng;
    const int64_t n = batch * per_item;
    const float sigma = s->sigmas[i];
    const float sigma_hat = sigma;               /* gamma = 0 */
    const float dt = s->sigmas[i + 1] - sigma_hat;
    const int pred = s->cfg.prediction_type;
    for (int64_t j = 0; j < n; j++) {
        float x0 = pred == QD_PRED_EPSILON ? x[j] - sigma_hat * mo[j] : qd_kd_x0(pred, sigma, mo[j], x[j]);
        float d = (x[j] - x0) / sigma_hat;
        x[j] = x[j] + d * dt;
    }
    return QD_OK;
}

const qd_sched_class qd_sched_euler = {
    .name = "EulerDiscreteScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .model_sigma = model_sigma,
    .step = step,
    .zsnr_tiny_last = 1,
};
