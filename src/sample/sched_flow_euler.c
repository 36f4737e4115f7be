/* FlowMatchEulerDiscreteScheduler (SD3, FLUX): the model predicts the velocity
 * v = noise - x0 along x_sigma = (1 - sigma) x0 + sigma noise, and each step is
 * x += (sigma_next - sigma) * v. Sigmas are shifted toward noise, statically
 * (shift) or by mu from the image size (dynamic shifting), in the precision
 * diffusers computes them: numpy float64 for the class's own linspace, float32
 * when the pipeline passes sigmas (FLUX). */
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>

static const char *const keys[] = {
    "num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
    "max_image_seq_len", "invert_sigmas", "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
    "use_beta_sigmas", NULL};

static void defaults(qd_sched_config *c) {
    c->num_train_timesteps = 1000;
    c->shift = 1.0;
    c->base_shift = 0.5;
    c->max_shift = 1.15;
    c->base_image_seq_len = 256;
    c->max_image_seq_len = 4096;
    /* betas are unused by this class; sane values keep the shared tables finite */
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = QD_BETA_LINEAR;
}

typedef struct { float sigma_max, sigma_min; } flow_state;

/* __init__: sigmas over the training timesteps in torch float32, shifted unless dynamic. */
static float init_sigma(const qd_sched_config *c, int t) {
    float s = (float)t / (float)c->num_train_timesteps;
    if (!c->use_dynamic_shifting) s = ((float)c->shift * s) / (1.0f + (float)(c->shift - 1.0) * s);
    return s;
}

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    const qd_sched_config *c = &s->cfg;
    if (c->invert_sigmas || c->use_karras_sigmas || c->use_exponential_sigmas || c->use_beta_sigmas)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "FlowMatchEulerDiscreteScheduler: invert_sigmas and "
                       "karras/exponential/beta sigmas are not supported");
    if (c->shift <= 0 || c->base_image_seq_len >= c->max_image_seq_len)
        return qd_fail(ctx, QD_ERR_FORMAT, "FlowMatchEulerDiscreteScheduler: invalid shift or image_seq_len range");
    flow_state *st = qd_calloc(ctx, 1, sizeof *st);
    if (!st) return QD_ERR_NOMEM;
    st->sigma_max = init_sigma(c, c->num_train_timesteps);
    st->sigma_min = init_sigma(c, 1);
    s->state = st;
    s->init_noise_sigma = 1.0f;
    return QD_OK;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    const qd_sched_config *c = &s->cfg;
    const flow_state *fs = s->state;
    if (c->use_dynamic_shifting && !s->has_flow_mu)
        return qd_fail(ctx, QD_ERR_ARG, "FlowMatchEulerDiscreteScheduler: dynamic shifting needs mu");
    if (s->flow_sigmas) n = s->n_flow_sigmas;
    float *sig = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)n);
    double *d = qd_malloc(ctx, sizeof(double) * (size_t)n);
    if (!sig || !ts || !d) { free(sig); free(ts); free(d); return QD_ERR_NOMEM; }
    const double N = c->num_train_timesteps;
    if (!s->flow_sigmas) {
        qd_np_linspace((double)fs->sigma_max * N, (double)fs->sigma_min * N, n, d);
        for (int i = 0; i < n; i++) {
            double x = d[i] / N;
            if (c->use_dynamic_shifting) x = exp(s->flow_mu) / (exp(s->flow_mu) + (1.0 / x - 1.0));
            else x = c->shift * x / (1.0 + (c->shift - 1.0) * x);
            d[i] = x;
        }
    } else {
        /* float32 numpy array with Python-float scalars: float32 arithmetic */
        const float em = (float)exp(s->flow_mu), sh = (float)c->shift;
        for (int i = 0; i < n; i++) {
            float x = s->flow_sigmas[i];
            if (c->use_dynamic_shifting) x = em / (em + (1.0f / x - 1.0f));
            else x = sh * x / (1.0f + (sh - 1.0f) * x);
            d[i] = x;
        }
    }
    if (c->has_shift_terminal) {
        /* stretch so the last sigma lands on shift_terminal */
        double scale = (1.0 - d[n - 1]) / (1.0 - c->shift_terminal);
        for (int i = 0; i < n; i++) d[i] = 1.0 - (1.0 - d[i]) / scale;
    }
    for (int i = 0; i < n; i++) {
        sig[i] = (float)d[i];
        ts[i] = sig[i] * (float)N;
    }
    sig[n] = 0.0f;
    free(d);
    qd_sched_set_arrays(s, ts, n, sig, n + 1);
    s->num_inference_steps = n;
    return QD_OK;
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *v, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)ctx;
    (void)rng;
    const float dt = s->sigmas[i + 1] - s->sigmas[i];
    for (int64_t j = 0; j < batch * per_item; j++) x[j] = x[j] + dt * v[j];
    return QD_OK;
}

static void free_state(qd_scheduler *s) { free(s->state); }

const qd_sched_class qd_sched_flow_euler = {
    .name = "FlowMatchEulerDiscreteScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    /* no model_sigma: FlowMatchEulerDiscreteScheduler has no scale_model_input
     * (the flow pipelines feed the latents to the transformer as they are) */
    .step = step,
    .free_state = free_state,
};
