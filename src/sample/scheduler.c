/* Scheduler core: config parsing (diffusers from_config semantics), the class
 * registry, betas/alphas_cumprod, spacing and sigma helpers, the public API. */
#include "sample/scheduler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qd_sched_class *const registry[] = {
    &qd_sched_euler, &qd_sched_euler_ancestral, &qd_sched_dpmsolver_multistep,
    &qd_sched_dpmsolver_singlestep, &qd_sched_ddim, &qd_sched_ddpm, &qd_sched_pndm,
    &qd_sched_lms, &qd_sched_heun, &qd_sched_kdpm2, &qd_sched_kdpm2_ancestral,
    &qd_sched_deis, &qd_sched_unipc, &qd_sched_flow_euler,
};
#define N_CLASSES ((int)(sizeof registry / sizeof registry[0]))

/* Same order as registry[] (test_schedulers builds every name listed here). */
static const char *const class_names[] = {
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler",
    "LMSDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler", NULL,
};

const char *const *qd_scheduler_classes(void) { return class_names; }

/* ------------------------------------------------------------------ config */

typedef struct {
    const char *name;
    const char *const *values;      /* enum spellings, NULL-terminated */
    const int *codes;
} enum_spec;

static const char *const beta_names[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "exp", NULL};
static const int beta_codes[] = {QD_BETA_LINEAR, QD_BETA_SCALED_LINEAR, QD_BETA_SQUAREDCOS, QD_BETA_SIGMOID, QD_BETA_EXP};
/* "original_sample" is Euler's backwards-compatible spelling of "sample" */
static const char *const pred_names[] = {"epsilon", "v_prediction", "sample", "original_sample", NULL};
static const int pred_codes[] = {QD_PRED_EPSILON, QD_PRED_V, QD_PRED_SAMPLE, QD_PRED_SAMPLE};
static const char *const spacing_names[] = {"linspace", "leading", "trailing", NULL};
static const int spacing_codes[] = {QD_SPACING_LINSPACE, QD_SPACING_LEADING, QD_SPACING_TRAILING};
static const char *const algo_names[] = {"dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver", "deis", NULL};
static const int algo_codes[] = {QD_ALGO_DPMSOLVERPP, QD_ALGO_SDE_DPMSOLVERPP, QD_ALGO_DPMSOLVER, QD_ALGO_SDE_DPMSOLVER, QD_ALGO_DEIS};
static const char *const solver_names[] = {"midpoint", "heun", "logrho", "bh1", "bh2", NULL};
static const int solver_codes[] = {QD_SOLVER_MIDPOINT, QD_SOLVER_HEUN, QD_SOLVER_LOGRHO, QD_SOLVER_BH1, QD_SOLVER_BH2};
static const char *const var_names[] = {"fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range", NULL};
static const int var_codes[] = {QD_VAR_FIXED_SMALL, QD_VAR_FIXED_SMALL_LOG, QD_VAR_FIXED_LARGE, QD_VAR_FIXED_LARGE_LOG, QD_VAR_LEARNED, QD_VAR_LEARNED_RANGE};

static qd_status parse_enum(qd_ctx *ctx, const char *cls, const char *key, const cJSON *it,
                            const char *const *names, const int *codes, int *out) {
    if (!cJSON_IsString(it))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: config '%s' must be a string", cls, key);
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], it->valuestring) == 0) {
            *out = codes[i];
            return QD_OK;
        }
    return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", cls, key, it->valuestring);
}

static qd_status parse_num(qd_ctx *ctx, const char *cls, const char *key, const cJSON *it, double *out) {
    if (!cJSON_IsNumber(it))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: config '%s' must be a number", cls, key);
    *out = it->valuedouble;
    return QD_OK;
}

static qd_status parse_int(qd_ctx *ctx, const char *cls, const char *key, const cJSON *it, int *out) {
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 1e9)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: config '%s' must be an integer", cls, key);
    *out = (int)it->valuedouble;
    return QD_OK;
}

static qd_status parse_bool(qd_ctx *ctx, const char *cls, const char *key, const cJSON *it, int *out) {
    if (cJSON_IsBool(it)) *out = cJSON_IsTrue(it);
    else if (cJSON_IsNumber(it)) *out = it->valuedouble != 0;
    else return qd_fail(ctx, QD_ERR_FORMAT, "%s: config '%s' must be a boolean", cls, key);
    return QD_OK;
}

/* One config key into the config struct. Unknown keys never get here: the
 * class's key list decides what is read. */
