/* qd_inspect: what a diffusers folder (or one component folder) holds, without
 * building any model. Each component's tensors are walked with the safetensors
 * reader; every SDNQ layer (one with "<prefix>.scale") is opened exactly as the
 * loader opens it (qd_sdnq_weight_open: the §1.4 derivation checked against the
 * stored shapes), so the stored type, grouping, SVD rank, Hadamard, codebook and
 * quantized-matmul flags reported are the ones inference would use.
 *
 * A layer's logical shape is not stored anywhere (spec sdnq.md §1.1): it is
 * recovered from the tensors: the output count from the scale ([out, ...], or
 * [1, out] when stored for quantized matmul), the code count from the weight
 * (words x codes-per-word when packed), kernel dims from a Conv scale.
 *
 * Resident bytes follow what the loader keeps: weight codes and dense matrices
 * stay in the mapping; 1-D tensors (biases, norm scales) and SDNQ scale,
 * zero-point and SVD factors that are not aligned F32 in the file become fp32
 * copies. Sources read once to make a copy are not counted. */
#include "qdiff.h"
#include "base/ctx.h"
#include "io/file.h"
#include "io/json.h"
#include "models/params.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_weight.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void qd_free(void *p) { free(p); }

/* ---- per-component tallies ---- */

typedef struct {
    char type[48];          /* stored type: "uint4", "int8", ... or the dense dtype "f16" */
    char grouping[16];      /* "group", "row-wise", "tensor-wise", "dense" */
    int64_t group_size;     /* grouped only */
    int codebook;
    int64_t layers, params;
} type_row;

typedef struct { int64_t key, layers; } count_row;

typedef struct {
    int64_t tensors, params, disk, mapped, copies;
    int64_t quantized, dense, skipped, qmm, svd, hadamard, codebook, zero_point, adjusted, transposed;
    int64_t by_class[3];    /* quantized Linear / Conv / Embedding */
    type_row *rows;
    int n_rows, cap_rows;
    count_row *ranks, *hsizes;
    int n_ranks, n_hsizes, cap_ranks, cap_hsizes;
} tally;

static void tally_free(tally *t) {
    free(t->rows);
    free(t->ranks);
    free(t->hsizes);
}

