/* UniPC (arXiv 2302.04867; wl-zhao/UniPC) as ComfyUI runs it: multistep,
 * data prediction, order min(3, steps - 1), lower order at the end, the B(h)
 * variants bh1 (B = h) and bh2 (B = e^h - 1). ComfyUI converts to the VP space
 * (alpha = 1/sqrt(1+sigma^2)) where lambda = -log sigma; dividing every update
 * by alpha_t gives the same steps on x itself, which is what is done here. A
 * final sigma of 0 becomes 0.001 (the result is x at sigma 0.001). */
#include "sample/ksampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Solve the n x n system A y = b (n <= 3) by Gaussian elimination with partial pivoting. */
static int solve_small(int n, double A[3][3], double *b, double *y) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(A[r][c]) > fabs(A[p][c])) p = r;
        if (A[p][c] == 0) return -1;
        for (int q = 0; q < n; q++) { double t = A[c][q]; A[c][q] = A[p][q]; A[p][q] = t; }
        double t = b[c]; b[c] = b[p]; b[p] = t;
        for (int r = c + 1; r < n; r++) {
            double f = A[r][c] / A[c][c];
            for (int q = c; q < n; q++) A[r][q] -= f * A[c][q];
            b[r] -= f * b[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double v = b[r];
        for (int q = r + 1; q < n; q++) v -= A[r][q] * y[q];
        y[r] = v / A[r][r];
    }
    return 0;
}

typedef struct {
    qd_ks *k;
    int order, bh2;
    double *m[3];       /* model (x0) values at the previous times, m[len-1] newest */
    double t[3];        /* their sigmas */
    int len;
    double *x_pred, *model_t, *D1[2];
} unipc;

/* One update from x at t[len-1] to sigma_t with `order` previous values; with
 * the corrector the model is evaluated at the predicted point (into u->model_t)
 * and x is corrected. *evaluated tells whether model_t was filled. */
static qd_status unipc_update(unipc *u, double sigma_t, int order, int use_corrector, int *evaluated) {
    qd_ks *k = u->k;
    double *x = k->x, s0 = u->t[u->len - 1];
    const double *m0 = u->m[u->len - 1];
    double lambda_0 = -log(s0), lambda_t = -log(sigma_t), h = lambda_t - lambda_0;
    double rks[3];
    int n_d = order - 1;
    for (int i = 1; i < order; i++) {
        double rk = (-log(u->t[u->len - 1 - i]) - lambda_0) / h;
        rks[i - 1] = rk;
        const double *mi = u->m[u->len - 1 - i];
        for (int64_t j = 0; j < k->n; j++) u->D1[i - 1][j] = (mi[j] - m0[j]) / rk;
    }
    rks[order - 1] = 1;
    double hh = -h, h_phi_1 = expm1(hh), h_phi_k = h_phi_1 / hh - 1, fact = 1;
    double B_h = u->bh2 ? expm1(hh) : hh;
    double R[3][3], b[3];
    for (int i = 1; i <= order; i++) {
        for (int q = 0; q < order; q++) R[i - 1][q] = pow(rks[q], i - 1);
        b[i - 1] = h_phi_k * fact / B_h;
        fact *= i + 1;
        h_phi_k = h_phi_k / hh - 1 / fact;
    }
    double rhos_p[3] = {0.5}, rhos_c[3] = {0.5};
    if (n_d > 0 && order != 2) {
        double A[3][3], bb[3];
        for (int r = 0; r < n_d; r++) { for (int q = 0; q < n_d; q++) A[r][q] = R[r][q]; bb[r] = b[r]; }
        if (solve_small(n_d, A, bb, rhos_p)) return qd_fail(k->ctx, QD_ERR_ARG, "uni_pc: singular predictor system");
    }
    if (use_corrector && order != 1) {
        double A[3][3], bb[3];
        for (int r = 0; r < order; r++) { for (int q = 0; q < order; q++) A[r][q] = R[r][q]; bb[r] = b[r]; }
        if (solve_small(order, A, bb, rhos_c)) return qd_fail(k->ctx, QD_ERR_ARG, "uni_pc: singular corrector system");
    }
    double ratio = sigma_t / s0;
    /* x_t_ = (sigma_t / sigma_0) x - h_phi_1 m0; predictor: x_t_ - B_h * sum rhos_p D1 */
    for (int64_t j = 0; j < k->n; j++) {
        double base = ratio * x[j] - h_phi_1 * m0[j], pred = 0;
        for (int q = 0; q < n_d; q++) pred += rhos_p[q] * u->D1[q][j];
        u->x_pred[j] = base - B_h * pred;
    }
    *evaluated = 0;
    if (use_corrector) {
        QD_TRY(qd_ks_denoise(k, u->x_pred, sigma_t, u->model_t));
        *evaluated = 1;
        for (int64_t j = 0; j < k->n; j++) {
            double base = ratio * x[j] - h_phi_1 * m0[j], corr = 0;
            for (int q = 0; q < n_d; q++) corr += rhos_c[q] * u->D1[q][j];
            x[j] = base - B_h * (corr + rhos_c[order - 1] * (u->model_t[j] - m0[j]));
        }
    } else {
        memcpy(x, u->x_pred, sizeof(double) * (size_t)k->n);
    }
    return QD_OK;
}

