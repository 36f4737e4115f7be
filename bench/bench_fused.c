/* The passes between the GEMMs of an SD1.5 UNet step (tensor/norm_act.c), alone, on the
 * shapes a 512x512 CFG step (latent 64x64, batch 2) gives them, with 1 and 2 threads:
 *
 *   bench_fused [--reps N] [--isa 0|1|2]
 *
 * For each op: the mean CPU time per call with 1 thread (what the op costs, little
 * disturbed by other processes), best-of-N wall time per call, GB/s (bytes read + written once), the
 * calls per UNet step and their total, and the 2-thread speedup (issue 9 asks >= 1.85x) of the
 * best and of the median calls, with the pool's default polling window (src/base/threads.c)
 * and with polling off (qd_set_thread_spin 0: every hand-off wakes a blocked thread).
 * Wall-time speedups need a quiet machine; the CPU-time column is the speedup the split
 * gives when both threads have a core: 2 x (process CPU time per call, 1 thread) /
 * (process CPU time per call, 2 threads with polling off: time spent polling would count
 * as work), mean over the N calls. It counts what the two
 * threads cost each other (shared caches and memory bandwidth, the hand-off) but not
 * time lost to other processes, so it stays meaningful on a busy machine.
 * --isa caps the kernel level (0 scalar, 1 AVX2+FMA, 2 AVX-512) to compare the paths.
 * The machine may be shared: it waits up to 5 s for idle before each op and prints
 * how busy the machine was while it measured. */
#include "base/ctx.h"
#include "base/threads.h"
#include "tensor/ops.h"
#include "bench_util.h"

#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int kind;               /* 0 group norm + silu, 1 group norm + bias + silu, 2 layer norm, 3 geglu, 4 silu */
    int64_t a, b, c;        /* GN: B, C, S; LN: M, C; GEGLU: M, F; SiLU: n */
    int per_step;           /* calls in one SD1.5 512x512 CFG UNet step */
} shape;

/* Every shape of one SD1.5 512x512 CFG UNet step (down, mid, up blocks; batch 2) with
 * its calls per step: 61 group norms, 48 layer norms, 64 GEGLU chunks, as bench_unet's
 * trace counts them. (The mid block's 4 GEGLU chunks have 36/36/36/20 rows: as 4 x 36.) */
static const shape SHAPES[] = {
    {"GN+SiLU C320 64x64 (norm1, norm_out)", 0, 2, 320, 4096, 3},
    {"GN+SiLU C640 64x64 (cat)", 0, 2, 640, 4096, 2},
    {"GN+SiLU C960 64x64 (cat)", 0, 2, 960, 4096, 1},
    {"GN+SiLU C320 32x32", 0, 2, 320, 1024, 1},
    {"GN+SiLU C640 32x32", 0, 2, 640, 1024, 1},
    {"GN+SiLU C960 32x32 (cat)", 0, 2, 960, 1024, 1},
    {"GN+SiLU C1280 32x32 (cat)", 0, 2, 1280, 1024, 1},
    {"GN+SiLU C1920 32x32 (cat)", 0, 2, 1920, 1024, 1},
    {"GN+SiLU C640 16x16", 0, 2, 640, 256, 1},
    {"GN+SiLU C1280 16x16", 0, 2, 1280, 256, 1},
    {"GN+SiLU C1920 16x16 (cat)", 0, 2, 1920, 256, 1},
    {"GN+SiLU C2560 16x16 (cat)", 0, 2, 2560, 256, 2},
    {"GN+SiLU C1280 8x8", 0, 2, 1280, 64, 4},
    {"GN+SiLU C2560 8x8 (cat)", 0, 2, 2560, 64, 3},
    {"GN+temb+SiLU C320 64x64 (norm2)", 1, 2, 320, 4096, 5},
    {"GN+temb+SiLU C640 32x32 (norm2)", 1, 2, 640, 1024, 5},
    {"GN+temb+SiLU C1280 16x16 (norm2)", 1, 2, 1280, 256, 5},
    {"GN+temb+SiLU C1280 8x8 (norm2)", 1, 2, 1280, 64, 7},
    {"GN C320 64x64 (transformer)", 2, 2, 320, 4096, 5},
    {"GN C640 32x32 (transformer)", 2, 2, 640, 1024, 5},
    {"GN C1280 16x16 (transformer)", 2, 2, 1280, 256, 5},
    {"GN C1280 8x8 (transformer)", 2, 2, 1280, 64, 1},
    {"LN M8192 C320", 3, 8192, 320, 0, 15},
    {"LN M2048 C640", 3, 2048, 640, 0, 15},
    {"LN M512 C1280", 3, 512, 1280, 0, 15},
    {"LN M128 C1280", 3, 128, 1280, 0, 3},
    {"GEGLU M2048 F1280", 4, 2048, 1280, 0, 20},
    {"GEGLU M512 F2560", 4, 512, 2560, 0, 20},
    {"GEGLU M128 F5120", 4, 128, 5120, 0, 20},
    {"GEGLU M36 F5120 (mid block)", 4, 36, 5120, 0, 4},
    {"SiLU n 2.6M (not in the step: reference)", 5, 2 * 320 * 4096, 0, 0, 0},
};

