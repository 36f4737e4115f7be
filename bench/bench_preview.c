/* What a live preview costs: one TAESD decode (qd_preview_decode, as the pipeline
 * calls it) of a 512x512 image's latents at full size and shrunk as
 * preview_max_size does by default (2x2-averaged latents: a 256x256 preview).
 * Compare with the SD1.5 step time of bench_unet (bench/RESULTS.md).
 *
 *   bench_preview [--decoder FILE] [--threads N] [--precision fp32|bf16] [--repeat N]
 *
 * The decoder defaults to tests/fixtures/taesd/taef2_decoder.safetensors: the real
 * taef2 weights, TAESD's decoder with 32 latent channels (taesd for SD1.5 has 4; the
 * 64-channel conv stack that costs the time is the same). Reports the best of
 * --repeat runs (default 5) as wall time and as this process's CPU time, since the
 * machine may be shared. */
#include "qdiff.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + (double)r.ru_stime.tv_sec + 1e-6 * (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

int main(int argc, char **argv) {
    const char *decoder = "tests/fixtures/taesd/taef2_decoder.safetensors";
    int threads = 0, repeat = 5, precision = QD_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--decoder") && v) decoder = argv[++i];
        else if (!strcmp(argv[i], "--threads") && v) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && v) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--precision") && v) {
            precision = !strcmp(v, "bf16") ? QD_PRECISION_BF16 : QD_PRECISION_FP32;
            i++;
        } else {
            fprintf(stderr, "usage: bench_preview [--decoder FILE] [--threads N] [--precision fp32|bf16] [--repeat N]\n");
            return 2;
        }
    }
    qd_ctx *ctx = qd_ctx_new(threads);
    qd_set_precision(ctx, precision);
    qd_vae_model *vae = NULL;
    if (qd_vae_open(ctx, decoder, &vae) != QD_OK) {
        fprintf(stderr, "bench_preview: %s\n", qd_last_error(ctx));
        return 2;
    }
    const qd_vae_model_info *info = qd_vae_describe(vae);
    int C = info->latent_channels, f = info->downscale;
    printf("decoder %s (%s, %d channels, /%d), %d threads, %s\n", decoder, info->kind, C, f, qd_ctx_threads(ctx),
           precision == QD_PRECISION_BF16 ? "bf16" : "fp32");
    int sides[2] = {512 / f, 256 / f};
    for (int s = 0; s < 2; s++) {
        int n = sides[s];
        float *z = malloc(sizeof(float) * (size_t)(C * n * n));
        uint8_t *rgb = malloc((size_t)(n * f) * (size_t)(n * f) * 3);
        for (int i = 0; i < C * n * n; i++) z[i] = sinf(0.37f * (float)i);
        double best_w = INFINITY, best_c = INFINITY;
        for (int r = 0; r < repeat; r++) {
            double w0 = wall(), c0 = cpu();
            if (qd_preview_decode(ctx, vae, z, 1, C, n, n, rgb) != QD_OK) {
                fprintf(stderr, "bench_preview: %s\n", qd_last_error(ctx));
                return 2;
            }
            double dw = wall() - w0, dc = cpu() - c0;
            if (dw < best_w) best_w = dw;
            if (dc < best_c) best_c = dc;
        }
        printf("preview %4dx%-4d (latents %dx%d): best %.3f s wall, %.3f s CPU (all threads)\n", n * f, n * f, n, n,
               best_w, best_c);
        free(z);
        free(rgb);
    }
    qd_vae_close(vae);
    qd_ctx_free(ctx);
    return 0;
}
