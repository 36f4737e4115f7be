#include "tensor/ops.h"
#include "tensor/gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Convolution: im2col into row chunks, then one GEMM per chunk. */

typedef struct {
    const float *x; float *col;
    int64_t Cin, H, W, Wo, row0, rows;
    int kh, kw, stride, pt, pl;
} im2col_args;

static void im2col_part(void *arg, int64_t b, int64_t e, int thread) {
    const im2col_args *a = arg;
    int64_t n = a->rows * a->Wo;
    for (int64_t r = b; r < e; r++) {          /* r = (c, ky, kx) */
        int64_t c = r / (a->kh * a->kw);
        int ky = (int)(r / a->kw % a->kh), kx = (int)(r % a->kw);
        const float *xc = a->x + c * a->H * a->W;
        float *dst = a->col + r * n;
        for (int64_t oy = 0; oy < a->rows; oy++) {
            int64_t iy = (a->row0 + oy) * a->stride - a->pt + ky;
            float *d = dst + oy * a->Wo;
            if (iy < 0 || iy >= a->H) { memset(d, 0, sizeof(float) * (size_t)a->Wo); continue; }
            const float *xr = xc + iy * a->W;
            for (int64_t ox = 0; ox < a->Wo; ox++) {
                int64_t ix = ox * a->stride - a->pl + kx;
                d[ox] = (ix >= 0 && ix < a->W) ? xr[ix] : 0.0f;
            }
        }
    }
}

static void conv_im2col(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                        const qd_weight *w, const float *bias, int kh, int kw, int stride, int pt, int pl,
                        int64_t Ho, int64_t Wo, float *y) {
    int64_t Cout = w->rows, K = Cin * kh * kw, S = Ho * Wo;
    /* Bound the im2col buffer to ~32 MB by converting a band of output rows at a time. */
    int64_t rows = (int64_t)((8u << 20) / (uint64_t)(K * Wo));
    if (rows < 1) rows = 1;
    if (rows > Ho) rows = Ho;
    float *col = malloc(sizeof(float) * (size_t)(K * rows * Wo));
    if (!col) {
        qd_op_failed(ctx, "convolution");
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        for (int64_t r0 = 0; r0 < Ho; r0 += rows) {
            int64_t nr = Ho - r0 < rows ? Ho - r0 : rows;
            im2col_args a = {x + b * Cin * H * W, col, Cin, H, W, Wo, r0, nr, kh, kw, stride, pt, pl};
            qd_parallel_for(ctx, K, im2col_part, &a);
            qd_gemm(ctx, Cout, nr * Wo, K, qd_wmat(w), qd_cols(col, nr * Wo), y + b * Cout * S + r0 * Wo, S,
                    1.0f, 0.0f, bias, NULL);
        }
    }
    free(col);
}

void qd_conv2d_pad(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pt, int pb, int pl, int pr, float *y) {
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    int64_t Cout = w->rows, K = Cin * kh * kw, S = Ho * Wo;
    double t0 = ctx->trace ? qd_now() : 0;
    if (kh == 1 && kw == 1 && stride == 1 && !pt && !pb && !pl && !pr) {
        for (int64_t b = 0; b < B; b++)
            qd_gemm(ctx, Cout, S, K, qd_wmat(w), qd_cols(x + b * Cin * H * W, S), y + b * Cout * S, S,
                    1.0f, 0.0f, bias, NULL);
    } else {
        conv_im2col(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pt, pl, Ho, Wo, y);
    }
    if (ctx->trace) {
        /* batch, Cin, H, W, Cout, kh, kw, stride, pad top, bottom, left, right */
        int64_t d[12] = {B, Cin, H, W, Cout, kh, kw, stride, pt, pb, pl, pr};
        ctx->trace(ctx->trace_user, "conv2d", d, 12, qd_now() - t0);
    }
}

void qd_conv2d(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
               const qd_weight *w, const float *bias, int kh, int kw, int stride, int pad, float *y) {
    qd_conv2d_pad(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pad, pad, pad, pad, y);
}
