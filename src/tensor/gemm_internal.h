/* Shared by the GEMM driver (gemm.c), its packing routines (gemm_pack.c) and its
 * micro-kernels (gemm_kernels.c). Not used outside src/tensor/gemm*.c.
 *
 * Packed layouts, in 32-bit words (a word is one fp32, or in bf16 mode a pair of
 * bf16 values for k = 2p, 2p+1 with k = 2p in the low half, as vdpbf16ps reads them):
 *   A strip (MR rows of the operand that is broadcast): row r at word r*QD_GEMM_AST,
 *     word p of the row = k-step p. Rows stay row-major, so packing rows costs a copy
 *     (or a conversion) and no transpose.
 *   B strip (NR columns of C, loaded as vectors): word p*NR + j for k-step p. */
#ifndef QD_TENSOR_GEMM_INTERNAL_H
#define QD_TENSOR_GEMM_INTERNAL_H

#include <stdint.h>
#include "tensor/gemm.h"

#ifndef QD_GEMM_KCW
#define QD_GEMM_KCW 256                 /* k-steps (words) per K block: 256 fp32 or 512 bf16 (-D to tune) */
#endif
#define QD_GEMM_AST (QD_GEMM_KCW + 16)  /* A-strip row stride: +64 bytes spreads rows over cache sets */
#define QD_GEMM_MAXR 32                 /* largest MR or NR of any kernel */

/* c[MR x NR] (= or +=) A strip . B strip over kw k-steps; then += rb[i] (if rb) and
 * += cb[j] (if cb). */
typedef void (*qd_gemm_ukernel)(int64_t kw, const uint32_t *a, const uint32_t *b, float *c, int64_t ldc, int acc,
                                const float *rb, const float *cb);

/* The same for the first `rows` (1..MR-1) rows of the strips only, a full NR columns. */
typedef void (*qd_gemm_ukernel_rows)(int rows, int64_t kw, const uint32_t *a, const uint32_t *b, float *c, int64_t ldc,
                                     int acc, const float *rb, const float *cb);

typedef struct {
    int mr, nr;
    int bf16;                 /* operands are packed as bf16 pairs */
    qd_gemm_ukernel fn;
    const char *name;
    qd_gemm_ukernel_rows fn_rows;   /* NULL: edge strips run fn into a tile */
} qd_gemm_kernel;

/* The kernel for this CPU (QD_ISA=generic|avx2 forces a lower one); bf16 asks for the
 * vdpbf16ps kernel and gets the fp32 one when the CPU (or QD_ISA) has none. */
const qd_gemm_kernel *qd_gemm_kernel_pick(int bf16);

/* Floats of scratch the packers need. */
#define QD_GEMM_PACK_SCRATCH (2 * 2 * QD_GEMM_KCW * QD_GEMM_MAXR)

/* Rows [i0, i0+n) x k [k0, k0+kc) of m into A strips of mr rows (alpha applied);
 * rows past n in the last strip and the odd half of a last bf16 pair are zero. */
void qd_gemm_pack_a(qd_mat m, int64_t i0, int64_t n, int64_t k0, int64_t kc, int mr, int bf16, float alpha,
                    uint32_t *dst, float *scratch);
/* Columns [j0, j0+n) x k [k0, k0+kc) of m into B strips of nr columns. */
void qd_gemm_pack_b(qd_mat m, int64_t j0, int64_t n, int64_t k0, int64_t kc, int nr, int bf16,
                    uint32_t *dst, float *scratch);

/* tensor/gemm_lowrank.c: when A or B is a weight with a low-rank term (qd_weight.decode_base)
 * that costs less applied to the activations than folded into every decoded tile, runs the
 * whole qd_gemm_cbatch that way, sets *rc (0 or -1 as qd_gemm_cbatch) and returns 1; else 0. */
int qd_gemm_lowrank(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                    int64_t c_cols, int64_t c_bstride, float alpha, float beta, const float *row_bias,
                    const float *col_bias, int *rc);

/* qd_gemm_cbatch (packed path, no GEMV or low-rank split) with rows i >= m_split of the
 * result going to C2[(i - m_split) * ldc2 + j] instead, without the biases. */
int qd_gemm_split_rows(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                       int64_t c_cols, int64_t c_batch_stride, float alpha, float beta, const float *row_bias,
                       const float *col_bias, int64_t m_split, float *C2, int64_t ldc2);

/* tensor/gemm_thin.c: a convolution (A a weight, B im2col) over few output pixels, or few
 * rows of A against a weight B (a linear over few tokens), C already scaled by beta
 * (acc_first: accumulate into it): packs the small operand once for all K and gives each
 * thread whole groups of weight strips for all K blocks. Returns 1 and sets *rc (0, or -1
 * when buffers could not be allocated) when it ran the GEMM, 0 when the shape is not for it. */
int qd_gemm_thin(qd_ctx *ctx, int threads, const qd_gemm_kernel *kd, int64_t M, int64_t N, int64_t K, qd_mat A,
                 qd_mat B, float *C, int64_t ldc, int64_t c_cols, int64_t c_bstride, float alpha, int acc_first,
                 const float *row_bias, const float *col_bias, int *rc);

/* Words of one packed strip for kc k values. */
static inline int64_t qd_gemm_kw(int64_t kc, int bf16) { return bf16 ? (kc + 1) / 2 : kc; }
static inline int64_t qd_gemm_a_strip_words(int mr) { return (int64_t)mr * QD_GEMM_AST; }
static inline int64_t qd_gemm_b_strip_words(int64_t kw, int nr) { return kw * nr; }

#endif
