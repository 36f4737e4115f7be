/* Loading a component's parameters by name: every tensor's shape is checked
 * against what the config implies, and errors name the file and the tensor.
 * Matrices stay in the mapped file (qd_weight); small vectors (biases, norm
 * scales) are converted to float32 copies owned by the qd_params.
 * SDNQ-quantized components (a quantization_config in the folder) load the same
 * way: a layer with "<prefix>.scale" becomes a quantized qd_weight that is
 * dequantized tile by tile inside the GEMM. Weights files with ComfyUI comfy_quant
 * layers ("<prefix>.comfy_quant") load those layers the same way. */
#ifndef QD_MODELS_PARAMS_H
#define QD_MODELS_PARAMS_H

#include <stddef.h>
#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"
#include "tensor/weight.h"

typedef struct qd_sdnq_config qd_sdnq_config;
struct qd_cq_model;

typedef struct qd_params {
    qd_ctx *ctx;
    qd_st_set st;
    char name[64];          /* component name for messages, e.g. "unet" */
    char dir[1024];         /* the component folder, for messages */
    qd_sdnq_config *sdnq;   /* the folder's SDNQ quantization_config, or NULL */
    struct qd_cq_model *cq; /* the weights file's comfy_quant layers, or NULL */
    void **owned;           /* float copies, freed by qd_params_close */
    int n_owned, cap_owned;
    int borrowed;           /* st is a single-file checkpoint's view (ctx->weights_from): not closed here */
    /* every matrix qd_p_linear / qd_p_conv loaded, under its tensor name ("<prefix>.weight"):
     * what generation-time LoRAs attach to (pipeline/model_lora.c) */
    struct qd_params_weight { char *name; qd_weight *w; } *weights;
    int n_weights, cap_weights;
} qd_params;

/* Open the weights of a component folder: *.safetensors.index.json (sharded) or a
 * single diffusion_pytorch_model / model .safetensors, plain or ".fp16" variant;
 * and its SDNQ quantization_config (quantization_config.json, else config.json's
 * "quantization_config") if it has one. While ctx->weights_from is set, a folder
 * <config_from>/<component> of that single file takes the file's converted tensors. */
qd_status qd_params_open(qd_ctx *ctx, const char *dir, const char *name, qd_params *p);
/* The weights file (or shard index) qd_params_open would use in dir: 1 found, 0 none. */
int qd_params_weights_path(const char *dir, char *path, size_t size);
void qd_params_close(qd_params *p);

typedef struct { qd_weight w; float *b; } qd_linear_p;                 /* b NULL when absent */
typedef struct { qd_weight w; float *b; int k; int64_t cin, cout; } qd_conv_p;
typedef struct { float *w, *b; int64_t n; } qd_norm_p;

enum { QD_NO_BIAS = 0, QD_BIAS = 1 };

/* "<prefix>.weight" [out, in] (or [out, in, 1, 1]) and "<prefix>.bias" [out].
 * An SDNQ layer (one with "<prefix>.scale") or a comfy_quant layer is checked against out x in. */
qd_status qd_p_linear(qd_params *p, qd_linear_p *out, int64_t out_f, int64_t in_f, int bias,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A loaded weight was copied from `from` to `to` (the copy is the one the model uses). */
void qd_params_rebind(qd_params *p, const qd_weight *from, qd_weight *to);
/* "<prefix>.weight" [cout, cin, k, k] and "<prefix>.bias" [cout]. */
qd_status qd_p_conv(qd_params *p, qd_conv_p *out, int64_t cout, int64_t cin, int k, int bias,
                    const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* An embedding table "<prefix>.weight" [n, dim] as a weight: decode(w, id, 1, 0, dim, row, dim)
 * fetches row `id`. SDNQ-quantized tables (quant_embedding) stay quantized. */
qd_status qd_p_embedding(qd_params *p, qd_weight *out, int64_t n, int64_t dim,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* "<prefix>.weight" [n] and, if bias, "<prefix>.bias" [n]. */
qd_status qd_p_norm(qd_params *p, qd_norm_p *out, int64_t n, int bias,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A float copy of the full tensor name, checked against ndim/shape (-1 = any). */
qd_status qd_p_floats(qd_params *p, float **out, int ndim, const int64_t *shape,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The stored tensor itself (no copy), shape-checked. */
qd_status qd_p_tensor(qd_params *p, const qd_st_tensor **out, int ndim, const int64_t *shape,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 1 if a tensor with that full name exists. */
int qd_p_has(qd_params *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