static qd_status parse_key(qd_ctx *ctx, const char *cls, qd_sched_config *c, const char *k, const cJSON *it) {
#define IS(x) (strcmp(k, x) == 0)
    if (IS("num_train_timesteps")) {
        QD_TRY(parse_int(ctx, cls, k, it, &c->num_train_timesteps));
        if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: num_train_timesteps %d out of range", cls, c->num_train_timesteps);
        return QD_OK;
    }
    if (IS("beta_start")) return parse_num(ctx, cls, k, it, &c->beta_start);
    if (IS("beta_end")) return parse_num(ctx, cls, k, it, &c->beta_end);
    if (IS("beta_schedule")) return parse_enum(ctx, cls, k, it, beta_names, beta_codes, &c->beta_schedule);
    if (IS("trained_betas")) {
        if (!cJSON_IsArray(it))
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: trained_betas must be a list of numbers", cls);
        int n = cJSON_GetArraySize(it);
        free(c->trained_betas);
        c->trained_betas = n > 0 ? qd_malloc(ctx, sizeof(double) * (size_t)n) : NULL;
        if (n > 0 && !c->trained_betas) return QD_ERR_NOMEM;
        int i = 0;
        for (const cJSON *e = it->child; e; e = e->next, i++) {
            if (!cJSON_IsNumber(e))
                return qd_fail(ctx, QD_ERR_FORMAT, "%s: trained_betas must be a list of numbers", cls);
            c->trained_betas[i] = e->valuedouble;
        }
        c->n_trained_betas = n;
        return QD_OK;
    }
    if (IS("prediction_type")) return parse_enum(ctx, cls, k, it, pred_names, pred_codes, &c->prediction_type);
    if (IS("timestep_spacing")) {
        qd_status st = parse_enum(ctx, cls, k, it, spacing_names, spacing_codes, &c->timestep_spacing);
        if (st == QD_ERR_UNSUPPORTED)   /* diffusers raises at set_timesteps; earlier is clearer */
            return qd_fail(ctx, st, "%s: timestep_spacing '%s' is not supported (linspace, leading, trailing)",
                           cls, it->valuestring);
        return st;
    }
    if (IS("steps_offset")) return parse_int(ctx, cls, k, it, &c->steps_offset);
    if (IS("interpolation_type")) {
        static const char *const names[] = {"linear", "log_linear", NULL};
        static const int codes[] = {0, 1};
        return parse_enum(ctx, cls, k, it, names, codes, &c->interpolation_log_linear);
    }
    if (IS("use_karras_sigmas")) return parse_bool(ctx, cls, k, it, &c->use_karras_sigmas);
    if (IS("use_exponential_sigmas")) return parse_bool(ctx, cls, k, it, &c->use_exponential_sigmas);
    if (IS("use_beta_sigmas")) return parse_bool(ctx, cls, k, it, &c->use_beta_sigmas);
    if (IS("sigma_min")) { c->has_sigma_min = 1; return parse_num(ctx, cls, k, it, &c->sigma_min); }
    if (IS("sigma_max")) { c->has_sigma_max = 1; return parse_num(ctx, cls, k, it, &c->sigma_max); }
    if (IS("timestep_type")) {
        static const char *const names[] = {"discrete", "continuous", NULL};
        static const int codes[] = {0, 1};
        return parse_enum(ctx, cls, k, it, names, codes, &c->timestep_continuous);
    }
    if (IS("rescale_betas_zero_snr")) return parse_bool(ctx, cls, k, it, &c->rescale_betas_zero_snr);
    if (IS("final_sigmas_type")) {
        static const char *const names[] = {"zero", "sigma_min", NULL};
        static const int codes[] = {1, 0};
        return parse_enum(ctx, cls, k, it, names, codes, &c->final_sigmas_zero);
    }
    if (IS("clip_sample")) return parse_bool(ctx, cls, k, it, &c->clip_sample);
    if (IS("clip_sample_range")) return parse_num(ctx, cls, k, it, &c->clip_sample_range);
    if (IS("set_alpha_to_one")) return parse_bool(ctx, cls, k, it, &c->set_alpha_to_one);
    if (IS("thresholding")) return parse_bool(ctx, cls, k, it, &c->thresholding);
    if (IS("dynamic_thresholding_ratio")) return parse_num(ctx, cls, k, it, &c->dynamic_thresholding_ratio);
    if (IS("sample_max_value")) return parse_num(ctx, cls, k, it, &c->sample_max_value);
    if (IS("variance_type")) return parse_enum(ctx, cls, k, it, var_names, var_codes, &c->variance_type);
    if (IS("skip_prk_steps")) return parse_bool(ctx, cls, k, it, &c->skip_prk_steps);
    if (IS("solver_order")) {
        QD_TRY(parse_int(ctx, cls, k, it, &c->solver_order));
        if (c->solver_order < 1 || c->solver_order > 3)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: solver_order %d is not supported (1..3)", cls, c->solver_order);
        return QD_OK;
    }
    if (IS("algorithm_type")) return parse_enum(ctx, cls, k, it, algo_names, algo_codes, &c->algorithm_type);
    if (IS("solver_type")) return parse_enum(ctx, cls, k, it, solver_names, solver_codes, &c->solver_type);
    if (IS("lower_order_final")) return parse_bool(ctx, cls, k, it, &c->lower_order_final);
    if (IS("euler_at_final")) return parse_bool(ctx, cls, k, it, &c->euler_at_final);
    if (IS("use_lu_lambdas")) return parse_bool(ctx, cls, k, it, &c->use_lu_lambdas);
    if (IS("lambda_min_clipped")) return parse_num(ctx, cls, k, it, &c->lambda_min_clipped);
    if (IS("use_flow_sigmas")) return parse_bool(ctx, cls, k, it, &c->use_flow_sigmas);
    if (IS("flow_shift")) return parse_num(ctx, cls, k, it, &c->flow_shift);
    if (IS("predict_x0")) return parse_bool(ctx, cls, k, it, &c->predict_x0);
    if (IS("disable_corrector")) {
        if (!cJSON_IsArray(it))
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: disable_corrector must be a list of step indices", cls);
        c->n_disable_corrector = 0;
        for (const cJSON *e = it->child; e; e = e->next) {
            if (!cJSON_IsNumber(e) || c->n_disable_corrector >= QD_SCHED_MAX_DISABLE)
                return qd_fail(ctx, QD_ERR_FORMAT, "%s: disable_corrector must be a list of step indices", cls);
            c->disable_corrector[c->n_disable_corrector++] = (int)e->valuedouble;
        }
        return QD_OK;
    }
    if (IS("solver_p"))   /* only reached when not null */
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: solver_p (a nested scheduler) is not supported", cls);
    if (IS("eta")) return parse_num(ctx, cls, k, it, &c->eta);
    if (IS("shift")) return parse_num(ctx, cls, k, it, &c->shift);
    if (IS("base_shift")) return parse_num(ctx, cls, k, it, &c->base_shift);
    if (IS("max_shift")) return parse_num(ctx, cls, k, it, &c->max_shift);
    if (IS("use_dynamic_shifting")) return parse_bool(ctx, cls, k, it, &c->use_dynamic_shifting);
    if (IS("base_image_seq_len")) return parse_int(ctx, cls, k, it, &c->base_image_seq_len);
    if (IS("max_image_seq_len")) return parse_int(ctx, cls, k, it, &c->max_image_seq_len);
    if (IS("invert_sigmas")) return parse_bool(ctx, cls, k, it, &c->invert_sigmas);
    if (IS("shift_terminal")) { c->has_shift_terminal = 1; return parse_num(ctx, cls, k, it, &c->shift_terminal); }
#undef IS
    return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: config key '%s' not handled", cls, k);
}

