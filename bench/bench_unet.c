/* One UNet2DConditionModel forward at real size, timed op by op.
 *
 *   bench_unet --config bench/configs/sd15_unet.json --latent 64 --batch 2
 *              [--dtype f16|bf16|f32] [--dir DIR] [--trace OUT.json] [--threads N]
 *              [--warmup N] [--steps N] [--max-steps N] [--idle-wait S] [--save IO.safetensors]
 *              [--reuse] [--keep] [--precision fp32|bf16]
 *
 * 1. Writes a diffusers "unet" folder into DIR: the config and a safetensors file with
 *    every parameter UNet2DConditionModel has for that config, derived here from the
 *    config the way diffusers names them (independently of the loader, so a successful
 *    qd_unet_load checks both). Weights are random but sane: weight matrices
 *    N(0, 1/fan_in), norm scales 1, biases N(0, 0.02^2), so activations stay O(1).
 *    With --reuse an existing folder is used as is.
 * 2. Loads it with qd_unet_load, runs --warmup untimed forwards (default 1 when the
 *    latent is <= 64, else 0: an SDXL-size forward takes a minute), then --steps timed
 *    forwards (default 1) with the op trace on. The machine may be shared: before each
 *    step it waits (up to --idle-wait s, default 300) for the other processes to go
 *    quiet, it measures the CPU time they took during the step, and while every step
 *    so far lost more than 5% that way it runs another (up to --max-steps, default
 *    steps + 2). The fastest step is the one reported.
 * 3. Reports seconds per step, FLOPs summed over the traced conv/linear/attention ops,
 *    GFLOP/s, peak RSS, time per op class and the most expensive op shapes, and writes
 *    the fastest timed step's trace (op, dims, seconds) as JSON for bench/torch_ops.py.
 * --save writes the inputs and qdiff's output (F32) for bench/torch_unet.py to check.
 * The weights file is deleted at exit unless --keep or --reuse is given. */
#include "models/unet.h"
#include "base/ctx.h"
#include "base/half.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tensor/gemm.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* ---- parameter list, named as diffusers names UNet2DConditionModel's state dict ---- */

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
    int kind;           /* 0 weight matrix, 1 norm scale, 2 bias */
} pdesc;

typedef struct {
    pdesc *p;
    int n, cap;
} plist;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_unet: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

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
    for (int i = 0; i < ndim; i++) d->shape[i] = shape[i];
}

static void p_linear(plist *l, const char *pre, int64_t out, int64_t in, int bias) {
    int64_t w[2] = {out, in}, b[1] = {out};
    add(l, 0, 2, w, "%s.weight", pre);
    if (bias) add(l, 2, 1, b, "%s.bias", pre);
}

static void p_conv(plist *l, const char *pre, int64_t out, int64_t in, int k) {
    int64_t w[4] = {out, in, k, k}, b[1] = {out};
    add(l, 0, 4, w, "%s.weight", pre);
    add(l, 2, 1, b, "%s.bias", pre);
}

static void p_norm(plist *l, const char *pre, int64_t n) {
    int64_t s[1] = {n};
    add(l, 1, 1, s, "%s.weight", pre);
    add(l, 2, 1, s, "%s.bias", pre);
}

