#include "tensor/ops.h"
#include "tensor/gemm.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void qd_linear(qd_ctx *ctx, const float *x, int64_t M, const qd_weight *w, const float *bias, float *y) {
    double t0 = ctx->trace ? qd_now() : 0;
    if (!(w->linear && w->linear(ctx, w, x, M, bias, y)))
        qd_gemm(ctx, M, w->rows, w->cols, qd_rows(x, w->cols), qd_wmat(w), y, w->rows, 1.0f, 0.0f, NULL, bias);
    if (ctx->trace) {
        int64_t d[4] = {M, w->cols, w->rows, bias != NULL};       /* tokens, in, out, bias */
        ctx->trace(ctx->trace_user, "linear", d, 4, qd_now() - t0);
    }
}

/* ---- elementwise ---- */

void qd_gelu_tanh(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    }
}
void qd_quick_gelu(float *x, int64_t n) { for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i])); }
void qd_add(float *y, const float *x, int64_t n) { for (int64_t i = 0; i < n; i++) y[i] += x[i]; }
void qd_scale(float *x, int64_t n, float s) { for (int64_t i = 0; i < n; i++) x[i] *= s; }

/* ---- layout ---- */

typedef struct { const float *x; float *y; int64_t H, W; } up_args;

static void up_part(void *arg, int64_t b, int64_t e, int thread) {
    const up_args *a = arg;
    for (int64_t p = b; p < e; p++) {
        const float *x = a->x + p * a->H * a->W;
        float *y = a->y + p * 4 * a->H * a->W;
        for (int64_t i = 0; i < a->H; i++) {
            float *r0 = y + (2 * i) * 2 * a->W, *r1 = r0 + 2 * a->W;
            for (int64_t j = 0; j < a->W; j++) r0[2 * j] = r0[2 * j + 1] = x[i * a->W + j];
            memcpy(r1, r0, sizeof(float) * (size_t)(2 * a->W));
        }
    }
}

void qd_upsample_nearest2x(qd_ctx *ctx, const float *x, int64_t BC, int64_t H, int64_t W, float *y) {
    up_args a = {x, y, H, W};
    qd_parallel_for(ctx, BC, up_part, &a);
}

typedef struct { const float *x; float *y; int64_t C, S; } tr_args;

static void tr_part(void *arg, int64_t b, int64_t e, int thread) {
    const tr_args *a = arg;
    for (int64_t bi = b; bi < e; bi++) {
        const float *x = a->x + bi * a->C * a->S;
        float *y = a->y + bi * a->C * a->S;
        for (int64_t c0 = 0; c0 < a->C; c0 += 32)
            for (int64_t s0 = 0; s0 < a->S; s0 += 32)
                for (int64_t c = c0; c < c0 + 32 && c < a->C; c++)
                    for (int64_t s = s0; s < s0 + 32 && s < a->S; s++) y[s * a->C + c] = x[c * a->S + s];
    }
}

void qd_transpose_cs(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, float *y) {
    tr_args a = {x, y, C, S};
    qd_parallel_for(ctx, B, tr_part, &a);
}
