/* Generation-time LoRA on a stored weight, without touching the weight: the low-rank
 * delta B.A (A [rank, cols], B [rows, rank], the LoRA factor folded into B) is added to
 * every tile decode() produces, so every user of the weight (qd_linear, convolutions,
 * the models' fused GEMMs) computes with W + B.A, for dense, SDNQ and comfy_quant
 * weights alike. That costs rows*cols*rank per decode of the whole weight (about once
 * per GEMM call), independent of the tokens. Through qd_linear (the weight's linear
 * hook), a call with few tokens (M (rows + cols) < rows cols) takes the side path
 * y = x W^T + (x A^T) B^T instead, which costs M*rank*(rows+cols); and a format with its
 * own linear (SDNQ int8 matmul) keeps it, plus the side path. The models' fused GEMMs
 * that bypass qd_linear use the exact (decoding) GEMM for a layer with a delta. */
#ifndef QD_TENSOR_LORA_PATH_H
#define QD_TENSOR_LORA_PATH_H

#include <stdint.h>
#include "tensor/weight.h"

typedef struct qd_lora_delta {
    int64_t rank;
    float *A;   /* [rank, cols] */
    float *B;   /* [rows, rank] */
    void (*base_decode)(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);
    int (*base_linear)(qd_ctx *ctx, const qd_weight *w, const float *x, int64_t M, const float *bias, float *y);
    /* the weight's optional decoders, off while attached (they would not add the delta) */
    void (*base_decode_lowp)(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);
    void (*base_decode_kmajor)(const qd_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel, int64_t ld);
    void (*base_decode_base)(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);
} qd_lora_delta;

/* Attach B.A to w (its decode and linear are wrapped), taking ownership of A and B (malloc'd; freed on detach, or here on
 * failure). A weight already carrying a delta is an error (detach first). */
qd_status qd_lora_delta_attach(qd_ctx *ctx, qd_weight *w, float *A, float *B, int64_t rank);
/* Restore w as it was loaded and free its delta; nothing when none is attached. */
void qd_lora_delta_detach(qd_weight *w);

#endif
