/* Quantize one weight the way sdnq does (spec sdnq.md §2 steps 2-10) into the
 * tensors sdnq stores for it (§1.4), for a layout that came from the same
 * derivation the reader uses (qd_sdnq_layout_derive). The result is checked with
 * the reader's own qd_sdnq_layout_check and decoded with its dequantizer to
 * measure the error, so a layout the loader would not accept is never written. */
#ifndef QD_QUANT_SDNQ_QUANTIZE_H
#define QD_QUANT_SDNQ_QUANTIZE_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"
#include "quant/sdnq_layout.h"

/* The SVD factors of one weight, kept across dynamic-quantization candidates (sdnq
 * computes Hadamard and SVD once per layer, §2 step 11). The caller owns the arrays. */
typedef struct {
    float *up, *down;       /* [out, r] and [r, cols], rounded to the model dtype */
    int64_t rank;
    int valid;
} qd_sdnq_svd_cache;

typedef struct {
    qd_sdnq_layout l;       /* the layer's layout (§1.4) */
    qd_dtype model_dtype;   /* F32, F16 or BF16: SVD factors are stored (and subtracted) in it */
    int svd_steps;          /* subspace iterations of the low-rank SVD */
    int codebook_steps;     /* Lloyd-Max iterations */
    uint64_t seed;          /* SVD start vectors */
    qd_sdnq_svd_cache *svd_cache;   /* NULL, or reused / filled when the layout has SVD */
} qd_sdnq_qspec;

enum { QD_SQ_WEIGHT, QD_SQ_SCALE, QD_SQ_ZERO_POINT, QD_SQ_SVD_UP, QD_SQ_SVD_DOWN, QD_SQ_NTENSORS };

typedef struct {
    /* Stored tensors by role; present[i] says which exist. t[i].name is the
     * suffix ("weight", "scale", ...); t[i].data is owned (qd_sdnq_qresult_free). */
    qd_st_out t[QD_SQ_NTENSORS];
    int present[QD_SQ_NTENSORS];
    qd_sdnq_layout l;       /* the layout as written (svd off when the SVD could not be computed) */
    int64_t bytes;          /* stored bytes of all tensors */
    double rel_err;         /* ||W - dequant|| / ||W|| against the input weight */
    double snr_db;          /* 10 log10(sum W^2 / sum (W - dequant)^2) */
    double loss;            /* sdnq's dynamic loss: MSE / unbiased variance of W (variance >= 1e-8) */
} qd_sdnq_qresult;

/* The tensors qd_sdnq_quantize stores for a layout (names are the suffixes, data
 * NULL): what a writer can lay out before quantizing. SVD factors are present
 * when the layout asks for SVD and the rank fits the weight (qd_sdnq_svd_fits). */
void qd_sdnq_stored_tensors(const qd_sdnq_layout *l, qd_dtype model_dtype, qd_st_out *t, int *present);
int qd_sdnq_svd_fits(const qd_sdnq_layout *l);

/* w: the layer's fp32 weight, [out, cols] row-major (Conv flattened). */
qd_status qd_sdnq_quantize(qd_ctx *ctx, const qd_sdnq_qspec *spec, const float *w, qd_sdnq_qresult *out);
void qd_sdnq_qresult_free(qd_sdnq_qresult *r);

#endif
