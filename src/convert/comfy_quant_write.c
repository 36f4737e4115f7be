/* comfy_quant writer: plan every output tensor (names, dtypes, shapes, configs; the
 * report's skip reasons), then stream: convert one weight to fp32, merge LoRAs, quantize,
 * add to the streaming writer, free, release the input pages. Quantization math in
 * comfy_quant_write.h; layer routing spec §2.4. */
#include "convert/comfy_quant_write.h"
#include "quant/comfy_quant.h"
#include "quant/hadamard.h"
#include "io/safetensors.h"
#include "io/safetensors_meta.h"
#include "io/safetensors_stream.h"
#include "base/fp8.h"
#include "base/half.h"
#include "base/threads.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIFFUSION_PREFIX "model.diffusion_model."

/* ---- routing ---- */

/* Never quantized (spec §0.9, §2.4 shared AVOID list): norms, embeddings, heads. */
static const char *const default_skip[] = {"norm", "embed", "lm_head", "shared", NULL};

/* convert_to_quant's model filters (spec §2.4), substring tests on the key. */
static const struct { const char *name; const char *const subs[12]; } presets[] = {
    {"flux2", {"stream_modulation", "guidance_in", "time_in", "final_layer", "img_in", "txt_in"}},
    {"distillation_large", {"distilled_guidance_layer", "final_layer", "img_in", "txt_in"}},
    {"distillation_small", {"distilled_guidance_layer"}},
    {"nerf_large", {"img_in_patch", "nerf_final_layer_conv", "__x0__"}},
    {"nerf_small", {"img_in_patch", "nerf_final_layer_conv", "__x0__"}},
    {"radiance", {"img_in_patch", "nerf_final_layer_conv", "__x0__"}},
    {"hunyuan", {"layernorm", "_attn_q_norm", "_attn_k_norm", "norm1", "norm2", "vision_in.proj.0",
                 "vision_in.proj.4", "img_in.proj", "cond_type_embedding"}},
    {"qwen", {"norm_added_q", "norm_added_k", "norm_q", "norm_k", "txt_norm", "time_text_embed", "img_in", "norm_out",
              "proj_out", "transformer_blocks.0.img_mod.1", "txt_in"}},
    {"zimage", {"cap_embedder", "norm", "x_embedder", "final_layer", "adaLN_modulation", "t_embedder"}},
    {"zimage_refiner", {"context_refiner", "noise_refiner"}},
};
#define N_PRESETS ((int)(sizeof presets / sizeof presets[0]))

const char *qd_cqw_filter_names(void) {
    return "flux2, distillation_large, distillation_small, nerf_large, nerf_small, radiance, hunyuan, qwen, zimage, "
           "zimage_refiner";
}

int qd_cqw_type_from_name(const char *name, qd_cqw_type *out) {
    if (!strcmp(name, "int8_tensorwise")) *out = QD_CQW_INT8_TENSORWISE;
    else if (!strcmp(name, "float8_e4m3fn")) *out = QD_CQW_FLOAT8_E4M3FN;
    else if (!strcmp(name, "float8_e4m3fn_rowwise")) *out = QD_CQW_FLOAT8_E4M3FN_ROWWISE;
    else return -1;
    return 0;
}

typedef struct {
    int preset[N_PRESETS];
    regex_t *re;
    int n_re;
    int diffusion_only;     /* a full checkpoint: only model.diffusion_model.* is quantized (not VAE, text encoders) */
} router;

static void router_free(router *r) {
    for (int i = 0; i < r->n_re; i++) regfree(&r->re[i]);
    free(r->re);
    memset(r, 0, sizeof *r);
}

