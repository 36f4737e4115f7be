/* Euler-family k-samplers: euler, euler_ancestral (and its flow form),
 * euler(_ancestral)_cfg_pp, heun, heunpp2, gradient_estimation. */
#include "sample/ksampler.h"

#include <math.h>

qd_status qd_ks_euler(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *eps = qd_ks_vec(k);
    if (!den || !eps) return QD_ERR_NOMEM;
    for (int i = 0; i < k->n_steps; i++) {
        double sigma_hat;
        QD_TRY(qd_ks_churn(k, i, &sigma_hat, eps));
        QD_TRY(qd_ks_denoise(k, x, sigma_hat, den));
        double dt = k->sigmas[i + 1] - sigma_hat;
        for (int64_t j = 0; j < k->n; j++) x[j] += (x[j] - den[j]) / sigma_hat * dt;
    }
    return QD_OK;
}

/* Flow models (ComfyUI's sample_euler_ancestral_RF): step down to
 * sigma_down = sigma_next * (1 + (sigma_next/sigma - 1) * eta) along the
 * straight line to x0, then rescale and add noise so the marginal at
 * sigma_next is (1 - sigma_next) x0 + sigma_next n again. */
static qd_status euler_ancestral_flow(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas, eta = k->eta, s_noise = k->o->s_noise;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        double sigma_down = s[i + 1] * (1 + (s[i + 1] / s[i] - 1) * eta);
        double alpha_next = 1 - s[i + 1], alpha_down = 1 - sigma_down;
        double renoise = sqrt(fmax(0, s[i + 1] * s[i + 1] - sigma_down * sigma_down * alpha_next * alpha_next /
                                                                 (alpha_down * alpha_down)));
        double ratio = sigma_down / s[i];
        for (int64_t j = 0; j < k->n; j++) x[j] = ratio * x[j] + (1 - ratio) * den[j];
        if (eta > 0) {
            QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
            for (int64_t j = 0; j < k->n; j++) x[j] = alpha_next / alpha_down * x[j] + nz[j] * s_noise * renoise;
        }
    }
    return QD_OK;
}

qd_status qd_ks_euler_ancestral(qd_ks *k) {
    if (k->o->flow) return euler_ancestral_flow(k);
    double *x = k->x, *den = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double down, up;
        qd_ks_ancestral_step(s[i], s[i + 1], k->eta, &down, &up);
        if (down == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
        double dt = down - s[i], f = k->o->s_noise * up;
        for (int64_t j = 0; j < k->n; j++) x[j] = x[j] + (x[j] - den[j]) / s[i] * dt + nz[j] * f;
    }
    return QD_OK;
}

/* CFG++ (arXiv 2406.08070): x0 from the guided estimate, the direction back to
 * x from the unconditional one; a DDIM-like step in the VP-normalised space
 * (alpha = 1 for eps/v models, 1 - sigma for flow). variant 1: ancestral. */
qd_status qd_ks_euler_cfg_pp(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *un = qd_ks_vec(k), *nz = qd_ks_vec(k);
    if (!den || !un || !nz) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    double eta = k->variant ? k->eta : 0, s_noise = k->variant ? k->o->s_noise : 0;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise2(k, x, s[i], den, un));
        if (s[i + 1] == 0) {
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        double alpha_s = s[i] * exp(qd_ks_lambda(k, s[i])), alpha_t = s[i + 1] * exp(qd_ks_lambda(k, s[i + 1]));
        double down, up;
        qd_ks_ancestral_step(s[i] / alpha_s, s[i + 1] / alpha_t, eta, &down, &up);
        down *= alpha_t;
        int noisy = eta > 0 && s_noise > 0;
        if (noisy) QD_TRY(qd_ks_noise(k, s[i], s[i + 1], nz));
        for (int64_t j = 0; j < k->n; j++) {
            double d = (x[j] - alpha_s * un[j]) / s[i];
            x[j] = alpha_t * den[j] + down * d + (noisy ? alpha_t * nz[j] * s_noise * up : 0);
        }
    }
    return QD_OK;
}

