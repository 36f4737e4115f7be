/* Packed, cache-blocked int8 GEMM for quantized matmul (spec sdnq.md §1.9):
 *
 *   y[m, n] (+)= s_x[m] * (s_w[n] * sum_k xq[m,k] wq[n,k] + zp[n] * sum_k xq[m,k]) + bias[n]
 *
 * xq are per-token int8 activations (row-major, K padded to kp = multiple of 4),
 * wq int8 weight codes packed once per call into panels of QD_I8_NR outputs. The
 * int32 dot products are exact; everything else is fp32.
 *
 * Kernels per ISA behind one run-time choice (QD_ISA=generic|avx2 narrows it):
 * - AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so panels hold
 *   w + 128 (as u8) and the activation is the signed operand, broadcast from
 *   memory; sum (w+128) x = sum w x + 128 sum x, undone in the epilogue with the
 *   per-token code sum that the zero-point term needs anyway.
 * - AVX2: maddubs(|w|, sign(x, w)) + madd(1) (no int16 saturation: |w| <= 128,
 *   |x| <= 127); panels hold w.
 * - generic C: the same integers.
 * Register tile: QD_I8_MR tokens x QD_I8_NR outputs (6 x 64: 24 zmm accumulators). */
#ifndef QD_QUANT_INT8_GEMM_H
#define QD_QUANT_INT8_GEMM_H

#include <stdint.h>
#include "base/ctx.h"

#define QD_I8_NR 64     /* outputs per packed panel */
#define QD_I8_MR 6      /* tokens per micro-kernel call */
#define QD_I8_MAX_K 65536   /* keeps int32 sums exact: kp * 255 * 127 < 2^31 */

typedef enum { QD_I8_GENERIC, QD_I8_AVX2, QD_I8_VNNI } qd_i8_isa;

/* The best kernel this CPU runs (QD_ISA=generic|avx2 narrows it, as for the float GEMM). */
qd_i8_isa qd_i8_pick(void);
int qd_i8_supported(qd_i8_isa isa);
const char *qd_i8_isa_name(qd_i8_isa isa);

static inline int64_t qd_i8_kpad(int64_t K) { return (K + 3) / 4 * 4; }

/* ---- quantization (§1.9 step 4): s = amax/127, q = RNE(x / s), clamp [-127, 127] ---- */

/* One row: writes kp codes (the K..kp tail zero), returns s (0 for an all-zero row:
 * codes 0), *sum = sum of the codes. NaN inputs give code -127, never UB. */
float qd_i8_quantize_row(qd_i8_isa isa, const float *x, int64_t K, int64_t kp, int8_t *q, int32_t *sum);

/* The codes of K floats for a scale s > 0 chosen by the caller (the same division,
 * rounding and clamp as qd_i8_quantize_row): q[0..K) written, returns their sum. Lets
 * a conv quantize one im2col row piecewise with the row's scale (sdnq_conv_i8.c). */
int32_t qd_i8_quantize_scaled(qd_i8_isa isa, const float *x, int64_t K, float s, int8_t *q);

/* max |x[k]| over K floats (vectorised). */
float qd_i8_amax(qd_i8_isa isa, const float *x, int64_t K);

/* ---- weight panels ---- */

/* Bytes of one packed panel: layout [kp/4][QD_I8_NR][4] (4 consecutive k of one output
 * per 32-bit lane), byte values as the ISA's kernel reads them. */
static inline int64_t qd_i8_panel_bytes(int64_t kp) { return kp * QD_I8_NR; }

/* Pack nb <= QD_I8_NR rows of signed int8 weights (row r at rows + r*ld, K codes);
 * missing rows and the k tail are weight 0. */
void qd_i8_pack_rows(qd_i8_isa isa, const int8_t *rows, int64_t ld, int nb, int64_t K, int64_t kp, uint8_t *panel);

/* Pack from a [K, ld] byte matrix (sdnq's transposed int8/uint8 storage): output n of
 * the panel is column n0 + n, nb <= QD_I8_NR of them. The weight is byte ^ flip as a
 * signed int8 (flip = 0x80 for uint8 codes: q - 128). */
void qd_i8_pack_cols(qd_i8_isa isa, const uint8_t *codes, int64_t ld, int64_t n0, int nb, int64_t K, int64_t kp,
                     uint8_t flip, uint8_t *panel);

/* ---- the GEMM ---- */

typedef struct {
    const int8_t *xq;       /* [Mp, kp] codes, Mp = M rounded up to QD_I8_MR (pad rows zero) */
    const float *sx;        /* [M] per-token scale */
    const int32_t *xsum;    /* [M] per-token code sum */
    int64_t M, kp;
    const uint8_t *panels;  /* ceil(N / QD_I8_NR) panels, each qd_i8_panel_bytes(kp) */
    int64_t N;
    const float *sw;        /* [N] per-output weight scale */
    const float *zp;        /* [N] per-output zero point (weight units), or NULL */
    const float *bias;      /* [N] or NULL */
    float *y;               /* y[m * ldy + n] */
    int64_t ldy;
    int accumulate;         /* 1: y += result, 0: y = result */
} qd_i8_gemm_args;

/* Runs on the context's threads (items of tokens x outputs claimed dynamically; the
 * result is the same for any thread count). Returns 0, or -1 when the scratch could
 * not be allocated (y is then untouched). */
int qd_i8_gemm(qd_ctx *ctx, qd_i8_isa isa, const qd_i8_gemm_args *g);

#endif
