/* Multi-head attention with an additive score bias and a caller-chosen scale:
 * softmax(scale * q k^T + bias) v. T5 needs both (relative position bias,
 * no 1/sqrt(d) scaling), which qd_attention in ops.h does not offer. */
#ifndef QD_TENSOR_ATTENTION_BIAS_H
#define QD_TENSOR_ATTENTION_BIAS_H

#include <stdint.h>
#include "base/ctx.h"

/* q: [B, Lq, *] with row stride ldq, head h at columns [h*dh, (h+1)*dh); k, v
 * likewise with Lk rows. bias: [heads, Lq, Lk], the same for every batch item
 * (NULL: none). out: [B, Lq, heads*dh]. Returns QD_ERR_NOMEM if the per-thread
 * score buffers cannot be allocated. */
qd_status qd_attention_bias(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                            const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads,
                            int64_t dh, float scale, const float *bias, float *out);

#endif
