/* float32 -> float8 encoders (round to nearest even, as torch's casts), the inverse
 * of qd_f8e4m3_to_f32 / qd_f8e5m2_to_f32 in half.h. Quantizers clamp to the format's
 * range first; these saturate at the largest finite value anyway, and map NaN to NaN. */
#ifndef QD_BASE_FP8_H
#define QD_BASE_FP8_H

#include <math.h>
#include <stdint.h>
#include "base/half.h"

/* Shared body: `mbits` mantissa bits, exponent bias `bias`, largest finite code `maxcode`
 * (sign excluded), subnormal step 2^(1-bias-mbits). */
static inline uint8_t qd_f32_to_f8_rne(float f, int mbits, int bias, uint8_t maxcode, uint8_t nan) {
    uint32_t u = qd_f32_to_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint8_t)(sign | nan);
    float af = qd_bits_to_f32(a);
    float min_normal = ldexpf(1.0f, 1 - bias);
    if (af < min_normal) {
        /* subnormal: a multiple of the step; rintf rounds half to even (default mode) */
        float m = rintf(ldexpf(af, bias - 1 + mbits));
        return (uint8_t)(sign | (uint8_t)m);   /* m == 2^mbits is the smallest normal: same code */
    }
    int shift = 23 - mbits;
    a += ((1u << (shift - 1)) - 1u) + ((a >> shift) & 1u);   /* RNE on the dropped bits */
    int64_t e = (int64_t)(a >> 23) - 127 + bias;
    uint32_t code = ((uint32_t)e << mbits) | ((a >> shift) & ((1u << mbits) - 1u));
    if (e > 255 || code > maxcode) code = maxcode;
    return (uint8_t)(sign | code);
}

/* e4m3fn: max 448 (0x7e), NaN 0x7f, no infinity. */
static inline uint8_t qd_f32_to_f8e4m3(float f) { return qd_f32_to_f8_rne(f, 3, 7, 0x7e, 0x7f); }
/* e5m2: max 57344 (0x7b); NaN 0x7e (out-of-range values saturate instead of becoming inf). */
static inline uint8_t qd_f32_to_f8e5m2(float f) { return qd_f32_to_f8_rne(f, 2, 15, 0x7b, 0x7e); }

#endif
