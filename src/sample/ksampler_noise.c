/* Brownian path sampled lazily at the times asked for (see ksampler_noise.h). */
#include "sample/ksampler_noise.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct qd_brownian {
    int64_t n;
    qd_randn_fn randn;
    void *user;
    int count, cap;
    double *t;          /* known times, ascending */
    double **w;         /* W(t[i]), one allocation each (pointers stay valid) */
    double *z;          /* scratch normals */
};

qd_status qd_brownian_new(qd_ctx *ctx, int64_t n, double t_anchor, qd_randn_fn randn, void *randn_user,
                          qd_brownian **out) {
    *out = NULL;
    qd_brownian *b = qd_calloc(ctx, 1, sizeof *b);
    if (!b) return QD_ERR_NOMEM;
    b->n = n;
    b->randn = randn;
    b->user = randn_user;
    b->cap = 8;
    b->t = qd_malloc(ctx, sizeof(double) * (size_t)b->cap);
    b->w = qd_calloc(ctx, (size_t)b->cap, sizeof(double *));
    b->z = qd_malloc(ctx, sizeof(double) * (size_t)n);
    double *w0 = qd_calloc(ctx, (size_t)n, sizeof(double));
    if (!b->t || !b->w || !b->z || !w0) {
        free(w0);
        qd_brownian_free(b);
        return QD_ERR_NOMEM;
    }
    b->t[0] = t_anchor;
    b->w[0] = w0;
    b->count = 1;
    *out = b;
    return QD_OK;
}

void qd_brownian_free(qd_brownian *b) {
    if (!b) return;
    for (int i = 0; b->w && i < b->count; i++) free(b->w[i]);
    free(b->t);
    free(b->w);
    free(b->z);
    free(b);
}

/* W(t): a known value, or a new one drawn given its neighbours. */
static qd_status value_at(qd_ctx *ctx, qd_brownian *b, double t, const double **out) {
    int pos = 0;
    while (pos < b->count && b->t[pos] < t) pos++;
    if (pos < b->count && b->t[pos] == t) {
        *out = b->w[pos];
        return QD_OK;
    }
    if (b->count == b->cap) {
        int cap = 2 * b->cap;
        double *t2 = realloc(b->t, sizeof(double) * (size_t)cap);
        if (t2) b->t = t2;
        double **w2 = t2 ? realloc(b->w, sizeof(double *) * (size_t)cap) : NULL;
        if (!t2 || !w2) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        b->w = w2;
        b->cap = cap;
    }
    double *v = qd_malloc(ctx, sizeof(double) * (size_t)b->n);
    if (!v) return QD_ERR_NOMEM;
    qd_status st = b->randn(b->user, b->z);
    if (st != QD_OK) {
        free(v);
        return st;
    }
    const double *lo = pos > 0 ? b->w[pos - 1] : NULL, *hi = pos < b->count ? b->w[pos] : NULL;
    double tl = pos > 0 ? b->t[pos - 1] : 0, th = pos < b->count ? b->t[pos] : 0;
    if (lo && hi) {   /* Brownian bridge between the neighbours */
        double f = (t - tl) / (th - tl), sd = sqrt((t - tl) * (th - t) / (th - tl));
        for (int64_t j = 0; j < b->n; j++) v[j] = lo[j] + f * (hi[j] - lo[j]) + sd * b->z[j];
    } else {          /* an independent increment from the nearest known time */
        const double *near = lo ? lo : hi;
        double sd = sqrt(fabs(t - (lo ? tl : th)));
        for (int64_t j = 0; j < b->n; j++) v[j] = near[j] + sd * b->z[j];
    }
    memmove(b->w + pos + 1, b->w + pos, sizeof(double *) * (size_t)(b->count - pos));
    memmove(b->t + pos + 1, b->t + pos, sizeof(double) * (size_t)(b->count - pos));
    b->w[pos] = v;
    b->t[pos] = t;
    b->count++;
    *out = v;
    return QD_OK;
}

qd_status qd_brownian_noise(qd_ctx *ctx, qd_brownian *b, double t0, double t1, double *out) {
    if (t0 == t1 || !isfinite(t0) || !isfinite(t1))
        return qd_fail(ctx, QD_ERR_ARG, "Brownian noise: bad interval [%g, %g]", t0, t1);
    /* Samplers walk down in sigma: times above this interval are not asked for
     * again, and dropping them keeps the path small. */
    double top = t0 > t1 ? t0 : t1;
    while (b->count > 1 && b->t[b->count - 1] > top) free(b->w[--b->count]);
    const double *w0, *w1;
    QD_TRY(value_at(ctx, b, t0, &w0));
    QD_TRY(value_at(ctx, b, t1, &w1));
    double s = 1 / sqrt(fabs(t1 - t0));
    for (int64_t j = 0; j < b->n; j++) out[j] = (w1[j] - w0[j]) * s;
    return QD_OK;
}
