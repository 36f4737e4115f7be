/* GEMM and convolution kernels on the real layer shapes of SD1.5 (UNet at latent
 * 64x64 batch 2, VAE decode at 512x512 batch 1) and a few SDXL / FLUX.1 linears,
 * fp32 and bf16, 1 and 2 threads, against this CPU's peaks measured in the same run
 * (register-only chains of 512-bit FMA for fp32 and of vdpbf16ps for bf16; best of 5,
 * and for 2 threads at least twice the 1-thread figure).
 *
 *   bench_gemm [--threads 1,2] [--precision fp32,bf16] [--reps N] [--only linear|conv]
 *              [--filter TEXT] [--weights f16|f32] [--min-seconds S]
 *
 * Weights are stored fp16 (as the models are) and decoded inside the GEMM; activations
 * are N(0,1). Each figure is the best (shortest) of --reps timed runs after a warm-up,
 * each run repeated until it lasts --min-seconds: the machine is shared, and other
 * processes can only make a run slower. Printed per shape: the CPU time the rest of
 * the machine took during the best run ("other", from /proc/stat, as % of its wall
 * time), so a disturbed figure can be recognised, and the rate by this process's CPU
 * time ("cpuGF/s" = FLOP / (CPU seconds / threads), the smallest CPU time of the runs),
 * which a busy neighbour disturbs much less than wall time; with 2 threads it counts
 * the time a thread spins waiting for the other, so it is still a lower bound. */
#include "base/ctx.h"
#include "base/half.h"
#include "io/safetensors.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "tensor/weight.h"
#include "bench_util.h"
#include "cpu_peak.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- shapes ---- */

typedef struct { const char *name; int64_t M, K, N; } lin_shape;        /* y[M,N] = x[M,K] W[N,K]^T */
typedef struct { const char *name; int64_t B, Cin, H, W, Cout; int k, stride; } conv_shape;

static const lin_shape LIN[] = {
    {"sd15 attn 64x64 q/k/v/out", 8192, 320, 320},
    {"sd15 ff.proj 64x64 (GEGLU)", 8192, 320, 2560},
    {"sd15 ff.out 64x64", 8192, 1280, 320},
    {"sd15 cross k/v 768->320", 154, 768, 320},
    {"sd15 cross k/v 768->640", 154, 768, 640},
    {"sd15 cross k/v 768->1280", 154, 768, 1280},
    {"sd15 attn 32x32 q/k/v/out", 2048, 640, 640},
    {"sd15 ff.proj 32x32 (GEGLU)", 2048, 640, 5120},
    {"sd15 ff.out 32x32", 2048, 2560, 640},
    {"sd15 attn 16x16 q/k/v/out", 512, 1280, 1280},
    {"sd15 ff.proj 16x16 (GEGLU)", 512, 1280, 10240},
    {"sd15 ff.out 16x16", 512, 5120, 1280},
    {"sdxl cross k/v 2048->1280", 154, 2048, 1280},
    {"sdxl attn 32x32 q/k/v/out", 2048, 1280, 1280},
    {"sdxl ff.proj 32x32 (GEGLU)", 2048, 1280, 10240},
    {"sdxl ff.out 32x32", 2048, 5120, 1280},
    {"flux 512^2 attn q/k/v/out", 1536, 3072, 3072},
    {"flux 512^2 mlp in", 1536, 3072, 12288},
    {"flux 512^2 mlp out", 1536, 12288, 3072},
    {"flux txt 512 qkv", 512, 3072, 9216},
    {"flux txt 512 mlp in", 512, 3072, 12288},
    {"flux txt 512 mlp out", 512, 12288, 3072},
};

static const conv_shape CONV[] = {
    {"sd15 unet 320 @64x64", 2, 320, 64, 64, 320, 3, 1},
    {"sd15 unet 320 s2 64->32", 2, 320, 64, 64, 320, 3, 2},
    {"sd15 unet 320->640 @32x32", 2, 320, 32, 32, 640, 3, 1},
    {"sd15 unet 640 @32x32", 2, 640, 32, 32, 640, 3, 1},
    {"sd15 unet 1280 @16x16", 2, 1280, 16, 16, 1280, 3, 1},
    {"sd15 unet 1280 @8x8", 2, 1280, 8, 8, 1280, 3, 1},
    {"sd15 unet 2560->1280 @8x8", 2, 2560, 8, 8, 1280, 3, 1},
    {"sd15 unet 1280 upsampler @32x32", 2, 1280, 32, 32, 1280, 3, 1},
    {"sd15 unet 1920->640 @32x32", 2, 1920, 32, 32, 640, 3, 1},
    {"sd15 unet 960->320 @64x64", 2, 960, 64, 64, 320, 3, 1},
    {"sd15 unet 640->320 1x1 @64x64", 2, 640, 64, 64, 320, 1, 1},
    {"sd15 unet proj_in 320 1x1 @64x64", 2, 320, 64, 64, 320, 1, 1},
    {"sd15 vae 512 @64x64", 1, 512, 64, 64, 512, 3, 1},
    {"sd15 vae 512 @128x128", 1, 512, 128, 128, 512, 3, 1},
    {"sd15 vae 512->256 @256x256", 1, 512, 256, 256, 256, 3, 1},
    {"sd15 vae 256 @256x256", 1, 256, 256, 256, 256, 3, 1},
    {"sd15 vae 128 @512x512", 1, 128, 512, 512, 128, 3, 1},
};

