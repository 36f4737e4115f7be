/* Exact int8 x int8 -> int32 dot products for quantized matmul: activations
 * (int8 rows, K padded to a multiple of 4) against a packed panel of 32 weight
 * rows. Kernels per ISA behind one run-time choice: AVX-512 VNNI, AVX2, and a
 * plain C reference; all give identical integers. */
#ifndef QD_QUANT_INT8_GEMM_H
#define QD_QUANT_INT8_GEMM_H

#include <stdint.h>

#define QD_I8_NB 32     /* weight rows (outputs) per panel */
#define QD_I8_MR 8      /* activation rows per kernel call: callers pad M to a multiple */

typedef enum { QD_I8_GENERIC, QD_I8_AVX2, QD_I8_VNNI } qd_i8_isa;

/* The best kernel this CPU runs (QD_ISA=generic|avx2 narrows it, as for the float GEMM). */
qd_i8_isa qd_i8_pick(void);
int qd_i8_supported(qd_i8_isa isa);
const char *qd_i8_isa_name(qd_i8_isa isa);

static inline int64_t qd_i8_kpad(int64_t K) { return (K + 3) / 4 * 4; }

/* Put one activation row (int8 codes in [-127, 127], kp long, zero-padded) in the
 * form the kernel reads: VNNI multiplies unsigned bytes, so it gets x + 128. */
void qd_i8_prepare_row(qd_i8_isa isa, int8_t *row, int64_t kp);

/* Pack nb <= QD_I8_NB weight rows (int8, row stride K) as [kp/4][32][4]; missing rows
 * and columns are zero. wsum[n] = sum of row n's codes (undoes VNNI's +128). */
void qd_i8_pack(const int8_t *rows, int nb, int64_t K, int64_t kp, int8_t *panel, int32_t *wsum);

/* acc[m * QD_I8_NB + n] = sum_k x[m][k] * w[n][k] for QD_I8_MR prepared rows x (row
 * stride kp). Exact as long as kp * 255 * 128 < 2^31 (kp <= 65536). */
void qd_i8_kernel(qd_i8_isa isa, const int8_t *x, int64_t kp, const int8_t *panel, const int32_t *wsum, int32_t *acc);

#endif
