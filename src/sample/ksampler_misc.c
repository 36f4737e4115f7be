/* The other k-samplers of ComfyUI: ddpm, lcm, ipndm / ipndm_v, deis,
 * res_multistep (+ ancestral, CFG++), er_sde, seeds_2 / exp_heun_2_x0(_sde),
 * seeds_3. */
#include "sample/ksampler.h"

#include <math.h>
#include <stdlib.h>

/* DDPM posterior step in the VP-normalised space x / sqrt(1 + sigma^2)
 * (ComfyUI's generic_step_sampler + DDPMSampler_step). */
qd_status qd_ks_ddpm(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double sg = s[i], sp = s[i + 1];
        double ac = 1 / (sg * sg + 1), acp = 1 / (sp * sp + 1), alpha = ac / acp;
        double a = sqrt(1 / alpha), b = (1 - alpha) / sqrt(1 - ac), in = sqrt(1 + sg * sg);
        double c = sp > 0 ? sqrt((1 - alpha) * (1 - acp) / (1 - ac)) : 0, out = sp != 0 ? sqrt(1 + sp * sp) : 1;
        if (sp > 0) QD_TRY(qd_ks_noise(k, sg, sp, nz));
        for (int64_t j = 0; j < k->n; j++) {
            double eps = (x[j] - den[j]) / sg;
            double mu = a * (x[j] / in - b * eps);
            if (sp > 0) mu += c * nz[j];
            x[j] = mu * out;
        }
    }
    return QD_OK;
}

/* Latent consistency: take x0, re-noise it to the next sigma as the model
 * parameterization does (x0 + sigma n, or (1 - sigma) x0 + sigma n for flow). */
qd_status qd_ks_lcm(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double sp = s[i + 1];
        if (sp > 0) QD_TRY(qd_ks_noise(k, s[i], sp, nz));
        for (int64_t j = 0; j < k->n; j++) {
            x[j] = den[j];
            if (sp > 0) {
                double n = nz[j] * k->o->s_noise;
                x[j] = k->o->flow ? sp * n + (1 - sp) * den[j] : n * sp + den[j];
            }
        }
    }
    return QD_OK;
}

/* Improved PNDM (zju-pi/diff-sampler): Adams-Bashforth on d = (x - x0)/sigma
 * with up to 3 previous derivatives; variant 1 (ipndm_v) adapts the weights to
 * unequal steps. */
qd_status qd_ks_ipndm(qd_ks *k) {
    int max_order = k->o->order ? k->o->order : 4;
    if (max_order < 1 || max_order > 4) return qd_fail(k->ctx, QD_ERR_ARG, "ipndm: order must be 1..4");
    double *x = k->x, *den = qd_ks_vec(k), *d = qd_ks_vec(k), *buf[3] = {0};
    if (!den || !d) return QD_ERR_NOMEM;
    for (int q = 0; q < max_order - 1; q++)
        if (!(buf[q] = qd_ks_vec(k))) return QD_ERR_NOMEM;
    int n_buf = 0;   /* buf[n_buf-1] is the newest (buffer_model[-1]) */
    const double *t = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        double tc = t[i], tn = t[i + 1];
        QD_TRY(qd_ks_denoise(k, x, tc, den));
        for (int64_t j = 0; j < k->n; j++) d[j] = (x[j] - den[j]) / tc;
        int order = i + 1 < max_order ? i + 1 : max_order;
        double c[4] = {1, 0, 0, 0};   /* weights of d, buf[-1], buf[-2], buf[-3] */
        if (order == 2 || order == 3 || order == 4) {
            if (!k->variant) {
                static const double ab[5][4] = {{0}, {0}, {3 / 2.0, -1 / 2.0}, {23 / 12.0, -16 / 12.0, 5 / 12.0},
                                                {55 / 24.0, -59 / 24.0, 37 / 24.0, -9 / 24.0}};
                for (int q = 0; q < 4; q++) c[q] = ab[order][q];
            } else {
                double hn = tn - tc, h1 = tc - t[i - 1];
                c[0] = (2 + hn / h1) / 2;
                c[1] = -(hn / h1) / 2;
                if (order >= 3) {
                    double h2 = t[i - 1] - t[i - 2];
                    double temp1 = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2;
                    if (order == 3) {
                        c[0] += temp1;
                        c[1] -= (1 + h1 / h2) * temp1;
                        c[2] = temp1 * h1 / h2;
                    } else {
                        double h3 = t[i - 2] - t[i - 3];
                        double temp2 = ((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2))) *
                                       (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3));
                        double q2 = h1 * (h1 + h2) / (h2 * (h2 + h3));
                        c[0] += temp1 + temp2;
                        c[1] -= (1 + h1 / h2) * temp1 + (1 + h1 / h2 + q2) * temp2;
                        c[2] = temp1 * h1 / h2 + (h1 / h2 + q2 * (1 + h2 / h3)) * temp2;
                        c[3] = -temp2 * q2 * h1 / h2;
                    }
                }
            }
        }
        for (int64_t j = 0; j < k->n; j++) {
            if (tn == 0) {
                x[j] = den[j];
                continue;
            }
            double acc = c[0] * d[j];
            for (int q = 1; q < order; q++) acc += c[q] * buf[n_buf - q][j];
            x[j] = x[j] + (tn - tc) * acc;
        }
        if (max_order > 1) {   /* push d, dropping the oldest when full */
            if (n_buf == max_order - 1) {
                double *oldest = buf[0];
                for (int q = 0; q < n_buf - 1; q++) buf[q] = buf[q + 1];
                buf[n_buf - 1] = oldest;
            } else {
                n_buf++;
            }
            for (int64_t j = 0; j < k->n; j++) buf[n_buf - 1][j] = d[j];
        }
    }
    return QD_OK;
}

