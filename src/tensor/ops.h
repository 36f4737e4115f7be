/* The dense ops the models are built from. Activations are float32, contiguous,
 * NCHW for images and [batch, tokens, channels] for sequences. Every op runs on
 * the context's threads. */
#ifndef QD_TENSOR_OPS_H
#define QD_TENSOR_OPS_H

#include <stdint.h>
#include "base/ctx.h"
#include "tensor/weight.h"

/* y[M, N] = x[M, K] . W^T + bias (bias may be NULL). W is N x K. */
void qd_linear(qd_ctx *ctx, const float *x, int64_t M, const qd_weight *w, const float *bias, float *y);

/* 2-D convolution, square stride/padding. w is Cout x (Cin*kh*kw).
 * x [B, Cin, H, W] -> y [B, Cout, Ho, Wo]; Ho = (H + 2*pad - kh) / stride + 1. */
void qd_conv2d(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
               const qd_weight *w, const float *bias, int kh, int kw, int stride, int pad, float *y);
/* Same with separate top/bottom/left/right zero padding (e.g. diffusers' pad=0 downsample). */
void qd_conv2d_pad(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pad_top, int pad_bottom, int pad_left, int pad_right, float *y);

/* GroupNorm over x [B, C, S] (S = spatial size), in place or out of place; optional fused SiLU.
 * Vectorised, one pass for the statistics and one for normalise + affine + SiLU
 * (tensor/norm_act.c), threaded over (batch, group). */
void qd_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                   const float *gamma, const float *beta, int silu, float *y);
/* The same over x + xbias[b, c] (xbias [B, C], may be NULL), the sum never stored: a
 * ResnetBlock2D's time embedding added to conv1's output on its way into norm2. */
void qd_group_norm_bias(qd_ctx *ctx, const float *x, const float *xbias, int64_t B, int64_t C, int64_t S, int groups,
                        float eps, const float *gamma, const float *beta, int silu, float *y);

/* LayerNorm over the last dim of x [M, C]. gamma/beta may be NULL. In place allowed. */
void qd_layer_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps,
                   const float *gamma, const float *beta, float *y);
/* LayerNorm fused with the adaLN modulation that follows it:
 * y = (LN(x) * gamma + beta) * (1 + scale[b]) + shift[b], b = row / rows_per_batch, the
 * batch item's vectors at shift + b * ld and scale + b * ld (either may be NULL). */
void qd_layer_norm_mod(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps, const float *gamma,
                       const float *beta, int64_t rows_per_batch, const float *shift, const float *scale, int64_t ld,
                       float *y);
/* One row of qd_layer_norm_mod on the calling thread (for callers that thread over rows). */
void qd_ln_row(const float *x, int64_t n, float eps, const float *gamma, const float *beta, const float *scale,
               const float *shift, float *y);

/* RMSNorm over the last dim of x [M, C]: x / sqrt(mean(x^2) + eps) * gamma (gamma may
 * be NULL). In place allowed. (T5LayerNorm, SD3/FLUX qk-norm.) */
void qd_rms_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps, const float *gamma, float *y);

/* Elementwise, in place. silu and gelu are vectorised (norm_act.c). */
void qd_silu(float *x, int64_t n);
void qd_silu_par(qd_ctx *ctx, float *x, int64_t n);   /* qd_silu on the context's threads */
void qd_gelu(float *x, int64_t n);          /* exact erf GELU (erfc to 1.2e-7 relative) */
void qd_gelu_tanh(float *x, int64_t n);     /* tanh approximation */
void qd_quick_gelu(float *x, int64_t n);    /* x * sigmoid(1.702 x) */
void qd_add(float *y, const float *x, int64_t n);          /* y += x */
void qd_scale(float *x, int64_t n, float s);

/* GEGLU: x [M, 2F] -> y [M, F] = x[:, :F] * gelu(x[:, F:]) (diffusers' chunk order),
 * straight from the projection output, threaded over rows. */
void qd_geglu(qd_ctx *ctx, const float *x, int64_t M, int64_t F, float *y);

/* Tests: run the norm_act.c kernels at most at `level` (0 scalar, 1 AVX2+FMA, 2 AVX-512;
 * -1 = what the CPU has); returns the level in effect before. Not thread-safe. */
int qd_norm_act_force_isa(int level);

/* Softmax over rows of x [M, N], in place. */
void qd_softmax_rows(float *x, int64_t M, int64_t N);

/* Multi-head scaled dot-product attention.
 * q: [B, Lq, *] with row stride ldq, head h at columns [h*dh, (h+1)*dh); k, v likewise with Lk rows.
 * out: [B, Lq, heads*dh] (row stride heads*dh). causal: query i sees keys <= i. scale = 1/sqrt(dh). */
void qd_attention(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                  const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads, int64_t dh,
                  int causal, float *out);

/* Nearest-neighbour 2x upsampling: x [B*C, H, W] -> y [B*C, 2H, 2W]. */
void qd_upsample_nearest2x(qd_ctx *ctx, const float *x, int64_t BC, int64_t H, int64_t W, float *y);

/* [B, C, S] <-> [B, S, C] */
void qd_transpose_cs(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, float *y);

#endif
