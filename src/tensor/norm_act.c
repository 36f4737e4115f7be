/* GroupNorm(+SiLU), LayerNorm(+modulation), GEGLU, SiLU and GELU: the passes between
 * the GEMMs, vectorised (AVX-512, AVX2+FMA, scalar fallback chosen per call from
 * CPUID) and fused so each reads its input once and writes its output once.
 *
 * - GroupNorm statistics run per block of at most BLK values of one channel (a block
 *   sits in L1): the block's mean, then its sum of squared deviations, both in fp32
 *   lanes, merged across blocks in double (Chan et al.), so large means do not cancel.
 *   A group's values are then normalised, the affine and the optional SiLU applied in
 *   the same pass; a group of the SD1.5 UNet (<= 160 KB) is still in L2 by then.
 *   An optional per-(batch, channel) input bias is folded into the mean, never stored:
 *   a ResnetBlock2D's time embedding, so conv1 runs as one GEMM for the whole batch.
 * - SiLU is x / (1 + e^-x) and GELU 0.5 x erfc(-x / sqrt 2), erfc as Numerical Recipes'
 *   Chebyshev fit (fractional error < 1.2e-7 everywhere, also in the negative tail where
 *   1 + erf would cancel), with the vectorised exp of tensor/exp_avx512.h.
 * - GEGLU reads the projection [M, 2F] and writes a * gelu(g) straight to [M, F]. */
#include "tensor/ops.h"
#include "base/threads.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define QD_X86 1
#include <immintrin.h>
#include "tensor/exp_avx512.h"
#endif

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512 };

static int cpu_level(void) {
#ifdef QD_X86
    static int level = -1;   /* idempotent: every thread computes the same answer */
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") ? ISA_AVX512
              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? ISA_AVX2 : ISA_SCALAR;
    }
    return level;
#else
    return ISA_SCALAR;
#endif
}

static int forced = -1;   /* tests: qd_norm_act_force_isa */

static int isa(void) {
    int l = cpu_level();
    return forced >= 0 && forced < l ? forced : l;
}

int qd_norm_act_force_isa(int level) {
    int old = isa();
    forced = level;
    return old;
}

#define BLK 4096   /* values per statistics block */

static void trace(qd_ctx *ctx, const char *op, const int64_t *d, int nd, double t0) {
    if (ctx && ctx->trace) ctx->trace(ctx->trace_user, op, d, nd, qd_now() - t0);
}

/* ---- scalar reference forms (also the fallback) ---- */

static inline float silu1(float v) { return v / (1.0f + expf(-v)); }

/* erfc(a) for a >= 0 (Numerical Recipes' erfcc): t exp(-a^2 + P(t)), t = 1 / (1 + a/2),
 * P's coefficients from the highest power down (Horner), shared by every ISA below */
static const float ERFC_P[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                 -0.18628806f, 0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f};

static inline float erfc_pos(float a) {
    float t = 1.0f / (1.0f + 0.5f * a), p = ERFC_P[0];
    for (int i = 1; i < 10; i++) p = ERFC_P[i] + t * p;
    return t * expf(-a * a + p);
}

static inline float gelu1(float x) {
    float z = x * 0.70710678118654752f, a = fabsf(z), c = erfc_pos(a);
    return 0.5f * x * (z >= 0 ? 2.0f - c : c);
}

static void blk_stats_scalar(const float *x, int64_t n, double *mean, double *m2) {
    double s = 0, q = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    double m = s / n;
    for (int64_t i = 0; i < n; i++) { double d = x[i] - m; q += d * d; }
    *mean = m;
    *m2 = q;
}

/* y = (x - m) * s + o, then SiLU when silu */
static void apply_scalar(const float *x, int64_t n, float m, float s, float o, int silu, float *y) {
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - m) * s + o;
        y[i] = silu ? silu1(v) : v;
    }
}

#ifdef QD_X86
/* ---- AVX-512 ---- */
#define T512 __attribute__((target("avx512f")))

