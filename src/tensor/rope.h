/* Rotary position embeddings (RoPE) in the layout FLUX uses: each position has one
 * angle per pair of channels, the pairs are adjacent channels (2i, 2i+1) — diffusers'
 * get_1d_rotary_pos_embed(use_real=True, repeat_interleave_real=True) with
 * apply_rotary_emb(use_real_unbind_dim=-1) — and several position axes each own a
 * contiguous slice of the head (FluxPosEmbed: axes_dim per id column). */
#ifndef QD_TENSOR_ROPE_H
#define QD_TENSOR_ROPE_H

#include <stdint.h>
#include "base/ctx.h"

#define QD_ROPE_MAX_AXES 8

/* Tables for n positions: cos/sin [n, half], half = sum(axes_dims) / 2. Position i has
 * coordinates ids[i * n_axes + a]; axis a (even dimension d_a) contributes d_a / 2
 * angles ids[i, a] * theta^(-2j / d_a), j < d_a / 2, computed in float64 and rounded
 * to float32 (as diffusers does with freqs_dtype float64). Runs on the context's
 * threads. QD_ERR_ARG unless 1 <= n_axes <= QD_ROPE_MAX_AXES and every dim is even, >= 0. */
qd_status qd_rope_table(qd_ctx *ctx, const float *ids, int64_t n, int n_axes, const int *axes_dims, double theta,
                        float *cos_out, float *sin_out);

/* Rotate one head vector x [2 * half] in place: (x0, x1) -> (x0 c - x1 s, x1 c + x0 s)
 * per pair, with c, s the pair's table entries. torch's order of operations:
 * x * cos + rotate(x) * sin. */
static inline void qd_rope_rotate(float *x, int64_t half, const float *c, const float *s) {
    for (int64_t i = 0; i < half; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * c[i] + -x1 * s[i];
        x[2 * i + 1] = x1 * c[i] + x0 * s[i];
    }
}

/* Apply RoPE in place to x [rows, heads * 2 * half] (row stride ld): row r uses table
 * row r % period (e.g. period = sequence length for a [B, S, ...] batch). */
void qd_rope_apply(qd_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int64_t half, const float *cos_t,
                   const float *sin_t, int64_t period);

#endif
