/* lms: linear multistep in sigma (k-diffusion's sample_lms). The derivatives
 * d = (x - x0)/sigma of the last `order` steps are combined with weights that
 * integrate their Lagrange basis polynomials over [sigma_i, sigma_i+1]. */
#include "sample/ksampler.h"

#include <math.h>

#define LMS_MAX_ORDER 8

/* Integral over [t[i], t[i+1]] of prod_{k != j, k < order} (tau - t[i-k]) / (t[i-j] - t[i-k]).
 * k-diffusion uses scipy's quad, exact for these polynomials up to rounding;
 * here the polynomial is expanded in u = tau - t[i] and integrated exactly. */
static double lms_coeff(int order, const double *t, int i, int j) {
    double c[LMS_MAX_ORDER + 1] = {1};   /* coefficients of u^0 .. u^deg */
    int deg = 0;
    for (int q = 0; q < order; q++) {
        if (q == j) continue;
        double root = t[i - q] - t[i], den = t[i - j] - t[i - q];
        /* multiply by (u - root) / den */
        for (int m = deg + 1; m >= 0; m--) {
            double hi = m > 0 ? c[m - 1] : 0, lo = m <= deg ? c[m] : 0;
            c[m] = (hi - root * lo) / den;
        }
        deg++;
    }
    double H = t[i + 1] - t[i], sum = 0, p = H;
    for (int m = 0; m <= deg; m++, p *= H) sum += c[m] * p / (m + 1);
    return sum;
}

qd_status qd_ks_lms(qd_ks *k) {
    int order = k->o->order ? k->o->order : 4;
    if (order < 1 || order > LMS_MAX_ORDER)
        return qd_fail(k->ctx, QD_ERR_ARG, "lms: order must be 1..%d (got %d)", LMS_MAX_ORDER, order);
    double *x = k->x, *den = qd_ks_vec(k), *ds[LMS_MAX_ORDER];
    if (!den) return QD_ERR_NOMEM;
    for (int q = 0; q < order; q++)
        if (!(ds[q] = qd_ks_vec(k))) return QD_ERR_NOMEM;
    const double *s = k->sigmas;
    for (int i = 0; i < k->n_steps; i++) {
        QD_TRY(qd_ks_denoise(k, x, s[i], den));
        double *d = ds[i % order];   /* ring: ds[(i - q) % order] is the derivative q steps back */
        for (int64_t j = 0; j < k->n; j++) d[j] = (x[j] - den[j]) / s[i];
        if (s[i + 1] == 0 && !k->o->kdiffusion) {   /* ComfyUI: the last step returns x0 */
            for (int64_t j = 0; j < k->n; j++) x[j] = den[j];
            continue;
        }
        int cur = i + 1 < order ? i + 1 : order;
        double coeff[LMS_MAX_ORDER];
        for (int q = 0; q < cur; q++) coeff[q] = lms_coeff(cur, s, i, q);
        for (int64_t j = 0; j < k->n; j++) {
            double acc = 0;
            for (int q = 0; q < cur; q++) acc += coeff[q] * ds[(i - q) % order][j];
            x[j] += acc;
        }
    }
    return QD_OK;
}
