/* qdiff quantize: the output format choice (--format sdnq|comfy_quant), the comfy_quant
 * options, and LoRA merging (--merge-lora FILE[:SCALE], --lora-dampen X) for both
 * formats. cmd_quantize() chains quantize_extra_option() after its SDNQ options and
 * hands comfy_quant runs to quantize_comfy_run(). */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void quantize_extra_init(quantize_extra *e) {
    memset(e, 0, sizeof *e);
    e->format = "sdnq";
    e->dampen = 1.0f;
    qd_comfy_quant_params_default(&e->cq);
    e->cq.weights_dtype = NULL;   /* set from --weights-dtype, else int8_tensorwise */
}

void quantize_extra_usage(FILE *f) {
    fprintf(f,
        "output format:\n"
        "  --format sdnq|comfy_quant   sdnq (default): a diffusers folder as above;\n"
        "                            comfy_quant: IN is a single-file .safetensors checkpoint and\n"
        "                            OUT a ComfyUI comfy_quant .safetensors (2-D linear weights\n"
        "                            quantized; biases, norms, embeddings, convs, VAE and text\n"
        "                            encoders of a full checkpoint copied)\n"
        "  -o, --output FILE         OUT given as an option\n"
        "comfy_quant options (--weights-dtype int8_tensorwise (default), float8_e4m3fn or\n"
        "float8_e4m3fn_rowwise; stock ComfyUI cannot load float8_e4m3fn_rowwise; --dry-run,\n"
        "--json, --force, --threads and -q as above; the other SDNQ options are refused):\n"
        "  --convrot                 int8_tensorwise: Hadamard-rotate 256-column groups (smaller\n"
        "                            powers of 4 where a layer needs), per-row scales\n"
        "  --convrot-group-size N    the group (a power of 4, 4..4096; default 256)\n"
        "  --input-scale             float8: also write <layer>.input_scale = 1.0\n"
        "  --full-precision-mm       mark layers full_precision_matrix_mult (ComfyUI dequantizes)\n"
        "  --save-quant-metadata     also write __metadata__._quantization_metadata\n"
        "  --filter NAME             convert_to_quant model filter keeping layers high-precision\n"
        "                            (repeatable): flux2, distillation_large, distillation_small,\n"
        "                            nerf_large, nerf_small, radiance, hunyuan, qwen, zimage,\n"
        "                            zimage_refiner\n"
        "  --exclude REGEX           keep layers whose name matches (extended regex; repeatable)\n"
        "LoRA merging (both formats; before quantizing):\n"
        "  --merge-lora FILE[:SCALE] add a LoRA (repeatable; SCALE default 1): kohya, diffusers,\n"
        "                            PEFT or BFL key names, alpha/rank scaling, conv LoRAs\n"
        "  --lora-dampen X           the n-th LoRA applied to a layer is scaled by X^(n-1)\n"
        "                            (0 < X <= 1; default 1). A LoRA none of whose layers matches\n"
        "                            a weight is an error, checked before anything is written\n");
}

/* 1 consumed, 0 not ours, -1 bad value (message printed). */
int quantize_extra_option(quantize_extra *e, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    static const char *comfy_flags[] = {"--convrot", "--input-scale", "--full-precision-mm", "--save-quant-metadata"};
    for (size_t k = 0; k < sizeof comfy_flags / sizeof *comfy_flags; k++) {
        if (strcmp(a, comfy_flags[k])) continue;
        if (k == 0) e->cq.convrot = 1;
        else if (k == 1) e->cq.input_scale = 1;
        else if (k == 2) e->cq.full_precision_mm = 1;
        else e->cq.save_quant_metadata = 1;
        if (!e->comfy_only) e->comfy_only = comfy_flags[k];
        return 1;
    }
    static const char *valued[] = {"--format", "-o", "--output", "--convrot-group-size", "--filter", "--exclude",
                                   "--merge-lora", "--lora-dampen"};
    size_t k = 0;
    while (k < sizeof valued / sizeof *valued && strcmp(a, valued[k])) k++;
    if (k == sizeof valued / sizeof *valued) return 0;
    if (!v) { fprintf(stderr, "qdiff: %s needs a value\n", a); return -1; }
    (*i)++;
    if (!strcmp(a, "--format")) {
        if (strcmp(v, "sdnq") && strcmp(v, "comfy_quant")) {
            fprintf(stderr, "qdiff quantize: unknown --format '%s' (valid: sdnq, comfy_quant)\n", v);
            return -1;
        }
        e->format = v;
    } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
        e->out = v;
    } else if (!strcmp(a, "--convrot-group-size")) {
        long n;
        if (cli_parse_int(v, a, 4, 4096, &n) != 0) return -1;
        e->cq.convrot_group = (int)n;
        e->cq.convrot = 1;
        if (!e->comfy_only) e->comfy_only = a;
    } else if (!strcmp(a, "--filter") || !strcmp(a, "--exclude")) {
        int f = a[2] == 'f';
        int *cnt = f ? &e->cq.n_filters : &e->cq.n_exclude;
        const char **arr = f ? e->filters : e->exclude;
        if (*cnt == QUANTIZE_EXTRA_MAX) { fprintf(stderr, "qdiff: too many %s options\n", a); return -1; }
        arr[(*cnt)++] = v;
        if (!e->comfy_only) e->comfy_only = a;
    } else if (!strcmp(a, "--merge-lora")) {
        if (e->n_lora == QUANTIZE_EXTRA_MAX) { fprintf(stderr, "qdiff: too many --merge-lora options\n"); return -1; }
        float scale;
        char *path;
        if (cli_parse_lora(v, "--merge-lora", &path, &scale)) return -1;
        e->lora_paths[e->n_lora] = path;
        e->lora_scales[e->n_lora++] = scale;
    } else {
        float x;
        if (cli_parse_float(v, a, &x) != 0) return -1;
        if (!(x > 0 && x <= 1)) { fprintf(stderr, "qdiff: --lora-dampen expects a number in (0, 1], got '%s'\n", v); return -1; }
        e->dampen = x;
    }
    return 1;
}

