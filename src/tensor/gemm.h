/* Matrix multiply for every dense op in the library (linear, conv via im2col,
 * attention). Operands are "row sources": the GEMM asks each for rows i, k-range
 * [k0, k0+nk) as float32, so a weight stored as fp16, bf16 or a quantized format
 * is decoded tile by tile inside the GEMM and never materialised whole. */
#ifndef QD_TENSOR_GEMM_H
#define QD_TENSOR_GEMM_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_weight qd_weight;

/* Element (i, k) of an operand. */
typedef enum {
    QD_MAT_ROWS,    /* float32, (i,k) = p[i*ld + k] */
    QD_MAT_COLS,    /* float32, (i,k) = p[k*ld + i] (the transpose of a row-major matrix) */
    QD_MAT_WEIGHT   /* rows of a stored weight matrix (any dtype/format): see weight.h */
} qd_mat_kind;

typedef struct {
    qd_mat_kind kind;
    const float *p;
    int64_t ld;
    const qd_weight *w;
} qd_mat;

static inline qd_mat qd_rows(const float *p, int64_t ld) { qd_mat m = {QD_MAT_ROWS, p, ld, 0}; return m; }
static inline qd_mat qd_cols(const float *p, int64_t ld) { qd_mat m = {QD_MAT_COLS, p, ld, 0}; return m; }
static inline qd_mat qd_wmat(const qd_weight *w) { qd_mat m = {QD_MAT_WEIGHT, 0, 0, w}; return m; }

/* C[i*ldc + j] = alpha * sum_k A(i,k) * B(j,k) + (beta ? C[i*ldc+j] * beta : 0)
 *               + (row_bias ? row_bias[i] : 0) + (col_bias ? col_bias[j] : 0)
 * for i < M, j < N. Runs on the context's threads. */
void qd_gemm(qd_ctx *ctx, int64_t M, int64_t N, int64_t K,
             qd_mat A, qd_mat B, float *C, int64_t ldc,
             float alpha, float beta, const float *row_bias, const float *col_bias);

/* Same, on the calling thread only (for callers that parallelise outside, e.g. per head).
 * Returns -1 (C untouched or partial) when its packing buffers cannot be allocated.
 * qd_gemm reports that through qd_op_failed(). */
int qd_gemm_serial(int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                   float alpha, float beta, const float *row_bias, const float *col_bias);

/* Name of the micro-kernel chosen for this CPU ("avx512", "avx2", "generic"). */
const char *qd_gemm_isa(void);

#endif