static int class_accepts(const qd_sched_class *cls, const char *key) {
    for (int i = 0; cls->keys[i]; i++)
        if (strcmp(cls->keys[i], key) == 0) return 1;
    return 0;
}

/* --------------------------------------------------------------- numerics */

/* torch.linspace on CPU for float32: step = (end - start) / (steps - 1) in
 * float; elements before steps/2 count up from start, the rest down from end.
 * torch's AVX2 kernel (compiled with FMA contraction) computes each element
 * and each 8-lane block base as one fused multiply-add; lanes within a block
 * are base + k*step (not fused). 16 elements per vector iteration, the tail
 * (< 16) per element. Verified bit-exact against torch 1.13. */
void qd_torch_linspace_f32(double start_d, double end_d, int steps, float *out) {
    if (steps <= 0) return;
    const float start = (float)start_d, end = (float)end_d;
    if (steps == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(steps - 1);
    const int64_t halfway = steps / 2;
    int64_t idx = 0;
    const int64_t nvec = steps - steps % 16;
    for (; idx < nvec; idx += 8) {
        float base = idx < halfway ? fmaf(step, (float)idx, start) : fmaf(-step, (float)(steps - idx - 1), end);
        for (int k = 0; k < 8; k++) out[idx + k] = base + (float)k * step;
    }
    for (; idx < steps; idx++)
        out[idx] = idx < halfway ? fmaf(step, (float)idx, start) : fmaf(-step, (float)(steps - idx - 1), end);
}

void qd_np_linspace(double start, double stop, int num, double *out) {
    if (num <= 0) return;
    if (num == 1) {
        out[0] = start;
        return;
    }
    double step = (stop - start) / (double)(num - 1);
    for (int i = 0; i < num; i++) out[i] = (double)i * step + start;
    out[num - 1] = stop;
}

/* numpy fills arange as start + i*delta with delta = (start + step) - start. */
int qd_np_arange(double start, double stop, double step, double *out) {
    double len = ceil((stop - start) / step);
    int n = len > 0 ? (int)len : 0;
    double delta = (start + step) - start;
    if (out)
        for (int i = 0; i < n; i++) out[i] = i == 0 ? start : start + (double)i * delta;
    return n;
}

double qd_np_round(double x) { return nearbyint(x); }

double qd_np_interp_idx(double x, const float *fp, int n) {
    if (x <= 0) return fp[0];
    if (x >= n - 1) return fp[n - 1];
    int j = (int)floor(x);
    double f0 = fp[j], f1 = fp[j + 1];
    double slope = f1 - f0;   /* xp spacing is 1 */
    double r = slope * (x - j) + f0;
    return r;
}

/* _sigma_to_t: piecewise-linear inverse of log_sigmas (increasing with t). */
double qd_sigma_to_t(double sigma, const float *log_sigmas, int n) {
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    /* low_idx = last index with log_sigmas <= log_sigma (cumsum(dists >= 0).argmax),
     * clipped to n - 2 */
    int cnt = 0, low = 0, best = -1;
    for (int i = 0; i < n; i++) {
        if (log_sigma - (double)log_sigmas[i] >= 0) cnt++;
        if (cnt > best) {
            best = cnt;
            low = i;
        }
    }
    if (low > n - 2) low = n - 2;
    int high = low + 1;
    double lo = log_sigmas[low], hi = log_sigmas[high];
    double w = (lo - log_sigma) / (lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1 - w) * low + w * high;
}

/* Karras et al. 2022 (rho = 7): uniform in sigma^(1/rho). */
void qd_sigmas_karras(double sigma_min, double sigma_max, int n, double *out) {
    const double rho = 7.0;
    qd_np_linspace(0, 1, n, out);   /* ramp, overwritten in place */
    double min_inv = pow(sigma_min, 1 / rho), max_inv = pow(sigma_max, 1 / rho);
    for (int i = 0; i < n; i++) out[i] = pow(max_inv + out[i] * (min_inv - max_inv), rho);
}

void qd_sigmas_exponential(double sigma_min, double sigma_max, int n, double *out) {
    qd_np_linspace(log(sigma_max), log(sigma_min), n, out);
    for (int i = 0; i < n; i++) out[i] = exp(out[i]);
}

/* Regularized incomplete beta I_x(a, b) (continued fraction, Lentz). */
static double betacf(double a, double b, double x) {
    const double tiny = 1e-300;
    double qab = a + b, qap = a + 1, qam = a - 1, c = 1, d = 1 - qab * x / qap;
    if (fabs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 1000; m++) {
        int m2 = 2 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1) < 1e-16) break;
    }
    return h;
}

