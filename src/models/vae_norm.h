/* GroupNorm (+ SiLU) for the VAE's full-resolution activations, AVX-512 where the CPU
 * has it: the generic qd_group_norm is scalar (double sums, libm expf) and took ~18% of
 * a bf16 SD1.5 decode. Kept beside the VAE until a shared fused norm op exists. */
#ifndef QD_MODELS_VAE_NORM_H
#define QD_MODELS_VAE_NORM_H

#include <stdint.h>
#include "base/ctx.h"

/* torch.nn.functional.group_norm(x [B, C, S], groups, gamma, beta, eps), then SiLU when
 * silu; y may be x. Same contract as qd_group_norm; falls back to it without AVX-512
 * (or when QD_ISA is "generic" / "avx2"). */
void qd_vae_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                       const float *gamma, const float *beta, int silu, float *y);

#endif
