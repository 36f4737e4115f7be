/* int8 GEMM: quantization of rows, weight panel packing, micro-kernels per ISA and
 * the cache-blocked driver (see int8_gemm.h for the arithmetic).
 *
 * Blocking: a work item is a block of mc tokens (their codes stay in L2) and a group
 * of weight panels (64 outputs x kp each, packed once per call, shared by all
 * threads). For every panel of its group it walks K in blocks of KC (a 64 x KC
 * sub-panel stays in L1) and runs the 6 x 64 micro-kernel down the token block,
 * accumulating int32 into a small mc x 64 tile. With VNNI each 6 x 64 tile goes
 * through the float epilogue into y right after its last K block, while it is in L1
 * (at K = 320 the epilogue and the output writes are ~15% of the time); large outputs
 * are written with streaming stores. The generic and AVX2 paths run the epilogue on
 * the whole mc x 64 tile after the last K block. */
#include "quant/int8_gemm.h"
#include "base/threads.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define KC 512            /* k per inner block: 64 x 512 bytes of panel = 32 KiB */
#define MC_BYTES 393216   /* token block codes kept in L2 */
#define NT_BYTES 4194304.0   /* outputs from this size on bypass the caches (see qd_i8_gemm) */

int qd_i8_supported(qd_i8_isa isa) {
    __builtin_cpu_init();
    switch (isa) {
    case QD_I8_VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
    case QD_I8_AVX2: return __builtin_cpu_supports("avx2");
    default: return 1;
    }
}

qd_i8_isa qd_i8_pick(void) {
    const char *force = getenv("QD_ISA");
    if (force && strcmp(force, "generic") == 0) return QD_I8_GENERIC;
    if (force && strcmp(force, "avx2") == 0) return qd_i8_supported(QD_I8_AVX2) ? QD_I8_AVX2 : QD_I8_GENERIC;
    if (qd_i8_supported(QD_I8_VNNI)) return QD_I8_VNNI;
    if (qd_i8_supported(QD_I8_AVX2)) return QD_I8_AVX2;
    return QD_I8_GENERIC;
}

const char *qd_i8_isa_name(qd_i8_isa isa) {
    return isa == QD_I8_VNNI ? "avx512vnni" : isa == QD_I8_AVX2 ? "avx2" : "generic";
}

/* ---- row quantization ---- */

/* RNE of v clamped to [-127, 127] without libm calls: clamping first is the same
 * (RNE is monotonic and +-127 are integers); NaN fails both tests and becomes -127.
 * Adding and subtracting 1.5 * 2^23 rounds to an integer in the default rounding mode. */
static inline int8_t round_i8(float v) {
    if (v > 127.0f) v = 127.0f;
    else if (!(v >= -127.0f)) v = -127.0f;
    v = (v + 12582912.0f) - 12582912.0f;
    return (int8_t)(int)v;
}

static float amax_generic(const float *x, int64_t K) {
    float m = 0;
    for (int64_t k = 0; k < K; k++) {
        float a = x[k] < 0 ? -x[k] : x[k];
        if (a > m) m = a;      /* NaN compares false: ignored, as fmaxf does */
    }
    return m;
}

__attribute__((target("avx512f")))
static float amax_avx512(const float *x, int64_t K) {
    __m512 m = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + k)), m);  /* NaN: keeps m */
    if (k < K) {
        __mmask16 t = (__mmask16)((1u << (K - k)) - 1);
        m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(t, x + k)), m);
    }
    return _mm512_reduce_max_ps(m);
}

float qd_i8_amax(qd_i8_isa isa, const float *x, int64_t K) {
    return isa == QD_I8_VNNI ? amax_avx512(x, K) : amax_generic(x, K);
}

static int32_t quant_generic(const float *x, int64_t K, float s, int8_t *q) {
    int32_t sum = 0;
    for (int64_t k = 0; k < K; k++) {
        q[k] = round_i8(x[k] / s);
        sum += q[k];
    }
    return sum;
}

