/* comfy_quant writer at real size: a random SD1.5-shaped UNet (859.5M parameters, the
 * diffusers layout of SD1.5's UNet2DConditionModel, fp16, 1.7 GB) is quantized with each
 * weights dtype, once more with a rank-32 kohya LoRA over every attention and
 * feed-forward linear merged in, and read back. Each run is a forked child: wall time,
 * its CPU time (user + sys) and its peak resident set (ru_maxrss, mapped input pages
 * included), the output size and the report's total relative error / SNR.
 *
 *   bench_comfy_quant [--dir /tmp/qd_bench_cq] [--threads N] [--keep]
 *
 * Weights: uniform in +-sqrt(3/fan_in) (variance 1/fan_in) from a generator seeded by the
 * tensor's name; norm scales 1, biases small. Not a trained model: errors are those of
 * random matrices (no outliers), speed and memory are what they would be. */
#include "qdiff.h"
#include "base/half.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct { char name[128]; int ndim; int64_t shape[4]; int kind; } pdesc;   /* kind 0 matrix, 1 norm, 2 bias */
typedef struct { pdesc *p; int n, cap; } plist;

static void add(plist *l, int kind, int ndim, const int64_t *s, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add(plist *l, int kind, int ndim, const int64_t *s, const char *fmt, ...) {
    if (l->n == l->cap) { l->cap = l->cap ? 2 * l->cap : 512; l->p = realloc(l->p, sizeof *l->p * (size_t)l->cap); }
    pdesc *d = &l->p[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof d->name, fmt, ap);
    va_end(ap);
    d->ndim = ndim;
    d->kind = kind;
    memcpy(d->shape, s, sizeof(int64_t) * (size_t)ndim);
}
static void lin(plist *l, const char *p, int64_t o, int64_t i, int bias) {
    int64_t w[2] = {o, i};
    add(l, 0, 2, w, "%s.weight", p);
    if (bias) add(l, 2, 1, &o, "%s.bias", p);
}
static void cnv(plist *l, const char *p, int64_t o, int64_t i, int k) {
    int64_t w[4] = {o, i, k, k};
    add(l, 0, 4, w, "%s.weight", p);
    add(l, 2, 1, &o, "%s.bias", p);
}
static void nrm(plist *l, const char *p, int64_t c) { add(l, 1, 1, &c, "%s.weight", p); add(l, 2, 1, &c, "%s.bias", p); }
static void resnet(plist *l, const char *p, int64_t in, int64_t out) {
    char n[128];
    snprintf(n, sizeof n, "%s.norm1", p); nrm(l, n, in);
    snprintf(n, sizeof n, "%s.conv1", p); cnv(l, n, out, in, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", p); lin(l, n, out, 1280, 1);
    snprintf(n, sizeof n, "%s.norm2", p); nrm(l, n, out);
    snprintf(n, sizeof n, "%s.conv2", p); cnv(l, n, out, out, 3);
    if (in != out) { snprintf(n, sizeof n, "%s.conv_shortcut", p); cnv(l, n, out, in, 1); }
}
static void xformer(plist *l, const char *p, int64_t C) {
    char n[160];
    snprintf(n, sizeof n, "%s.norm", p); nrm(l, n, C);
    snprintf(n, sizeof n, "%s.proj_in", p); cnv(l, n, C, C, 1);
    for (int a = 1; a <= 2; a++) {
        int64_t kv = a == 1 ? C : 768;
        snprintf(n, sizeof n, "%s.transformer_blocks.0.norm%d", p, a); nrm(l, n, C);
        snprintf(n, sizeof n, "%s.transformer_blocks.0.attn%d.to_q", p, a); lin(l, n, C, C, 0);
        snprintf(n, sizeof n, "%s.transformer_blocks.0.attn%d.to_k", p, a); lin(l, n, C, kv, 0);
        snprintf(n, sizeof n, "%s.transformer_blocks.0.attn%d.to_v", p, a); lin(l, n, C, kv, 0);
        snprintf(n, sizeof n, "%s.transformer_blocks.0.attn%d.to_out.0", p, a); lin(l, n, C, C, 1);
    }
    snprintf(n, sizeof n, "%s.transformer_blocks.0.norm3", p); nrm(l, n, C);
    snprintf(n, sizeof n, "%s.transformer_blocks.0.ff.net.0.proj", p); lin(l, n, 8 * C, C, 1);
    snprintf(n, sizeof n, "%s.transformer_blocks.0.ff.net.2", p); lin(l, n, C, 4 * C, 1);
    snprintf(n, sizeof n, "%s.proj_out", p); cnv(l, n, C, C, 1);
}
static void sd15(plist *l) {
    const int64_t boc[4] = {320, 640, 1280, 1280};
    char n[128];
    cnv(l, "conv_in", 320, 4, 3);
    lin(l, "time_embedding.linear_1", 1280, 320, 1);
    lin(l, "time_embedding.linear_2", 1280, 1280, 1);
    int64_t out = 320;
    for (int i = 0; i < 4; i++) {
        int64_t in = out;
        out = boc[i];
        for (int j = 0; j < 2; j++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", i, j); resnet(l, n, j ? out : in, out);
            if (i < 3) { snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", i, j); xformer(l, n, out); }
        }
        if (i < 3) { snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i); cnv(l, n, out, out, 3); }
    }
    resnet(l, "mid_block.resnets.0", 1280, 1280);
    xformer(l, "mid_block.attentions.0", 1280);
    resnet(l, "mid_block.resnets.1", 1280, 1280);
    for (int i = 0; i < 4; i++) {
        int r = 3 - i;
        int64_t prev = out, in = boc[r > 0 ? r - 1 : 0];
        out = boc[r];
        for (int j = 0; j < 3; j++) {
            int64_t skip = j == 2 ? in : out, rin = j ? out : prev;
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", i, j); resnet(l, n, rin + skip, out);
            if (i > 0) { snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", i, j); xformer(l, n, out); }
        }
        if (i < 3) { snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i); cnv(l, n, out, out, 3); }
    }
    nrm(l, "conv_norm_out", 320);
    cnv(l, "conv_out", 4, 320, 3);
}

static int64_t numel(const pdesc *d) { int64_t n = 1; for (int i = 0; i < d->ndim; i++) n *= d->shape[i]; return n; }

static uint64_t seed_of(const char *s) { uint64_t h = 1469598103934665603ull; while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull; return h | 1; }
static float uni(uint64_t *x) { *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17; return (float)(*x >> 40) / (float)(1 << 24) * 2 - 1; }

static void fill(const pdesc *d, uint16_t *dst) {
    uint64_t x = seed_of(d->name);
    int64_t n = numel(d), fan_in = n / d->shape[0];
    float a = d->kind == 0 ? sqrtf(3.0f / (float)fan_in) : 0.02f;
    for (int64_t i = 0; i < n; i++) dst[i] = qd_f32_to_f16(d->kind == 1 ? 1.0f : a * uni(&x));
}

static void die(qd_ctx *ctx, const char *what) { fprintf(stderr, "%s: %s\n", what, qd_last_error(ctx)); exit(1); }

static void write_model(qd_ctx *ctx, const char *path, const plist *l, int lora_rank) {
    qd_st_out *spec = calloc((size_t)l->n * 3, sizeof *spec);
    char (*names)[160] = calloc((size_t)l->n * 3, sizeof *names);
    int n = 0;
    for (int i = 0; i < l->n; i++) {
        const pdesc *d = &l->p[i];
        if (!lora_rank) {
            spec[n] = (qd_st_out){d->name, QD_F16, d->ndim, {0}, NULL};
            memcpy(spec[n].shape, d->shape, sizeof(int64_t) * (size_t)d->ndim);
            n++;
            continue;
        }
        /* kohya pairs for the transformer linears */
        if (d->kind != 0 || d->ndim != 2 || !strstr(d->name, "transformer_blocks")) continue;
        char base[160];
        snprintf(base, sizeof base, "lora_unet_%.*s", (int)(strlen(d->name) - 7), d->name);
        for (char *c = base; *c; c++) if (*c == '.') *c = '_';
        snprintf(names[n], 160, "%s.lora_down.weight", base);
        spec[n] = (qd_st_out){names[n], QD_F16, 2, {lora_rank, d->shape[1]}, NULL}; n++;
        snprintf(names[n], 160, "%s.lora_up.weight", base);
        spec[n] = (qd_st_out){names[n], QD_F16, 2, {d->shape[0], lora_rank}, NULL}; n++;
        snprintf(names[n], 160, "%s.alpha", base);
        spec[n] = (qd_st_out){names[n], QD_F16, 0, {0}, NULL}; n++;
    }
    qd_st_stream *w;
    if (qd_st_stream_open(ctx, path, &w) != QD_OK) die(ctx, path);
    for (int i = 0; i < n; i++) {
        pdesc d = {{0}, spec[i].ndim, {0}, strstr(spec[i].name, "alpha") ? 1 : 0};
        snprintf(d.name, sizeof d.name, "%s", spec[i].name);
        memcpy(d.shape, spec[i].shape, sizeof d.shape);
        if (lora_rank && d.kind == 0) d.shape[0] = spec[i].shape[0];
        int64_t ne = spec[i].ndim ? numel(&d) : 1;
        uint16_t *buf = malloc(2 * (size_t)ne);
        if (!lora_rank) d = l->p[i];
        if (spec[i].ndim == 0) buf[0] = qd_f32_to_f16((float)lora_rank);   /* alpha = rank */
        else fill(&d, buf);
        if (qd_st_stream_add(ctx, w, spec[i].name, spec[i].dtype, spec[i].ndim, spec[i].shape, buf) != QD_OK) die(ctx, path);
        free(buf);
    }
    if (qd_st_stream_finish(ctx, w, NULL) != QD_OK) die(ctx, path);
    free(spec);
    free(names);
}

typedef struct { double wall, cpu; long maxrss_kb; int ok; char summary[256]; } result;

static double now(void) { struct timeval t; gettimeofday(&t, NULL); return (double)t.tv_sec + 1e-6 * (double)t.tv_usec; }

/* Run fn in a child; collect its resources. */
static result in_child(void (*fn)(void *, char *), void *arg) {
    int fd[2];
    result r = {0};
    if (pipe(fd) != 0) return r;
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        char msg[256] = "";
        fn(arg, msg);
        if (write(fd[1], msg, strlen(msg) + 1) < 0) _exit(2);
        _exit(0);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], r.summary, sizeof r.summary - 1);
    close(fd[0]);
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    r.wall = now() - t0;
    r.cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
            1e-6 * (double)ru.ru_stime.tv_usec;
    r.maxrss_kb = ru.ru_maxrss;
    r.ok = got > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    return r;
}