T512 static inline __m512 silu512(__m512 v) {
    __m512 e = qd_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

T512 static inline __m512 gelu512(__m512 x) {
    __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    __m512 a = _mm512_abs_ps(z), one = _mm512_set1_ps(1.0f);
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
    __m512 p = _mm512_set1_ps(ERFC_P[0]);
    for (int i = 1; i < 10; i++) p = _mm512_fmadd_ps(t, p, _mm512_set1_ps(ERFC_P[i]));
    __m512 a2 = _mm512_mul_ps(a, a), a2lo = _mm512_fmsub_ps(a, a, a2);   /* a^2 = a2 + a2lo exactly */
    __m512 c = _mm512_mul_ps(t, qd_exp512(_mm512_sub_ps(_mm512_sub_ps(p, a2), a2lo)));
    __mmask16 pos = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
    __m512 onep = _mm512_mask_sub_ps(c, pos, _mm512_set1_ps(2.0f), c);   /* 1 + erf(z) */
    return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), onep);
}

T512 static inline __mmask16 tail16(int64_t r) { return (__mmask16)((1u << r) - 1); }

T512 static void blk_stats_avx512(const float *x, int64_t n, double *mean, double *m2) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + i + 16));
    }
    for (; i < n; i += 16) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(tail16(n - i < 16 ? n - i : 16), x + i));
    double m = (double)_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / n;
    __m512 vm = _mm512_set1_ps((float)m);
    s0 = s1 = _mm512_setzero_ps();
    for (i = 0; i + 32 <= n; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), d1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm);
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = tail16(n - i < 16 ? n - i : 16);
        __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + i), vm);
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    /* deviations were taken from the rounded mean: correct M2 by n (m - mf)^2 */
    double q = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)), dm = m - (double)(float)m;
    *mean = m;
    *m2 = q - n * dm * dm;
}

T512 static void apply_avx512(const float *x, int64_t n, float m, float s, float o, int silu, float *y) {
    __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(s), vo = _mm512_set1_ps(o);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs, vo);
        _mm512_storeu_ps(y + i, silu ? silu512(v) : v);
    }
    if (i < n) {
        __mmask16 k = tail16(n - i);
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm), vs, vo);
        _mm512_mask_storeu_ps(y + i, k, silu ? silu512(v) : v);
    }
}

/* y = ((x - m) * inv * gamma + beta) * (1 + scale) + shift; NULL vectors drop their term */
T512 static void ln_apply_avx512(const float *x, int64_t n, float m, float inv, const float *gamma,
                                 const float *beta, const float *scale, const float *shift, float *y) {
    __m512 vm = _mm512_set1_ps(m), vi = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail16(n - i < 16 ? n - i : 16);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm), vi);
        if (gamma) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, gamma + i));
        if (beta) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, beta + i));
        if (scale) v = _mm512_mul_ps(v, _mm512_add_ps(one, _mm512_maskz_loadu_ps(k, scale + i)));
        if (shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, shift + i));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

T512 static void silu_avx512(const float *x, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail16(n - i < 16 ? n - i : 16);
        _mm512_mask_storeu_ps(y + i, k, silu512(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

T512 static void gelu_avx512(const float *x, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail16(n - i < 16 ? n - i : 16);
        _mm512_mask_storeu_ps(y + i, k, gelu512(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

T512 static void geglu_avx512(const float *a, const float *g, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail16(n - i < 16 ? n - i : 16);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, a + i), gelu512(_mm512_maskz_loadu_ps(k, g + i)));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

/* ---- AVX2 + FMA ---- */
#define T256 __attribute__((target("avx2,fma")))

/* e^x, the same reduction and polynomial as qd_exp512; 2^n built in the exponent bits,
 * so x is clamped to [-87.3, 88] where 2^n stays a normal float */
T256 static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(QD_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(QD_LN2_LO), r);
    __m256 p = _mm256_set1_ps(QD_EXP_P[0]);
    for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(QD_EXP_P[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

T256 static inline __m256 silu256(__m256 v) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), v));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

T256 static inline __m256 gelu256(__m256 x) {
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z), one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), one));
    __m256 p = _mm256_set1_ps(ERFC_P[0]);
    for (int i = 1; i < 10; i++) p = _mm256_fmadd_ps(t, p, _mm256_set1_ps(ERFC_P[i]));
    __m256 a2 = _mm256_mul_ps(a, a), a2lo = _mm256_fmsub_ps(a, a, a2);
    __m256 c = _mm256_mul_ps(t, exp256(_mm256_sub_ps(_mm256_sub_ps(p, a2), a2lo)));
    __m256 pos = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 onep = _mm256_blendv_ps(c, _mm256_sub_ps(_mm256_set1_ps(2.0f), c), pos);
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), onep);
}

