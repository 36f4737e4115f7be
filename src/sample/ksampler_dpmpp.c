/* DPM-Solver++ k-samplers (arXiv 2211.01095): dpmpp_2s_ancestral (+ flow form,
 * + CFG++), dpmpp_sde, dpmpp_2m (+ CFG++), dpmpp_2m_sde (midpoint / heun),
 * dpmpp_3m_sde. The SDE forms are written, as ComfyUI writes them, in the
 * half-logSNR lambda and alpha of the model parameterization (alpha = 1 and
 * lambda = -log sigma for eps/v models; alpha = 1 - sigma for flow models),
 * which reduces to k-diffusion's formulas for eps/v models. */
#include "sample/ksampler.h"

#include <math.h>
#include <stdlib.h>

/* variant 1: CFG++ (the steps follow the unconditional estimate, the guidance
 * difference is added back at the end of each step). */
qd_status qd_ks_dpmpp_2s_ancestral(qd_ks *k) {
    int cfgpp = k->variant == 1, flow = k->o->flow;
    double *x = k->x, *den = qd_ks_vec(k), *un = cfgpp ? qd_ks_vec(k) : NULL, *x2 = qd_ks_vec(k),
           *den2 = qd_ks_vec(k), *un2 = cfgpp ? qd_ks_vec(k) : NULL, *nz = qd_ks_vec(k);
    if (!den || !x2 || !den2 || !nz || (cfgpp && (!un || !un2))) return QD_ERR_NOMEM;
    const double *s = k->sigmas, eta = k->eta, s_noise = k->o->s_noise;
    for (int i = 0; i < k->n_steps; i++) {
        if (cfgpp) QD_TRY(qd_ks_denoise2(k, x, s[i], den, un));
        else QD_TRY(qd_ks_denoise(k, x, s[i], den));
        const double *dir = cfgpp ? un : den;   /* the estimate the step follows */
        double down, up, alpha_next = 1, alpha_down = 1;
        if (flow) {
            down = s[i + 1] * (1 + (s[i + 1] / s[i] - 1) * eta);
            alpha_next = 1 - s[i + 1];
            alpha_down = 1 - down;
            up = sqrt(fmax(0, s[i + 1] * s[i + 1] - down * down * alpha_next * alpha_next / (alpha_down * alpha_down)));
        } else {
            qd_ks_ancestral_step(s[i], s[i + 1], eta, &down, &up);
        }
        if (flow ? s[i + 1] == 0 : down == 0) {   /* Euler */
            double dt = down - s[i];
            for (int64_t j = 0; j < k->n; j++) x2[j] = x[j] + (x[j] - dir[j]) / s[i] * dt;
        } else if (!flow) {   /* DPM-Solver++(2S) from t = -log sigma to -log sigma_down */
            double t = -log(s[i]), tn = -log(down), h = tn - t, sm = exp(-(t + 0.5 * h));
            for (int64_t j = 0; j < k->n; j++) x2[j] = sm / s[i] * x[j] - expm1(-h * 0.5) * dir[j];
            if (cfgpp) QD_TRY(qd_ks_denoise2(k, x2, sm, den2, un2));
            else QD_TRY(qd_ks_denoise(k, x2, sm, den2));
            const double *dir2 = cfgpp ? un2 : den2;
            for (int64_t j = 0; j < k->n; j++) x2[j] = exp(-tn) / s[i] * x[j] - expm1(-h) * dir2[j];
        } else {   /* the same in the flow lambda = log((1 - sigma) / sigma), along straight lines */
            double sigma_s = 0.9999;
            if (s[i] != 1.0) {
                double ti = log((1 - s[i]) / s[i]), td = log((1 - down) / down);
                sigma_s = 1 / (exp(ti + 0.5 * (td - ti)) + 1);
            }
            double r = sigma_s / s[i];
            for (int64_t j = 0; j < k->n; j++) x2[j] = r * x[j] + (1 - r) * dir[j];
            if (cfgpp) QD_TRY(qd_ks_denoise2(k, x2, sigma_s, den2, un2));
            else QD_TRY(qd_ks_denoise(k, x2, sigma_s, den2));
            const double *dir2 = cfgpp ? un2 : den2;
            double rd = down / s[i];
            for (int64_t j = 0; j < k->n; j++) x2[j] = rd * x[j] + (1 - rd) * dir2[j];
        }
        int noisy = s[i + 1] > 0 && (!flow || eta > 0);
        if (noisy) QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
        double f = alpha_next / alpha_down, g = flow ? 1 - s[i + 1] : 1;
        for (int64_t j = 0; j < k->n; j++) {
            double v = x2[j];
            if (noisy) v = f * v + nz[j] * s_noise * up;
            if (cfgpp) v += g * (den[j] - un[j]);
            x[j] = v;
        }
    }
    return QD_OK;
}

