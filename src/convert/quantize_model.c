/* qd_quantize: a diffusers folder -> an SDNQ diffusers folder (spec sdnq.md §1-2).
 *
 * Per chosen component, the tensors are walked once in name order straight from
 * the mapping: a layer weight sdnq would quantize is converted to fp32, handed to
 * the prepare hook, quantized (qd_sdnq_quantize, with dynamic escalation when
 * asked) and its stored tensors appended to a streaming safetensors writer; every
 * other tensor is appended as it is. Mapped pages are released after each tensor,
 * so the resident set stays at a few tensors. The layouts come from the reader's
 * own derivation (qd_sdnq_layout_derive_kw) and, before anything is written, the
 * config that will be stored is re-read with qd_sdnq_config_from_json and every
 * layer's layout re-derived from it: a config the loader would read differently
 * is an error, not a file.
 *
 * The input may also be a single-file checkpoint (convert/single_file.h): its
 * components are then the converted tensor sets, walked the same way, their
 * configs come from --config-from or are inferred, and the rest of the folder is
 * completed from the file and --config-from.
 *
 * Nothing appears at out_dir until the end: the folder is built at
 * out_dir.tmp-XXXXXX and renamed; errors and cancellation remove it. */
#include "qdiff.h"
#include "base/ctx.h"
#include "convert/fs_tree.h"
#include "convert/pyjson.h"
#include "convert/quant_rules.h"
#include "convert/single_file.h"
#include "io/file.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "base/half.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_quantize.h"
#include "quant/sdnq_unpack.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_COMPONENTS 32

void qd_quant_params_default(qd_quant_params *p) {
    memset(p, 0, sizeof *p);
    p->weights_dtype = "int8";
    p->svd_rank = 32;
    p->svd_steps = 8;
    p->hadamard_group_size = 256;
    p->codebook_steps = 24;
    p->dynamic_loss = -1;
    p->min_numel = 16384;
    p->min_channels = 32;
    p->default_skips = 1;
}

/* ---- per-layer record ---- */

typedef struct {
    char name[512];             /* the tensor name = sdnq's parameter name "<module>.weight" */
    int layer;                  /* a Linear/Conv/Embedding weight (shown in reports and templates) */
    int quantized;
    char reason[128];           /* why it stays unquantized */
    qd_sdnq_class cls;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    qd_sdnq_kwargs kw;          /* the arguments it was quantized with */
    qd_sdnq_layout l;           /* its layout as written */
    int no_matmul;              /* dynamic escalation left quantized matmul */
    int64_t bytes_in, bytes_out;
    double sw2, se, rel_err, snr_db, loss;
} layer_rec;

typedef struct {
    char name[256];
    char dir[4096];
    char cls[160];
    char weights[4096];         /* file or index to open */
    char weights_out[64];       /* output file name */
    layer_rec *layers;
    int64_t n_layers, cap_layers;
    int64_t bytes_in;
    const cJSON *layer_cfg;     /* this component's entries of --layer-config, or NULL */
    const qd_sf_component *sf;  /* from a single-file checkpoint: its converted tensors and config */
} comp;

typedef struct {
    qd_ctx *ctx;
    const qd_quant_params *p;
    qd_sdnq_kwargs global;
    qd_sdnq_dtype wd;
    char mm_name[48];
    int *skip_hits, *dtype_hits;
    char (*dtype_pat)[512];
    char (*dtype_type)[48];
    cJSON *layer_cfg_root;
    comp comps[MAX_COMPONENTS];
    int n_comps;
    int64_t done, total;
    double t0;
    qd_single_file *sf;         /* the input is a single-file checkpoint */
    char *missing;              /* single file: parts the output folder lacks */
} run;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int is_float(qd_dtype t) { return t == QD_F32 || t == QD_F16 || t == QD_BF16 || t == QD_F64; }

static const char *class_name(qd_sdnq_class c) {
    return c == QD_SDNQ_CONV ? "Conv" : c == QD_SDNQ_EMBEDDING ? "Embedding" : "Linear";
}

static const char *valid_dtypes =
    "int2..int7, int8, int9..int15, int16, int32; uint1..uint7, uint8, uint9..uint15, uint16, uint32; "
    "float32, bfloat16, float16, float8_e4m3fn, float8_e5m2; custom floats floatN_eXmYfn (signed, N = 1+X+Y, X 1..5) "
    "and floatN_eXmYfnu (unsigned, N = X+Y), float8_e4m3fn_sdnq; aliases fp32, bf16, fp16, fp8, fp2..fp15, ufp1..ufp16, "
    "int1/bool (= uint1)";

static qd_status parse_dtype(qd_ctx *ctx, const char *name, const char *what, qd_sdnq_dtype *d) {
    int st = qd_sdnq_dtype_parse(name, d);
    if (st == -2) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s '%s' is not supported by qdiff (no decoder for it)", what, name);
    if (st != 0) return qd_fail(ctx, QD_ERR_ARG, "unknown %s '%s'; valid types: %s", what, name, valid_dtypes);
    return QD_OK;
}

/* ---- parameters ---- */

static qd_status check_params(run *r) {
    qd_ctx *ctx = r->ctx;
    const qd_quant_params *p = r->p;
    QD_TRY(parse_dtype(ctx, p->weights_dtype ? p->weights_dtype : "int8", "weights dtype", &r->wd));
    if (p->group_size < -2) return qd_fail(ctx, QD_ERR_ARG, "group size %d is not valid: use 0 (auto), -1 (row-wise), -2 (tensor-wise) or a positive size", p->group_size);
    if (p->use_svd && (p->svd_rank < 1 || p->svd_rank > 65536)) return qd_fail(ctx, QD_ERR_ARG, "SVD rank %d is not valid (1..65536)", p->svd_rank);
    if (p->svd_steps < 0 || p->svd_steps > 1000) return qd_fail(ctx, QD_ERR_ARG, "SVD steps %d is not valid (0..1000)", p->svd_steps);
    if (p->use_hadamard && (p->hadamard_group_size < 4 || p->hadamard_group_size > 4096))
        return qd_fail(ctx, QD_ERR_ARG, "Hadamard group size %d is not valid (4..4096)", p->hadamard_group_size);
    if (p->use_codebook && r->wd.family != QD_SQ_UINT)
        return qd_fail(ctx, QD_ERR_ARG, "a codebook needs an unsigned integer weights dtype, not %s", r->wd.name);
    if (p->use_codebook && (p->codebook_steps < 0 || p->codebook_steps > 1000))
        return qd_fail(ctx, QD_ERR_ARG, "codebook steps %d is not valid (0..1000)", p->codebook_steps);
    if (p->min_numel < 0 || p->min_channels < 0) return qd_fail(ctx, QD_ERR_ARG, "minimum layer sizes must not be negative");
    if (p->dynamic && p->dynamic_loss >= 0 && !isfinite(p->dynamic_loss)) return qd_fail(ctx, QD_ERR_ARG, "dynamic loss threshold must be finite");
    r->mm_name[0] = 0;
    if (p->quantized_matmul_dtype) {
        qd_sdnq_dtype mm;
        QD_TRY(parse_dtype(ctx, p->quantized_matmul_dtype, "quantized matmul dtype", &mm));
        static const char *ok[] = {"int8", "uint8", "float8_e4m3fn", "float16"};
        int good = 0;
        for (int i = 0; i < 4; i++) good |= !strcmp(mm.name, ok[i]);
        if (!good) return qd_fail(ctx, QD_ERR_ARG, "quantized matmul dtype '%s' is not one of int8, uint8, fp8, fp16", p->quantized_matmul_dtype);
        snprintf(r->mm_name, sizeof r->mm_name, "%s", mm.name);
    }
    for (int i = 0; i < p->n_skip; i++)
        if (!p->skip[i] || !*p->skip[i] || strlen(p->skip[i]) >= 512)
            return qd_fail(ctx, QD_ERR_ARG, "skip pattern %d is empty or too long", i + 1);
    r->skip_hits = calloc((size_t)p->n_skip + 1, sizeof(int));
    r->dtype_hits = calloc((size_t)p->n_dtype_for + 1, sizeof(int));
    r->dtype_pat = calloc((size_t)p->n_dtype_for + 1, sizeof *r->dtype_pat);
    r->dtype_type = calloc((size_t)p->n_dtype_for + 1, sizeof *r->dtype_type);
    if (!r->skip_hits || !r->dtype_hits || !r->dtype_pat || !r->dtype_type) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->n_dtype_for; i++) {
        const char *s = p->dtype_for[i], *eq = s ? strrchr(s, '=') : NULL;
        if (!eq || eq == s || !eq[1] || (size_t)(eq - s) >= 512)
            return qd_fail(ctx, QD_ERR_ARG, "layer dtype override '%s' is not PATTERN=TYPE", s ? s : "");
        memcpy(r->dtype_pat[i], s, (size_t)(eq - s));
        qd_sdnq_dtype d;
        QD_TRY(parse_dtype(ctx, eq + 1, "weights dtype in override", &d));
        if (p->use_codebook && d.family != QD_SQ_UINT)
            return qd_fail(ctx, QD_ERR_ARG, "override '%s': a codebook needs an unsigned integer type", s);
        snprintf(r->dtype_type[i], sizeof r->dtype_type[i], "%s", d.name);
    }
    qd_sdnq_kwargs *g = &r->global;
    memset(g, 0, sizeof *g);
    snprintf(g->weights_dtype, sizeof g->weights_dtype, "%s", r->wd.name);
    snprintf(g->matmul_dtype, sizeof g->matmul_dtype, "%s", r->mm_name);
    g->group_size = p->group_size;
    g->hadamard_group_size = p->hadamard_group_size;
    g->svd_rank = p->svd_rank;
    g->use_svd = p->use_svd != 0;
    g->use_hadamard = p->use_hadamard != 0;
    g->use_codebook = p->use_codebook != 0;
    g->use_quantized_matmul = p->use_quantized_matmul != 0;
    g->use_quantized_matmul_conv = p->use_quantized_matmul_conv != 0;
    g->dequantize_fp32 = 1;
    return QD_OK;
}

