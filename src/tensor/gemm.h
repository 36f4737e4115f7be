/* Matrix multiply for every dense op in the library (linear, convolution as
 * implicit GEMM, attention). Operands are "row sources": the GEMM asks each for
 * rows i, k-range [k0, k0+nk), so a weight stored as fp16, bf16 or a quantized
 * format is decoded one K block at a time inside the GEMM and never materialised
 * whole, and a convolution's input is read straight from NCHW. With a context in
 * bf16 mode (qd_ctx_bf16) operands are rounded to bf16 when packed and multiplied
 * with vdpbf16ps, accumulating in fp32. */
#ifndef QD_TENSOR_GEMM_H
#define QD_TENSOR_GEMM_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_weight qd_weight;

/* Element (i, k) of an operand. */
typedef enum {
    QD_MAT_ROWS,    /* float32, (i,k) = p[i*ld + k] */
    QD_MAT_COLS,    /* float32, (i,k) = p[k*ld + i] (the transpose of a row-major matrix) */
    QD_MAT_WEIGHT,  /* rows of a stored weight matrix (any dtype/format): see weight.h */
    QD_MAT_IM2COL   /* B operand only: a convolution's input as im2col, see qd_conv_src */
} qd_mat_kind;

/* A convolution input x [batch, Cin, H, W] seen as the matrix (j, k) with
 * j = (b*Ho + oy)*Wo + ox and k = (c*kh + ky)*kw + kx: the value the kernel tap
 * (ky, kx) of channel c reads for output (oy, ox), 0 in the padding. */
typedef struct qd_conv_src {
    const float *x;
    int64_t Cin, H, W, Ho, Wo;
    int kh, kw, stride, pt, pl;
} qd_conv_src;

typedef struct {
    qd_mat_kind kind;
    const float *p;
    int64_t ld;
    const qd_weight *w;
    const qd_conv_src *conv;
} qd_mat;

static inline qd_mat qd_rows(const float *p, int64_t ld) { qd_mat m = {QD_MAT_ROWS, p, ld, 0, 0}; return m; }
static inline qd_mat qd_cols(const float *p, int64_t ld) { qd_mat m = {QD_MAT_COLS, p, ld, 0, 0}; return m; }
static inline qd_mat qd_wmat(const qd_weight *w) { qd_mat m = {QD_MAT_WEIGHT, 0, 0, w, 0}; return m; }
static inline qd_mat qd_im2col(const qd_conv_src *c) { qd_mat m = {QD_MAT_IM2COL, 0, 0, 0, c}; return m; }

/* C[i*ldc + j] = alpha * sum_k A(i,k) * B(j,k) + (beta ? C[i*ldc+j] * beta : 0)
 *               + (row_bias ? row_bias[i] : 0) + (col_bias ? col_bias[j] : 0)
 * for i < M, j < N. Runs on the context's threads. With at most QD_GEMV_MAX_M (4) rows of
 * A against a stored weight B (not input-major storage) it streams the weight once
 * instead of packing it (tensor/gemv.h; QD_NO_GEMV=1 in the environment turns that off). A
 * weight with a low-rank term (SDNQ's SVD, qd_weight.decode_base) may have the term applied
 * to the other operand instead of every decoded tile (tensor/gemm_lowrank.c). */
void qd_gemm(qd_ctx *ctx, int64_t M, int64_t N, int64_t K,
             qd_mat A, qd_mat B, float *C, int64_t ldc,
             float alpha, float beta, const float *row_bias, const float *col_bias);

/* qd_gemm with C split into batches along N: column j of C lives at
 * C[(j / c_cols) * c_batch_stride + i*ldc + j % c_cols] (c_cols = 0: C[i*ldc + j]).
 * A convolution over a batch is one such GEMM, so its weight is packed once. One over few
 * output pixels (<= 256) with K over several blocks runs tensor/gemm_thin.c instead of the
 * blocked driver (QD_NO_GEMM_THIN=1 in the environment turns that off), and so does a GEMM
 * of at most 512 rows of A against a weight B with K over several blocks (a linear over
 * few tokens; QD_NO_GEMM_SMALLM=1 turns that off).
 * Returns -1 when its buffers cannot be allocated (C incomplete; the caller reports
 * it with qd_op_failed, naming its op), else 0. */
int qd_gemm_cbatch(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                    int64_t c_cols, int64_t c_batch_stride, float alpha, float beta, const float *row_bias,
                    const float *col_bias);

/* Same as qd_gemm (always fp32), on the calling thread only (for callers that parallelise outside, e.g. per head).
 * Returns -1 (C untouched or partial) when its packing buffers cannot be allocated.
 * qd_gemm reports that through qd_op_failed(). */
int qd_gemm_serial(int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                   float alpha, float beta, const float *row_bias, const float *col_bias);

/* Name of the fp32 micro-kernel chosen for this CPU ("avx512", "avx2", "generic"). */
const char *qd_gemm_isa(void);
/* Name of the kernel a context's GEMMs use ("avx512bf16" in bf16 mode, else qd_gemm_isa()). */
const char *qd_gemm_kernel_name(const qd_ctx *ctx);

#endif
