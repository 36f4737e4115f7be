/* One FLUX.1 transformer step at real size (issue 4), timed op by op, in three weight
 * layouts: bf16 dense, SDNQ int8 and SDNQ uint4 (+ SVD).
 *
 *   bench_flux --config bench/configs/flux1_transformer.json
 *              --layout bf16|int8|int8-qmm|uint4-svd [--matmul exact|int8]
 *              [--double N] [--single N] [--image 512] [--text 512] [--svd-rank 32]
 *              [--dir DIR] [--trace OUT.json] [--threads N] [--warmup N] [--steps N]
 *              [--idle-wait S] [--reuse] [--keep] [--write-only]
 *
 * 1. Writes a diffusers "transformer" folder into DIR (default /tmp/qd_bench_flux_LAYOUT):
 *    config.json (the FLUX.1-dev config, num_layers / num_single_layers replaced by
 *    --double / --single when given: the widths stay the real ones), and for the SDNQ
 *    layouts quantization_config.json; diffusion_pytorch_model.safetensors holds every
 *    parameter FluxTransformer2DModel has, named as diffusers names them (derived here,
 *    independently of the loader). Values: matrices N(0, 1/fan_in), RMSNorm scales 1,
 *    biases N(0, 0.02^2), each tensor from a generator seeded by its name, so every
 *    layout holds the same weights.
 *      bf16       every tensor BF16 (FLUX.1-dev's own dtype);
 *      int8       sdnq int8, group_size -1 (row-wise [out, in] codes, scale [out, 1]);
 *      int8-qmm   sdnq int8 with use_quantized_matmul (row-wise, stored transposed
 *                 [in, out] with scale [1, out]: the layout the int8 kernel reads as is);
 *      uint4-svd  sdnq uint4, auto group size (128 with SVD), zero points, SVD rank
 *                 --svd-rank (random BF16 factors; the residual W - up.down is what is
 *                 quantized, as sdnq does).
 *    Quantized layers: Linear with in >= 32 and >= 16384 weights, minus sdnq's default
 *    skip keys for FluxTransformer2DModel (spec sdnq.md §1.3), written into
 *    modules_to_not_convert and matched with the library's own rules. Each layer's
 *    layout (transposition, groups, SVD orientation) comes from the library's §1.4
 *    derivation (qd_sdnq_layout_derive) of the written config; the loader checks the
 *    tensors against it again. Scales / zero points F32 (dequantize_fp32).
 *    The SDNQ writer follows bench/bench_sdnq.c's (copied, with BF16 instead of F16).
 * 2. Loads it with qd_flux_load, sets qd_set_matmul(--matmul), runs --warmup untimed
 *    forwards (default 0) and --steps timed forwards (default 1) with the op trace on:
 *    512x512 image -> 1024 image tokens (64 channels), --text T5 tokens, batch 1,
 *    guidance 3.5, sigma 0.5. Before each step it waits (up to --idle-wait s) for the
 *    machine to be idle and records the CPU time other processes took during it.
 * 3. Reports s/step (fastest), per-block seconds (double and single blocks, from the
 *    trace), FLOPs over the traced linear/attention ops, GFLOP/s, VmHWM, and writes the
 *    fastest step's trace as JSON (the format bench/torch_ops.py reads).
 * The weights file is deleted at exit unless --keep or --reuse is given. */
#include "models/flux_transformer.h"
#include "base/ctx.h"
#include "base/half.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "tensor/gemm.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_flux: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

/* ---- FluxTransformer2DModel's parameters, diffusers names ---- */

enum { K_MATRIX, K_NORM, K_BIAS };

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    int kind;
} pdesc;

typedef struct { pdesc *p; int n, cap; } plist;

static void add(plist *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(plist *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->p = realloc(l->p, sizeof *l->p * (size_t)l->cap);
        if (!l->p) die("out of memory");
    }
    pdesc *d = &l->p[l->n++];
    memset(d, 0, sizeof *d);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof d->name, fmt, ap);
    va_end(ap);
    d->kind = kind;
    d->ndim = ndim;
    memcpy(d->shape, shape, sizeof(int64_t) * (size_t)ndim);
}

