/* Writer of ComfyUI comfy_quant checkpoints (spec comfy-quant.md §1, §2.3-§2.4): a
 * single-file .safetensors checkpoint in, the same file out with the 2-D weights of
 * linear layers quantized round-to-nearest (convert_to_quant's --simple):
 *   int8_tensorwise          scalar F32 scale s = max(amax/127, 1e-30), q = clamp(rne(w/s), +-127)
 *   int8_tensorwise+convrot  rows rotated per K-group by the regular Hadamard (G = 256 default,
 *                            a power of 4, smaller where K needs it), then per-row scale [N,1]
 *   float8_e4m3fn            scalar scale: inv = 448/amax, q = e4m3(clamp(w*inv, +-448)), s = 1/inv
 *   float8_e4m3fn_rowwise    the same per row, scale [N] (convert_to_quant's format: stock
 *                            ComfyUI cannot load it, spec §0.7)
 * In a full checkpoint (keys under model.diffusion_model.) only the diffusion model is
 * quantized; VAE and text encoders are copied. Never quantized: non-2-D tensors, biases,
 * names containing norm, embed, lm_head or shared (spec §0.9, §2.4).
 * Each quantized layer X gets X.comfy_quant (its JSON config, Python json.dumps spelling),
 * X.weight, X.weight_scale and, when asked, X.input_scale = 1.0 (fp8). Everything else is
 * copied byte for byte (LoRA-merged first when a LoRA names it), __metadata__ is kept.
 * Tensor by tensor from the mapping into a temporary file renamed at the end. */
#ifndef QD_CONVERT_COMFY_QUANT_WRITE_H
#define QD_CONVERT_COMFY_QUANT_WRITE_H

#include <stdint.h>
#include <cjson/cJSON.h>
#include "base/ctx.h"
#include "convert/lora.h"

typedef enum { QD_CQW_INT8_TENSORWISE, QD_CQW_FLOAT8_E4M3FN, QD_CQW_FLOAT8_E4M3FN_ROWWISE } qd_cqw_type;

typedef struct {
    qd_cqw_type type;
    int convrot;                /* int8_tensorwise only */
    int convrot_group;          /* 0: 256. A power of 4; a layer whose K it does not divide gets the largest
                                 * smaller power of 4 that does (written as convrot_groupsize) */
    int input_scale;            /* fp8: write X.input_scale = 1.0 (convert_to_quant --input_scale) */
    int full_precision_mm;      /* config "full_precision_matrix_mult": true */
    int save_quant_metadata;    /* also __metadata__._quantization_metadata (spec §1.4) */
    const char *const *filters; /* model filter presets (spec §2.4): qd_cqw_filter_names() */
    int n_filters;
    const char *const *exclude; /* POSIX extended regexes searched in the layer name (no ".weight"): kept as is */
    int n_exclude;
    qd_lora_set *lora;          /* merged before quantizing (component NULL: single-file names); may be NULL */
    int dry_run;                /* quantize and measure, write nothing (out_path unused) */
    cJSON *layers;              /* NULL, or an array that gets one object per weight (qd_comfy_quantize's report) */
    /* after each input tensor; non-zero return cancels */
    int (*progress)(void *user, int64_t done_bytes, int64_t total_bytes, const char *tensor, double elapsed_seconds);
    void *progress_user;
} qd_cqw_options;

typedef struct {
    int64_t quantized, copied, lora_merged;     /* tensors */
    uint64_t bytes_in, bytes_out;               /* tensor data */
    double err2, norm2;                         /* sum of squared quantization errors / weights, quantized layers */
} qd_cqw_report;

/* "int8_tensorwise", "float8_e4m3fn", "float8_e4m3fn_rowwise" -> type; -1 when unknown. */
int qd_cqw_type_from_name(const char *name, qd_cqw_type *out);
/* Comma-separated list of the filter preset names, for help and errors. */
const char *qd_cqw_filter_names(void);

/* Quantize one [N, K] fp32 weight (modified in place when convrot rotates it):
 * q gets N*K bytes (int8 or e4m3 codes), scale 1 (tensor) or N (row) floats.
 * Returns the number of scales written. */
int64_t qd_cqw_quantize(qd_ctx *ctx, qd_cqw_type type, int convrot_group, float *w, int64_t N, int64_t K,
                        uint8_t *q, float *scale);

qd_status qd_cqw_write(qd_ctx *ctx, const char *in_path, const char *out_path, const qd_cqw_options *o,
                       qd_cqw_report *report);

#endif