/* DPM-Solver++ SDE: a stochastic midpoint (r = 1/2) step in lambda. ComfyUI
 * feeds it Brownian-tree noise: the two draws of a step cover [sigma, sigma_mid]
 * and [sigma, sigma_next], which overlap. */
qd_status qd_ks_dpmpp_sde(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *den2 = qd_ks_vec(k), *nz = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k);
    if (!den || !x2 || !den2 || !nz || !s) { free(s); return QD_ERR_NOMEM; }
    const double eta = k->eta, s_noise = k->o->s_noise, r = k->o->r, fac = 1 / (2 * r);
    int noisy = eta > 0 && s_noise > 0;
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        double ls = qd_ks_lambda(k, s[i]), lt = qd_ks_lambda(k, s[i + 1]), h = lt - ls, ls1 = ls + r * h;
        double sigma_s1 = qd_ks_sigma_of_lambda(k, ls1);
        double alpha_s = s[i] * exp(ls), alpha_s1 = sigma_s1 * exp(ls1), alpha_t = s[i + 1] * exp(lt);
        /* step 1: to the midpoint */
        double sd, su;
        qd_ks_ancestral_step(exp(-ls), exp(-ls1), eta, &sd, &su);
        double h_ = -log(sd) - ls, a = alpha_s1 / alpha_s * exp(-h_), b = alpha_s1 * expm1(-h_);
        if (noisy) st = qd_ks_noise(k, s[i], sigma_s1, nz);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) x2[j] = a * x[j] - b * den[j] + (noisy ? alpha_s1 * nz[j] * s_noise * su : 0);
        st = qd_ks_denoise(k, x2, sigma_s1, den2);
        if (st != QD_OK) break;
        /* step 2: the full step with the midpoint-corrected estimate */
        qd_ks_ancestral_step(exp(-ls), exp(-lt), eta, &sd, &su);
        h_ = -log(sd) - ls;
        a = alpha_t / alpha_s * exp(-h_);
        b = alpha_t * expm1(-h_);
        if (noisy) st = qd_ks_noise(k, s[i], s[i + 1], nz);
        if (st != QD_OK) break;
        for (int64_t j = 0; j < k->n; j++) {
            double dd = (1 - fac) * den[j] + fac * den2[j];
            x[j] = a * x[j] - b * dd + (noisy ? alpha_t * nz[j] * s_noise * su : 0);
        }
    }
    free(s);
    return st;
}

/* DPM-Solver++(2M): second order from the previous estimate. variant 1: CFG++. */
qd_status qd_ks_dpmpp_2m(qd_ks *k) {
    int cfgpp = k->variant == 1;
    double *x = k->x, *den = qd_ks_vec(k), *un = cfgpp ? qd_ks_vec(k) : NULL, *old = qd_ks_vec(k);
    if (!den || !old || (cfgpp && !un)) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        if (cfgpp) QD_TRY(qd_ks_denoise2(k, x, s[i], den, un));
        else QD_TRY(qd_ks_denoise(k, x, s[i], den));
        int first_order = i == 0;
        if (s[i + 1] == 0) {   /* sigma_next / sigma = 0 and -expm1(-inf) = 1: both forms give x0 */
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
        } else {
            double t = -log(s[i]), tn = -log(s[i + 1]), h = tn - t;
            double c = first_order ? 0 : 1 / (2 * ((t + log(s[i - 1])) / h));   /* 1/(2r), r = h_last / h */
            double ratio = exp(-tn) / exp(-t), em = expm1(-h);
            for (int64_t j = 0; j < k->n; j++) {
                if (cfgpp) {   /* ComfyUI's sample_dpmpp_2m_cfg_pp */
                    double mix = -exp(-h) * un[j] - (first_order ? 0 : em * c * (den[j] - old[j]));
                    x[j] = den[j] + mix + exp(-h) * x[j];
                } else {
                    double dd = first_order ? den[j] : (1 + c) * den[j] - c * old[j];
                    x[j] = ratio * x[j] - em * dd;
                }
            }
        }
        const double *keep = cfgpp ? un : den;
        for (int64_t j = 0; j < k->n; j++) old[j] = keep[j];
    }
    return QD_OK;
}