/* x / s (a true division, as sdnq does), cvtps rounds to nearest even; NaN converts
 * to INT_MIN and the clamp takes it to -127. 64 values per step: the four int32
 * vectors are packed with signed saturation to 64 bytes (per 128-bit lane: 4 of each
 * vector, put back in order by one dword permutation), clamped to -127 once and
 * stored whole; the code sum is one vpdpbusd of the codes with ones. The 16-wide
 * loop finishes the row. */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static int32_t quant_avx512(const float *x, int64_t K, float s, int8_t *q) {
    const __m512 vs = _mm512_set1_ps(s);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), lo8 = _mm512_set1_epi8(-127);
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i sum = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512i a = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + k), vs));
        __m512i b = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + k + 16), vs));
        __m512i c = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + k + 32), vs));
        __m512i d = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + k + 48), vs));
        __m512i v = _mm512_packs_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
        v = _mm512_max_epi8(_mm512_permutexvar_epi32(order, v), lo8);
        sum = _mm512_dpbusd_epi32(sum, ones, v);
        _mm512_storeu_si512((void *)(q + k), v);
    }
    for (; k < K; k += 16) {
        __mmask16 t = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512i v = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_maskz_loadu_ps(t, x + k), vs));
        v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
        v = _mm512_maskz_mov_epi32(t, v);
        sum = _mm512_add_epi32(sum, v);
        _mm512_mask_cvtepi32_storeu_epi8(q + k, t, v);
    }
    return _mm512_reduce_add_epi32(sum);
}

float qd_i8_quantize_row(qd_i8_isa isa, const float *x, int64_t K, int64_t kp, int8_t *q, int32_t *sum) {
    float s = qd_i8_amax(isa, x, K) / 127.0f;
    memset(q + K, 0, (size_t)(kp - K));
    if (!(s > 0)) {
        memset(q, 0, (size_t)K);
        *sum = 0;
        return 0;
    }
    *sum = isa == QD_I8_VNNI ? quant_avx512(x, K, s, q) : quant_generic(x, K, s, q);
    return s;
}

int32_t qd_i8_quantize_scaled(qd_i8_isa isa, const float *x, int64_t K, float s, int8_t *q) {
    return isa == QD_I8_VNNI ? quant_avx512(x, K, s, q) : quant_generic(x, K, s, q);
}

/* ---- panel packing ---- */

static uint8_t isa_flip(qd_i8_isa isa) { return isa == QD_I8_VNNI ? 0x80 : 0; }   /* VNNI reads w + 128 */

void qd_i8_pack_rows(qd_i8_isa isa, const int8_t *rows, int64_t ld, int nb, int64_t K, int64_t kp, uint8_t *panel) {
    uint32_t flip = isa_flip(isa) * 0x01010101u, *p = (uint32_t *)(void *)panel;
    int64_t k4n = kp / 4, full = K / 4;
    for (int n = 0; n < QD_I8_NR; n++) {
        if (n >= nb) {
            for (int64_t k4 = 0; k4 < k4n; k4++) p[k4 * QD_I8_NR + n] = flip;
            continue;
        }
        const int8_t *r = rows + n * ld;
        for (int64_t k4 = 0; k4 < full; k4++) {
            uint32_t v;
            memcpy(&v, r + 4 * k4, 4);
            p[k4 * QD_I8_NR + n] = v ^ flip;
        }
        if (full < k4n) {   /* K % 4 tail */
            uint8_t b[4] = {0, 0, 0, 0};
            for (int64_t k = 4 * full; k < K; k++) b[k - 4 * full] = (uint8_t)r[k];
            uint32_t v;
            memcpy(&v, b, 4);
            p[full * QD_I8_NR + n] = v ^ flip;
        }
    }
}

