/* Rotary position embeddings. Translated from diffusers 0.32.2 embeddings.py
 * (get_1d_rotary_pos_embed, FluxPosEmbed, apply_rotary_emb; Apache-2.0). */
#include "tensor/rope.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *ids;
    int n_axes;
    const int *dims;
    const double *freqs;        /* [half]: axis by axis, as the table's columns */
    int64_t half;
    float *cos_t, *sin_t;
} table_args;

static void table_part(void *arg, int64_t b, int64_t e, int thread) {
    const table_args *a = arg;
    for (int64_t i = b; i < e; i++) {
        float *c = a->cos_t + i * a->half, *s = a->sin_t + i * a->half;
        int64_t j = 0;
        for (int ax = 0; ax < a->n_axes; ax++) {
            double pos = (double)a->ids[i * a->n_axes + ax];   /* torch.outer(float32 pos, float64 freqs) */
            for (int k = 0; k < a->dims[ax] / 2; k++, j++) {
                double ang = pos * a->freqs[j];
                c[j] = (float)cos(ang);
                s[j] = (float)sin(ang);
            }
        }
    }
}

qd_status qd_rope_table(qd_ctx *ctx, const float *ids, int64_t n, int n_axes, const int *axes_dims, double theta,
                        float *cos_out, float *sin_out) {
    if (n_axes < 1 || n_axes > QD_ROPE_MAX_AXES || n < 0)
        return qd_fail(ctx, QD_ERR_ARG, "rope: %d axes (1..%d)", n_axes, QD_ROPE_MAX_AXES);
    int64_t half = 0;
    for (int ax = 0; ax < n_axes; ax++) {
        if (axes_dims[ax] < 0 || axes_dims[ax] % 2)
            return qd_fail(ctx, QD_ERR_ARG, "rope: axis %d has dimension %d (must be even)", ax, axes_dims[ax]);
        half += axes_dims[ax] / 2;
    }
    double *freqs = qd_malloc(ctx, sizeof(double) * (size_t)(half ? half : 1));
    if (!freqs) return QD_ERR_NOMEM;
    int64_t j = 0;
    for (int ax = 0; ax < n_axes; ax++)   /* 1 / theta^(arange(0, d, 2) / d), in float64 */
        for (int k = 0; k < axes_dims[ax] / 2; k++) freqs[j++] = 1.0 / pow(theta, (double)(2 * k) / axes_dims[ax]);
    table_args a = {ids, n_axes, axes_dims, freqs, half, cos_out, sin_out};
    qd_parallel_for(ctx, n, table_part, &a);
    free(freqs);
    return QD_OK;
}

typedef struct {
    float *x;
    int64_t ld, half, period;
    int heads;
    const float *cos_t, *sin_t;
} apply_args;

static void apply_part(void *arg, int64_t b, int64_t e, int thread) {
    const apply_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        int64_t p = r % a->period;
        const float *c = a->cos_t + p * a->half, *s = a->sin_t + p * a->half;
        for (int h = 0; h < a->heads; h++) qd_rope_rotate(a->x + r * a->ld + h * 2 * a->half, a->half, c, s);
    }
}

void qd_rope_apply(qd_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int64_t half, const float *cos_t,
                   const float *sin_t, int64_t period) {
    apply_args a = {x, ld, half, period > 0 ? period : rows, heads, cos_t, sin_t};
    qd_parallel_for(ctx, rows, apply_part, &a);
}