/* DPM-Solver++(2M) SDE; variant 1: the Heun solver, else the midpoint one. */
qd_status qd_ks_dpmpp_2m_sde(qd_ks *k) {
    int heun = k->variant == 1;
    double *x = k->x, *den = qd_ks_vec(k), *old = qd_ks_vec(k), *nz = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k);
    if (!den || !old || !nz || !s) { free(s); return QD_ERR_NOMEM; }
    const double eta = k->eta, s_noise = k->o->s_noise;
    int have_old = 0;
    double h = 0, h_last = 0;
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
        } else {
            double ls = qd_ks_lambda(k, s[i]), lt = qd_ks_lambda(k, s[i + 1]);
            h = lt - ls;
            double h_eta = h * (eta + 1), alpha_t = s[i + 1] * exp(lt);
            double a = s[i + 1] / s[i] * exp(-h * eta), b = alpha_t * -expm1(-h_eta);
            double corr = 0;
            if (have_old) {
                double r = h_last / h;
                corr = heun ? alpha_t * (-expm1(-h_eta) / -h_eta + 1) * (1 / r)
                            : 0.5 * alpha_t * -expm1(-h_eta) * (1 / r);
            }
            int noisy = eta > 0 && s_noise > 0;
            double f = noisy ? s[i + 1] * sqrt(-expm1(-2 * h * eta)) * s_noise : 0;
            if (noisy) st = qd_ks_noise(k, s[i], s[i + 1], nz);
            if (st != QD_OK) break;
            for (int64_t j = 0; j < k->n; j++) {
                double v = a * x[j] + b * den[j];
                if (have_old) v = v + corr * (den[j] - old[j]);
                if (noisy) v = v + nz[j] * f;
                x[j] = v;
            }
        }
        for (int64_t j = 0; j < k->n; j++) old[j] = den[j];
        have_old = 1;
        h_last = h;
    }
    free(s);
    return st;
}

/* DPM-Solver++(3M) SDE: third order from the two previous estimates. */
qd_status qd_ks_dpmpp_3m_sde(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *d1 = qd_ks_vec(k), *d2 = qd_ks_vec(k), *nz = qd_ks_vec(k);
    double *s = qd_ks_snr_sigmas(k);
    if (!den || !d1 || !d2 || !nz || !s) { free(s); return QD_ERR_NOMEM; }
    const double eta = k->eta, s_noise = k->o->s_noise;
    int n_hist = 0;   /* previous estimates held: den_1 (d1), den_2 (d2) */
    double h = 0, h_1 = 0, h_2 = 0;
    qd_status st = QD_OK;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        st = qd_ks_denoise(k, x, s[i], den);
        if (st != QD_OK) break;
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
        } else {
            double ls = qd_ks_lambda(k, s[i]), lt = qd_ks_lambda(k, s[i + 1]);
            h = lt - ls;
            double h_eta = h * (eta + 1), alpha_t = s[i + 1] * exp(lt);
            double a = s[i + 1] / s[i] * exp(-h * eta), b = alpha_t * -expm1(-h_eta);
            double phi_2 = expm1(-h_eta) / h_eta + 1, phi_3 = phi_2 / h_eta - 0.5;
            int noisy = eta > 0 && s_noise > 0;
            double f = noisy ? s[i + 1] * sqrt(-expm1(-2 * h * eta)) * s_noise : 0;
            if (noisy) st = qd_ks_noise(k, s[i], s[i + 1], nz);
            if (st != QD_OK) break;
            double r0 = h_1 / h, r1 = h_2 / h;
            for (int64_t j = 0; j < k->n; j++) {
                double v = a * x[j] + b * den[j];
                if (n_hist >= 2) {
                    double d1_0 = (den[j] - d1[j]) / r0, d1_1 = (d1[j] - d2[j]) / r1;
                    double dd1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), dd2 = (d1_0 - d1_1) / (r0 + r1);
                    v = v + (alpha_t * phi_2) * dd1 - (alpha_t * phi_3) * dd2;
                } else if (n_hist == 1) {
                    v = v + (alpha_t * phi_2) * ((den[j] - d1[j]) / r0);
                }
                if (noisy) v = v + nz[j] * f;
                x[j] = v;
            }
        }
        double *tmp = d2;   /* den_2 <- den_1 <- den */
        d2 = d1;
        d1 = tmp;
        for (int64_t j = 0; j < k->n; j++) d1[j] = den[j];
        if (n_hist < 2) n_hist++;
        h_2 = h_1;
        h_1 = h;
    }
    free(s);
    return st;
}
