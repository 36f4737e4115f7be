/* DPM-Solver k-samplers: dpm_2, dpm_2_ancestral (and its flow form), and the
 * DPM-Solver class of k-diffusion behind dpm_fast and dpm_adaptive
 * (arXiv 2206.00927; time t = -log sigma, eps = (x - x0) / sigma). */
#include "sample/ksampler.h"

#include <math.h>
#include <string.h>

/* Midpoint of log sigma, as torch's sigma.log().lerp(next.log(), 0.5).exp(). */
static double log_midpoint(double a, double b) { return exp(qd_ks_lerp(log(a), log(b), 0.5)); }

/* x += d * dt1 to the midpoint, evaluate there, then the full step with the
 * midpoint derivative: x += d_mid * dt2. */
static qd_status midpoint_step(qd_ks *k, double sigma, double sigma_to, const double *den, double *x2,
                               double *den2) {
    double *x = k->x, mid = log_midpoint(sigma, sigma_to), dt1 = mid - sigma, dt2 = sigma_to - sigma;
    for (int64_t j = 0; j < k->n; j++) x2[j] = x[j] + (x[j] - den[j]) / sigma * dt1;
    QD_TRY(qd_ks_denoise(k, x2, mid, den2));
    for (int64_t j = 0; j < k->n; j++) x[j] += (x2[j] - den2[j]) / mid * dt2;
    return QD_OK;
}

qd_status qd_ks_dpm_2(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *den2 = qd_ks_vec(k), *eps = qd_ks_vec(k);
    if (!den || !x2 || !den2 || !eps) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        double sh;
        QD_TRY(qd_ks_churn(k, i, &sh, eps));
        QD_TRY(qd_ks_denoise(k, x, sh, den));
        if (s[i + 1] == 0) {
            double dt = s[i + 1] - sh;
            for (int64_t j = 0; j < k->n; j++) x[j] += (x[j] - den[j]) / sh * dt;
        } else {
            QD_TRY(midpoint_step(k, sh, s[i + 1], den, x2, den2));
        }
    }
    return QD_OK;
}

qd_status qd_ks_dpm_2_ancestral(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *den2 = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !x2 || !den2 || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas, eta = k->eta, s_noise = k->o->s_noise;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double down, up, alpha_next = 1, alpha_down = 1;
        if (k->o->flow) {   /* ComfyUI's sample_dpm_2_ancestral_RF, as euler_ancestral's flow form */
            down = s[i + 1] * (1 + (s[i + 1] / s[i] - 1) * eta);
            alpha_next = 1 - s[i + 1];
            alpha_down = 1 - down;
            /* fmax: at eta 0 the difference is 0 up to rounding, and sqrt(-tiny) is NaN */
            up = eta > 0 ? sqrt(fmax(0, s[i + 1] * s[i + 1] - down * down * alpha_next * alpha_next /
                                                                 (alpha_down * alpha_down)))
                         : 0;
        } else {
            qd_ks_ancestral_step(s[i], s[i + 1], eta, &down, &up);
        }
        if (down == 0) {
            double dt = down - s[i];
            for (int64_t j = 0; j < k->n; j++) x[j] += (x[j] - den[j]) / s[i] * dt;
            continue;
        }
        QD_TRY(midpoint_step(k, s[i], down, den, x2, den2));
        QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
        double f = alpha_next / alpha_down;
        for (int64_t j = 0; j < k->n; j++) x[j] = f * x[j] + nz[j] * s_noise * up;
    }
    return QD_OK;
}

/* ---------------------------------------------------------------- DPM-Solver */

typedef struct {
    qd_ks *k;
    double *eps, *eps_r1, *eps_r2, *u, *x_low, *x_high, *x_prev, *nz;
    int have_eps, have_r1;   /* eps cache of one step: model calls at t and t + r1*h */
} dpms;

static double sig(double t) { return exp(-t); }
static double tof(double sigma) { return -log(sigma); }

/* eps(x, t) = (x - D(x, sigma(t))) / sigma(t), into out (u: scratch for D). */
static qd_status eps_at(dpms *d, const double *x, double t, double *out) {
    double sg = sig(t);
    QD_TRY(qd_ks_denoise(d->k, x, sg, d->u));
    for (int64_t j = 0; j < d->k->n; j++) out[j] = (x[j] - d->u[j]) / sg;
    return QD_OK;
}

static qd_status step1(dpms *d, const double *x, double t, double tn, double *out) {
    if (!d->have_eps) { QD_TRY(eps_at(d, x, t, d->eps)); d->have_eps = 1; }
    double h = tn - t, c = sig(tn) * expm1(h);
    for (int64_t j = 0; j < d->k->n; j++) out[j] = x[j] - c * d->eps[j];
    return QD_OK;
}

