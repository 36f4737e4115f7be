/* PNDMScheduler (Liu et al. 2022, pseudo numerical methods): Runge-Kutta warm-up
 * steps (PRK) unless skip_prk_steps, then linear multistep (PLMS) on the
 * noise prediction with the DDIM-like transfer _get_prev_sample (eq. 9).
 * With skip_prk_steps the schedule repeats the second timestep: the first
 * two calls form a second-order (Heun-like) step, so len = steps + 1. */
#include "sample/scheduler.h"

#include <stdlib.h>
#include <string.h>

static const char *const keys[] = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "skip_prk_steps",
    "set_alpha_to_one", "prediction_type", "timestep_spacing", "steps_offset", NULL};

static void defaults(qd_sched_config *c) { qd_sched_defaults(c, 0.0001, 0.02, QD_SPACING_LEADING); }

typedef struct {
    int n_prk;                  /* leading PRK timesteps in s->timesteps */
    int *prk_t;                 /* their values */
    float *ets[4];              /* ets[0] newest model output kept for PLMS */
    int n_ets;
    float *cur_model_output;    /* PRK accumulator */
    int cur_mo_zero;            /* cur_model_output == 0 */
    float *cur_sample;
    int has_cur_sample;
    float *tmp;
    int counter;
} state;

static qd_status init(qd_ctx *ctx, qd_scheduler *s) {
    if (s->cfg.prediction_type == QD_PRED_SAMPLE)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: prediction_type 'sample' is not supported", s->cls->name);
    s->state = qd_calloc(ctx, 1, sizeof(state));
    if (!s->state) return QD_ERR_NOMEM;
    s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    s->init_noise_sigma = 1.0f;
    return QD_OK;
}

static void reset(state *st) {
    for (int k = 0; k < 4; k++) {
        free(st->ets[k]);
        st->ets[k] = NULL;
    }
    free(st->cur_model_output);
    free(st->cur_sample);
    free(st->tmp);
    st->cur_model_output = st->cur_sample = st->tmp = NULL;
    st->n_ets = 0;
    st->cur_mo_zero = 1;
    st->has_cur_sample = 0;
    st->counter = 0;
}

static void free_state(qd_scheduler *s) {
    state *st = s->state;
    if (st) {
        reset(st);
        free(st->prk_t);
    }
    free(st);
    s->state = NULL;
}

