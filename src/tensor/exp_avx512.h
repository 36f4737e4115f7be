/* Vectorised exp for softmax and attention: exp(x) = 2^n * e^r with n = round(x / ln 2),
 * |r| <= ln2/2, and a degree-6 polynomial for e^r (relative error ~2e-7 for x <= 0,
 * the range softmax feeds it after subtracting the maximum). x below -87.3 is clamped
 * there (e^x underflows to ~1e-38). Include from a file compiled for x86-64. */
#ifndef QD_TENSOR_EXP_AVX512_H
#define QD_TENSOR_EXP_AVX512_H

#include <immintrin.h>

#define QD_LN2_HI 0.693359375f
#define QD_LN2_LO -2.12194440e-4f
/* e^r = 1 + r + r^2 P(r): P's coefficients from the highest power down (Horner) */
static const float QD_EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                  4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

__attribute__((target("avx512f")))
static inline __m512 qd_exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(QD_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(QD_LN2_LO), r);
    __m512 p = _mm512_set1_ps(QD_EXP_P[0]);
    for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(QD_EXP_P[i]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

#endif
