/* qdiff quantize at real size (issue 5, "Done when"): a random SD1.5 UNet written
 * as an fp16 diffusers folder (the same parameter list and values as bench_sdnq.c,
 * whose generator this file copies), then quantized by qd_quantize in a fresh
 * process per setting, with the peak resident set (VmHWM, mapped input pages
 * included) against the model's size, wall and CPU time, and bytes in/out.
 *
 *   bench_quantize [--config bench/configs/sd15_unet.json] [--dir /tmp/qd_bench_quantize]
 *                  [--threads N] [--keep] [--reuse] [--settings int8,uint4-svd,int8-conv]
 *
 * --reuse keeps an input folder already written by an earlier --keep run.
 *
 * Settings: int8 (sdnq defaults: Linear layers, auto group size, default skip list),
 * uint4-svd (uint4 + SVD rank 32, 8 steps), int8-conv (int8 with --quant-conv: the
 * largest tensors, 1280x2560x3x3 convs, are then quantized too). */
#include "qdiff.h"
#include "base/ctx.h"
#include "base/half.h"
#include "io/json.h"
#include "io/safetensors_stream.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_quantize: ");
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

/* ---- the UNet2DConditionModel parameter list and values (copied from bench_sdnq.c) ---- */

enum { K_MATRIX, K_NORM, K_BIAS };

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
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

static void linear(plist *l, const char *pre, int64_t out, int64_t in, int bias) {
    int64_t w[2] = {out, in}, b[1] = {out};
    add(l, K_MATRIX, 2, w, "%s.weight", pre);
    if (bias) add(l, K_BIAS, 1, b, "%s.bias", pre);
}

static void conv(plist *l, const char *pre, int64_t out, int64_t in, int k) {
    int64_t w[4] = {out, in, k, k}, b[1] = {out};
    add(l, K_MATRIX, 4, w, "%s.weight", pre);
    add(l, K_BIAS, 1, b, "%s.bias", pre);
}

static void norm(plist *l, const char *pre, int64_t n) {
    int64_t s[1] = {n};
    add(l, K_NORM, 1, s, "%s.weight", pre);
    add(l, K_BIAS, 1, s, "%s.bias", pre);
}

static void resnet(plist *l, const char *pre, int64_t in, int64_t out, int64_t temb) {
    char n[128];
    snprintf(n, sizeof n, "%s.norm1", pre); norm(l, n, in);
    snprintf(n, sizeof n, "%s.conv1", pre); conv(l, n, out, in, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", pre); linear(l, n, out, temb, 1);
    snprintf(n, sizeof n, "%s.norm2", pre); norm(l, n, out);
    snprintf(n, sizeof n, "%s.conv2", pre); conv(l, n, out, out, 3);
    if (in != out) { snprintf(n, sizeof n, "%s.conv_shortcut", pre); conv(l, n, out, in, 1); }
}

static void transformer(plist *l, const char *pre, int64_t C, int depth, int64_t cross, int lin) {
    char n[128], b[128];
    int64_t D = C, F = 4 * D;
    snprintf(n, sizeof n, "%s.norm", pre); norm(l, n, C);
    snprintf(n, sizeof n, "%s.proj_in", pre);
    if (lin) linear(l, n, D, C, 1); else conv(l, n, D, C, 1);
    for (int i = 0; i < depth; i++) {
        snprintf(b, sizeof b, "%s.transformer_blocks.%d", pre, i);
        for (int a = 1; a <= 2; a++) {
            int64_t kv = a == 1 ? D : cross;
            snprintf(n, sizeof n, "%s.norm%d", b, a); norm(l, n, D);
            snprintf(n, sizeof n, "%s.attn%d.to_q", b, a); linear(l, n, D, D, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_k", b, a); linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_v", b, a); linear(l, n, D, kv, 0);
            snprintf(n, sizeof n, "%s.attn%d.to_out.0", b, a); linear(l, n, D, D, 1);
        }
        snprintf(n, sizeof n, "%s.norm3", b); norm(l, n, D);
        snprintf(n, sizeof n, "%s.ff.net.0.proj", b); linear(l, n, 2 * F, D, 1);
        snprintf(n, sizeof n, "%s.ff.net.2", b); linear(l, n, D, F, 1);
    }
    snprintf(n, sizeof n, "%s.proj_out", pre);
    if (lin) linear(l, n, C, D, 1); else conv(l, n, C, D, 1);
}

#define MAXB 8

static void unet_params(const cJSON *cfg, plist *l) {
    const char *down[MAXB], *up[MAXB];
    int boc[MAXB], nb = qd_json_ints(cfg, "block_out_channels", boc, MAXB);
    if (nb <= 0 || qd_json_strs(cfg, "down_block_types", down, MAXB) != nb ||
        qd_json_strs(cfg, "up_block_types", up, MAXB) != nb)
        die("config: block_out_channels, down_block_types and up_block_types must be lists of one length");
    int layers[MAXB], cross[MAXB], tl[MAXB];
    if (qd_json_ints(cfg, "layers_per_block", layers, nb) <= 0) for (int i = 0; i < nb; i++) layers[i] = 2;
    int nc = qd_json_ints(cfg, "cross_attention_dim", cross, nb);
    if (nc == 0) for (int i = 0; i < nb; i++) cross[i] = 1280;
    if (qd_json_ints(cfg, "transformer_layers_per_block", tl, nb) <= 0) for (int i = 0; i < nb; i++) tl[i] = 1;
    if (cJSON_GetObjectItemCaseSensitive(cfg, "addition_embed_type") &&
        !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cfg, "addition_embed_type")))
        die("config: this benchmark writes SD1.x UNets (no addition_embed_type)");
    int lin = qd_json_bool(cfg, "use_linear_projection", 0);
    int64_t in_ch = qd_json_int(cfg, "in_channels", 4), out_ch = qd_json_int(cfg, "out_channels", 4);
    int64_t T = 4 * boc[0];
    char n[128];
    conv(l, "conv_in", boc[0], in_ch, 3);
    linear(l, "time_embedding.linear_1", T, boc[0], 1);
    linear(l, "time_embedding.linear_2", T, T, 1);
    int64_t out = boc[0];
    for (int i = 0; i < nb; i++) {
        int64_t in = out;
        out = boc[i];
        int xattn = !strcmp(down[i], "CrossAttnDownBlock2D");
        for (int j = 0; j < layers[i]; j++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", i, j);
            resnet(l, n, j ? out : in, out, T);
            if (xattn) { snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", i, j); transformer(l, n, out, tl[i], cross[i], lin); }
        }
        if (i < nb - 1) { snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i); conv(l, n, out, out, 3); }
    }
    int64_t c = boc[nb - 1];
    resnet(l, "mid_block.resnets.0", c, c, T);
    transformer(l, "mid_block.attentions.0", c, tl[nb - 1], cross[nb - 1], lin);
    resnet(l, "mid_block.resnets.1", c, c, T);
    out = boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        int r = nb - 1 - i;
        int64_t prev = out, in = boc[i + 1 < nb ? nb - 2 - i : 0];
        out = boc[r];
        int xattn = !strcmp(up[i], "CrossAttnUpBlock2D");
        for (int j = 0; j < layers[r] + 1; j++) {
            int64_t skip = j == layers[r] ? in : out, rin = j ? out : prev;
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, j);
            resnet(l, n, rin + skip, out, T);
            if (xattn) { snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, j); transformer(l, n, out, tl[r], cross[r], lin); }
        }
        if (i < nb - 1) { snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i); conv(l, n, out, out, 3); }
    }
    norm(l, "conv_norm_out", boc[0]);
    conv(l, "conv_out", out_ch, boc[0], 3);
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