/* ---- components ---- */

static qd_status find_weights(qd_ctx *ctx, comp *c) {
    static const struct { const char *index, *file; } names[] = {
        {"diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"},
        {"model.safetensors.index.json", "model.safetensors"},
    };
    for (int i = 0; i < 2; i++) {
        char a[4200];
        qd_path_join(a, sizeof a, c->dir, names[i].index);
        if (qd_file_exists(a)) { snprintf(c->weights, sizeof c->weights, "%s", a); }
        else {
            qd_path_join(a, sizeof a, c->dir, names[i].file);
            if (!qd_file_exists(a)) continue;
            snprintf(c->weights, sizeof c->weights, "%s", a);
        }
        snprintf(c->weights_out, sizeof c->weights_out, "%s", names[i].file);
        return QD_OK;
    }
    return qd_fail(ctx, QD_ERR_FORMAT, "%s: no diffusion_pytorch_model.safetensors or model.safetensors (or their index) to quantize", c->dir);
}

static qd_status open_component(run *r, const char *in_dir, const char *name, comp *c) {
    qd_ctx *ctx = r->ctx;
    memset(c, 0, sizeof *c);
    if (!*name || strlen(name) >= sizeof c->name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
        return qd_fail(ctx, QD_ERR_ARG, "'%s' is not a component name", name);
    snprintf(c->name, sizeof c->name, "%s", name);
    qd_path_join(c->dir, sizeof c->dir, in_dir, name);
    if (!qd_dir_exists(c->dir)) return qd_fail(ctx, QD_ERR_ARG, "%s: component '%s' does not exist", c->dir, name);
    char cfg[4200];
    qd_path_join(cfg, sizeof cfg, c->dir, "config.json");
    cJSON *root;
    QD_TRY(qd_json_load(ctx, cfg, &root));
    const char *cls = qd_json_str(root, "_class_name", NULL);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (!cls && cJSON_IsArray(arch) && cJSON_IsString(arch->child)) cls = arch->child->valuestring;
    snprintf(c->cls, sizeof c->cls, "%s", cls ? cls : "");
    int already = cJSON_GetObjectItemCaseSensitive(root, "quantization_config") != NULL;
    cJSON_Delete(root);
    if (already) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: component '%s' is already quantized (its config has a quantization_config)", cfg, name);
    qd_path_join(cfg, sizeof cfg, c->dir, "quantization_config.json");
    if (qd_file_exists(cfg)) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: component '%s' is already quantized", cfg, name);
    return find_weights(ctx, c);
}

/* The chosen components of a single-file checkpoint (default: its denoiser). */
static qd_status choose_sf_components(run *r) {
    qd_ctx *ctx = r->ctx;
    char list[4096];
    snprintf(list, sizeof list, "%s", r->p->components && *r->p->components ? r->p->components : qd_sf_denoiser(r->sf));
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        for (int i = 0; i < r->n_comps; i++)
            if (!strcmp(r->comps[i].name, tok)) return qd_fail(ctx, QD_ERR_ARG, "component '%s' is named twice", tok);
        const qd_sf_component *s = qd_sf_find_component(r->sf, tok);
        if (!s) {
            char have[512] = "";
            for (int i = 0; i < qd_sf_n_components(r->sf); i++) {
                size_t n = strlen(have);
                snprintf(have + n, sizeof have - n, "%s%s", i ? ", " : "", qd_sf_component_at(r->sf, i)->name);
            }
            return qd_fail(ctx, QD_ERR_ARG, "%s: this %s checkpoint has no component '%s' (it has: %s)", qd_sf_path(r->sf),
                           qd_sf_family_name(r->sf), tok, have);
        }
        if (r->n_comps == MAX_COMPONENTS) return qd_fail(ctx, QD_ERR_ARG, "too many components");
        comp *c = &r->comps[r->n_comps++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", s->name);
        snprintf(c->cls, sizeof c->cls, "%s", s->cls);
        snprintf(c->weights, sizeof c->weights, "%s", qd_sf_path(r->sf));
        snprintf(c->weights_out, sizeof c->weights_out, "%s", s->weights_name);
        c->sf = s;
        if (!s->config && !r->p->dry_run)
            return qd_fail(ctx, QD_ERR_ARG, "%s: the config of component '%s' cannot be inferred from the file (pass --config-from DIR)",
                           qd_sf_path(r->sf), tok);
    }
    return QD_OK;
}

static qd_status choose_components(run *r, const char *in_dir) {
    qd_ctx *ctx = r->ctx;
    if (qd_sf_is_file(in_dir)) {
        QD_TRY(qd_sf_open(ctx, in_dir, r->p->config_from, &r->sf));
        return choose_sf_components(r);
    }
    if (r->p->config_from) return qd_fail(ctx, QD_ERR_ARG, "%s: --config-from is for single-file checkpoints, not folders", in_dir);
    char idx[4200];
    qd_path_join(idx, sizeof idx, in_dir, "model_index.json");
    if (!qd_dir_exists(in_dir)) return qd_fail(ctx, QD_ERR_IO, "%s: no such folder", in_dir);
    if (!qd_file_exists(idx)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: not a diffusers folder (no model_index.json)", in_dir);
    cJSON *mi;
    QD_TRY(qd_json_load(ctx, idx, &mi));
    char list[4096];
    const char *want = r->p->components;
    if (!want || !*want) {
        const char *den = cJSON_GetObjectItemCaseSensitive(mi, "unet") ? "unet"
                        : cJSON_GetObjectItemCaseSensitive(mi, "transformer") ? "transformer" : NULL;
        if (!den) { cJSON_Delete(mi); return qd_fail(ctx, QD_ERR_FORMAT, "%s: names no unet or transformer; choose components", idx); }
        want = den;
    }
    snprintf(list, sizeof list, "%s", want);
    qd_status st = QD_OK;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok && st == QD_OK; tok = strtok_r(NULL, ",", &save)) {
        for (int i = 0; i < r->n_comps; i++)
            if (!strcmp(r->comps[i].name, tok)) { st = qd_fail(ctx, QD_ERR_ARG, "component '%s' is named twice", tok); break; }
        if (st != QD_OK) break;
        if (r->n_comps == MAX_COMPONENTS) { st = qd_fail(ctx, QD_ERR_ARG, "too many components"); break; }
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(mi, tok);
        if (!cJSON_IsArray(e) || tok[0] == '_') {
            st = qd_fail(ctx, QD_ERR_ARG, "%s: no component '%s' in this pipeline", idx, tok);
            break;
        }
        st = open_component(r, in_dir, tok, &r->comps[r->n_comps]);
        if (st == QD_OK) r->n_comps++;
    }
    cJSON_Delete(mi);
    return st;
}

/* ---- --layer-config ---- */

static const char *info_keys[] = {"class", "shape", "reason", "stored_group_size", "grouping", "rel_error", "snr_db",
                                  "bytes_in", "bytes_out", "transposed", NULL};
static const char *kw_keys[] = {"skip", "weights_dtype", "group_size", "use_svd", "svd_rank", "use_hadamard", "use_codebook", NULL};

static int in_list(const char *const *l, const char *k) {
    for (; *l; l++)
        if (!strcmp(*l, k)) return 1;
    return 0;
}

static qd_status load_layer_config(run *r) {
    qd_ctx *ctx = r->ctx;
    const char *path = r->p->layer_config;
    if (!path) return QD_OK;
    QD_TRY(qd_json_load(ctx, path, &r->layer_cfg_root));
    const cJSON *comps = cJSON_GetObjectItemCaseSensitive(r->layer_cfg_root, "components");
    if (!cJSON_IsObject(comps)) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "no \"components\" object (write one with --template)");
    for (const cJSON *c = comps->child; c; c = c->next) {
        comp *target = NULL;
        for (int i = 0; i < r->n_comps; i++)
            if (!strcmp(r->comps[i].name, c->string)) target = &r->comps[i];
        if (!target) return qd_json_fail(ctx, QD_ERR_ARG, path, "component '%s' is not one being quantized", c->string);
        const cJSON *layers = cJSON_GetObjectItemCaseSensitive(c, "layers");
        if (!cJSON_IsObject(layers)) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "components.%s has no \"layers\" object", c->string);
        for (const cJSON *l = layers->child; l; l = l->next) {
            if (!cJSON_IsObject(l)) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "layer '%s' is not an object", l->string);
            for (const cJSON *k = l->child; k; k = k->next) {
                if (in_list(info_keys, k->string)) continue;
                if (!in_list(kw_keys, k->string))
                    return qd_json_fail(ctx, QD_ERR_FORMAT, path, "layer '%s': unknown key '%s' (known: skip, weights_dtype, group_size, "
                                        "use_svd, svd_rank, use_hadamard, use_codebook)", l->string, k->string);
                int isbool = !strcmp(k->string, "skip") || !strncmp(k->string, "use_", 4);
                if (isbool && !cJSON_IsBool(k)) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "layer '%s': %s must be true or false", l->string, k->string);
                if (!strcmp(k->string, "weights_dtype")) {
                    qd_sdnq_dtype d;
                    if (!cJSON_IsString(k)) return qd_json_fail(ctx, QD_ERR_FORMAT, path, "layer '%s': weights_dtype must be a string", l->string);
                    qd_status st = parse_dtype(ctx, k->valuestring, "weights dtype", &d);
                    if (st != QD_OK) return qd_fail_prefix(ctx, st, "%s: layer '%s'", path, l->string);
                }
                if (!strcmp(k->string, "group_size") || !strcmp(k->string, "svd_rank")) {
                    double v = k->valuedouble;
                    long lo = !strcmp(k->string, "group_size") ? -2 : 1;
                    if (!cJSON_IsNumber(k) || v != floor(v) || v < lo || v > 1e9)
                        return qd_json_fail(ctx, QD_ERR_FORMAT, path, "layer '%s': %s must be an integer >= %ld", l->string, k->string, lo);
                }
            }
        }
        target->layer_cfg = layers;
    }
    return QD_OK;
}