/* u1 = x - sigma(s1) * expm1(r1 h) * eps, and eps there (cached per step). */
static qd_status eps_r1_at(dpms *d, const double *x, double t, double h, double r1, double *u1) {
    double s1 = t + r1 * h, c = sig(s1) * expm1(r1 * h);
    for (int64_t j = 0; j < d->k->n; j++) u1[j] = x[j] - c * d->eps[j];
    if (!d->have_r1) { QD_TRY(eps_at(d, u1, s1, d->eps_r1)); d->have_r1 = 1; }
    return QD_OK;
}

static qd_status step2(dpms *d, const double *x, double t, double tn, double r1, double *out) {
    if (!d->have_eps) { QD_TRY(eps_at(d, x, t, d->eps)); d->have_eps = 1; }
    double h = tn - t;
    QD_TRY(eps_r1_at(d, x, t, h, r1, out));
    double a = sig(tn) * expm1(h), b = sig(tn) / (2 * r1) * expm1(h);
    for (int64_t j = 0; j < d->k->n; j++) out[j] = x[j] - a * d->eps[j] - b * (d->eps_r1[j] - d->eps[j]);
    return QD_OK;
}

static qd_status step3(dpms *d, const double *x, double t, double tn, double *out) {
    const double r1 = 1.0 / 3, r2 = 2.0 / 3;
    if (!d->have_eps) { QD_TRY(eps_at(d, x, t, d->eps)); d->have_eps = 1; }
    double h = tn - t, s2 = t + r2 * h;
    QD_TRY(eps_r1_at(d, x, t, h, r1, out));
    double a2 = sig(s2) * expm1(r2 * h), b2 = sig(s2) * (r2 / r1) * (expm1(r2 * h) / (r2 * h) - 1);
    for (int64_t j = 0; j < d->k->n; j++) out[j] = x[j] - a2 * d->eps[j] - b2 * (d->eps_r1[j] - d->eps[j]);
    QD_TRY(eps_at(d, out, s2, d->eps_r2));
    double a = sig(tn) * expm1(h), b = sig(tn) / r2 * (expm1(h) / h - 1);
    for (int64_t j = 0; j < d->k->n; j++) out[j] = x[j] - a * d->eps[j] - b * (d->eps_r2[j] - d->eps[j]);
    return QD_OK;
}

static qd_status dpms_init(qd_ks *k, dpms *d) {
    memset(d, 0, sizeof *d);
    d->k = k;
    d->eps = qd_ks_vec(k); d->eps_r1 = qd_ks_vec(k); d->eps_r2 = qd_ks_vec(k); d->u = qd_ks_vec(k);
    d->x_low = qd_ks_vec(k); d->x_high = qd_ks_vec(k); d->x_prev = qd_ks_vec(k); d->nz = qd_ks_vec(k);
    if (!d->eps || !d->eps_r1 || !d->eps_r2 || !d->u || !d->x_low || !d->x_high || !d->x_prev || !d->nz)
        return QD_ERR_NOMEM;
    return QD_OK;
}

/* ComfyUI runs dpm_fast/dpm_adaptive from sigmas[0] to the last non-zero sigma. */
static qd_status solver_range(qd_ks *k, const char *name, double *smin, double *smax) {
    const double *s = k->sigmas;
    *smax = s[0];
    *smin = s[k->n_steps] > 0 ? s[k->n_steps] : k->n_steps >= 2 ? s[k->n_steps - 1] : 0;
    if (!(*smin > 0) || *smin >= *smax)
        return qd_fail(k->ctx, QD_ERR_ARG, "%s: needs sigma_min > 0 below sigma_max (got %g, %g; 2+ steps)", name,
                       *smin, *smax);
    return QD_OK;
}

/* Ancestral split of the interval [t, tn] (eta > 0): where the ODE step ends and
 * how much noise to add back. */
static void ancestral_t(double t, double tn, double t_end, double eta, double *tn_, double *su) {
    double sd, up;
    qd_ks_ancestral_step(sig(t), sig(tn), eta, &sd, &up);
    *tn_ = tof(sd) < t_end ? tof(sd) : t_end;
    *su = sqrt(sig(tn) * sig(tn) - sig(*tn_) * sig(*tn_));
}

/* DPM-Solver-fast: the n model calls spread as m = n/3 + 1 steps of order 3,
 * ending with orders [2, 1] or [n % 3], uniform in t. */