static void linear(plist *l, int64_t out, int64_t in, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void linear(plist *l, int64_t out, int64_t in, const char *fmt, ...) {
    char pre[112];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    int64_t w[2] = {out, in}, b[1] = {out};
    add(l, K_MATRIX, 2, w, "%s.weight", pre);
    add(l, K_BIAS, 1, b, "%s.bias", pre);
}

static void rmsnorm(plist *l, int64_t n, const char *pre, const char *name) {
    int64_t s[1] = {n};
    add(l, K_NORM, 1, s, "%s.%s.weight", pre, name);
}

/* FluxTransformer2DModel.__init__ (diffusers 0.32), patch_size 1. */
static void flux_params(int64_t D, int64_t dh, int64_t in_ch, int64_t out_ch, int64_t joint, int64_t pooled,
                        int guidance, int nd, int ns, plist *l) {
    const int64_t TPROJ = 256, F = 4 * D;
    linear(l, D, in_ch, "x_embedder");
    linear(l, D, joint, "context_embedder");
    linear(l, D, TPROJ, "time_text_embed.timestep_embedder.linear_1");
    linear(l, D, D, "time_text_embed.timestep_embedder.linear_2");
    if (guidance) {
        linear(l, D, TPROJ, "time_text_embed.guidance_embedder.linear_1");
        linear(l, D, D, "time_text_embed.guidance_embedder.linear_2");
    }
    linear(l, D, pooled, "time_text_embed.text_embedder.linear_1");
    linear(l, D, D, "time_text_embed.text_embedder.linear_2");
    for (int i = 0; i < nd; i++) {
        char p[64], a[80];
        snprintf(p, sizeof p, "transformer_blocks.%d", i);
        snprintf(a, sizeof a, "%s.attn", p);
        linear(l, 6 * D, D, "%s.norm1.linear", p);
        linear(l, 6 * D, D, "%s.norm1_context.linear", p);
        linear(l, D, D, "%s.to_q", a);
        linear(l, D, D, "%s.to_k", a);
        linear(l, D, D, "%s.to_v", a);
        linear(l, D, D, "%s.to_out.0", a);
        linear(l, D, D, "%s.add_q_proj", a);
        linear(l, D, D, "%s.add_k_proj", a);
        linear(l, D, D, "%s.add_v_proj", a);
        linear(l, D, D, "%s.to_add_out", a);
        rmsnorm(l, dh, a, "norm_q");
        rmsnorm(l, dh, a, "norm_k");
        rmsnorm(l, dh, a, "norm_added_q");
        rmsnorm(l, dh, a, "norm_added_k");
        linear(l, F, D, "%s.ff.net.0.proj", p);
        linear(l, D, F, "%s.ff.net.2", p);
        linear(l, F, D, "%s.ff_context.net.0.proj", p);
        linear(l, D, F, "%s.ff_context.net.2", p);
    }
    for (int i = 0; i < ns; i++) {
        char p[64], a[80];
        snprintf(p, sizeof p, "single_transformer_blocks.%d", i);
        snprintf(a, sizeof a, "%s.attn", p);
        linear(l, 3 * D, D, "%s.norm.linear", p);
        linear(l, D, D, "%s.to_q", a);
        linear(l, D, D, "%s.to_k", a);
        linear(l, D, D, "%s.to_v", a);
        rmsnorm(l, dh, a, "norm_q");
        rmsnorm(l, dh, a, "norm_k");
        linear(l, F, D, "%s.proj_mlp", p);
        linear(l, D, D + F, "%s.proj_out", p);
    }
    linear(l, 2 * D, D, "norm_out.linear");
    linear(l, out_ch, D, "proj_out");
}

static int64_t numel(const pdesc *d) {
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= d->shape[i];
    return n;
}

/* ---- deterministic random values: a stream per tensor name ---- */

typedef struct { uint64_t s; } rng;

static uint64_t next64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately N(0, 1): Irwin-Hall sum of four 16-bit uniforms, rescaled. */
static float gauss(rng *r) {
    uint64_t v = next64(r);
    float s = (float)(v & 0xffff) + (float)((v >> 16) & 0xffff) + (float)((v >> 32) & 0xffff) + (float)(v >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

static rng seeded(const char *name, uint64_t salt) {
    uint64_t h = 1469598103934665603ull ^ salt;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    rng r = {h};
    return r;
}

static void values(const pdesc *d, float *dst) {
    rng r = seeded(d->name, 0);
    int64_t n = numel(d);
    float sd = d->kind == K_MATRIX ? 1.0f / sqrtf((float)(n / d->shape[0])) : 0.02f;
    for (int64_t i = 0; i < n; i++) dst[i] = d->kind == K_NORM ? 1.0f : sd * gauss(&r);
}

static float bf16_round(float v) { return qd_bf16_to_f32(qd_f32_to_bf16(v)); }

/* ---- the SDNQ writer (after bench/bench_sdnq.c) ---- */

typedef enum { P_DENSE, P_CODES, P_SCALE, P_ZP, P_UP, P_DOWN } part;

typedef struct {
    char name[160];
    qd_dtype dt;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    uint64_t bytes;
    int param;
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

typedef struct {
    const char *weights_dtype;  /* NULL: dense bf16 */
    int group_size;             /* 0 auto, -1 row-wise */
    int svd_rank;               /* 0: no SVD */
    int qmm;                    /* use_quantized_matmul */
} qspec;

/* sdnq's default skip keys for FluxTransformer2DModel (spec sdnq.md §1.3) */
static const char *FLUX_SKIP[] = {"single_transformer_blocks.0.norm.linear.weight", "time_text_embed", "time_embed",
                                  "context_embedder", "x_embedder", ".proj_out", "norm_out"};

static char *qconfig_json(const qspec *q) {
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
    cJSON_AddBoolToObject(c, "quant_conv", 0);
    cJSON_AddBoolToObject(c, "quant_embedding", 0);
    cJSON_AddBoolToObject(c, "use_hadamard", 0);
    cJSON_AddBoolToObject(c, "use_codebook", 0);
    cJSON_AddBoolToObject(c, "dequantize_fp32", 1);
    cJSON_AddNumberToObject(c, "hadamard_group_size", 256);
    cJSON *skip = cJSON_AddArrayToObject(c, "modules_to_not_convert");
    for (size_t i = 0; i < sizeof FLUX_SKIP / sizeof *FLUX_SKIP; i++) cJSON_AddItemToArray(skip, cJSON_CreateString(FLUX_SKIP[i]));
    cJSON_AddItemToObject(c, "modules_to_not_use_matmul", cJSON_CreateArray());
    cJSON_AddItemToObject(c, "modules_dtype_dict", cJSON_CreateObject());
    cJSON_AddItemToObject(c, "modules_quant_config", cJSON_CreateObject());
    char *s = cJSON_Print(c);
    cJSON_Delete(c);
    if (!s) die("out of memory");
    return s;
}

static int quantizable(const pdesc *d, const qd_sdnq_config *cfg) {
    if (d->kind != K_MATRIX || !cfg) return 0;
    if (d->shape[1] < 32 || numel(d) < 16384) return 0;   /* check_quant_is_allowed */
    return !qd_sdnq_skips(cfg, d->name);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f)) die("%s: write failed", path);
}

typedef struct {
    uint8_t *codes;
    float *scale, *zp;
    uint16_t *up, *down;        /* BF16, stored orientation */
} qlayer;

static void quantize(const qd_sdnq_layout *l, float *w, qlayer *q) {
    int64_t out = l->out, cols = l->cols, r = l->svd ? l->svd_rank : 0;
    if (r) {   /* random factors, rounded to BF16; the residual is quantized */
        rng g = seeded(l->param, 7);
        float *up = xmalloc(sizeof(float) * (size_t)(out * r)), *down = xmalloc(sizeof(float) * (size_t)(r * cols));
        float sd = sqrtf(0.3f / sqrtf((float)r * (float)l->in));
        for (int64_t i = 0; i < out * r; i++) up[i] = bf16_round(sd * gauss(&g));
        for (int64_t i = 0; i < r * cols; i++) down[i] = bf16_round(sd * gauss(&g));
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < r; t++) {
                float a = up[o * r + t];
                const float *dr = down + t * cols;
                float *wr = w + o * cols;
                for (int64_t k = 0; k < cols; k++) wr[k] -= a * dr[k];
            }
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < r; t++)
                q->up[l->svd_transposed ? t * out + o : o * r + t] = qd_f32_to_bf16(up[o * r + t]);
        for (int64_t t = 0; t < r; t++)
            for (int64_t k = 0; k < cols; k++)
                q->down[l->svd_transposed ? k * r + t : t * cols + k] = qd_f32_to_bf16(down[t * cols + k]);
        free(up);
        free(down);
    }
    int64_t so, sg, sp;
    qd_sdnq_scale_strides(l, &so, &sg, &sp);
    int uns = l->dtype.family == QD_SQ_UINT, bits = l->dtype.bits;
    float qmax = uns ? (float)((1 << bits) - 1) : (float)((1 << (bits - 1)) - 1), qmin = uns ? 0 : -qmax - 1;
    int64_t G = l->groups, gs = l->group_size;
    for (int64_t o = 0; o < out; o++)
        for (int64_t g = 0; g < G; g++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int64_t c = g * gs; c < (g + 1) * gs; c++) {
                float v = w[o * cols + c];
                lo = fminf(lo, v);
                hi = fmaxf(hi, v);
            }
            float sc, z = 0;
            if (uns) { sc = (hi - lo) / qmax; z = lo; }
            else sc = fmaxf(fabsf(lo), fabsf(hi)) / qmax;
            int64_t si = o * so + g * sg;
            q->scale[si] = sc;
            if (q->zp) q->zp[si] = z;
            float inv = sc > 0 ? 1.0f / sc : 0;
            for (int64_t c = g * gs; c < (g + 1) * gs; c++) {
                float v = nearbyintf((w[o * cols + c] - z) * inv);
                v = fminf(fmaxf(v, qmin), qmax);
                int code = (int)v;
                int64_t e = l->transposed ? c * out + o : o * cols + c;
                if (bits == 8) q->codes[e] = (uint8_t)(int8_t)code;
                else q->codes[e >> 1] |= (uint8_t)(code << (e & 1 ? 4 : 0));   /* uint4: low nibble first */
            }
        }
}