/* DEIS "tab" coefficients (zju-pi/diff-sampler, after qsh-zh/deis): the sigmas
 * are mapped to the time of a VP SDE fitted to EDM's range [0.002, 80], and the
 * exponential-integrator weights of the previous derivatives are integrated
 * numerically (10000-point Riemann sum, as the reference). */
static void deis_vp_params(double *beta_0, double *beta_1) {
    const double eps_s = 1e-3, smin = 0.002, smax = 80;
    double beta_d = 2 * (log(smin * smin + 1) / eps_s - log(smax * smax + 1)) / (eps_s - 1);
    double beta_min = log(smax * smax + 1) - 0.5 * beta_d;
    *beta_0 = beta_min;
    *beta_1 = beta_d + beta_min;
}

static double deis_t(double sigma, double beta_0, double beta_1) {
    double beta_d = beta_1 - beta_0, beta_min = beta_0;
    return (sqrt(beta_min * beta_min + 2 * beta_d * log(sigma * sigma + 1)) - beta_min) / beta_d;
}

static void deis_coeffs(const double *ts, int i, int order, double beta_0, double beta_1, double *c) {
    const int N = 10000;
    double tc = ts[i], tn = ts[i + 1], dtau = (tn - tc) / N, step = (tn - tc) / (N - 1);
    for (int j = 0; j < order; j++) c[j] = 0;
    for (int m = 0; m < N; m++) {
        double tau = m < N / 2 ? tc + step * m : tn - step * (N - 1 - m);   /* torch.linspace */
        double log_alpha_d = -tau * (beta_1 - beta_0) - beta_0;
        double alpha = exp(-0.5 * tau * tau * (beta_1 - beta_0) - tau * beta_0);
        double integrand = -0.5 * log_alpha_d / sqrt(alpha * (1 - alpha));
        for (int j = 0; j < order; j++) {
            double poly = 1;
            for (int q = 0; q < order; q++)
                if (q != j) poly *= (tau - ts[i - q]) / (ts[i - j] - ts[i - q]);
            c[j] += integrand * poly;
        }
    }
    for (int j = 0; j < order; j++) c[j] *= dtau;
}

