/* Few-token linears (the GEMV path, src/tensor/gemv.c and src/quant/sdnq_gemv_i8.c)
 * against the packed GEMM on the same weights: FLUX's adaLN modulation shape by
 * default (M = 1, K = 3072, N = 18432: 56.6 M weights, 113 MB in bf16).
 *
 *   bench_gemv [--shape M,K,N] [--ms 1,2,4,8,16] [--threads N] [--dir /tmp/qd_bench_gemv] [--reps 7]
 *              [--idle-wait S]
 *
 * Weights (written once into --dir with bench/support/sdnq_writer.c, deleted at exit):
 * dense bf16, SDNQ int8 with quantized matmul (stored [K, N], the qmm layout) and SDNQ
 * uint4 (group 128, zero points) + SVD rank 32. For each M: wall time (best of --reps)
 * of qd_linear through the GEMV path and through the packed GEMM (QD_NO_GEMV=1), in exact
 * mode and (SDNQ) with --matmul int8, the weight's bytes per second and the relative
 * difference of the two paths' outputs. Bytes counted: the stored codes, scales, zero
 * points and SVD factors, i.e. what one pass must read. */
#include "base/ctx.h"
#include "io/safetensors.h"
#include "models/params.h"
#include "quant/sdnq_matmul.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "tensor/gemv.h"
#include "quant/sdnq_gemv_i8.h"
#include "bench_util.h"
#include "sdnq_writer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int writable(const pdesc *d, const qd_sdnq_config *cfg, const sdnq_spec *q) {
    return d->kind == K_MATRIX && q->weights_dtype != NULL;
}

static const sdnq_writer WRITER = {QD_BF16, "qdiff bench_gemv", 0, 0, writable};

static double time_linear(qd_ctx *ctx, const float *x, int64_t M, const qd_weight *w, float *y, int reps, int gemv) {
    if (gemv) { unsetenv("QD_NO_GEMV"); setenv("QD_I8_GEMV", "1", 1); }   /* the int8 one is opt-in */
    else { setenv("QD_NO_GEMV", "1", 1); unsetenv("QD_I8_GEMV"); }
    qd_linear(ctx, x, M, w, NULL, y);   /* warm-up: pages, caches */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = qd_now();
        qd_linear(ctx, x, M, w, NULL, y);
        double dt = qd_now() - t0;
        if (dt < best) best = dt;
    }
    unsetenv("QD_NO_GEMV");
    unsetenv("QD_I8_GEMV");
    return best;
}

static double rel(const float *a, const float *b, int64_t n) {
    double d = 0, s = 0;
    for (int64_t i = 0; i < n; i++) { d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); s += (double)b[i] * b[i]; }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}

static double dir_bytes(const char *dir) {
    char p[4200];
    struct stat sb;
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    return stat(p, &sb) == 0 ? (double)sb.st_size : -1;
}