/* Write dir/diffusion_pytorch_model.safetensors (+ quantization_config.json). Returns bytes. */
static uint64_t write_component(qd_ctx *ctx, const char *dir, const plist *pl, const qspec *q) {
    char path[4200], tmp[4300];
    qd_sdnq_config *cfg = NULL;
    if (q->weights_dtype) {
        char *text = qconfig_json(q);
        snprintf(path, sizeof path, "%s/quantization_config.json", dir);
        write_text(path, text);
        free(text);
        if (qd_sdnq_config_load_file(ctx, path, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    } else {
        snprintf(path, sizeof path, "%s/quantization_config.json", dir);
        remove(path);
    }
    qd_sdnq_layout *lay = calloc((size_t)pl->n, sizeof *lay);
    char *isq = calloc((size_t)pl->n, 1);
    olist o = {0};
    if (!lay || !isq) die("out of memory");
    for (int i = 0; i < pl->n; i++) {
        const pdesc *d = &pl->p[i];
        if (!quantizable(d, cfg)) {
            oshape(onew(&o, i, P_DENSE, d->name, "", QD_BF16), d->ndim, d->shape);
            continue;
        }
        isq[i] = 1;
        qd_sdnq_layout *l = &lay[i];
        if (qd_sdnq_layout_derive(ctx, cfg, d->name, QD_SDNQ_LINEAR, d->ndim, d->shape, l) != QD_OK)
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
            oshape(t, (int)n, s);
        }
        n = 0;
        if (l->transposed) { s[n++] = 1; s[n++] = l->out; }
        else {
            s[n++] = l->out;
            if (l->groups > 1) s[n++] = l->groups;
            s[n++] = 1;
        }
        oshape(onew(&o, i, P_SCALE, pre, ".scale", QD_F32), (int)n, s);
        if (l->zero_point) oshape(onew(&o, i, P_ZP, pre, ".zero_point", QD_F32), (int)n, s);
        if (l->svd) {
            int64_t r = l->svd_rank, su[2] = {l->out, r}, sd[2] = {r, l->cols};
            if (l->svd_transposed) { su[0] = r; su[1] = l->out; sd[0] = l->cols; sd[1] = r; }
            oshape(onew(&o, i, P_UP, pre, ".svd_up", QD_BF16), 2, su);
            oshape(onew(&o, i, P_DOWN, pre, ".svd_down", QD_BF16), 2, sd);
        }
    }
    size_t cap = 4096 + (size_t)o.n * 256, len = 0;
    char *h = xmalloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"qdiff bench_flux\"}");
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
    for (int i = 0, ti = 0; i < pl->n && ok; i++) {
        const pdesc *d = &pl->p[i];
        float *w = xmalloc(sizeof(float) * (size_t)numel(d));
        values(d, w);
        if (!isq[i]) {
            uint16_t *u = xmalloc(sizeof(uint16_t) * (size_t)numel(d));
            for (int64_t k = 0; k < numel(d); k++) u[k] = qd_f32_to_bf16(w[k]);
            ok = fwrite(u, 2, (size_t)numel(d), f) == (size_t)numel(d);
            free(u);
            ti++;
        } else {
            for (int64_t k = 0; k < numel(d); k++) w[k] = bf16_round(w[k]);   /* the bf16 model's values */
            qlayer ql = {0};
            void *buf[5] = {0};
            for (int t = ti; t < o.n && o.t[t].param == i; t++) {
                buf[o.t[t].what - P_CODES] = calloc(1, (size_t)o.t[t].bytes);
                if (!buf[o.t[t].what - P_CODES]) die("out of memory");
            }
            ql.codes = buf[0]; ql.scale = buf[1]; ql.zp = buf[2]; ql.up = buf[3]; ql.down = buf[4];
            quantize(&lay[i], w, &ql);
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

/* ---- op trace ---- */

typedef struct {
    int op;             /* 0 linear, 1 attention */
    int nd;
    int64_t d[8];
    double s, t_end;    /* seconds; end time relative to the step's start */
} oprec;

typedef struct {
    oprec *r;
    int n, cap;
    double t0;
} trace_buf;

static const char *OPS[] = {"linear", "attention"};

static void on_op(void *user, const char *op, const int64_t *dims, int nd, double s) {
    trace_buf *t = user;
    int k = !strcmp(op, "linear") ? 0 : !strcmp(op, "attention") ? 1 : -1;
    if (k < 0 || nd > 8) return;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 4096;
        t->r = realloc(t->r, sizeof *t->r * (size_t)t->cap);
        if (!t->r) die("out of memory");
    }
    oprec *r = &t->r[t->n++];
    r->op = k;
    r->nd = nd;
    memcpy(r->d, dims, sizeof(int64_t) * (size_t)nd);
    r->s = s;
    r->t_end = qd_now() - t->t0;
}

static double op_flops(const oprec *r) {
    const int64_t *d = r->d;
    if (r->op == 0) return 2.0 * d[0] * d[1] * d[2];            /* tokens, in, out */
    return 4.0 * d[0] * d[1] * d[2] * d[3] * d[4];               /* B, heads, Lq, Lk, dh */
}

static void op_str(const oprec *r, char *buf, size_t n) {
    const int64_t *d = r->d;
    if (r->op == 0) snprintf(buf, n, "linear M%lld %lld -> %lld", (long long)d[0], (long long)d[1], (long long)d[2]);
    else snprintf(buf, n, "attention B%lld h%lld Lq%lld Lk%lld dh%lld", (long long)d[0], (long long)d[1],
                  (long long)d[2], (long long)d[3], (long long)d[4]);
}

typedef struct { oprec key; int count; double s, flops; } shape_sum;

static int same_shape(const oprec *a, const oprec *b) {
    return a->op == b->op && a->nd == b->nd && !memcmp(a->d, b->d, sizeof(int64_t) * (size_t)a->nd);
}

static int cmp_time_desc(const void *a, const void *b) {
    double x = ((const shape_sum *)a)->s, y = ((const shape_sum *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* ---- machine ---- */

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') { v = atol(line + kl + 1); break; }
    fclose(f);
    return v;
}

static double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8) return 0;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void wait_idle(double max_s) {
    double t0 = qd_now();
    int said = 0;
    for (;;) {
        double b0 = machine_busy_s();
        usleep(1000000);
        double busy = machine_busy_s() - b0;
        if (busy < 0.2) return;
        if (qd_now() - t0 > max_s) {
            printf("idle-wait   machine still busy (%.0f%% of a CPU) after %.0f s: timing anyway\n", 100 * busy, max_s);
            return;
        }
        if (!said) printf("idle-wait   other processes are using %.0f%% of a CPU; waiting...\n", 100 * busy);
        said = 1;
    }
}

/* ---- main ---- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_flux --config FILE --layout bf16|int8|int8-qmm|uint4-svd [--matmul exact|int8]\n"
            "                  [--double N] [--single N] [--image PX] [--text L] [--svd-rank R] [--dir DIR]\n"
            "                  [--trace OUT.json] [--threads N] [--warmup N] [--steps N] [--idle-wait S]\n"
            "                  [--reuse] [--keep] [--write-only]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *config = NULL, *dir = NULL, *trace_path = NULL, *layout = "bf16", *matmul = "exact";
    setvbuf(stdout, NULL, _IOLBF, 0);
    int image = 512, text = 512, threads = 0, warmup = 0, steps = 1, reuse = 0, keep = 0, write_only = 0;
    int nd = -1, ns = -1, svd_rank = 32;
    double idle_wait = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!strcmp(a, "--write-only")) { write_only = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--layout")) layout = v;
        else if (!strcmp(a, "--matmul")) matmul = v;
        else if (!strcmp(a, "--double")) nd = atoi(v);
        else if (!strcmp(a, "--single")) ns = atoi(v);
        else if (!strcmp(a, "--image")) image = atoi(v);
        else if (!strcmp(a, "--text")) text = atoi(v);
        else if (!strcmp(a, "--svd-rank")) svd_rank = atoi(v);
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--trace")) trace_path = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else usage();
    }
    if (!config || image < 16 || image % 16 || text < 1 || steps < 1 || warmup < 0) usage();
    qspec q = {0};
    if (!strcmp(layout, "int8")) { q.weights_dtype = "int8"; q.group_size = -1; }
    else if (!strcmp(layout, "int8-qmm")) { q.weights_dtype = "int8"; q.group_size = -1; q.qmm = 1; }
    else if (!strcmp(layout, "uint4-svd")) { q.weights_dtype = "uint4"; q.svd_rank = svd_rank; }
    else if (strcmp(layout, "bf16")) usage();
    int mm = !strcmp(matmul, "exact") ? QD_MATMUL_EXACT : !strcmp(matmul, "int8") ? QD_MATMUL_INT8 : -1;
    if (mm < 0) usage();
    char defdir[256];
    if (!dir) {
        snprintf(defdir, sizeof defdir, "/tmp/qd_bench_flux_%s", layout);
        dir = defdir;
    }

    qd_ctx *ctx = qd_ctx_new(threads);
    if (!ctx) die("no context");
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    if (nd >= 0) cJSON_ReplaceItemInObjectCaseSensitive(cfg, "num_layers", cJSON_CreateNumber(nd));
    if (ns >= 0) cJSON_ReplaceItemInObjectCaseSensitive(cfg, "num_single_layers", cJSON_CreateNumber(ns));
    nd = (int)qd_json_int(cfg, "num_layers", 19);
    ns = (int)qd_json_int(cfg, "num_single_layers", 38);
    int64_t heads = qd_json_int(cfg, "num_attention_heads", 24), dh = qd_json_int(cfg, "attention_head_dim", 128);
    int64_t D = heads * dh, in_ch = qd_json_int(cfg, "in_channels", 64);
    int64_t joint = qd_json_int(cfg, "joint_attention_dim", 4096), pooled = qd_json_int(cfg, "pooled_projection_dim", 768);
    int guidance = qd_json_bool(cfg, "guidance_embeds", 0);
    plist pl = {0};
    flux_params(D, dh, in_ch, in_ch, joint, pooled, guidance, nd, ns, &pl);
    int64_t nparams = 0, nblock[2] = {0, 0};
    for (int i = 0; i < pl.n; i++) {
        nparams += numel(&pl.p[i]);
        if (!strncmp(pl.p[i].name, "transformer_blocks.0.", 21)) nblock[0] += numel(&pl.p[i]);
        if (!strncmp(pl.p[i].name, "single_transformer_blocks.1.", 28)) nblock[1] += numel(&pl.p[i]);
    }

    char cfg_out[4200], w_out[4200];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    snprintf(w_out, sizeof w_out, "%s/diffusion_pytorch_model.safetensors", dir);
    struct stat sb;
    int have = stat(cfg_out, &sb) == 0 && stat(w_out, &sb) == 0;
    printf("config      %s: %d double + %d single blocks, %lld dims, %lld heads\n", config, nd, ns, (long long)D,
           (long long)heads);
    printf("parameters  %d tensors, %lld values (%.3f GB as bf16); per double block %lld, per single block %lld\n",
           pl.n, (long long)nparams, nparams * 2 / 1e9, (long long)nblock[0], (long long)nblock[1]);
    if (reuse && have) {
        printf("weights     reusing %s (%.3f GB on disk)\n", dir, (double)sb.st_size / 1e9);
    } else {
        if (mkdir(dir, 0755) && errno != EEXIST) die("mkdir %s: %s", dir, strerror(errno));
        char *txt = cJSON_Print(cfg);
        if (!txt) die("out of memory");
        write_text(cfg_out, txt);
        free(txt);
        double t0 = qd_now();
        uint64_t bytes = write_component(ctx, dir, &pl, &q);
        printf("weights     wrote %s (%s, %.3f GB) in %.1f s\n", dir, layout, bytes / 1e9, qd_now() - t0);
    }
    if (write_only) {
        free(pl.p);
        cJSON_Delete(cfg);
        qd_ctx_free(ctx);
        return 0;
    }
    int delete_weights = !keep && !reuse;

    qd_set_matmul(ctx, mm);
    double t0 = qd_now();
    qd_flux *m;
    if (qd_flux_load(ctx, dir, &m) != QD_OK) die("qd_flux_load: %s", qd_last_error(ctx));
    long hwm_load = status_kb("VmHWM");
    printf("load        %.2f s (qd_flux_load found every tensor it needs); VmHWM %.0f MB\n", qd_now() - t0,
           hwm_load / 1024.0);

    /* inputs: packed latents [1, N, 64] ~ N(0,1), T5 context [1, L, 4096] ~ N(0,1), pooled CLIP [1, 768] ~ N(0,1),
     * img_ids (0, row, col), txt_ids 0, sigma 0.5, guidance 3.5 (as FluxPipeline passes them) */
    int64_t side = image / 16, N = side * side, L = text;
    float *x = xmalloc(sizeof(float) * (size_t)(N * in_ch)), *out = xmalloc(sizeof(float) * (size_t)(N * in_ch));
    float *context = xmalloc(sizeof(float) * (size_t)(L * joint)), *pool = xmalloc(sizeof(float) * (size_t)pooled);
    float *img_ids = calloc((size_t)(N * 3), sizeof(float)), *txt_ids = calloc((size_t)(L * 3), sizeof(float));
    if (!img_ids || !txt_ids) die("out of memory");
    rng r = seeded("inputs", 42);
    for (int64_t i = 0; i < N * in_ch; i++) x[i] = gauss(&r);
    for (int64_t i = 0; i < L * joint; i++) context[i] = gauss(&r);
    for (int64_t i = 0; i < pooled; i++) pool[i] = gauss(&r);
    for (int64_t i = 0; i < N; i++) { img_ids[3 * i + 1] = (float)(i / side); img_ids[3 * i + 2] = (float)(i % side); }
    float ts = 0.5f, gd = 3.5f;

    for (int i = 0; i < warmup; i++) {
        t0 = qd_now();
        if (qd_flux_forward(ctx, m, x, 1, N, &ts, guidance ? &gd : NULL, pool, context, L, img_ids, txt_ids, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        printf("warm-up     %.2f s\n", qd_now() - t0);
    }
    trace_buf tb = {0}, best_tb = {0};
    ctx->trace = on_op;
    ctx->trace_user = &tb;
    double best = 1e30, best_others = 0, sum = 0;
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < steps; i++) {
        wait_idle(idle_wait);
        tb.n = 0;
        double busy0 = machine_busy_s(), self0 = self_cpu_s();
        t0 = tb.t0 = qd_now();
        if (qd_flux_forward(ctx, m, x, 1, N, &ts, guidance ? &gd : NULL, pool, context, L, img_ids, txt_ids, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        double s = qd_now() - t0;
        double others = ((machine_busy_s() - busy0) - (self_cpu_s() - self0)) / (s * ncpu);
        if (others < 0) others = 0;
        printf("step %d      %.3f s (other processes: %.0f%% of the CPUs)\n", i + 1, s, 100 * others);
        sum += s;
        if (s < best) {
            best = s;
            best_others = others;
            trace_buf t = best_tb;
            best_tb = tb;
            tb = t;
        }
    }
    free(tb.r);
    tb = best_tb;
    ctx->trace = NULL;
    int64_t nout = N * in_ch, bad = 0;
    double asum = 0;
    for (int64_t i = 0; i < nout; i++) {
        if (!isfinite(out[i])) bad++;
        else asum += fabs(out[i]);
    }
    if (bad) die("output has %lld non-finite values", (long long)bad);

    /* totals per op class and per shape; block spans from the trace's timestamps */
    double cls_s[2] = {0}, cls_f[2] = {0}, flops = 0, op_s = 0;
    int cls_n[2] = {0};
    shape_sum *ss = calloc((size_t)tb.n + 1, sizeof *ss);
    if (!ss) die("out of memory");
    int nss = 0;
    /* block spans: first modulation linear of a block (M=1, out 6D for double blocks
     * [two per block: norm1, norm1_context], 3D for single blocks) starts it. */
    double dstart = -1, sstart = -1, dend = 0, send = 0, prev_end = 0;
    int seen6 = 0;
    for (int i = 0; i < tb.n; i++) {
        const oprec *o = &tb.r[i];
        double f = op_flops(o);
        cls_s[o->op] += o->s; cls_f[o->op] += f; cls_n[o->op]++;
        flops += f;
        op_s += o->s;
        int k = 0;
        while (k < nss && !same_shape(&ss[k].key, o)) k++;
        if (k == nss) { ss[nss].key = *o; nss++; }
        ss[k].count++; ss[k].s += o->s; ss[k].flops += f;
        if (o->op == 0 && o->d[0] == 1 && o->d[2] == 6 * D && !seen6++) dstart = prev_end;
        if (o->op == 0 && o->d[0] == 1 && o->d[2] == 3 * D && sstart < 0) { sstart = prev_end; dend = prev_end; }
        if (o->op == 0 && o->d[0] == 1 && o->d[2] == 2 * D) send = prev_end;   /* norm_out */
        prev_end = o->t_end;
    }
    if (ns == 0) dend = send;
    qsort(ss, (size_t)nss, sizeof *ss, cmp_time_desc);
    double per_double = nd > 0 && dstart >= 0 ? (dend - dstart) / nd : 0;
    double per_single = ns > 0 && sstart >= 0 ? (send - sstart) / ns : 0;
    double rest = best - per_double * nd - per_single * ns;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm = status_kb("VmHWM"), anon = status_kb("RssAnon"), file = status_kb("RssFile");
    printf("\n== FLUX transformer forward: %dx%d image (%lld tokens) + %lld text tokens, batch 1, %s weights, "
           "matmul %s, %d threads, GEMM kernel %s ==\n",
           image, image, (long long)N, (long long)L, layout, matmul, qd_ctx_threads(ctx), qd_gemm_isa());
    printf("blocks      %d double + %d single (FLUX.1-dev has 19 + 38)\n", nd, ns);
    printf("s/step      %.3f (best of %d; mean %.3f; %d warm-up)\n", best, steps, sum / steps, warmup);
    printf("per block   double %.3f s, single %.3f s, outside the blocks %.3f s (from the trace's timestamps)\n",
           per_double, per_single, rest);
    printf("extrapolated to 19 double + 38 single: %.1f s/step (EXTRAPOLATED, not measured)\n",
           rest + 19 * per_double + 38 * per_single);
    printf("FLOPs       %.1f GFLOP per step (traced linear/attention)\n", flops / 1e9);
    printf("GFLOP/s     %.1f (best step), %.1f (inside traced ops)\n", flops / 1e9 / best, flops / 1e9 / op_s);
    printf("peak RSS    VmHWM %.0f MB (after load %.0f MB), ru_maxrss %.0f MB; now RssAnon %.0f MB, RssFile %.0f MB "
           "(mapped weights)\n",
           hwm / 1024.0, hwm_load / 1024.0, ru.ru_maxrss / 1024.0, anon / 1024.0, file / 1024.0);
    printf("output      finite, mean |out| %.4g\n", asum / nout);
    printf("contention  other processes used %.0f%% of the machine's CPU time during the fastest step%s\n\n",
           100 * best_others, best_others > 0.05 ? "  ** numbers are NOT clean **" : "");
    printf("per op class, fastest step (%% of its %.3f s):\n", best);
    printf("%-10s %6s %10s %7s %10s %9s\n", "op", "count", "seconds", "% step", "GFLOP", "GFLOP/s");
    for (int k = 0; k < 2; k++)
        printf("%-10s %6d %10.3f %6.1f%% %10.1f %9.1f\n", OPS[k], cls_n[k], cls_s[k], 100 * cls_s[k] / best,
               cls_f[k] / 1e9, cls_s[k] > 0 ? cls_f[k] / 1e9 / cls_s[k] : 0);
    printf("%-10s %6s %10.3f %6.1f%%   (RMS/layer norms, RoPE, GELU, modulation, copies: untraced)\n", "other", "",
           best - op_s, 100 * (best - op_s) / best);
    printf("\nmost expensive op shapes (fastest timed step):\n");
    printf("%6s %6s %9s %8s  %s\n", "% step", "count", "seconds", "GFLOP/s", "shape");
    for (int k = 0; k < nss && k < 10; k++) {
        char s[160];
        op_str(&ss[k].key, s, sizeof s);
        printf("%5.1f%% %6d %9.3f %8.1f  %s\n", 100 * ss[k].s / best, ss[k].count, ss[k].s,
               ss[k].s > 0 ? ss[k].flops / 1e9 / ss[k].s : 0, s);
    }

    if (trace_path) {
        FILE *f = fopen(trace_path, "w");
        if (!f) die("%s: %s", trace_path, strerror(errno));
        fprintf(f, "{\n\"config\": \"%s\", \"layout\": \"%s\", \"matmul\": \"%s\", \"double\": %d, \"single\": %d,\n",
                config, layout, matmul, nd, ns);
        fprintf(f, "\"image\": %d, \"text\": %d, \"batch\": 1, \"threads\": %d, \"isa\": \"%s\",\n", image, text,
                qd_ctx_threads(ctx), qd_gemm_isa());
        fprintf(f, "\"steps\": %d, \"step_seconds\": %.6f, \"best_seconds\": %.6f, \"per_double_s\": %.6f, "
                   "\"per_single_s\": %.6f, \"rest_s\": %.6f,\n",
                steps, sum / steps, best, per_double, per_single, rest);
        fprintf(f, "\"params\": %lld, \"gflop\": %.3f, \"op_seconds\": %.6f, \"ru_maxrss_kb\": %ld, \"vmhwm_kb\": %ld,\n",
                (long long)nparams, flops / 1e9, op_s, ru.ru_maxrss, hwm);
        fprintf(f, "\"other_processes_cpu_fraction\": %.4f,\n\"ops\": [\n", best_others);
        for (int i = 0; i < tb.n; i++) {
            const oprec *o = &tb.r[i];
            fprintf(f, "{\"op\": \"%s\", \"dims\": [", OPS[o->op]);
            for (int k = 0; k < o->nd; k++) fprintf(f, k ? ", %lld" : "%lld", (long long)o->d[k]);
            fprintf(f, "], \"s\": %.7f}%s\n", o->s, i + 1 < tb.n ? "," : "");
        }
        fprintf(f, "]\n}\n");
        if (fclose(f)) die("%s: write failed", trace_path);
        printf("\ntrace       %s (%d ops)\n", trace_path, tb.n);
    }

    qd_flux_free(m);
    if (delete_weights) {
        remove(w_out);
        printf("weights     deleted %s (use --keep or --reuse to keep them)\n", w_out);
    }
    free(ss); free(tb.r); free(pl.p);
    free(x); free(out); free(context); free(pool); free(img_ids); free(txt_ids);
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    return 0;
}