static double ibeta(double a, double b, double x) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    double front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x));
    if (x < (a + 1) / (a + b + 2)) return front * betacf(a, b, x) / a;
    return 1 - front * betacf(b, a, 1 - x) / b;
}

/* scipy.stats.beta.ppf(q, a, b) by bisection (monotone, to double precision). */
static double beta_ppf(double q, double a, double b) {
    if (q <= 0) return 0;
    if (q >= 1) return 1;
    double lo = 0, hi = 1;
    for (int i = 0; i < 200 && hi - lo > 1e-17; i++) {
        double mid = 0.5 * (lo + hi);
        if (ibeta(a, b, mid) < q) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* "Beta Sampling is All You Need" (alpha = beta = 0.6), as diffusers' _convert_to_beta. */
void qd_sigmas_beta(double sigma_min, double sigma_max, int n, double *out) {
    qd_np_linspace(0, 1, n, out);
    for (int i = 0; i < n; i++) {
        double ppf = beta_ppf(1 - out[i], 0.6, 0.6);
        out[i] = sigma_min + ppf * (sigma_max - sigma_min);
    }
}

static qd_status bad_steps(qd_ctx *ctx, const qd_scheduler *s, int n) {
    return qd_fail(ctx, QD_ERR_ARG, "%s: num_inference_steps %d out of range (1..%d)", s->cls->name, n,
                   s->cfg.num_train_timesteps);
}

qd_status qd_sched_spacing_f32(qd_ctx *ctx, const qd_scheduler *s, int n, float *out) {
    const int N = s->cfg.num_train_timesteps;
    if (n < 1 || n > N) return bad_steps(ctx, s, n);
    double *tmp = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
    if (!tmp) return QD_ERR_NOMEM;
    switch (s->cfg.timestep_spacing) {
    case QD_SPACING_LINSPACE:
        qd_np_linspace(0, N - 1, n, tmp);
        for (int i = 0; i < n; i++) out[i] = (float)tmp[n - 1 - i];
        break;
    case QD_SPACING_LEADING: {
        int ratio = N / n;
        for (int i = 0; i < n; i++) out[i] = (float)((double)(n - 1 - i) * ratio) + (float)s->cfg.steps_offset;
        break;
    }
    default: {
        double ratio = (double)N / n;
        int m = qd_np_arange(N, 0, -ratio, NULL);
        if (m != n) {
            free(tmp);
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: trailing spacing with %d steps gives %d timesteps in diffusers "
                           "(numpy arange rounding, the last is -1); not supported",
                           s->cls->name, n, m);
        }
        qd_np_arange(N, 0, -ratio, tmp);
        for (int i = 0; i < n; i++) out[i] = (float)qd_np_round(tmp[i]) - 1.0f;
        break;
    }
    }
    free(tmp);
    return QD_OK;
}

qd_status qd_sched_spacing_int(qd_ctx *ctx, const qd_scheduler *s, int n, double *out) {
    const int N = s->cfg.num_train_timesteps;
    if (n < 1 || n > N) return bad_steps(ctx, s, n);
    switch (s->cfg.timestep_spacing) {
    case QD_SPACING_LINSPACE: {
        double *tmp = qd_malloc(ctx, sizeof(double) * (size_t)n);
        if (!tmp) return QD_ERR_NOMEM;
        qd_np_linspace(0, N - 1, n, tmp);
        for (int i = 0; i < n; i++) out[i] = qd_np_round(tmp[n - 1 - i]);
        free(tmp);
        break;
    }
    case QD_SPACING_LEADING: {
        int ratio = N / n;
        for (int i = 0; i < n; i++) out[i] = (double)((int64_t)(n - 1 - i) * ratio + s->cfg.steps_offset);
        break;
    }
    default: {
        double ratio = (double)N / n;
        int m = qd_np_arange(N, 0, -ratio, NULL);
        if (m != n)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: trailing spacing with %d steps gives %d timesteps in diffusers "
                           "(numpy arange rounding, the last is -1); not supported",
                           s->cls->name, n, m);
        qd_np_arange(N, 0, -ratio, out);
        for (int i = 0; i < n; i++) out[i] = qd_np_round(out[i]) - 1;
        break;
    }
    }
    return QD_OK;
}

qd_status qd_sched_spacing_multistep(qd_ctx *ctx, const qd_scheduler *s, int n, int last_timestep,
                                     double *out) {
    const int N = s->cfg.num_train_timesteps;
    if (n < 1 || n > N) return bad_steps(ctx, s, n);
    switch (s->cfg.timestep_spacing) {
    case QD_SPACING_LINSPACE: {
        double *tmp = qd_malloc(ctx, sizeof(double) * (size_t)(n + 1));
        if (!tmp) return QD_ERR_NOMEM;
        qd_np_linspace(0, last_timestep - 1, n + 1, tmp);
        for (int i = 0; i < n; i++) out[i] = qd_np_round(tmp[n - i]);
        free(tmp);
        break;
    }
    case QD_SPACING_LEADING: {
        int ratio = last_timestep / (n + 1);
        for (int i = 0; i < n; i++) out[i] = (double)((int64_t)(n - i) * ratio + s->cfg.steps_offset);
        break;
    }
    default: {
        double ratio = (double)N / n;
        int m = qd_np_arange(last_timestep, 0, -ratio, NULL);
        if (m != n)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: trailing spacing with %d steps gives %d timesteps in diffusers "
                           "(numpy arange rounding, the last is -1); not supported",
                           s->cls->name, n, m);
        qd_np_arange(last_timestep, 0, -ratio, out);
        for (int i = 0; i < n; i++) out[i] = qd_np_round(out[i]) - 1;
        break;
    }
    }
    return QD_OK;
}

