/* Writes a diffusers component folder the way sdnq stores it: a parameter list's values
 * (values() in bench_util.h) dense, or SDNQ-quantized per the library's own §1.4 layout
 * derivation of the written quantization_config.json, so the files are what the loader
 * expects (bench_sdnq, bench_flux). */
#ifndef QD_BENCH_SDNQ_WRITER_H
#define QD_BENCH_SDNQ_WRITER_H

#include "bench_util.h"
#include "base/ctx.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"

typedef struct {
    const char *weights_dtype;  /* NULL: every tensor dense; else "int8" or "uint4" */
    int group_size;             /* 0 auto, -1 row-wise */
    int svd_rank;               /* 0: no SVD */
    int qmm;                    /* use_quantized_matmul */
    int quant_conv;
} sdnq_spec;

typedef struct {
    qd_dtype dense;             /* QD_F16 or QD_BF16: unquantized tensors and the SVD factors */
    const char *generator;      /* the safetensors __metadata__ "generator" */
    int round_first;            /* quantize the values rounded to `dense` (the dense model's), not the fp32 ones */
    int reciprocal;             /* codes = round((w - z) * (1 / scale)), else round((w - z) / scale) */
    /* whether to quantize a parameter (cfg is NULL when spec->weights_dtype is) */
    int (*quantizable)(const pdesc *d, const qd_sdnq_config *cfg, const sdnq_spec *q);
} sdnq_writer;

/* quantization_config.json's text for q, with `skip` (a cJSON array, taken) as
 * modules_to_not_convert. */
char *sdnq_qconfig_json(const sdnq_spec *q, cJSON *skip);

/* Writes dir/diffusion_pytorch_model.safetensors and, when q quantizes,
 * dir/quantization_config.json from qconfig (else removes a stale one). Returns the
 * bytes of weights written; dies on any error (no partial file left). */
uint64_t sdnq_write_component(qd_ctx *ctx, const char *dir, const plist *pl, const sdnq_spec *q, const char *qconfig,
                              const sdnq_writer *w);

#endif
