/* SDNQ int8 matmul for few tokens (see sdnq_gemv_i8.c): no weight panels, the weight
 * read once, split over the threads by outputs. Same results as the packed int8 GEMM.
 * Used only with QD_I8_GEMV=1: on FLUX's adaLN shape it measured slower than the packed
 * int8 GEMM (bench_gemv; 16 outputs per step read the transposed codes 16 bytes per
 * 18 KB row). */
#ifndef QD_QUANT_SDNQ_GEMV_I8_H
#define QD_QUANT_SDNQ_GEMV_I8_H

#include <stdint.h>
#include "base/ctx.h"
#include "quant/sdnq_weight.h"

#define QD_SDNQ_GEMV_MAX_M 1

/* y[m * ldy + n] (+)= sx[m] * (sw[n] * sum_k xq[m,k] wq[n,k] + zp[n] * xsum[m]) + bias[n]
 * for M <= QD_SDNQ_GEMV_MAX_M tokens (xq: [M, kp] codes, tail zero). direct: the layer's
 * stored codes are the int8 weights (row scale); else the base weight is re-quantized
 * per row. Returns -1 (y untouched) without AVX-512 BW/VL or memory. */
int qd_sdnq_i8_gemv(qd_ctx *ctx, const qd_sdnq_state *s, int direct, const int8_t *xq, int64_t kp, const float *sx,
                    const int32_t *xsum, int64_t M, const float *bias, float *y, int64_t ldy, int accumulate);

#endif
