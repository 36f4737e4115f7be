/* SA-Solver (Xue et al., "SA-Solver: Stochastic Adams Solver for Fast Sampling
 * of Diffusion Models", NeurIPS 2023, arXiv 2309.05019): a stochastic Adams
 * predictor-corrector in data prediction over the half-logSNR lambda.
 *
 * Over one step s -> t, h = lambda_t - lambda_s, with noise strength tau the
 * variance-controlled reverse SDE has the exact solution
 *   x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s
 *       + alpha_t (1 + tau^2) Int_{-h}^{0} e^{(1 + tau^2) u} x0(lambda_t + u) du
 *       + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi
 * (alpha_t = 1 for eps/v models, 1 - sigma_t for flow models). tau = 0 is the
 * probability-flow ODE (then order 1 is DPM-Solver++ 1), tau = 1 with order 1
 * DPM-Solver++ SDE. SA-Solver replaces x0(.) by the Lagrange polynomial
 * through the latest model estimates: the predictor through up to
 * predictor_order earlier ones, the corrector through the estimate at the
 * predicted point plus up to corrector_order - 1 earlier ones, both with the
 * same xi. The integrals of e^{cu} times a Lagrange basis polynomial are
 * taken by composite Gauss-Legendre quadrature (exact to rounding for the
 * polynomial part, panels short enough for the exponential).
 *
 * "sa_solver" evaluates the model once per step, at the predicted point, and
 * keeps that estimate for the next steps (PEC); "sa_solver_pece" evaluates
 * again at the corrected point (PECE, two calls per step). tau = eta while
 * sigma lies in [opts.sde_sigma_lo, opts.sde_sigma_hi] and 0 outside (ComfyUI's
 * sde_start_percent 0.2 / sde_end_percent 0.8, converted by the caller). The
 * step to sigma 0 returns the newest estimate; a last step to sigma > 0 is a
 * predictor step (no model call whose result would be thrown away). */
#include "sample/ksampler.h"

#include <math.h>
#include <stdlib.h>

#define SA_MAX_ORDER 4

/* 8-point Gauss-Legendre on [-1, 1]. */
static const double gl_x[8] = {-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
                               0.1834346424956498,  0.5255324099163290,  0.7966664774136267,  0.9602898564975363};
static const double gl_w[8] = {0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
                               0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763};

/* coef[j] = alpha_t (1+tau^2) Int_{-h}^{0} e^{(1+tau^2) u} l_j(u) du for the
 * Lagrange basis l_j over the nodes u[0..n) (u <= 0, distinct). */
static void sa_coefficients(const double *u, int n, double h, double tau, double alpha_t, double *coef) {
    double c = 1 + tau * tau;
    int panels = (int)ceil(h * c / 0.25);
    if (panels < 1) panels = 1;
    if (panels > 4096) panels = 4096;
    double width = h / panels;
    for (int j = 0; j < n; j++) coef[j] = 0;
    for (int p = 0; p < panels; p++) {
        double a = -h + p * width, mid = a + width / 2;
        for (int q = 0; q < 8; q++) {
            double v = mid + width / 2 * gl_x[q], w = gl_w[q] * width / 2 * exp(c * v);
            for (int j = 0; j < n; j++) {
                double l = 1;
                for (int m = 0; m < n; m++)
                    if (m != j) l *= (v - u[m]) / (u[j] - u[m]);
                coef[j] += w * l;
            }
        }
    }
    for (int j = 0; j < n; j++) coef[j] *= alpha_t * c;
}

static double sa_alpha(const qd_ks *k, double sigma) { return k->o->flow ? 1 - sigma : 1; }

/* x_out = (sigma_t/sigma_s) e^{-tau^2 h} x + sum coef_j est_j + noise_term * xi. */
static void sa_update(const qd_ks *k, double *x_out, const double *x, double decay, const double *coef,
                      const double *const *est, int n_est, double noise_f, const double *xi) {
    for (int64_t e = 0; e < k->n; e++) {
        double v = decay * x[e];
        for (int j = 0; j < n_est; j++) v += coef[j] * est[j][e];
        if (noise_f != 0) v += noise_f * xi[e];
        x_out[e] = v;
    }
}

