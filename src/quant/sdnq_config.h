/* SDNQ quantization_config (spec sdnq.md §1.2-1.3): where it lives in a component
 * folder, its fields with the defaults older writers omit, the name matching
 * rules of the per-layer lists, and the per-layer arguments they resolve to.
 * Values are checked when a layer uses them, so errors can name the layer. */
#ifndef QD_QUANT_SDNQ_CONFIG_H
#define QD_QUANT_SDNQ_CONFIG_H

#include <cjson/cJSON.h>
#include "base/ctx.h"

/* The quantizer arguments that decide a layer's stored layout (§1.2), after the
 * per-layer overrides of §1.3. Dtypes stay names until the layout parses them. */
typedef struct {
    char weights_dtype[48];
    char matmul_dtype[48];      /* "" when null: the default for weights_dtype */
    long group_size;            /* 0 auto, -1 row-wise, -2 tensor-wise, > 0 requested */
    long hadamard_group_size;
    long svd_rank;
    int use_svd, use_hadamard, use_codebook;
    int use_quantized_matmul, use_quantized_matmul_conv;
    int dequantize_fp32;
} qd_sdnq_kwargs;

typedef struct qd_sdnq_config {
    cJSON *root;                /* owns the parsed file; the lists below point into it */
    const cJSON *qc;            /* the quantization_config object */
    char path[4096];            /* the file it came from, for messages */
    char version[32];           /* sdnq_version of the writer ("" if absent) */
    qd_sdnq_kwargs global;
    int quant_conv, quant_embedding;
    const cJSON *not_convert, *not_use_matmul;    /* arrays of names, or NULL */
    const cJSON *dtype_dict, *quant_config;       /* objects, or NULL */
} qd_sdnq_config;

/* The SDNQ config of a component folder: quantization_config.json if present
 * (the loader prefers it), else config.json's "quantization_config". *out is NULL
 * when the folder has neither, or when its quant_method is not sdnq. Unreadable or
 * malformed files are errors. */
qd_status qd_sdnq_config_load_dir(qd_ctx *ctx, const char *dir, qd_sdnq_config **out);

/* One file holding either the config object itself or {"quantization_config": {...}}. */
qd_status qd_sdnq_config_load_file(qd_ctx *ctx, const char *path, qd_sdnq_config **out);

/* A config from a parsed JSON tree (the object itself or {"quantization_config": ..});
 * takes ownership of root, also on failure. label names it in messages. */
qd_status qd_sdnq_config_from_json(qd_ctx *ctx, cJSON *root, const char *label, qd_sdnq_config **out);

void qd_sdnq_config_free(qd_sdnq_config *cfg);

/* 1 if a 2-D "<module>.weight" belongs to an Embedding rather than a Linear: the
 * class is not stored, so the module's last name decides (token/position tables,
 * T5's shared, embed_tokens and relative_attention_bias; "*_embedder" and
 * "time_embedding.linear_1" are Linear). */
int qd_sdnq_embedding_name(const char *param);

/* §1.3 matching of a parameter name ("<module>.weight") against a list entry:
 * ".x" prefix at the root, "x" equal to the name or one dot-separated component,
 * "*" as sdnq's anchored pattern (".*" = a literal dot then anything). */
int qd_sdnq_name_matches(const char *entry, const char *param);
/* 1 if any string in `list` (a JSON array, may be NULL) matches. */
int qd_sdnq_name_in(const cJSON *list, const char *param);

/* The layer's arguments: global ones, then the first matching modules_quant_config
 * entry, then modules_dtype_dict (exact dtype keys and minimum-bit keys). `param`
 * is "<module>.weight". Errors name the layer and the config file. */
qd_status qd_sdnq_layer_kwargs(qd_ctx *ctx, const qd_sdnq_config *cfg, const char *param, qd_sdnq_kwargs *out);

/* 1 if the config lists the layer in modules_to_not_convert / modules_to_not_use_matmul. */
int qd_sdnq_skips(const qd_sdnq_config *cfg, const char *param);
int qd_sdnq_no_matmul(const qd_sdnq_config *cfg, const char *param);

#endif
