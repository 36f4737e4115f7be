/* torch 1.13 CPU generator, reproduced bit for bit.
 *
 * torch.randn on a contiguous float tensor:
 *  - numel >= 16: fill the tensor with 24-bit uniforms, then Box-Muller on
 *    blocks of 16 (element j pairs with j+8: cos into j, sin into j+8). If
 *    numel is not a multiple of 16, the last 16 elements are drawn again
 *    (16 fresh uniforms) and transformed once more, overwriting the overlap.
 *    Torch's shipped builds dispatch this to an AVX2 kernel whose log, sin and
 *    cos are the cephes-style polynomials of avx_mathfun.h, not libm; the
 *    float operations below follow that kernel one by one so the rounding is
 *    the same (hence no FMA contraction in this file).
 *  - numel < 16: per element at::normal_distribution<double> with 53-bit
 *    uniforms and libm, whose second Box-Muller value is cached in the
 *    generator and returned by the next scalar draw.
 */
#include "base/rng.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397

void qd_rng_seed(qd_rng *r, uint64_t seed) {
    memset(r, 0, sizeof *r);
    r->seed = seed;
    r->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < MT_N; j++)
        r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + (uint32_t)j;
    /* torch starts with left_ = 1, so the first draw regenerates the state. */
    r->left = 1;
    r->mti = 0;
}

static inline uint32_t twist(uint32_t u, uint32_t v) {
    uint32_t mix = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mix >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void next_state(qd_rng *r) {
    uint32_t *s = r->mt;
    int k = 0;
    for (; k < MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ twist(s[k], s[k + 1]);
    for (; k < MT_N - 1; k++) s[k] = s[k + MT_M - MT_N] ^ twist(s[k], s[k + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ twist(s[MT_N - 1], s[0]);
    r->left = MT_N;
    r->mti = 0;
}

uint32_t qd_rng_u32(qd_rng *r) {
    if (--r->left == 0) next_state(r);
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t qd_rng_u64(qd_rng *r) {
    uint64_t hi = qd_rng_u32(r);
    uint64_t lo = qd_rng_u32(r);
    return (hi << 32) | lo;
}

/* at::uniform_real_distribution<float>(0, 1): low 24 bits of one word. */
static inline float uniform_f32(qd_rng *r) {
    return (float)(qd_rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): low 53 bits of random64. */
static inline double uniform_f64(qd_rng *r) {
    return (double)(qd_rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

static inline uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Single-precision constants as the AVX2 kernel stores them: double literals
 * rounded to float. */
#define F(x) ((float)(x))

/* Natural log for x in (0, 1], the cephes float algorithm step by step. */
static float log_cephes(float x) {
    if (!(x > 0.0f)) return NAN;
    const float min_norm = bitsf(0x00800000u);
    if (x < min_norm) x = min_norm;
    uint32_t b = fbits(x);
    int32_t ex = (int32_t)(b >> 23) - 0x7f;
    x = bitsf((b & ~0x7f800000u) | fbits(0.5f));   /* mantissa in [0.5, 1) */
    float e = (float)ex;
    e = e + 1.0f;
    int lt = x < F(0.707106781186547524);
    float tmp = lt ? x : 0.0f;
    x = x - 1.0f;
    e = e - (lt ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    static const double p[9] = {7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1,
                                -1.2420140846E-1, 1.4249322787E-1, -1.6668057665E-1,
                                2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1};
    float y = F(p[0]);
    for (int k = 1; k < 9; k++) y = fmaf(y, x, F(p[k]));
    y = y * x;
    y = fmaf(y, z, e * F(-2.12194440e-4));
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, F(0.693359375), x);
    return x;
}

/* sin and cos together, the cephes float algorithm (sincos256_ps) for x >= 0. */
static void sincos_cephes(float x, float *s, float *c) {
    uint32_t sign_sin = fbits(x) & 0x80000000u;
    x = bitsf(fbits(x) & 0x7fffffffu);
    float y = x * F(1.27323954473516);             /* 4/pi */
    int32_t j = (int32_t)y;                         /* truncation, as cvttps */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    int poly2 = (j & 2) == 0;                      /* sine polynomial for sin */
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;
    /* extended precision reduction: x - y*pi/4 in three parts */
    x = fmaf(y, F(-0.78515625), x);
    x = fmaf(y, F(-2.4187564849853515625e-4), x);
    x = fmaf(y, F(-3.77489497744594108e-8), x);
    float z = x * x;
    float yc = fmaf(F(2.443315711809948E-005), z, F(-1.388731625493765E-003));
    yc = fmaf(yc, z, F(4.166664568298827E-002));
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(F(-1.9515295891E-4), z, F(8.3321608736E-3));
    ys = fmaf(ys, z, F(-1.6666654611E-1));
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float sin2 = poly2 ? ys : 0.0f;
    float sin1 = poly2 ? 0.0f : yc;
    ys = ys - sin2;
    yc = yc - sin1;
    float sv = sin1 + sin2;
    float cv = yc + ys;
    *s = bitsf(fbits(sv) ^ sign_sin);
    *c = bitsf(fbits(cv) ^ sign_cos);
}

/* Box-Muller on 16 uniforms in place (normal_fill_16_AVX2, mean 0, std 1). */
static void normal16(float *d) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];                    /* (0, 1] for the log */
        float u2 = d[j + 8];
        float lg = log_cephes(u1);
        float radius = sqrtf(-2.0f * lg);
        float theta = two_pi * u2;
        float sv, cv;
        sincos_cephes(theta, &sv, &cv);
        /* fmadd(n, std=1, mean=0): exact, except -0 becomes +0 */
        d[j] = radius * cv + 0.0f;
        d[j + 8] = radius * sv + 0.0f;
    }
}

/* at::normal_distribution<double>(0, 1) with the generator's cached value. */
static double normal_f64(qd_rng *r) {
    if (r->has_next_double) {
        r->has_next_double = 0;
        return r->next_double;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double radius = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    r->next_double = radius * sin(theta);
    r->has_next_double = 1;
    return radius * cos(theta);
}

void qd_rng_randn(qd_rng *r, float *out, int64_t n) {
    if (n <= 0) return;
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = (float)normal_f64(r);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(r);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(r);
        normal16(tail);
    }
}