T256 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

T256 static void blk_stats_avx2(const float *x, int64_t n, double *mean, double *m2) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
    }
    double s = hsum256(_mm256_add_ps(s0, s1));
    for (int64_t j = i; j < n; j++) s += x[j];
    double m = s / n;
    float mf = (float)m;
    __m256 vm = _mm256_set1_ps(mf);
    s0 = s1 = _mm256_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm);
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    double q = hsum256(_mm256_add_ps(s0, s1)), dm = m - (double)mf;
    for (int64_t j = i; j < n; j++) { float d = x[j] - mf; q += d * d; }
    *mean = m;
    *m2 = q - n * dm * dm;
}

T256 static void apply_avx2(const float *x, int64_t n, float m, float s, float o, int silu, float *y) {
    __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(s), vo = _mm256_set1_ps(o);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs, vo);
        _mm256_storeu_ps(y + i, silu ? silu256(v) : v);
    }
    apply_scalar(x + i, n - i, m, s, o, silu, y + i);
}

T256 static void ln_apply_avx2(const float *x, int64_t n, float m, float inv, const float *gamma, const float *beta,
                               const float *scale, const float *shift, float *y) {
    __m256 vm = _mm256_set1_ps(m), vi = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vi);
        if (gamma) v = _mm256_mul_ps(v, _mm256_loadu_ps(gamma + i));
        if (beta) v = _mm256_add_ps(v, _mm256_loadu_ps(beta + i));
        if (scale) v = _mm256_mul_ps(v, _mm256_add_ps(one, _mm256_loadu_ps(scale + i)));
        if (shift) v = _mm256_add_ps(v, _mm256_loadu_ps(shift + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) {
        float v = (x[i] - m) * inv;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        if (scale) v *= 1.0f + scale[i];
        if (shift) v += shift[i];
        y[i] = v;
    }
}

T256 static void silu_avx2(const float *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, silu256(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = silu1(x[i]);
}

T256 static void gelu_avx2(const float *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu256(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = gelu1(x[i]);
}

T256 static void geglu_avx2(const float *a, const float *g, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), gelu256(_mm256_loadu_ps(g + i))));
    for (; i < n; i++) y[i] = a[i] * gelu1(g[i]);
}
#endif

/* ---- dispatch ---- */

static void blk_stats(int level, const float *x, int64_t n, double *mean, double *m2) {
#ifdef QD_X86
    if (level == ISA_AVX512) { blk_stats_avx512(x, n, mean, m2); return; }
    if (level == ISA_AVX2) { blk_stats_avx2(x, n, mean, m2); return; }
#endif
    blk_stats_scalar(x, n, mean, m2);
}

static void apply(int level, const float *x, int64_t n, float m, float s, float o, int silu, float *y) {
#ifdef QD_X86
    if (level == ISA_AVX512) { apply_avx512(x, n, m, s, o, silu, y); return; }
    if (level == ISA_AVX2) { apply_avx2(x, n, m, s, o, silu, y); return; }
#endif
    apply_scalar(x, n, m, s, o, silu, y);
}