typedef struct { const char *in, *out, *dtype, *lora; int convrot, threads; } job;

static void run_quantize(void *a, char *msg) {
    const job *j = a;
    qd_ctx *ctx = qd_ctx_new(j->threads);
    qd_comfy_quant_params p;
    qd_comfy_quant_params_default(&p);
    p.weights_dtype = j->dtype;
    p.convrot = j->convrot;
    p.force = 1;
    qd_lora_set *set = NULL;
    if (j->lora) {
        const char *paths[1] = {j->lora};
        if (qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK) die(ctx, "lora");
        p.lora = set;
    }
    char *rep = NULL;
    if (qd_comfy_quantize(ctx, j->in, j->out, &p, &rep) != QD_OK) die(ctx, "quantize");
    const char *t = strstr(rep, "\"totals\"");
    snprintf(msg, 256, "%s", t ? t : "?");
    if (set) {
        int64_t m, n;
        qd_lora_set_report(set, &m, &n);
        size_t len = strlen(msg);
        snprintf(msg + len, 256 - len, " lora pairs %lld/%lld", (long long)m, (long long)n);
        qd_lora_set_free(set);
    }
    qd_free(rep);
    qd_ctx_free(ctx);
}

static void run_read(void *a, char *msg) {
    const job *j = a;
    qd_ctx *ctx = qd_ctx_new(j->threads);
    /* every quantized layer dequantized through the public reader, one at a time */
    qd_st_set st;
    if (qd_st_open(ctx, j->in, &st) != QD_OK) die(ctx, "open");
    int64_t layers = 0;
    double sum = 0;
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const char *nm = st.tensors[i].name;
        size_t n = strlen(nm);
        if (n < 12 || strcmp(nm + n - 12, ".comfy_quant")) continue;
        char w[256];
        snprintf(w, sizeof w, "%.*s.weight", (int)(n - 12), nm);
        float *d = NULL;
        int64_t shape[8];
        int nd;
        if (qd_read_tensor(ctx, j->in, w, &d, shape, &nd) != QD_OK) die(ctx, w);
        sum += d[0];
        free(d);
        layers++;
    }
    qd_st_close(&st);
    snprintf(msg, 256, "%lld layers dequantized with qd_read_tensor (checksum %.3g)", (long long)layers, sum);
    qd_ctx_free(ctx);
}