static qd_status set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n) {
    state *st = s->state;
    const qd_sched_config *c = &s->cfg;
    const int N = c->num_train_timesteps;
    reset(st);
    /* _timesteps ascending */
    double *base = qd_malloc(ctx, sizeof(double) * (size_t)n);
    int *all = qd_malloc(ctx, sizeof(int) * (size_t)(3 * n + 16));
    if (!base || !all) {
        free(base);
        free(all);
        return QD_ERR_NOMEM;
    }
    if (c->timestep_spacing == QD_SPACING_LINSPACE) {
        qd_np_linspace(0, N - 1, n, base);
        for (int i = 0; i < n; i++) base[i] = qd_np_round(base[i]);
    } else if (c->timestep_spacing == QD_SPACING_LEADING) {
        for (int i = 0; i < n; i++) base[i] = (double)i * (N / n) + c->steps_offset;
    } else {
        double ratio = (double)N / n;
        int m = qd_np_arange(N, 0, -ratio, NULL);
        if (m != n) {
            free(base);
            free(all);
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: trailing spacing with %d steps gives %d timesteps in diffusers "
                           "(numpy arange rounding, the last is -1); not supported",
                           s->cls->name, n, m);
        }
        double *tmp = qd_malloc(ctx, sizeof(double) * (size_t)n);
        if (!tmp) {
            free(base);
            free(all);
            return QD_ERR_NOMEM;
        }
        qd_np_arange(N, 0, -ratio, tmp);
        for (int i = 0; i < n; i++) base[i] = qd_np_round(tmp[n - 1 - i]) - 1;
        free(tmp);
    }
    int k = 0;
    free(st->prk_t);
    st->prk_t = NULL;
    st->n_prk = 0;
    if (c->skip_prk_steps) {
        /* concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1] */
        int *fw = all + 2 * n + 8, m = 0;
        for (int i = 0; i < n - 1; i++) fw[m++] = (int)base[i];
        if (n >= 2) fw[m++] = (int)base[n - 2];
        fw[m++] = (int)base[n - 1];
        for (int i = 0; i < m; i++) all[i] = fw[m - 1 - i];
        k = m;
    } else {
        /* prk: last 4 _timesteps each repeated with +0 and +ratio//2, then
         * [:-1].repeat(2)[1:-1], reversed; plms: _timesteps[:-3] reversed */
        if (n < 4) {
            free(base);
            free(all);
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: PRK warm-up needs at least 4 steps (or skip_prk_steps)",
                           s->cls->name);
        }
        int half = N / n / 2, p8[8];
        for (int j = 0; j < 4; j++) {
            int v = (int)base[n - 4 + j];
            p8[2 * j] = v;
            p8[2 * j + 1] = v + half;
        }
        int rep[14], r = 0;
        for (int j = 0; j < 7; j++) rep[r++] = p8[j], rep[r++] = p8[j];
        /* rep[1:-1]: 12 values, reversed */
        st->prk_t = malloc(sizeof(int) * 12);
        if (!st->prk_t) {
            free(base);
            free(all);
            return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        }
        for (int j = 0; j < 12; j++) st->prk_t[j] = rep[12 - j];
        st->n_prk = 12;
        for (int j = 0; j < 12; j++) all[k++] = st->prk_t[j];
        for (int i = n - 4; i >= 0; i--) all[k++] = (int)base[i];
    }
    free(base);
    float *ts = qd_malloc(ctx, sizeof(float) * (size_t)k);
    if (!ts) {
        free(all);
        return QD_ERR_NOMEM;
    }
    qd_status stt = QD_OK;
    for (int i = 0; i < k; i++) {
        ts[i] = (float)all[i];
        if (all[i] < 0 || all[i] >= s->n_train)
            stt = qd_fail(ctx, QD_ERR_ARG, "%s: timestep %d out of range", s->cls->name, all[i]);
    }
    free(all);
    if (stt != QD_OK) {
        free(ts);
        return stt;
    }
    qd_sched_set_arrays(s, ts, k, NULL, 0);
    s->num_inference_steps = n;
    return QD_OK;
}

/* _get_prev_sample: x_{t-delta} from x_t and the noise estimate (formula 9). */
static void prev_sample(const qd_scheduler *s, const float *x, int t, int prev_t, const float *eps,
                        float *out, int64_t n) {
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float sample_coeff = sqrtf(a_prev / a_t);
    const float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    const float diff = a_prev - a_t;
    const int v = s->cfg.prediction_type == QD_PRED_V;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    for (int64_t j = 0; j < n; j++) {
        float e = v ? sa * eps[j] + sb * x[j] : eps[j];
        out[j] = sample_coeff * x[j] - diff * e / denom;
    }
}

static void push_ets(qd_ctx *ctx, state *st, const float *mo, int64_t n, qd_status *err) {
    float *b = st->n_ets == 4 ? st->ets[3] : qd_malloc(ctx, sizeof(float) * (size_t)n);
    if (!b) {
        *err = QD_ERR_NOMEM;
        return;
    }
    for (int k = (st->n_ets == 4 ? 3 : st->n_ets); k > 0; k--) st->ets[k] = st->ets[k - 1];
    st->ets[0] = b;
    if (st->n_ets < 4) st->n_ets++;
    memcpy(b, mo, sizeof(float) * (size_t)n);
}

