/* A Brownian-motion noise source for the SDE k-samplers (dpmpp_sde,
 * dpmpp_2m_sde, dpmpp_3m_sde). ComfyUI feeds them from a torchsde
 * BrownianTree: the noise for (sigma, sigma_next) is
 * (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma| for one Brownian path W.
 * Calls over disjoint intervals are independent standard normals, calls over
 * overlapping ones (dpmpp_sde's two per step) are correlated as the path makes
 * them. This source samples the same law: W is drawn lazily at the times asked
 * for (Brownian bridge between known times, independent increments beyond
 * them) from standard normals the caller supplies. It does not reproduce
 * torchsde's values, which depend on its own PRNG tree. */
#ifndef QD_SAMPLE_KSAMPLER_NOISE_H
#define QD_SAMPLE_KSAMPLER_NOISE_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_brownian qd_brownian;

/* Standard normal values for n entries (e.g. torch.randn from a generator). */
typedef qd_status (*qd_randn_fn)(void *user, double *out);

/* A path of n independent coordinates with W(t_anchor) = 0. */
qd_status qd_brownian_new(qd_ctx *ctx, int64_t n, double t_anchor, qd_randn_fn randn, void *randn_user,
                          qd_brownian **out);
void qd_brownian_free(qd_brownian *b);

/* out = (W(t1) - W(t0)) / sqrt|t1 - t0| (t0 != t1). */
qd_status qd_brownian_noise(qd_ctx *ctx, qd_brownian *b, double t0, double t1, double *out);

#endif
