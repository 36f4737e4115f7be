/* The SDNQ component writer (see sdnq_writer.h). */
#include "sdnq_writer.h"
#include "base/half.h"
#include "quant/sdnq_layout.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

char *sdnq_qconfig_json(const sdnq_spec *q, cJSON *skip) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "quant_method", "sdnq");
    cJSON_AddStringToObject(c, "sdnq_version", "0.2.5");
    cJSON_AddStringToObject(c, "weights_dtype", q->weights_dtype);
    cJSON_AddNullToObject(c, "quantized_matmul_dtype");
    cJSON_AddNumberToObject(c, "group_size", q->group_size);
    cJSON_AddBoolToObject(c, "use_svd", q->svd_rank > 0);
    cJSON_AddNumberToObject(c, "svd_rank", q->svd_rank > 0 ? q->svd_rank : 32);
    cJSON_AddNumberToObject(c, "svd_steps", 8);
    cJSON_AddBoolToObject(c, "use_quantized_matmul", q->qmm);
    cJSON_AddBoolToObject(c, "use_quantized_matmul_conv", 0);
    cJSON_AddBoolToObject(c, "quant_conv", q->quant_conv);
    cJSON_AddBoolToObject(c, "quant_embedding", 0);
    cJSON_AddBoolToObject(c, "use_hadamard", 0);
    cJSON_AddBoolToObject(c, "use_codebook", 0);
    cJSON_AddBoolToObject(c, "dequantize_fp32", 1);
    cJSON_AddNumberToObject(c, "hadamard_group_size", 256);
    cJSON_AddItemToObject(c, "modules_to_not_convert", skip);
    cJSON_AddItemToObject(c, "modules_to_not_use_matmul", cJSON_CreateArray());
    cJSON_AddItemToObject(c, "modules_dtype_dict", cJSON_CreateObject());
    cJSON_AddItemToObject(c, "modules_quant_config", cJSON_CreateObject());
    char *s = cJSON_Print(c);
    cJSON_Delete(c);
    if (!s) die("out of memory");
    return s;
}

/* ---- the stored tensors of a component, in file order ---- */

typedef enum { P_DENSE, P_CODES, P_SCALE, P_ZP, P_UP, P_DOWN } part;

typedef struct {
    char name[160];
    qd_dtype dt;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    uint64_t bytes;
    int param;                  /* index in the plist */
    part what;
} otensor;

typedef struct { otensor *t; int n, cap; } olist;

static otensor *onew(olist *o, int param, part what, const char *name, const char *suffix, qd_dtype dt) {
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 2048;
        o->t = realloc(o->t, sizeof *o->t * (size_t)o->cap);
        if (!o->t) die("out of memory");
    }
    otensor *t = &o->t[o->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s", name, suffix);
    t->dt = dt;
    t->param = param;
    t->what = what;
    return t;
}

static void oshape(otensor *t, int ndim, const int64_t *s) {
    t->ndim = ndim;
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = s[i]; n *= (uint64_t)s[i]; }
    t->bytes = n * qd_dtype_size(t->dt);
}

/* ---- quantizing one layer ---- */

typedef struct {
    uint8_t *codes;             /* bytes as stored */
    float *scale, *zp;
    uint16_t *up, *down;        /* F16 / BF16, in the stored orientation */
} qlayer;

static uint16_t to_dense(qd_dtype dt, float v) { return dt == QD_BF16 ? qd_f32_to_bf16(v) : qd_f32_to_f16(v); }
static float dense_round(qd_dtype dt, float v) {
    return dt == QD_BF16 ? qd_bf16_to_f32(qd_f32_to_bf16(v)) : qd_f16_to_f32(qd_f32_to_f16(v));
}