/* ---- the per-tensor decision ---- */

static int matches_any(const char *const *list, const char *param) {
    for (; list && *list; list++)
        if (qd_sdnq_name_matches(*list, param)) return 1;
    return 0;
}

/* Fill rec (name, class, shape) and decide whether the tensor is a layer sdnq
 * quantizes, with which arguments. count: tally the user patterns' hits. */
static void decide(run *r, const comp *c, const qd_st_tensor *t, layer_rec *rec, int count) {
    const qd_quant_params *p = r->p;
    memset(rec, 0, sizeof *rec);
    snprintf(rec->name, sizeof rec->name, "%s", t->name);
    rec->ndim = t->ndim;
    memcpy(rec->shape, t->shape, sizeof rec->shape);
    rec->bytes_in = (int64_t)t->nbytes;
    rec->kw = r->global;
    if (!ends_with(t->name, ".weight") || strlen(t->name) >= sizeof rec->name) return;
    if (t->ndim == 2) rec->cls = qd_sdnq_embedding_name(t->name) ? QD_SDNQ_EMBEDDING : QD_SDNQ_LINEAR;
    else if (t->ndim >= 3 && t->ndim <= 5) rec->cls = QD_SDNQ_CONV;
    else { snprintf(rec->reason, sizeof rec->reason, "not a Linear, Conv or Embedding weight"); return; }
    rec->layer = 1;
    const cJSON *lc = c->layer_cfg ? cJSON_GetObjectItemCaseSensitive(c->layer_cfg, t->name) : NULL;
    const cJSON *lskip = lc ? cJSON_GetObjectItemCaseSensitive(lc, "skip") : NULL;
    int user_skip = 0;
    for (int i = 0; i < p->n_skip; i++)
        if (qd_sdnq_name_matches(p->skip[i], t->name)) { if (count) r->skip_hits[i]++; user_skip = 1; }
    const char *dtype = NULL;
    for (int i = 0; i < p->n_dtype_for; i++)
        if (qd_sdnq_name_matches(r->dtype_pat[i], t->name)) { if (count) r->dtype_hits[i]++; if (!dtype) dtype = r->dtype_type[i]; }
    if (!is_float(t->dtype)) { snprintf(rec->reason, sizeof rec->reason, "%s weight (not a float)", qd_dtype_name(t->dtype)); return; }
    if (rec->cls == QD_SDNQ_CONV && !p->quant_conv) { snprintf(rec->reason, sizeof rec->reason, "Conv (quantize with --quant-conv)"); return; }
    if (rec->cls == QD_SDNQ_EMBEDDING && !p->quant_embedding) { snprintf(rec->reason, sizeof rec->reason, "Embedding (quantize with --quant-embedding)"); return; }
    if (user_skip) { snprintf(rec->reason, sizeof rec->reason, "--skip pattern"); return; }
    if (cJSON_IsBool(lskip)) {
        if (cJSON_IsTrue(lskip)) { snprintf(rec->reason, sizeof rec->reason, "layer config: skip"); return; }
    } else {
        if (p->default_skips && matches_any(qd_quant_default_skips(c->cls), t->name)) {
            snprintf(rec->reason, sizeof rec->reason, "default skip list of %s", c->cls[0] ? c->cls : "this class");
            return;
        }
        int64_t numel = 1;
        for (int i = 0; i < t->ndim; i++) numel *= t->shape[i];
        if (t->shape[1] < p->min_channels) { snprintf(rec->reason, sizeof rec->reason, "in_channels %lld < %ld", (long long)t->shape[1], p->min_channels); return; }
        if (numel < p->min_numel) { snprintf(rec->reason, sizeof rec->reason, "%lld weights < %ld", (long long)numel, p->min_numel); return; }
    }
    if (dtype) snprintf(rec->kw.weights_dtype, sizeof rec->kw.weights_dtype, "%s", dtype);
    if (lc) {
        const cJSON *v;
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "weights_dtype")) && cJSON_IsString(v)) {
            qd_sdnq_dtype d;
            if (qd_sdnq_dtype_parse(v->valuestring, &d) == 0) snprintf(rec->kw.weights_dtype, sizeof rec->kw.weights_dtype, "%s", d.name);
        }
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "group_size")) && cJSON_IsNumber(v)) rec->kw.group_size = (long)v->valuedouble;
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "svd_rank")) && cJSON_IsNumber(v)) rec->kw.svd_rank = (long)v->valuedouble;
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "use_svd")) && cJSON_IsBool(v)) rec->kw.use_svd = cJSON_IsTrue(v);
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "use_hadamard")) && cJSON_IsBool(v)) rec->kw.use_hadamard = cJSON_IsTrue(v);
        if ((v = cJSON_GetObjectItemCaseSensitive(lc, "use_codebook")) && cJSON_IsBool(v)) rec->kw.use_codebook = cJSON_IsTrue(v);
    }
    rec->quantized = 1;
}