static qd_status router_init(qd_ctx *ctx, const qd_cqw_options *o, router *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < o->n_filters; i++) {
        int k = 0;
        while (k < N_PRESETS && strcmp(presets[k].name, o->filters[i]) != 0) k++;
        if (k == N_PRESETS)
            return qd_fail(ctx, QD_ERR_ARG, "unknown model filter '%s' (valid: %s)", o->filters[i], qd_cqw_filter_names());
        r->preset[k] = 1;
    }
    if (o->n_exclude > 0 && !(r->re = calloc((size_t)o->n_exclude, sizeof *r->re)))
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < o->n_exclude; i++) {
        int e = regcomp(&r->re[i], o->exclude[i], REG_EXTENDED | REG_NOSUB);
        if (e) {
            char msg[256];
            regerror(e, &r->re[i], msg, sizeof msg);
            router_free(r);
            return qd_fail(ctx, QD_ERR_ARG, "bad exclude pattern '%s': %s", o->exclude[i], msg);
        }
        r->n_re = i + 1;
    }
    return QD_OK;
}

static int is_weight_name(const char *name) {
    size_t n = strlen(name);
    return n > 7 && strcmp(name + n - 7, ".weight") == 0;
}

/* NULL when the tensor is quantized, else why not (into why[256]). */
static const char *skip_reason(const router *r, const qd_st_tensor *t, int is_float, char *why) {
    const char *name = t->name;
    size_t n = strlen(name);
    if (!is_weight_name(name)) return "not a weight";
    if (t->ndim != 2) return "not 2-D (conv or norm)";
    if (!is_float) return "not a float tensor";
    if (t->numel == 0) return "empty";
    if (r->diffusion_only && strncmp(name, DIFFUSION_PREFIX, strlen(DIFFUSION_PREFIX)) != 0)
        return "outside model.diffusion_model. (VAE or text encoder)";
    char base[1024];
    if (n - 7 >= sizeof base) return "name too long";
    memcpy(base, name, n - 7);
    base[n - 7] = 0;
    for (int i = 0; default_skip[i]; i++)
        if (strstr(base, default_skip[i])) { snprintf(why, 256, "name contains '%s'", default_skip[i]); return why; }
    for (int k = 0; k < N_PRESETS; k++)
        for (int j = 0; r->preset[k] && j < 12 && presets[k].subs[j]; j++)
            if (strstr(base, presets[k].subs[j])) {
                snprintf(why, 256, "filter %s: '%s'", presets[k].name, presets[k].subs[j]);
                return why;
            }
    for (int i = 0; i < r->n_re; i++)
        if (regexec(&r->re[i], base, 0, NULL, 0) == 0) { snprintf(why, 256, "exclude pattern #%d", i + 1); return why; }
    return NULL;
}

static cJSON *shape_json(const qd_st_tensor *t) {
    cJSON *a = cJSON_CreateArray();
    for (int d = 0; a && d < t->ndim; d++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)t->shape[d]));
    return a;
}

/* ---- quantization ---- */

typedef struct {
    qd_cqw_type type;
    const float *w;
    int64_t K;
    uint8_t *q;
    float *scale;       /* per row, or NULL with `inv`/`s` for the whole tensor */
    float inv, s;
} quant_job;

static float amax_of(const float *w, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) { float a = fabsf(w[i]); if (a > m || a != a) m = a; }
    return m;
}

static void quant_rows(void *arg, int64_t r0, int64_t r1, int thread) {
    const quant_job *j = arg;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = j->w + r * j->K;
        uint8_t *q = j->q + r * j->K;
        float inv = j->inv, s = j->s;
        if (j->scale) {   /* per-row scale */
            float amax = amax_of(w, j->K);
            if (j->type == QD_CQW_INT8_TENSORWISE) {
                s = fmaxf(amax / 127.0f, 1e-30f);
            } else {
                inv = amax > 0 ? 448.0f / amax : 1.0f;
                s = 1.0f / inv;
            }
            j->scale[r] = s;
        }
        if (j->type == QD_CQW_INT8_TENSORWISE) {
            for (int64_t k = 0; k < j->K; k++) {
                float v = rintf(w[k] / s);
                q[k] = (uint8_t)(int8_t)(v > 127.f ? 127.f : v < -127.f ? -127.f : v);
            }
        } else {
            for (int64_t k = 0; k < j->K; k++) {
                float v = w[k] * inv;
                q[k] = qd_f32_to_f8e4m3(v > 448.f ? 448.f : v < -448.f ? -448.f : v);
            }
        }
    }
}

