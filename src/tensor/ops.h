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

/* GroupNorm over x [B, C, S] (S = spatial size), in place or out of place; optional fused SiLU. */
void qd_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                   const float *gamma, const float *beta, int silu, float *y);

/* LayerNorm over the last dim of x [M, C]. gamma/beta may be NULL. */
void qd_layer_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps,
                   const float *gamma, const float *beta, float *y);

/* RMSNorm over the last dim of x [M, C]: x / sqrt(mean(x^2) + eps) * gamma (gamma may
 * be NULL). In place allowed. (T5LayerNorm, SD3/FLUX qk-norm.) */
void qd_rms_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps, const float *gamma, float *y);

/* Elementwise, in place. */
void qd_silu(float *x, int64_t n);
void qd_gelu(float *x, int64_t n);          /* exact erf GELU */
void qd_gelu_tanh(float *x, int64_t n);     /* tanh approximation */
void qd_quick_gelu(float *x, int64_t n);    /* x * sigmoid(1.702 x) */
void qd_add(float *y, const float *x, int64_t n);          /* y += x */
void qd_scale(float *x, int64_t n, float s);

/* GEGLU: x [M, 2F] -> y [M, F] = x[:, :F] * gelu(x[:, F:]) (diffusers' chunk order). */
void qd_geglu(const float *x, int64_t M, int64_t F, float *y);

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
