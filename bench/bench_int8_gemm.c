/* int8 GEMM (quantized matmul, src/quant/int8_gemm.c) on the linear shapes of SD1.5,
 * SDXL and FLUX.1, against this CPU's vpdpbusd peak measured in the same run.
 *
 *   bench_int8_gemm [--reps N] [--shapes sd15|all] [--threads N] [--idle-wait S] [--filter TEXT]
 *
 * Peak: independent vpdpbusd zmm chains from registers (16 chains, distinct start
 * values so the compiler cannot merge them), 1 thread and all threads, each thread by
 * its CPU time (time slicing on a shared machine does not lower it). Per shape
 * M x K -> N (M tokens): "gemm" is qd_i8_gemm alone on quantized activations and
 * packed panels; "linear" adds what one int8 linear call of an int8 (qmm layout)
 * SDNQ layer does around it: per-token quantization of fp32 activations and packing
 * the [K, N] codes into panels. 1 op = 1 multiply or add (2 per multiply-add).
 * The machine is shared with other builds: 1-thread figures are the best of --reps
 * runs by the thread's CPU time (CLOCK_THREAD_CPUTIME_ID; the pool runs a 1-thread
 * context inline), all-thread figures the best of --reps wall-clock runs, each
 * started once the machine looks idle (waiting up to --idle-wait seconds, default 10).
 * "x" is the 1-thread time over the all-thread time: below ~1.9 it mostly says the
 * other core was busy during every all-thread run. */
#include "base/ctx.h"
#include "base/threads.h"
#include "quant/int8_gemm.h"
#include "bench_util.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double process_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
/* Wait (at most max_s) until other processes use < 10% of a CPU over 0.3 s. */
static void wait_quiet(double max_s) {
    double t0 = qd_now();
    while (qd_now() - t0 < max_s) {
        double b0 = machine_busy_s(), s0 = self_cpu_s();
        usleep(300000);
        if ((machine_busy_s() - b0) - (self_cpu_s() - s0) < 0.03) return;
    }
}

#define CH(i) c##i = _mm512_dpbusd_epi32(c##i, a, b)
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) static int vnni_chains(long iters, int seed) {
    __m512i a = _mm512_set1_epi8((char)seed), b = _mm512_set1_epi8(-2);
    __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2), c3 = _mm512_set1_epi32(3);
    __m512i c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5), c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7);
    __m512i c8 = _mm512_set1_epi32(8), c9 = _mm512_set1_epi32(9), c10 = _mm512_set1_epi32(10), c11 = _mm512_set1_epi32(11);
    __m512i c12 = _mm512_set1_epi32(12), c13 = _mm512_set1_epi32(13), c14 = _mm512_set1_epi32(14), c15 = _mm512_set1_epi32(15);
    for (long k = 0; k < iters; k++) {
        CH(0); CH(1); CH(2); CH(3); CH(4); CH(5); CH(6); CH(7);
        CH(8); CH(9); CH(10); CH(11); CH(12); CH(13); CH(14); CH(15);
    }
    __m512i s = _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(c0, c1), _mm512_xor_si512(c2, c3)),
                                 _mm512_xor_si512(_mm512_xor_si512(c4, c5), _mm512_xor_si512(c6, c7)));
    s = _mm512_xor_si512(s, _mm512_xor_si512(_mm512_xor_si512(c8, c9), _mm512_xor_si512(c10, c11)));
    s = _mm512_xor_si512(s, _mm512_xor_si512(_mm512_xor_si512(c12, c13), _mm512_xor_si512(c14, c15)));
    return _mm512_reduce_add_epi32(s);
}

#define PEAK_ITERS 2000000L
typedef struct { double ops_s; int sink; } peak_job;
/* by the thread's CPU time: a shared machine's time slicing does not lower it */
static void *peak_worker(void *arg) {
    peak_job *j = arg;
    double t0 = thread_cpu_s();
    j->sink = vnni_chains(PEAK_ITERS, 3);
    j->ops_s = 128.0 * 16 * (double)PEAK_ITERS / (thread_cpu_s() - t0);   /* 64 multiply-adds per vpdpbusd zmm */
    return NULL;
}
static double vnni_peak(int threads, int reps) {
    double best = 0;
    for (int r = 0; r < reps; r++) {
        pthread_t th[64];
        peak_job j[64];
        for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, peak_worker, &j[i]);
        double tot = 0;
        for (int i = 0; i < threads; i++) { pthread_join(th[i], NULL); tot += j[i].ops_s; }
        if (tot > best) best = tot;
    }
    return best;
}

typedef struct {
    int64_t M, K, N;
    const float *x;
    int8_t *xq;
    float *sx;
    int32_t *xsum;
    const uint8_t *codes;   /* [K, N] int8 */
    uint8_t *panels;
    qd_i8_isa isa;
} lin;

