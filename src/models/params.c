#include "models/params.h"
#include "io/file.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_weight.h"
#include "quant/comfy_quant.h"
#include "convert/single_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const weight_candidates[] = {
    "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors.index.json", "model.fp16.safetensors",
};

int qd_params_weights_path(const char *dir, char *path, size_t size) {
    for (size_t i = 0; i < sizeof weight_candidates / sizeof *weight_candidates; i++) {
        qd_path_join(path, size, dir, weight_candidates[i]);
        if (qd_file_exists(path)) return 1;
    }
    return 0;
}

qd_status qd_params_open(qd_ctx *ctx, const char *dir, const char *name, qd_params *p) {
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    char path[4096];
    if (ctx->weights_from) {
        /* a component of the single-file checkpoint being opened: its converted view */
        const qd_single_file *sf = ctx->weights_from;
        for (int i = 0; i < qd_sf_n_components(sf); i++) {
            const qd_sf_component *c = qd_sf_component_at(sf, i);
            qd_path_join(path, sizeof path, qd_sf_config_from(sf), c->name);
            if (strcmp(path, dir)) continue;
            p->st = c->view;
            p->borrowed = 1;
            snprintf(p->dir, sizeof p->dir, "%s (%s)", qd_sf_path(sf), c->name);
            return QD_OK;
        }
    }
    if (qd_params_weights_path(dir, path, sizeof path)) {
        QD_TRY(qd_st_open(ctx, path, &p->st));
        qd_status st = qd_sdnq_config_load_dir(ctx, dir, &p->sdnq);
        if (st == QD_OK && qd_cq_detect(&p->st)) {
            /* ComfyUI comfy_quant layers: validated now, decoded tile by tile later */
            p->cq = calloc(1, sizeof *p->cq);
            st = p->cq ? qd_cq_open(ctx, &p->st, path, p->cq) : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
            if (st != QD_OK) { free(p->cq); p->cq = NULL; }
        }
        if (st != QD_OK) { qd_sdnq_config_free(p->sdnq); p->sdnq = NULL; qd_st_close(&p->st); }
        return st;
    }
    return qd_fail(ctx, QD_ERR_IO, "%s: no weights file (expected %s or %s)", dir, weight_candidates[1], weight_candidates[3]);
}

void qd_params_close(qd_params *p) {
    for (int i = 0; i < p->n_owned; i++) free(p->owned[i]);
    free(p->owned);
    for (int i = 0; i < p->n_weights; i++) free(p->weights[i].name);
    free(p->weights);
    qd_sdnq_config_free(p->sdnq);
    if (p->cq) { qd_cq_close(p->cq); free(p->cq); }
    if (!p->borrowed) qd_st_close(&p->st);
    memset(p, 0, sizeof *p);
}

/* Keep a malloc'd block until qd_params_close; if that fails the block is freed at once. */
static int keep(qd_params *p, void *block) {
    if (p->n_owned == p->cap_owned) {
        int cap = p->cap_owned ? 2 * p->cap_owned : 64;
        void **o = realloc(p->owned, sizeof(void *) * (size_t)cap);
        if (!o) { free(block); return 0; }
        p->owned = o;
        p->cap_owned = cap;
    }
    p->owned[p->n_owned++] = block;
    return 1;
}

static float *own(qd_params *p, int64_t n) {
    float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
    return f && keep(p, f) ? f : NULL;
}

/* An SDNQ layer "<prefix>.*" (it has "<prefix>.scale") as a quantized weight of the given logical shape. */
static qd_status sdnq_weight(qd_params *p, const char *prefix, qd_sdnq_class cls, int ndim, const int64_t *shape,
                             qd_weight *w) {
    if (!p->sdnq)
        return qd_fail(p->ctx, QD_ERR_FORMAT, "%s: layer '%s' has SDNQ tensors ('%s.scale') but the folder has no SDNQ "
                       "quantization_config (quantization_config.json or config.json)", p->dir, prefix, prefix);
    void *state;
    qd_status st = qd_sdnq_weight_open(p->ctx, p->sdnq, &p->st, prefix, prefix, cls, ndim, shape, w, &state);
    if (st != QD_OK) return qd_fail_prefix(p->ctx, st, "%s", p->dir);
    if (!keep(p, state)) return qd_fail(p->ctx, QD_ERR_NOMEM, "out of memory");
    return QD_OK;
}

