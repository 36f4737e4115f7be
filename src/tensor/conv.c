#include "tensor/conv.h"
#include "tensor/gemm.h"
#include "quant/sdnq_conv_i8.h"

/* Convolution as one implicit GEMM per call: C[Cout, batch*Ho*Wo] = W[Cout, Cin*kh*kw]
 * . im2col(x), where the GEMM reads im2col(x) straight from the NCHW input while it
 * packs each block (no im2col buffer), packs the weight once per K block for the
 * whole batch, and adds the bias as it stores the last K block. */

void qd_conv2d_acc(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pt, int pb, int pl, int pr, float beta, float *y) {
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    int64_t Cout = w->rows, K = Cin * kh * kw, S = Ho * Wo;
    double t0 = ctx->trace ? qd_now() : 0;
    qd_conv_src src = {x, Cin, H, W, Ho, Wo, kh, kw, stride, pt, pl};
    /* an SDNQ layer that runs its quantized matmul (int8 mode or its config) does it here */
    if (Ho > 0 && Wo > 0 && !qd_sdnq_conv_i8(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pt, pb, pl, pr, beta, y) &&
        qd_gemm_cbatch(ctx, Cout, B * S, K, qd_wmat(w), qd_im2col(&src), y, S, S, Cout * S, 1.0f, beta, bias, NULL))
        qd_op_failed(ctx, "convolution");
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

void qd_conv2d_pad(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   const qd_weight *w, const float *bias, int kh, int kw, int stride,
                   int pt, int pb, int pl, int pr, float *y) {
    qd_conv2d_acc(ctx, x, B, Cin, H, W, w, bias, kh, kw, stride, pt, pb, pl, pr, 0.0f, y);
}
