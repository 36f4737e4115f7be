/* Randomized low-rank SVD. Large products run through the library GEMM in fp32;
 * orthonormalisation and the small r x r eigenproblem run in double. Bases are
 * kept as r rows of length m (or n) so Gram-Schmidt reads contiguous memory. */
#include "quant/sdnq_svd.h"
#include "base/rng.h"
#include "tensor/gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Orthonormalise the r rows of q [r, len] in place: modified Gram-Schmidt, twice
 * (enough for fp32 inputs). A row that vanishes becomes zero (rank deficiency). */
static void orthonormalise(float *q, int r, int64_t len) {
    for (int j = 0; j < r; j++) {
        float *v = q + (int64_t)j * len;
        double n0 = 0;
        for (int64_t k = 0; k < len; k++) n0 += (double)v[k] * v[k];
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < j; i++) {
                const float *u = q + (int64_t)i * len;
                double d = 0;
                for (int64_t k = 0; k < len; k++) d += (double)u[k] * v[k];
                for (int64_t k = 0; k < len; k++) v[k] = (float)(v[k] - d * u[k]);
            }
        double nn = 0;
        for (int64_t k = 0; k < len; k++) nn += (double)v[k] * v[k];
        if (!(nn > 1e-24 * (n0 > 0 ? n0 : 1)) || nn == 0) { memset(v, 0, sizeof(float) * (size_t)len); continue; }
        double s = 1.0 / sqrt(nn);
        for (int64_t k = 0; k < len; k++) v[k] = (float)(v[k] * s);
    }
}

/* Symmetric eigenproblem a [r, r] (destroyed) by cyclic Jacobi: eigenvalues in w,
 * eigenvectors in the columns of v. */
static void jacobi_eigen(double *a, int r, double *w, double *v) {
    for (int i = 0; i < r * r; i++) v[i] = 0;
    for (int i = 0; i < r; i++) v[i * r + i] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                if (i == j) diag += a[i * r + j] * a[i * r + j];
                else off += a[i * r + j] * a[i * r + j];
            }
        if (off <= 1e-30 * diag || off == 0) break;
        for (int p = 0; p < r; p++)
            for (int q = p + 1; q < r; q++) {
                double apq = a[p * r + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (a[q * r + q] - a[p * r + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < r; k++) {   /* A <- J^T A J, columns then rows */
                    double akp = a[k * r + p], akq = a[k * r + q];
                    a[k * r + p] = c * akp - s * akq;
                    a[k * r + q] = s * akp + c * akq;
                }
                for (int k = 0; k < r; k++) {
                    double apk = a[p * r + k], aqk = a[q * r + k];
                    a[p * r + k] = c * apk - s * aqk;
                    a[q * r + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < r; k++) {
                    double vkp = v[k * r + p], vkq = v[k * r + q];
                    v[k * r + p] = c * vkp - s * vkq;
                    v[k * r + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int i = 0; i < r; i++) w[i] = a[i * r + i];
}

qd_status qd_sdnq_svd_lowrank(qd_ctx *ctx, const float *W, int64_t m, int64_t n, int r, int steps, uint64_t seed,
                              float *up, float *down) {
    if (r < 1 || r > m || r > n) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "SVD rank %d does not fit a %lld x %lld weight",
                                                r, (long long)m, (long long)n);
    size_t rm = (size_t)r * (size_t)m, rn = (size_t)r * (size_t)n, rr = (size_t)r * (size_t)r;
    float *qm = qd_malloc(ctx, sizeof(float) * rm);       /* basis of the column space, rows of length m */
    float *qn = qd_malloc(ctx, sizeof(float) * rn);       /* row-space vectors / the projection B */
    double *g = qd_malloc(ctx, sizeof(double) * rr * 2 + sizeof(double) * (size_t)r);
    if (!qm || !qn || !g) { free(qm); free(qn); free(g); return QD_ERR_NOMEM; }
    double *ev = g + rr, *w = ev + rr;

    qd_rng rng;
    qd_rng_seed(&rng, seed);
    qd_rng_randn(&rng, qn, (int64_t)rn);                    /* R^T [r, n] */
    /* X^T = R^T A^T: [r, m] */
    qd_gemm(ctx, r, m, n, qd_rows(qn, n), qd_rows(W, n), qm, m, 1.0f, 0.0f, NULL, NULL);
    orthonormalise(qm, r, m);
    for (int it = 0; it < steps; it++) {
        /* Z^T = Q^T A: [r, n] */
        qd_gemm(ctx, r, n, m, qd_rows(qm, m), qd_cols(W, n), qn, n, 1.0f, 0.0f, NULL, NULL);
        orthonormalise(qn, r, n);
        qd_gemm(ctx, r, m, n, qd_rows(qn, n), qd_rows(W, n), qm, m, 1.0f, 0.0f, NULL, NULL);
        orthonormalise(qm, r, m);
    }
    /* B = Q^T A [r, n]; B B^T = Ub diag(S^2) Ub^T */
    qd_gemm(ctx, r, n, m, qd_rows(qm, m), qd_cols(W, n), qn, n, 1.0f, 0.0f, NULL, NULL);
    qd_status st = qd_op_status(ctx);
    if (st != QD_OK) { free(qm); free(qn); free(g); return st; }
    for (int i = 0; i < r; i++)
        for (int j = i; j < r; j++) {
            double d = 0;
            const float *a = qn + (int64_t)i * n, *b = qn + (int64_t)j * n;
            for (int64_t k = 0; k < n; k++) d += (double)a[k] * b[k];
            g[i * r + j] = g[j * r + i] = d;
        }
    jacobi_eigen(g, r, w, ev);
    int *order = malloc(sizeof(int) * (size_t)r);
    double *row = malloc(sizeof(double) * (size_t)(n > m ? n : m));
    if (!order || !row) { free(order); free(row); free(qm); free(qn); free(g); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < r; i++) order[i] = i;
    for (int i = 1; i < r; i++)   /* descending singular values */
        for (int j = i; j > 0 && w[order[j]] > w[order[j - 1]]; j--) { int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t; }
    double s0 = w[order[0]] > 0 ? sqrt(w[order[0]]) : 0;
    for (int t = 0; t < r; t++) {
        int c = order[t];
        double s = w[c] > 0 ? sqrt(w[c]) : 0;
        if (s <= 1e-12 * s0) s = 0;
        /* v_t = B^T u_t / s; up[:, t] = Q u_t s */
        for (int64_t k = 0; k < n; k++) row[k] = 0;
        for (int j = 0; j < r; j++) {
            double u = ev[j * r + c];
            const float *b = qn + (int64_t)j * n;
            for (int64_t k = 0; k < n; k++) row[k] += u * b[k];
        }
        for (int64_t k = 0; k < n; k++) down[(int64_t)t * n + k] = s > 0 ? (float)(row[k] / s) : 0.0f;
        for (int64_t i = 0; i < m; i++) row[i] = 0;
        for (int j = 0; j < r; j++) {
            double u = ev[j * r + c] * s;
            const float *q = qm + (int64_t)j * m;
            for (int64_t i = 0; i < m; i++) row[i] += u * q[i];
        }
        for (int64_t i = 0; i < m; i++) up[i * r + t] = (float)row[i];
    }
    free(order);
    free(row);
    free(qm);
    free(qn);
    free(g);
    return QD_OK;
}