typedef struct { float *w; int64_t K, g; } rot_job;
static void rotate_rows(void *arg, int64_t r0, int64_t r1, int thread) {
    const rot_job *j = arg;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t b = 0; b < j->K; b += j->g) qd_hadamard(j->w + r * j->K + b, j->g);
}

int64_t qd_cqw_quantize(qd_ctx *ctx, qd_cqw_type type, int convrot_group, float *w, int64_t N, int64_t K,
                        uint8_t *q, float *scale) {
    quant_job j = {type, w, K, q, NULL, 1.0f, 1.0f};
    int64_t n_scales = 1;
    if (convrot_group > 0) {
        rot_job rj = {w, K, convrot_group};
        qd_parallel_for(ctx, N, rotate_rows, &rj);
    }
    if (type == QD_CQW_FLOAT8_E4M3FN_ROWWISE || convrot_group > 0) {
        j.scale = scale;
        n_scales = N;
    } else {
        float amax = amax_of(w, N * K);
        if (type == QD_CQW_INT8_TENSORWISE) {
            j.s = fmaxf(amax / 127.0f, 1e-30f);
        } else {
            j.inv = amax > 0 ? 448.0f / amax : 1.0f;
            j.s = 1.0f / j.inv;
        }
        scale[0] = j.s;
    }
    qd_parallel_for(ctx, N, quant_rows, &j);
    return n_scales;
}

/* ---- planning ---- */

typedef enum { OUT_COPY, OUT_LORA_COPY, OUT_CONFIG, OUT_WEIGHT, OUT_SCALE, OUT_INPUT_SCALE } out_kind;

typedef struct {
    qd_st_out spec;
    out_kind kind;
    const qd_st_tensor *src;
    char *name;             /* owned spec name */
    char *config;           /* OUT_CONFIG: the JSON text */
    int convrot_group;      /* OUT_WEIGHT */
} planned;

static int is_float(qd_dtype d) { return d == QD_F32 || d == QD_F16 || d == QD_BF16 || d == QD_F64; }

/* Python json.dumps spelling: ", " and ": " separators. */
static char *config_json(const qd_cqw_options *o, int convrot_group) {
    char buf[256];
    const char *fmt = o->type == QD_CQW_INT8_TENSORWISE ? "int8_tensorwise"
                    : o->type == QD_CQW_FLOAT8_E4M3FN ? "float8_e4m3fn" : "float8_e4m3fn_rowwise";
    int len = snprintf(buf, sizeof buf, "{\"format\": \"%s\"", fmt);
    if (convrot_group > 0) {
        len += snprintf(buf + len, sizeof buf - (size_t)len, ", \"convrot\": true");
        if (convrot_group != 256)
            len += snprintf(buf + len, sizeof buf - (size_t)len, ", \"convrot_groupsize\": %d", convrot_group);
    }
    if (o->full_precision_mm) len += snprintf(buf + len, sizeof buf - (size_t)len, ", \"full_precision_matrix_mult\": true");
    snprintf(buf + len, sizeof buf - (size_t)len, "}");
    return strdup(buf);
}

static qd_status add_plan(qd_ctx *ctx, planned **p, int *n, int *cap, planned item) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        planned *g = realloc(*p, sizeof *g * (size_t)nc);
        if (!g) { free(item.name); free(item.config); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
        *p = g;
        *cap = nc;
    }
    (*p)[(*n)++] = item;
    return QD_OK;
}

static char *join(const char *base, const char *suffix) {
    size_t a = strlen(base), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (s) { memcpy(s, base, a); memcpy(s + a, suffix, b + 1); }
    return s;
}

