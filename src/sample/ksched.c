/* Model sampling (ComfyUI's model_sampling: sigma <-> timestep) and the
 * k-sampler noise schedules, computed in float64. */
#include "sample/ksched.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------- model sampling */

static qd_status ms_alloc(qd_ctx *ctx, qd_model_sampling *ms, int n) {
    ms->n = n;
    ms->sigmas = qd_malloc(ctx, sizeof(double) * (size_t)n);
    ms->log_sigmas = qd_malloc(ctx, sizeof(double) * (size_t)n);
    ms->log_sigmas_f = qd_malloc(ctx, sizeof(float) * (size_t)n);
    if (!ms->sigmas || !ms->log_sigmas || !ms->log_sigmas_f) {
        qd_model_sampling_free(ms);
        return QD_ERR_NOMEM;
    }
    return QD_OK;
}

qd_status qd_model_sampling_discrete(qd_ctx *ctx, qd_model_sampling *ms, const float *ac, int n, int v_pred) {
    memset(ms, 0, sizeof *ms);
    if (!ac || n < 2) return qd_fail(ctx, QD_ERR_ARG, "model sampling: needs alphas_cumprod (got %d values)", n);
    QD_TRY(ms_alloc(ctx, ms, n));
    ms->kind = v_pred ? QD_MS_V : QD_MS_EPS;
    for (int i = 0; i < n; i++) {
        float s = qd_sched_sigma_from_ac(ac[i]);   /* float32, as the schedulers' training sigmas */
        if (!(s > 0) || !isfinite(s)) {
            qd_model_sampling_free(ms);
            return qd_fail(ctx, QD_ERR_ARG, "model sampling: alphas_cumprod[%d] = %g gives no valid sigma", i,
                           (double)ac[i]);
        }
        ms->sigmas[i] = s;
        ms->log_sigmas_f[i] = (float)log((double)s);
        ms->log_sigmas[i] = log((double)s);
    }
    for (int i = 1; i < n; i++)
        if (ms->sigmas[i] < ms->sigmas[i - 1]) {
            qd_model_sampling_free(ms);
            return qd_fail(ctx, QD_ERR_ARG, "model sampling: sigmas must grow with the timestep (index %d)", i);
        }
    return QD_OK;
}

static double flow_shifted(const qd_model_sampling *ms, double tau) {
    if (ms->flux_shift) return exp(ms->shift) / (exp(ms->shift) + (1 / tau - 1));
    if (ms->shift == 1.0) return tau;
    return ms->shift * tau / (1 + (ms->shift - 1) * tau);
}

qd_status qd_model_sampling_flow(qd_ctx *ctx, qd_model_sampling *ms, int flux_shift, double shift) {
    memset(ms, 0, sizeof *ms);
    if (!isfinite(shift) || (!flux_shift && shift <= 0))
        return qd_fail(ctx, QD_ERR_ARG, "model sampling: flow shift must be finite%s (got %g)",
                       flux_shift ? "" : " and > 0", shift);
    int n = flux_shift ? 10000 : 1000;
    QD_TRY(ms_alloc(ctx, ms, n));
    ms->kind = QD_MS_FLOW;
    ms->flux_shift = flux_shift;
    ms->shift = shift;
    ms->multiplier = flux_shift ? 1 : 1000;
    for (int i = 0; i < n; i++) {
        ms->sigmas[i] = flow_shifted(ms, (double)(i + 1) / n);
        ms->log_sigmas[i] = log(ms->sigmas[i]);
        ms->log_sigmas_f[i] = (float)ms->log_sigmas[i];
    }
    return QD_OK;
}

void qd_model_sampling_free(qd_model_sampling *ms) {
    if (!ms) return;
    free(ms->sigmas);
    free(ms->log_sigmas);
    free(ms->log_sigmas_f);
    ms->sigmas = ms->log_sigmas = NULL;
    ms->log_sigmas_f = NULL;
}

