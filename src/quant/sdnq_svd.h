/* The low-rank correction SDNQ stores beside a quantized weight (spec sdnq.md §2
 * step 5): torch.svd_lowrank's randomized subspace iteration (Halko, Martinsson,
 * Tropp), written in C and seeded, so the same input gives the same factors. */
#ifndef QD_QUANT_SDNQ_SVD_H
#define QD_QUANT_SDNQ_SVD_H

#include <stdint.h>
#include "base/ctx.h"

/* W [m, n] (fp32, row-major) ~ up . down with up = U.diag(S) [m, r] and
 * down = V^T [r, n]: a Gaussian start of r columns from `seed`, `steps` rounds of
 * subspace iteration (each re-orthonormalised), then the exact SVD of the r x n
 * projection. QD_ERR_UNSUPPORTED when r < 1 or r > min(m, n) (sdnq then stores
 * the layer without SVD). */
qd_status qd_sdnq_svd_lowrank(qd_ctx *ctx, const float *W, int64_t m, int64_t n, int r, int steps, uint64_t seed,
                              float *up, float *down);

#endif