/* The fp32 values of a parameter, identical in every model written. */
static void values(const pdesc *d, float *dst) {
    rng r = seeded(d->name, 0);
    int64_t n = numel(d);
    float sd = d->kind == K_MATRIX ? 1.0f / sqrtf((float)(n / d->shape[0])) : 0.02f;
    for (int64_t i = 0; i < n; i++) dst[i] = d->kind == K_NORM ? 1.0f : sd * gauss(&r);
}

/* ---- the input folder ---- */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) die("%s: %s", path, strerror(errno));
}

/* model_index.json + unet/{config.json, diffusion_pytorch_model.safetensors} in fp16,
 * streamed tensor by tensor. Returns the weights' bytes. */
static uint64_t write_input(qd_ctx *ctx, const char *dir, const char *config_path, const cJSON *cfg) {
    char path[4200], unet[4200];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    write_text(path, "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"unet\": [\n    \"diffusers\",\n"
                     "    \"UNet2DConditionModel\"\n  ]\n}");
    snprintf(unet, sizeof unet, "%s/unet", dir);
    mkdir(unet, 0755);
    char *text;
    size_t len;
    FILE *f = fopen(config_path, "rb");
    if (!f) die("%s: %s", config_path, strerror(errno));
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    text = xmalloc(len + 1);
    if (fread(text, 1, len, f) != len) die("%s: read failed", config_path);
    text[len] = 0;
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", unet);
    write_text(path, text);
    free(text);
    plist pl = {0};
    unet_params(cfg, &pl);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", unet);
    qd_st_stream *s;
    if (qd_st_stream_open(ctx, path, &s) != QD_OK) die("%s", qd_last_error(ctx));
    uint64_t bytes = 0;
    for (int i = 0; i < pl.n; i++) {
        const pdesc *d = &pl.p[i];
        int64_t n = numel(d);
        float *w = xmalloc(sizeof(float) * (size_t)n);
        uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)n);
        values(d, w);
        for (int64_t k = 0; k < n; k++) h[k] = qd_f32_to_f16(w[k]);
        if (qd_st_stream_add(ctx, s, d->name, QD_F16, d->ndim, d->shape, h) != QD_OK) die("%s", qd_last_error(ctx));
        bytes += (uint64_t)n * 2;
        free(w);
        free(h);
    }
    if (qd_st_stream_finish(ctx, s, "\"format\":\"pt\"") != QD_OK) die("%s", qd_last_error(ctx));
    free(pl.p);
    return bytes;
}

