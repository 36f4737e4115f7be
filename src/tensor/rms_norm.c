#include "tensor/ops.h"
#include "base/threads.h"

#include <math.h>

typedef struct { const float *x; float *y; int64_t C; float eps; const float *gamma; } rms_args;

static void rms_part(void *arg, int64_t b, int64_t e, int thread) {
    const rms_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        const float *x = a->x + r * a->C;
        float *y = a->y + r * a->C;
        double sq = 0;   /* T5 computes the variance in fp32 from the input; double is a superset */
        for (int64_t i = 0; i < a->C; i++) sq += (double)x[i] * x[i];
        float inv = (float)(1.0 / sqrt(sq / a->C + a->eps));
        for (int64_t i = 0; i < a->C; i++) y[i] = x[i] * inv * (a->gamma ? a->gamma[i] : 1.0f);
    }
}

void qd_rms_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps, const float *gamma, float *y) {
    rms_args a = {x, y, C, eps, gamma};
    qd_parallel_for(ctx, M, rms_part, &a);
}