qd_status qd_sched_kdiff_sigmas(qd_ctx *ctx, const qd_scheduler *s, int n, float *ts, double *sig,
                                int *n_sig, int round_ts) {
    const qd_sched_config *c = &s->cfg;
    const int N = s->n_train;
    QD_TRY(qd_sched_spacing_f32(ctx, s, n, ts));
    int m = n;
    if (!c->interpolation_log_linear) {
        for (int i = 0; i < n; i++) sig[i] = qd_np_interp_idx(ts[i], s->train_sigmas, N);
    } else {
        /* Euler: torch.linspace(log(sigmas[-1]), log(sigmas[0]), n + 1).exp() over
         * the training sigmas (n + 1 values: the last step ends at sigma_min) */
        float *tmp = qd_malloc(ctx, sizeof(float) * (size_t)(n + 1));
        if (!tmp) return QD_ERR_NOMEM;
        qd_torch_linspace_f32(s->log_sigmas[N - 1], s->log_sigmas[0], n + 1, tmp);
        for (int i = 0; i <= n; i++) sig[i] = expf(tmp[i]);
        free(tmp);
        m = n + 1;
    }
    if (c->use_karras_sigmas || c->use_exponential_sigmas || c->use_beta_sigmas) {
        /* sigma_min / sigma_max config keys exist only on Euler */
        double smin = c->has_sigma_min ? c->sigma_min : sig[m - 1];
        double smax = c->has_sigma_max ? c->sigma_max : sig[0];
        if (c->use_karras_sigmas) qd_sigmas_karras(smin, smax, n, sig);
        else if (c->use_exponential_sigmas) qd_sigmas_exponential(smin, smax, n, sig);
        else qd_sigmas_beta(smin, smax, n, sig);
        m = n;
        for (int i = 0; i < n; i++) {
            double t = qd_sigma_to_t(sig[i], s->log_sigmas, N);
            ts[i] = (float)(round_ts && c->use_karras_sigmas ? qd_np_round(t) : t);
        }
    }
    *n_sig = m;
    return QD_OK;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* _threshold_sample: per item, s = quantile(|x|, ratio) clamped to
 * [1, sample_max_value]; x = clamp(x, -s, s) / s. torch.quantile works in the
 * input's float32: rank = q * (n-1), then lerp between neighbours. */
qd_status qd_sched_threshold(qd_ctx *ctx, const qd_sched_config *c, float *x, int64_t batch,
                             int64_t per_item) {
    if (per_item <= 0) return QD_OK;
    float *tmp = qd_malloc(ctx, sizeof(float) * (size_t)per_item);
    if (!tmp) return QD_ERR_NOMEM;
    for (int64_t b = 0; b < batch; b++) {
        float *v = x + b * per_item;
        for (int64_t j = 0; j < per_item; j++) tmp[j] = fabsf(v[j]);
        qsort(tmp, (size_t)per_item, sizeof(float), cmp_float);
        float rank = (float)c->dynamic_thresholding_ratio * (float)(per_item - 1);
        int64_t lo = (int64_t)rank;
        int64_t hi = (int64_t)ceilf(rank);
        if (hi > per_item - 1) hi = per_item - 1;
        float w = rank - (float)lo;
        float a = tmp[lo], e = tmp[hi];
        float q = w < 0.5f ? a + w * (e - a) : e - (e - a) * (1.0f - w);
        float smax = (float)c->sample_max_value;
        float sv = q < 1.0f ? 1.0f : q;
        if (sv > smax) sv = smax;   /* torch.clamp(min=1, max=M): max wins when M < 1 */
        for (int64_t j = 0; j < per_item; j++) {
            float y = v[j];
            if (y < -sv) y = -sv;
            if (y > sv) y = sv;
            v[j] = y / sv;
        }
    }
    free(tmp);
    return QD_OK;
}

float qd_sched_sigma_from_ac(float ac) { return sqrtf((1.0f - ac) / ac); }

void qd_sched_set_arrays(qd_scheduler *s, float *timesteps, int n_t, float *sigmas, int n_s) {
    free(s->timesteps);
    free(s->sigmas);
    s->timesteps = timesteps;
    s->n_timesteps = n_t;
    s->sigmas = sigmas;
    s->n_sigmas = n_s;
}

/* max(v), or sqrt(max^2 + 1) unless timestep_spacing is linspace/trailing */
static float init_sigma(const qd_scheduler *s, const float *v, int n) {
    float m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > m) m = v[i];
    if (s->cfg.timestep_spacing == QD_SPACING_LINSPACE || s->cfg.timestep_spacing == QD_SPACING_TRAILING)
        return m;
    return sqrtf(m * m + 1.0f);
}

float qd_sched_init_sigma_kdiff(const qd_scheduler *s) { return init_sigma(s, s->sigmas, s->n_sigmas); }

void qd_sched_init_sigma_train(qd_scheduler *s) { s->init_noise_sigma = init_sigma(s, s->train_sigmas, s->n_train); }