/* ---- measuring ---- */

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

typedef struct {
    int ok;
    char err[512];
    long hwm_start_kb, hwm_kb;
    double wall_s, cpu_s, rel_error;
    double bytes_in, bytes_out, quantized;
} result;

typedef struct {
    const char *name, *dtype;
    int svd, conv;
} setting;

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void run(const setting *s, const char *in, const char *out, int threads, result *r) {
    memset(r, 0, sizeof *r);
    r->hwm_start_kb = status_kb("VmHWM");
    qd_ctx *ctx = qd_ctx_new(threads);
    qd_quant_params p;
    qd_quant_params_default(&p);
    p.weights_dtype = s->dtype;
    p.use_svd = s->svd;
    p.quant_conv = s->conv;
    p.force = 1;
    char *json = NULL;
    double t0 = qd_now(), c0 = cpu_s();
    qd_status st = qd_quantize(ctx, in, out, &p, &json);
    r->wall_s = qd_now() - t0;
    r->cpu_s = cpu_s() - c0;
    r->hwm_kb = status_kb("VmHWM");
    if (st != QD_OK) snprintf(r->err, sizeof r->err, "%s", qd_last_error(ctx));
    else {
        cJSON *rep = cJSON_Parse(json);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rep, "totals");
        r->rel_error = qd_json_num(t, "rel_error", -1);
        r->bytes_in = qd_json_num(t, "bytes_in", 0);
        r->bytes_out = qd_json_num(t, "bytes_out", 0);
        r->quantized = qd_json_num(t, "quantized", 0);
        cJSON_Delete(rep);
        r->ok = 1;
    }
    qd_free(json);
    qd_ctx_free(ctx);
}

/* In a fresh process, so VmHWM is this run's alone. */
static void in_child(const setting *s, const char *in, const char *out, int threads, result *r) {
    int fd[2];
    if (pipe(fd)) die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fd[0]);
        result res;
        run(s, in, out, threads, &res);
        ssize_t w = write(fd[1], &res, sizeof res);
        _exit(w == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fd[1]);
    memset(r, 0, sizeof *r);
    ssize_t n = read(fd[0], r, sizeof *r);
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (n != (ssize_t)sizeof *r) snprintf(r->err, sizeof r->err, "child failed (status %d)", status);
}

int main(int argc, char **argv) {
    const char *config = "bench/configs/sd15_unet.json", *root = "/tmp/qd_bench_quantize";
    const char *which = "int8,uint4-svd,int8-conv";
    int threads = 0, keep = 0, reuse = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v) { config = v; i++; }
        else if (!strcmp(a, "--dir") && v) { root = v; i++; }
        else if (!strcmp(a, "--threads") && v) { threads = atoi(v); i++; }
        else if (!strcmp(a, "--settings") && v) { which = v; i++; }
        else if (!strcmp(a, "--keep")) keep = 1;
        else if (!strcmp(a, "--reuse")) reuse = 1;
        else die("usage: bench_quantize [--config FILE] [--dir DIR] [--threads N] [--settings LIST] [--keep]");
    }
    qd_ctx *ctx = qd_ctx_new(threads);
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    char in[4200], out[4200];
    mkdir(root, 0755);
    snprintf(in, sizeof in, "%s/fp16", root);
    snprintf(out, sizeof out, "%s/out", root);
    double t0 = qd_now();
    char wpath[4400];
    snprintf(wpath, sizeof wpath, "%s/unet/diffusion_pytorch_model.safetensors", in);
    struct stat sb;
    uint64_t bytes;
    if (reuse && stat(wpath, &sb) == 0) {
        bytes = (uint64_t)sb.st_size;
        printf("input: %s (%.1f MiB fp16 UNet, reused)\n", in, bytes / 1048576.0);
    } else {
        bytes = write_input(ctx, in, config, cfg);
        printf("input: %s (%.1f MiB fp16 UNet, written in %.1f s)\n", in, bytes / 1048576.0, qd_now() - t0);
    }
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    static const setting all[] = {{"int8", "int8", 0, 0}, {"uint4-svd", "uint4", 1, 0}, {"int8-conv", "int8", 0, 1}};
    printf("\n| setting | layers | bytes in -> out | weight rel. error | VmHWM | VmHWM / model | wall s | CPU s |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) {
        if (!strstr(which, all[k].name)) continue;
        result r;
        in_child(&all[k], in, out, threads, &r);
        if (!r.ok) { printf("| %s | failed: %s |\n", all[k].name, r.err); continue; }
        printf("| %s | %.0f | %.0f -> %.0f MiB | %.4f | %.0f MiB | %.1f%% | %.1f | %.1f |\n", all[k].name, r.quantized,
               r.bytes_in / 1048576.0, r.bytes_out / 1048576.0, r.rel_error, r.hwm_kb / 1024.0,
               100.0 * r.hwm_kb * 1024.0 / (double)bytes, r.wall_s, r.cpu_s);
        fflush(stdout);
    }
    if (!keep) {
        char cmd[8600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", in, out);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    }
    return 0;
}
