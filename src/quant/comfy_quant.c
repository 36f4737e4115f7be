/* comfy_quant reader: config parsing, validation against the file, and decode (spec
 * comfy-quant.md §1.3-§1.7). Decode order per element: code -> value, times its scale
 * (per tensor / row / tile / row-group, or the swizzled nvfp4/mxfp8 block scale), then
 * the ConvRot Hadamard per K-group, then pre_quant_scale per column. */
#include "quant/comfy_quant.h"
#include "quant/hadamard.h"
#include "io/safetensors_meta.h"
#include "base/half.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONFIG_BYTES 65536
#define MAX_CONVROT 4096            /* largest ConvRot group decoded on the stack */
#define DIFFUSION_PREFIX "model.diffusion_model."

static const float e2m1_lut[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                                   -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

static const struct { const char *name; qd_cq_format fmt; } formats[] = {
    {"float8_e4m3fn", QD_CQ_FLOAT8_E4M3FN},
    {"float8_e5m2", QD_CQ_FLOAT8_E5M2},
    {"float8_e4m3fn_rowwise", QD_CQ_FLOAT8_E4M3FN_ROWWISE},
    {"float8_e4m3fn_blockwise", QD_CQ_FLOAT8_E4M3FN_BLOCKWISE},
    {"int8_tensorwise", QD_CQ_INT8_TENSORWISE},
    {"int8_blockwise", QD_CQ_INT8_BLOCKWISE},
    {"int8_axiswise", QD_CQ_INT8_AXISWISE},
    {"nvfp4", QD_CQ_NVFP4},
    {"mxfp8", QD_CQ_MXFP8},
    {"hybrid_mxfp8", QD_CQ_MXFP8},  /* mxfp8 plus a .weight_scalar fallback scale we do not need */
};
#define SUPPORTED_LIST "float8_e4m3fn, float8_e5m2, float8_e4m3fn_rowwise, float8_e4m3fn_blockwise, " \
                       "int8_tensorwise (+convrot), int8_blockwise, int8_axiswise, nvfp4, mxfp8, hybrid_mxfp8"

int qd_cq_detect(const qd_st_set *st) {
    static const char suffix[] = ".comfy_quant";
    if (qd_st_find(st, "scaled_fp8")) return 1;   /* the legacy marker (§1.2) */
    size_t sl = sizeof suffix - 1;
    for (int64_t i = 0; i < st->n_tensors; i++) {
        size_t n = strlen(st->tensors[i].name);
        if (n > sl && strcmp(st->tensors[i].name + n - sl, suffix) == 0) return 1;
    }
    return 0;
}

/* ---- decode ---- */

/* An nvfp4 code's value: element 2j is the high nibble of byte j. */
static float code_value(const qd_cq_layer *l, int64_t r, int64_t c) {
    const uint8_t *q = (const uint8_t *)l->weight->data + r * l->ld;
    return e2m1_lut[(c & 1) ? (q[c >> 1] & 15) : (q[c >> 1] >> 4)];
}

/* Byte offset of logical block-scale (r, c) in the cuBLAS 128x4 tiled layout (§1.5.2). */
static inline int64_t swizzled(int64_t r, int64_t c, int64_t cols_padded) {
    return ((r >> 7) * (cols_padded >> 2) + (c >> 2)) * 512 + (r & 31) * 16 + ((r >> 5) & 3) * 4 + (c & 3);
}

static float scale_at(const qd_cq_layer *l, int64_t r, int64_t c) {
    switch (l->scaling) {
    case QD_CQ_SCALE_TENSOR: return l->scale[0];
    case QD_CQ_SCALE_ROW: return l->scale[r];
    case QD_CQ_SCALE_TILE: return l->scale[(r / l->block) * l->scale_cols + c / l->block];
    case QD_CQ_SCALE_ROWGROUP: return l->scale[r * l->scale_cols + c / l->block];
    case QD_CQ_SCALE_SWIZZLED: break;
    }
    uint8_t b = l->block_scale[swizzled(r, c / l->block, l->block_scale_cols)];
    if (l->format == QD_CQ_NVFP4) return l->global_scale * qd_f8e4m3_to_f32(b);
    return b ? ldexpf(1.0f, (int)b - 127) : 0.0f;   /* E8M0; e = 0 stands for a zero block */
}

/* dst[0..n) = value of codes k0.. of row r times s: one loop per storage kind. */
static void decode_run(const qd_cq_layer *l, int64_t r, int64_t k0, int64_t n, float s, float *dst) {
    const uint8_t *q = (const uint8_t *)l->weight->data + r * l->ld;
    switch (l->format) {
    case QD_CQ_INT8_TENSORWISE: case QD_CQ_INT8_BLOCKWISE: case QD_CQ_INT8_AXISWISE:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int8_t)q[k0 + i] * s;
        break;
    case QD_CQ_NVFP4:
        for (int64_t i = 0; i < n; i++) dst[i] = code_value(l, r, k0 + i) * s;
        break;
    default:   /* fp8 codes through the layer's table */
        for (int64_t i = 0; i < n; i++) dst[i] = l->lut[q[k0 + i]] * s;
        break;
    }
}