/* Quantize one layer (values w, [out, cols]) into its stored tensors. */
static void quantize(const sdnq_writer *wr, const qd_sdnq_layout *l, float *w, qlayer *q) {
    int64_t out = l->out, cols = l->cols, ks = l->ksize, r = l->svd ? l->svd_rank : 0;
    if (r) {   /* random factors, rounded to the dense dtype; the residual is quantized */
        rng g = seeded(l->param, 7);
        float *up = xmalloc(sizeof(float) * (size_t)(out * r)), *down = xmalloc(sizeof(float) * (size_t)(r * cols));
        float sd = sqrtf(0.3f / sqrtf((float)r * (float)l->in));   /* up.down ~ 0.3 x the weight's spread */
        for (int64_t i = 0; i < out * r; i++) up[i] = dense_round(wr->dense, sd * gauss(&g));
        for (int64_t i = 0; i < r * cols; i++) down[i] = dense_round(wr->dense, sd * gauss(&g));
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < r; t++) {
                float a = up[o * r + t];
                const float *dr = down + t * cols;
                float *wrow = w + o * cols;
                for (int64_t k = 0; k < cols; k++) wrow[k] -= a * dr[k];
            }
        /* stored [out, r] / [r, cols], or [r, out] / [cols, r] for quantized matmul */
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < r; t++)
                q->up[l->svd_transposed ? t * out + o : o * r + t] = to_dense(wr->dense, up[o * r + t]);
        for (int64_t t = 0; t < r; t++)
            for (int64_t k = 0; k < cols; k++)
                q->down[l->svd_transposed ? k * r + t : t * cols + k] = to_dense(wr->dense, down[t * cols + k]);
        free(up);
        free(down);
    }
    int64_t so, sg, sp;
    qd_sdnq_scale_strides(l, &so, &sg, &sp);
    int uns = l->dtype.family == QD_SQ_UINT, bits = l->dtype.bits;
    float qmax = uns ? (float)((1 << bits) - 1) : (float)((1 << (bits - 1)) - 1), qmin = uns ? 0 : -qmax - 1;
    int64_t G = l->groups, gs = l->group_size;
    for (int64_t o = 0; o < out; o++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t p = 0; p < ks; p++) {
                /* the group: channels [g*gs, (g+1)*gs) at kernel position p */
                float lo = INFINITY, hi = -INFINITY;
                for (int64_t c = g * gs; c < (g + 1) * gs; c++) {
                    float v = w[o * cols + c * ks + p];
                    lo = fminf(lo, v);
                    hi = fmaxf(hi, v);
                }
                float sc, z = 0;
                if (uns) { sc = (hi - lo) / qmax; z = lo; }
                else sc = fmaxf(fabsf(lo), fabsf(hi)) / qmax;
                int64_t si = o * so + g * sg + p * sp;
                q->scale[si] = sc;
                if (q->zp) q->zp[si] = z;
                float inv = sc > 0 ? 1.0f / sc : 0;
                for (int64_t c = g * gs; c < (g + 1) * gs; c++) {
                    int64_t k = c * ks + p;
                    float v = wr->reciprocal ? nearbyintf((w[o * cols + k] - z) * inv)
                                             : sc > 0 ? nearbyintf((w[o * cols + k] - z) / sc) : 0;
                    v = fminf(fmaxf(v, qmin), qmax);
                    int code = (int)v;
                    int64_t e = l->transposed ? k * out + o : o * cols + k;
                    if (bits == 8) q->codes[e] = (uint8_t)(int8_t)code;
                    else q->codes[e >> 1] |= (uint8_t)(code << (e & 1 ? 4 : 0));   /* uint4: low nibble first; zeroed buffer */
                }
            }
}

/* ---- the component ---- */

