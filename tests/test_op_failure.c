/* Ops without a status return must not abort when their scratch memory cannot be
 * had: they record the failure, qd_op_status() reports QD_ERR_NOMEM once, and the
 * error text says what ran out. Sizes here are absurd on purpose (a 2^40 head size:
 * attention's scratch grows with the head size, not with the number of keys). */
#include "testutil.h"
#include "tensor/ops.h"
#include "tensor/weight.h"

#include <string.h>

/* Under ASan an impossible malloc must return NULL, as it does without ASan. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    float q[4] = {0}, out[4] = {0};
    check(qd_op_status(ctx) == QD_OK, "no failure recorded at start");
    qd_attention(ctx, q, 1, q, 1, q, 1, 1, 1, 1, 1, (int64_t)1 << 40, 0, out);
    check(qd_op_status(ctx) == QD_ERR_NOMEM && strstr(qd_last_error(ctx), "attention"),
          "attention with a 2^40 head size: %s", qd_last_error(ctx));
    check(qd_op_status(ctx) == QD_OK, "the failure is reported once");

    qd_st_tensor t = {0};
    t.dtype = QD_F32;
    qd_weight w;
    qd_weight_dense(&w, &t, 1, ((int64_t)1 << 36) * 9);
    qd_conv2d(ctx, q, 1, (int64_t)1 << 36, 8, 8, &w, NULL, 3, 3, 1, 1, out);
    check(qd_op_status(ctx) == QD_ERR_NOMEM && strstr(qd_last_error(ctx), "convolution"),
          "3x3 convolution over 2^36 channels: %s", qd_last_error(ctx));
    qd_ctx_free(ctx);
    return test_summary();
}