/* A component's tensors: its weights file, or the converted view of a single file. */
static qd_status comp_open(qd_ctx *ctx, const comp *c, qd_st_set *st) {
    if (c->sf) { *st = c->sf->view; return QD_OK; }
    return qd_st_open(ctx, c->weights, st);
}
static void comp_close(const comp *c, qd_st_set *st) {
    if (!c->sf) qd_st_close(st);
}

/* The plan hook stopped the run: keep its message (copied: qd_fail formats into ctx->err). */
static qd_status plan_stopped(qd_ctx *ctx) {
    char msg[sizeof ctx->err];
    snprintf(msg, sizeof msg, "%s", ctx->err[0] ? ctx->err : "stopped by the plan hook");
    return qd_fail(ctx, QD_ERR_ARG, "%s", msg);
}

/* Planning pass: headers only. Counts pattern hits and input bytes; checks every
 * --layer-config entry names a layer. */
static qd_status plan(run *r) {
    qd_ctx *ctx = r->ctx;
    for (int i = 0; i < r->n_comps; i++) {
        comp *c = &r->comps[i];
        qd_st_set st;
        QD_TRY(comp_open(ctx, c, &st));
        for (int64_t k = 0; k < st.n_tensors; k++) {
            layer_rec rec;
            const qd_st_tensor *t = &st.tensors[k];
            decide(r, c, t, &rec, 1);
            c->bytes_in += (int64_t)t->nbytes;
            if (r->p->plan && rec.layer && is_float(t->dtype)) {
                ctx->err[0] = 0;
                if (r->p->plan(r->p->plan_user, c->name, t->name, t->shape, t->ndim)) {
                    comp_close(c, &st);
                    return plan_stopped(ctx);
                }
            }
        }
        qd_status s = QD_OK;
        if (c->layer_cfg)
            for (const cJSON *l = c->layer_cfg->child; l && s == QD_OK; l = l->next) {
                const qd_st_tensor *t = qd_st_find(&st, l->string);
                if (!t || !ends_with(l->string, ".weight") || t->ndim < 2 || t->ndim > 5)
                    s = qd_fail(ctx, QD_ERR_ARG, "%s: layer '%s' is not a layer weight of component '%s'", r->p->layer_config,
                                l->string, c->name);
            }
        comp_close(c, &st);
        QD_TRY(s);
        r->total += c->bytes_in;
    }
    ctx->err[0] = 0;
    if (r->p->plan && r->p->plan(r->p->plan_user, NULL, NULL, NULL, 0)) return plan_stopped(ctx);
    for (int i = 0; i < r->p->n_skip; i++)
        if (!r->skip_hits[i]) return qd_fail(ctx, QD_ERR_ARG, "--skip pattern '%s' matches no layer weight in the chosen components", r->p->skip[i]);
    for (int i = 0; i < r->p->n_dtype_for; i++)
        if (!r->dtype_hits[i]) return qd_fail(ctx, QD_ERR_ARG, "--dtype-for pattern '%s' matches no layer weight in the chosen components", r->dtype_pat[i]);
    return QD_OK;
}

/* ---- quantizing one layer ---- */

/* The layout of rec as `dtype`, as the reader will derive it. Dynamic escalation
 * past what the matmul type holds drops quantized matmul for the layer (§2 step
 * 11). Returns 0 when the weights do not fill whole packing blocks (sdnq cannot
 * store that), else 1. */
static qd_status derive_as(run *r, layer_rec *rec, const char *dtype, qd_sdnq_kwargs *kw, qd_sdnq_layout *l,
                           int *no_mm, int *fits) {
    qd_ctx *ctx = r->ctx;
    *kw = rec->kw;
    snprintf(kw->weights_dtype, sizeof kw->weights_dtype, "%s", dtype);
    *no_mm = 0;
    QD_TRY(qd_sdnq_layout_derive_kw(ctx, kw, 0, "quantize options", rec->name, rec->cls, rec->ndim, rec->shape, l));
    if (r->p->dynamic && l->qmm && l->dtype.bits > l->mm_dtype.bits) {
        *no_mm = 1;
        QD_TRY(qd_sdnq_layout_derive_kw(ctx, kw, 1, "quantize options", rec->name, rec->cls, rec->ndim, rec->shape, l));
    }
    *fits = qd_sdnq_storage_elems(&l->dtype, l->out * l->cols) >= 0;
    return QD_OK;
}

static void not_whole_blocks(layer_rec *rec, const qd_sdnq_layout *l) {
    snprintf(rec->reason, sizeof rec->reason, "%lld weights are not whole %s packing blocks",
             (long long)(l->out * l->cols), l->dtype.name);
    rec->quantized = 0;
}

static qd_status quantize_layer(run *r, layer_rec *rec, const float *w, qd_dtype model_dtype, qd_sdnq_qresult *res) {
    qd_ctx *ctx = r->ctx;
    const qd_quant_params *p = r->p;
    char cands[QD_QUANT_MAX_ORDER][40];
    int n = 1;
    snprintf(cands[0], sizeof cands[0], "%s", rec->kw.weights_dtype);
    double tau = 0;
    if (p->dynamic) {
        n = qd_quant_dynamic_order(rec->kw.weights_dtype, rec->kw.use_codebook, cands, QD_QUANT_MAX_ORDER);
        qd_sdnq_dtype d;
        qd_sdnq_dtype_parse(rec->kw.weights_dtype, &d);
        tau = p->dynamic_loss >= 0 ? p->dynamic_loss : pow(10.0, -d.bits / 2.0);
    }
    /* dynamic: the SVD is computed once and reused by every candidate (§2 step 11) */
    qd_sdnq_svd_cache cache = {0};
    if (p->dynamic && rec->kw.use_svd && rec->kw.svd_rank > 0) {
        int64_t out = rec->shape[0], cols = 1, rank = rec->kw.svd_rank;
        for (int d = 1; d < rec->ndim; d++) cols *= rec->shape[d];
        cache.up = qd_malloc(ctx, sizeof(float) * (size_t)(out * rank));
        cache.down = qd_malloc(ctx, sizeof(float) * (size_t)(rank * cols));
        if (!cache.up || !cache.down) { free(cache.up); free(cache.down); return QD_ERR_NOMEM; }
    }
    qd_status result = QD_OK;
    int accepted = 0;
    for (int i = 0; i < n; i++) {
        qd_sdnq_qspec spec;
        memset(&spec, 0, sizeof spec);
        spec.svd_cache = cache.up ? &cache : NULL;
        qd_sdnq_kwargs kw;
        int no_mm, fits;
        if ((result = derive_as(r, rec, cands[i], &kw, &spec.l, &no_mm, &fits)) != QD_OK) break;
        if (!fits) {
            if (p->dynamic) continue;
            not_whole_blocks(rec, &spec.l);
            break;
        }
        spec.model_dtype = model_dtype;
        spec.svd_steps = p->svd_steps;
        spec.codebook_steps = p->codebook_steps;
        spec.seed = p->seed;
        qd_status st = qd_sdnq_quantize(ctx, &spec, w, res);
        if (st != QD_OK) { result = qd_fail_prefix(ctx, st, "layer '%s'", rec->name); break; }
        if (!p->dynamic || res->loss <= tau) {
            rec->kw = kw;
            rec->l = res->l;
            rec->no_matmul = no_mm;
            accepted = 1;
            break;
        }
        qd_sdnq_qresult_free(res);
    }
    if (result == QD_OK && rec->quantized && !accepted) {
        snprintf(rec->reason, sizeof rec->reason, "dynamic: no type reaches loss %.3g", tau);
        rec->quantized = 0;
    }
    free(cache.up);
    free(cache.down);
    return result;
}

