/* PyTorch-compatible CPU random numbers: the mt19937 engine and torch.randn as
 * torch 1.13's CPUGeneratorImpl produces them, bit for bit, so a seed gives the
 * same initial latents (and ancestral noise) as diffusers with
 * torch.Generator('cpu').manual_seed(seed). */
#ifndef QD_BASE_RNG_H
#define QD_BASE_RNG_H

#include <stdint.h>

typedef struct {
    uint32_t mt[624];
    int mti;                    /* index of the next word in mt[] */
    int left;                   /* words left before the state is regenerated (torch's left_) */
    uint64_t seed;
    /* at::normal_distribution<double> yields Box-Muller pairs and keeps the
     * second value in the generator; torch's scalar randn path (numel < 16)
     * consumes it on the next draw. manual_seed clears it. */
    int has_next_double;
    double next_double;
} qd_rng;

/* torch.Generator('cpu').manual_seed(seed): only the low 32 bits seed mt19937. */
void qd_rng_seed(qd_rng *r, uint64_t seed);

/* One tempered 32-bit word (CPUGeneratorImpl::random). */
uint32_t qd_rng_u32(qd_rng *r);
/* Two words, first one high (CPUGeneratorImpl::random64). */
uint64_t qd_rng_u64(qd_rng *r);

/* torch.randn(n) (float32, contiguous) drawn from r; n may be 0. */
void qd_rng_randn(qd_rng *r, float *out, int64_t n);

#endif