void qd_i8_pack_cols(qd_i8_isa isa, const uint8_t *codes, int64_t ld, int64_t n0, int nb, int64_t K, int64_t kp,
                     uint8_t flip, uint8_t *panel) {
    uint8_t f = flip ^ isa_flip(isa);   /* stored byte -> the byte the kernel reads */
    uint8_t zero = isa_flip(isa);       /* weight 0 */
    int64_t k4n = kp / 4;
    const __m128i vf = _mm_set1_epi8((char)f);
    for (int64_t k4 = 0; k4 < k4n; k4++) {
        uint8_t *dst = panel + k4 * 4 * QD_I8_NR;
        if (4 * k4 + 4 <= K && nb == QD_I8_NR) {
            /* 4 rows of 16 bytes -> 16 lanes of 4 bytes: two rounds of unpacking */
            const uint8_t *r0 = codes + (4 * k4) * ld + n0;
            for (int c = 0; c < QD_I8_NR; c += 16) {
                __m128i a = _mm_loadu_si128((const __m128i *)(r0 + c)), b = _mm_loadu_si128((const __m128i *)(r0 + ld + c));
                __m128i e = _mm_loadu_si128((const __m128i *)(r0 + 2 * ld + c));
                __m128i d = _mm_loadu_si128((const __m128i *)(r0 + 3 * ld + c));
                __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
                __m128i cd0 = _mm_unpacklo_epi8(e, d), cd1 = _mm_unpackhi_epi8(e, d);
                _mm_storeu_si128((__m128i *)(dst + 4 * c), _mm_xor_si128(_mm_unpacklo_epi16(ab0, cd0), vf));
                _mm_storeu_si128((__m128i *)(dst + 4 * c + 16), _mm_xor_si128(_mm_unpackhi_epi16(ab0, cd0), vf));
                _mm_storeu_si128((__m128i *)(dst + 4 * c + 32), _mm_xor_si128(_mm_unpacklo_epi16(ab1, cd1), vf));
                _mm_storeu_si128((__m128i *)(dst + 4 * c + 48), _mm_xor_si128(_mm_unpackhi_epi16(ab1, cd1), vf));
            }
            continue;
        }
        for (int n = 0; n < QD_I8_NR; n++)
            for (int j = 0; j < 4; j++) {
                int64_t k = 4 * k4 + j;
                dst[4 * n + j] = n < nb && k < K ? (uint8_t)(codes[k * ld + n0 + n] ^ f) : zero;
            }
    }
}

/* ---- micro-kernels: c[MR][NR] (+)= x[MR rows, 4*k4n] . panel ---- */

static void kern_generic(const int8_t *x, int64_t ldx, const uint8_t *b, int64_t k4n, int32_t *c, int first) {
    for (int m = 0; m < QD_I8_MR; m++) {
        int32_t *cr = c + m * QD_I8_NR;
        if (first) memset(cr, 0, sizeof(int32_t) * QD_I8_NR);
        const int8_t *xr = x + m * ldx;
        for (int64_t k4 = 0; k4 < k4n; k4++) {
            const int8_t *p = (const int8_t *)b + k4 * 4 * QD_I8_NR, *xk = xr + 4 * k4;
            for (int n = 0; n < QD_I8_NR; n++)
                cr[n] += xk[0] * p[4 * n] + xk[1] * p[4 * n + 1] + xk[2] * p[4 * n + 2] + xk[3] * p[4 * n + 3];
        }
    }
}

/* 16 outputs (two ymm) at a time for the 6 rows: 12 accumulators. */
__attribute__((target("avx2")))
static void kern_avx2(const int8_t *x, int64_t ldx, const uint8_t *b, int64_t k4n, int32_t *c, int first) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int q = 0; q < QD_I8_NR; q += 16) {
        __m256i a[QD_I8_MR][2];
        for (int i = 0; i < QD_I8_MR; i++)
            for (int h = 0; h < 2; h++)
                a[i][h] = first ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(c + i * QD_I8_NR + q + 8 * h));
        for (int64_t k4 = 0; k4 < k4n; k4++) {
            const uint8_t *p = b + k4 * 4 * QD_I8_NR + 4 * q;
            __m256i w0 = _mm256_loadu_si256((const __m256i *)p), w1 = _mm256_loadu_si256((const __m256i *)(p + 32));
            __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
            for (int i = 0; i < QD_I8_MR; i++) {
                int32_t xv;
                memcpy(&xv, x + i * ldx + 4 * k4, 4);
                __m256i xb = _mm256_set1_epi32(xv);
                a[i][0] = _mm256_add_epi32(a[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(xb, w0)), ones));
                a[i][1] = _mm256_add_epi32(a[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(xb, w1)), ones));
            }
        }
        for (int i = 0; i < QD_I8_MR; i++)
            for (int h = 0; h < 2; h++) _mm256_storeu_si256((__m256i *)(c + i * QD_I8_NR + q + 8 * h), a[i][h]);
    }
}

/* 6 x 64: 24 zmm accumulators, 4 weight registers, activations broadcast from memory. */
#define VNNI_ROW(i)                                                                   \
    do {                                                                              \
        int32_t xv;                                                                   \
        memcpy(&xv, x + (i) * ldx + 4 * k4, 4);                                       \
        __m512i xb = _mm512_set1_epi32(xv);                                           \
        c##i##0 = _mm512_dpbusd_epi32(c##i##0, w0, xb);                               \
        c##i##1 = _mm512_dpbusd_epi32(c##i##1, w1, xb);                               \
        c##i##2 = _mm512_dpbusd_epi32(c##i##2, w2, xb);                               \
        c##i##3 = _mm512_dpbusd_epi32(c##i##3, w3, xb);                               \
    } while (0)