uint64_t sdnq_write_component(qd_ctx *ctx, const char *dir, const plist *pl, const sdnq_spec *q, const char *qconfig,
                              const sdnq_writer *wr) {
    char path[4200], tmp[4300];
    mkdir(dir, 0755);
    qd_sdnq_config *cfg = NULL;
    snprintf(path, sizeof path, "%s/quantization_config.json", dir);
    if (q->weights_dtype) {
        if (strcmp(q->weights_dtype, "int8") && strcmp(q->weights_dtype, "uint4"))
            die("this writer quantizes to int8 and uint4 only");
        write_text(path, qconfig);
        if (qd_sdnq_config_load_file(ctx, path, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    } else {
        remove(path);   /* a stale one from an earlier quantized run */
    }
    /* plan: the stored tensors, in file order */
    qd_sdnq_layout *lay = calloc((size_t)pl->n, sizeof *lay);
    char *isq = calloc((size_t)pl->n, 1);
    olist o = {0};
    if (!lay || !isq) die("out of memory");
    for (int i = 0; i < pl->n; i++) {
        const pdesc *d = &pl->p[i];
        if (!wr->quantizable(d, cfg, q)) {
            oshape(onew(&o, i, P_DENSE, d->name, "", wr->dense), d->ndim, d->shape);
            continue;
        }
        isq[i] = 1;
        qd_sdnq_layout *l = &lay[i];
        if (qd_sdnq_layout_derive(ctx, cfg, d->name, d->ndim == 4 ? QD_SDNQ_CONV : QD_SDNQ_LINEAR, d->ndim, d->shape, l) != QD_OK)
            die("%s", qd_last_error(ctx));
        char pre[160];
        snprintf(pre, sizeof pre, "%.*s", (int)(strlen(d->name) - 7), d->name);
        int64_t s[QD_MAX_DIMS], n = 0, codes = l->out * l->cols;
        otensor *t = onew(&o, i, P_CODES, pre, ".weight", l->dtype.bits == 8 ? QD_I8 : QD_U8);
        if (l->dtype.bits == 4) { s[0] = codes / 2; oshape(t, 1, s); }
        else if (l->transposed) { s[0] = l->cols; s[1] = l->out; oshape(t, 2, s); }
        else {
            s[n++] = l->out;
            if (l->groups > 1) s[n++] = l->groups;
            s[n++] = l->group_size;
            for (int k = 0; k < l->kdims; k++) s[n++] = l->kshape[k];
            oshape(t, (int)n, s);
        }
        n = 0;   /* scale: [1, out] transposed, else [out, (G,) 1, k...] */
        if (l->transposed) { s[n++] = 1; s[n++] = l->out; }
        else {
            s[n++] = l->out;
            if (l->groups > 1) s[n++] = l->groups;
            s[n++] = 1;
            for (int k = 0; k < l->kdims; k++) s[n++] = l->kshape[k];
        }
        oshape(onew(&o, i, P_SCALE, pre, ".scale", QD_F32), (int)n, s);
        if (l->zero_point) oshape(onew(&o, i, P_ZP, pre, ".zero_point", QD_F32), (int)n, s);
        if (l->svd) {
            int64_t r = l->svd_rank, su[2] = {l->out, r}, sd[2] = {r, l->cols};
            if (l->svd_transposed) { su[0] = r; su[1] = l->out; sd[0] = l->cols; sd[1] = r; }
            oshape(onew(&o, i, P_UP, pre, ".svd_up", wr->dense), 2, su);
            oshape(onew(&o, i, P_DOWN, pre, ".svd_down", wr->dense), 2, sd);
        }
    }
    /* header */
    size_t cap = 4096 + (size_t)o.n * 256, len = 0;
    char *h = xmalloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"%s\"}", wr->generator);
    uint64_t off = 0;
    for (int i = 0; i < o.n; i++) {
        const otensor *t = &o.t[i];
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, qd_dtype_name(t->dt));
        for (int k = 0; k < t->ndim; k++) len += (size_t)snprintf(h + len, cap - len, k ? ",%lld" : "%lld", (long long)t->shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + t->bytes));
        off += t->bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < off + (1ull << 30))
        die("%s: %.1f GB free, need %.1f GB", dir, (double)vs.f_bavail * vs.f_frsize / 1e9, off / 1e9 + 1);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("%s: %s", tmp, strerror(errno));
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(lb, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    free(h);
    /* data, parameter by parameter (a layer's stored tensors are consecutive) */
    for (int i = 0, ti = 0; i < pl->n && ok; i++) {
        const pdesc *d = &pl->p[i];
        int64_t n = numel(d);
        float *w = xmalloc(sizeof(float) * (size_t)n);
        values(d, w);
        if (!isq[i]) {
            uint16_t *u = xmalloc(sizeof(uint16_t) * (size_t)n);
            for (int64_t k = 0; k < n; k++) u[k] = to_dense(wr->dense, w[k]);
            ok = fwrite(u, 2, (size_t)n, f) == (size_t)n;
            free(u);
            ti++;
        } else {
            if (wr->round_first) for (int64_t k = 0; k < n; k++) w[k] = dense_round(wr->dense, w[k]);
            qlayer ql = {0};
            void *buf[5] = {0};
            for (int t = ti; t < o.n && o.t[t].param == i; t++) {
                buf[o.t[t].what - P_CODES] = calloc(1, (size_t)o.t[t].bytes);
                if (!buf[o.t[t].what - P_CODES]) die("out of memory");
            }
            ql.codes = buf[0]; ql.scale = buf[1]; ql.zp = buf[2]; ql.up = buf[3]; ql.down = buf[4];
            quantize(wr, &lay[i], w, &ql);
            for (; ti < o.n && o.t[ti].param == i && ok; ti++)
                ok = fwrite(buf[o.t[ti].what - P_CODES], 1, (size_t)o.t[ti].bytes, f) == (size_t)o.t[ti].bytes;
            for (int k = 0; k < 5; k++) free(buf[k]);
        }
        free(w);
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) { remove(tmp); die("%s: write failed (disk full?)", tmp); }
    if (rename(tmp, path)) die("rename %s: %s", tmp, strerror(errno));
    free(o.t);
    free(lay);
    free(isq);
    qd_sdnq_config_free(cfg);
    return off;
}