static qd_dtype model_dtype_of(const qd_st_tensor *t) { return t->dtype == QD_F64 ? QD_F32 : t->dtype; }

/* Without dynamic escalation every stored tensor is known from the headers: declare
 * them all so the writer puts each one straight in its place. */
static qd_status declare_outputs(run *r, comp *c, const qd_st_set *st, qd_st_stream *out) {
    qd_ctx *ctx = r->ctx;
    for (int64_t k = 0; k < st->n_tensors; k++) {
        const qd_st_tensor *t = &st->tensors[k];
        layer_rec rec;
        decide(r, c, t, &rec, 0);
        if (rec.quantized) {
            qd_sdnq_kwargs kw;
            qd_sdnq_layout l;
            int no_mm, fits;
            QD_TRY(derive_as(r, &rec, rec.kw.weights_dtype, &kw, &l, &no_mm, &fits));
            if (fits) {
                qd_st_out o[QD_SQ_NTENSORS];
                int present[QD_SQ_NTENSORS];
                qd_sdnq_stored_tensors(&l, model_dtype_of(t), o, present);
                char name[600];
                for (int i = 0; i < QD_SQ_NTENSORS; i++) {
                    if (!present[i]) continue;
                    snprintf(name, sizeof name, "%.*s.%s", (int)(strlen(t->name) - 7), t->name, o[i].name);
                    QD_TRY(qd_st_stream_declare(ctx, out, name, o[i].dtype, o[i].ndim, o[i].shape));
                }
                continue;
            }
        }
        QD_TRY(qd_st_stream_declare(ctx, out, t->name, t->dtype, t->ndim, t->shape));
    }
    return qd_st_stream_layout(ctx, out, "\"format\":\"pt\"");
}

/* ---- the config sdnq writes ---- */

static cJSON *raw_float(double v) {
    char b[64];
    qd_pyjson_float(v, b, sizeof b);
    return cJSON_CreateRaw(b);
}

static cJSON *build_qconfig(run *r, const comp *c) {
    const qd_quant_params *p = r->p;
    const qd_sdnq_kwargs *g = &r->global;
    cJSON *q = cJSON_CreateObject();
    cJSON_AddBoolToObject(q, "add_skip_keys", p->default_skips != 0);
    cJSON_AddNumberToObject(q, "codebook_steps", p->codebook_steps);
    cJSON_AddBoolToObject(q, "dequantize_fp32", 1);
    if (p->dynamic && p->dynamic_loss >= 0) cJSON_AddItemToObject(q, "dynamic_loss_threshold", raw_float(p->dynamic_loss));
    else cJSON_AddNullToObject(q, "dynamic_loss_threshold");
    cJSON_AddNumberToObject(q, "group_size", (double)g->group_size);
    cJSON_AddNumberToObject(q, "hadamard_group_size", (double)g->hadamard_group_size);
    int is_int = r->wd.family == QD_SQ_INT || r->wd.family == QD_SQ_UINT;
    cJSON_AddBoolToObject(q, "is_integer", is_int);
    cJSON_AddBoolToObject(q, "is_training", 0);
    cJSON_AddBoolToObject(q, "is_unsigned", !r->wd.is_signed);
    cJSON_AddNumberToObject(q, "minimum_allowed_channel_size", (double)p->min_channels);
    cJSON_AddNumberToObject(q, "minimum_allowed_numel", (double)p->min_numel);
    cJSON *dd = cJSON_AddObjectToObject(q, "modules_dtype_dict");
    cJSON *qc = cJSON_AddObjectToObject(q, "modules_quant_config");
    cJSON *nc = cJSON_AddArrayToObject(q, "modules_to_not_convert");
    cJSON *nm = cJSON_AddArrayToObject(q, "modules_to_not_use_matmul");
    for (int64_t i = 0; i < c->n_layers; i++) {
        const layer_rec *l = &c->layers[i];
        if (!l->quantized) {
            if (ends_with(l->name, ".weight")) cJSON_AddItemToArray(nc, cJSON_CreateString(l->name));
            continue;
        }
        if (strcmp(l->kw.weights_dtype, g->weights_dtype)) {
            cJSON *arr = cJSON_GetObjectItemCaseSensitive(dd, l->kw.weights_dtype);
            if (!arr) arr = cJSON_AddArrayToObject(dd, l->kw.weights_dtype);
            cJSON_AddItemToArray(arr, cJSON_CreateString(l->name));
        }
        cJSON *o = cJSON_CreateObject();
        if (l->kw.group_size != g->group_size) cJSON_AddNumberToObject(o, "group_size", (double)l->kw.group_size);
        if (l->kw.use_svd != g->use_svd) cJSON_AddBoolToObject(o, "use_svd", l->kw.use_svd);
        if (l->kw.svd_rank != g->svd_rank) cJSON_AddNumberToObject(o, "svd_rank", (double)l->kw.svd_rank);
        if (l->kw.use_hadamard != g->use_hadamard) cJSON_AddBoolToObject(o, "use_hadamard", l->kw.use_hadamard);
        if (l->kw.use_codebook != g->use_codebook) cJSON_AddBoolToObject(o, "use_codebook", l->kw.use_codebook);
        if (o->child) cJSON_AddItemToObject(qc, l->name, o);
        else cJSON_Delete(o);
        if (l->no_matmul) cJSON_AddItemToArray(nm, cJSON_CreateString(l->name));
    }
    cJSON_AddBoolToObject(q, "non_blocking", 0);
    cJSON_AddBoolToObject(q, "quant_conv", p->quant_conv != 0);
    cJSON_AddBoolToObject(q, "quant_embedding", p->quant_embedding != 0);
    cJSON_AddStringToObject(q, "quant_method", "sdnq");
    cJSON_AddStringToObject(q, "quantization_device", "cpu");
    if (r->mm_name[0]) cJSON_AddStringToObject(q, "quantized_matmul_dtype", r->mm_name);
    else cJSON_AddNullToObject(q, "quantized_matmul_dtype");
    cJSON_AddStringToObject(q, "return_device", "cpu");
    cJSON_AddStringToObject(q, "sdnq_version", "0.2.5");   /* the format version written (spec source) */
    cJSON_AddNumberToObject(q, "svd_rank", (double)g->svd_rank);
    cJSON_AddNumberToObject(q, "svd_steps", p->svd_steps);
    cJSON_AddBoolToObject(q, "use_codebook", g->use_codebook);
    cJSON_AddBoolToObject(q, "use_dynamic_quantization", p->dynamic != 0);
    cJSON_AddBoolToObject(q, "use_grad_ckpt", 1);
    cJSON_AddBoolToObject(q, "use_hadamard", g->use_hadamard);
    cJSON_AddBoolToObject(q, "use_quantized_matmul", g->use_quantized_matmul);
    cJSON_AddBoolToObject(q, "use_quantized_matmul_conv", g->use_quantized_matmul_conv);
    cJSON_AddBoolToObject(q, "use_static_quantization", 1);
    cJSON_AddBoolToObject(q, "use_stochastic_rounding", 0);
    cJSON_AddBoolToObject(q, "use_svd", g->use_svd);
    cJSON_AddStringToObject(q, "weights_dtype", g->weights_dtype);
    return q;
}

/* The loader's view of the config about to be written must give every layer the
 * layout it was written with. */
