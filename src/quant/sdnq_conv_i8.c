/* SDNQ Conv2d as an int8 GEMM over im2col rows, without an im2col buffer of floats:
 *
 *   1. the input goes to pixel-major (NHWC) once, and each input pixel's channel
 *      amax max_c |x| is kept: an output pixel's row amax (its receptive field, the
 *      zero padding adding nothing) is the max of kh x kw of them;
 *   2. the K order is tap-major (k = (ky * kw + kx) * Cin + c): an output pixel's row
 *      is kh * kw runs of Cin contiguous NHWC floats, quantized with the row's scale
 *      straight into the int8 GEMM's row-major codes; the weight panels use the same
 *      column order (qd_sdnq_i8_pack_perm), packed once per call;
 *   3. output pixels go in chunks whose codes stay in cache (CHUNK_BYTES): quantize,
 *      the int8 GEMM into a pixel-major tile [pixels, Cout] with the bias, then the
 *      tile is transposed into the NCHW output (accumulating when asked);
 *   4. SVD (W = base + up . down): the float branch is a conv with svd_down as its
 *      [r, Cin * kh * kw] weight, then y (+)= up . t per batch item, before step 3,
 *      which then accumulates.
 * The codes, scales, sums and the int8 epilogue are those of the Linear path
 * (quant/sdnq_matmul.c, quant/int8_gemm.c) on the same rows: only the K order of
 * the exact int32 sums differs. */
#include "quant/sdnq_conv_i8.h"
#include "quant/sdnq_matmul.h"
#include "quant/int8_gemm.h"
#include "base/act_pool.h"
#include "base/threads.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (2 << 20)   /* activation codes per chunk of output pixels */

typedef struct {
    const float *x;
    int64_t C, H, W;
    float *xn;       /* [B, H, W, C] */
    float *pamax;    /* [B, H, W]: max_c |x| (NaN ignored, as qd_i8_amax does) */
} nhwc_job;

/* One input row (b, h) per item: transposed in blocks of 16 pixels (reads along the
 * NCHW rows, writes 16 pixel rows of C floats that stay in L1), amax over channels. */
static void nhwc_rows(void *arg, int64_t b, int64_t e, int thread) {
    const nhwc_job *j = arg;
    int64_t C = j->C, H = j->H, W = j->W, HW = H * W;
    for (int64_t row = b; row < e; row++) {
        int64_t bi = row / H, h = row % H;
        const float *xr = j->x + bi * C * HW + h * W;
        float *dst = j->xn + row * W * C, *am = j->pamax + row * W;
        for (int64_t w = 0; w < W; w++) am[w] = 0;
        for (int64_t c = 0; c < C; c++) {
            const float *src = xr + c * HW;
            for (int64_t w = 0; w < W; w++) {
                float a = src[w] < 0 ? -src[w] : src[w];
                am[w] = a > am[w] ? a : am[w];
            }
        }
        for (int64_t w0 = 0; w0 < W; w0 += 16) {
            int64_t w1 = w0 + 16 < W ? w0 + 16 : W;
            for (int64_t c = 0; c < C; c++) {
                const float *src = xr + c * HW;
                for (int64_t w = w0; w < w1; w++) dst[w * C + c] = src[w];
            }
        }
    }
}

typedef struct {
    qd_i8_isa isa;
    const float *xn, *pamax;
    int64_t C, H, W, Ho, Wo, S;
    int kh, kw, stride, pt, pl;
    int64_t K, kp;
    int64_t m0;          /* first output pixel (global index b * S + s) of the chunk */
    int8_t *xq;          /* [chunk rows, kp] */
    float *sx;
    int32_t *xsum;
    /* the tile -> NCHW step */
    const float *tile;   /* [rows, N] */
    float *y;
    int64_t N, rows;
    float beta;
} conv_job;

/* The chunk's rows [b, e): the receptive field's amax, then each tap's run of Cin codes
 * (zero codes for a tap in the padding), the K..kp tail zero. */