#define VNNI_LOAD(i)                                                                  \
    __m512i c##i##0 = first ? z : _mm512_loadu_si512((const void *)(c + (i) * QD_I8_NR)),      \
            c##i##1 = first ? z : _mm512_loadu_si512((const void *)(c + (i) * QD_I8_NR + 16)), \
            c##i##2 = first ? z : _mm512_loadu_si512((const void *)(c + (i) * QD_I8_NR + 32)), \
            c##i##3 = first ? z : _mm512_loadu_si512((const void *)(c + (i) * QD_I8_NR + 48))
#define VNNI_STORE(i)                                                                 \
    _mm512_storeu_si512((void *)(c + (i) * QD_I8_NR), c##i##0);                       \
    _mm512_storeu_si512((void *)(c + (i) * QD_I8_NR + 16), c##i##1);                  \
    _mm512_storeu_si512((void *)(c + (i) * QD_I8_NR + 32), c##i##2);                  \
    _mm512_storeu_si512((void *)(c + (i) * QD_I8_NR + 48), c##i##3)

/* The epilogue of one finished 6 x 64 tile, run right after its last micro-kernel
 * call while the int32 tile is in L1: rows m0..m0+mr-1, outputs n0..n0+nb-1, all
 * pointers already offset to (m0, n0). */
typedef struct {
    const float *sx, *sw, *zp, *bias;
    const int32_t *xsum;
    float *y;
    int64_t ldy;
    int32_t corr_mul;      /* 128: undo the panels' w + 128 */
    int mr, accumulate, nt;
    __mmask16 mask[4];     /* valid outputs of each 16-wide column */
} epi_tile;

/* y = sx * (sw * (c - 128 xsum) + zp * xsum) + bias (+ y) for the tile's mr rows
 * (c: 6 x 64 int32, just written by the kernel, in L1): the arithmetic of epi_generic,
 * 16 outputs per step. nt: streaming stores (full 64-aligned rows only). */
__attribute__((target("avx512f"), noinline))
static void epi_tile_vnni(const epi_tile *e, const int32_t *c) {
    for (int i = 0; i < e->mr; i++) {
        const __m512 sx = _mm512_set1_ps(e->sx[i]), xs = _mm512_set1_ps((float)e->xsum[i]);
        const __m512i corr = _mm512_set1_epi32(e->corr_mul * e->xsum[i]);
        float *y = e->y + i * e->ldy;
        const int32_t *ci = c + i * QD_I8_NR;
        for (int j = 0; j < 4; j++) {
            __mmask16 t = e->mask[j];
            __m512 a = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512((const void *)(ci + 16 * j)), corr));
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, e->sw + 16 * j), a);
            if (e->zp) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, e->zp + 16 * j), xs));
            v = _mm512_mul_ps(sx, v);
            if (e->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(t, e->bias + 16 * j));
            if (e->accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(t, y + 16 * j), v);
            if (e->nt) _mm512_stream_ps(y + 16 * j, v);
            else _mm512_mask_storeu_ps(y + 16 * j, t, v);
        }
    }
}

/* One body, two functions with `first` a constant: with `first` a run-time value
 * (or the kernel inlined into the driver) GCC 12 keeps copies of the 24 accumulators
 * on the stack inside the k loop, at half the speed. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline))
static inline void kern_vnni_body(const int8_t *x, int64_t ldx, const uint8_t *b, int64_t k4n, int32_t *c, const int first) {
    const __m512i z = _mm512_setzero_si512();
    VNNI_LOAD(0); VNNI_LOAD(1); VNNI_LOAD(2); VNNI_LOAD(3); VNNI_LOAD(4); VNNI_LOAD(5);
    for (int64_t k4 = 0; k4 < k4n; k4++) {
        const uint8_t *p = b + k4 * 4 * QD_I8_NR;
        __m512i w0 = _mm512_loadu_si512((const void *)p), w1 = _mm512_loadu_si512((const void *)(p + 64));
        __m512i w2 = _mm512_loadu_si512((const void *)(p + 128)), w3 = _mm512_loadu_si512((const void *)(p + 192));
        VNNI_ROW(0); VNNI_ROW(1); VNNI_ROW(2); VNNI_ROW(3); VNNI_ROW(4); VNNI_ROW(5);
    }
    VNNI_STORE(0); VNNI_STORE(1); VNNI_STORE(2); VNNI_STORE(3); VNNI_STORE(4); VNNI_STORE(5);
}
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline))
static void kern_vnni_first(const int8_t *x, int64_t ldx, const uint8_t *b, int64_t k4n, int32_t *c) {
    kern_vnni_body(x, ldx, b, k4n, c, 1);
}
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline))
static void kern_vnni_more(const int8_t *x, int64_t ldx, const uint8_t *b, int64_t k4n, int32_t *c) {
    kern_vnni_body(x, ldx, b, k4n, c, 0);
}

/* ---- epilogue: int32 tile rows -> y ---- */

