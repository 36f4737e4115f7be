/* Floats to bf16 pair words, shared by the SDNQ bf16 decoder (quant/sdnq_decode_fast.c)
 * and the once-decoded folded weight (tensor/gemm_lowrank.c). */
#ifndef QD_TENSOR_BF16_PAIRS_H
#define QD_TENSOR_BF16_PAIRS_H

#include <immintrin.h>
#include <stdint.h>

/* n floats (times alpha) into (n + 1) / 2 pair words at d: word p = bf16 of f[2p] (low half)
 * and f[2p+1] (high half; 0 past n), rounded to nearest even as the GEMM packer rounds. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static inline void qd_floats_to_bf16_pairs(uint32_t *d, const float *f, int64_t n, float alpha) {
    __m512 al = _mm512_set1_ps(alpha);
    for (int64_t k = 0; k < n; k += 32) {
        int64_t left = n - k;
        __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
        __m512 lo = _mm512_maskz_loadu_ps(m0, f + k), hi = _mm512_maskz_loadu_ps(m1, f + k + 16);
        if (alpha != 1.0f) { lo = _mm512_maskz_mul_ps(m0, lo, al); hi = _mm512_maskz_mul_ps(m1, hi, al); }   /* +0 past n */
        int64_t words = (left >= 32 ? 32 : left + 1) / 2;
        _mm512_mask_storeu_epi32(d + k / 2, (__mmask16)((1u << words) - 1), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

#endif
