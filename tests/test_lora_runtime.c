/* Generation-time LoRA. (1) tensor/lora_path.c: a dense weight with a delta attached
 * decodes, for any rectangle, to W + B.A computed here in double (rel L2 <= 1e-6), and
 * qd_linear (few tokens: the side path; many: the decode path) / qd_conv2d through it equal
 * the same ops on a dense copy of W + B.A (rel L2 <= 1e-5); detaching restores decode() bit for bit. (2) qd_generate's lora fields on
 * sd15-tiny, one loaded model: the same LoRA twice gives the same latents bit for bit, no
 * LoRA after a LoRA gives the base latents bit for bit, another scale differs, and going
 * back gives the first result again (the swap leaves nothing behind); a LoRA matching no
 * layer fails and leaves the model as loaded. (The comparison with an independent merge is
 * tests/cli_lora.sh.) */
#include "testutil.h"
#include "qdiff.h"
#include "io/safetensors.h"
#include "tensor/lora_path.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x243F6A8885A308D3ull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) % 2000001) / 1000000.0f - 1.0f;
}

static void test_delta(qd_ctx *ctx) {
    enum { ROWS = 37, COLS = 53, R = 5, M = 19 };
    static float w[ROWS * COLS], a[R * COLS], b[ROWS * R], merged[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++) w[i] = frand();
    for (int i = 0; i < R * COLS; i++) a[i] = frand();
    for (int i = 0; i < ROWS * R; i++) b[i] = frand() * 0.5f;
    for (int o = 0; o < ROWS; o++)
        for (int j = 0; j < COLS; j++) {
            double acc = w[o * COLS + j];
            for (int k = 0; k < R; k++) acc += (double)b[o * R + k] * a[k * COLS + j];
            merged[o * COLS + j] = (float)acc;
        }
    qd_st_tensor t = {0}, tm = {0};
    t.dtype = tm.dtype = QD_F32;
    t.ndim = tm.ndim = 2;
    t.shape[0] = tm.shape[0] = ROWS;
    t.shape[1] = tm.shape[1] = COLS;
    t.numel = tm.numel = ROWS * COLS;
    t.data = w;
    tm.data = merged;
    qd_weight wt, wm;
    qd_weight_dense(&wt, &t, ROWS, COLS);
    qd_weight_dense(&wm, &tm, ROWS, COLS);
    float *A = malloc(sizeof a), *B = malloc(sizeof b);
    memcpy(A, a, sizeof a);
    memcpy(B, b, sizeof b);
    check(qd_lora_delta_attach(ctx, &wt, A, B, R) == QD_OK, "attach a rank-%d delta", R);
    /* rectangles: whole, an inner one, one touching the last row and column */
    const int rect[3][4] = {{0, ROWS, 0, COLS}, {3, 11, 7, 29}, {30, 7, 40, 13}};
    for (int q = 0; q < 3; q++) {
        int r0 = rect[q][0], nr = rect[q][1], k0 = rect[q][2], nk = rect[q][3];
        float *got = malloc(sizeof(float) * (size_t)(nr * nk)), *ref = malloc(sizeof(float) * (size_t)(nr * nk));
        wt.decode(&wt, r0, nr, k0, nk, got, nk);
        for (int r = 0; r < nr; r++)
            for (int k = 0; k < nk; k++) ref[r * nk + k] = merged[(r0 + r) * COLS + k0 + k];
        char what[96];
        snprintf(what, sizeof what, "decode rows %d+%d cols %d+%d = W + B.A", r0, nr, k0, nk);
        check_close(what, got, ref, (size_t)(nr * nk), 1e-6, 1e-5);
        free(got);
        free(ref);
    }
    /* linear and conv (Cout=ROWS, Cin*kh*kw = COLS? use a 1x1 conv over COLS channels) */
    enum { MBIG = 4 * M };   /* M (rows + cols) >= rows cols: the GEMM over the delta-adding decode */
    static float x[MBIG * COLS], y[MBIG * ROWS], yr[MBIG * ROWS], bias[ROWS];
    for (int i = 0; i < MBIG * COLS; i++) x[i] = frand();
    for (int i = 0; i < ROWS; i++) bias[i] = frand();
    qd_linear(ctx, x, M, &wt, bias, y);
    qd_linear(ctx, x, M, &wm, bias, yr);
    check_close("qd_linear, few tokens (side path x.A^T.B^T) = on the merged weight", y, yr, M * ROWS, 1e-5, 1e-4);
    qd_linear(ctx, x, MBIG, &wt, bias, y);
    qd_linear(ctx, x, MBIG, &wm, bias, yr);
    check_close("qd_linear, many tokens (delta in decode) = on the merged weight", y, yr, MBIG * ROWS, 1e-5, 1e-4);
    /* x as [1, COLS, 1, M] (a 1x1 conv over M positions) */
    qd_conv2d(ctx, x, 1, COLS, 1, M, &wt, bias, 1, 1, 1, 0, y);
    qd_conv2d(ctx, x, 1, COLS, 1, M, &wm, bias, 1, 1, 1, 0, yr);
    check_close("qd_conv2d through the delta = on the merged weight", y, yr, M * ROWS, 1e-5, 1e-4);
    float *A2 = malloc(sizeof a), *B2 = malloc(sizeof b);
    check(qd_lora_delta_attach(ctx, &wt, A2, B2, R) != QD_OK, "a second attach is refused (%s)", qd_last_error(ctx));
    qd_lora_delta_detach(&wt);
    float *got = malloc(sizeof w);
    wt.decode(&wt, 0, ROWS, 0, COLS, got, COLS);
    check(memcmp(got, w, sizeof w) == 0 && wt.lora == NULL && wt.linear == NULL, "detach restores W bit for bit");
    free(got);
    qd_lora_delta_detach(&wt);   /* nothing attached: no-op */
}