static void quantize_pixels(void *arg, int64_t b, int64_t e, int thread) {
    const conv_job *j = arg;
    int64_t C = j->C;
    for (int64_t r = b; r < e; r++) {
        int64_t gm = j->m0 + r, bi = gm / j->S, s = gm % j->S, oy = s / j->Wo, ox = s % j->Wo;
        int64_t iy0 = oy * j->stride - j->pt, ix0 = ox * j->stride - j->pl;
        const float *pam = j->pamax + bi * j->H * j->W;
        float amax = 0;
        for (int ky = 0; ky < j->kh; ky++) {
            int64_t iy = iy0 + ky;
            if (iy < 0 || iy >= j->H) continue;
            for (int kx = 0; kx < j->kw; kx++) {
                int64_t ix = ix0 + kx;
                if (ix < 0 || ix >= j->W) continue;
                float a = pam[iy * j->W + ix];
                amax = a > amax ? a : amax;
            }
        }
        float sc = amax / 127.0f;   /* as qd_i8_quantize_row */
        int8_t *q = j->xq + r * j->kp;
        memset(q + j->K, 0, (size_t)(j->kp - j->K));
        if (!(sc > 0)) {            /* an all-zero row: codes 0 */
            memset(q, 0, (size_t)j->K);
            j->sx[r] = 0;
            j->xsum[r] = 0;
            continue;
        }
        int32_t sum = 0;
        for (int ky = 0; ky < j->kh; ky++)
            for (int kx = 0; kx < j->kw; kx++) {
                int64_t iy = iy0 + ky, ix = ix0 + kx;
                int8_t *qt = q + (ky * j->kw + kx) * C;
                if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) memset(qt, 0, (size_t)C);
                else sum += qd_i8_quantize_scaled(j->isa, j->xn + ((bi * j->H + iy) * j->W + ix) * C, C, sc, qt);
            }
        j->sx[r] = sc;
        j->xsum[r] = sum;
    }
}

/* y[b, n, s] = tile[r, n] (+ beta * y) for the chunk's rows r (pixel m0 + r = b * S + s);
 * an item is 32 outputs, walked in blocks of 32 pixels (L1-friendly strides both ways). */
static void tile_to_nchw(void *arg, int64_t b, int64_t e, int thread) {
    const conv_job *j = arg;
    for (int64_t it = b; it < e; it++) {
        int64_t n0 = it * 32, n1 = n0 + 32 < j->N ? n0 + 32 : j->N;
        for (int64_t r0 = 0; r0 < j->rows; r0 += 32) {
            int64_t r1 = r0 + 32 < j->rows ? r0 + 32 : j->rows;
            for (int64_t n = n0; n < n1; n++) {
                const float *t = j->tile + n;
                for (int64_t r = r0; r < r1; r++) {
                    int64_t gm = j->m0 + r, bi = gm / j->S, s = gm % j->S;
                    float *yp = j->y + (bi * j->N + n) * j->S + s;
                    *yp = j->beta != 0.0f ? *yp * j->beta + t[r * j->N] : t[r * j->N];
                }
            }
        }
    }
}

/* y [B, N, S] = beta * y + svd_up . conv(x, svd_down): the float low-rank branch. */
static int svd_branch(qd_ctx *ctx, const qd_sdnq_state *s, const float *x, int64_t B, int64_t Cin, int64_t H,
                      int64_t W, int kh, int kw, int stride, int pt, int pb, int pl, int pr, int64_t S, float beta,
                      float *y) {
    const qd_sdnq_layout *l = &s->l;
    int64_t r = l->svd_rank, N = l->out;
    float *t = qd_act_floats(ctx, B * r * S);
    if (!t) return 0;
    qd_st_tensor dt;
    memset(&dt, 0, sizeof dt);
    dt.name = "svd_down";
    dt.dtype = QD_F32;
    dt.ndim = 2;
    dt.shape[0] = r;
    dt.shape[1] = l->cols;
    dt.numel = r * l->cols;
    dt.data = s->svd_down;
    dt.nbytes = sizeof(float) * (size_t)dt.numel;
    dt.file = l->param;
    qd_weight down;
    qd_weight_dense(&down, &dt, r, l->cols);
    qd_conv2d_pad(ctx, x, B, Cin, H, W, &down, NULL, kh, kw, stride, pt, pb, pl, pr, t);
    for (int64_t b = 0; b < B; b++)
        qd_gemm(ctx, N, S, r, qd_rows(s->svd_up, r), qd_cols(t + b * r * S, S), y + b * N * S, S, 1.0f, beta, NULL,
                NULL);
    qd_act_free(ctx, t);
    return 1;
}