static qd_status verify_config(run *r, const comp *c, const cJSON *q) {
    qd_ctx *ctx = r->ctx;
    char *text = qd_pyjson_print(q, 0);
    cJSON *copy = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!copy) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_sdnq_config *cfg;
    char label[4400];
    snprintf(label, sizeof label, "%s/quantization_config.json (being written)", c->name);
    QD_TRY(qd_sdnq_config_from_json(ctx, copy, label, &cfg));
    qd_status st = QD_OK;
    for (int64_t i = 0; i < c->n_layers && st == QD_OK; i++) {
        const layer_rec *l = &c->layers[i];
        int listed = qd_sdnq_skips(cfg, l->name);
        if (!l->quantized) {
            if (ends_with(l->name, ".weight") && !listed)
                st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "internal: %s does not list skipped layer '%s'", label, l->name);
            continue;
        }
        if (listed) { st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "internal: %s lists quantized layer '%s' as skipped", label, l->name); break; }
        qd_sdnq_layout d;
        st = qd_sdnq_layout_derive(ctx, cfg, l->name, l->cls, l->ndim, l->shape, &d);
        if (st != QD_OK) break;
        if (strcmp(d.dtype.name, l->l.dtype.name) || d.grouping != l->l.grouping || d.groups != l->l.groups ||
            d.transposed != l->l.transposed || d.hadamard != l->l.hadamard || d.hadamard_size != l->l.hadamard_size ||
            d.codebook != l->l.codebook || d.zero_point != l->l.zero_point || d.svd_transposed != l->l.svd_transposed ||
            (l->l.svd && (!d.svd || d.svd_rank != l->l.svd_rank)))
            st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "internal: %s would make the loader read layer '%s' with another layout",
                         label, l->name);
    }
    qd_sdnq_config_free(cfg);
    return st;
}

static qd_status write_text(qd_ctx *ctx, const char *path, const char *text) {
    qd_outfile f;
    QD_TRY(qd_outfile_open(ctx, &f, path));
    fputs(text, f.fp);
    return qd_outfile_commit(ctx, &f);
}

static qd_status write_configs(run *r, const comp *c, const char *out_comp) {
    qd_ctx *ctx = r->ctx;
    cJSON *q = build_qconfig(r, c);
    if (!q) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_status st = verify_config(r, c, q);
    char src[4200], dst[4200];
    char *orig = NULL, *merged = NULL, *alone = NULL;
    if (st == QD_OK && c->sf) {
        orig = strdup(c->sf->config);
        if (!orig) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    } else if (st == QD_OK) {
        qd_path_join(src, sizeof src, c->dir, "config.json");
        size_t len;
        st = qd_read_file(ctx, src, &orig, &len);
    }
    if (st == QD_OK) {
        merged = qd_pyjson_set_key(orig, "quantization_config", q);
        alone = qd_pyjson_print(q, 0);
        if (!merged || !alone) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    if (st == QD_OK) {
        qd_path_join(dst, sizeof dst, out_comp, "config.json");
        st = write_text(ctx, dst, merged);
    }
    if (st == QD_OK) {
        qd_path_join(dst, sizeof dst, out_comp, "quantization_config.json");
        st = write_text(ctx, dst, alone);
    }
    free(orig);
    free(merged);
    free(alone);
    cJSON_Delete(q);
    return st;
}

/* ---- one component ---- */

static qd_status add_record(qd_ctx *ctx, comp *c, const layer_rec *rec) {
    if (c->n_layers == c->cap_layers) {
        int64_t cap = c->cap_layers ? 2 * c->cap_layers : 256;
        layer_rec *l = realloc(c->layers, sizeof *l * (size_t)cap);
        if (!l) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        c->layers = l;
        c->cap_layers = cap;
    }
    c->layers[c->n_layers++] = *rec;
    return QD_OK;
}

/* fp32 values back to a stored float dtype. */
static void from_f32(const float *src, int64_t n, qd_dtype dt, void *dst) {
    if (dt == QD_F32) { memcpy(dst, src, sizeof(float) * (size_t)n); return; }
    for (int64_t i = 0; i < n; i++) {
        if (dt == QD_F16) ((uint16_t *)dst)[i] = qd_f32_to_f16(src[i]);
        else if (dt == QD_BF16) ((uint16_t *)dst)[i] = qd_f32_to_bf16(src[i]);
        else ((double *)dst)[i] = (double)src[i];
    }
}

static qd_status call_prepare(run *r, const comp *c, const qd_st_tensor *t, float *w) {
    if (!r->p->prepare) return QD_OK;
    r->ctx->err[0] = 0;
    if (r->p->prepare(r->p->prepare_user, c->name, t->name, w, t->shape, t->ndim) == 0) return QD_OK;
    if (r->ctx->err[0]) return qd_fail_prefix(r->ctx, QD_ERR_ARG, "%s: tensor '%s'", c->name, t->name);
    return qd_fail(r->ctx, QD_ERR_CANCELLED, "%s: tensor '%s': stopped by the prepare hook", c->name, t->name);
}

static qd_status process_tensor(run *r, comp *c, const qd_st_tensor *t, qd_st_stream *out) {
    qd_ctx *ctx = r->ctx;
    layer_rec rec;
    decide(r, c, t, &rec, 0);
    int want_f32 = rec.quantized || (r->p->prepare && rec.layer && is_float(t->dtype));
    float *w = NULL;
    qd_status st = QD_OK;
    if (want_f32) {
        w = qd_malloc(ctx, sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        if (!w) return QD_ERR_NOMEM;
        qd_st_to_f32(t, 0, t->numel, w);
        qd_st_release(t);
        st = call_prepare(r, c, t, w);
    }
    qd_sdnq_qresult res;
    memset(&res, 0, sizeof res);
    if (st == QD_OK && rec.quantized) {
        st = quantize_layer(r, &rec, w, model_dtype_of(t), &res);
        if (st == QD_OK && rec.quantized) {
            double sw2 = 0;
            for (int64_t i = 0; i < t->numel; i++) sw2 += (double)w[i] * w[i];
            rec.sw2 = sw2;
            rec.se = res.rel_err * res.rel_err * sw2;
            rec.rel_err = res.rel_err;
            rec.snr_db = res.snr_db;
            rec.loss = res.loss;
            rec.bytes_out = res.bytes;
        }
    }
    if (st == QD_OK && out) {
        if (rec.quantized) {
            char module[512], name[600];
            snprintf(module, sizeof module, "%.*s", (int)(strlen(t->name) - 7), t->name);
            for (int i = 0; i < QD_SQ_NTENSORS && st == QD_OK; i++) {
                if (!res.present[i]) continue;
                snprintf(name, sizeof name, "%s.%s", module, res.t[i].name);
                st = qd_st_stream_add(ctx, out, name, res.t[i].dtype, res.t[i].ndim, res.t[i].shape, res.t[i].data);
            }
        } else if (w) {   /* the hook may have changed it: store it again in its own dtype */
            void *back = qd_malloc(ctx, t->nbytes ? t->nbytes : 1);
            if (!back) st = QD_ERR_NOMEM;
            else {
                from_f32(w, t->numel, t->dtype, back);
                st = qd_st_stream_add(ctx, out, t->name, t->dtype, t->ndim, t->shape, back);
                free(back);
            }
        } else {
            st = qd_st_stream_add(ctx, out, t->name, t->dtype, t->ndim, t->shape, t->data);
        }
    }
    if (!rec.quantized) rec.bytes_out = rec.bytes_in;
    qd_sdnq_qresult_free(&res);
    free(w);
    qd_st_release(t);
    if (st == QD_OK) st = add_record(ctx, c, &rec);
    return st;
}

static qd_status copy_component_files(qd_ctx *ctx, const comp *c, const char *out_comp) {
    if (c->sf) return QD_OK;   /* a single file's component has nothing besides weights and config */
    DIR *d = opendir(c->dir);
    if (!d) return qd_fail(ctx, QD_ERR_IO, "%s: cannot list: %s", c->dir, strerror(errno));
    struct dirent *e;
    qd_status st = QD_OK;
    while (st == QD_OK && (e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "config.json") || !strcmp(n, "quantization_config.json") ||
            ends_with(n, ".safetensors") || ends_with(n, ".safetensors.index.json"))
            continue;
        char a[4200], b[4200];
        qd_path_join(a, sizeof a, c->dir, n);
        qd_path_join(b, sizeof b, out_comp, n);
        st = qd_tree_copy(ctx, a, b);
    }
    closedir(d);
    return st;
}

static qd_status process_component(run *r, comp *c, const char *tmp_dir) {
    qd_ctx *ctx = r->ctx;
    char out_comp[4200], wpath[4400];
    qd_st_stream *out = NULL;
    if (tmp_dir) {
        qd_path_join(out_comp, sizeof out_comp, tmp_dir, c->name);
        if (mkdir(out_comp, 0755) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", out_comp, strerror(errno));
        qd_path_join(wpath, sizeof wpath, out_comp, c->weights_out);
        QD_TRY(qd_st_stream_open(ctx, wpath, &out));
    }
    qd_st_set st;
    qd_status s = comp_open(ctx, c, &st);
    if (s != QD_OK) { qd_st_stream_abort(out); return s; }
    if (out && !r->p->dynamic && (s = declare_outputs(r, c, &st, out)) != QD_OK) {
        comp_close(c, &st);
        qd_st_stream_abort(out);
        return s;
    }
    for (int64_t k = 0; k < st.n_tensors && s == QD_OK; k++) {
        const qd_st_tensor *t = &st.tensors[k];
        if (ctx->cancel) { s = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); break; }
        s = process_tensor(r, c, t, out);
        r->done += (int64_t)t->nbytes;
        if (s == QD_OK && r->p->progress &&
            r->p->progress(r->p->progress_user, r->done, r->total, t->name, qd_now() - r->t0) != 0)
            s = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled");
    }
    comp_close(c, &st);
    if (s != QD_OK) { qd_st_stream_abort(out); return s; }
    if (!tmp_dir) return QD_OK;
    s = write_configs(r, c, out_comp);
    if (s == QD_OK) s = copy_component_files(ctx, c, out_comp);
    if (s == QD_OK) return qd_st_stream_finish(ctx, out, "\"format\":\"pt\"");
    qd_st_stream_abort(out);
    return s;
}

/* ---- report and template ---- */

static cJSON *shape_json(const layer_rec *l) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < l->ndim; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)l->shape[i]));
    return a;
}