static void quant_part(void *arg, int64_t b, int64_t e, int t) {
    lin *l = arg;
    int64_t kp = qd_i8_kpad(l->K);
    for (int64_t m = b; m < e; m++) l->sx[m] = qd_i8_quantize_row(l->isa, l->x + m * l->K, l->K, kp, l->xq + m * kp, &l->xsum[m]);
}
static void pack_part(void *arg, int64_t b, int64_t e, int t) {
    lin *l = arg;
    int64_t kp = qd_i8_kpad(l->K);
    for (int64_t p = b; p < e; p++) {
        int nb = (int)(l->N - p * QD_I8_NR < QD_I8_NR ? l->N - p * QD_I8_NR : QD_I8_NR);
        qd_i8_pack_cols(l->isa, l->codes, l->N, p * QD_I8_NR, nb, l->K, kp, 0, l->panels + p * qd_i8_panel_bytes(kp));
    }
}

/* best of reps: [0] gemm only, [1] quantize + pack + gemm; cpu: by this thread's CPU
 * time (1-thread contexts), else by wall time after waiting for an idle machine;
 * [2] the process CPU time (all threads) of the full call. */
static void time_shape(qd_ctx *ctx, lin *l, qd_i8_gemm_args *g, int reps, int cpu, double idle, double *best) {
    best[0] = best[1] = best[2] = 1e30;
    for (int r = 0; r < reps; r++) {
        if (!cpu) {
            /* the wait leaves the pool's workers asleep and the caches cold; in a UNet step the
             * GEMM follows other parallel work, with the workers polling: one untimed call first */
            wait_quiet(idle);
            qd_parallel_for(ctx, l->M, quant_part, l);
            qd_parallel_for(ctx, (l->N + QD_I8_NR - 1) / QD_I8_NR, pack_part, l);
            qd_i8_gemm(ctx, l->isa, g);
        }
        double t0 = cpu ? thread_cpu_s() : qd_now(), c0 = process_cpu();
        qd_parallel_for(ctx, l->M, quant_part, l);
        qd_parallel_for(ctx, (l->N + QD_I8_NR - 1) / QD_I8_NR, pack_part, l);
        double t1 = cpu ? thread_cpu_s() : qd_now();
        qd_i8_gemm(ctx, l->isa, g);
        double t2 = cpu ? thread_cpu_s() : qd_now();
        if (t2 - t1 < best[0]) best[0] = t2 - t1;
        if (t2 - t0 < best[1]) best[1] = t2 - t0;
        if (process_cpu() - c0 < best[2]) best[2] = process_cpu() - c0;
    }
}