qd_status qd_ks_deis(qd_ks *k) {
    int max_order = k->o->order ? k->o->order : 3;
    if (max_order < 1 || max_order > 4) return qd_fail(k->ctx, QD_ERR_ARG, "deis: order must be 1..4");
    double *x = k->x, *den = qd_ks_vec(k), *d = qd_ks_vec(k), *buf[3] = {0};
    double *ts = qd_malloc(k->ctx, sizeof(double) * (size_t)(k->n_steps + 1));
    if (!den || !d || !ts) { free(ts); return QD_ERR_NOMEM; }
    for (int q = 0; q < max_order - 1; q++)
        if (!(buf[q] = qd_ks_vec(k))) { free(ts); return QD_ERR_NOMEM; }
    double beta_0, beta_1;
    deis_vp_params(&beta_0, &beta_1);
    for (int i = 0; i <= k->n_steps; i++) ts[i] = deis_t(k->sigmas[i], beta_0, beta_1);
    int n_buf = 0;
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        double tc = k->sigmas[i], tn = k->sigmas[i + 1];
        st = qd_ks_denoise(k, x, tc, den);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) d[j] = (x[j] - den[j]) / tc;
        int order = i + 1 < max_order ? i + 1 : max_order;
        if (tn <= 0) order = 1;
        double c[4] = {0};
        if (order > 1) deis_coeffs(ts, i, order, beta_0, beta_1, c);
        for (int64_t j = 0; j < k->n; j++) {
            if (order == 1) {
                x[j] = x[j] + (tn - tc) * d[j];
            } else {
                double v = x[j] + c[0] * d[j];
                for (int q = 1; q < order; q++) v += c[q] * buf[n_buf - q][j];
                x[j] = v;
            }
        }
        if (max_order > 1) {
            if (n_buf == max_order - 1) {
                double *oldest = buf[0];
                for (int q = 0; q < n_buf - 1; q++) buf[q] = buf[q + 1];
                buf[n_buf - 1] = oldest;
            } else {
                n_buf++;
            }
            for (int64_t j = 0; j < k->n; j++) buf[n_buf - 1][j] = d[j];
        }
    }
    free(ts);
    return st;
}

/* RES multistep (arXiv 2308.02157): 2nd-order exponential integrator from the
 * previous estimate; with eta > 0 the ancestral form, variant 1 CFG++. */
qd_status qd_ks_res_multistep(qd_ks *k) {
    int cfgpp = k->variant == 1;
    double *x = k->x, *den = qd_ks_vec(k), *un = cfgpp ? qd_ks_vec(k) : NULL, *old = qd_ks_vec(k),
           *nz = qd_ks_vec(k);
    if (!den || !old || !nz || (cfgpp && !un)) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    int have_old = 0;
    double old_sigma_down = 0;
    for (int i = 0; i < k->n_steps; i++) {
        if (cfgpp) QD_TRY(qd_ks_denoise2(k, x, s[i], den, un));
        else QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double down, up;
        qd_ks_ancestral_step(s[i], s[i + 1], k->eta, &down, &up);
        const double *dir = cfgpp ? un : den;
        if (down == 0 || !have_old) {   /* Euler */
            for (int64_t j = 0; j < k->n; j++) {
                double d = (x[j] - dir[j]) / s[i];
                x[j] = cfgpp ? den[j] + d * down : x[j] + d * (down - s[i]);
            }
        } else {
            double t = -log(s[i]), t_old = -log(old_sigma_down), t_next = -log(down), t_prev = -log(s[i - 1]);
            double h = t_next - t, c2 = (t_prev - t_old) / h;
            double phi1 = expm1(-h) / -h, phi2 = (phi1 - 1) / -h;
            double b1 = phi1 - phi2 / c2, b2 = phi2 / c2;
            if (isnan(b1)) b1 = 0;   /* torch.nan_to_num */
            if (isnan(b2)) b2 = 0;
            double e = exp(-h);
            for (int64_t j = 0; j < k->n; j++) {
                double v = cfgpp ? x[j] + (den[j] - un[j]) : x[j];
                x[j] = e * v + h * (b1 * dir[j] + b2 * old[j]);
            }
        }
        if (s[i + 1] > 0 && up > 0) {
            QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
            for (int64_t j = 0; j < k->n; j++) x[j] += nz[j] * k->o->s_noise * up;
        }
        for (int64_t j = 0; j < k->n; j++) old[j] = dir[j];
        have_old = 1;
        old_sigma_down = down;
    }
    return QD_OK;
}

/* ER-SDE-Solver (arXiv 2309.06169, VP ER-SDE-Solver-3), in er_lambda = sigma/alpha
 * with the noise scaler x (e^(x^0.3) + 10); the stage-2/3 integrals by a
 * 200-point sum, as the reference. */
static double er_scaler(double v) { return v * (exp(pow(v, 0.3)) + 10.0); }