static int has_scale(qd_params *p, const char *prefix, const qd_st_tensor **scale) {
    char name[600];
    snprintf(name, sizeof name, "%s.scale", prefix);
    *scale = qd_st_find(&p->st, name);
    return *scale != NULL;
}

/* The comfy_quant layer named prefix, checked against [out, in]; NULL when there is none. */
static qd_status cq_layer(qd_params *p, const char *prefix, int64_t out_f, int64_t in_f, const qd_cq_layer **l) {
    *l = p->cq ? qd_cq_find(p->cq, prefix) : NULL;
    if (*l && ((*l)->rows != out_f || (*l)->cols != in_f))
        return qd_fail(p->ctx, QD_ERR_FORMAT, "%s: comfy_quant layer '%s' is [%lld, %lld], expected [%lld, %lld]", p->cq->path,
                       prefix, (long long)(*l)->rows, (long long)(*l)->cols, (long long)out_f, (long long)in_f);
    return QD_OK;
}

static qd_status get(qd_params *p, const char *name, int ndim, const int64_t *shape, const qd_st_tensor **t) {
    if (p->cq && qd_cq_find(p->cq, name))   /* codes without their scales would be garbage */
        return qd_fail(p->ctx, QD_ERR_UNSUPPORTED, "%s: '%s' is comfy_quant-quantized, but %s reads it as a plain tensor",
                       p->cq->path, name, p->name);
    qd_status st = qd_st_get(p->ctx, &p->st, name, ndim, shape, t);
    if (st != QD_OK) return qd_fail_prefix(p->ctx, st, "%s", p->name);
    return QD_OK;
}

static qd_status copy(qd_params *p, const char *name, int ndim, const int64_t *shape, float **out) {
    const qd_st_tensor *t;
    QD_TRY(get(p, name, ndim, shape, &t));
    float *f = own(p, t->numel);
    if (!f) return qd_fail(p->ctx, QD_ERR_NOMEM, "out of memory");
    qd_st_to_f32(t, 0, t->numel, f);
    *out = f;
    return QD_OK;
}

/* Note a loaded matrix under "<prefix>.weight" (the model keeps w where it is). */
static qd_status note_weight(qd_params *p, const char *prefix, qd_weight *w) {
    w->lora = NULL;
    if (p->n_weights == p->cap_weights) {
        int cap = p->cap_weights ? 2 * p->cap_weights : 128;
        struct qd_params_weight *g = realloc(p->weights, sizeof *g * (size_t)cap);
        if (!g) return qd_fail(p->ctx, QD_ERR_NOMEM, "out of memory");
        p->weights = g;
        p->cap_weights = cap;
    }
    size_t n = strlen(prefix);
    char *name = malloc(n + 8);
    if (!name) return qd_fail(p->ctx, QD_ERR_NOMEM, "out of memory");
    memcpy(name, prefix, n);
    memcpy(name + n, ".weight", 8);
    p->weights[p->n_weights].name = name;
    p->weights[p->n_weights++].w = w;
    return QD_OK;
}

void qd_params_rebind(qd_params *p, const qd_weight *from, qd_weight *to) {
    for (int i = p->n_weights - 1; i >= 0; i--)
        if (p->weights[i].w == from) { p->weights[i].w = to; return; }
}

#define FORMAT_PREFIX(buf, fmt) \
    char buf[512]; do { va_list ap; va_start(ap, fmt); vsnprintf(buf, sizeof buf, fmt, ap); va_end(ap); } while (0)