int main(int argc, char **argv) {
    int reps = 7, all = 1, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double idle = 10;
    const char *filter = NULL;   /* only shapes whose name contains it */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--shapes")) all = strcmp(argv[i + 1], "sd15") != 0;
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--idle-wait")) idle = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--filter")) filter = argv[i + 1];
    }
    if (reps < 1) reps = 1;
    if (threads < 1 || threads > 64) threads = 1;
    qd_i8_isa isa = qd_i8_pick();
    printf("bench_int8_gemm: kernel %s, %d threads, best of %d\n", qd_i8_isa_name(isa), threads, reps);
    double p1 = 0, pn = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni")) {
        wait_quiet(idle);
        p1 = vnni_peak(1, 5);
        wait_quiet(idle);
        pn = vnni_peak(threads, 5);
        printf("peak int8 vpdpbusd zmm: %.0f GOP/s on 1 thread, %.0f GOP/s on %d\n", p1 / 1e9, pn / 1e9, threads);
    }
    /* M x K -> N: SD1.5 at 64x64 latent with CFG batch 2 (tokens 8192 / 2048 / 512 per level),
     * attention q/k/v/o, GEGLU ff (K -> 2*4K... as the UNet's ff1 is D -> 8D) and ff2 (4D -> D);
     * SDXL 128x128 (level 2: 8192 tokens x 640, level 3: 2048 x 1280); FLUX.1 1024x1024
     * (4096 image + 512 text tokens, batch 1). */
    static const struct { const char *name; int64_t M, K, N; } shapes[] = {
        {"sd15 L1 attn 320", 8192, 320, 320},     {"sd15 L1 ff1 320>2560", 8192, 320, 2560},
        {"sd15 L1 ff2 1280>320", 8192, 1280, 320}, {"sd15 L2 attn 640", 2048, 640, 640},
        {"sd15 L2 ff1 640>5120", 2048, 640, 5120}, {"sd15 L2 ff2 2560>640", 2048, 2560, 640},
        {"sd15 L3 attn 1280", 512, 1280, 1280},   {"sd15 L3 ff1 1280>10240", 512, 1280, 10240},
        {"sd15 4096x1280x1280", 4096, 1280, 1280},
        {"sdxl L3 attn 1280", 2048, 1280, 1280},  {"sdxl L3 ff2 5120>1280", 2048, 5120, 1280},
        {"flux qkv 3072", 4608, 3072, 3072},      {"flux mlp 3072>12288", 4608, 3072, 12288},
        {"flux single out 15360>3072", 4608, 15360, 3072},
    };
    int nshapes = all ? (int)(sizeof shapes / sizeof *shapes) : 9;
    qd_ctx *c1 = qd_ctx_new(1), *cn = qd_ctx_new(threads);
    printf("%-28s %6s %6s %6s | %9s %6s %9s %6s %5s | %9s %9s %6s %5s %8s %6s\n", "shape", "M", "K", "N", "gemm 1t",
           "%pk1", "gemm nt", "%peak", "x", "linear 1t", "linear nt", "%peak", "x", "nt cpu", "%pk");
    for (int s = 0; s < nshapes; s++) {
        if (filter && !strstr(shapes[s].name, filter)) continue;
        int64_t M = shapes[s].M, K = shapes[s].K, N = shapes[s].N, kp = qd_i8_kpad(K);
        int64_t Mp = (M + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR, npan = (N + QD_I8_NR - 1) / QD_I8_NR;
        float *x = malloc(sizeof(float) * (size_t)(M * K)), *y = qd_malloc_aligned(cn, sizeof(float) * (size_t)(M * N));
        float *sw = malloc(sizeof(float) * (size_t)N);
        uint8_t *codes = malloc((size_t)(K * N)), *panels = qd_malloc_aligned(cn, (size_t)(npan * qd_i8_panel_bytes(kp)));
        int8_t *xq = qd_malloc_aligned(cn, (size_t)(Mp * kp));
        float *sx = malloc(sizeof(float) * (size_t)M);
        int32_t *xsum = malloc(sizeof(int32_t) * (size_t)M);
        if (!x || !y || !sw || !codes || !panels || !xq || !sx || !xsum) { fprintf(stderr, "out of memory\n"); return 1; }
        uint32_t r = 1;
        for (int64_t i = 0; i < M * K; i++) { r = r * 1664525u + 1013904223u; x[i] = (float)(r >> 8) / 8388608.0f - 1.0f; }
        for (int64_t i = 0; i < K * N; i++) { r = r * 1664525u + 1013904223u; codes[i] = (uint8_t)(r >> 24); }
        for (int64_t n = 0; n < N; n++) sw[n] = 0.01f;
        memset(xq, 0, (size_t)(Mp * kp));
        lin l = {M, K, N, x, xq, sx, xsum, codes, panels, isa};
        qd_i8_gemm_args g = {xq, sx, xsum, M, kp, panels, N, sw, NULL, NULL, y, N, 0};
        double t1[3], tn[3], ops = 2.0 * (double)M * (double)K * (double)N;
        time_shape(c1, &l, &g, reps, 1, idle, t1);
        time_shape(cn, &l, &g, reps, 0, idle, tn);
        printf("%-28s %6lld %6lld %6lld | %9.0f %5.1f%% %9.0f %5.1f%% %5.2f | %9.0f %9.0f %5.1f%% %5.2f %8.0f %5.1f%%\n",
               shapes[s].name, (long long)M, (long long)K, (long long)N, ops / t1[0] / 1e9,
               p1 > 0 ? 100.0 * ops / t1[0] / p1 : 0.0, ops / tn[0] / 1e9, pn > 0 ? 100.0 * ops / tn[0] / pn : 0.0,
               t1[0] / tn[0], ops / t1[1] / 1e9, ops / tn[1] / 1e9, pn > 0 ? 100.0 * ops / tn[1] / pn : 0.0,
               t1[1] / tn[1], ops / (tn[2] / threads) / 1e9, p1 > 0 ? 100.0 * ops / tn[2] / p1 : 0.0);
        fflush(stdout);
        free(x); free(y); free(sw); free(codes); free(panels); free(xq); free(sx); free(xsum);
    }
    printf("(GOP/s; 1t by CPU time, nt by wall time; %%pk1 = 1-thread figure / 1-thread vpdpbusd peak; %%peak = all-thread "
           "figure / all-thread peak; x = 1-thread time / all-thread time; nt cpu = the all-thread linear by process CPU time / threads: "
           "its speed if the threads had the cores to themselves and finished together, and its %% of threads x the 1-thread "
           "peak)\n");
    qd_ctx_free(c1);
    qd_ctx_free(cn);
    return 0;
}