void qd_ln_row(const float *x, int64_t n, float eps, const float *gamma, const float *beta, const float *scale,
               const float *shift, float *y) {
    int level = isa();
    double mean = 0, m2 = 0, cnt = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {   /* one block for every real hidden size */
        int64_t nb = n - i0 < BLK ? n - i0 : BLK;
        double bm, bq;
        blk_stats(level, x + i0, nb, &bm, &bq);
        double d = bm - mean, tot = cnt + nb;
        mean += d * nb / tot;
        m2 += bq + d * d * cnt * nb / tot;
        cnt = tot;
    }
    float m = (float)mean, inv = (float)(1.0 / sqrt(m2 / n + eps));
#ifdef QD_X86
    if (level == ISA_AVX512) { ln_apply_avx512(x, n, m, inv, gamma, beta, scale, shift, y); return; }
    if (level == ISA_AVX2) { ln_apply_avx2(x, n, m, inv, gamma, beta, scale, shift, y); return; }
#endif
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - m) * inv;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        if (scale) v *= 1.0f + scale[i];
        if (shift) v += shift[i];
        y[i] = v;
    }
}

void qd_silu(float *x, int64_t n) {
#ifdef QD_X86
    int level = isa();
    if (level == ISA_AVX512) { silu_avx512(x, n, x); return; }
    if (level == ISA_AVX2) { silu_avx2(x, n, x); return; }
#endif
    for (int64_t i = 0; i < n; i++) x[i] = silu1(x[i]);
}

void qd_gelu(float *x, int64_t n) {
#ifdef QD_X86
    int level = isa();
    if (level == ISA_AVX512) { gelu_avx512(x, n, x); return; }
    if (level == ISA_AVX2) { gelu_avx2(x, n, x); return; }
#endif
    for (int64_t i = 0; i < n; i++) x[i] = gelu1(x[i]);
}

static void geglu_row(int level, const float *a, const float *g, int64_t n, float *y) {
#ifdef QD_X86
    if (level == ISA_AVX512) { geglu_avx512(a, g, n, y); return; }
    if (level == ISA_AVX2) { geglu_avx2(a, g, n, y); return; }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = a[i] * gelu1(g[i]);
}

/* ---- splitting a pass over the threads ---- */

/* Rows (groups, tokens, elements) go to the threads in claims of at most an eighth of a
 * thread's share: a thread descheduled mid-pass (another process wants its CPU) holds
 * back little of the pass, and a claim still carries enough work to be worth its
 * atomic operation. Towards the end the claims shrink (qd_parallel_for_guided) down to
 * one row, so the threads finish within a row of each other rather than within an
 * eighth of a share: the 64 rows of a GroupNorm over batch 2 x 32 groups went 4 at a
 * time, so one thread could be left with 1/16 of the pass (2-thread speedup >= 1.78x
 * from that alone), now with 1/64. The results do not depend on which thread runs what.
 * align: the claim size is a multiple of it (vector width for element-wise passes). */
static void par(qd_ctx *ctx, int64_t n, int64_t align, qd_range_fn fn, void *arg) {
    int64_t grain = (n / (8 * qd_threads(ctx)) + align - 1) / align * align;
    qd_parallel_for_guided(ctx, n, grain < align ? align : grain, align, fn, arg);
}

/* ---- GroupNorm ---- */

typedef struct {
    const float *x, *xbias; float *y; int64_t C, S; int groups; float eps;
    const float *gamma, *beta; int silu;
} gn_args;

static void gn_part(void *arg, int64_t b, int64_t e, int thread) {
    const gn_args *a = arg;
    int level = isa();
    int64_t cpg = a->C / a->groups, S = a->S;
    for (int64_t bg = b; bg < e; bg++) {       /* bg = batch * groups + group */
        int64_t g = bg % a->groups, bi = bg / a->groups;
        const float *x = a->x + bg * cpg * S, *xb = a->xbias ? a->xbias + bi * a->C + g * cpg : NULL;
        float *y = a->y + bg * cpg * S;
        double mean = 0, m2 = 0, cnt = 0;
        for (int64_t c = 0; c < cpg; c++)
            for (int64_t i0 = 0; i0 < S; i0 += BLK) {
                int64_t nb = S - i0 < BLK ? S - i0 : BLK;
                double bm, bq;
                blk_stats(level, x + c * S + i0, nb, &bm, &bq);
                if (xb) bm += xb[c];
                double d = bm - mean, tot = cnt + nb;
                mean += d * nb / tot;
                m2 += bq + d * d * cnt * nb / tot;
                cnt = tot;
            }
        double inv = 1.0 / sqrt(m2 / cnt + a->eps);
        for (int64_t c = 0; c < cpg; c++) {
            int64_t ch = g * cpg + c;
            float s = (float)inv * (a->gamma ? a->gamma[ch] : 1.0f), o = a->beta ? a->beta[ch] : 0.0f;
            float m = (float)(mean - (xb ? xb[c] : 0));    /* (x + xb - mean) = (x - (mean - xb)) */
            apply(level, x + c * S, S, m, s, o, a->silu, y + c * S);
        }
    }
}