static int grow(void **p, int *cap, int n, size_t elem) {
    if (n < *cap) return 1;
    int c = *cap ? 2 * *cap : 16;
    void *q = realloc(*p, elem * (size_t)c);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

static qd_status add_rows(qd_ctx *ctx, tally *t, const char *type, const char *grouping, int64_t gs, int codebook,
                          int64_t layers, int64_t params) {
    for (int i = 0; i < t->n_rows; i++) {
        type_row *r = &t->rows[i];
        if (!strcmp(r->type, type) && !strcmp(r->grouping, grouping) && r->group_size == gs && r->codebook == codebook) {
            r->layers += layers;
            r->params += params;
            return QD_OK;
        }
    }
    if (!grow((void **)&t->rows, &t->cap_rows, t->n_rows, sizeof *t->rows)) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    type_row *r = &t->rows[t->n_rows++];
    memset(r, 0, sizeof *r);
    snprintf(r->type, sizeof r->type, "%s", type);
    snprintf(r->grouping, sizeof r->grouping, "%s", grouping);
    r->group_size = gs;
    r->codebook = codebook;
    r->layers = layers;
    r->params = params;
    return QD_OK;
}

static qd_status add_count(qd_ctx *ctx, count_row **rows, int *n, int *cap, int64_t key) {
    for (int i = 0; i < *n; i++)
        if ((*rows)[i].key == key) { (*rows)[i].layers++; return QD_OK; }
    if (!grow((void **)rows, cap, *n, sizeof **rows)) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    (*rows)[*n].key = key;
    (*rows)[*n].layers = 1;
    (*n)++;
    return QD_OK;
}

/* ---- names ---- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "<prefix>.<suffix>" -> prefix into buf when the name has that suffix. */
static int strip(const char *name, const char *suffix, char *buf, size_t n) {
    size_t len = strlen(name), m = strlen(suffix);
    if (len <= m + 1 || name[len - m - 1] != '.' || strcmp(name + len - m, suffix) != 0 || len - m - 1 >= n) return 0;
    memcpy(buf, name, len - m - 1);
    buf[len - m - 1] = 0;
    return 1;
}

static void lower(char *dst, size_t n, const char *src) {
    size_t i = 0;
    for (; src[i] && i + 1 < n; i++) dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = 0;
}

/* ---- one SDNQ layer ---- */

/* Class and logical weight shape of the layer "<prefix>.*" from its stored tensors. */
static qd_status layer_shape(qd_ctx *ctx, const qd_sdnq_config *cfg, const char *param, const qd_sdnq_tensors *t,
                             qd_sdnq_class *cls, int *ndim, int64_t *shape) {
    /* the layer's stored type: the derivation itself resolves it (and reports a bad
     * weights_dtype or per-layer entry naming the config file) */
    qd_sdnq_layout l;
    int64_t probe[2] = {1, 1};
    QD_TRY(qd_sdnq_layout_derive(ctx, cfg, param, QD_SDNQ_LINEAR, 2, probe, &l));
    const qd_sdnq_dtype *d = &l.dtype;
    const qd_st_tensor *w = t->weight, *s = t->scale;
    if (!w) return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': has a scale but no weight tensor", param);

    int64_t codes = w->numel;
    if (d->packed) {
        if (w->numel % d->block_words)
            return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s' (%s): packed weight of %lld words is not a whole number of "
                           "%d-word blocks", param, d->name, (long long)w->numel, d->block_words);
        codes = w->numel / d->block_words * d->block_codes;
    }

    *cls = QD_SDNQ_LINEAR;
    int kdims = 0;
    const int64_t *kshape = NULL;
    int64_t out;
    if (l.codebook) {                                   /* LUT [out, G, L] / [out, L] / [L] */
        out = s->ndim >= 2 ? s->shape[0] : !d->packed && w->ndim >= 2 ? w->shape[0] : 1;
    } else if (s->numel == 1) {                         /* tensor-wise: the weight's own shape */
        out = !d->packed && w->ndim >= 2 ? w->shape[0] : 1;
        if (!d->packed && w->ndim == 2) {               /* [in, out] when stored for quantized matmul */
            int64_t sh[2] = {w->shape[0], w->shape[1]};
            QD_TRY(qd_sdnq_layout_derive(ctx, cfg, param, QD_SDNQ_LINEAR, 2, sh, &l));
            if (l.transposed) out = w->shape[1];
        }
    } else if (s->ndim == 2 && s->shape[0] == 1) {     /* [1, out]: stored for quantized matmul */
        out = s->shape[1];
    } else {
        out = s->shape[0];
        if (cfg->quant_conv && s->ndim >= 3 && s->shape[1] == 1) {               /* row-wise Conv [out, 1, k...] */
            kdims = s->ndim - 2;
            kshape = s->shape + 2;
        } else if (cfg->quant_conv && s->ndim >= 4 && s->shape[2] == 1) {        /* grouped Conv [out, G, 1, k...] */
            kdims = s->ndim - 3;
            kshape = s->shape + 3;
        }
    }
    if (kdims > 3) return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': scale has %d dims, more than any Conv", param, s->ndim);
    if (kdims) *cls = QD_SDNQ_CONV;
    else if (cfg->quant_embedding && qd_sdnq_embedding_name(param)) *cls = QD_SDNQ_EMBEDDING;

    int64_t ksize = 1;
    for (int i = 0; i < kdims; i++) ksize *= kshape[i] > 0 ? kshape[i] : 1;
    if (out <= 0 || codes % out || (codes / out) % ksize || codes / out / ksize <= 0)
        return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s' (%s): %lld weight codes do not split into %lld outputs%s",
                       param, d->name, (long long)codes, (long long)out, ksize > 1 ? " x kernel" : "");
    shape[0] = out;
    shape[1] = codes / out / ksize;
    for (int i = 0; i < kdims; i++) shape[2 + i] = kshape[i];
    *ndim = 2 + kdims;
    return QD_OK;
}

