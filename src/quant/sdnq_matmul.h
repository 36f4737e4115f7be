/* SDNQ's quantized matmul (spec sdnq.md §1.9) with int8 activations: per-token
 * int8 activations, int32 accumulation against int8 weight codes, then the rescale,
 * zero-point and SVD terms. It is an approximation of the exact (dequantizing)
 * path, selected per layer by the model's config or by qd_set_matmul(). */
#ifndef QD_QUANT_SDNQ_MATMUL_H
#define QD_QUANT_SDNQ_MATMUL_H

#include <stdint.h>
#include "base/ctx.h"
#include "tensor/weight.h"
#include "quant/sdnq_weight.h"
#include "quant/int8_gemm.h"

/* QD_MATMUL_CONFIG / EXACT / INT8: see include/qdiff.h */

/* 1 if a linear over M tokens (a conv over M output pixels) with this layer runs int8
 * under ctx->matmul_mode: EXACT never; INT8 for every Linear and Conv layer (K <=
 * QD_I8_MAX_K = 65536; not a Conv with kernel > 1x1 and a Hadamard rotation); CONFIG
 * when sdnq would: the layer qualifies for quantized matmul (§1.4 step 2, for a Conv
 * with use_quantized_matmul_conv) with an integer matmul dtype, and M >= 32 tokens
 * (sdnq dequantizes for fewer). Float matmul dtypes (fp8/fp16) have no kernel here
 * and run exact. */
int qd_sdnq_uses_int8(const qd_ctx *ctx, const qd_sdnq_state *s, int64_t M);

/* The qd_weight.linear hook of SDNQ Linear layers: y = x . W^T + bias through int8
 * when qd_sdnq_uses_int8 says so (returns 1), else returns 0 (exact GEMM). Weights
 * whose codes are not per-output int8-compatible (groups, codebook, > 8 bits,
 * floats) are re-quantized per output row on the fly, as sdnq does. */
int qd_sdnq_linear(qd_ctx *ctx, const qd_weight *w, const float *x, int64_t M, const float *bias, float *y);

/* For callers that fuse: 1 if w is an SDNQ weight that runs int8 for M tokens here. */
int qd_sdnq_uses_int8_weight(const qd_ctx *ctx, const qd_weight *w, int64_t M);

/* A layer's int8 weight panels packed once, for a caller that runs the same layer
 * over several row chunks of one M-token call (the UNet's feed-forward). NULL when
 * the layer does not run int8 for M tokens, or without memory (then each call packs
 * for itself and decides by its own row count). */
typedef struct qd_sdnq_i8_panels qd_sdnq_i8_panels;
qd_sdnq_i8_panels *qd_sdnq_i8_prepack(qd_ctx *ctx, const qd_weight *w, int64_t M);
void qd_sdnq_i8_panels_free(qd_sdnq_i8_panels *p);

/* For the conv (quant/sdnq_conv_i8.c): all int8 panels of the layer s with its columns
 * permuted, packed column k = stored column perm[k] (cols entries), so the activation
 * rows may come in another K order; NULL without memory. */
qd_sdnq_i8_panels *qd_sdnq_i8_pack_perm(qd_ctx *ctx, const qd_sdnq_state *s, const int32_t *perm);

/* y[m * ldy + n] (+)= the int8 GEMM of activation codes xq ([M rounded up to QD_I8_MR,
 * kpad(cols)], pad rows zero) with scales sx and code sums xsum against p, with p's
 * weight scales and zero points, + bias. 0, or -1 without scratch (y untouched). */
int qd_sdnq_i8_panels_gemm(qd_ctx *ctx, const qd_sdnq_i8_panels *p, const int8_t *xq, const float *sx,
                           const int32_t *xsum, int64_t M, const float *bias, float *y, int64_t ldy, int accumulate);
/* The kernel the panels were packed for (the activation codes must be quantized for the same one). */
qd_i8_isa qd_sdnq_i8_panels_isa(const qd_sdnq_i8_panels *p);

/* y[m * ldy + n] = (accumulate ? y : 0) + x . W^T + bias through int8, with the panels
 * of qd_sdnq_i8_prepack for this w (the int8 decision was taken there) or NULL (packed
 * here). Returns 0 when w is not an SDNQ weight,
 * the layer does not run int8 for M tokens under ctx's mode, or scratch could not be
 * allocated: y is then to be computed by the caller's exact GEMM. */
int qd_sdnq_linear_into(qd_ctx *ctx, const qd_weight *w, const qd_sdnq_i8_panels *pre, const float *x, int64_t M,
                        const float *bias, float *y, int64_t ldy, int accumulate);

#endif