int qd_sdnq_conv_i8(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W, const qd_weight *w,
                    const float *bias, int kh, int kw, int stride, int pt, int pb, int pl, int pr, float beta,
                    float *y) {
    if (w->linear != qd_sdnq_linear || !w->quant || stride < 1) return 0;
    const qd_sdnq_state *s = w->quant;
    const qd_sdnq_layout *l = &s->l;
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1, S = Ho * Wo, M = B * S;
    int64_t ksize = (int64_t)kh * kw;
    if (l->cls != QD_SDNQ_CONV || l->kdims != 2 || l->kshape[0] != kh || l->kshape[1] != kw || l->in != Cin ||
        l->out != w->rows || Ho <= 0 || Wo <= 0 || !qd_sdnq_uses_int8(ctx, s, M))
        return 0;
    int64_t K = l->cols, N = l->out;
    /* tap-major K order: packed column (tap * Cin + c) is stored column (c * ksize + tap) */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)K);
    if (!perm) return 0;
    for (int64_t tap = 0; tap < ksize; tap++)
        for (int64_t c = 0; c < Cin; c++) perm[tap * Cin + c] = (int32_t)(c * ksize + tap);
    qd_sdnq_i8_panels *P = qd_sdnq_i8_pack_perm(ctx, s, perm);
    free(perm);
    if (!P) return 0;

    conv_job j;
    memset(&j, 0, sizeof j);
    j.isa = qd_sdnq_i8_panels_isa(P);
    j.C = Cin; j.H = H; j.W = W; j.Ho = Ho; j.Wo = Wo; j.S = S;
    j.kh = kh; j.kw = kw; j.stride = stride; j.pt = pt; j.pl = pl;
    j.K = K;
    j.kp = qd_i8_kpad(K);
    j.N = N;
    /* equal chunks of at most CHUNK_BYTES of codes (at least one micro-kernel row block) */
    int64_t mc = CHUNK_BYTES / j.kp;
    if (mc < QD_I8_MR) mc = QD_I8_MR;
    int64_t nch = (M + mc - 1) / mc;
    mc = ((M + nch - 1) / nch + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
    float *xn = qd_act_floats(ctx, B * H * W * Cin), *pamax = qd_act_floats(ctx, B * H * W);
    float *tile = qd_act_floats(ctx, mc * N);
    j.xq = qd_malloc_aligned(ctx, (size_t)(mc * j.kp));
    j.sx = malloc(sizeof(float) * (size_t)mc);
    j.xsum = malloc(sizeof(int32_t) * (size_t)mc);
    int ok = xn && pamax && tile && j.xq && j.sx && j.xsum;
    if (ok && l->svd) ok = svd_branch(ctx, s, x, B, Cin, H, W, kh, kw, stride, pt, pb, pl, pr, S, beta, y);
    if (ok) {
        nhwc_job nj = {x, Cin, H, W, xn, pamax};
        qd_parallel_for(ctx, B * H, nhwc_rows, &nj);
        j.xn = xn;
        j.pamax = pamax;
        j.tile = tile;
        j.y = y;
        j.beta = l->svd ? 1.0f : beta;   /* the SVD branch already holds beta * y */
        for (int64_t m0 = 0; m0 < M; m0 += mc) {
            int64_t rows = M - m0 < mc ? M - m0 : mc, rp = (rows + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
            j.m0 = m0;
            j.rows = rows;
            qd_parallel_for(ctx, rows, quantize_pixels, &j);
            memset(j.xq + rows * j.kp, 0, (size_t)((rp - rows) * j.kp));   /* pad rows the kernel reads */
            if (qd_sdnq_i8_panels_gemm(ctx, P, j.xq, j.sx, j.xsum, rows, bias, tile, N, 0)) {
                qd_op_failed(ctx, "int8 convolution");   /* y partly written: nothing can redo it */
                break;
            }
            qd_parallel_for(ctx, (N + 31) / 32, tile_to_nchw, &j);
        }
    }
    qd_act_free(ctx, xn);
    qd_act_free(ctx, pamax);
    qd_act_free(ctx, tile);
    free(j.xq);
    free(j.sx);
    free(j.xsum);
    qd_sdnq_i8_panels_free(P);
    return ok;
}