/* Codes times scales, no rotation: what was quantized. Runs of columns share one scale. */
static void decode_base(const qd_cq_layer *l, int64_t r, int64_t k0, int64_t nk, float *dst) {
    if (l->scaling == QD_CQ_SCALE_TENSOR || l->scaling == QD_CQ_SCALE_ROW) {
        decode_run(l, r, k0, nk, l->scale[l->scaling == QD_CQ_SCALE_ROW ? r : 0], dst);
        return;
    }
    for (int64_t i = 0; i < nk;) {
        int64_t c = k0 + i, end = (c / l->block + 1) * l->block - k0;
        if (end > nk) end = nk;
        decode_run(l, r, c, end - i, scale_at(l, r, c), dst + i);
        i = end;
    }
}

void qd_cq_decode(const qd_cq_layer *l, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    for (int64_t r = 0; r < nr; r++) {
        float *row = dst + r * ld;
        if (!l->convrot) {
            decode_base(l, r0 + r, k0, nk, row);
        } else {
            /* H mixes a whole group: decode the groups covering the range, rotate, copy out */
            int64_t g = l->convrot_group;
            float buf[MAX_CONVROT];
            for (int64_t b = k0 / g * g; b < k0 + nk; b += g) {
                decode_base(l, r0 + r, b, g, buf);
                qd_hadamard(buf, g);
                int64_t lo = b > k0 ? b : k0, hi = b + g < k0 + nk ? b + g : k0 + nk;
                memcpy(row + (lo - k0), buf + (lo - b), sizeof(float) * (size_t)(hi - lo));
            }
        }
        if (l->pre_quant_scale)
            for (int64_t i = 0; i < nk; i++) row[i] *= l->pre_quant_scale[k0 + i];
    }
}

static void weight_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    qd_cq_decode(w->quant, r0, nr, k0, nk, dst, ld);
}

void qd_cq_weight(const qd_cq_layer *l, qd_weight *w) {
    w->rows = l->rows;
    w->cols = l->cols;
    w->t = l->weight;
    w->decode = weight_decode;
    w->quant = l;
    w->linear = NULL;
    w->decode_lowp = NULL;
    w->decode_kmajor = NULL;
    w->decode_base = NULL;
    w->view_base = NULL;
    w->decode_bf16 = w->decode_base_bf16 = NULL;
}

qd_status qd_cq_dequantize(qd_ctx *ctx, const qd_cq_layer *l, float **out) {
    *out = qd_malloc(ctx, sizeof(float) * (size_t)(l->rows * l->cols > 0 ? l->rows * l->cols : 1));
    if (!*out) return QD_ERR_NOMEM;
    qd_cq_decode(l, 0, l->rows, 0, l->cols, *out, l->cols);
    return QD_OK;
}

const qd_cq_layer *qd_cq_find(const qd_cq_model *m, const char *name) {
    size_t n = strlen(name);
    char key[1024];
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0 && n - 7 < sizeof key) {
        memcpy(key, name, n - 7);
        key[n - 7] = 0;
        name = key;
    }
    int lo = 0, hi = m->n_layers - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(name, m->layers[mid].name);
        if (c == 0) return &m->layers[mid];
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