int main(int argc, char **argv) {
    long M0 = 1, K = 3072, N = 18432;
    const char *ms = "1,2,4,8,16", *root = "/tmp/qd_bench_gemv";
    int threads = 0, reps = 7;
    double idle_wait = 30;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--shape")) { if (sscanf(v, "%ld,%ld,%ld", &M0, &K, &N) != 3) die("--shape M,K,N"); }
        else if (!strcmp(a, "--ms")) ms = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--dir")) root = v;
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else die("usage: bench_gemv [--shape M,K,N] [--ms 1,2,4] [--threads N] [--dir D] [--reps N] [--idle-wait S]");
    }
    if (K < 32 || N < 32 || reps < 1) die("bad arguments");
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    mkdir(root, 0755);
    qd_ctx *ctx = qd_ctx_new(threads);
    if (!ctx) die("no context");
    qd_set_precision(ctx, QD_PRECISION_BF16);
    printf("bench_gemv: K=%ld N=%ld, %d threads, precision bf16, float GEMM kernel %s\n", K, N, threads,
           qd_gemm_kernel_name(ctx));

    static const struct { const char *tag; sdnq_spec q; } kinds[3] = {
        {"bf16", {.weights_dtype = NULL}},
        {"int8-qmm", {.weights_dtype = "int8", .qmm = 1}},
        {"uint4-g128-svd32", {.weights_dtype = "uint4", .group_size = 128, .svd_rank = 32}},
    };
    plist gp = {0};
    int64_t shape[2] = {N, K};
    add(&gp, K_MATRIX, 2, shape, "layer.weight");
    int64_t maxm = 0;
    for (const char *p = ms; p && *p;) { long m = strtol(p, (char **)&p, 10); if (m > maxm) maxm = m; if (*p == ',') p++; else break; }
    float *x = xmalloc(sizeof(float) * (size_t)(maxm * K));
    float *y1 = xmalloc(sizeof(float) * (size_t)(maxm * N)), *y2 = xmalloc(sizeof(float) * (size_t)(maxm * N));
    rng g = {7};
    for (int64_t i = 0; i < maxm * K; i++) x[i] = gauss(&g);
    printf("\n%-18s %4s %6s %10s %8s %10s %8s %8s  %s\n", "weights", "M", "mode", "GEMV ms", "GB/s", "GEMM ms",
           "GB/s", "speedup", "rel. diff GEMV vs GEMM");
    for (int k = 0; k < 3; k++) {
        char dir[4200], cfgp[4300];
        snprintf(dir, sizeof dir, "%s/%s", root, kinds[k].tag);
        mkdir(dir, 0755);
        snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
        write_text(cfgp, "{\"_class_name\": \"Linear\"}\n");
        char *text = kinds[k].q.weights_dtype ? sdnq_qconfig_json(&kinds[k].q, cJSON_CreateArray()) : NULL;
        sdnq_write_component(ctx, dir, &gp, &kinds[k].q, text, &WRITER);
        free(text);
        double bytes = dir_bytes(dir);
        qd_params p;
        qd_linear_p lin;
        if (qd_params_open(ctx, dir, "gemv", &p) != QD_OK || qd_p_linear(&p, &lin, N, K, QD_NO_BIAS, "layer") != QD_OK)
            die("%s: %s", dir, qd_last_error(ctx));
        for (const char *q = ms; q && *q;) {
            long M = strtol(q, (char **)&q, 10);
            if (*q == ',') q++; else q = NULL;
            if (M < 1) continue;
            for (int mode = 0; mode < (kinds[k].q.weights_dtype ? 2 : 1); mode++) {
                qd_set_matmul(ctx, mode ? QD_MATMUL_INT8 : QD_MATMUL_EXACT);
                wait_idle(idle_wait, 0);
                double tg = time_linear(ctx, x, M, &lin.w, y1, reps, 1);
                double tp = time_linear(ctx, x, M, &lin.w, y2, reps, 0);
                printf("%-18s %4ld %6s %10.2f %8.1f %10.2f %8.1f %7.1fx  %.2e\n", kinds[k].tag, M, mode ? "int8" : "exact",
                       tg * 1e3, bytes / tg / 1e9, tp * 1e3, bytes / tp / 1e9, tp / tg, rel(y1, y2, M * N));
            }
        }
        qd_params_close(&p);
        char wp[4300];
        snprintf(wp, sizeof wp, "%s/diffusion_pytorch_model.safetensors", dir);
        remove(wp);
    }
    printf("(GB/s = the weight file's bytes / time: DRAM here reads ~17 GB/s; GEMM = the packed path, QD_NO_GEMV=1;\n"
           " above %d tokens (%d in int8 mode, where it is opt-in: QD_I8_GEMV=1) and for input-major (qmm) storage\n"
           " in exact mode the GEMV is off: both columns are the same path there)\n", QD_GEMV_MAX_M, QD_SDNQ_GEMV_MAX_M);
    free(x); free(y1); free(y2); free(gp.p);
    qd_ctx_free(ctx);
    return 0;
}