static float nrand(unsigned *s) {
    /* sum of 4 uniforms: cheap, roughly normal, enough for timing */
    float t = 0;
    for (int i = 0; i < 4; i++) { *s = *s * 1664525u + 1013904223u; t += (float)(*s >> 8) / 16777216.0f - 0.5f; }
    return t * 1.7f;
}

typedef struct {
    qd_st_tensor t;
    qd_weight w;
    void *data;
} bench_weight;

static int make_weight(bench_weight *bw, int64_t rows, int64_t cols, int f16, unsigned seed) {
    size_t n = (size_t)(rows * cols);
    memset(bw, 0, sizeof *bw);
    bw->data = malloc(n * (f16 ? 2 : 4));
    if (!bw->data) return -1;
    float sc = 1.0f / 32.0f;
    for (size_t i = 0; i < n; i++) {
        float v = nrand(&seed) * sc;
        if (f16) ((uint16_t *)bw->data)[i] = qd_f32_to_f16(v);
        else ((float *)bw->data)[i] = v;
    }
    bw->t.dtype = f16 ? QD_F16 : QD_F32;
    bw->t.ndim = 2;
    bw->t.shape[0] = rows;
    bw->t.shape[1] = cols;
    bw->t.numel = (int64_t)n;
    bw->t.data = bw->data;
    bw->t.nbytes = n * (f16 ? 2 : 4);
    qd_weight_dense(&bw->w, &bw->t, rows, cols);
    return 0;
}

typedef struct {
    int reps;
    double min_seconds;
} timing;

typedef void (*op_fn)(qd_ctx *ctx, void *arg);

/* Best wall seconds per call; *other = CPU seconds the rest of the machine used per call
 * in that run; *cpu = the smallest CPU seconds of this process per call in any run. */
static double time_op(qd_ctx *ctx, op_fn fn, void *arg, const timing *tm, double *other, double *cpu) {
    fn(ctx, arg);   /* warm-up: page in, pool threads up */
    double best = 1e30;
    *other = 0;
    *cpu = 1e30;
    for (int r = 0; r < tm->reps; r++) {
        double m0 = machine_busy_s(), c0 = self_cpu_s(), t0 = now();
        int calls = 0;
        do { fn(ctx, arg); calls++; } while (now() - t0 < tm->min_seconds);
        double dt = (now() - t0) / calls, dc = (self_cpu_s() - c0) / calls;
        double o = (machine_busy_s() - m0) / calls - dc;
        if (dt < best) { best = dt; *other = o > 0 ? o : 0; }
        if (dc < *cpu) *cpu = dc;
    }
    return best;
}

typedef struct { const float *x; int64_t M; const qd_weight *w; const float *bias; float *y; } lin_arg;
static void run_lin(qd_ctx *ctx, void *p) { lin_arg *a = p; qd_linear(ctx, a->x, a->M, a->w, a->bias, a->y); }

typedef struct { const conv_shape *s; const float *x; const qd_weight *w; const float *bias; float *y; } conv_arg;
static void run_conv(qd_ctx *ctx, void *p) {
    conv_arg *a = p;
    int pad = a->s->k / 2;
    if (a->s->stride == 2) qd_conv2d_pad(ctx, a->x, a->s->B, a->s->Cin, a->s->H, a->s->W, a->w, a->bias, 3, 3, 2, 0, 1, 0, 1, a->y);
    else qd_conv2d(ctx, a->x, a->s->B, a->s->Cin, a->s->H, a->s->W, a->w, a->bias, a->s->k, a->s->k, 1, pad, a->y);
}