qd_status qd_ks_uni_pc(qd_ks *k) {
    unipc u = {0};
    u.k = k;
    u.bh2 = k->variant == 1;
    int steps = k->n_steps;
    u.order = steps - 1 < 3 ? steps - 1 : 3;
    if (u.order < 1) u.order = 1;   /* ComfyUI would skip the only step of a 1-step run */
    for (int q = 0; q < 3; q++)
        if (!(u.m[q] = qd_ks_vec(k))) return QD_ERR_NOMEM;
    if (!(u.x_pred = qd_ks_vec(k)) || !(u.model_t = qd_ks_vec(k)) || !(u.D1[0] = qd_ks_vec(k)) ||
        !(u.D1[1] = qd_ks_vec(k)))
        return QD_ERR_NOMEM;
    double *ts = qd_malloc(k->ctx, sizeof(double) * (size_t)(steps + 1));
    if (!ts) return QD_ERR_NOMEM;
    memcpy(ts, k->sigmas, sizeof(double) * (size_t)(steps + 1));
    if (ts[steps] == 0) ts[steps] = 0.001;
    qd_status st = qd_ks_denoise(k, k->x, ts[0], u.m[0]);
    u.t[0] = ts[0];
    u.len = 1;
    for (int step = 1; step <= steps && st == QD_OK; step++) {
        int evaluated;
        if (step < u.order) {   /* warm-up: order = step, always corrected */
            st = unipc_update(&u, ts[step], step, 1, &evaluated);
            if (st != QD_OK) break;
            if (!evaluated) st = qd_ks_denoise(k, k->x, ts[step], u.model_t);
            memcpy(u.m[u.len], u.model_t, sizeof(double) * (size_t)k->n);
            u.t[u.len++] = ts[step];
            continue;
        }
        int step_order = steps + 1 - step < u.order ? steps + 1 - step : u.order;   /* lower_order_final */
        if (step_order > u.len) step_order = u.len;
        int use_corrector = step != steps;
        st = unipc_update(&u, ts[step], step_order, use_corrector, &evaluated);
        if (st != QD_OK) break;
        if (u.len == u.order) {   /* shift the history left: the slot for the new value is the last */
            double *oldest = u.m[0];
            for (int q = 0; q < u.order - 1; q++) { u.m[q] = u.m[q + 1]; u.t[q] = u.t[q + 1]; }
            u.m[u.order - 1] = oldest;
        } else {
            u.len++;
        }
        u.t[u.len - 1] = ts[step];
        if (step < steps) {   /* the final value is not needed */
            if (!evaluated) st = qd_ks_denoise(k, k->x, ts[step], u.model_t);
            memcpy(u.m[u.len - 1], u.model_t, sizeof(double) * (size_t)k->n);
        }
    }
    free(ts);
    return st;
}