typedef struct {
    const qd_i8_gemm_args *g;
    int32_t corr_mul;      /* 0: the generic and AVX2 panels hold w itself */
} epi_ctx;

static void epi_generic(const epi_ctx *e, const int32_t *c, int64_t m, int64_t n0, int nb) {
    const qd_i8_gemm_args *g = e->g;
    float sx = g->sx[m], xs = (float)g->xsum[m];
    int32_t corr = e->corr_mul * g->xsum[m];
    float *y = g->y + m * g->ldy + n0;
    for (int n = 0; n < nb; n++) {
        float t = g->sw[n0 + n] * (float)(c[n] - corr);
        if (g->zp) t += g->zp[n0 + n] * xs;
        float v = sx * t;
        if (g->bias) v += g->bias[n0 + n];
        y[n] = g->accumulate ? y[n] + v : v;
    }
}

/* ---- driver ---- */

/* Work items: a block of mc tokens (codes stay in L2) x a group of panels, claimed
 * dynamically (item = block * npg + group, so threads claiming neighbours share a
 * block), so a thread that starts late or shares its CPU takes fewer items. Every
 * output is computed by one item in the same order whoever runs it: the result
 * does not depend on the thread count. */
typedef struct {
    const qd_i8_gemm_args *g;
    qd_i8_isa isa;
    int64_t mc, npanels, npg, pgsize;
    int32_t *tiles;        /* mc x NR int32 per thread slot */
    int nt;                /* the VNNI epilogue writes full aligned rows with streaming stores */
} gemm_job;

