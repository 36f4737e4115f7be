/* ComfyUI "comfy_quant" checkpoints (spec comfy-quant.md §1): a safetensors file in
 * which every quantized layer X has a "X.comfy_quant" U8 tensor holding its JSON
 * config, "X.weight" in the quantized storage and "X.weight_scale" (+ ".weight_scale_2",
 * ".input_scale", ".pre_quant_scale"). Opening validates every layer (format, dtypes,
 * shapes, scale granularity, block-scale bytes) against the file; afterwards each layer
 * decodes any rectangle of its weight to fp32, so it can serve the GEMM as a qd_weight
 * without a dequantized copy. */
#ifndef QD_QUANT_COMFY_QUANT_H
#define QD_QUANT_COMFY_QUANT_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"
#include "tensor/weight.h"

typedef enum {
    QD_CQ_FLOAT8_E4M3FN,            /* core; per-tensor scale (any granularity accepted, see below) */
    QD_CQ_FLOAT8_E5M2,
    QD_CQ_FLOAT8_E4M3FN_ROWWISE,    /* convert_to_quant only: scale [N] */
    QD_CQ_FLOAT8_E4M3FN_BLOCKWISE,  /* convert_to_quant only: scale [N/b, K/b] (or [N] fallback) */
    QD_CQ_INT8_TENSORWISE,          /* core; scalar or per-row scale, optional ConvRot */
    QD_CQ_INT8_BLOCKWISE,           /* convert_to_quant only: tiles, or the fork's [N, K/b, 1] */
    QD_CQ_INT8_AXISWISE,            /* fork: per-row */
    QD_CQ_NVFP4,                    /* E2M1 codes, swizzled E4M3 16-block scales, global scale */
    QD_CQ_MXFP8                     /* E4M3 codes, swizzled E8M0 32-block scales (also hybrid_mxfp8) */
} qd_cq_format;

/* How weight_scale maps to elements; inferred from its shape (§1.7), not the name. */
typedef enum {
    QD_CQ_SCALE_TENSOR,     /* one value */
    QD_CQ_SCALE_ROW,        /* [N] or [N,1] */
    QD_CQ_SCALE_TILE,       /* [N/b, K/b]: one per b x b tile */
    QD_CQ_SCALE_ROWGROUP,   /* [N, K/b, 1]: one per row and b columns */
    QD_CQ_SCALE_SWIZZLED    /* nvfp4 / mxfp8 block scales in the cuBLAS 128x4 tiled layout */
} qd_cq_scaling;

typedef struct {
    char *name;                 /* the layer prefix: its weight is "<name>.weight" */
    qd_cq_format format;
    char format_name[32];       /* as the config spells it */
    int64_t rows, cols;         /* logical weight [N out, K in] (padding of nvfp4/mxfp8 excluded) */
    const qd_st_tensor *weight; /* quantized storage, row-major */
    int64_t ld;                 /* storage row stride in bytes */
    qd_cq_scaling scaling;
    int64_t block;              /* tile / row-group edge; 16 nvfp4, 32 mxfp8 */
    float *scale;               /* fp32 copy of weight_scale (not for swizzled) */
    int64_t scale_cols;         /* scales per row (TILE/ROWGROUP: K/b) */
    const uint8_t *block_scale; /* swizzled scale bytes (nvfp4 E4M3, mxfp8 E8M0) */
    int64_t block_scale_cols;   /* padded logical scale columns (multiple of 4) */
    float global_scale;         /* nvfp4 weight_scale_2 */
    int convrot;                /* ConvRot: decoded weight = (q*s) . H per K-group */
    int64_t convrot_group;
    float *pre_quant_scale;     /* [cols] or NULL: the input is multiplied by it, folded into decode */
    int has_input_scale;
    float input_scale;          /* static activation scale (fp8 / nvfp4), when present */
    int full_precision_mm;      /* config asks for dequantize + plain matmul */
    float lut[256];             /* fp8 formats: each code's value */
} qd_cq_layer;

typedef struct qd_cq_model {
    char *path;
    qd_cq_layer *layers;        /* sorted by name */
    int n_layers;
} qd_cq_model;

/* Whether any tensor of the set ends in ".comfy_quant" (ComfyUI's detection, §1.4), or the
 * set has the legacy "scaled_fp8" marker (§1.2). */
int qd_cq_detect(const qd_st_set *st);

/* Parse and validate every quantized layer of `st` (opened from `path`): the per-layer
 * ".comfy_quant" tensors, overridden by __metadata__["_quantization_metadata"] when the
 * header has it (§1.4); legacy "scaled_fp8" files (.scale_weight / .scale_input) as
 * ComfyUI converts them (§1.2). Errors name the file, the layer and what is wrong; an unknown or
 * unsupported format is an error naming it. The model points into `st`: keep it open. */
qd_status qd_cq_open(qd_ctx *ctx, const qd_st_set *st, const char *path, qd_cq_model *out);
void qd_cq_close(qd_cq_model *m);

/* The layer named `name` ("X" or "X.weight"), or NULL. */
const qd_cq_layer *qd_cq_find(const qd_cq_model *m, const char *name);

/* Dequantize rows [r0, r0+nr) x cols [k0, k0+nk) of the logical weight to dst (row
 * stride ld): codes times scales, ConvRot undone, pre_quant_scale folded in. */
void qd_cq_decode(const qd_cq_layer *l, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);

/* The layer as a qd_weight over the mapped file (decode tile by tile in the GEMM). */
void qd_cq_weight(const qd_cq_layer *l, qd_weight *w);

/* The whole logical weight as a malloc'd fp32 [rows, cols] array. */
qd_status qd_cq_dequantize(qd_ctx *ctx, const qd_cq_layer *l, float **out);

#endif