static int list_has(const char *list, const char *item) {
    size_t n = strlen(item);
    for (const char *p = list; (p = strstr(p, item)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *threads_list = "1,2", *prec_list = "fp32,bf16", *only = NULL, *filter = NULL;
    int f16 = 1;
    timing tm = {3, 0.3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "bench_gemm: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--threads")) threads_list = v;
        else if (!strcmp(a, "--precision")) prec_list = v;
        else if (!strcmp(a, "--reps")) tm.reps = atoi(v);
        else if (!strcmp(a, "--min-seconds")) tm.min_seconds = atof(v);
        else if (!strcmp(a, "--only")) only = v;
        else if (!strcmp(a, "--filter")) filter = v;
        else if (!strcmp(a, "--weights")) f16 = strcmp(v, "f32") != 0;
        else { fprintf(stderr, "bench_gemm: unknown option %s\n", a); return 2; }
        i++;
    }
    if (tm.reps < 1) tm.reps = 1;
    __builtin_cpu_init();
    int has_bf16 = __builtin_cpu_supports("avx512bf16");
    int nthreads[2] = {0, 0}, nt = 0;
    if (list_has(threads_list, "1")) nthreads[nt++] = 1;
    if (list_has(threads_list, "2")) nthreads[nt++] = 2;
    double pk[3][2] = {{0}};   /* [threads][bf16] */
    /* Register-only chains scale exactly with cores, so a neighbour that slowed the
     * 2-thread measurement is corrected by taking at least 2x the 1-thread figure. */
    double one[2] = {__builtin_cpu_supports("avx512f") ? cpu_peak_gflops(1, 0) : 0, has_bf16 ? cpu_peak_gflops(1, 1) : 0};
    for (int t = 0; t < nt; t++)
        for (int b = 0; b < 2; b++) {
            double m = nthreads[t] == 1 ? one[b] : b && !has_bf16 ? 0 : cpu_peak_gflops(nthreads[t], b);
            pk[nthreads[t]][b] = m > nthreads[t] * one[b] ? m : nthreads[t] * one[b];
        }
    for (int t = 0; t < nt; t++)
        printf("peak %d thread(s): fp32 FMA %.1f GFLOP/s, bf16 vdpbf16ps %.1f GFLOP/s\n", nthreads[t],
               pk[nthreads[t]][0], pk[nthreads[t]][1]);
    printf("fp32 kernel %s; weights %s; best of %d runs of >= %.2f s each\n", qd_gemm_isa(), f16 ? "fp16" : "fp32",
           tm.reps, tm.min_seconds);
    printf("%-34s %-5s %3s %9s %9s %7s %8s %7s %9s %7s\n", "shape", "prec", "thr", "ms", "GFLOP/s", "%peak", "2t/1t", "other",
           "cpuGF/s", "%peak");
    unsigned seed = 1234;
    for (int pass = 0; pass < 2; pass++) {
        int conv = pass == 1;
        if (only && strcmp(only, conv ? "conv" : "linear")) continue;
        size_t n = conv ? sizeof CONV / sizeof *CONV : sizeof LIN / sizeof *LIN;
        for (size_t s = 0; s < n; s++) {
            const char *name = conv ? CONV[s].name : LIN[s].name;
            if (filter && !strstr(name, filter)) continue;
            int64_t rows, cols, xn, yn;
            double flop;
            const conv_shape *cs = &CONV[s];
            if (conv) {
                int64_t Ho = (cs->H - 1) / cs->stride + 1, Wo = (cs->W - 1) / cs->stride + 1;
                rows = cs->Cout; cols = cs->Cin * cs->k * cs->k;
                xn = cs->B * cs->Cin * cs->H * cs->W; yn = cs->B * cs->Cout * Ho * Wo;
                flop = 2.0 * (double)cs->B * (double)Ho * (double)Wo * (double)rows * (double)cols;
            } else {
                rows = LIN[s].N; cols = LIN[s].K;
                xn = LIN[s].M * LIN[s].K; yn = LIN[s].M * LIN[s].N;
                flop = 2.0 * (double)LIN[s].M * (double)LIN[s].K * (double)LIN[s].N;
            }
            bench_weight bw;
            float *x = malloc(sizeof(float) * (size_t)xn), *y = malloc(sizeof(float) * (size_t)yn);
            float *bias = malloc(sizeof(float) * (size_t)rows);
            if (!x || !y || !bias || make_weight(&bw, rows, cols, f16, seed++)) { fprintf(stderr, "out of memory\n"); return 1; }
            for (int64_t i = 0; i < xn; i++) x[i] = nrand(&seed);
            for (int64_t i = 0; i < rows; i++) bias[i] = nrand(&seed) * 0.02f;
            lin_arg la = {x, conv ? 0 : LIN[s].M, &bw.w, bias, y};
            conv_arg ca = {cs, x, &bw.w, bias, y};
            for (int b = 0; b < 2; b++) {
                const char *pn = b ? "bf16" : "fp32";
                if (!list_has(prec_list, pn) || (b && !has_bf16)) continue;
                double one = 0;
                for (int t = 0; t < nt; t++) {
                    qd_ctx *ctx = qd_ctx_new(nthreads[t]);
                    qd_set_precision(ctx, b ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
                    double other, cpu;
                    double sec = time_op(ctx, conv ? run_conv : run_lin, conv ? (void *)&ca : (void *)&la, &tm, &other, &cpu);
                    /* the rate if each thread had a core to itself: FLOP per CPU second x threads */
                    double cgf = flop / (cpu / nthreads[t]) / 1e9;
                    qd_ctx_free(ctx);
                    double gf = flop / sec / 1e9, p = pk[nthreads[t]][b];
                    char ratio[16] = "";
                    if (nthreads[t] == 1) one = sec;
                    else if (one > 0) snprintf(ratio, sizeof ratio, "%.2fx", one / sec);
                    printf("%-34s %-5s %3d %9.2f %9.1f %6.0f%% %8s %6.0f%% %9.1f %6.0f%%\n", name, pn, nthreads[t],
                           sec * 1e3, gf, p > 0 ? 100 * gf / p : 0, ratio, 100 * other / sec, cgf, p > 0 ? 100 * cgf / p : 0);
                    fflush(stdout);
                }
            }
            free(x); free(y); free(bias); free(bw.data);
        }
    }
    return 0;
}
