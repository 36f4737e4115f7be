/* Overlapping-tile execution with linear blending (see vae_tiles.h). Besides the
 * outputs it holds one input tile, one output tile per output and a weight map of
 * the output's size (one plane). */
#include "models/vae_tiles.h"

#include <stdlib.h>
#include <string.h>

/* Tile starts along one axis of n input pixels; returns the count (at most cap). */
static int starts(int64_t n, int64_t tile, int64_t overlap, int64_t den, int64_t *s, int cap) {
    if (n <= tile) { s[0] = 0; return 1; }
    int k = 0;
    int64_t last = (n - tile) / den * den;
    for (int64_t x = 0; x < last && k < cap - 1; x += tile - overlap) s[k++] = x;
    s[k++] = last;
    return k;
}

/* Blend weight of output pixel i of a tile of length len along one axis. */
static float ramp(int64_t i, int64_t len, double ov, int prev, int next) {
    double w = 1.0;
    if (ov > 0 && prev && (i + 0.5) / ov < w) w = (i + 0.5) / ov;
    if (ov > 0 && next && (len - i - 0.5) / ov < w) w = (len - i - 0.5) / ov;
    return (float)w;
}

enum { MAX_TILES = 4096 };

qd_status qd_tiles_run(qd_ctx *ctx, const qd_tile_plan *p, const float *in, qd_tile_fn fn, void *user,
                       float *out0, float *out1) {
    int64_t den = p->den, num = p->num;
    if (p->tile <= 0 || p->tile % den || p->overlap < 0 || p->overlap % den || 2 * p->overlap > p->tile)
        return qd_fail(ctx, QD_ERR_ARG, "vae tiling: tile %lld / overlap %lld pixels are not valid",
                       (long long)p->tile, (long long)p->overlap);
    int64_t *sy = malloc(sizeof(int64_t) * MAX_TILES), *sx = malloc(sizeof(int64_t) * MAX_TILES);
    if (!sy || !sx) { free(sy); free(sx); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    int ny = starts(p->H, p->tile, p->overlap, den, sy, MAX_TILES), nx = starts(p->W, p->tile, p->overlap, den, sx, MAX_TILES);
    int64_t th = p->H < p->tile ? p->H : p->tile, tw = p->W < p->tile ? p->W : p->tile;
    int64_t Ho = p->H * num / den, Wo = p->W * num / den, tho = th * num / den, two = tw * num / den;
    double ov = (double)(p->overlap * num / den);
    int64_t plane = Ho * Wo, tplane = tho * two;
    float *tin = qd_malloc_aligned(ctx, sizeof(float) * (size_t)(p->B * p->cin * th * tw));
    float *t0 = qd_malloc_aligned(ctx, sizeof(float) * (size_t)(p->B * p->cout * tplane));
    float *t1 = p->nout > 1 ? qd_malloc_aligned(ctx, sizeof(float) * (size_t)(p->B * p->cout * tplane)) : NULL;
    float *wsum = qd_calloc(ctx, (size_t)plane, sizeof(float));
    float *wy = malloc(sizeof(float) * (size_t)tho), *wx = malloc(sizeof(float) * (size_t)two);
    qd_status st = QD_OK;
    if (!tin || !t0 || (p->nout > 1 && !t1) || !wsum || !wy || !wx) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); goto done; }
    float *outs[2] = {out0, out1}, *touts[2] = {t0, t1};
    for (int o = 0; o < p->nout; o++) memset(outs[o], 0, sizeof(float) * (size_t)(p->B * p->cout * plane));
    for (int ty = 0; ty < ny && st == QD_OK; ty++) {
        for (int64_t i = 0; i < tho; i++) wy[i] = ramp(i, tho, ov, ty > 0, ty < ny - 1);
        for (int tx = 0; tx < nx && st == QD_OK; tx++) {
            for (int64_t j = 0; j < two; j++) wx[j] = ramp(j, two, ov, tx > 0, tx < nx - 1);
            /* the input window, contiguous */
            for (int64_t bc = 0; bc < p->B * p->cin; bc++)
                for (int64_t i = 0; i < th; i++)
                    memcpy(tin + (bc * th + i) * tw, in + (bc * p->H + sy[ty] + i) * p->W + sx[tx], sizeof(float) * (size_t)tw);
            st = fn(ctx, user, tin, th, tw, t0, t1);
            if (st != QD_OK) break;
            int64_t oy = sy[ty] * num / den, ox = sx[tx] * num / den;
            for (int o = 0; o < p->nout; o++)
                for (int64_t bc = 0; bc < p->B * p->cout; bc++)
                    for (int64_t i = 0; i < tho; i++) {
                        const float *src = touts[o] + (bc * tho + i) * two;
                        float *dst = outs[o] + bc * plane + (oy + i) * Wo + ox;
                        for (int64_t j = 0; j < two; j++) dst[j] += wy[i] * wx[j] * src[j];
                    }
            for (int64_t i = 0; i < tho; i++)
                for (int64_t j = 0; j < two; j++) wsum[(oy + i) * Wo + ox + j] += wy[i] * wx[j];
        }
    }
    if (st == QD_OK)
        for (int o = 0; o < p->nout; o++)
            for (int64_t bc = 0; bc < p->B * p->cout; bc++)
                for (int64_t k = 0; k < plane; k++) outs[o][bc * plane + k] /= wsum[k];
done:
    free(sy); free(sx); free(tin); free(t0); free(t1); free(wsum); free(wy); free(wx);
    return st;
}