/* ---- open: validation ---- */

static const qd_st_tensor *find_sub(const qd_st_set *st, const char *layer, const char *suffix) {
    char key[1280];
    if (snprintf(key, sizeof key, "%s%s", layer, suffix) >= (int)sizeof key) return NULL;
    return qd_st_find(st, key);
}

static int is_float_dtype(qd_dtype d) {
    return d == QD_F32 || d == QD_F16 || d == QD_BF16 || d == QD_F64;
}

static int64_t roundup(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* A config field, or its legacy place under "params" (§1.3). */
static const cJSON *field(const cJSON *conf, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(conf, key);
    if (v && !cJSON_IsNull(v)) return v;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(conf, "params");
    v = cJSON_IsObject(p) ? cJSON_GetObjectItemCaseSensitive(p, key) : NULL;
    return v && !cJSON_IsNull(v) ? v : NULL;
}

#define LFAIL(code, ...) layer_fail(ctx, code, path, l->name, __VA_ARGS__)
__attribute__((format(printf, 5, 6)))
static qd_status layer_fail(qd_ctx *ctx, qd_status code, const char *path, const char *layer, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qd_fail(ctx, code, "%s: comfy_quant layer '%s': %s", path, layer, msg);
}

static void shape_str(char *buf, size_t n, const qd_st_tensor *t) {
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && len < n; d++)
        len += (size_t)snprintf(buf + len, n - len, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    if (len < n) snprintf(buf + len, n - len, "]");
}

/* An integer field in [lo, hi]; *out = def when absent. -1 when present but not such an integer. */
static int int_field(const cJSON *conf, const char *key, int64_t lo, int64_t hi, int64_t def, int64_t *out) {
    const cJSON *v = field(conf, key);
    if (!v) { *out = def; return 0; }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int bool_field(const cJSON *conf, const char *key) {
    const cJSON *v = field(conf, key);
    return v && (cJSON_IsTrue(v) || (cJSON_IsNumber(v) && v->valuedouble != 0));
}

/* weight_scale of fp8/int8 layers: dtype float, granularity from the shape. */
static qd_status bind_plain_scale(qd_ctx *ctx, const char *path, qd_cq_layer *l, const qd_st_tensor *s,
                                  int64_t group_size) {
    int64_t N = l->rows, K = l->cols;
    char have[128];
    shape_str(have, sizeof have, s);
    if (!is_float_dtype(s->dtype))
        return LFAIL(QD_ERR_FORMAT, "weight_scale has dtype %s, expected F32 (or another float type)", qd_dtype_name(s->dtype));
    if (s->numel == 1) {
        l->scaling = QD_CQ_SCALE_TENSOR;
    } else if ((s->ndim == 1 && s->shape[0] == N) || (s->ndim == 2 && s->shape[0] == N && s->shape[1] == 1)) {
        l->scaling = QD_CQ_SCALE_ROW;
    } else if (s->ndim == 2 && s->shape[0] > 0 && s->shape[1] > 0 && N % s->shape[0] == 0 && K % s->shape[1] == 0 &&
               N / s->shape[0] == K / s->shape[1] && (group_size <= 0 || N / s->shape[0] == group_size)) {
        l->scaling = QD_CQ_SCALE_TILE;
        l->block = N / s->shape[0];
        l->scale_cols = s->shape[1];
    } else if (s->ndim == 3 && s->shape[0] == N && s->shape[2] == 1 && s->shape[1] > 0 && K % s->shape[1] == 0 &&
               (group_size <= 0 || K / s->shape[1] == group_size)) {
        l->scaling = QD_CQ_SCALE_ROWGROUP;
        l->block = K / s->shape[1];
        l->scale_cols = s->shape[1];
    } else {
        return LFAIL(QD_ERR_FORMAT,
                     "weight_scale has shape %s, which fits no granularity of a [%lld, %lld] weight "
                     "(scalar, [N], [N,1], [N/b,K/b] tiles or [N,K/b,1]%s)",
                     have, (long long)N, (long long)K, group_size > 0 ? " with the config's group_size" : "");
    }
    l->scale = qd_malloc(ctx, sizeof(float) * (size_t)s->numel);
    if (!l->scale) return QD_ERR_NOMEM;
    qd_st_to_f32(s, 0, s->numel, l->scale);
    for (int64_t i = 0; i < s->numel; i++)
        if (!isfinite(l->scale[i]))
            return LFAIL(QD_ERR_FORMAT, "weight_scale[%lld] is %g", (long long)i, (double)l->scale[i]);
    return QD_OK;
}

/* nvfp4 / mxfp8: padded storage, swizzled block scales; logical shape from orig_shape when it fits. */
static qd_status bind_block_format(qd_ctx *ctx, const char *path, qd_cq_layer *l, const cJSON *conf,
                                   const qd_st_set *st, const qd_st_tensor *w, const qd_st_tensor *s) {
    int nv = l->format == QD_CQ_NVFP4;
    int64_t blk = nv ? 16 : 32, pad = nv ? 16 : 32;
    char have[128], want[160];
    shape_str(have, sizeof have, w);
    if (w->dtype != (nv ? QD_U8 : QD_F8_E4M3) || w->ndim != 2)
        return LFAIL(QD_ERR_FORMAT, "weight is %s %s, expected a 2-D %s tensor", qd_dtype_name(w->dtype), have,
                     nv ? "U8 (packed E2M1 pairs)" : "F8_E4M3");
    int64_t Np = w->shape[0], Kp = nv ? w->shape[1] * 2 : w->shape[1];
    if (Np % pad || Kp % pad || Np == 0 || Kp == 0)
        return LFAIL(QD_ERR_FORMAT, "weight %s: %s storage is [roundup(N,%lld), roundup(K,%lld)%s] with N, K > 0",
                     have, l->format_name, (long long)pad, (long long)pad, nv ? "/2" : "");
    int64_t gs;
    if (int_field(conf, "group_size", 1, 1 << 20, blk, &gs) != 0 || gs != blk)
        return LFAIL(QD_ERR_FORMAT, "group_size must be %lld for %s", (long long)blk, l->format_name);
    l->rows = Np;
    l->cols = Kp;
    const cJSON *os = cJSON_GetObjectItemCaseSensitive(conf, "orig_shape");
    if (cJSON_IsArray(os) && cJSON_GetArraySize(os) == 2) {
        const cJSON *a = cJSON_GetArrayItem(os, 0), *b = cJSON_GetArrayItem(os, 1);
        if (cJSON_IsNumber(a) && cJSON_IsNumber(b) && a->valuedouble >= 1 && b->valuedouble >= 1 &&
            roundup((int64_t)a->valuedouble, pad) == Np && roundup((int64_t)b->valuedouble, pad) == Kp) {
            l->rows = (int64_t)a->valuedouble;
            l->cols = (int64_t)b->valuedouble;
        } else {
            return LFAIL(QD_ERR_FORMAT, "orig_shape does not fit the padded weight %s", have);
        }
    }
    l->ld = w->shape[1];
    l->scaling = QD_CQ_SCALE_SWIZZLED;
    l->block = blk;
    int64_t sc = Kp / blk, rows_p = roundup(Np, 128), cols_p = roundup(sc, 4);
    l->block_scale_cols = cols_p;
    snprintf(want, sizeof want, "[%lld, %lld]", (long long)rows_p, (long long)cols_p);
    shape_str(have, sizeof have, s);
    int dtype_ok = nv ? (s->dtype == QD_F8_E4M3 || s->dtype == QD_U8) : (s->dtype == QD_U8 || s->dtype == QD_F8_E8M0);
    if (!dtype_ok)
        return LFAIL(QD_ERR_FORMAT, "weight_scale has dtype %s, expected %s", qd_dtype_name(s->dtype),
                     nv ? "F8_E4M3 (or U8)" : "U8 or F8_E8M0");
    if (s->numel != rows_p * cols_p || !(s->ndim == 1 || (s->ndim == 2 && s->shape[0] == rows_p)))
        return LFAIL(QD_ERR_FORMAT, "weight_scale has shape %s, expected the swizzled block scales %s", have, want);
    l->block_scale = s->data;
    /* every scale the decode can reach must be a usable number */
    for (int64_t r = 0; r < Np; r++)
        for (int64_t c = 0; c < sc; c++) {
            uint8_t b = l->block_scale[swizzled(r, c, cols_p)];
            if (nv ? (b & 0x7f) == 0x7f || (b & 0x80) : b == 255)
                return LFAIL(QD_ERR_FORMAT, "block scale (%lld, %lld) is %s (byte 0x%02x)", (long long)r, (long long)c,
                             nv && (b & 0x7f) != 0x7f ? "negative" : "NaN", b);
        }
    if (nv) {
        const qd_st_tensor *s2 = find_sub(st, l->name, ".weight_scale_2");
        if (!s2) return LFAIL(QD_ERR_FORMAT, "nvfp4 needs '%s.weight_scale_2' (the per-tensor scale)", l->name);
        if (s2->numel != 1 || !is_float_dtype(s2->dtype))
            return LFAIL(QD_ERR_FORMAT, "weight_scale_2 must be one float, got %s with %lld elements",
                         qd_dtype_name(s2->dtype), (long long)s2->numel);
        qd_st_to_f32(s2, 0, 1, &l->global_scale);
        if (!isfinite(l->global_scale)) return LFAIL(QD_ERR_FORMAT, "weight_scale_2 is %g", (double)l->global_scale);
    }
    return QD_OK;
}

/* legacy: a pre-comfy_quant "scaled_fp8" layer, whose tensors are .scale_weight / .scale_input (§1.2) */
static qd_status bind_layer(qd_ctx *ctx, const char *path, const qd_st_set *st, qd_cq_layer *l, const cJSON *conf,
                            int legacy) {
    const cJSON *jf = cJSON_GetObjectItemCaseSensitive(conf, "format");
    if (!cJSON_IsString(jf)) return LFAIL(QD_ERR_FORMAT, "config has no \"format\" string");
    snprintf(l->format_name, sizeof l->format_name, "%s", jf->valuestring);
    size_t k = 0;
    while (k < sizeof formats / sizeof formats[0] && strcmp(formats[k].name, jf->valuestring) != 0) k++;
    if (k == sizeof formats / sizeof formats[0]) {
        int known = !strcmp(jf->valuestring, "convrot_w4a4") || !strcmp(jf->valuestring, "asym_w4a8_int8");
        return LFAIL(QD_ERR_UNSUPPORTED, "format '%s' is %s (qdiff reads " SUPPORTED_LIST ")", jf->valuestring,
                     known ? "not supported by qdiff yet" : "unknown");
    }
    l->format = formats[k].fmt;
    for (int c = 0; c < 256; c++)
        l->lut[c] = l->format == QD_CQ_FLOAT8_E5M2 ? qd_f8e5m2_to_f32((uint8_t)c) : qd_f8e4m3_to_f32((uint8_t)c);
    if (field(conf, "num_experts"))
        return LFAIL(QD_ERR_UNSUPPORTED, "MoE expert banks (num_experts) are not supported by qdiff yet");
    l->full_precision_mm = bool_field(conf, "full_precision_matrix_mult");

    const qd_st_tensor *w = find_sub(st, l->name, ".weight");
    const char *scale_key = legacy ? ".scale_weight" : ".weight_scale";
    const qd_st_tensor *s = find_sub(st, l->name, scale_key);
    if (!w) return LFAIL(QD_ERR_FORMAT, "'%s.weight' is missing", l->name);
    if (!s) return LFAIL(QD_ERR_FORMAT, "'%s%s' is missing", l->name, scale_key);
    l->weight = w;
    char have[128];
    shape_str(have, sizeof have, w);

    if (l->format == QD_CQ_NVFP4 || l->format == QD_CQ_MXFP8) {
        QD_TRY(bind_block_format(ctx, path, l, conf, st, w, s));
    } else {
        int is_int = l->format == QD_CQ_INT8_TENSORWISE || l->format == QD_CQ_INT8_BLOCKWISE ||
                     l->format == QD_CQ_INT8_AXISWISE;
        qd_dtype want = is_int ? QD_I8 : l->format == QD_CQ_FLOAT8_E5M2 ? QD_F8_E5M2 : QD_F8_E4M3;
        if (w->dtype != want || w->ndim != 2)
            return LFAIL(QD_ERR_FORMAT, "weight is %s %s, expected a 2-D %s tensor for %s", qd_dtype_name(w->dtype),
                         have, qd_dtype_name(want), l->format_name);
        l->rows = w->shape[0];
        l->cols = w->shape[1];
        l->ld = w->shape[1];
        int64_t gs;
        if (int_field(conf, "group_size", 1, 1 << 20, 0, &gs) != 0)
            return LFAIL(QD_ERR_FORMAT, "group_size is not a positive integer");
        QD_TRY(bind_plain_scale(ctx, path, l, s, gs));
        if (l->format == QD_CQ_FLOAT8_E4M3FN_ROWWISE && l->scaling != QD_CQ_SCALE_ROW && l->scaling != QD_CQ_SCALE_TENSOR)
            return LFAIL(QD_ERR_FORMAT, "float8_e4m3fn_rowwise needs a [N] weight_scale");
    }

    if (bool_field(conf, "convrot")) {
        if (l->format != QD_CQ_INT8_TENSORWISE)
            return LFAIL(QD_ERR_UNSUPPORTED, "convrot is only defined for int8_tensorwise, not %s", l->format_name);
        int64_t g;
        if (int_field(conf, "convrot_groupsize", 4, 1 << 30, 256, &g) != 0)
            return LFAIL(QD_ERR_FORMAT, "convrot_groupsize is not a positive integer");
        int64_t p = 1;
        while (p < g) p *= 4;
        if (p != g)
            return LFAIL(QD_ERR_UNSUPPORTED, "convrot_groupsize %lld is not a power of 4 (ComfyUI rejects it too)", (long long)g);
        if (g > MAX_CONVROT)
            return LFAIL(QD_ERR_UNSUPPORTED, "convrot_groupsize %lld is larger than %d", (long long)g, MAX_CONVROT);
        if (l->cols % g)
            return LFAIL(QD_ERR_FORMAT, "convrot_groupsize %lld does not divide the %lld input features", (long long)g,
                         (long long)l->cols);
        l->convrot = 1;
        l->convrot_group = g;
    }

    const qd_st_tensor *is = find_sub(st, l->name, legacy ? ".scale_input" : ".input_scale");
    if (is) {
        if (is->numel != 1 || !is_float_dtype(is->dtype))
            return LFAIL(QD_ERR_FORMAT, "input_scale must be one float, got %s with %lld elements",
                         qd_dtype_name(is->dtype), (long long)is->numel);
        qd_st_to_f32(is, 0, 1, &l->input_scale);
        l->has_input_scale = !(legacy && l->input_scale == 1.0f);   /* ComfyUI drops a legacy 1.0 */
    }
    const qd_st_tensor *pq = find_sub(st, l->name, ".pre_quant_scale");
    if (pq) {
        if (pq->numel != l->cols || !is_float_dtype(pq->dtype))
            return LFAIL(QD_ERR_FORMAT, "pre_quant_scale must hold %lld floats (one per input), got %s with %lld",
                         (long long)l->cols, qd_dtype_name(pq->dtype), (long long)pq->numel);
        if (!(l->pre_quant_scale = qd_malloc(ctx, sizeof(float) * (size_t)l->cols))) return QD_ERR_NOMEM;
        qd_st_to_f32(pq, 0, l->cols, l->pre_quant_scale);
    }
    return QD_OK;
}

/* ---- open: collecting the configs ---- */

typedef struct { char *name; cJSON *conf; int legacy; } pending;

static int cmp_pending(const void *a, const void *b) {
    return strcmp(((const pending *)a)->name, ((const pending *)b)->name);
}

static qd_status parse_config_tensor(qd_ctx *ctx, const char *path, const qd_st_tensor *t, const char *layer, cJSON **out) {
    if (t->dtype != QD_U8 || t->ndim != 1 || t->numel > MAX_CONFIG_BYTES)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: comfy_quant layer '%s': '%s' must be a 1-D U8 tensor of JSON bytes "
                       "(at most %d), got %s with %lld elements", path, layer, t->name, MAX_CONFIG_BYTES,
                       qd_dtype_name(t->dtype), (long long)t->numel);
    cJSON *c = cJSON_ParseWithLength(t->data, (size_t)t->numel);
    if (!cJSON_IsObject(c)) {
        cJSON_Delete(c);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: comfy_quant layer '%s': '%s' is not a JSON object", path, layer, t->name);
    }
    *out = c;
    return QD_OK;
}

/* __metadata__["_quantization_metadata"] layers override the tensors (§1.4). Layer keys
 * are the names after ComfyUI strips "model.diffusion_model.": bind them to whichever
 * spelling the file has. */
static qd_status metadata_configs(qd_ctx *ctx, const char *path, const qd_st_set *st, pending **list, int *n, int *cap) {
    cJSON *meta = NULL;
    QD_TRY(qd_st_read_metadata(ctx, path, &meta));
    const cJSON *qm = meta ? cJSON_GetObjectItemCaseSensitive(meta, "_quantization_metadata") : NULL;
    if (!qm) { cJSON_Delete(meta); return QD_OK; }
    qd_status status = QD_OK;
    cJSON *root = cJSON_IsString(qm) ? cJSON_Parse(qm->valuestring) : NULL;
    const cJSON *layers = root ? cJSON_GetObjectItemCaseSensitive(root, "layers") : NULL;
    if (!cJSON_IsObject(layers)) {
        status = qd_fail(ctx, QD_ERR_FORMAT, "%s: __metadata__._quantization_metadata is not a JSON string holding "
                         "{\"layers\": {...}}", path);
        goto done;
    }
    for (const cJSON *it = layers->child; it; it = it->next) {
        if (!cJSON_IsObject(it)) {
            status = qd_fail(ctx, QD_ERR_FORMAT, "%s: _quantization_metadata layer '%s' is not an object", path, it->string);
            goto done;
        }
        char name[1024];
        snprintf(name, sizeof name, "%s", it->string);
        if (!find_sub(st, name, ".weight")) {
            char alt[1024];
            if (snprintf(alt, sizeof alt, DIFFUSION_PREFIX "%s", it->string) < (int)sizeof alt && find_sub(st, alt, ".weight"))
                snprintf(name, sizeof name, "%s", alt);
            else {
                qd_warn(ctx, "%s: _quantization_metadata names layer '%s', which has no weight in the file", path, it->string);
                continue;
            }
        }
        int j = 0;
        while (j < *n && strcmp((*list)[j].name, name) != 0) j++;
        if (j == *n) {
            if (*n == *cap) {
                int nc = *cap ? *cap * 2 : 64;
                pending *g = realloc(*list, sizeof *g * (size_t)nc);
                if (!g) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); goto done; }
                *list = g;
                *cap = nc;
            }
            (*list)[j].name = strdup(name);
            (*list)[j].conf = NULL;
            (*list)[j].legacy = 0;
            if (!(*list)[j].name) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); goto done; }
            (*n)++;
        }
        cJSON_Delete((*list)[j].conf);
        (*list)[j].legacy = 0;   /* the header's config names the modern tensors */
        (*list)[j].conf = cJSON_Duplicate(it, 1);
        if (!(*list)[j].conf) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); goto done; }
    }