static qd_status step_prk(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t n) {
    state *st = s->state;
    const int N = s->cfg.num_train_timesteps;
    qd_status err = QD_OK;
    const int diff_to_prev = st->counter % 2 ? 0 : N / s->num_inference_steps / 2;
    const int timestep_in = (int)s->timesteps[i];
    const int prev_t = timestep_in - diff_to_prev;
    const int t = st->prk_t[st->counter / 4 * 4];
    if (!st->cur_model_output && !(st->cur_model_output = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->cur_sample && !(st->cur_sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->tmp && !(st->tmp = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    float *acc = st->cur_model_output, *eps = st->tmp;
    const int phase = st->counter % 4;
    /* python: cur_model_output starts as the int 0, so 0 + c*m == c*m */
    if (phase == 0) {
        for (int64_t j = 0; j < n; j++) acc[j] = st->cur_mo_zero ? 1.0f / 6 * mo[j] : acc[j] + 1.0f / 6 * mo[j];
        push_ets(ctx, st, mo, n, &err);
        if (err) return err;
        memcpy(st->cur_sample, x, sizeof(float) * (size_t)n);
        st->has_cur_sample = 1;
        memcpy(eps, mo, sizeof(float) * (size_t)n);
        st->cur_mo_zero = 0;
    } else if (phase == 1 || phase == 2) {
        for (int64_t j = 0; j < n; j++) acc[j] = st->cur_mo_zero ? 1.0f / 3 * mo[j] : acc[j] + 1.0f / 3 * mo[j];
        memcpy(eps, mo, sizeof(float) * (size_t)n);
        st->cur_mo_zero = 0;
    } else {
        for (int64_t j = 0; j < n; j++) eps[j] = (st->cur_mo_zero ? 0.0f : acc[j]) + 1.0f / 6 * mo[j];
        st->cur_mo_zero = 1;
    }
    const float *cur = st->has_cur_sample ? st->cur_sample : x;
    prev_sample(s, cur, t, prev_t, eps, x, n);
    st->counter++;
    return QD_OK;
}

static qd_status step_plms(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t n) {
    state *st = s->state;
    const int N = s->cfg.num_train_timesteps;
    qd_status err = QD_OK;
    int t = (int)s->timesteps[i];
    int prev_t = t - N / s->num_inference_steps;
    if (!st->tmp && !(st->tmp = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (!st->cur_sample && !(st->cur_sample = qd_sched_alloc(ctx, s))) return QD_ERR_NOMEM;
    if (st->counter != 1) {
        /* ets = ets[-3:] + [model_output] */
        push_ets(ctx, st, mo, n, &err);
        if (err) return err;
    } else {
        prev_t = t;
        t = t + N / s->num_inference_steps;
    }
    float *eps = st->tmp;
    const float *src = x;
    float *const *e = st->ets;
    if (st->n_ets == 1 && st->counter == 0) {
        memcpy(eps, mo, sizeof(float) * (size_t)n);
        memcpy(st->cur_sample, x, sizeof(float) * (size_t)n);
        st->has_cur_sample = 1;
    } else if (st->n_ets == 1 && st->counter == 1) {
        for (int64_t j = 0; j < n; j++) eps[j] = (mo[j] + e[0][j]) / 2;
        src = st->cur_sample;     /* the step restarts from the saved sample */
        st->has_cur_sample = 0;
    } else if (st->n_ets == 2) {
        for (int64_t j = 0; j < n; j++) eps[j] = (3 * e[0][j] - e[1][j]) / 2;
    } else if (st->n_ets == 3) {
        for (int64_t j = 0; j < n; j++) eps[j] = (23 * e[0][j] - 16 * e[1][j] + 5 * e[2][j]) / 12;
    } else {
        for (int64_t j = 0; j < n; j++)
            eps[j] = (1.0f / 24) * (55 * e[0][j] - 59 * e[1][j] + 37 * e[2][j] - 9 * e[3][j]);
    }
    prev_sample(s, src, t, prev_t, eps, x, n);
    st->counter++;
    return QD_OK;
}

static qd_status step(qd_ctx *ctx, qd_scheduler *s, int i, const float *mo, float *x, int64_t batch,
                      int64_t per_item, qd_rng *rng) {
    (void)rng;
    state *st = s->state;
    const int64_t n = batch * per_item;
    if (st->counter < st->n_prk && !s->cfg.skip_prk_steps) return step_prk(ctx, s, i, mo, x, n);
    if (!s->cfg.skip_prk_steps && st->n_ets < 3)
        return qd_fail(ctx, QD_ERR_ARG, "%s: PLMS needs 3 PRK warm-up model outputs", s->cls->name);
    return step_plms(ctx, s, i, mo, x, n);
}

const qd_sched_class qd_sched_pndm = {
    .name = "PNDMScheduler",
    .keys = keys,
    .defaults = defaults,
    .init = init,
    .set_timesteps = set_timesteps,
    .step = step,
    .free_state = free_state,
};