static qd_status plan_tensor(qd_ctx *ctx, const qd_cqw_options *o, const router *rt, const qd_st_tensor *t,
                             planned **p, int *n, int *cap, int *convrot_changed) {
    planned item = {0};
    item.src = t;
    char why[256];
    const char *reason = skip_reason(rt, t, is_float(t->dtype), why);
    if (reason) {
        if (o->layers && is_weight_name(t->name)) {
            cJSON *e = cJSON_CreateObject();
            if (!e) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
            cJSON_AddStringToObject(e, "name", t->name);
            cJSON_AddItemToObject(e, "shape", shape_json(t));
            cJSON_AddStringToObject(e, "skipped", reason);
            cJSON_AddNumberToObject(e, "bytes_in", (double)t->nbytes);
            cJSON_AddItemToArray(o->layers, e);
        }
        item.kind = o->lora && qd_lora_touches(o->lora, NULL, t->name, t->shape, t->ndim) ? OUT_LORA_COPY : OUT_COPY;
        if (item.kind == OUT_LORA_COPY && t->dtype != QD_F32 && t->dtype != QD_F16 && t->dtype != QD_BF16)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: a LoRA names '%s', stored as %s: merging needs F32, F16 or BF16",
                           t->file, t->name, qd_dtype_name(t->dtype));
        if (!(item.name = strdup(t->name))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        item.spec = (qd_st_out){item.name, t->dtype, t->ndim, {0}, NULL};
        memcpy(item.spec.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        return add_plan(ctx, p, n, cap, item);
    }
    int64_t N = t->shape[0], K = t->shape[1];
    int g = 0;
    if (o->type == QD_CQW_INT8_TENSORWISE && o->convrot) {
        /* a group that does not divide K: the largest smaller power of 4 that does (ComfyUI reads
         * convrot_groupsize per layer; convert_to_quant's --dynamic-convrot does the same) */
        g = o->convrot_group ? o->convrot_group : 256;
        while (g > 4 && K % g) g /= 4;
        if (K % g) g = 0;
        if (g != (o->convrot_group ? o->convrot_group : 256)) (*convrot_changed)++;
        if (g == 0) qd_warn(ctx, "%s: '%s' has %lld input features, not a multiple of 4: written without ConvRot",
                            t->file, t->name, (long long)K);
    }
    size_t bl = strlen(t->name) - 7;
    char base[1024];
    memcpy(base, t->name, bl);
    base[bl] = 0;
    int rowwise = o->type == QD_CQW_FLOAT8_E4M3FN_ROWWISE || g > 0;

    planned c = {0};
    c.kind = OUT_CONFIG;
    c.src = t;
    c.name = join(base, ".comfy_quant");
    c.config = config_json(o, g);
    if (!c.name || !c.config) { free(c.name); free(c.config); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    c.spec = (qd_st_out){c.name, QD_U8, 1, {(int64_t)strlen(c.config)}, NULL};
    QD_TRY(add_plan(ctx, p, n, cap, c));

    planned w = {0};
    w.kind = OUT_WEIGHT;
    w.src = t;
    w.convrot_group = g;
    if (!(w.name = strdup(t->name))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    w.spec = (qd_st_out){w.name, o->type == QD_CQW_INT8_TENSORWISE ? QD_I8 : QD_F8_E4M3, 2, {N, K}, NULL};
    QD_TRY(add_plan(ctx, p, n, cap, w));

    planned s = {0};
    s.kind = OUT_SCALE;
    s.src = t;
    if (!(s.name = join(base, ".weight_scale"))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    /* scalar: 0-d (convert_to_quant squeezes 1-element scales); convrot int8: [N,1]; fp8 rows: [N] */
    if (!rowwise) s.spec = (qd_st_out){s.name, QD_F32, 0, {0}, NULL};
    else if (g > 0) s.spec = (qd_st_out){s.name, QD_F32, 2, {N, 1}, NULL};
    else s.spec = (qd_st_out){s.name, QD_F32, 1, {N}, NULL};
    QD_TRY(add_plan(ctx, p, n, cap, s));

    if (o->input_scale && o->type != QD_CQW_INT8_TENSORWISE) {
        planned is = {0};
        is.kind = OUT_INPUT_SCALE;
        is.src = t;
        if (!(is.name = join(base, ".input_scale"))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        is.spec = (qd_st_out){is.name, QD_F32, 0, {0}, NULL};
        QD_TRY(add_plan(ctx, p, n, cap, is));
    }
    return QD_OK;
}

/* __metadata__: the input's string entries, plus _quantization_metadata when asked. */
static qd_status build_metadata(qd_ctx *ctx, const char *in_path, const qd_cqw_options *o, const planned *p, int n,
                                cJSON **out) {
    *out = NULL;
    cJSON *meta = NULL;
    QD_TRY(qd_st_read_metadata(ctx, in_path, &meta));
    if (meta) {   /* keep only string values: the format allows nothing else */
        cJSON *it = meta->child;
        while (it) {
            cJSON *next = it->next;
            if (!cJSON_IsString(it)) cJSON_Delete(cJSON_DetachItemViaPointer(meta, it));
            it = next;
        }
    }
    if (o->save_quant_metadata) {
        if (!meta && !(meta = cJSON_CreateObject())) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        size_t cap = 64, len = 0;
        for (int i = 0; i < n; i++)
            if (p[i].kind == OUT_CONFIG) cap += strlen(p[i].name) + strlen(p[i].config) + 8;
        char *s = malloc(cap);
        if (!s) { cJSON_Delete(meta); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
        len += (size_t)snprintf(s + len, cap - len, "{\"format_version\": \"1.0\", \"layers\": {");
        int first = 1;
        for (int i = 0; i < n; i++) {
            if (p[i].kind != OUT_CONFIG) continue;
            /* keys as ComfyUI sees them after stripping the diffusion-model prefix */
            const char *k = p[i].name;
            if (!strncmp(k, DIFFUSION_PREFIX, strlen(DIFFUSION_PREFIX))) k += strlen(DIFFUSION_PREFIX);
            int kl = (int)(strlen(k) - strlen(".comfy_quant"));
            len += (size_t)snprintf(s + len, cap - len, "%s\"%.*s\": %s", first ? "" : ", ", kl, k, p[i].config);
            first = 0;
        }
        snprintf(s + len, cap - len, "}}");
        cJSON_DeleteItemFromObjectCaseSensitive(meta, "_quantization_metadata");
        cJSON_AddStringToObject(meta, "_quantization_metadata", s);
        free(s);
    }
    *out = meta;
    return QD_OK;
}

/* f32 -> a float storage dtype, n values */
static void from_f32(qd_dtype d, const float *src, int64_t n, void *dst) {
    if (d == QD_F32) { memcpy(dst, src, sizeof(float) * (size_t)n); return; }
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = d == QD_F16 ? qd_f32_to_f16(src[i]) : qd_f32_to_bf16(src[i]);
}

static qd_status lora_merge(qd_ctx *ctx, const qd_cqw_options *o, const qd_st_tensor *t, float *w, qd_cqw_report *rep) {
    if (!o->lora) return QD_OK;
    int k = qd_lora_apply(ctx, o->lora, NULL, t->name, w, t->shape, t->ndim);
    if (k < 0) return QD_ERR_FORMAT;
    if (k > 0) rep->lora_merged++;
    return QD_OK;
}

/* Produce and write the data of plan[i] (weights: also the scale entry that follows). */
static qd_status put(qd_ctx *ctx, qd_st_stream *wr, const qd_st_out *spec, const void *data) {
    return wr ? qd_st_stream_add(ctx, wr, spec->name, spec->dtype, spec->ndim, spec->shape, data) : QD_OK;
}

static qd_status emit(qd_ctx *ctx, const qd_cqw_options *o, qd_st_stream *wr, planned *p, int *i, qd_cqw_report *rep) {
    planned *e = &p[*i];
    const qd_st_tensor *t = e->src;
    switch (e->kind) {
    case OUT_COPY:
        rep->copied++;
        rep->bytes_in += t->nbytes;
        rep->bytes_out += t->nbytes;
        return put(ctx, wr, &e->spec, t->data);
    case OUT_CONFIG:
        return put(ctx, wr, &e->spec, e->config);
    case OUT_LORA_COPY: {
        float *w = qd_malloc(ctx, sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        if (!w) return QD_ERR_NOMEM;
        qd_st_to_f32(t, 0, t->numel, w);
        qd_status st = lora_merge(ctx, o, t, w, rep);
        if (st == QD_OK) {
            from_f32(t->dtype, w, t->numel, w);   /* narrowing in place: each output is behind its input */
            st = put(ctx, wr, &e->spec, w);
        }
        free(w);
        rep->copied++;
        rep->bytes_in += t->nbytes;
        rep->bytes_out += t->nbytes;
        return st;
    }
    case OUT_WEIGHT: {
        int64_t N = t->shape[0], K = t->shape[1];
        float *w = qd_malloc(ctx, sizeof(float) * (size_t)(N * K));
        uint8_t *q = qd_malloc(ctx, (size_t)(N * K));
        float *scale = qd_malloc(ctx, sizeof(float) * (size_t)N);
        qd_status st = w && q && scale ? QD_OK : QD_ERR_NOMEM;
        if (st == QD_OK) {
            qd_st_to_f32(t, 0, N * K, w);
            st = lora_merge(ctx, o, t, w, rep);
        }
        for (int64_t k = 0; st == QD_OK && k < N * K; k++)
            if (!isfinite(w[k]))
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: weight '%s' holds a non-finite value at element %lld%s", t->file,
                             t->name, (long long)k, o->lora ? " (after the LoRA merge)" : "");
        int64_t ns = 0;
        if (st == QD_OK) ns = qd_cqw_quantize(ctx, o->type, e->convrot_group, w, N, K, q, scale);
        if (st == QD_OK) {
            /* error in the basis it was quantized in: ConvRot's H is orthogonal, so the same norm */
            double err2 = 0, norm2 = 0;
            for (int64_t r = 0; r < N; r++) {
                float sc = scale[ns == 1 ? 0 : r];
                for (int64_t k = 0; k < K; k++) {
                    uint8_t c = q[r * K + k];
                    double v = (o->type == QD_CQW_INT8_TENSORWISE ? (float)(int8_t)c : qd_f8e4m3_to_f32(c)) * sc;
                    double d = v - w[r * K + k];
                    err2 += d * d;
                    norm2 += (double)w[r * K + k] * w[r * K + k];
                }
            }
            rep->err2 += err2;
            rep->norm2 += norm2;
            uint64_t out_bytes = (uint64_t)(N * K) + sizeof(float) * (uint64_t)ns;
            if (o->layers) {
                cJSON *j = cJSON_CreateObject();
                char base[1024];
                snprintf(base, sizeof base, "%.*s", (int)(strlen(t->name) - 7), t->name);
                double rel = norm2 > 0 ? sqrt(err2 / norm2) : 0;
                if (j) {
                    cJSON_AddStringToObject(j, "name", base);
                    cJSON_AddItemToObject(j, "shape", shape_json(t));
                    cJSON_AddStringToObject(j, "format", o->type == QD_CQW_INT8_TENSORWISE ? "int8_tensorwise"
                                            : o->type == QD_CQW_FLOAT8_E4M3FN ? "float8_e4m3fn" : "float8_e4m3fn_rowwise");
                    cJSON_AddBoolToObject(j, "convrot", e->convrot_group > 0);
                    cJSON_AddNumberToObject(j, "bytes_in", (double)t->nbytes);
                    cJSON_AddNumberToObject(j, "bytes_out", (double)out_bytes);
                    cJSON_AddNumberToObject(j, "rel_error", rel);
                    if (rel > 0) cJSON_AddNumberToObject(j, "snr_db", -20 * log10(rel));
                    else cJSON_AddNullToObject(j, "snr_db");
                    cJSON_AddItemToArray(o->layers, j);
                } else {
                    st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
                }
            }
            rep->bytes_out += out_bytes;
        }
        if (st == QD_OK) st = put(ctx, wr, &e->spec, q);
        /* the scale entry is next in the plan */
        (*i)++;
        if (st == QD_OK) st = put(ctx, wr, &p[*i].spec, scale);
        free(w);
        free(q);
        free(scale);
        rep->quantized++;
        rep->bytes_in += t->nbytes;
        return st;
    }
    case OUT_SCALE:
        return qd_fail(ctx, QD_ERR_ARG, "internal: scale '%s' planned without its weight", e->name);
    case OUT_INPUT_SCALE: {
        float one = 1.0f;
        return put(ctx, wr, &e->spec, &one);
    }
    }
    return QD_OK;
}

static void plan_free(planned *p, int n) {
    for (int i = 0; i < n; i++) { free(p[i].name); free(p[i].config); }
    free(p);
}

qd_status qd_cqw_write(qd_ctx *ctx, const char *in_path, const char *out_path, const qd_cqw_options *o,
                       qd_cqw_report *report) {
    qd_cqw_report rep = {0};
    if (o->type != QD_CQW_INT8_TENSORWISE && o->convrot)
        return qd_fail(ctx, QD_ERR_ARG, "ConvRot applies to int8_tensorwise only");
    if (o->convrot && o->convrot_group) {
        int g = 4;
        while (g < o->convrot_group && g < (1 << 24)) g *= 4;
        if (g != o->convrot_group || g > 4096)
            return qd_fail(ctx, QD_ERR_ARG, "ConvRot group %d must be a power of 4 from 4 to 4096 (ComfyUI needs a power of 4)",
                           o->convrot_group);
    }
    router rt;
    QD_TRY(router_init(ctx, o, &rt));
    qd_st_set st;
    qd_status s = qd_st_open(ctx, in_path, &st);
    if (s != QD_OK) { router_free(&rt); return s; }
    planned *plan = NULL;
    int n = 0, cap = 0;
    cJSON *meta = NULL;
    qd_st_stream *wr = NULL;
    if (st.n_files != 1) s = qd_fail(ctx, QD_ERR_ARG, "%s: comfy_quant output needs a single-file checkpoint", in_path);
    if (s == QD_OK && qd_cq_detect(&st))
        s = qd_fail(ctx, QD_ERR_ARG, "%s: already a comfy_quant checkpoint (it has .comfy_quant tensors or the scaled_fp8 marker)", in_path);
    for (int64_t i = 0; i < st.n_tensors; i++)
        if (!strncmp(st.tensors[i].name, DIFFUSION_PREFIX, strlen(DIFFUSION_PREFIX))) rt.diffusion_only = 1;
    int convrot_changed = 0;
    for (int64_t i = 0; s == QD_OK && i < st.n_tensors; i++)
        s = plan_tensor(ctx, o, &rt, &st.tensors[i], &plan, &n, &cap, &convrot_changed);
    if (s == QD_OK && convrot_changed)
        qd_info(ctx, "%s: %d layers whose input features the ConvRot group %d does not divide use a smaller power of 4",
                in_path, convrot_changed, o->convrot_group ? o->convrot_group : 256);
    if (s == QD_OK && !o->dry_run) s = build_metadata(ctx, in_path, o, plan, n, &meta);
    if (s == QD_OK && !o->dry_run) s = qd_st_stream_open(ctx, out_path, &wr);
    int64_t done = 0, total = 0;
    for (int64_t i = 0; i < st.n_tensors; i++) total += (int64_t)st.tensors[i].nbytes;
    double t0 = qd_now();
    for (int i = 0; s == QD_OK && i < n; i++) {
        if (ctx->cancel) { s = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled"); break; }
        out_kind k = plan[i].kind;
        const qd_st_tensor *src = plan[i].src;
        s = emit(ctx, o, wr, plan, &i, &rep);
        if (s == QD_OK && (k == OUT_COPY || k == OUT_LORA_COPY || k == OUT_WEIGHT)) {
            qd_st_release(src);   /* the resident set stays at the tensors in hand */
            done += (int64_t)src->nbytes;
            if (o->progress && o->progress(o->progress_user, done, total, src->name, qd_now() - t0))
                s = qd_fail(ctx, QD_ERR_CANCELLED, "cancelled");
        }
    }
    if (s == QD_OK && wr) {
        /* __metadata__ as the body of its object: the cJSON text without the braces */
        char *body = meta ? cJSON_PrintUnformatted(meta) : NULL;
        if (meta && !body) s = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        if (body) { size_t bl = strlen(body); memmove(body, body + 1, bl - 2); body[bl - 2] = 0; }
        if (s == QD_OK) s = qd_st_stream_finish(ctx, wr, body && *body ? body : NULL);
        else qd_st_stream_abort(wr);
        wr = NULL;
        free(body);
    }
    if (wr) qd_st_stream_abort(wr);
    cJSON_Delete(meta);
    plan_free(plan, n);
    qd_st_close(&st);
    router_free(&rt);
    if (s == QD_OK && report) *report = rep;
    return s;
}