done:
    cJSON_Delete(root);
    cJSON_Delete(meta);
    return status;
}

/* Legacy "scaled_fp8" files (§1.2, ComfyUI's convert_old_quants): with the top-level marker,
 * every fp8 "X.weight" with "X.scale_weight" is a float8 layer; a 2-element marker adds
 * full_precision_matrix_mult. Scales on high-precision weights are dummies and ignored. */
static qd_status legacy_configs(qd_ctx *ctx, const qd_st_set *st, pending **list, int *n, int *cap) {
    const qd_st_tensor *marker = qd_st_find(st, "scaled_fp8");
    if (!marker) return QD_OK;
    static const char suffix[] = ".scale_weight";
    size_t sl = sizeof suffix - 1;
    for (int64_t i = 0; i < st->n_tensors; i++) {
        const char *nm = st->tensors[i].name;
        size_t len = strlen(nm);
        if (len <= sl || strcmp(nm + len - sl, suffix) != 0) continue;
        char layer[1024];
        if (len - sl >= sizeof layer) continue;
        memcpy(layer, nm, len - sl);
        layer[len - sl] = 0;
        const qd_st_tensor *w = find_sub(st, layer, ".weight");
        if (!w || (w->dtype != QD_F8_E4M3 && w->dtype != QD_F8_E5M2)) continue;
        int j = 0;
        while (j < *n && strcmp((*list)[j].name, layer) != 0) j++;
        if (j < *n) continue;   /* a .comfy_quant config wins */
        if (*n == *cap) {
            int nc = *cap ? *cap * 2 : 64;
            pending *g = realloc(*list, sizeof *g * (size_t)nc);
            if (!g) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
            *list = g;
            *cap = nc;
        }
        pending *p = &(*list)[*n];
        p->legacy = 1;
        p->conf = cJSON_CreateObject();
        p->name = strdup(layer);
        if (!p->conf || !p->name) { cJSON_Delete(p->conf); free(p->name); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
        (*n)++;
        cJSON_AddStringToObject(p->conf, "format", w->dtype == QD_F8_E5M2 ? "float8_e5m2" : "float8_e4m3fn");
        if (marker->numel == 2) cJSON_AddTrueToObject(p->conf, "full_precision_matrix_mult");
    }
    return QD_OK;
}

qd_status qd_cq_open(qd_ctx *ctx, const qd_st_set *st, const char *path, qd_cq_model *out) {
    memset(out, 0, sizeof *out);
    static const char suffix[] = ".comfy_quant";
    size_t sl = sizeof suffix - 1;
    pending *list = NULL;
    int n = 0, cap = 0;
    qd_status status = QD_OK;
    for (int64_t i = 0; i < st->n_tensors && status == QD_OK; i++) {
        const qd_st_tensor *t = &st->tensors[i];
        size_t len = strlen(t->name);
        if (len <= sl || strcmp(t->name + len - sl, suffix) != 0) continue;
        if (n == cap) {
            int nc = cap ? cap * 2 : 64;
            pending *g = realloc(list, sizeof *g * (size_t)nc);
            if (!g) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
            list = g;
            cap = nc;
        }
        list[n].conf = NULL;
        list[n].legacy = 0;
        if (!(list[n].name = strndup(t->name, len - sl))) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        n++;
        status = parse_config_tensor(ctx, path, t, list[n - 1].name, &list[n - 1].conf);
    }
    if (status == QD_OK) status = legacy_configs(ctx, st, &list, &n, &cap);
    /* a header override exists only in single files (ComfyUI loads no shards) */
    size_t pl = strlen(path);
    int is_index = pl > 5 && strcmp(path + pl - 5, ".json") == 0;
    if (status == QD_OK && st->n_files == 1 && !is_index) status = metadata_configs(ctx, path, st, &list, &n, &cap);
    if (status == QD_OK && n) {
        qsort(list, (size_t)n, sizeof *list, cmp_pending);
        out->layers = qd_calloc(ctx, (size_t)n, sizeof *out->layers);
        if (!out->layers) status = QD_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (status == QD_OK) {
            qd_cq_layer *l = &out->layers[out->n_layers++];
            l->name = list[i].name;
            list[i].name = NULL;
            status = bind_layer(ctx, path, st, l, list[i].conf, list[i].legacy);
        }
        free(list[i].name);
        cJSON_Delete(list[i].conf);
    }
    free(list);
    if (status == QD_OK && !(out->path = strdup(path))) status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (status != QD_OK) qd_cq_close(out);
    return status;
}

void qd_cq_close(qd_cq_model *m) {
    for (int i = 0; i < m->n_layers; i++) {
        free(m->layers[i].name);
        free(m->layers[i].scale);
        free(m->layers[i].pre_quant_scale);
    }
    free(m->layers);
    free(m->path);
    memset(m, 0, sizeof *m);
}