/* ResnetBlock2D(in, out, temb_channels) */
static void p_resnet(plist *l, const char *pre, int64_t in, int64_t out, int64_t temb) {
    char n[128];
    snprintf(n, sizeof n, "%s.norm1", pre); p_norm(l, n, in);
    snprintf(n, sizeof n, "%s.conv1", pre); p_conv(l, n, out, in, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", pre); p_linear(l, n, out, temb, 1);
    snprintf(n, sizeof n, "%s.norm2", pre); p_norm(l, n, out);
    snprintf(n, sizeof n, "%s.conv2", pre); p_conv(l, n, out, out, 3);
    if (in != out) { snprintf(n, sizeof n, "%s.conv_shortcut", pre); p_conv(l, n, out, in, 1); }
}

/* Transformer2DModel(heads, C // heads, in_channels=C, num_layers=depth, cross_attention_dim) */
static void p_transformer(plist *l, const char *pre, int64_t C, int heads, int depth, int64_t cross, int linear) {
    char n[128];
    int64_t D = heads * (C / heads), F = 4 * D;
    snprintf(n, sizeof n, "%s.norm", pre); p_norm(l, n, C);
    snprintf(n, sizeof n, "%s.proj_in", pre);
    if (linear) p_linear(l, n, D, C, 1); else p_conv(l, n, D, C, 1);
    for (int i = 0; i < depth; i++) {
        char b[96];     /* names are < 80 characters; sized so no snprintf below can truncate */
        snprintf(b, sizeof b, "%s.transformer_blocks.%d", pre, i);
        for (int a = 1; a <= 2; a++) {
            int64_t kv = a == 1 ? D : cross;
            snprintf(n, sizeof n, "%s.norm%d", b, a); p_norm(l, n, D);
            snprintf(n, sizeof n, "%s.attn%d.to_q", b, a); p_linear(l, n, D, D, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_k", b, a); p_linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_v", b, a); p_linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_out.0", b, a); p_linear(l, n, D, D, 1);
        }
        snprintf(n, sizeof n, "%s.norm3", b); p_norm(l, n, D);
        snprintf(n, sizeof n, "%s.ff.net.0.proj", b); p_linear(l, n, 2 * F, D, 1);   /* GEGLU */
        snprintf(n, sizeof n, "%s.ff.net.2", b); p_linear(l, n, D, F, 1);
    }
    snprintf(n, sizeof n, "%s.proj_out", pre);
    if (linear) p_linear(l, n, C, D, 1); else p_conv(l, n, C, D, 1);
}

#define MAXB 8

/* An int or a list of nb ints (diffusers repeats a scalar). */
static void ints(const cJSON *cfg, const char *key, int nb, int def, int *out) {
    int n = qd_json_ints(cfg, key, out, nb);
    if (n == 0) for (int i = 0; i < nb; i++) out[i] = def;
    else if (n != nb) die("config: %s must be an int or a list of %d ints", key, nb);
}

static int is_set(const cJSON *cfg, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return it && !cJSON_IsNull(it);
}

/* Mirrors UNet2DConditionModel.__init__ (diffusers 0.32) for the SD1.x/SDXL options. */
static void unet_params(const cJSON *cfg, plist *l) {
    const char *down[MAXB], *up[MAXB];
    int boc[MAXB], nb = qd_json_ints(cfg, "block_out_channels", boc, MAXB);
    if (nb <= 0 || qd_json_strs(cfg, "down_block_types", down, MAXB) != nb ||
        qd_json_strs(cfg, "up_block_types", up, MAXB) != nb)
        die("config: block_out_channels, down_block_types and up_block_types must be lists of one length");
    int layers[MAXB], heads[MAXB], cross[MAXB], tl[MAXB];
    ints(cfg, "layers_per_block", nb, 2, layers);
    /* attention_head_dim is the head COUNT in these configs unless num_attention_heads is set */
    ints(cfg, is_set(cfg, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim", nb, 8, heads);
    ints(cfg, "cross_attention_dim", nb, 1280, cross);
    ints(cfg, "transformer_layers_per_block", nb, 1, tl);
    if (is_set(cfg, "reverse_transformer_layers_per_block"))
        die("config: reverse_transformer_layers_per_block not supported by this generator");
    int linear = qd_json_bool(cfg, "use_linear_projection", 0);
    int64_t in_ch = qd_json_int(cfg, "in_channels", 4), out_ch = qd_json_int(cfg, "out_channels", 4);
    int kin = qd_json_int(cfg, "conv_in_kernel", 3), kout = qd_json_int(cfg, "conv_out_kernel", 3);
    int64_t T = qd_json_int(cfg, "time_embedding_dim", 4 * boc[0]);
    const char *mid = qd_json_str(cfg, "mid_block_type", "UNetMidBlock2DCrossAttn");
    char n[128];

    p_conv(l, "conv_in", boc[0], in_ch, kin);
    p_linear(l, "time_embedding.linear_1", T, boc[0], 1);   /* Timesteps(boc[0]) -> TimestepEmbedding */
    p_linear(l, "time_embedding.linear_2", T, T, 1);
    const char *add_type = qd_json_str(cfg, "addition_embed_type", NULL);
    if (add_type) {
        if (strcmp(add_type, "text_time")) die("config: addition_embed_type %s not supported", add_type);
        int64_t proj = qd_json_int(cfg, "projection_class_embeddings_input_dim", 0);
        p_linear(l, "add_embedding.linear_1", T, proj, 1);
        p_linear(l, "add_embedding.linear_2", T, T, 1);
    }
    int64_t out = boc[0];
    for (int i = 0; i < nb; i++) {
        int64_t in = out;
        out = boc[i];
        int xattn = !strcmp(down[i], "CrossAttnDownBlock2D");
        if (!xattn && strcmp(down[i], "DownBlock2D")) die("config: %s not supported", down[i]);
        for (int j = 0; j < layers[i]; j++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", i, j);
            p_resnet(l, n, j ? out : in, out, T);
            if (xattn) {
                snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", i, j);
                p_transformer(l, n, out, heads[i], tl[i], cross[i], linear);
            }
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i);
            p_conv(l, n, out, out, 3);
        }
    }
    if (mid && strcmp(mid, "UNetMidBlock2DCrossAttn")) die("config: mid_block_type %s not supported", mid);
    if (mid) {
        int64_t c = boc[nb - 1];
        p_resnet(l, "mid_block.resnets.0", c, c, T);
        p_transformer(l, "mid_block.attentions.0", c, heads[nb - 1], tl[nb - 1], cross[nb - 1], linear);
        p_resnet(l, "mid_block.resnets.1", c, c, T);
    }
    /* up blocks run on the reversed lists */
    out = boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        int r = nb - 1 - i;
        int64_t prev = out, in = boc[i + 1 < nb ? nb - 2 - i : 0];
        out = boc[r];
        int xattn = !strcmp(up[i], "CrossAttnUpBlock2D");
        if (!xattn && strcmp(up[i], "UpBlock2D")) die("config: %s not supported", up[i]);
        int nl = layers[r] + 1;
        for (int j = 0; j < nl; j++) {
            int64_t skip = j == nl - 1 ? in : out, rin = j ? out : prev;
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, j);
            p_resnet(l, n, rin + skip, out, T);
            if (xattn) {
                snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, j);
                p_transformer(l, n, out, heads[r], tl[r], cross[r], linear);
            }
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i);
            p_conv(l, n, out, out, 3);
        }
    }
    p_norm(l, "conv_norm_out", boc[0]);
    p_conv(l, "conv_out", out_ch, boc[0], kout);
}

