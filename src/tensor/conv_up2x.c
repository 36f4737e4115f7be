#include "tensor/conv_up2x.h"
#include "base/threads.h"

#include <string.h>

void qd_up2x_fold(const qd_weight *w3, int64_t C, int64_t Ci, float *w9, float *w4, const char *file,
                  qd_up2x_conv *u) {
    static const int tap_of[2][3] = {{0, 1, 1}, {0, 0, 1}};   /* which phase tap a 3x3 tap folds into */
    int64_t K9 = Ci * 9, K4 = Ci * 4;
    w3->decode(w3, 0, C, 0, K9, w9, K9);
    memset(w4, 0, sizeof(float) * (size_t)(4 * C * K4));
    u->cout = C;
    u->cin = Ci;
    for (int p = 0; p < 4; p++) {
        int py = p >> 1, px = p & 1;
        float *wp = w4 + p * C * K4;
        for (int64_t oc = 0; oc < C * Ci; oc++)   /* (out, in) channel pairs */
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++)
                    wp[oc * 4 + tap_of[py][ky] * 2 + tap_of[px][kx]] += w9[oc * 9 + ky * 3 + kx];
        qd_st_tensor *t = &u->t[p];
        memset(t, 0, sizeof *t);
        t->name = "upsample phase";
        t->dtype = QD_F32;
        t->ndim = 2;
        t->shape[0] = C;
        t->shape[1] = K4;
        t->numel = C * K4;
        t->data = wp;
        t->nbytes = sizeof(float) * (size_t)(C * K4);
        t->file = file;
        qd_weight_dense(&u->w[p], t, C, K4);
    }
}

typedef struct { const float *p; float *y; int64_t H, W; int py, px; } scatter_args;

/* One phase's planes into every other row and column of the output. */
static void scatter_part(void *arg, int64_t b, int64_t e, int thread) {
    const scatter_args *a = arg;
    (void)thread;
    for (int64_t plane = b; plane < e; plane++) {
        const float *src = a->p + plane * a->H * a->W;
        float *dst = a->y + plane * 4 * a->H * a->W + a->py * 2 * a->W + a->px;
        for (int64_t i = 0; i < a->H; i++)
            for (int64_t j = 0; j < a->W; j++) dst[i * 4 * a->W + 2 * j] = src[i * a->W + j];
    }
}

void qd_up2x_conv_run(qd_ctx *ctx, const qd_up2x_conv *u, const float *x, int64_t B, int64_t H, int64_t W,
                      const float *bias, float *phase, float *y) {
    for (int p = 0; p < 4; p++) {
        int py = p >> 1, px = p & 1;
        qd_conv2d_pad(ctx, x, B, u->cin, H, W, &u->w[p], bias, 2, 2, 1, !py, py, !px, px, phase);
        scatter_args s = {phase, y, H, W, py, px};
        qd_parallel_for(ctx, B * u->cout, scatter_part, &s);
    }
}
