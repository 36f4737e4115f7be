/* Convolution entry points beyond ops.h's: accumulating into the output (a residual
 * add fused into the GEMM's store, so the sum needs no extra pass or buffer). */
#ifndef QD_TENSOR_CONV_H
#define QD_TENSOR_CONV_H

#include "tensor/ops.h"

/* y = conv(x) + bias + beta * y, otherwise as qd_conv2d_pad (beta 0: y is only written). */
void qd_conv2d_acc(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pad_top, int pad_bottom, int pad_left, int pad_right, float beta, float *y);

#endif
