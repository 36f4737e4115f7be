/* Few-token GEMM against a stored weight (see gemv.c): the weight streamed once,
 * no packing. Used by qd_gemm for M < QD_GEMV_MAX_M when B is a weight. */
#ifndef QD_TENSOR_GEMV_H
#define QD_TENSOR_GEMV_H

#include <stdint.h>
#include "base/ctx.h"
#include "tensor/gemm.h"

#define QD_GEMV_MAX_M 4   /* measured (bench_gemv): at 8 tokens the packed GEMM is as fast */

/* C[m*ldc + n] = alpha * x[m, :] . W[n, :] + beta*C + row_bias[m] + col_bias[n], for
 * M <= QD_GEMV_MAX_M tokens (x rows at stride ldx), K > 0; bf16: operands rounded to
 * bf16, products summed in fp32 (as the bf16 GEMM). Returns -1 when its buffers could
 * not be allocated (C incomplete when a thread's tile failed). */
int qd_gemv_weight(qd_ctx *ctx, int threads, int bf16, int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx,
                   const qd_weight *w, float *C, int64_t ldc, float alpha, float beta, const float *row_bias,
                   const float *col_bias);

#endif