static qd_status quantized_layer(qd_ctx *ctx, const qd_params *p, const char *prefix, tally *t) {
    char name[700], param[600];
    qd_sdnq_tensors qt;
    snprintf(name, sizeof name, "%s.weight", prefix); qt.weight = qd_st_find(&p->st, name);
    snprintf(name, sizeof name, "%s.scale", prefix); qt.scale = qd_st_find(&p->st, name);
    snprintf(name, sizeof name, "%s.zero_point", prefix); qt.zero_point = qd_st_find(&p->st, name);
    snprintf(name, sizeof name, "%s.svd_up", prefix); qt.svd_up = qd_st_find(&p->st, name);
    snprintf(name, sizeof name, "%s.svd_down", prefix); qt.svd_down = qd_st_find(&p->st, name);
    snprintf(param, sizeof param, "%s.weight", prefix);
    if (!p->sdnq)
        return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s' has SDNQ tensors ('%s.scale') but the folder has no SDNQ "
                       "quantization_config (quantization_config.json or config.json)", prefix, prefix);

    qd_sdnq_class cls = QD_SDNQ_LINEAR;
    int ndim = 2;
    int64_t shape[QD_MAX_DIMS] = {0};
    QD_TRY(layer_shape(ctx, p->sdnq, param, &qt, &cls, &ndim, shape));
    qd_weight w;
    void *state;
    QD_TRY(qd_sdnq_weight_open(ctx, p->sdnq, &p->st, prefix, prefix, cls, ndim, shape, &w, &state));
    const qd_sdnq_state *s = state;
    const qd_sdnq_layout *l = &s->l;

    /* what stays mapped, what the loader copied to fp32 */
    const qd_st_tensor *parts[4] = {qt.scale, qt.zero_point, l->svd ? qt.svd_up : NULL, l->svd ? qt.svd_down : NULL};
    const float *used[4] = {s->scale, s->zero_point, s->svd_up, s->svd_down};
    t->mapped += (int64_t)qt.weight->nbytes;
    for (int i = 0; i < 4; i++) {
        if (!parts[i]) continue;
        if ((const void *)used[i] == parts[i]->data) t->mapped += (int64_t)parts[i]->nbytes;
        else t->copies += 4 * parts[i]->numel;
    }
    int64_t params = l->out * l->cols;
    t->params += params;
    t->quantized++;
    t->by_class[l->cls]++;
    t->qmm += l->qmm;
    t->codebook += l->codebook;
    t->zero_point += l->zero_point;
    t->adjusted += l->adjusted;
    t->transposed += l->transposed;
    const char *grouping = l->grouping == QD_SDNQ_GROUPED ? "group" : l->grouping == QD_SDNQ_ROWWISE ? "row-wise" : "tensor-wise";
    qd_status st = add_rows(ctx, t, l->dtype.name, grouping, l->grouping == QD_SDNQ_GROUPED ? l->group_size : 0,
                            l->codebook, 1, params);
    if (st == QD_OK && l->svd) {
        t->svd++;
        st = add_count(ctx, &t->ranks, &t->n_ranks, &t->cap_ranks, l->svd_rank);
    }
    if (st == QD_OK && l->hadamard) {
        t->hadamard++;
        st = add_count(ctx, &t->hsizes, &t->n_hsizes, &t->cap_hsizes, l->hadamard_size);
    }
    free(state);
    return st;
}

/* ---- one component ---- */

/* 1 if the folder holds any *.safetensors (or an index of them). */
static int has_safetensors(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d)))
        found = ends_with(e->d_name, ".safetensors") || ends_with(e->d_name, ".safetensors.index.json");
    closedir(d);
    return found;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* "<prefix>.scale" beside "<prefix>.weight": an SDNQ layer (spec sdnq.md §1.3). */
static int is_quantized(const qd_st_set *set, const char *prefix) {
    char name[700];
    snprintf(name, sizeof name, "%s.scale", prefix);
    if (!qd_st_find(set, name)) return 0;
    snprintf(name, sizeof name, "%s.weight", prefix);
    return qd_st_find(set, name) != NULL;
}