static const char *grouping_name(const qd_sdnq_layout *l) {
    return l->grouping == QD_SDNQ_GROUPED ? "group" : l->grouping == QD_SDNQ_ROWWISE ? "row-wise" : "tensor-wise";
}

static double snr_of(double sw2, double se) { return se > 0 ? 10.0 * log10(sw2 / se) : INFINITY; }

static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);   /* exact: infinite SNR */
}

static cJSON *report(run *r, const char *in_dir, const char *out_dir) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "input", in_dir);
    if (out_dir) cJSON_AddStringToObject(root, "output", out_dir);
    else cJSON_AddNullToObject(root, "output");
    cJSON_AddBoolToObject(root, "dry_run", r->p->dry_run != 0);
    if (r->sf) {
        /* a single-file checkpoint: its family, where the configs came from, what the folder lacks */
        cJSON_AddStringToObject(root, "single_file_family", qd_sf_family_name(r->sf));
        if (qd_sf_config_from(r->sf)) cJSON_AddStringToObject(root, "config_from", qd_sf_config_from(r->sf));
        else cJSON_AddNullToObject(root, "config_from");
        cJSON *m = cJSON_AddArrayToObject(root, "missing");
        char *miss = r->missing ? strdup(r->missing) : qd_sf_missing(r->sf);
        for (char *save = NULL, *tok = miss ? strtok_r(miss, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save))
            cJSON_AddItemToArray(m, cJSON_CreateString(tok));
        free(miss);
    }
    cJSON_AddStringToObject(root, "weights_dtype", r->wd.name);
    cJSON *comps = cJSON_AddArrayToObject(root, "components");
    double tsw2 = 0, tse = 0;
    int64_t tq = 0, ts = 0, tin = 0, tout = 0;
    for (int i = 0; i < r->n_comps; i++) {
        const comp *c = &r->comps[i];
        cJSON *co = cJSON_CreateObject();
        cJSON_AddItemToArray(comps, co);
        cJSON_AddStringToObject(co, "name", c->name);
        cJSON_AddStringToObject(co, "class", c->cls);
        cJSON *layers = cJSON_CreateArray();
        double sw2 = 0, se = 0;
        int64_t nq = 0, ns = 0, bin = 0, bout = 0;
        for (int64_t k = 0; k < c->n_layers; k++) {
            const layer_rec *l = &c->layers[k];
            bin += l->bytes_in;
            bout += l->bytes_out;
            if (!l->layer) continue;
            cJSON *lo = cJSON_CreateObject();
            cJSON_AddItemToArray(layers, lo);
            cJSON_AddStringToObject(lo, "name", l->name);
            cJSON_AddStringToObject(lo, "class", class_name(l->cls));
            cJSON_AddItemToObject(lo, "shape", shape_json(l));
            cJSON_AddNumberToObject(lo, "bytes_in", (double)l->bytes_in);
            if (!l->quantized) {
                cJSON_AddStringToObject(lo, "skipped", l->reason);
                ns++;
                continue;
            }
            nq++;
            sw2 += l->sw2;
            se += l->se;
            cJSON_AddStringToObject(lo, "dtype", l->l.dtype.name);
            cJSON_AddStringToObject(lo, "grouping", grouping_name(&l->l));
            if (l->l.grouping == QD_SDNQ_GROUPED) cJSON_AddNumberToObject(lo, "group_size", (double)l->l.group_size);
            else cJSON_AddNullToObject(lo, "group_size");
            cJSON_AddNumberToObject(lo, "svd_rank", l->l.svd ? (double)l->l.svd_rank : 0);
            cJSON_AddBoolToObject(lo, "hadamard", l->l.hadamard);
            cJSON_AddBoolToObject(lo, "codebook", l->l.codebook);
            cJSON_AddBoolToObject(lo, "transposed", l->l.transposed);
            cJSON_AddNumberToObject(lo, "bytes_out", (double)l->bytes_out);
            add_num(lo, "rel_error", l->rel_err);
            add_num(lo, "snr_db", l->snr_db);
            add_num(lo, "loss", l->loss);
        }
        cJSON_AddNumberToObject(co, "quantized", (double)nq);
        cJSON_AddNumberToObject(co, "skipped", (double)ns);
        cJSON_AddNumberToObject(co, "bytes_in", (double)bin);
        cJSON_AddNumberToObject(co, "bytes_out", (double)bout);
        add_num(co, "rel_error", sw2 > 0 ? sqrt(se / sw2) : 0);
        add_num(co, "snr_db", snr_of(sw2, se));
        cJSON_AddItemToObject(co, "layers", layers);
        tsw2 += sw2; tse += se; tq += nq; ts += ns; tin += bin; tout += bout;
    }
    cJSON *t = cJSON_AddObjectToObject(root, "totals");
    cJSON_AddNumberToObject(t, "quantized", (double)tq);
    cJSON_AddNumberToObject(t, "skipped", (double)ts);
    cJSON_AddNumberToObject(t, "bytes_in", (double)tin);
    cJSON_AddNumberToObject(t, "bytes_out", (double)tout);
    add_num(t, "rel_error", tsw2 > 0 ? sqrt(tse / tsw2) : 0);
    add_num(t, "snr_db", snr_of(tsw2, tse));
    cJSON_AddNumberToObject(t, "seconds", qd_now() - r->t0);
    return root;
}

/* Per-layer JSON that --layer-config reads back: the arguments each layer was
 * quantized with (editable) and what came out (information only). */