static double run(qd_ctx *ctx, const shape *s, float *x, float *y, const float *gamma, const float *beta,
                  const float *xb) {
    double t0 = qd_now();
    switch (s->kind) {
    case 0: qd_group_norm(ctx, x, s->a, s->b, s->c, 32, 1e-5f, gamma, beta, 1, y); break;
    case 1: qd_group_norm_bias(ctx, x, xb, s->a, s->b, s->c, 32, 1e-5f, gamma, beta, 1, y); break;
    case 2: qd_group_norm(ctx, x, s->a, s->b, s->c, 32, 1e-6f, gamma, beta, 0, y); break;
    case 3: qd_layer_norm(ctx, x, s->a, s->b, 1e-5f, gamma, beta, y); break;
    case 4: qd_geglu(ctx, x, s->a, s->b, y); break;
    default: qd_silu_par(ctx, y, s->a); break;
    }
    return qd_now() - t0;
}

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double bytes(const shape *s) {
    switch (s->kind) {
    case 0: case 1: case 2: return 8.0 * s->a * s->b * s->c;
    case 3: return 8.0 * s->a * s->b;
    case 4: return 12.0 * s->a * s->b;
    default: return 8.0 * s->a;
    }
}

int main(int argc, char **argv) {
    int reps = 20, level = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--isa")) level = atoi(argv[i + 1]);
        else die("usage: bench_fused [--reps N] [--isa 0|1|2]");
    }
    if (argc % 2 == 0 || reps < 1) die("usage: bench_fused [--reps N] [--isa 0|1|2]");
    if (level >= 0) qd_norm_act_force_isa(level);
    int used = qd_norm_act_force_isa(level);
    /* 1 thread; 2 threads with the default polling window; 2 threads, polling off */
    qd_ctx *ctxs[3] = {qd_ctx_new(1), qd_ctx_new(2), qd_ctx_new(2)};
    qd_set_thread_spin(ctxs[2], 0);
    const int64_t maxn = 2 * 960 * 4096;
    float *x = xmalloc(sizeof(float) * maxn), *y = xmalloc(sizeof(float) * maxn);
    float *gamma = xmalloc(sizeof(float) * 8192), *beta = xmalloc(sizeof(float) * 8192), *xb = xmalloc(sizeof(float) * 8192);
    double *t = xmalloc(sizeof(double) * reps);
    rng g = {7};
    for (int64_t i = 0; i < maxn; i++) x[i] = gauss(&g);
    for (int i = 0; i < 8192; i++) { gamma[i] = 1.0f + 0.1f * gauss(&g); beta[i] = 0.1f * gauss(&g); xb[i] = gauss(&g); }
    memcpy(y, x, sizeof(float) * maxn);
    const char *env = getenv("QD_THREAD_SPIN_US");
    printf("kernel level %d (0 scalar, 1 AVX2+FMA, 2 AVX-512); best and median of %d back-to-back calls each;\n"
           "2T: polling window %s us (QD_THREAD_SPIN_US), 2T off: polling off\n\n", used, reps, env && *env ? env : "200 (default)");
    printf("%-42s %7s %7s %7s %6s %8s %8s %8s %8s %8s %6s %10s %5s\n", "op (SD1.5 512x512 CFG step shapes)", "1T CPU",
           "1T ms", "2T ms", "GB/s", "x best", "x median", "off best", "off med", "CPU-time", "calls", "ms/step 2T", "busy");
    double total = 0, total_off = 0, cpu_total = 0;
    for (size_t k = 0; k < sizeof SHAPES / sizeof *SHAPES; k++) {
        const shape *s = &SHAPES[k];
        wait_idle(5, 0);
        double busy0 = machine_busy_s(), self0 = self_cpu_s(), w0 = qd_now();
        double best[3], med[3], cpu[3];
        for (int c = 0; c < 3; c++) {
            run(ctxs[c], s, x, y, gamma, beta, xb);      /* warm caches and the pool */
            double c0 = cpu_s();
            for (int r = 0; r < reps; r++) t[r] = run(ctxs[c], s, x, y, gamma, beta, xb);
            cpu[c] = (cpu_s() - c0) / reps;
            qsort(t, reps, sizeof *t, cmp_double);
            best[c] = t[0];
            med[c] = t[reps / 2];
        }
        double wall = qd_now() - w0;
        double others = ((machine_busy_s() - busy0) - (self_cpu_s() - self0)) / (wall * 2);
        double gb = bytes(s) / 1e9;
        total += s->per_step * best[1];
        total_off += s->per_step * best[2];
        cpu_total += s->per_step * cpu[0];
        printf("%-42s %7.3f %7.3f %7.3f %6.1f %7.2fx %7.2fx %7.2fx %7.2fx %7.2fx %6d %10.1f %4.0f%%\n", s->name, 1e3 * cpu[0],
               1e3 * best[0], 1e3 * best[1], gb / best[1], best[0] / best[1], med[0] / med[1], best[0] / best[2],
               med[0] / med[2], 2 * cpu[0] / cpu[2], s->per_step, 1e3 * s->per_step * best[1],
               100 * (others > 0 ? others : 0));
    }
    printf("\nsum over one UNet step: %.1f ms wall with 2 threads (best calls; polling off: %.1f ms), "
           "%.1f ms CPU time with 1 thread (mean calls)\n", 1e3 * total, 1e3 * total_off, 1e3 * cpu_total);
    free(x); free(y); free(gamma); free(beta); free(xb); free(t);
    for (int c = 0; c < 3; c++) qd_ctx_free(ctxs[c]);
    return 0;
}