qd_status qd_ks_heun(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *den2 = qd_ks_vec(k), *eps = qd_ks_vec(k);
    if (!den || !x2 || !den2 || !eps) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        double sh;
        QD_TRY(qd_ks_churn(k, i, &sh, eps));
        QD_TRY(qd_ks_denoise(k, x, sh, den));
        double dt = s[i + 1] - sh;
        if (s[i + 1] == 0) {   /* Euler for the last step */
            for (int64_t j = 0; j < k->n; j++) x[j] += (x[j] - den[j]) / sh * dt;
            continue;
        }
        for (int64_t j = 0; j < k->n; j++) x2[j] = x[j] + (x[j] - den[j]) / sh * dt;
        QD_TRY(qd_ks_denoise(k, x2, s[i + 1], den2));
        for (int64_t j = 0; j < k->n; j++) {
            double d = (x[j] - den[j]) / sh, d2 = (x2[j] - den2[j]) / s[i + 1];
            x[j] += (d + d2) / 2 * dt;
        }
    }
    return QD_OK;
}

/* Heun++ (Carzit/sd-webui-samplers-scheduler): the derivative at sigma is
 * blended with those at the next one or two sigmas, weighted by sigma/sigma_0. */
qd_status qd_ks_heunpp2(qd_ks *k) {
    double *x = k->x, *den = qd_ks_vec(k), *x2 = qd_ks_vec(k), *x3 = qd_ks_vec(k), *den2 = qd_ks_vec(k),
           *den3 = qd_ks_vec(k), *eps = qd_ks_vec(k);
    if (!den || !x2 || !x3 || !den2 || !den3 || !eps) return QD_ERR_NOMEM;
    const double *s = k->sigmas, s_end = s[k->n_steps];
    k->churn_every_step = 1;
    for (int i = 0; i < k->n_steps; i++) {
        double sh;
        QD_TRY(qd_ks_churn(k, i, &sh, eps));
        QD_TRY(qd_ks_denoise(k, x, sh, den));
        double dt = s[i + 1] - sh;
        if (s[i + 1] == s_end) {
            for (int64_t j = 0; j < k->n; j++) x[j] += (x[j] - den[j]) / sh * dt;
            continue;
        }
        for (int64_t j = 0; j < k->n; j++) x2[j] = x[j] + (x[j] - den[j]) / sh * dt;
        QD_TRY(qd_ks_denoise(k, x2, s[i + 1], den2));
        if (s[i + 2] == s_end) {
            double w2 = s[i + 1] / (2 * s[0]), w1 = 1 - w2;
            for (int64_t j = 0; j < k->n; j++) {
                double d = (x[j] - den[j]) / sh, d2 = (x2[j] - den2[j]) / s[i + 1];
                x[j] += (d * w1 + d2 * w2) * dt;
            }
            continue;
        }
        double dt2 = s[i + 2] - s[i + 1];
        for (int64_t j = 0; j < k->n; j++) x3[j] = x2[j] + (x2[j] - den2[j]) / s[i + 1] * dt2;
        QD_TRY(qd_ks_denoise(k, x3, s[i + 2], den3));
        double w = 3 * s[0], w2 = s[i + 1] / w, w3 = s[i + 2] / w, w1 = 1 - w2 - w3;
        for (int64_t j = 0; j < k->n; j++) {
            double d = (x[j] - den[j]) / sh, d2 = (x2[j] - den2[j]) / s[i + 1], d3 = (x3[j] - den3[j]) / s[i + 2];
            x[j] += (w1 * d + w2 * d2 + w3 * d3) * dt;
        }
    }
    return QD_OK;
}

/* Gradient estimation (Permenter & Yuan, "Interpreting and improving diffusion
 * models from an optimization perspective"): Euler plus (gamma - 1) times the
 * change of the derivative, gamma = 2. variant 1: CFG++. */
qd_status qd_ks_gradient_estimation(qd_ks *k) {
    const double ge_gamma = 2.0;
    double *x = k->x, *den = qd_ks_vec(k), *un = k->variant ? qd_ks_vec(k) : NULL, *d = qd_ks_vec(k),
           *old_d = qd_ks_vec(k);
    if (!den || (k->variant && !un) || !d || !old_d) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        if (k->variant) QD_TRY(qd_ks_denoise2(k, x, s[i], den, un));
        else QD_TRY(qd_ks_denoise(k, x, s[i], den));
        const double *dir = k->variant ? un : den;
        for (int64_t j = 0; j < k->n; j++) d[j] = (x[j] - dir[j]) / s[i];
        double dt = s[i + 1] - s[i];
        for (int64_t j = 0; j < k->n; j++) {
            if (s[i + 1] == 0) {
                x[j] = den[j];
            } else {
                x[j] = k->variant ? den[j] + d[j] * s[i + 1] : x[j] + d[j] * dt;
                if (i >= 1) x[j] += (ge_gamma - 1) * (d[j] - old_d[j]) * dt;
            }
            old_d[j] = d[j];
        }
    }
    return QD_OK;
}