qd_status qd_ks_sa_solver(qd_ks *k) {
    const qd_ks_opts *o = k->o;
    int pece = k->variant == 1;
    int p_order = o->sa_predictor_order > 0 ? o->sa_predictor_order : 3;
    int c_order = o->sa_corrector_order >= 0 ? o->sa_corrector_order : 4;
    if (p_order > SA_MAX_ORDER - 1 || c_order > SA_MAX_ORDER)
        return qd_fail(k->ctx, QD_ERR_ARG, "sa_solver: predictor_order must be 1..3 and corrector_order 0..4 (got %d, %d)",
                       p_order, c_order);
    double *sig = qd_ks_snr_sigmas(k);
    if (!sig) return QD_ERR_NOMEM;
    double *hist[SA_MAX_ORDER], lam[SA_MAX_ORDER];   /* estimates, newest first, and their lambdas */
    double *spare = qd_ks_vec(k), *x_pred = qd_ks_vec(k), *xi = qd_ks_vec(k);
    int ok = spare && x_pred && xi;
    for (int j = 0; j < SA_MAX_ORDER; j++) ok = ok && (hist[j] = qd_ks_vec(k)) != NULL;
    if (!ok) {
        free(sig);
        return QD_ERR_NOMEM;
    }
    qd_status st = qd_ks_denoise(k, k->x, sig[0], hist[0]);
    lam[0] = qd_ks_lambda(k, sig[0]);
    int n_hist = 1;
    for (int i = 0; i < k->n_steps && st == QD_OK; i++) {
        double s = sig[i], t = sig[i + 1];
        if (t == 0) {   /* lambda_t is infinite: the data estimate is the answer */
            for (int64_t e = 0; e < k->n; e++) k->x[e] = hist[0][e];
            break;
        }
        double lam_t = qd_ks_lambda(k, t), h = lam_t - lam[0];
        double tau = (s >= o->sde_sigma_lo && s <= o->sde_sigma_hi) ? k->eta : 0;
        double decay = t / s * exp(-tau * tau * h);
        double noise_f = tau > 0 ? t * sqrt(-expm1(-2 * tau * tau * h)) * o->s_noise : 0;
        if (noise_f != 0) st = qd_ks_noise(k, s, t, xi);
        if (st != QD_OK) break;
        /* predictor: the newest p estimates */
        double u[SA_MAX_ORDER], coef[SA_MAX_ORDER];
        int np = n_hist < p_order ? n_hist : p_order;
        for (int j = 0; j < np; j++) u[j] = lam[j] - lam_t;
        sa_coefficients(u, np, h, tau, sa_alpha(k, t), coef);
        sa_update(k, x_pred, k->x, decay, coef, (const double *const *)hist, np, noise_f, xi);
        if (i == k->n_steps - 1) {
            for (int64_t e = 0; e < k->n; e++) k->x[e] = x_pred[e];
            break;
        }
        /* evaluate at the predicted point; the estimate joins the history */
        st = qd_ks_denoise(k, x_pred, t, spare);
        if (st != QD_OK) break;
        double *newest = spare;
        if (c_order > 0) {
            /* corrector: the new estimate at u = 0 plus the newest c - 1 earlier ones */
            const double *est[SA_MAX_ORDER];
            int nc = n_hist + 1 < c_order ? n_hist + 1 : c_order;
            est[0] = newest;
            u[0] = 0;
            for (int j = 1; j < nc; j++) {
                est[j] = hist[j - 1];
                u[j] = lam[j - 1] - lam_t;
            }
            sa_coefficients(u, nc, h, tau, sa_alpha(k, t), coef);
            sa_update(k, k->x, k->x, decay, coef, est, nc, noise_f, xi);
            if (pece) st = qd_ks_denoise(k, k->x, t, newest);
        } else {
            for (int64_t e = 0; e < k->n; e++) k->x[e] = x_pred[e];
        }
        /* push: the oldest buffer becomes the spare */
        spare = hist[SA_MAX_ORDER - 1];
        for (int j = SA_MAX_ORDER - 1; j > 0; j--) {
            hist[j] = hist[j - 1];
            lam[j] = lam[j - 1];
        }
        hist[0] = newest;
        lam[0] = lam_t;
        if (n_hist < SA_MAX_ORDER) n_hist++;
    }
    free(sig);
    return st;
}