qd_status qd_p_linear(qd_params *p, qd_linear_p *out, int64_t out_f, int64_t in_f, int bias, const char *fmt, ...) {
    FORMAT_PREFIX(prefix, fmt);
    char name[600];
    int64_t s2[2] = {out_f, in_f}, s4[4] = {out_f, in_f, 1, 1};
    const qd_st_tensor *t;
    const qd_cq_layer *cl;
    QD_TRY(cq_layer(p, prefix, out_f, in_f, &cl));
    if (cl) {
        qd_cq_weight(cl, &out->w);
    } else if (has_scale(p, prefix, &t)) {
        /* a quantized 1x1 Conv keeps its kernel dims in the scale ([out, G, 1, 1, 1] / [out, 1, 1, 1]) */
        int conv = p->sdnq && p->sdnq->quant_conv && t->ndim >= 4;
        QD_TRY(sdnq_weight(p, prefix, conv ? QD_SDNQ_CONV : QD_SDNQ_LINEAR, conv ? 4 : 2, conv ? s4 : s2, &out->w));
    } else {
        snprintf(name, sizeof name, "%s.weight", prefix);
        t = qd_st_find(&p->st, name);
        /* a 1x1 conv stored as [out, in, 1, 1] is the same matrix */
        QD_TRY(get(p, name, t && t->ndim == 4 ? 4 : 2, t && t->ndim == 4 ? s4 : s2, &t));
        qd_weight_dense(&out->w, t, out_f, in_f);
    }
    QD_TRY(note_weight(p, prefix, &out->w));
    out->b = NULL;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        QD_TRY(copy(p, name, 1, &out_f, &out->b));
    }
    return QD_OK;
}

qd_status qd_p_conv(qd_params *p, qd_conv_p *out, int64_t cout, int64_t cin, int k, int bias, const char *fmt, ...) {
    FORMAT_PREFIX(prefix, fmt);
    char name[600];
    int64_t s4[4] = {cout, cin, k, k};
    const qd_st_tensor *t;
    if (has_scale(p, prefix, &t)) {
        QD_TRY(sdnq_weight(p, prefix, QD_SDNQ_CONV, 4, s4, &out->w));
    } else {
        snprintf(name, sizeof name, "%s.weight", prefix);
        QD_TRY(get(p, name, 4, s4, &t));
        qd_weight_dense(&out->w, t, cout, cin * k * k);
    }
    QD_TRY(note_weight(p, prefix, &out->w));
    out->k = k;
    out->cin = cin;
    out->cout = cout;
    out->b = NULL;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        QD_TRY(copy(p, name, 1, &cout, &out->b));
    }
    return QD_OK;
}

qd_status qd_p_embedding(qd_params *p, qd_weight *out, int64_t n, int64_t dim, const char *fmt, ...) {
    FORMAT_PREFIX(prefix, fmt);
    int64_t s2[2] = {n, dim};
    const qd_st_tensor *t;
    const qd_cq_layer *cl;
    QD_TRY(cq_layer(p, prefix, n, dim, &cl));
    if (cl) { qd_cq_weight(cl, out); return QD_OK; }
    if (has_scale(p, prefix, &t)) return sdnq_weight(p, prefix, QD_SDNQ_EMBEDDING, 2, s2, out);
    char name[600];
    snprintf(name, sizeof name, "%s.weight", prefix);
    QD_TRY(get(p, name, 2, s2, &t));
    qd_weight_dense(out, t, n, dim);
    return QD_OK;
}

qd_status qd_p_norm(qd_params *p, qd_norm_p *out, int64_t n, int bias, const char *fmt, ...) {
    FORMAT_PREFIX(prefix, fmt);
    char name[600];
    out->n = n;
    out->b = NULL;
    snprintf(name, sizeof name, "%s.weight", prefix);
    QD_TRY(copy(p, name, 1, &n, &out->w));
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        QD_TRY(copy(p, name, 1, &n, &out->b));
    }
    return QD_OK;
}

qd_status qd_p_floats(qd_params *p, float **out, int ndim, const int64_t *shape, const char *fmt, ...) {
    FORMAT_PREFIX(name, fmt);
    return copy(p, name, ndim, shape, out);
}

qd_status qd_p_tensor(qd_params *p, const qd_st_tensor **out, int ndim, const int64_t *shape, const char *fmt, ...) {
    FORMAT_PREFIX(name, fmt);
    return get(p, name, ndim, shape, out);
}

int qd_p_has(qd_params *p, const char *fmt, ...) {
    FORMAT_PREFIX(name, fmt);
    return qd_st_find(&p->st, name) != NULL;
}