void quantize_extra_free(quantize_extra *e) {
    for (int i = 0; i < e->n_lora; i++) free((char *)e->lora_paths[i]);
    qd_lora_set_free(e->lora);
    e->lora = NULL;
    e->n_lora = 0;
}

qd_status quantize_extra_open_loras(qd_ctx *ctx, quantize_extra *e) {
    if (!e->n_lora) return QD_OK;
    return qd_lora_set_open(ctx, e->lora_paths, e->lora_scales, e->n_lora, e->dampen, &e->lora);
}

/* qd_quant_params.prepare for SDNQ runs: merge the LoRAs into each weight. */
int quantize_extra_prepare(void *user, const char *component, const char *tensor_name, float *w, const int64_t *shape,
                           int ndim) {
    quantize_extra *e = user;
    return qd_lora_apply(e->ctx, e->lora, component, tensor_name, w, shape, ndim) < 0 ? 1 : 0;
}

static void print_comfy_report(const cJSON *rep, int layers) {
    if (layers) {
        printf("%-64s %-14s %-22s %12s %12s %10s %8s\n", "layer", "shape", "format", "bytes in", "bytes out", "rel err",
               "SNR dB");
        const cJSON *l;
        cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(rep, "layers")) {
            char shape[64] = "";
            size_t o = 0;
            const cJSON *d;
            cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(l, "shape"))
                if (o < sizeof shape) o += (size_t)snprintf(shape + o, sizeof shape - o, o ? "x%.0f" : "%.0f", d->valuedouble);
            if (cli_jstr(l, "skipped")) { printf("%-64s %-14s - %s\n", cli_jstr(l, "name"), shape, cli_jstr(l, "skipped")); continue; }
            char fmt[48];
            snprintf(fmt, sizeof fmt, "%s%s", cli_jstr(l, "format"),
                     cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "convrot")) ? "+convrot" : "");
            printf("%-64s %-14s %-22s %12.0f %12.0f %10.6f %8.2f\n", cli_jstr(l, "name"), shape, fmt, cli_jnum(l, "bytes_in"),
                   cli_jnum(l, "bytes_out"), cli_jnum(l, "rel_error"), cli_jnum(l, "snr_db"));
        }
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rep, "totals");
    printf("total: quantized %.0f layers, copied %.0f tensors (%.0f LoRA-merged); %.0f -> %.0f bytes (%.1f%%); "
           "rel error %.6f, SNR %.2f dB\n", cli_jnum(t, "quantized"), cli_jnum(t, "copied"), cli_jnum(t, "lora_merged"),
           cli_jnum(t, "bytes_in"), cli_jnum(t, "bytes_out"), 100 * cli_jnum(t, "bytes_out") / cli_jnum(t, "bytes_in"),
           cli_jnum(t, "rel_error"), cli_jnum(t, "snr_db"));
}

int quantize_comfy_run(qd_ctx *ctx, quantize_extra *e, const char *in, const char *out, const char *weights_dtype,
                       int dry_run, int force, int json, qd_quant_progress_fn progress, void *progress_user) {
    e->cq.weights_dtype = weights_dtype ? weights_dtype : "int8_tensorwise";
    e->cq.filters = e->filters;
    e->cq.exclude = e->exclude;
    e->cq.lora = e->lora;
    e->cq.dry_run = dry_run;
    e->cq.force = force;
    e->cq.progress = progress;
    e->cq.progress_user = progress_user;
    char *rep = NULL;
    qd_status st = qd_comfy_quantize(ctx, in, dry_run ? NULL : out, &e->cq, &rep);
    if (st == QD_OK && e->lora) st = qd_lora_set_check(ctx, e->lora);   /* warns about pairs left over */
    if (st != QD_OK) {
        qd_free(rep);
        fprintf(stderr, "qdiff quantize: %s\n", qd_last_error(ctx));
        return st == QD_ERR_CANCELLED ? 130 : EXIT_BAD;
    }
    if (json) {
        printf("%s\n", rep);
    } else {
        cJSON *r = cJSON_Parse(rep);
        if (r) print_comfy_report(r, dry_run);
        cJSON_Delete(r);
        if (!dry_run) printf("wrote %s\n", out);
    }
    qd_free(rep);
    return 0;
}