static qd_status walk(qd_ctx *ctx, qd_params *p, tally *t, cJSON *files) {
    char prefix[600];
    const qd_st_set *set = &p->st;
    t->tensors = set->n_tensors;
    /* files: the distinct ones the tensors live in (each file's tensors share its path
     * pointer), with their size on disk */
    const char **seen = calloc((size_t)set->n_files + 1, sizeof *seen);
    int n_seen = 0;
    if (!seen) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < set->n_tensors; i++) {
        const char *f = set->tensors[i].file;
        int dup = 0;
        for (int j = 0; j < n_seen && !dup; j++) dup = seen[j] == f;
        if (dup || n_seen > set->n_files) continue;
        seen[n_seen++] = f;
        struct stat sb;
        if (stat(f, &sb) != 0) { free(seen); return qd_fail(ctx, QD_ERR_IO, "%s: cannot stat", f); }
        t->disk += (int64_t)sb.st_size;
        cJSON_AddItemToArray(files, cJSON_CreateString(base_name(f)));
    }
    free(seen);
    static const char *parts[] = {"weight", "scale", "zero_point", "svd_up", "svd_down"};
    for (int64_t i = 0; i < set->n_tensors; i++) {
        const qd_st_tensor *ten = &set->tensors[i];
        const char *name = ten->name;
        if (strip(name, "scale", prefix, sizeof prefix) && is_quantized(set, prefix)) {
            qd_status st = quantized_layer(ctx, p, prefix, t);
            if (st != QD_OK) return qd_fail_prefix(ctx, st, "%s", ten->file);
            continue;
        }
        int sibling = 0;   /* a part of a quantized layer, counted with it */
        for (size_t k = 0; k < sizeof parts / sizeof *parts && !sibling; k++)
            if (strip(name, parts[k], prefix, sizeof prefix)) sibling = is_quantized(set, prefix);
        if (sibling) continue;
        t->params += ten->numel;
        if (ten->ndim <= 1) t->copies += 4 * ten->numel;   /* biases, norm scales: fp32 copies */
        else t->mapped += (int64_t)ten->nbytes;
        if (!ends_with(name, ".weight")) continue;
        if (p->sdnq && qd_sdnq_skips(p->sdnq, name)) t->skipped++;
        if (ten->ndim >= 2) {
            char dt[16];
            lower(dt, sizeof dt, qd_dtype_name(ten->dtype));
            t->dense++;
            QD_TRY(add_rows(ctx, t, dt, "dense", 0, 0, 1, ten->numel));
        }
    }
    return QD_OK;
}

static cJSON *num(double v) { return cJSON_CreateNumber(v); }

static void add_layers_json(cJSON *c, const tally *t) {
    cJSON *layers = cJSON_AddObjectToObject(c, "layers");
    cJSON_AddItemToObject(layers, "quantized", num((double)t->quantized));
    cJSON_AddItemToObject(layers, "dense", num((double)t->dense));
    cJSON_AddItemToObject(layers, "skipped", num((double)t->skipped));
    cJSON_AddItemToObject(layers, "quantized_matmul", num((double)t->qmm));
    cJSON_AddItemToObject(layers, "svd", num((double)t->svd));
    cJSON_AddItemToObject(layers, "hadamard", num((double)t->hadamard));
    cJSON_AddItemToObject(layers, "codebook", num((double)t->codebook));
    cJSON_AddItemToObject(layers, "zero_point", num((double)t->zero_point));
    cJSON_AddItemToObject(layers, "transposed", num((double)t->transposed));
    cJSON_AddItemToObject(layers, "adjusted", num((double)t->adjusted));
    cJSON_AddItemToObject(layers, "linear", num((double)t->by_class[QD_SDNQ_LINEAR]));
    cJSON_AddItemToObject(layers, "conv", num((double)t->by_class[QD_SDNQ_CONV]));
    cJSON_AddItemToObject(layers, "embedding", num((double)t->by_class[QD_SDNQ_EMBEDDING]));
}

static void add_sizes_json(cJSON *c, const tally *t) {
    cJSON_AddItemToObject(c, "tensors", num((double)t->tensors));
    cJSON_AddItemToObject(c, "parameters", num((double)t->params));
    cJSON_AddItemToObject(c, "disk_bytes", num((double)t->disk));
    cJSON_AddItemToObject(c, "resident_bytes", num((double)(t->mapped + t->copies)));
    cJSON_AddItemToObject(c, "mapped_bytes", num((double)t->mapped));
    cJSON_AddItemToObject(c, "fp32_copy_bytes", num((double)t->copies));
}

static void add_counts_json(cJSON *c, const char *key, const char *field, const count_row *rows, int n) {
    cJSON *a = cJSON_AddArrayToObject(c, key);
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, field, num((double)rows[i].key));
        cJSON_AddItemToObject(o, "layers", num((double)rows[i].layers));
        cJSON_AddItemToArray(a, o);
    }
}

