/* What a generation-time LoRA costs: one UNet forward at real size with and without
 * low-rank deltas attached (tensor/lora_path.c) to the layers a typical kohya SD1.5 LoRA
 * covers: every attention projection (to_q/k/v/out), feed-forward, proj_in/out, and with
 * --conv also every ResNet conv and time_emb_proj.
 *
 *   bench_unet --config bench/configs/sd15_unet.json --dir /tmp/qd_lora_unet --keep --steps 1
 *   bench_lora --dir /tmp/qd_lora_unet [--rank 16] [--conv] [--latent 64] [--batch 2]
 *              [--threads N] [--steps 3]
 *
 * Each configuration runs --steps forwards after one warm-up; the fastest is reported,
 * with the CPU time this process used in that forward (less disturbed by other processes
 * on a shared machine than wall time). The deltas are random (A ~ N(0,1)/sqrt(cols),
 * B ~ N(0, 0.01^2)); only their shapes matter for the cost. */
#include "models/unet.h"
#include "models/params.h"
#include "base/ctx.h"
#include "tensor/lora_path.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { double wall, cpu; } timing;

static timing best_forward(qd_ctx *ctx, qd_unet *u, int steps, const float *x, int64_t B, int64_t H, int64_t W,
                           const float *ts, const float *context, float *out) {
    timing best = {1e30, 0};
    for (int i = 0; i <= steps; i++) {   /* the first is the warm-up */
        double c0 = self_cpu_s(), t0 = qd_now();
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, context, 77, NULL, NULL, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        double wall = qd_now() - t0, cpu = self_cpu_s() - c0;
        if (i > 0 && wall < best.wall) { best.wall = wall; best.cpu = cpu; }
    }
    return best;
}

static int covered(const char *name, int conv) {
    if (strstr(name, "attn1.") || strstr(name, "attn2.") || strstr(name, ".ff.") || strstr(name, "proj_in") ||
        strstr(name, "proj_out"))
        return 1;
    return conv && (strstr(name, "resnets") != NULL);
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int rank = 16, conv = 0, latent = 64, batch = 2, threads = 0, steps = 3;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--conv")) { conv = 1; continue; }
        if (!v) die("usage: bench_lora --dir UNET_DIR [--rank N] [--conv] [--latent N] [--batch N] [--threads N] [--steps N]");
        i++;
        if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--rank")) rank = atoi(v);
        else if (!strcmp(a, "--latent")) latent = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else die("unknown option %s", a);
    }
    if (!dir || rank < 1 || steps < 1) die("usage: bench_lora --dir UNET_DIR [--rank N] ...");
    qd_ctx *ctx = qd_ctx_new(threads);
    qd_unet *u;
    if (qd_unet_load(ctx, dir, &u) != QD_OK) die("qd_unet_load: %s", qd_last_error(ctx));
    const qd_unet_info *info = qd_unet_get_info(u);
    if (info->addition_time_embed_dim) die("%s: an SD1.x UNet is expected", dir);
    int64_t B = batch, H = latent, W = latent, C = info->in_channels;
    float *x = xmalloc(sizeof(float) * (size_t)(B * C * H * W));
    float *out = xmalloc(sizeof(float) * (size_t)(B * info->out_channels * H * W));
    float *context = xmalloc(sizeof(float) * (size_t)(B * 77 * info->cross_attention_dim));
    float ts[16];
    rng g = {42};
    for (int64_t i = 0; i < B * C * H * W; i++) x[i] = gauss(&g);
    for (int64_t i = 0; i < B * 77 * info->cross_attention_dim; i++) context[i] = gauss(&g);
    for (int b = 0; b < 16; b++) ts[b] = 500.0f;

    timing base = best_forward(ctx, u, steps, x, B, H, W, ts, context, out);
    printf("no LoRA        %.3f s wall, %.2f s CPU (best of %d)\n", base.wall, base.cpu, steps);

    qd_params *p = qd_unet_params(u);
    int n = 0;
    int64_t extra = 0, covered_params = 0;
    for (int i = 0; i < p->n_weights; i++) {
        qd_weight *w = p->weights[i].w;
        if (!covered(p->weights[i].name, conv)) continue;
        float *A = xmalloc(sizeof(float) * (size_t)(rank * w->cols)), *Bm = xmalloc(sizeof(float) * (size_t)(w->rows * rank));
        float sa = 1.0f / sqrtf((float)w->cols);
        for (int64_t k = 0; k < rank * w->cols; k++) A[k] = sa * gauss(&g);
        for (int64_t k = 0; k < w->rows * rank; k++) Bm[k] = 0.01f * gauss(&g);
        if (qd_lora_delta_attach(ctx, w, A, Bm, rank) != QD_OK) die("attach: %s", qd_last_error(ctx));
        n++;
        extra += rank * (w->rows + w->cols);
        covered_params += w->rows * w->cols;
    }
    timing with = best_forward(ctx, u, steps, x, B, H, W, ts, context, out);
    printf("LoRA rank %-4d %.3f s wall, %.2f s CPU (best of %d): %d layers (%.0fM weights, %.1fM LoRA values)\n", rank,
           with.wall, with.cpu, steps, n, covered_params / 1e6, extra / 1e6);
    printf("overhead       %+.1f%% wall, %+.1f%% CPU (latent %dx%d, batch %d, %d threads)\n",
           100 * (with.wall / base.wall - 1), 100 * (with.cpu / base.cpu - 1), latent, latent, batch, qd_ctx_threads(ctx));
    for (int i = 0; i < p->n_weights; i++) qd_lora_delta_detach(p->weights[i].w);
    qd_unet_free(u);
    free(x);
    free(out);
    free(context);
    qd_ctx_free(ctx);
    return 0;
}
