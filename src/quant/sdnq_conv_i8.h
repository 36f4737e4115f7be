/* SDNQ Conv2d through the int8 quantized matmul (spec sdnq.md §1.9, "Conv with qmm
 * uses im2col"): each output pixel's unfolded input row (in * kh * kw values, zero
 * padding included) is quantized per token, s = amax_row / 127, q = RNE(x / s), and
 * multiplied by the int8 weight [out, in * kh * kw] as the Linear path does. */
#ifndef QD_QUANT_SDNQ_CONV_I8_H
#define QD_QUANT_SDNQ_CONV_I8_H

#include <stdint.h>
#include "base/ctx.h"
#include "tensor/weight.h"

/* y [B, Cout, Ho, Wo] = conv(x) + bias + beta * y (beta 0: y only written) with x
 * [B, Cin, H, W] NCHW, as qd_conv2d_acc, through int8 when w is an SDNQ Conv layer of
 * this kernel shape that runs int8 under ctx's matmul mode for B * Ho * Wo pixels
 * (qd_sdnq_uses_int8). Returns 1 when it computed y, 0 when the caller's exact
 * convolution is to run (not such a layer, or no scratch memory: y untouched). */
int qd_sdnq_conv_i8(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W, const qd_weight *w,
                    const float *bias, int kh, int kw, int stride, int pt, int pb, int pl, int pr, float beta,
                    float *y);

/* Tests: the bytes of activation codes per chunk of output pixels (default 2 MiB) and
 * of the SVD branch's whole-input projections (default 32 MiB; above, per chunk).
 * <= 0: the default. Not thread-safe: set before running. */
void qd_sdnq_conv_i8_limits(int64_t chunk_bytes, int64_t u_bytes_max);

#endif