static long file_mib(const char *p) { struct stat s; return stat(p, &s) ? -1 : (long)(s.st_size >> 20); }

int main(int argc, char **argv) {
    const char *dir = "/tmp/qd_bench_cq";
    int threads = 1, keep = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep")) keep = 1;
        else { fprintf(stderr, "usage: bench_comfy_quant [--dir DIR] [--threads N] [--keep]\n"); return 2; }
    }
    char cmd[512], src[300], lora[300], out[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    snprintf(src, sizeof src, "%s/sd15_unet_f16.safetensors", dir);
    snprintf(lora, sizeof lora, "%s/lora_r32.safetensors", dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    plist l = {0};
    sd15(&l);
    int64_t params = 0;
    for (int i = 0; i < l.n; i++) params += numel(&l.p[i]);
    qd_ctx *ctx = qd_ctx_new(threads);
    double t0 = now();
    if (file_mib(src) < 0) write_model(ctx, src, &l, 0);
    if (file_mib(lora) < 0) write_model(ctx, lora, &l, 32);
    qd_ctx_free(ctx);
    printf("model: %d tensors, %.1fM parameters, %ld MiB fp16 (written in %.1f s); LoRA r32: %ld MiB; threads %d\n",
           l.n, (double)params / 1e6, file_mib(src), now() - t0, file_mib(lora), threads);
    struct { const char *dtype; int convrot; int with_lora; } runs[] = {
        {"int8_tensorwise", 0, 0}, {"int8_tensorwise", 1, 0}, {"float8_e4m3fn", 0, 0},
        {"float8_e4m3fn_rowwise", 0, 0}, {"int8_tensorwise", 0, 1},
    };
    printf("| run | wall s | CPU s | peak RSS MiB | output MiB | report |\n|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        job j = {src, out, runs[i].dtype, runs[i].with_lora ? lora : NULL, runs[i].convrot, threads};
        result r = in_child(run_quantize, &j);
        printf("| %s%s%s | %.1f | %.1f | %ld | %ld | %s |\n", runs[i].dtype, runs[i].convrot ? " +convrot" : "",
               runs[i].with_lora ? " +LoRA r32 merge" : "", r.wall, r.cpu, r.maxrss_kb / 1024, file_mib(out),
               r.ok ? r.summary : "FAILED");
        fflush(stdout);
    }
    job j = {out, NULL, NULL, NULL, 0, threads};
    result r = in_child(run_read, &j);
    printf("| read back (last output) | %.1f | %.1f | %ld | - | %s |\n", r.wall, r.cpu, r.maxrss_kb / 1024,
           r.ok ? r.summary : "FAILED");
    if (!keep) { snprintf(cmd, sizeof cmd, "rm -rf %s", dir); if (system(cmd) != 0) return 1; }
    free(l.p);
    return 0;
}