double qd_ms_sigma(const qd_model_sampling *ms, double t) {
    if (ms->kind == QD_MS_FLOW) return flow_shifted(ms, t / ms->multiplier);
    t = (float)t;   /* k-diffusion's t_to_sigma and ComfyUI's sigma() take float32 timesteps */
    if (t < 0) t = 0;
    if (t > ms->n - 1) t = ms->n - 1;
    int lo = (int)floor(t), hi = (int)ceil(t);
    double w = t - lo;
    return exp((1 - w) * ms->log_sigmas[lo] + w * ms->log_sigmas[hi]);
}

double qd_ms_timestep(const qd_model_sampling *ms, double sigma) {
    if (ms->kind == QD_MS_FLOW) return sigma * ms->multiplier;
    double ls = log(sigma), best = INFINITY;
    int arg = 0;
    for (int i = 0; i < ms->n; i++) {   /* argmin |log sigma - log_sigmas| (first on ties) */
        double d = fabs(ls - ms->log_sigmas[i]);
        if (d < best) { best = d; arg = i; }
    }
    return arg;
}

double qd_ms_percent_to_sigma(const qd_model_sampling *ms, double percent) {
    if (percent <= 0) return ms->kind == QD_MS_FLOW ? 1.0 : 999999999.9;
    if (percent >= 1) return 0.0;
    if (ms->kind == QD_MS_FLOW) return flow_shifted(ms, 1 - percent);
    return qd_ms_sigma(ms, (1 - percent) * 999.0);
}

/* ---------------------------------------------------------------- schedules */

void qd_ksched_opts_default(qd_ksched_opts *o) {
    memset(o, 0, sizeof *o);
    o->sigma_min = o->sigma_max = o->rho = NAN;
    o->vp_beta_d = 19.9;
    o->vp_beta_min = 0.1;
    o->vp_eps_s = 1e-3;
    o->threshold_noise = 0.025;
}

typedef struct {
    const char *name, *about;
} sched_info;

static const sched_info infos[] = {
    {"simple", "evenly spaced entries of the model's sigma table"},
    {"sgm_uniform", "normal over steps+1 timesteps, the last dropped (SGM/LCM style)"},
    {"karras", "Karras et al. 2022: uniform in sigma^(1/rho), rho 7"},
    {"exponential", "uniform in log sigma from sigma_max to sigma_min"},
    {"ddim_uniform", "every (table size / steps)-th table sigma, as DDIM's uniform skip"},
    {"beta", "timesteps at Beta(0.6, 0.6) quantiles (arXiv 2407.12173)"},
    {"normal", "timesteps uniform from t(sigma_max) to t(sigma_min), mapped to sigmas"},
    {"linear_quadratic", "Mochi: linear to 0.025 for half the steps, then quadratic"},
    {"kl_optimal", "tan of a linear ramp from atan(sigma_max) to atan(sigma_min) (AYS/KL-optimal)"},
    {"polyexponential", "polynomial (rho 1) in log sigma from sigma_max to sigma_min"},
    {"vp", "continuous VP-SDE schedule (beta_d 19.9, beta_min 0.1, eps_s 1e-3)"},
};
#define N_SCHED ((int)(sizeof infos / sizeof infos[0]))

const char *const *qd_ksched_names(void) {
    static const char *names[N_SCHED + 1];
    if (!names[0])
        for (int i = 0; i < N_SCHED; i++) names[i] = infos[i].name;
    return names;
}

const char *qd_ksched_about(const char *name) {
    for (int i = 0; name && i < N_SCHED; i++)
        if (strcmp(infos[i].name, name) == 0) return infos[i].about;
    return NULL;
}

/* torch.linspace in float64: the first half counts up from start, the rest
 * down from end (numpy's differs in the last bits of the second half). */
static double torch_linspace(double start, double end, int steps, int i) {
    if (steps == 1) return start;
    double step = (end - start) / (steps - 1);
    return i < steps / 2 ? start + step * i : end - step * (steps - 1 - i);
}

static double pick(double v, double fallback) { return isnan(v) ? fallback : v; }

