#include "tensor/weight.h"

static void dense_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                         float *dst, int64_t ld) {
    for (int64_t r = 0; r < nr; r++)
        qd_st_to_f32(w->t, (r0 + r) * w->cols + k0, nk, dst + r * ld);
}

void qd_weight_dense(qd_weight *w, const qd_st_tensor *t, int64_t rows, int64_t cols) {
    w->rows = rows;
    w->cols = cols;
    w->t = t;
    w->decode = dense_decode;
    w->quant = 0;
    w->linear = 0;
}