qd_status qd_sched_check_n(qd_ctx *ctx, qd_scheduler *s, int64_t n) {
    if (n <= 0) return qd_fail(ctx, QD_ERR_ARG, "%s: step on an empty sample", s->cls->name);
    if (s->n == 0) s->n = n;
    else if (s->n != n)
        return qd_fail(ctx, QD_ERR_ARG, "%s: sample size changed from %lld to %lld without set_timesteps",
                       s->cls->name, (long long)s->n, (long long)n);
    return QD_OK;
}

float *qd_sched_alloc(qd_ctx *ctx, const qd_scheduler *s) {
    return qd_calloc(ctx, (size_t)s->n, sizeof(float));
}

/* ------------------------------------------------------- betas and alphas */

static double alpha_bar_cos(double t) {
    double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

/* betas_for_alpha_bar: python floats, then torch.tensor(..., float32). */
static void betas_for_alpha_bar(int n, int exp_kind, float *out) {
    for (int i = 0; i < n; i++) {
        double t1 = (double)i / n, t2 = (double)(i + 1) / n;
        double b = exp_kind ? 1 - exp(t2 * -12.0) / exp(t1 * -12.0) : 1 - alpha_bar_cos(t2) / alpha_bar_cos(t1);
        out[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

/* torch.cumprod on CPU accumulates float32 in double, rounding each output. */
static void cumprod_f32(const float *a, int n, float *out) {
    double acc = 1;
    for (int i = 0; i < n; i++) {
        acc *= a[i];
        out[i] = (float)acc;
    }
}

/* rescale_zero_terminal_snr (https://arxiv.org/abs/2305.08891, Algorithm 1), float32 ops. */
static void rescale_zero_snr(float *betas, int n, float *work) {
    float *s = work;
    for (int i = 0; i < n; i++) s[i] = 1.0f - betas[i];
    cumprod_f32(s, n, s);
    for (int i = 0; i < n; i++) s[i] = sqrtf(s[i]);
    float s0 = s[0], sT = s[n - 1];
    float scale = s0 / (s0 - sT);
    for (int i = 0; i < n; i++) {
        s[i] -= sT;
        s[i] *= scale;
    }
    for (int i = 0; i < n; i++) s[i] = s[i] * s[i];   /* alphas_bar */
    for (int i = n - 1; i >= 1; i--) betas[i] = 1.0f - s[i] / s[i - 1];
    betas[0] = 1.0f - s[0];
}

static qd_status init_schedule(qd_ctx *ctx, qd_scheduler *s) {
    qd_sched_config *c = &s->cfg;
    const char *cls = s->cls->name;
    int N = c->trained_betas ? c->n_trained_betas : c->num_train_timesteps;
    if (c->trained_betas && N < 2)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: trained_betas needs at least 2 values", cls);
    s->n_train = N;
    s->betas = qd_malloc(ctx, sizeof(float) * (size_t)N);
    s->alphas_cumprod = qd_malloc(ctx, sizeof(float) * (size_t)N);
    s->train_sigmas = qd_malloc(ctx, sizeof(float) * (size_t)N);
    s->log_sigmas = qd_malloc(ctx, sizeof(float) * (size_t)N);
    if (!s->betas || !s->alphas_cumprod || !s->train_sigmas || !s->log_sigmas) return QD_ERR_NOMEM;
    float *b = s->betas;
    if (c->trained_betas) {
        for (int i = 0; i < N; i++) b[i] = (float)c->trained_betas[i];
    } else {
        switch (c->beta_schedule) {
        case QD_BETA_LINEAR:
            qd_torch_linspace_f32(c->beta_start, c->beta_end, N, b);
            break;
        case QD_BETA_SCALED_LINEAR:
            /* "very specific to the latent diffusion model" */
            qd_torch_linspace_f32(pow(c->beta_start, 0.5), pow(c->beta_end, 0.5), N, b);
            for (int i = 0; i < N; i++) b[i] = b[i] * b[i];
            break;
        case QD_BETA_SQUAREDCOS:
            betas_for_alpha_bar(N, 0, b);
            break;
        case QD_BETA_EXP:
            if (s->cls != &qd_sched_heun)
                return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: beta_schedule 'exp' is not supported", cls);
            betas_for_alpha_bar(N, 1, b);
            break;
        case QD_BETA_SIGMOID: {
            if (s->cls != &qd_sched_ddpm)
                return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: beta_schedule 'sigmoid' is not supported", cls);
            /* GeoDiff sigmoid schedule: sigmoid(linspace(-6, 6)) scaled to [start, end] */
            qd_torch_linspace_f32(-6, 6, N, b);
            float range = (float)(c->beta_end - c->beta_start);
            for (int i = 0; i < N; i++) b[i] = 1.0f / (1.0f + expf(-b[i])) * range + (float)c->beta_start;
            break;
        }
        }
    }
    if (c->rescale_betas_zero_snr) rescale_zero_snr(b, N, s->alphas_cumprod);
    for (int i = 0; i < N; i++) s->alphas_cumprod[i] = 1.0f - b[i];
    cumprod_f32(s->alphas_cumprod, N, s->alphas_cumprod);
    if (c->rescale_betas_zero_snr && s->cls->zsnr_tiny_last)
        s->alphas_cumprod[N - 1] = 5.9604644775390625e-08f;   /* 2**-24: first sigma finite */
    for (int i = 0; i < N; i++) {
        s->train_sigmas[i] = qd_sched_sigma_from_ac(s->alphas_cumprod[i]);
        s->log_sigmas[i] = (float)log((double)s->train_sigmas[i]);   /* np.log on float32 */
    }
    /* the class's num_train_timesteps is what spacing uses; trained_betas sets it */
    c->num_train_timesteps = N;
    return QD_OK;
}

/* --------------------------------------------------------------------- API */

qd_status qd_scheduler_new(qd_ctx *ctx, const cJSON *config, const char *class_name,
                           const cJSON *overrides, qd_scheduler **out) {
    *out = NULL;
    if (config && !cJSON_IsObject(config))
        return qd_fail(ctx, QD_ERR_ARG, "scheduler config must be a JSON object");
    if (overrides && !cJSON_IsObject(overrides) && !cJSON_IsNull(overrides))
        return qd_fail(ctx, QD_ERR_ARG, "scheduler overrides must be a JSON object");
    if (!class_name) {
        const cJSON *cn = config ? cJSON_GetObjectItemCaseSensitive(config, "_class_name") : NULL;
        if (!cJSON_IsString(cn))
            return qd_fail(ctx, QD_ERR_FORMAT, "scheduler config has no \"_class_name\"");
        class_name = cn->valuestring;
    }
    const qd_sched_class *cls = NULL;
    for (int i = 0; i < N_CLASSES; i++)
        if (strcmp(registry[i]->name, class_name) == 0) cls = registry[i];
    if (!cls) {
        char known[1024] = "";
        for (int i = 0; i < N_CLASSES; i++) {
            if (i) strncat(known, ", ", sizeof known - strlen(known) - 1);
            strncat(known, registry[i]->name, sizeof known - strlen(known) - 1);
        }
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "unknown scheduler class '%s' (known: %s)", class_name, known);
    }
    qd_scheduler *s = qd_calloc(ctx, 1, sizeof *s);
    if (!s) return QD_ERR_NOMEM;
    s->cls = cls;
    cls->defaults(&s->cfg);
    qd_status st = QD_OK;
    for (int i = 0; cls->keys[i] && st == QD_OK; i++) {
        const char *k = cls->keys[i];
        const cJSON *it = overrides ? cJSON_GetObjectItemCaseSensitive(overrides, k) : NULL;
        if (!it) it = config ? cJSON_GetObjectItemCaseSensitive(config, k) : NULL;
        if (it && !cJSON_IsNull(it)) st = parse_key(ctx, cls->name, &s->cfg, k, it);
    }
    /* diffusers ignores (with a warning) kwargs the class does not take */
    if (st == QD_OK && overrides && cJSON_IsObject(overrides))
        for (const cJSON *it = overrides->child; it; it = it->next)
            if (it->string && !class_accepts(cls, it->string))
                qd_warn(ctx, "%s: ignoring option '%s' (not a parameter of this class)", cls->name, it->string);
    if (st == QD_OK && s->cfg.use_karras_sigmas + s->cfg.use_exponential_sigmas + s->cfg.use_beta_sigmas > 1)
        st = qd_fail(ctx, QD_ERR_ARG,
                     "%s: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be used",
                     cls->name);
    if (st == QD_OK) st = init_schedule(ctx, s);
    if (st == QD_OK) st = cls->init(ctx, s);
    if (st != QD_OK) {
        qd_scheduler_free(s);
        return st;
    }
    *out = s;
    return QD_OK;
}

void qd_scheduler_free(qd_scheduler *s) {
    if (!s) return;
    if (s->cls->free_state) s->cls->free_state(s);
    free(s->cfg.trained_betas);
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->train_sigmas);
    free(s->log_sigmas);
    free(s->timesteps);
    free(s->sigmas);
    free(s->flow_sigmas);
    free(s);
}

int qd_scheduler_is_flow(const qd_scheduler *s, int *dynamic, int *base_seq, int *max_seq,
                         double *base_shift, double *max_shift) {
    if (s->cls != &qd_sched_flow_euler) return 0;
    if (dynamic) *dynamic = s->cfg.use_dynamic_shifting;
    if (base_seq) *base_seq = s->cfg.base_image_seq_len;
    if (max_seq) *max_seq = s->cfg.max_image_seq_len;
    if (base_shift) *base_shift = s->cfg.base_shift;
    if (max_shift) *max_shift = s->cfg.max_shift;
    return 1;
}

qd_status qd_scheduler_set_flow_inputs(qd_ctx *ctx, qd_scheduler *s, int has_mu, double mu,
                                       const float *sigmas, int n) {
    s->has_flow_mu = has_mu;
    s->flow_mu = mu;
    free(s->flow_sigmas);
    s->flow_sigmas = NULL;
    s->n_flow_sigmas = 0;
    if (sigmas && n > 0) {
        s->flow_sigmas = qd_malloc(ctx, sizeof(float) * (size_t)n);
        if (!s->flow_sigmas) return QD_ERR_NOMEM;
        memcpy(s->flow_sigmas, sigmas, sizeof(float) * (size_t)n);
        s->n_flow_sigmas = n;
    }
    return QD_OK;
}

const char *qd_scheduler_class(const qd_scheduler *s) { return s->cls->name; }

const char *qd_scheduler_prediction_type(const qd_scheduler *s) {
    switch (s->cfg.prediction_type) {
    case QD_PRED_V: return "v_prediction";
    case QD_PRED_SAMPLE: return "sample";
    default: return "epsilon";
    }
}

qd_status qd_scheduler_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int num_inference_steps) {
    if (num_inference_steps < 1 || num_inference_steps > s->cfg.num_train_timesteps)
        return bad_steps(ctx, s, num_inference_steps);
    s->n = 0;
    s->next_step = 0;
    QD_TRY(s->cls->set_timesteps(ctx, s, num_inference_steps));
    return QD_OK;
}

int qd_scheduler_len(const qd_scheduler *s) { return s->n_timesteps; }

float qd_scheduler_timestep(const qd_scheduler *s, int i) {
    return i >= 0 && i < s->n_timesteps ? s->timesteps[i] : 0.0f;
}

float qd_scheduler_init_noise_sigma(const qd_scheduler *s) { return s->init_noise_sigma; }

const float *qd_scheduler_sigmas(const qd_scheduler *s, int *n) {
    if (n) *n = s->n_sigmas;
    return s->sigmas;
}

const float *qd_scheduler_alphas_cumprod(const qd_scheduler *s, int *n) {
    if (n) *n = s->n_train;
    return s->alphas_cumprod;
}

float qd_scheduler_model_sigma(const qd_scheduler *s, int i) {
    if (i < 0 || i >= s->n_timesteps) return 0.0f;
    if (s->cls->model_sigma) return s->cls->model_sigma(s, i);
    if (s->sigmas && i < s->n_sigmas) return s->sigmas[i];
    int t = (int)s->timesteps[i];
    return t >= 0 && t < s->n_train ? qd_sched_sigma_from_ac(s->alphas_cumprod[t]) : 0.0f;
}

void qd_scheduler_scale_model_input(qd_scheduler *s, int i, float *x, int64_t n) {
    if (!s->cls->model_sigma || i < 0 || i >= s->n_timesteps) return;
    /* sample / ((sigma**2 + 1) ** 0.5) with a float32 0-dim sigma, as torch */
    float sigma = s->cls->model_sigma(s, i);
    float d = sqrtf(sigma * sigma + 1.0f);
    for (int64_t j = 0; j < n; j++) x[j] = x[j] / d;
}

int qd_scheduler_order(const qd_scheduler *s) {
    return s->cls == &qd_sched_heun || s->cls == &qd_sched_kdpm2 || s->cls == &qd_sched_kdpm2_ancestral ? 2 : 1;
}

qd_status qd_scheduler_set_begin(qd_ctx *ctx, qd_scheduler *s, int i) {
    if (s->n_timesteps <= 0) return qd_fail(ctx, QD_ERR_ARG, "%s: set_begin before set_timesteps", s->cls->name);
    if (i < 0 || i >= s->n_timesteps || s->next_step != 0)
        return qd_fail(ctx, QD_ERR_ARG, "%s: cannot begin at step %d of %d", s->cls->name, i, s->n_timesteps);
    s->next_step = i;
    return QD_OK;
}

void qd_scheduler_add_noise(const qd_scheduler *s, int i, const float *x0, const float *noise, int64_t n,
                            float *out) {
    if (s->cls == &qd_sched_flow_euler) {   /* FlowMatchEulerDiscreteScheduler.scale_noise */
        float sigma = s->sigmas[i];
        for (int64_t j = 0; j < n; j++) out[j] = sigma * noise[j] + (1.0f - sigma) * x0[j];
    } else if (s->cls->model_sigma) {       /* Euler/LMS/Heun/KDPM2: sigmas[begin_index] */
        float sigma = s->sigmas[i];
        for (int64_t j = 0; j < n; j++) out[j] = x0[j] + noise[j] * sigma;
    } else if (s->sigmas) {                 /* DPM-Solver, DEIS, UniPC: _sigma_to_alpha_sigma_t */
        float sigma = s->sigmas[i], a = 1.0f / sqrtf(sigma * sigma + 1.0f), sg = sigma * a;
        for (int64_t j = 0; j < n; j++) out[j] = a * x0[j] + sg * noise[j];
    } else {                                /* DDIM/DDPM/PNDM: alphas_cumprod[timestep] */
        int t = (int)s->timesteps[i];
        float ac = t >= 0 && t < s->n_train ? s->alphas_cumprod[t] : 1.0f;
        float a = sqrtf(ac), b = sqrtf(1.0f - ac);
        for (int64_t j = 0; j < n; j++) out[j] = a * x0[j] + b * noise[j];
    }
}

qd_status qd_scheduler_step(qd_ctx *ctx, qd_scheduler *s, int i, const float *model_output,
                            float *sample, int64_t batch, int64_t per_item, qd_rng *rng) {
    if (s->n_timesteps <= 0)
        return qd_fail(ctx, QD_ERR_ARG, "%s: step before set_timesteps", s->cls->name);
    if (i < 0 || i >= s->n_timesteps)
        return qd_fail(ctx, QD_ERR_ARG, "%s: step %d out of range (0..%d)", s->cls->name, i, s->n_timesteps - 1);
    if (i != s->next_step)
        return qd_fail(ctx, QD_ERR_ARG, "%s: step %d called, expected step %d (steps run in order)",
                       s->cls->name, i, s->next_step);
    if (batch <= 0 || per_item <= 0 || batch > INT64_MAX / per_item)
        return qd_fail(ctx, QD_ERR_ARG, "%s: bad sample shape %lld x %lld", s->cls->name, (long long)batch,
                       (long long)per_item);
    QD_TRY(qd_sched_check_n(ctx, s, batch * per_item));
    QD_TRY(s->cls->step(ctx, s, i, model_output, sample, batch, per_item, rng));
    s->next_step++;
    return QD_OK;
}
