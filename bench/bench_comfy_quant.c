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
#include "bench_util.h"
#include "unet_params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* SD1.5's UNet config (the keys the parameter list depends on). */
static const char SD15_UNET[] =
    "{\"block_out_channels\": [320, 640, 1280, 1280], \"layers_per_block\": 2, \"attention_head_dim\": 8,"
    " \"cross_attention_dim\": 768, \"in_channels\": 4, \"out_channels\": 4,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}";

static uint64_t seed_of(const char *s) { uint64_t h = 1469598103934665603ull; while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull; return h | 1; }
static float uni(uint64_t *x) { *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17; return (float)(*x >> 40) / (float)(1 << 24) * 2 - 1; }

static void fill(const pdesc *d, uint16_t *dst) {
    uint64_t x = seed_of(d->name);
    int64_t n = numel(d), fan_in = n / d->shape[0];
    float a = d->kind == 0 ? sqrtf(3.0f / (float)fan_in) : 0.02f;
    for (int64_t i = 0; i < n; i++) dst[i] = qd_f32_to_f16(d->kind == 1 ? 1.0f : a * uni(&x));
}

static void die_ctx(qd_ctx *ctx, const char *what) { fprintf(stderr, "%s: %s\n", what, qd_last_error(ctx)); exit(1); }

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
    if (qd_st_stream_open(ctx, path, &w) != QD_OK) die_ctx(ctx, path);
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
        if (qd_st_stream_add(ctx, w, spec[i].name, spec[i].dtype, spec[i].ndim, spec[i].shape, buf) != QD_OK) die_ctx(ctx, path);
        free(buf);
    }
    if (qd_st_stream_finish(ctx, w, NULL) != QD_OK) die_ctx(ctx, path);
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
        if (qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK) die_ctx(ctx, "lora");
        p.lora = set;
    }
    char *rep = NULL;
    if (qd_comfy_quantize(ctx, j->in, j->out, &p, &rep) != QD_OK) die_ctx(ctx, "quantize");
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
    if (qd_st_open(ctx, j->in, &st) != QD_OK) die_ctx(ctx, "open");
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
        if (qd_read_tensor(ctx, j->in, w, &d, shape, &nd) != QD_OK) die_ctx(ctx, w);
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
    cJSON *cfg = cJSON_Parse(SD15_UNET);
    if (!cfg) return 1;
    unet_params(cfg, &l);
    cJSON_Delete(cfg);
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