qd_status qd_ks_er_sde(qd_ks *k) {
    int max_stage = k->o->order ? k->o->order : 3;
    if (max_stage < 1 || max_stage > 3) return qd_fail(k->ctx, QD_ERR_ARG, "er_sde: stages (order) must be 1..3");
    double *x = k->x, *den = qd_ks_vec(k), *old = qd_ks_vec(k), *old_dd = qd_ks_vec(k), *nz = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k), *er = qd_malloc(k->ctx, sizeof(double) * (size_t)(k->n_steps + 1));
    if (!den || !old || !old_dd || !nz || !s || !er) { free(s); free(er); return QD_ERR_NOMEM; }
    for (int i = 0; i <= k->n_steps; i++) er[i] = exp(-qd_ks_lambda(k, s[i]));
    const int n_points = 200;
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        int stage = i + 1 < max_stage ? i + 1 : max_stage;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
        } else {
            double els = er[i], elt = er[i + 1], alpha_s = s[i] / els, alpha_t = s[i + 1] / elt;
            double r_alpha = alpha_t / alpha_s, r = er_scaler(elt) / er_scaler(els);
            double c2 = 0, c3 = 0, dt = elt - els;
            if (stage >= 2) {
                double step = -dt / n_points, sum1 = 0, sum2 = 0;
                for (int p = 0; p < n_points; p++) {
                    double pos = elt + p * step, sc = er_scaler(pos);
                    sum1 += 1 / sc;
                    sum2 += (pos - els) / sc;
                }
                c2 = alpha_t * (dt + sum1 * step * er_scaler(elt));
                c3 = alpha_t * (dt * dt / 2 + sum2 * step * er_scaler(elt));
            }
            double noise_f = sqrt(elt * elt - els * els * r * r);
            if (isnan(noise_f)) noise_f = 0;
            int noisy = k->o->s_noise > 0;
            if (noisy) st = qd_ks_noise(k, s[i], s[i + 1], nz);
            if (st != QD_OK) break;
            for (int64_t j = 0; j < k->n; j++) {
                double v = r_alpha * r * x[j] + alpha_t * (1 - r) * den[j];
                if (stage >= 2) {
                    double dd = (den[j] - old[j]) / (els - er[i - 1]);
                    v += c2 * dd;
                    if (stage >= 3) v += c3 * ((dd - old_dd[j]) / ((els - er[i - 2]) / 2));
                    old_dd[j] = dd;
                }
                if (noisy) v += alpha_t * nz[j] * k->o->s_noise * noise_f;
                x[j] = v;
            }
        }
        for (int64_t j = 0; j < k->n; j++) old[j] = den[j];
    }
    free(s);
    free(er);
    return st;
}

/* SEEDS-2 (arXiv 2305.14267), data prediction in lambda; variant 1:
 * exp_heun_2_x0 (deterministic, r = 1, phi_2), 2: exp_heun_2_x0_sde. */
qd_status qd_ks_seeds_2(qd_ks *k) {
    double r = k->variant ? 1.0 : 0.5, eta = k->variant == 1 ? 0 : k->eta;
    double s_noise = k->variant == 1 ? 0 : k->o->s_noise;
    int phi_2 = k->variant != 0, noisy = eta > 0 && s_noise > 0;
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *den2 = qd_ks_vec(k), *n1 = qd_ks_vec(k),
           *n2 = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k);
    if (!den || !x2 || !den2 || !n1 || !n2 || !s) { free(s); return QD_ERR_NOMEM; }
    const double fac = 1 / (2 * r);
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        double ls = qd_ks_lambda(k, s[i]), lt = qd_ks_lambda(k, s[i + 1]), h = lt - ls, h_eta = h * (eta + 1);
        double ls1 = qd_ks_lerp(ls, lt, r), s1 = qd_ks_sigma_of_lambda(k, ls1);
        double alpha_s1 = s1 * exp(ls1), alpha_t = s[i + 1] * exp(lt);
        double a1 = s1 / s[i] * exp(-r * h * eta), b1 = alpha_s1 * expm1(-r * h_eta);
        double f1 = noisy ? sqrt(-expm1(-2 * r * h * eta)) : 0;
        if (noisy) st = qd_ks_noise(k, s[i], s1, n1);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) {
            x2[j] = a1 * x[j] - b1 * den[j];
            if (noisy) x2[j] += f1 * n1[j] * s1 * s_noise;
        }
        st = qd_ks_denoise(k, x2, s1, den2);
        if (st != QD_OK) break;
        double a = s[i + 1] / s[i] * exp(-h * eta), ph1 = expm1(-h_eta), ph2 = (expm1(-h_eta) + h_eta) / -h_eta;
        double seg = (r - 1) * h * eta, g = exp(seg), f2 = noisy ? sqrt(-expm1(2 * seg)) : 0;
        if (noisy) st = qd_ks_noise(k, s1, s[i + 1], n2);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) {
            double v;
            if (!phi_2) {
                v = a * x[j] - alpha_t * ph1 * qd_ks_lerp(den[j], den2[j], fac);
            } else {
                double bb2 = ph2 / r, bb1 = ph1 - bb2;
                v = a * x[j] - alpha_t * (bb1 * den[j] + bb2 * den2[j]);
            }
            if (noisy) v += (f1 * n1[j] * g + f2 * n2[j]) * s[i + 1] * s_noise;
            x[j] = v;
        }
    }
    free(s);
    return st;
}