static qd_status write_template(run *r) {
    qd_ctx *ctx = r->ctx;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "qdiff-sdnq-layers");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON *comps = cJSON_AddObjectToObject(root, "components");
    for (int i = 0; i < r->n_comps; i++) {
        const comp *c = &r->comps[i];
        cJSON *layers = cJSON_AddObjectToObject(cJSON_AddObjectToObject(comps, c->name), "layers");
        for (int64_t k = 0; k < c->n_layers; k++) {
            const layer_rec *l = &c->layers[k];
            if (!l->layer) continue;
            cJSON *o = cJSON_AddObjectToObject(layers, l->name);
            cJSON_AddStringToObject(o, "class", class_name(l->cls));
            cJSON_AddItemToObject(o, "shape", shape_json(l));
            cJSON_AddBoolToObject(o, "skip", !l->quantized);
            if (!l->quantized) { cJSON_AddStringToObject(o, "reason", l->reason); continue; }
            cJSON_AddStringToObject(o, "weights_dtype", l->kw.weights_dtype);
            cJSON_AddNumberToObject(o, "group_size", (double)l->kw.group_size);
            cJSON_AddBoolToObject(o, "use_svd", l->kw.use_svd);
            cJSON_AddNumberToObject(o, "svd_rank", (double)l->kw.svd_rank);
            cJSON_AddBoolToObject(o, "use_hadamard", l->kw.use_hadamard);
            cJSON_AddBoolToObject(o, "use_codebook", l->kw.use_codebook);
            cJSON_AddStringToObject(o, "grouping", grouping_name(&l->l));
            cJSON_AddNumberToObject(o, "stored_group_size", (double)l->l.group_size);
            add_num(o, "rel_error", l->rel_err);
            add_num(o, "snr_db", l->snr_db);
        }
    }
    char *text = qd_pyjson_print(root, 0);
    cJSON_Delete(root);
    if (!text) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_status st = write_text(ctx, r->p->template_path, text);
    free(text);
    return st;
}

/* ---- the folder ---- */

static qd_status copy_rest(run *r, const char *in_dir, const char *tmp) {
    qd_ctx *ctx = r->ctx;
    if (r->sf) {
        const char *done[MAX_COMPONENTS];
        for (int i = 0; i < r->n_comps; i++) done[i] = r->comps[i].name;
        return qd_sf_complete_folder(ctx, r->sf, tmp, done, r->n_comps, &r->missing);
    }
    DIR *d = opendir(in_dir);
    if (!d) return qd_fail(ctx, QD_ERR_IO, "%s: cannot list: %s", in_dir, strerror(errno));
    struct dirent *e;
    qd_status st = QD_OK;
    while (st == QD_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int chosen = 0;
        for (int i = 0; i < r->n_comps; i++) chosen |= !strcmp(r->comps[i].name, e->d_name);
        if (chosen) continue;
        char a[4200], b[4200];
        qd_path_join(a, sizeof a, in_dir, e->d_name);
        qd_path_join(b, sizeof b, tmp, e->d_name);
        st = qd_tree_copy(ctx, a, b);
    }
    closedir(d);
    return st;
}

static qd_status commit(qd_ctx *ctx, const char *tmp, const char *out_dir, int force) {
    struct stat sb;
    if (lstat(out_dir, &sb) == 0) {
        if (!force) return qd_fail(ctx, QD_ERR_ARG, "%s: already exists (use --force to replace it)", out_dir);
        char old[4200];
        snprintf(old, sizeof old, "%s.old-%ld", out_dir, (long)getpid());
        if (rename(out_dir, old) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot replace: %s", out_dir, strerror(errno));
        if (rename(tmp, out_dir) != 0) {
            int e = errno;
            rename(old, out_dir);
            return qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", out_dir, strerror(e));
        }
        qd_tree_remove(old);
        return QD_OK;
    }
    if (rename(tmp, out_dir) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    return QD_OK;
}

static void run_free(run *r) {
    for (int i = 0; i < r->n_comps; i++) free(r->comps[i].layers);
    free(r->skip_hits);
    free(r->dtype_hits);
    free(r->dtype_pat);
    free(r->dtype_type);
    cJSON_Delete(r->layer_cfg_root);
    qd_sf_close(r->sf);
    free(r->missing);
}

/* The output may be neither the input nor inside it (the copy of the input would
 * then include the folder being built). */
static qd_status same_folder(qd_ctx *ctx, const char *in_dir, const char *out_dir) {
    struct stat a, b;
    if (stat(in_dir, &a) == 0 && stat(out_dir, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return qd_fail(ctx, QD_ERR_ARG, "%s: the output folder is the input folder", out_dir);
    char parent[4200], rin[PATH_MAX], rpar[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", out_dir);
    size_t n = strlen(parent);
    while (n > 1 && parent[n - 1] == '/') parent[--n] = 0;
    char *slash = strrchr(parent, '/');
    if (!slash) snprintf(parent, sizeof parent, ".");
    else if (slash == parent) parent[1] = 0;
    else *slash = 0;
    if (realpath(in_dir, rin) && realpath(parent, rpar)) {
        size_t k = strlen(rin);
        if (!strncmp(rpar, rin, k) && (rpar[k] == 0 || rpar[k] == '/'))
            return qd_fail(ctx, QD_ERR_ARG, "%s: the output folder may not be inside the input folder %s", out_dir, in_dir);
    }
    return QD_OK;
}

static qd_status quantize_run(qd_ctx *ctx, const char *in_dir, const char *out_dir, const qd_quant_params *p,
                              char **report_json) {
    if (report_json) *report_json = NULL;
    if (!ctx || !in_dir || !p) return ctx ? qd_fail(ctx, QD_ERR_ARG, "qd_quantize: missing argument") : QD_ERR_ARG;
    if (!out_dir && !p->dry_run) return qd_fail(ctx, QD_ERR_ARG, "qd_quantize: no output folder (only a dry run needs none)");
    run r;
    memset(&r, 0, sizeof r);
    r.ctx = ctx;
    r.p = p;
    r.t0 = qd_now();
    char tmp[4200] = "";
    qd_status st = check_params(&r);
    if (st == QD_OK) st = choose_components(&r, in_dir);
    if (st == QD_OK && out_dir && !p->dry_run) {
        struct stat sb;
        if (!r.sf) st = same_folder(ctx, in_dir, out_dir);
        else {
            struct stat a, b;
            if (stat(in_dir, &a) == 0 && stat(out_dir, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                st = qd_fail(ctx, QD_ERR_ARG, "%s: the output is the input checkpoint", out_dir);
            if (st == QD_OK && qd_sf_config_from(r.sf)) st = same_folder(ctx, qd_sf_config_from(r.sf), out_dir);
        }
        if (st == QD_OK && lstat(out_dir, &sb) == 0 && !p->force)
            st = qd_fail(ctx, QD_ERR_ARG, "%s: already exists (use --force to replace it)", out_dir);
    }
    if (st == QD_OK) st = load_layer_config(&r);
    if (st == QD_OK) st = plan(&r);
    if (st == QD_OK && out_dir && !p->dry_run) {
        if (strlen(out_dir) + 16 >= sizeof tmp) st = qd_fail(ctx, QD_ERR_ARG, "%s: path too long", out_dir);
        else {
            snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", out_dir);
            if (!mkdtemp(tmp)) { st = qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno)); tmp[0] = 0; }
            else chmod(tmp, 0755);
        }
    }
    for (int i = 0; i < r.n_comps && st == QD_OK; i++) st = process_component(&r, &r.comps[i], tmp[0] ? tmp : NULL);
    if (st == QD_OK && tmp[0]) st = copy_rest(&r, in_dir, tmp);
    if (st == QD_OK && p->template_path) st = write_template(&r);
    if (st == QD_OK && tmp[0]) st = commit(ctx, tmp, out_dir, p->force);
    if (tmp[0] && st != QD_OK) qd_tree_remove(tmp);
    if (st == QD_OK && report_json) {
        cJSON *rep = report(&r, in_dir, p->dry_run ? NULL : out_dir);
        *report_json = rep ? cJSON_Print(rep) : NULL;
        cJSON_Delete(rep);
        if (!*report_json) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    run_free(&r);
    return st;
}

/* The SVD and LoRA-merge GEMMs that make the written weights run in fp32 whatever the
 * context's precision (bf16 operands would change what is written). */
qd_status qd_quantize(qd_ctx *ctx, const char *in_dir, const char *out_dir, const qd_quant_params *p,
                      char **report_json) {
    if (!ctx) return quantize_run(ctx, in_dir, out_dir, p, report_json);
    int precision = ctx->precision;
    ctx->precision = QD_PRECISION_FP32;
    qd_status st = quantize_run(ctx, in_dir, out_dir, p, report_json);
    ctx->precision = precision;
    return st;
}