static void add_types_json(cJSON *c, const tally *t) {
    cJSON *a = cJSON_AddArrayToObject(c, "layer_types");
    for (int pass = 0; pass < 2; pass++)   /* quantized rows first, then dense */
        for (int i = 0; i < t->n_rows; i++) {
            const type_row *r = &t->rows[i];
            int dense = !strcmp(r->grouping, "dense");
            if (dense != pass) continue;
            char label[128];
            if (dense) snprintf(label, sizeof label, "%s dense", r->type);
            else if (r->group_size) snprintf(label, sizeof label, "%s g%lld%s", r->type, (long long)r->group_size, r->codebook ? " codebook" : "");
            else snprintf(label, sizeof label, "%s %s%s", r->type, r->grouping, r->codebook ? " codebook" : "");
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "label", label);
            cJSON_AddStringToObject(o, "type", r->type);
            cJSON_AddStringToObject(o, "grouping", r->grouping);
            if (r->group_size) cJSON_AddItemToObject(o, "group_size", num((double)r->group_size));
            else cJSON_AddNullToObject(o, "group_size");
            cJSON_AddBoolToObject(o, "quantized", !dense);
            cJSON_AddBoolToObject(o, "codebook", r->codebook);
            cJSON_AddItemToObject(o, "layers", num((double)r->layers));
            cJSON_AddItemToObject(o, "parameters", num((double)r->params));
            cJSON_AddItemToArray(a, o);
        }
}

/* Describe the component folder `sub` into c; its tally is added to `total`. */
static qd_status component(qd_ctx *ctx, const char *sub, const char *name, cJSON *c, tally *total) {
    if (!qd_dir_exists(sub)) return qd_fail(ctx, QD_ERR_IO, "%s: component folder is missing", sub);
    char path[4096];
    qd_path_join(path, sizeof path, sub, "config.json");
    if (qd_file_exists(path)) {   /* a component's config must at least parse */
        cJSON *cfg;
        QD_TRY(qd_json_load(ctx, path, &cfg));
        cJSON_Delete(cfg);
    }
    if (!has_safetensors(sub)) {
        cJSON_AddBoolToObject(c, "weights", 0);
        return QD_OK;
    }
    cJSON_AddBoolToObject(c, "weights", 1);
    qd_params p;
    QD_TRY(qd_params_open(ctx, sub, name, &p));
    tally t;
    memset(&t, 0, sizeof t);
    cJSON *files = cJSON_AddArrayToObject(c, "files");
    qd_status st = walk(ctx, &p, &t, files);
    if (st == QD_OK) {
        if (p.sdnq) {
            cJSON *q = cJSON_AddObjectToObject(c, "quantization");
            cJSON_AddStringToObject(q, "method", "sdnq");
            cJSON_AddStringToObject(q, "version", p.sdnq->version);
            cJSON_AddStringToObject(q, "config", p.sdnq->path);
            cJSON_AddStringToObject(q, "weights_dtype", p.sdnq->global.weights_dtype);
            cJSON_AddItemToObject(q, "modules_to_not_convert",
                                  num(p.sdnq->not_convert ? cJSON_GetArraySize(p.sdnq->not_convert) : 0));
        } else {
            cJSON_AddNullToObject(c, "quantization");
        }
        add_sizes_json(c, &t);
        add_layers_json(c, &t);
        add_types_json(c, &t);
        add_counts_json(c, "svd_ranks", "rank", t.ranks, t.n_ranks);
        add_counts_json(c, "hadamard_sizes", "size", t.hsizes, t.n_hsizes);
        /* totals */
        total->tensors += t.tensors; total->params += t.params; total->disk += t.disk;
        total->mapped += t.mapped; total->copies += t.copies;
        total->quantized += t.quantized; total->dense += t.dense; total->skipped += t.skipped;
        total->qmm += t.qmm; total->svd += t.svd; total->hadamard += t.hadamard; total->codebook += t.codebook;
        total->zero_point += t.zero_point; total->adjusted += t.adjusted; total->transposed += t.transposed;
        for (int k = 0; k < 3; k++) total->by_class[k] += t.by_class[k];
        for (int i = 0; i < t.n_rows && st == QD_OK; i++)
            st = add_rows(ctx, total, t.rows[i].type, t.rows[i].grouping, t.rows[i].group_size, t.rows[i].codebook,
                          t.rows[i].layers, t.rows[i].params);
    }
    tally_free(&t);
    qd_params_close(&p);
    return st;
}

