/* RGB8 resizing for commands that need a given size (e.g. VAE encode wants sides
 * that are multiples of 8). Separable: each output sample is a weighted sum of
 * input samples along one axis, then the other. Shrinking averages the covered
 * area (box filter with fractional edge weights), enlarging interpolates
 * bilinearly between pixel centres (half-pixel alignment, edges clamped). */
#include "qdiff.h"
#include "base/ctx.h"

#include <math.h>
#include <stdlib.h>

/* Weights mapping n_in samples to n_out: for output i, taps first[i] .. first[i]+count[i]-1
 * with weights w[i*maxk + j]. Returns maxk, or -1 on allocation failure. */
typedef struct { int *first, *count; float *w; int maxk; } axis;

static int axis_init(axis *a, int n_in, int n_out) {
    double scale = (double)n_in / n_out;
    a->maxk = scale > 1 ? (int)ceil(scale) + 2 : 2;
    a->first = malloc(sizeof(int) * (size_t)n_out);
    a->count = malloc(sizeof(int) * (size_t)n_out);
    a->w = calloc((size_t)n_out * (size_t)a->maxk, sizeof(float));
    if (!a->first || !a->count || !a->w) return -1;
    for (int i = 0; i < n_out; i++) {
        float *w = a->w + (size_t)i * a->maxk;
        if (scale > 1) {                       /* area: input interval [i*scale, (i+1)*scale) */
            double lo = i * scale, hi = (i + 1) * scale;
            int j0 = (int)floor(lo), j1 = (int)ceil(hi);
            if (j1 > n_in) j1 = n_in;
            a->first[i] = j0;
            a->count[i] = j1 - j0;
            for (int j = j0; j < j1; j++) {
                double c = fmin(hi, j + 1.0) - fmax(lo, (double)j);
                w[j - j0] = (float)(c / scale);
            }
        } else {                               /* bilinear between pixel centres */
            double x = (i + 0.5) * scale - 0.5;
            if (x < 0) x = 0;
            int j0 = (int)floor(x);
            if (j0 > n_in - 1) j0 = n_in - 1;
            double t = x - j0;
            int j1 = j0 + 1 < n_in ? j0 + 1 : j0;
            a->first[i] = j0;
            a->count[i] = j1 == j0 ? 1 : 2;
            w[0] = (float)(a->count[i] == 1 ? 1.0 : 1.0 - t);
            if (a->count[i] == 2) w[1] = (float)t;
        }
    }
    return a->maxk;
}

static void axis_free(axis *a) { free(a->first); free(a->count); free(a->w); }

qd_status qd_resize_rgb8(qd_ctx *ctx, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    if (!src || !dst || sw < 1 || sh < 1 || dw < 1 || dh < 1 || dw > 65536 || dh > 65536)
        return qd_fail(ctx, QD_ERR_ARG, "resize: bad sizes %d x %d -> %d x %d", sw, sh, dw, dh);
    axis ax = {0}, ay = {0};
    float *tmp = malloc(sizeof(float) * (size_t)dw * (size_t)sh * 3);   /* rows resized, columns not yet */
    if (!tmp || axis_init(&ax, sw, dw) < 0 || axis_init(&ay, sh, dh) < 0) {
        free(tmp); axis_free(&ax); axis_free(&ay);
        return qd_fail(ctx, QD_ERR_NOMEM, "resize: out of memory");
    }
    for (int y = 0; y < sh; y++)
        for (int x = 0; x < dw; x++) {
            const float *w = ax.w + (size_t)x * ax.maxk;
            float acc[3] = {0, 0, 0};
            for (int k = 0; k < ax.count[x]; k++) {
                const uint8_t *p = src + ((size_t)y * sw + ax.first[x] + k) * 3;
                for (int c = 0; c < 3; c++) acc[c] += w[k] * p[c];
            }
            for (int c = 0; c < 3; c++) tmp[((size_t)y * dw + x) * 3 + c] = acc[c];
        }
    for (int y = 0; y < dh; y++) {
        const float *w = ay.w + (size_t)y * ay.maxk;
        for (int x = 0; x < dw; x++) {
            float acc[3] = {0, 0, 0};
            for (int k = 0; k < ay.count[y]; k++) {
                const float *p = tmp + ((size_t)(ay.first[y] + k) * dw + x) * 3;
                for (int c = 0; c < 3; c++) acc[c] += w[k] * p[c];
            }
            for (int c = 0; c < 3; c++) {
                float v = roundf(acc[c]);
                dst[((size_t)y * dw + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
    return QD_OK;
}