static void gemm_items(void *arg, int64_t b, int64_t e, int slot) {
    gemm_job *j = arg;
    const qd_i8_gemm_args *g = j->g;
    int32_t *cb = j->tiles + (int64_t)slot * j->mc * QD_I8_NR;
    int vnni = j->isa == QD_I8_VNNI;
    void (*kern)(const int8_t *, int64_t, const uint8_t *, int64_t, int32_t *, int) =
        j->isa == QD_I8_AVX2 ? kern_avx2 : kern_generic;
    epi_ctx ec = {g, 0};
    int64_t kp = g->kp, k4n = kp / 4, pbytes = qd_i8_panel_bytes(kp);
    for (int64_t item = b; item < e; item++) {
        int64_t blk = item / j->npg, p0 = item % j->npg * j->pgsize;
        int64_t p1 = p0 + j->pgsize < j->npanels ? p0 + j->pgsize : j->npanels;
        int64_t m0 = blk * j->mc, mend = m0 + j->mc < g->M ? m0 + j->mc : g->M;
        if (m0 >= mend) continue;
        int64_t rows = (mend - m0 + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;   /* xq is padded to MR */
        for (int64_t p = p0; p < p1; p++) {
            const uint8_t *panel = g->panels + p * pbytes;
            int64_t n0 = p * QD_I8_NR;
            int nb = (int)(g->N - n0 < QD_I8_NR ? g->N - n0 : QD_I8_NR);
            if (vnni) {
                /* the last K block ends in the fused epilogue, straight into y */
                epi_tile et = {NULL, g->sw + n0, g->zp ? g->zp + n0 : NULL, g->bias ? g->bias + n0 : NULL, NULL, NULL,
                               g->ldy, 128, 0, g->accumulate, j->nt && nb == QD_I8_NR, {0, 0, 0, 0}};
                for (int q = 0; q < 4; q++) {
                    int v = nb - 16 * q;
                    et.mask[q] = v >= 16 ? (__mmask16)0xffff : v <= 0 ? 0 : (__mmask16)((1u << v) - 1);
                }
                for (int64_t k0 = 0; k0 < k4n; k0 += KC / 4) {
                    int64_t kn = k4n - k0 < KC / 4 ? k4n - k0 : KC / 4;
                    int last = k0 + kn == k4n;
                    for (int64_t r = 0; r < rows; r += QD_I8_MR) {
                        int64_t m = m0 + r;
                        et.sx = g->sx + m;
                        et.xsum = g->xsum + m;
                        et.y = g->y + m * g->ldy + n0;
                        et.mr = (int)(mend - m < QD_I8_MR ? mend - m : QD_I8_MR);
                        (k0 == 0 ? kern_vnni_first : kern_vnni_more)(g->xq + m * kp + 4 * k0, kp, panel + k0 * 4 * QD_I8_NR,
                                                                      kn, cb + r * QD_I8_NR);
                        if (last) epi_tile_vnni(&et, cb + r * QD_I8_NR);
                    }
                }
                continue;
            }
            for (int64_t k0 = 0; k0 < k4n; k0 += KC / 4) {
                int64_t kn = k4n - k0 < KC / 4 ? k4n - k0 : KC / 4;
                for (int64_t r = 0; r < rows; r += QD_I8_MR)
                    kern(g->xq + (m0 + r) * kp + 4 * k0, kp, panel + k0 * 4 * QD_I8_NR, kn, cb + r * QD_I8_NR, k0 == 0);
            }
            for (int64_t m = m0; m < mend; m++) epi_generic(&ec, cb + (m - m0) * QD_I8_NR, m, n0, nb);
        }
    }
    if (j->nt) _mm_sfence();   /* streaming stores visible before the job's end is signalled */
}

int qd_i8_gemm(qd_ctx *ctx, qd_i8_isa isa, const qd_i8_gemm_args *g) {
    if (g->M <= 0 || g->N <= 0) return 0;
    int t = qd_threads(ctx);
    /* token blocks whose codes fit MC_BYTES, equal sizes */
    int64_t mc = MC_BYTES / g->kp / QD_I8_MR * QD_I8_MR;
    if (mc < QD_I8_MR) mc = QD_I8_MR;
    if (mc > 192) mc = 192;
    int64_t nblk = (g->M + mc - 1) / mc;
    mc = ((g->M + nblk - 1) / nblk + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
    nblk = (g->M + mc - 1) / mc;
    /* several threads: at least 8 items per thread, so the last claims leave little idle
     * time, and a multiple of the threads unless there are 16 per thread: the 512x1280x1280
     * GEMM had 15 items, 8 + 7 on 2 threads (at most 1.87x), now 30. Panel groups of equal
     * size (a divisor of the panels), the largest that gives that: the items of a token
     * block then cost the same, and a group's size does not change the data reuse (each
     * panel walks the block's codes anyway). */
    int64_t npanels = (g->N + QD_I8_NR - 1) / QD_I8_NR, pgsize = npanels;
    for (int64_t items; t > 1 && pgsize > 1; pgsize--) {
        items = nblk * (npanels / pgsize);
        if (npanels % pgsize == 0 && items >= 8 * (int64_t)t && (items % t == 0 || items >= 16 * (int64_t)t)) break;
    }
    int64_t npg = (npanels + pgsize - 1) / pgsize;
    int32_t *tiles = malloc(sizeof(int32_t) * (size_t)(t * mc * QD_I8_NR));
    if (!tiles) return -1;
    /* An output of NT_BYTES (twice the two cores' L2) or more goes out through L3/DRAM
     * before its reader gets to most of it: streaming stores skip reading every line
     * before writing it. Measured (bench_int8_gemm, 2 threads): 8192x320 -> 2560 55% ->
     * 80% of the int8 peak, 8192x320x320 65% -> 73%, 2048x640x640 65% -> 83%. Only
     * when overwriting full aligned rows: accumulate reads y anyway. */
    int nt = isa == QD_I8_VNNI && !g->accumulate && (double)g->M * (double)g->N * 4.0 >= NT_BYTES &&
             (uintptr_t)g->y % 64 == 0 && g->ldy % 16 == 0;
    gemm_job j = {g, isa, mc, npanels, npg, pgsize, tiles, nt};
    qd_parallel_for_dyn(ctx, nblk * npg, 1, gemm_items, &j);
    free(tiles);
    return 0;
}