/* A kohya LoRA on two sd15-tiny layers: attn1.to_q (linear) and a resnet conv1 (3x3). */
static void write_lora(qd_ctx *ctx, const char *path, int match) {
    static float d1[4 * 32], u1[32 * 4], d2[2 * 32 * 9], u2[32 * 2], a1 = 4, a2 = 1;
    for (size_t i = 0; i < sizeof d1 / 4; i++) d1[i] = frand() * 0.5f;
    for (size_t i = 0; i < sizeof u1 / 4; i++) u1[i] = frand() * 0.5f;
    for (size_t i = 0; i < sizeof d2 / 4; i++) d2[i] = frand() * 0.3f;
    for (size_t i = 0; i < sizeof u2 / 4; i++) u2[i] = frand() * 0.3f;
    const char *n1 = match ? "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" : "lora_unet_nothing_here";
    char k[6][160];
    snprintf(k[0], 160, "%s.lora_down.weight", n1);
    snprintf(k[1], 160, "%s.lora_up.weight", n1);
    snprintf(k[2], 160, "%s.alpha", n1);
    snprintf(k[3], 160, "lora_unet_down_blocks_0_resnets_%s_conv1.lora_down.weight", match ? "0" : "9");
    snprintf(k[4], 160, "lora_unet_down_blocks_0_resnets_%s_conv1.lora_up.weight", match ? "0" : "9");
    snprintf(k[5], 160, "lora_unet_down_blocks_0_resnets_%s_conv1.alpha", match ? "0" : "9");
    qd_st_out t[6] = {{k[0], QD_F32, 2, {4, 32}, d1},       {k[1], QD_F32, 2, {32, 4}, u1},
                      {k[2], QD_F32, 0, {0}, &a1},          {k[3], QD_F32, 4, {2, 32, 3, 3}, d2},
                      {k[4], QD_F32, 4, {32, 2, 1, 1}, u2}, {k[5], QD_F32, 0, {0}, &a2}};
    if (qd_st_write(ctx, path, t, 6, NULL) != QD_OK) check(0, "write %s: %s", path, qd_last_error(ctx));
}

static int run(qd_ctx *ctx, qd_model *m, const char *lora, float scale, float *lat, size_t n) {
    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a red circle";
    p.steps = 3;
    p.seed = 11;
    const char *paths[1] = {lora};
    p.loras = paths;
    p.lora_scales = &scale;
    p.n_loras = lora ? 1 : 0;
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    free(img);
    (void)n;
    return st;
}

static void test_generate(qd_ctx *ctx) {
    const char *good = scratch_path("good.safetensors"), *none = scratch_path("none.safetensors");
    write_lora(ctx, good, 1);
    write_lora(ctx, none, 0);
    qd_model *m = NULL;
    if (qd_model_open(ctx, fixture("models/sd15-tiny"), &m) != QD_OK) { check(0, "open: %s", qd_last_error(ctx)); return; }
    qd_gen_params p;
    qd_gen_params_default(&p);
    int64_t shape[4];
    size_t n = qd_latent_shape(m, &p, shape, NULL);
    float *base = malloc(4 * n), *l1 = malloc(4 * n), *l1b = malloc(4 * n), *nol = malloc(4 * n), *l2 = malloc(4 * n),
          *l1c = malloc(4 * n), *after = malloc(4 * n);
    check(run(ctx, m, NULL, 1, base, n) == QD_OK, "base run");
    check(run(ctx, m, good, 1.0f, l1, n) == QD_OK, "with a LoRA (%s)", qd_last_error(ctx));
    check(rel_l2(l1, base, n) > 1e-3, "the LoRA changes the latents (rel L2 %.3g from base)", rel_l2(l1, base, n));
    check(run(ctx, m, good, 1.0f, l1b, n) == QD_OK && memcmp(l1, l1b, 4 * n) == 0, "same LoRA again: same latents");
    check(run(ctx, m, NULL, 1, nol, n) == QD_OK && memcmp(nol, base, 4 * n) == 0,
          "no LoRA after a LoRA: the base latents bit for bit");
    check(run(ctx, m, good, 0.5f, l2, n) == QD_OK && rel_l2(l2, l1, n) > 1e-4, "scale 0.5 differs from 1 (rel L2 %.3g)",
          rel_l2(l2, l1, n));
    check(run(ctx, m, good, 1.0f, l1c, n) == QD_OK && memcmp(l1, l1c, 4 * n) == 0, "back to scale 1: the first result");
    check(run(ctx, m, none, 1.0f, after, n) != QD_OK && strstr(qd_last_error(ctx), "0 of its 2 LoRA layers matched"),
          "a LoRA matching nothing fails: %s", qd_last_error(ctx));
    check(run(ctx, m, NULL, 1, after, n) == QD_OK && memcmp(after, base, 4 * n) == 0,
          "after the failure the model runs as loaded");
    check(run(ctx, m, good, 0.0f, after, n) == QD_OK && memcmp(after, base, 4 * n) == 0, "scale 0: the base latents");
    qd_model_free(m);   /* with a LoRA attached or not: nothing leaks (ASan) */
    if (qd_model_open(ctx, fixture("models/sd15-tiny"), &m) == QD_OK) {
        check(run(ctx, m, good, 1.0f, after, n) == QD_OK && memcmp(after, l1, 4 * n) == 0,
              "a fresh model with the LoRA: the same latents");
        qd_model_free(m);
    }
    free(base); free(l1); free(l1b); free(nol); free(l2); free(l1c); free(after);
}

int main(void) {
    if (!scratch_make("lora_runtime")) return test_summary();
    qd_ctx *ctx = test_ctx_new(2);
    test_delta(ctx);
    test_generate(ctx);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