qd_status qd_ks_dpm_fast(qd_ks *k) {
    double smin, smax;
    QD_TRY(solver_range(k, "dpm_fast", &smin, &smax));
    dpms d;
    QD_TRY(dpms_init(k, &d));
    int nfe = k->n_steps, m = nfe / 3 + 1;   /* m steps: orders 3, ..., 3, then [2, 1] or [nfe % 3] */
    double t_start = tof(smax), t_end = tof(smin), eta = k->eta, step = (t_end - t_start) / m;
    for (int i = 0; i < m; i++) {
        /* torch.linspace(t_start, t_end, m + 1)[i], [i + 1] */
        double t = i < (m + 1) / 2 ? t_start + step * i : t_end - step * (m - i);
        double tn = i + 1 < (m + 1) / 2 ? t_start + step * (i + 1) : t_end - step * (m - i - 1);
        int order = nfe % 3 == 0 ? (i < m - 2 ? 3 : i == m - 2 ? 2 : 1) : (i < m - 1 ? 3 : nfe % 3);
        double tn_ = tn, su = 0;
        if (eta > 0) ancestral_t(t, tn, t_end, eta, &tn_, &su);
        d.have_eps = d.have_r1 = 0;
        double *out = d.x_high;
        if (order == 1) QD_TRY(step1(&d, k->x, t, tn_, out));
        else if (order == 2) QD_TRY(step2(&d, k->x, t, tn_, 0.5, out));
        else QD_TRY(step3(&d, k->x, t, tn_, out));
        memcpy(k->x, out, sizeof(double) * (size_t)k->n);
        if (su > 0) {
            QD_TRY(qd_ks_noise(k, sig(t), sig(tn), d.nz));
            for (int64_t j = 0; j < k->n; j++) k->x[j] += su * k->o->s_noise * d.nz[j];
        }
    }
    return QD_OK;
}

/* DPM-Solver-12/23 with a PID step-size controller (k-diffusion's
 * PIDStepSizeController; with the defaults, an I controller). */
qd_status qd_ks_dpm_adaptive(qd_ks *k) {
    const qd_ks_opts *o = k->o;
    double smin, smax;
    QD_TRY(solver_range(k, "dpm_adaptive", &smin, &smax));
    int order = o->order ? o->order : 3;
    if (order != 2 && order != 3) return qd_fail(k->ctx, QD_ERR_ARG, "dpm_adaptive: order must be 2 or 3");
    dpms d;
    QD_TRY(dpms_init(k, &d));
    double eta = k->eta, t_start = tof(smax), t_end = tof(smin), s = t_start;
    double h = fabs(o->h_init), div = eta > 0 ? 1.5 : order;
    double b1 = (o->pcoeff + o->icoeff + o->dcoeff) / div, b2 = -(o->pcoeff + 2 * o->dcoeff) / div,
           b3 = o->dcoeff / div;
    double errs[3] = {0, 0, 0};
    int have_errs = 0;
    memcpy(d.x_prev, k->x, sizeof(double) * (size_t)k->n);
    for (int attempt = 0; s < t_end - 1e-5; attempt++) {
        if (attempt >= 100000 || !(h > 0))
            return qd_fail(k->ctx, QD_ERR_ARG, "dpm_adaptive: no progress (step size %g after %d attempts)", h, attempt);
        double t = s + h < t_end ? s + h : t_end, t_ = t, su = 0;
        if (eta > 0) ancestral_t(s, t, t_end, eta, &t_, &su);
        d.have_eps = d.have_r1 = 0;
        if (order == 2) {
            QD_TRY(step1(&d, k->x, s, t_, d.x_low));
            QD_TRY(step2(&d, k->x, s, t_, 0.5, d.x_high));
        } else {
            QD_TRY(step2(&d, k->x, s, t_, 1.0 / 3, d.x_low));
            QD_TRY(step3(&d, k->x, s, t_, d.x_high));
        }
        double sum = 0;
        for (int64_t j = 0; j < k->n; j++) {
            double a = fabs(d.x_low[j]), b = fabs(d.x_prev[j]);
            double delta = o->rtol * (a > b ? a : b);
            if (delta < o->atol) delta = o->atol;
            double e = (d.x_low[j] - d.x_high[j]) / delta;
            sum += e * e;
        }
        double error = sqrt(sum) / sqrt((double)k->n);
        if (!isfinite(error)) return qd_fail(k->ctx, QD_ERR_ARG, "dpm_adaptive: the error estimate is not finite");
        double inv = 1 / (error + 1e-8);
        if (!have_errs) { errs[0] = errs[1] = errs[2] = inv; have_errs = 1; }
        errs[0] = inv;
        double factor = pow(errs[0], b1) * pow(errs[1], b2) * pow(errs[2], b3);
        factor = 1 + atan(factor - 1);
        int accept = factor >= o->accept_safety;
        if (accept) { errs[2] = errs[1]; errs[1] = errs[0]; }
        h *= factor;
        if (accept) {
            memcpy(d.x_prev, d.x_low, sizeof(double) * (size_t)k->n);
            memcpy(k->x, d.x_high, sizeof(double) * (size_t)k->n);
            if (su > 0) {
                QD_TRY(qd_ks_noise(k, sig(s), sig(t), d.nz));
                for (int64_t j = 0; j < k->n; j++) k->x[j] += su * o->s_noise * d.nz[j];
            }
            s = t;
        }
    }
    return QD_OK;
}