void qd_group_norm_bias(qd_ctx *ctx, const float *x, const float *xbias, int64_t B, int64_t C, int64_t S, int groups,
                        float eps, const float *gamma, const float *beta, int silu, float *y) {
    double t0 = ctx->trace ? qd_now() : 0;
    gn_args a = {x, xbias, y, C, S, groups, eps, gamma, beta, silu};
    par(ctx, B * groups, 1, gn_part, &a);
    int64_t d[5] = {B, C, S, groups, silu};
    trace(ctx, "group_norm", d, 5, t0);
}

void qd_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                   const float *gamma, const float *beta, int silu, float *y) {
    qd_group_norm_bias(ctx, x, NULL, B, C, S, groups, eps, gamma, beta, silu, y);
}

/* ---- LayerNorm ---- */

typedef struct {
    const float *x; float *y; int64_t C, rows_per_batch, ld; float eps;
    const float *gamma, *beta, *shift, *scale;
} ln_args;

static void ln_part(void *arg, int64_t b, int64_t e, int thread) {
    const ln_args *a = arg;
    for (int64_t r = b; r < e; r++) {
        int64_t bi = a->rows_per_batch ? r / a->rows_per_batch : 0;
        qd_ln_row(a->x + r * a->C, a->C, a->eps, a->gamma, a->beta, a->scale ? a->scale + bi * a->ld : NULL,
                  a->shift ? a->shift + bi * a->ld : NULL, a->y + r * a->C);
    }
}

void qd_layer_norm_mod(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps, const float *gamma,
                       const float *beta, int64_t rows_per_batch, const float *shift, const float *scale, int64_t ld,
                       float *y) {
    double t0 = ctx->trace ? qd_now() : 0;
    ln_args a = {x, y, C, rows_per_batch, ld, eps, gamma, beta, shift, scale};
    par(ctx, M, 1, ln_part, &a);
    int64_t d[3] = {M, C, shift || scale};
    trace(ctx, "layer_norm", d, 3, t0);
}

void qd_layer_norm(qd_ctx *ctx, const float *x, int64_t M, int64_t C, float eps,
                   const float *gamma, const float *beta, float *y) {
    qd_layer_norm_mod(ctx, x, M, C, eps, gamma, beta, 0, NULL, NULL, 0, y);
}

/* ---- GEGLU, SiLU ---- */

typedef struct { const float *x; float *y; int64_t F; } geglu_args;

static void geglu_part(void *arg, int64_t b, int64_t e, int thread) {
    const geglu_args *a = arg;
    int level = isa();
    for (int64_t r = b; r < e; r++) {
        const float *row = a->x + r * 2 * a->F;
        geglu_row(level, row, row + a->F, a->F, a->y + r * a->F);
    }
}

void qd_geglu(qd_ctx *ctx, const float *x, int64_t M, int64_t F, float *y) {
    double t0 = ctx->trace ? qd_now() : 0;
    geglu_args a = {x, y, F};
    par(ctx, M, 1, geglu_part, &a);
    int64_t d[2] = {M, F};
    trace(ctx, "geglu", d, 2, t0);
}

typedef struct { float *x; } silu_args;

static void silu_part(void *arg, int64_t b, int64_t e, int thread) {
    const silu_args *a = arg;
    qd_silu(a->x + b, e - b);
}

void qd_silu_par(qd_ctx *ctx, float *x, int64_t n) {
    double t0 = ctx->trace ? qd_now() : 0;
    silu_args a = {x};
    par(ctx, n, 16, silu_part, &a);
    trace(ctx, "silu", &n, 1, t0);
}