/* SEEDS-3: three stages at r1 = 1/3, r2 = 2/3 of the lambda step. */
qd_status qd_ks_seeds_3(qd_ks *k) {
    const double r1 = 1.0 / 3, r2 = 2.0 / 3, eta = k->eta, s_noise = k->o->s_noise;
    int noisy = eta > 0 && s_noise > 0;
    double *x = k->x, *den = qd_ks_vec(k), *xs = qd_ks_vec(k), *den2 = qd_ks_vec(k), *den3 = qd_ks_vec(k),
           *sde = qd_ks_vec(k), *nz = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k);
    if (!den || !xs || !den2 || !den3 || !sde || !nz || !s) { free(s); return QD_ERR_NOMEM; }
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        double ls = qd_ks_lambda(k, s[i]), lt = qd_ks_lambda(k, s[i + 1]), h = lt - ls, h_eta = h * (eta + 1);
        double l1 = qd_ks_lerp(ls, lt, r1), l2 = qd_ks_lerp(ls, lt, r2);
        double s1 = qd_ks_sigma_of_lambda(k, l1), s2 = qd_ks_sigma_of_lambda(k, l2);
        double alpha_s1 = s1 * exp(l1), alpha_s2 = s2 * exp(l2), alpha_t = s[i + 1] * exp(lt);
        /* stage 1 */
        double a = s1 / s[i] * exp(-r1 * h * eta), b = alpha_s1 * expm1(-r1 * h_eta);
        if (noisy) st = qd_ks_noise(k, s[i], s1, nz);
        if (st != QD_OK) break;
        double f = noisy ? sqrt(-expm1(-2 * r1 * h * eta)) : 0;
        for (int64_t j = 0; j < k->n; j++) {
            if (noisy) sde[j] = f * nz[j];
            xs[j] = a * x[j] - b * den[j] + (noisy ? sde[j] * s1 * s_noise : 0);
        }
        st = qd_ks_denoise(k, xs, s1, den2);
        if (st != QD_OK) break;
        /* stage 2 */
        double e2 = -r2 * h_eta, a3_2 = r2 / r1 * ((expm1(e2) - e2) / e2), a3_1 = expm1(e2) - a3_2;
        a = s2 / s[i] * exp(-r2 * h * eta);
        double seg = (r1 - r2) * h * eta, g = exp(seg), f2 = noisy ? sqrt(-expm1(2 * seg)) : 0;
        if (noisy) st = qd_ks_noise(k, s1, s2, nz);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) {
            xs[j] = a * x[j] - alpha_s2 * (a3_1 * den[j] + a3_2 * den2[j]);
            if (noisy) {
                sde[j] = sde[j] * g + f2 * nz[j];
                xs[j] += sde[j] * s2 * s_noise;
            }
        }
        st = qd_ks_denoise(k, xs, s2, den3);
        if (st != QD_OK) break;
        /* stage 3 */
        double e = -h_eta, b3 = ((expm1(e) - e) / e) / r2, bb1 = expm1(e) - b3;
        a = s[i + 1] / s[i] * exp(-h * eta);
        seg = (r2 - 1) * h * eta;
        g = exp(seg);
        f2 = noisy ? sqrt(-expm1(2 * seg)) : 0;
        if (noisy) st = qd_ks_noise(k, s2, s[i + 1], nz);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) {
            double v = a * x[j] - alpha_t * (bb1 * den[j] + b3 * den3[j]);
            if (noisy) v += (sde[j] * g + f2 * nz[j]) * s[i + 1] * s_noise;
            x[j] = v;
        }
    }
    free(s);
    return st;
}
