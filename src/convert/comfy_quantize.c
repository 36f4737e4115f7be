/* qd_comfy_quantize (public API): checks the caller's parameters, runs the comfy_quant
 * writer and builds the JSON report documented in qdiff.h. */
#include "qdiff.h"
#include "base/ctx.h"
#include "convert/comfy_quant_write.h"
#include "io/file.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void qd_comfy_quant_params_default(qd_comfy_quant_params *p) {
    memset(p, 0, sizeof *p);
    p->weights_dtype = "int8_tensorwise";
}

static qd_status comfy_quantize_run(qd_ctx *ctx, const char *in_path, const char *out_path,
                                    const qd_comfy_quant_params *p, char **report_json) {
    if (report_json) *report_json = NULL;
    if (!in_path || !p) return qd_fail(ctx, QD_ERR_ARG, "comfy_quant: no input");
    if (!out_path && !p->dry_run) return qd_fail(ctx, QD_ERR_ARG, "comfy_quant: no output path");
    qd_cqw_options o = {0};
    const char *dt = p->weights_dtype ? p->weights_dtype : "int8_tensorwise";
    if (qd_cqw_type_from_name(dt, &o.type) != 0)
        return qd_fail(ctx, QD_ERR_ARG, "unknown comfy_quant weights dtype '%s' (valid: int8_tensorwise, float8_e4m3fn, "
                       "float8_e4m3fn_rowwise)", dt);
    if (!p->dry_run && !p->force && qd_file_exists(out_path))
        return qd_fail(ctx, QD_ERR_ARG, "%s: already exists (use --force to replace it)", out_path);
    if (!p->dry_run && qd_dir_exists(out_path)) return qd_fail(ctx, QD_ERR_ARG, "%s: is a directory", out_path);
    if (p->lora) {   /* a LoRA that names no weight of the input fails before anything is written */
        QD_TRY(qd_lora_set_plan(ctx, p->lora, in_path, NULL));
        QD_TRY(qd_lora_set_check(ctx, p->lora));
    }
    o.convrot = p->convrot;
    o.convrot_group = p->convrot_group;
    o.input_scale = p->input_scale;
    o.full_precision_mm = p->full_precision_mm;
    o.save_quant_metadata = p->save_quant_metadata;
    o.filters = p->filters;
    o.n_filters = p->n_filters;
    o.exclude = p->exclude;
    o.n_exclude = p->n_exclude;
    o.lora = p->lora;
    o.dry_run = p->dry_run;
    o.progress = p->progress;
    o.progress_user = p->progress_user;
    cJSON *root = report_json ? cJSON_CreateObject() : NULL;
    if (report_json && !root) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (root) o.layers = cJSON_AddArrayToObject(root, "layers");
    qd_cqw_report rep;
    qd_status st = qd_cqw_write(ctx, in_path, p->dry_run ? NULL : out_path, &o, &rep);
    if (st == QD_OK && root) {
        cJSON_AddStringToObject(root, "input", in_path);
        if (p->dry_run || !out_path) cJSON_AddNullToObject(root, "output");
        else cJSON_AddStringToObject(root, "output", out_path);
        cJSON_AddStringToObject(root, "format", "comfy_quant");
        cJSON_AddStringToObject(root, "weights_dtype", dt);
        cJSON_AddBoolToObject(root, "dry_run", p->dry_run != 0);
        cJSON *t = cJSON_AddObjectToObject(root, "totals");
        double rel = rep.norm2 > 0 ? sqrt(rep.err2 / rep.norm2) : 0;
        if (t) {
            cJSON_AddNumberToObject(t, "quantized", (double)rep.quantized);
            cJSON_AddNumberToObject(t, "copied", (double)rep.copied);
            cJSON_AddNumberToObject(t, "lora_merged", (double)rep.lora_merged);
            cJSON_AddNumberToObject(t, "bytes_in", (double)rep.bytes_in);
            cJSON_AddNumberToObject(t, "bytes_out", (double)rep.bytes_out);
            cJSON_AddNumberToObject(t, "rel_error", rel);
            if (rel > 0) cJSON_AddNumberToObject(t, "snr_db", -20 * log10(rel));
            else cJSON_AddNullToObject(t, "snr_db");
        }
        *report_json = cJSON_PrintUnformatted(root);
        if (!*report_json) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(root);
    return st;
}

/* The LoRA merge runs in fp32 whatever the context's precision (bf16 operands would
 * change what is written). */
qd_status qd_comfy_quantize(qd_ctx *ctx, const char *in_path, const char *out_path, const qd_comfy_quant_params *p,
                            char **report_json) {
    int precision = ctx->precision;
    ctx->precision = QD_PRECISION_FP32;
    qd_status st = comfy_quantize_run(ctx, in_path, out_path, p, report_json);
    ctx->precision = precision;
    return st;
}