/* ---- random weights, streamed to disk ---- */

static uint64_t rng_state;
static inline uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* Approximately N(0, 1): Irwin-Hall sum of four 16-bit uniforms, rescaled. */
static inline float gauss(void) {
    uint64_t r = splitmix64();
    float s = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) + (float)(r >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

static int64_t numel(const pdesc *d) {
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= d->shape[i];
    return n;
}

static int cmp_name(const void *a, const void *b) { return strcmp(((const pdesc *)a)->name, ((const pdesc *)b)->name); }

static void write_weights(const plist *l, qd_dtype dt, const char *path) {
    size_t es = qd_dtype_size(dt);
    /* header */
    size_t cap = 1024 + (size_t)l->n * 200, len = 0;
    char *h = malloc(cap);
    if (!h) die("out of memory");
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"qdiff bench_unet\"}");
    uint64_t off = 0;
    for (int i = 0; i < l->n; i++) {
        const pdesc *d = &l->p[i];
        uint64_t bytes = (uint64_t)numel(d) * es;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", d->name, qd_dtype_name(dt));
        for (int k = 0; k < d->ndim; k++)
            len += (size_t)snprintf(h + len, cap - len, k ? ",%lld" : "%lld", (long long)d->shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';

    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("%s: %s", tmp, strerror(errno));
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(lb, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    free(h);
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(sizeof(float) * CHUNK);
    if (!buf) die("out of memory");
    rng_state = 0x5eed;
    for (int i = 0; i < l->n && ok; i++) {
        const pdesc *d = &l->p[i];
        int64_t n = numel(d), fan_in = n / d->shape[0];
        float stdev = d->kind == 0 ? 1.0f / sqrtf((float)fan_in) : 0.02f;
        for (int64_t o = 0; o < n && ok; o += CHUNK) {
            int64_t m = n - o < CHUNK ? n - o : CHUNK;
            for (int64_t k = 0; k < m; k++) buf[k] = d->kind == 1 ? 1.0f : stdev * gauss();
            if (dt == QD_F16) {
                uint16_t *u = (uint16_t *)buf;
                for (int64_t k = 0; k < m; k++) u[k] = qd_f32_to_f16(buf[k]);   /* in place: u[k] trails buf[k] */
            } else if (dt == QD_BF16) {
                uint16_t *u = (uint16_t *)buf;
                for (int64_t k = 0; k < m; k++) u[k] = qd_f32_to_bf16(buf[k]);
            }
            ok = fwrite(buf, es, (size_t)m, f) == (size_t)m;
        }
    }
    free(buf);
    if (fclose(f) != 0) ok = 0;
    if (!ok) { remove(tmp); die("%s: write failed (disk full?)", tmp); }
    if (rename(tmp, path)) die("rename %s: %s", tmp, strerror(errno));
}

/* ---- op trace ---- */

typedef struct {
    int op;             /* 0 conv2d, 1 linear, 2 attention */
    int nd;
    int64_t d[12];
    double s;
} oprec;

typedef struct {
    oprec *r;
    int n, cap;
} trace_buf;

static const char *OPS[] = {"conv2d", "linear", "attention"};

static void on_op(void *user, const char *op, const int64_t *dims, int nd, double s) {
    trace_buf *t = user;
    int k = !strcmp(op, "conv2d") ? 0 : !strcmp(op, "linear") ? 1 : !strcmp(op, "attention") ? 2 : -1;
    if (k < 0 || nd > 12) return;
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
}

static double op_flops(const oprec *r) {
    const int64_t *d = r->d;
    switch (r->op) {
    case 0: {   /* B, Cin, H, W, Cout, kh, kw, stride, pt, pb, pl, pr */
        int64_t Ho = (d[2] + d[8] + d[9] - d[5]) / d[7] + 1, Wo = (d[3] + d[10] + d[11] - d[6]) / d[7] + 1;
        return 2.0 * d[0] * d[4] * Ho * Wo * d[1] * d[5] * d[6];
    }
    case 1: return 2.0 * d[0] * d[1] * d[2];                   /* tokens, in, out */
    default: return 4.0 * d[0] * d[1] * d[2] * d[3] * d[4];    /* B, heads, Lq, Lk, dh */
    }
}

static void op_str(const oprec *r, char *buf, size_t n) {
    const int64_t *d = r->d;
    if (r->op == 0)
        snprintf(buf, n, "conv2d B%lld %lldx%lldx%lld -> %lld k%lld s%lld p%lld%s", (long long)d[0], (long long)d[1],
                 (long long)d[2], (long long)d[3], (long long)d[4], (long long)d[5], (long long)d[7], (long long)d[8],
                 (d[8] == d[9] && d[9] == d[10] && d[10] == d[11]) ? "" : "(asym)");
    else if (r->op == 1)
        snprintf(buf, n, "linear M%lld %lld -> %lld", (long long)d[0], (long long)d[1], (long long)d[2]);
    else
        snprintf(buf, n, "attention B%lld h%lld Lq%lld Lk%lld dh%lld", (long long)d[0], (long long)d[1],
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

/* ---- memory ---- */

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

/* Busy CPU seconds of the whole machine (/proc/stat) and of this process: the
 * difference over a timed step is what other processes took from the benchmark. */
static double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8) return 0;
    /* user nice system [idle iowait] irq softirq steal (guest time is inside user) */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Wait (at most max_s seconds) until the machine has been idle for a second: less than
 * a fifth of a CPU busy. */
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
            "usage: bench_unet --config FILE [--latent N] [--batch N] [--dtype f16|bf16|f32] [--dir DIR]\n"
            "                  [--trace OUT.json] [--threads N] [--warmup N] [--steps N] [--max-steps N]\n"
            "                  [--idle-wait SECONDS] [--save IO.safetensors] [--reuse] [--keep]\n"
            "                  [--precision fp32|bf16]\n");
    exit(2);
}

static void mkdirs(const char *path) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') { *s = 0; mkdir(p, 0755); *s = '/'; }
    if (mkdir(p, 0755) && errno != EEXIST) die("mkdir %s: %s", p, strerror(errno));
}

int main(int argc, char **argv) {
    const char *config = NULL, *dir = NULL, *trace_path = NULL, *save_path = NULL, *dtype = "f16", *precision = "fp32";
    setvbuf(stdout, NULL, _IOLBF, 0);
    int latent = 64, batch = 2, threads = 0, warmup = -1, steps = 1, max_steps = -1, reuse = 0, keep = 0;
    double idle_wait = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--latent")) latent = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--trace")) trace_path = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--max-steps")) max_steps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else if (!strcmp(a, "--save")) save_path = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else usage();
    }
    if (!config || latent < 8 || batch < 1 || steps < 1) usage();
    qd_dtype dt = !strcmp(dtype, "f16") ? QD_F16 : !strcmp(dtype, "bf16") ? QD_BF16 : !strcmp(dtype, "f32") ? QD_F32
                                                                                                                   : QD_DTYPE_COUNT;
    if (dt == QD_DTYPE_COUNT) usage();
    if (warmup < 0) warmup = latent <= 64 ? 1 : 0;
    if (max_steps < steps) max_steps = steps + 2;
    char defdir[256];
    if (!dir) {
        const char *base = strrchr(config, '/') ? strrchr(config, '/') + 1 : config;
        snprintf(defdir, sizeof defdir, "/tmp/qd_bench_%.*s_%s", (int)strcspn(base, "."), base, dtype);
        dir = defdir;
    }

    qd_ctx *ctx = qd_ctx_new(threads);
    if (strcmp(precision, "fp32") && strcmp(precision, "bf16")) usage();
    qd_set_precision(ctx, !strcmp(precision, "bf16") ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
    if (!ctx) die("no context");
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    plist pl = {0};
    unet_params(cfg, &pl);
    qsort(pl.p, (size_t)pl.n, sizeof *pl.p, cmp_name);
    int64_t nparams = 0;
    for (int i = 0; i < pl.n; i++) nparams += numel(&pl.p[i]);
    uint64_t wbytes = (uint64_t)nparams * qd_dtype_size(dt);

    char cfg_out[4200], w_out[4200];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    snprintf(w_out, sizeof w_out, "%s/diffusion_pytorch_model.safetensors", dir);
    struct stat sb;
    int have = stat(cfg_out, &sb) == 0 && stat(w_out, &sb) == 0;
    printf("config      %s\n", config);
    printf("parameters  %d tensors, %lld values (%.3f GB as %s)\n", pl.n, (long long)nparams, wbytes / 1e9, dtype);
    if (reuse && have) {
        printf("weights     reusing %s\n", dir);
    } else {
        mkdirs(dir);
        struct statvfs vs;
        if (statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < wbytes + (1ull << 30))
            die("%s: %.1f GB free, need %.1f GB", dir, (double)vs.f_bavail * vs.f_frsize / 1e9, wbytes / 1e9 + 1);
        char *text = cJSON_Print(cfg);
        FILE *f = fopen(cfg_out, "w");
        if (!f || !text || fputs(text, f) < 0 || fclose(f)) die("%s: write failed", cfg_out);
        free(text);
        double t0 = qd_now();
        write_weights(&pl, dt, w_out);
        printf("weights     wrote %s in %.1f s\n", dir, qd_now() - t0);
    }
    int delete_weights = !keep && !reuse;

    double t0 = qd_now();
    qd_unet *u;
    if (qd_unet_load(ctx, dir, &u) != QD_OK) die("qd_unet_load: %s", qd_last_error(ctx));
    printf("load        %.2f s (qd_unet_load found every tensor it needs)\n", qd_now() - t0);
    const qd_unet_info *info = qd_unet_get_info(u);

    /* inputs: x ~ N(0,1), t = 500, context ~ N(0,1) [B, 77, cross], SDXL text_embeds ~ N(0,1), time_ids */
    int64_t B = batch, H = latent, W = latent, L = 77, C = info->in_channels;
    int64_t pooled = info->addition_time_embed_dim ? info->projection_class_embeddings_input_dim -
                                                     6 * info->addition_time_embed_dim : 0;
    float *x = malloc(sizeof(float) * (size_t)(B * C * H * W));
    float *out = malloc(sizeof(float) * (size_t)(B * info->out_channels * H * W));
    float *context = malloc(sizeof(float) * (size_t)(B * L * info->cross_attention_dim));
    float *temb = pooled ? malloc(sizeof(float) * (size_t)(B * pooled)) : NULL;
    float tids[6 * 16], ts[16];
    if (!x || !out || !context || (pooled && !temb) || B > 16) die("out of memory or batch > 16");
    rng_state = 42;
    for (int64_t i = 0; i < B * C * H * W; i++) x[i] = gauss();
    for (int64_t i = 0; i < B * L * info->cross_attention_dim; i++) context[i] = gauss();
    for (int64_t i = 0; i < B * pooled; i++) temb[i] = gauss();
    for (int64_t b = 0; b < B; b++) {
        float px = (float)(8 * latent);
        float id[6] = {px, px, 0, 0, px, px};   /* original size, crop top-left, target size */
        memcpy(tids + 6 * b, id, sizeof id);
        ts[b] = 500.0f;
    }

    for (int i = 0; i < warmup; i++) {
        t0 = qd_now();
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, context, L, temb, pooled ? tids : NULL, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        printf("warm-up     %.2f s\n", qd_now() - t0);
    }
    trace_buf tb = {0};
    ctx->trace = on_op;
    ctx->trace_user = &tb;
    double best = 1e30, best_others = 0, sum = 0;
    int done = 0;
    trace_buf best_tb = {0};   /* the fastest step's trace: the least disturbed by other processes */
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN);
    /* This machine may be shared: wait for it to be idle before each step, measure what
     * other processes took during the step, and (up to --max-steps) run more steps while
     * every step so far was disturbed by more than 5%. */
    for (int i = 0; i < max_steps && (i < steps || best_others > 0.05); i++) {
        wait_idle(idle_wait);
        tb.n = 0;
        double busy0 = machine_busy_s(), self0 = self_cpu_s();
        t0 = qd_now();
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, context, L, temb, pooled ? tids : NULL, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        double s = qd_now() - t0;
        double others = ((machine_busy_s() - busy0) - (self_cpu_s() - self0)) / (s * ncpu);
        if (others < 0) others = 0;
        printf("step %d      %.3f s (other processes: %.0f%% of the CPUs)\n", i + 1, s, 100 * others);
        sum += s;
        done++;
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
    double others_frac = best_others;
    int64_t nout = B * info->out_channels * H * W, bad = 0;
    double asum = 0;
    for (int64_t i = 0; i < nout; i++) {
        if (!isfinite(out[i])) bad++;
        else asum += fabs(out[i]);
    }
    if (bad) die("output has %lld non-finite values", (long long)bad);

    /* totals per op class, shapes */
    double cls_s[3] = {0}, cls_f[3] = {0}, flops = 0, op_s = 0;
    int cls_n[3] = {0};
    shape_sum *ss = calloc((size_t)tb.n + 1, sizeof *ss);
    int nss = 0;
    for (int i = 0; i < tb.n; i++) {
        const oprec *r = &tb.r[i];
        double f = op_flops(r);
        cls_s[r->op] += r->s; cls_f[r->op] += f; cls_n[r->op]++;
        flops += f;
        op_s += r->s;
        int k = 0;
        while (k < nss && !same_shape(&ss[k].key, r)) k++;
        if (k == nss) { ss[nss].key = *r; nss++; }
        ss[k].count++; ss[k].s += r->s; ss[k].flops += f;
    }
    double step_s = sum / done;
    qsort(ss, (size_t)nss, sizeof *ss, cmp_time_desc);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm = status_kb("VmHWM"), anon = status_kb("RssAnon"), file = status_kb("RssFile");
    printf("\n== UNet forward: latent %dx%d, batch %d, %s weights, %s math, %d threads, GEMM kernel %s ==\n", latent, latent,
           batch, dtype, precision, qd_ctx_threads(ctx), qd_gemm_isa());
    printf("s/step      %.3f (best of %d; mean %.3f; %d warm-up)\n", best, done, step_s, warmup);
    printf("FLOPs       %.1f GFLOP per step (traced conv/linear/attention)\n", flops / 1e9);
    printf("GFLOP/s     %.1f (best step), %.1f (mean step), %.1f (inside traced ops)\n", flops / 1e9 / best,
           flops / 1e9 / step_s, flops / 1e9 / op_s);
    printf("peak RSS    %.0f MB (ru_maxrss), VmHWM %.0f MB; now RssAnon %.0f MB, RssFile %.0f MB (mapped weights)\n",
           ru.ru_maxrss / 1024.0, hwm / 1024.0, anon / 1024.0, file / 1024.0);
    printf("output      finite, mean |out| %.4g\n", asum / nout);
    printf("contention  other processes used %.0f%% of the machine's CPU time during the fastest step%s\n\n",
           100 * others_frac, others_frac > 0.05 ? "  ** numbers are NOT clean: rerun on an idle machine **" : "");
    printf("per op class, fastest step (%% of its %.3f s):\n", best);
    printf("%-10s %6s %10s %7s %10s %9s\n", "op", "count", "seconds", "% step", "GFLOP", "GFLOP/s");
    for (int k = 0; k < 3; k++)
        printf("%-10s %6d %10.3f %6.1f%% %10.1f %9.1f\n", OPS[k], cls_n[k], cls_s[k], 100 * cls_s[k] / best,
               cls_f[k] / 1e9, cls_s[k] > 0 ? cls_f[k] / 1e9 / cls_s[k] : 0);
    printf("%-10s %6s %10.3f %6.1f%%   (group/layer norm, GEGLU, SiLU, adds, copies: untraced)\n", "other", "",
           best - op_s, 100 * (best - op_s) / best);
    printf("\nmost expensive op shapes (fastest timed step):\n");
    printf("%6s %6s %9s %8s  %s\n", "% step", "count", "seconds", "GFLOP/s", "shape");
    for (int k = 0; k < nss && k < 10; k++) {
        char s[160];
        op_str(&ss[k].key, s, sizeof s);
        printf("%5.1f%% %6d %9.3f %8.1f  %s\n", 100 * ss[k].s / best, ss[k].count, ss[k].s,
               ss[k].flops / 1e9 / ss[k].s, s);
    }

    if (trace_path) {
        FILE *f = fopen(trace_path, "w");
        if (!f) die("%s: %s", trace_path, strerror(errno));
        struct utsname un;
        uname(&un);
        fprintf(f, "{\n\"config\": \"%s\", \"latent\": %d, \"batch\": %d, \"dtype\": \"%s\", \"threads\": %d,\n",
                config, latent, batch, dtype, qd_ctx_threads(ctx));
        fprintf(f, "\"isa\": \"%s\", \"warmup\": %d, \"steps\": %d, \"step_seconds\": %.6f, \"best_seconds\": %.6f,\n",
                qd_gemm_isa(), warmup, done, step_s, best);
        fprintf(f, "\"params\": %lld, \"gflop\": %.3f, \"op_seconds\": %.6f, \"ru_maxrss_kb\": %ld, \"vmhwm_kb\": %ld,\n",
                (long long)nparams, flops / 1e9, op_s, ru.ru_maxrss, hwm);
        fprintf(f, "\"other_processes_cpu_fraction\": %.4f,\n", others_frac);
        fprintf(f, "\"ops\": [\n");
        for (int i = 0; i < tb.n; i++) {
            const oprec *r = &tb.r[i];
            fprintf(f, "{\"op\": \"%s\", \"dims\": [", OPS[r->op]);
            for (int k = 0; k < r->nd; k++) fprintf(f, k ? ", %lld" : "%lld", (long long)r->d[k]);
            fprintf(f, "], \"s\": %.7f}%s\n", r->s, i + 1 < tb.n ? "," : "");
        }
        fprintf(f, "]\n}\n");
        if (fclose(f)) die("%s: write failed", trace_path);
        printf("\ntrace       %s (%d ops)\n", trace_path, tb.n);
    }

    if (save_path) {
        qd_st_out io[6] = {
            {"x", QD_F32, 4, {B, C, H, W}, x},
            {"timestep", QD_F32, 1, {B}, ts},
            {"context", QD_F32, 3, {B, L, info->cross_attention_dim}, context},
            {"out", QD_F32, 4, {B, info->out_channels, H, W}, out},
            {"text_embeds", QD_F32, 2, {B, pooled}, temb},
            {"time_ids", QD_F32, 2, {B, 6}, tids},
        };
        if (qd_st_write(ctx, save_path, io, pooled ? 6 : 4, NULL) != QD_OK) die("%s", qd_last_error(ctx));
        printf("saved       %s (inputs and output)\n", save_path);
    }

    qd_unet_free(u);
    if (delete_weights) {
        remove(w_out);
        printf("weights     deleted %s (use --keep or --reuse to keep them)\n", w_out);
    }
    free(ss); free(tb.r); free(pl.p);
    free(x); free(out); free(context); free(temb);
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    return 0;
}