static cJSON *new_component(cJSON *list, const char *name, const char *library, const char *cls, const char *path) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "name", name);
    if (library) cJSON_AddStringToObject(c, "library", library); else cJSON_AddNullToObject(c, "library");
    if (cls) cJSON_AddStringToObject(c, "class", cls); else cJSON_AddNullToObject(c, "class");
    cJSON_AddStringToObject(c, "path", path);
    cJSON_AddItemToArray(list, c);
    return c;
}

static qd_status inspect(qd_ctx *ctx, const char *dir, cJSON *root, tally *total) {
    char index_path[4096], sub[4096];
    if (!qd_dir_exists(dir)) return qd_fail(ctx, QD_ERR_IO, "%s: not a folder", dir);
    cJSON_AddStringToObject(root, "path", dir);
    cJSON *list = cJSON_AddArrayToObject(root, "components");
    if (!list) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_path_join(index_path, sizeof index_path, dir, "model_index.json");
    if (qd_file_exists(index_path)) {
        cJSON *index;
        QD_TRY(qd_json_load(ctx, index_path, &index));
        const char *pc = qd_json_str(index, "_class_name", NULL);
        if (pc) cJSON_AddStringToObject(root, "pipeline", pc); else cJSON_AddNullToObject(root, "pipeline");
        qd_status st = QD_OK;
        for (const cJSON *e = index->child; e && st == QD_OK; e = e->next) {
            if (!e->string || e->string[0] == '_' || !cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2) continue;
            const cJSON *lib = cJSON_GetArrayItem(e, 0), *cls = cJSON_GetArrayItem(e, 1);
            if (!cJSON_IsString(cls)) continue;   /* [null, null]: an absent optional component */
            if (strchr(e->string, '/') || !strcmp(e->string, "..") || !strcmp(e->string, "."))
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: bad component name '%s'", index_path, e->string);
            if (st != QD_OK) break;
            qd_path_join(sub, sizeof sub, dir, e->string);
            cJSON *c = new_component(list, e->string, cJSON_IsString(lib) ? lib->valuestring : NULL, cls->valuestring, sub);
            st = component(ctx, sub, e->string, c, total);
        }
        cJSON_Delete(index);
        return st;
    }
    cJSON_AddNullToObject(root, "pipeline");
    char cfg_path[4096];
    qd_path_join(cfg_path, sizeof cfg_path, dir, "config.json");
    if (!qd_file_exists(cfg_path))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: neither model_index.json (a diffusers folder) nor config.json "
                       "(a component folder)", dir);
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, cfg_path, &cfg));
    const char *cls = qd_json_str(cfg, "_class_name", NULL), *library = cls ? "diffusers" : NULL;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    if (!cls && cJSON_IsArray(arch) && cJSON_IsString(arch->child)) { cls = arch->child->valuestring; library = "transformers"; }
    /* the folder's own name, trailing slashes ignored */
    char name[256];
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(name, sizeof name, "%.*s", (int)(n - b), dir + b);
    cJSON *c = new_component(list, name, library, cls, dir);
    qd_status st = component(ctx, dir, name, c, total);
    cJSON_Delete(cfg);
    return st;
}

qd_status qd_inspect(qd_ctx *ctx, const char *dir, char **json_out) {
    if (!ctx || !dir || !json_out) return ctx ? qd_fail(ctx, QD_ERR_ARG, "qd_inspect: NULL argument") : QD_ERR_ARG;
    *json_out = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    tally total;
    memset(&total, 0, sizeof total);
    qd_status st = inspect(ctx, dir, root, &total);
    if (st == QD_OK) {
        cJSON *t = cJSON_AddObjectToObject(root, "totals");
        add_sizes_json(t, &total);
        add_layers_json(t, &total);
        add_types_json(t, &total);
        *json_out = cJSON_Print(root);
        if (!*json_out) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    tally_free(&total);
    cJSON_Delete(root);
    return st;
}