/* ComfyUI's normal_scheduler (sgm: sgm_uniform). Returns whether to append the zero. */
static int normal(const qd_model_sampling *ms, int steps, int sgm, double *out, int *n_out) {
    double start = qd_ms_timestep(ms, qd_ms_sigma_max(ms)), end = qd_ms_timestep(ms, qd_ms_sigma_min(ms));
    int append_zero = 1, n = steps, points = steps;
    if (sgm) {
        points = steps + 1;   /* linspace(start, end, steps + 1)[:-1] */
    } else if (fabs(qd_ms_sigma(ms, end)) <= 1e-5) {   /* math.isclose(sigma(end), 0, abs_tol=1e-5) */
        n = points = steps + 1;
        append_zero = 0;
    }
    for (int i = 0; i < n; i++) out[i] = qd_ms_sigma(ms, torch_linspace(start, end, points, i));
    *n_out = n;
    return append_zero;
}

qd_status qd_ksched_sigmas(qd_ctx *ctx, const char *name, const qd_model_sampling *ms, int steps,
                           const qd_ksched_opts *o, double **out_p, int *n_out) {
    *out_p = NULL;
    *n_out = 0;
    if (!qd_ksched_about(name)) {
        char known[512] = "";
        for (int i = 0; i < N_SCHED; i++) {
            if (i) strncat(known, ", ", sizeof known - strlen(known) - 1);
            strncat(known, infos[i].name, sizeof known - strlen(known) - 1);
        }
        return qd_fail(ctx, QD_ERR_ARG, "unknown schedule '%s' (known: %s)", name ? name : "(null)", known);
    }
    if (steps < 1 || steps > 100000) return qd_fail(ctx, QD_ERR_ARG, "schedule: steps must be 1..100000 (got %d)", steps);
    qd_ksched_opts defaults;
    if (!o) {
        qd_ksched_opts_default(&defaults);
        o = &defaults;
    }
    /* ddim_uniform can give up to the table size + 1 values */
    size_t cap = (size_t)steps + 2 + (size_t)(ms ? ms->n : 0);
    double *out = qd_malloc(ctx, sizeof(double) * cap);
    if (!out) return QD_ERR_NOMEM;
    double smin = pick(o->sigma_min, ms ? qd_ms_sigma_min(ms) : NAN);
    double smax = pick(o->sigma_max, ms ? qd_ms_sigma_max(ms) : NAN);
    int needs_ms = !strcmp(name, "simple") || !strcmp(name, "sgm_uniform") || !strcmp(name, "ddim_uniform") ||
                   !strcmp(name, "beta") || !strcmp(name, "normal") || !strcmp(name, "linear_quadratic");
    int needs_range = !needs_ms && strcmp(name, "vp") != 0;
    qd_status st = QD_OK;
    if (needs_ms && !ms) st = qd_fail(ctx, QD_ERR_ARG, "schedule %s needs the model's sigma table", name);
    else if (needs_range && !(smin > 0 && smax > smin))
        st = qd_fail(ctx, QD_ERR_ARG, "schedule %s: needs 0 < sigma_min < sigma_max (got %g, %g)", name, smin, smax);
    int n = 0, append_zero = 1;
    if (st != QD_OK) {
        /* nothing */
    } else if (!strcmp(name, "karras")) {   /* k-diffusion get_sigmas_karras */
        double rho = pick(o->rho, 7.0), lo = pow(smin, 1 / rho), hi = pow(smax, 1 / rho);
        qd_np_linspace(0, 1, steps, out);
        for (int i = 0; i < steps; i++) out[i] = pow(hi + out[i] * (lo - hi), rho);
        n = steps;
    } else if (!strcmp(name, "exponential")) {
        qd_sigmas_exponential(smin, smax, steps, out);
        n = steps;
    } else if (!strcmp(name, "polyexponential")) {
        double rho = pick(o->rho, 1.0);
        for (int i = 0; i < steps; i++) {
            double ramp = pow(torch_linspace(1, 0, steps, i), rho);
            out[i] = exp(ramp * (log(smax) - log(smin)) + log(smin));
        }
        n = steps;
    } else if (!strcmp(name, "vp")) {
        for (int i = 0; i < steps; i++) {
            double t = torch_linspace(1, o->vp_eps_s, steps, i);
            out[i] = sqrt(expm1(o->vp_beta_d * t * t / 2 + o->vp_beta_min * t));
        }
        n = steps;
    } else if (!strcmp(name, "kl_optimal")) {   /* AUTOMATIC1111 PR 15608 */
        for (int i = 0; i < steps; i++) {
            double a = steps > 1 ? (double)i / (steps - 1) : 0;
            out[i] = tan(a * atan(smin) + (1 - a) * atan(smax));
        }
        n = steps;
    } else if (!strcmp(name, "normal") || !strcmp(name, "sgm_uniform")) {
        append_zero = normal(ms, steps, name[0] == 's', out, &n);
    } else if (!strcmp(name, "simple")) {
        double ss = (double)ms->n / steps;
        for (int x = 0; x < steps; x++) out[x] = ms->sigmas[ms->n - 1 - (int)(x * ss)];
        n = steps;
    } else if (!strcmp(name, "ddim_uniform")) {
        /* table entries 1, 1 + ss, ... reversed, then 0 (ComfyUI's ddim_scheduler; when
         * the first entry is already ~0 it stands in for the zero) */
        int s_steps = steps;
        if (fabs(ms->sigmas[1]) <= 1e-5) { s_steps++; append_zero = 0; }
        int ss = ms->n / s_steps > 1 ? ms->n / s_steps : 1, cnt = 0;
        for (int x = 1; x < ms->n; x += ss) cnt++;
        for (int x = 1 + (cnt - 1) * ss; x >= 1; x -= ss) out[n++] = ms->sigmas[x];
    } else if (!strcmp(name, "beta")) {
        /* ts = 1 - linspace(0, 1, steps, endpoint=False); t = rint(ppf(ts) * (N - 1));
         * repeated timesteps are kept once. qd_sigmas_beta(0, 1, steps + 1) gives
         * ppf(1 - i/steps) for i = 0..steps. */
        double *ppf = qd_malloc(ctx, sizeof(double) * (size_t)(steps + 1));
        if (!ppf) {
            st = QD_ERR_NOMEM;
        } else {
            qd_sigmas_beta(0, 1, steps + 1, ppf);
            double last = -1;
            for (int i = 0; i < steps; i++) {
                /* Beta(0.6, 0.6) is symmetric: its median is exactly 0.5 (scipy's too), where
                 * the bisection lands an ulp below and rint(0.5 * 999) would flip */
                double q = 2 * i == steps ? 0.5 : ppf[i];
                double t = qd_np_round(q * (ms->n - 1));
                if (t != last) out[n++] = ms->sigmas[(int)t];
                last = t;
            }
            free(ppf);
        }
    } else if (!strcmp(name, "linear_quadratic")) {   /* genmoai/models (Mochi) */
        if (steps == 1) {
            out[0] = 1.0;
        } else {
            int ls = o->linear_steps > 0 ? o->linear_steps : steps / 2;
            double tn = o->threshold_noise;
            if (ls >= steps) {
                st = qd_fail(ctx, QD_ERR_ARG, "linear_quadratic: linear_steps %d must be below steps %d", ls, steps);
            } else {
                double diff = ls - tn * steps;
                int qs = steps - ls;
                double qc = diff / ((double)ls * qs * qs), lc = tn / ls - 2 * diff / ((double)qs * qs),
                       cst = qc * ((double)ls * ls);
                for (int i = 0; i < ls; i++) out[i] = 1.0 - i * tn / ls;
                for (int i = ls; i < steps; i++) out[i] = 1.0 - (qc * ((double)i * i) + lc * i + cst);
            }
        }
        for (int i = 0; i < steps; i++) out[i] *= qd_ms_sigma_max(ms);
        n = steps;
    }
    if (st != QD_OK) {
        free(out);
        return st;
    }
    if (append_zero) out[n++] = 0;
    *out_p = out;
    *n_out = n;
    return QD_OK;
}
