/* How one SDNQ layer is stored (spec sdnq.md §1.4): derived from the config, the
 * layer's class and its weight shape exactly as sdnq re-derives it at load, then
 * checked against the tensors in the file. The shapes win where writers differed
 * (older versions, a dropped SVD); a tensor that fits no layout is an error. */
#ifndef QD_QUANT_SDNQ_LAYOUT_H
#define QD_QUANT_SDNQ_LAYOUT_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_unpack.h"

typedef enum { QD_SDNQ_LINEAR, QD_SDNQ_CONV, QD_SDNQ_EMBEDDING } qd_sdnq_class;
typedef enum { QD_SDNQ_GROUPED, QD_SDNQ_ROWWISE, QD_SDNQ_TENSORWISE } qd_sdnq_grouping;

/* A layer's stored tensors; NULL when absent. */
typedef struct {
    const qd_st_tensor *weight, *scale, *zero_point, *svd_up, *svd_down;
} qd_sdnq_tensors;

typedef struct {
    char param[512];                /* "<module>.weight": the name config lists match, used in messages */
    qd_sdnq_class cls;
    qd_sdnq_dtype dtype;            /* stored weight type */
    qd_sdnq_dtype mm_dtype;         /* quantized_matmul_dtype (defaulted) */
    int64_t out, in, ksize, cols;   /* logical [out, in, k...]; ksize = prod(k); cols = in * ksize */
    int kdims;                      /* number of kernel dims (0 for Linear/Embedding) */
    int64_t kshape[QD_MAX_DIMS];
    qd_sdnq_grouping grouping;
    int64_t groups, group_size;     /* groups > 1 only when grouped; group_size = in / groups */
    int transposed;                 /* weight stored [cols, out] with scale [1, out] */
    int qmm;                        /* the config asks for quantized matmul on this layer (§1.4 step 2) */
    int requant;                    /* quantized matmul would have to re-quantize the weight */
    int codebook;                   /* scale is a LUT of 2^bits levels */
    int zero_point;                 /* asymmetric: W = q * scale + zero_point */
    int svd;                        /* W += svd_up . svd_down */
    int64_t svd_rank;
    int svd_transposed;             /* stored svd_up [r, out], svd_down [cols, r] */
    int hadamard;                   /* stored rotated: W = W_rot . H per block along cols */
    int64_t hadamard_size;
    int adjusted;                   /* the tensors overrode part of the derivation */
} qd_sdnq_layout;

/* §1.4 from the config. shape: [out, in] (Linear, Embedding) or [out, in, k...] (Conv). */
qd_status qd_sdnq_layout_derive(qd_ctx *ctx, const qd_sdnq_config *cfg, const char *param, qd_sdnq_class cls,
                                int ndim, const int64_t *shape, qd_sdnq_layout *out);

/* The same from already resolved arguments (what the quantizer tries before it
 * writes the config that will say so): no_matmul = the layer is listed in
 * modules_to_not_use_matmul; where names the config in errors. */
qd_status qd_sdnq_layout_derive_kw(qd_ctx *ctx, const qd_sdnq_kwargs *kw, int no_matmul, const char *where,
                                   const char *param, qd_sdnq_class cls, int ndim, const int64_t *shape,
                                   qd_sdnq_layout *out);

/* The stored scale shape of a layout (the LUT shape when codebook): the count of dims. */
int qd_sdnq_scale_shape(const qd_sdnq_layout *l, int64_t *shape);

/* Check (and, where the shapes say otherwise, adjust) the layout against the tensors:
 * weight storage type and size, scale/zero_point/svd shapes and dtypes. */
qd_status qd_sdnq_layout_check(qd_ctx *ctx, qd_sdnq_layout *l, const qd_sdnq_tensors *t);

/* Index of the scale (or LUT row) for weight element (o, col): o * so + group * sg + pos * sp. */
void qd_sdnq_scale_strides(const qd_sdnq_layout *l, int64_t *so, int64_t *sg, int64_t *sp);

#endif
