/* Scalar conversions between float and the 16/8-bit float formats found in weights files. */
#ifndef QD_BASE_HALF_H
#define QD_BASE_HALF_H

#include <stdint.h>
#include <string.h>

static inline float qd_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t qd_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float qd_bf16_to_f32(uint16_t h) { return qd_bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even, as torch does. NaN stays NaN. */
static inline uint16_t qd_f32_to_bf16(float f) {
    uint32_t u = qd_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float qd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return qd_bits_to_f32(sign | 0x7f800000u | (man << 13));
    return qd_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round to nearest even. */
static inline uint16_t qd_f32_to_f16(float f) {
    uint32_t u = qd_f32_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);            /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);           /* overflow -> inf */
    if (a < 0x38800000u) {                                             /* subnormal or zero */
        float v = qd_bits_to_f32(a) * 16777216.0f;                     /* 2^24: units of 2^-24 */
        uint32_t m = (uint32_t)v; float r = v - (float)m;
        if (r > 0.5f || (r == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t e = (a >> 23) - 112u, m = a & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* float8 e4m3fn: bias 7, no infinities, 0x7f/0xff are NaN. */
static inline float qd_f8e4m3_to_f32(uint8_t b) {
    uint32_t sign = b >> 7, exp = (b >> 3) & 0xfu, man = b & 7u;
    float v;
    if (exp == 15 && man == 7) v = __builtin_nanf("");
    else if (exp == 0) v = (float)man * 0.001953125f;                   /* man * 2^-9 */
    else v = qd_bits_to_f32(((exp + 120u) << 23) | (man << 20));
    return sign ? -v : v;
}

/* float8 e5m2: bias 15, IEEE-like (inf and NaN). It is the top byte of an fp16. */
static inline float qd_f8e5m2_to_f32(uint8_t b) { return qd_f16_to_f32((uint16_t)((uint16_t)b << 8)); }

#endif
