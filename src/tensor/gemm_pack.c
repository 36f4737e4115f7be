/* Packing for the GEMM: operands (float rows/columns, stored weights decoded here,
 * or a convolution's input read as implicit im2col) into the strip layouts of
 * gemm_internal.h, as fp32 words or bf16 pairs. The AVX-512 paths cover what runs
 * per output tile (activation rows, convolution input) and stored weights, which
 * are decoded KT columns at a time into an L1 tile and go into the strip from there
 * (k-major formats straight into B strips). */
#include "base/cpu.h"
#include "tensor/gemm_internal.h"
#include "tensor/weight.h"
#include "base/half.h"
#include "tensor/transpose16.h"

#include <immintrin.h>
#include <string.h>

#define AST QD_GEMM_AST
/* A stored weight is decoded KT columns at a time into a tile that stays in L1 and
 * goes straight into the packed strip from there (a multiple of 32: whole bf16 pairs
 * and whole 16 x 16 transposes). */
#define KT 256

static inline uint32_t bf16_pair(float lo, float hi) {
    return (uint32_t)qd_f32_to_bf16(lo) | (uint32_t)qd_f32_to_bf16(hi) << 16;
}

/* ---- A strips: rows stay rows ---- */

/* One row of kc values (times alpha) as bf16 pairs; bf16 mode implies AVX512_BF16. */
__attribute__((target("avx512f,avx512bf16")))
static void row_bf16(uint32_t *d, const float *s, int64_t kc, float alpha) {
    __m512 al = _mm512_set1_ps(alpha);
    int64_t k = 0;
    for (; k + 32 <= kc; k += 32) {
        __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(s + k), al), hi = _mm512_mul_ps(_mm512_loadu_ps(s + k + 16), al);
        _mm512_storeu_si512(d + k / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    for (; k < kc; k += 2) d[k / 2] = bf16_pair(s[k] * alpha, k + 1 < kc ? s[k + 1] * alpha : 0.0f);
}

static void row_f32(uint32_t *d, const float *s, int64_t kc, float alpha) {
    float *o = (float *)d;
    if (alpha == 1.0f) memcpy(o, s, sizeof(float) * (size_t)kc);
    else for (int64_t k = 0; k < kc; k++) o[k] = s[k] * alpha;
}

/* A weight's K block is a short run (kc values) of each row, rows a whole row apart:
 * too short for the hardware prefetcher, so the decode of every strip would wait on
 * DRAM latency. Ask for the next strip's runs (dense storage: t) while this one is decoded. */
static inline __attribute__((always_inline)) void prefetch_rows(const qd_st_tensor *t, int64_t cols, int64_t r0,
                                                                int64_t nr, int64_t k0, int64_t kc) {
    size_t es = qd_dtype_size(t->dtype);
    for (int64_t r = 0; r < nr; r++) {
        const char *p = (const char *)t->data + ((r0 + r) * cols + k0) * (int64_t)es;
        for (int64_t b = 0; b < kc * (int64_t)es + 63; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
    }
}

/* A dense fp16 or bf16 row (times alpha) straight into bf16 pairs: no fp32 tile between. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void row16_bf16(uint32_t *d, const uint16_t *s, int64_t kc, int is_f16, float alpha) {
    __m512 al = _mm512_set1_ps(alpha);
    for (int64_t k = 0; k < kc; k += 32) {
        int64_t left = kc - k;
        __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
        __m256i h0 = _mm256_maskz_loadu_epi16(m0, s + k), h1 = _mm256_maskz_loadu_epi16(m1, s + k + 16);
        __m512 lo, hi;
        if (is_f16) {
            lo = _mm512_cvtph_ps(h0);
            hi = _mm512_cvtph_ps(h1);
        } else {
            lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h0), 16));
            hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
        }
        if (alpha != 1.0f) { lo = _mm512_mul_ps(lo, al); hi = _mm512_mul_ps(hi, al); }
        __m512i w = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        int64_t words = (left >= 32 ? 32 : left + 1) / 2;   /* an odd tail's high half is the masked-off 0 */
        _mm512_mask_storeu_epi32(d + k / 2, (__mmask16)((1u << words) - 1), w);
    }
}

void qd_gemm_pack_a(qd_mat m, int64_t i0, int64_t n, int64_t k0, int64_t kc, int mr, int bf16, float alpha,
                    uint32_t *dst, float *scratch) {
    int64_t kw = qd_gemm_kw(kc, bf16);
    for (int64_t s = 0; s < n; s += mr) {
        int rows = (int)(n - s < mr ? n - s : mr);
        uint32_t *d = dst + (s / mr) * qd_gemm_a_strip_words(mr);
        const float *src = scratch;
        int64_t ld = kc;
        if (m.kind == QD_MAT_ROWS) {
            src = m.p + (i0 + s) * m.ld + k0;
            ld = m.ld;
        } else if (m.kind == QD_MAT_WEIGHT) {
            const qd_st_tensor *t = qd_weight_dense_storage(m.w);
            if (t && t->data) prefetch_rows(t, m.w->cols, i0 + s + mr, n - s - mr < mr ? n - s - mr : mr, k0, kc);
            if (t && t->data && bf16 && (t->dtype == QD_F16 || t->dtype == QD_BF16) && ((uintptr_t)t->data & 1) == 0) {
                for (int r = 0; r < rows; r++)
                    row16_bf16(d + r * AST, (const uint16_t *)t->data + (i0 + s + r) * m.w->cols + k0, kc,
                               t->dtype == QD_F16, alpha);
                for (int r = rows; r < mr; r++) memset(d + r * AST, 0, sizeof(uint32_t) * (size_t)kw);
                continue;
            }
            if (bf16 && m.w->decode_bf16 && !m.w->lora &&
                m.w->decode_bf16(m.w, i0 + s, rows, k0, kc, d, AST, alpha)) {   /* the format's own bf16 rows */
                for (int r = rows; r < mr; r++) memset(d + r * AST, 0, sizeof(uint32_t) * (size_t)kw);
                continue;
            }
            for (int64_t kk = 0; kk < kc; kk += KT) {
                int64_t kt = kc - kk < KT ? kc - kk : KT;
                (bf16 && m.w->decode_lowp ? m.w->decode_lowp : m.w->decode)(m.w, i0 + s, rows, k0 + kk, kt, scratch, kt);
                for (int r = 0; r < rows; r++) {
                    if (bf16) row_bf16(d + r * AST + kk / 2, scratch + r * kt, kt, alpha);
                    else row_f32(d + r * AST + kk, scratch + r * kt, kt, alpha);
                }
            }
            for (int r = rows; r < mr; r++) memset(d + r * AST, 0, sizeof(uint32_t) * (size_t)kw);
            continue;
        } else {   /* QD_MAT_COLS (the driver never puts an im2col operand in the A role) */
            for (int r = 0; r < rows; r++)
                for (int64_t k = 0; k < kc; k++) scratch[r * kc + k] = m.p[(k0 + k) * m.ld + i0 + s + r];
        }
        for (int r = 0; r < rows; r++) {
            if (bf16) row_bf16(d + r * AST, src + r * ld, kc, alpha);
            else row_f32(d + r * AST, src + r * ld, kc, alpha);
        }
        for (int r = rows; r < mr; r++) memset(d + r * AST, 0, sizeof(uint32_t) * (size_t)kw);
    }
}

/* ---- B strips: k-major panels of nr columns ---- */

/* panel[k*nr + j] for j < cols (columns past cols are zeroed by the caller's layout) */
static void im2col_rows_generic(const qd_conv_src *cv, int64_t j, int cols, int64_t k0, int64_t kc, float *panel,
                                int nr) {
    int64_t S = cv->Ho * cv->Wo, b0 = j / S, sp = j % S, oy0 = sp / cv->Wo, ox0 = sp % cv->Wo;
    int64_t taps = (int64_t)cv->kh * cv->kw;
    int64_t c = k0 / taps;
    int ky = (int)(k0 % taps / cv->kw), kx = (int)(k0 % cv->kw);
    for (int64_t k = 0; k < kc; k++) {
        float *o = panel + k * nr;
        int64_t b = b0, oy = oy0, ox = ox0;
        for (int t = 0; t < cols; t++) {
            int64_t iy = oy * cv->stride - cv->pt + ky, ix = ox * cv->stride - cv->pl + kx;
            o[t] = iy >= 0 && iy < cv->H && ix >= 0 && ix < cv->W ? cv->x[((b * cv->Cin + c) * cv->H + iy) * cv->W + ix]
                                                                  : 0.0f;
            if (++ox == cv->Wo) { ox = 0; if (++oy == cv->Ho) { oy = 0; b++; } }
        }
        for (int t = cols; t < nr; t++) o[t] = 0;
        if (++kx == cv->kw) { kx = 0; if (++ky == cv->kh) { ky = 0; c++; } }
    }
}

/* Position of output column j: image b, output row oy, column ox. */
typedef struct { int64_t b, oy, ox; int cols; } strip_pos;

/* gather32 for stride 2 (the VAE encoder's downsamplers): a strip inside one output row
 * reads 64 consecutive inputs (masked at the padding) and keeps the even ones; other
 * strips (across rows, or short) are filled lane by lane. */
__attribute__((target("avx512f")))
static void gather32_s2(const qd_conv_src *cv, const strip_pos *sp, int64_t c, int ky, int kx, __m512 *v0, __m512 *v1) {
    int64_t b = sp->b, oy = sp->oy, ox = sp->ox, HW = cv->H * cv->W;
    if (sp->cols == 32 && cv->Wo - ox >= 32) {
        int64_t iy = 2 * oy - cv->pt + ky, ix0 = 2 * ox - cv->pl + kx;
        if (iy < 0 || iy >= cv->H) { *v0 = *v1 = _mm512_setzero_ps(); return; }
        uintptr_t row = (uintptr_t)(cv->x + (b * cv->Cin + c) * HW + iy * cv->W);
        __m512 q[4];
        for (int i = 0; i < 4; i++) {
            int64_t lo = ix0 + 16 * i, first = lo < 0 ? -lo : 0, end = cv->W - lo < 16 ? cv->W - lo : 16;
            __mmask16 m = first < end ? (__mmask16)(((1u << end) - 1) & ~((1u << first) - 1)) : 0;
            /* masked-off lanes are not read: the address may lie outside the row */
            q[i] = m == 0xffff ? _mm512_loadu_ps((const float *)(row + (uintptr_t)lo * sizeof(float)))
                               : _mm512_maskz_loadu_ps(m, (const float *)(row + (uintptr_t)lo * sizeof(float)));
        }
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        *v0 = _mm512_permutex2var_ps(q[0], even, q[1]);
        *v1 = _mm512_permutex2var_ps(q[2], even, q[3]);
        return;
    }
    float t[32];
    for (int l = 0; l < 32; l++) {
        int64_t iy = 2 * oy - cv->pt + ky, ix = 2 * ox - cv->pl + kx;
        t[l] = l < sp->cols && iy >= 0 && iy < cv->H && ix >= 0 && ix < cv->W ? cv->x[(b * cv->Cin + c) * HW + iy * cv->W + ix]
                                                                            : 0.0f;
        if (++ox == cv->Wo) { ox = 0; if (++oy == cv->Ho) { oy = 0; b++; } }
    }
    *v0 = _mm512_loadu_ps(t);
    *v1 = _mm512_loadu_ps(t + 16);
}

/* The 32 values tap (c, ky, kx) reads for one strip (stride 1): each output row's run
 * is one masked load, padding lanes stay 0. */
__attribute__((target("avx512f")))
static void gather32(const qd_conv_src *cv, const strip_pos *sp, int64_t c, int ky, int kx, __m512 *v0, __m512 *v1) {
    if (cv->stride == 2) { gather32_s2(cv, sp, c, ky, kx, v0, v1); return; }
    __m512 a = _mm512_setzero_ps(), z = a;
    int64_t b = sp->b, oy = sp->oy, ox = sp->ox, HW = cv->H * cv->W;
    if (sp->cols == 32 && cv->Wo - ox >= 32) {   /* one output row, the common case: no run loop */
        int64_t iy = oy - cv->pt + ky, ix0 = ox - cv->pl + kx;
        if (iy >= 0 && iy < cv->H && ix0 >= 0 && ix0 + 32 <= cv->W) {
            const float *p = cv->x + (b * cv->Cin + c) * HW + iy * cv->W + ix0;
            *v0 = _mm512_loadu_ps(p);
            *v1 = _mm512_loadu_ps(p + 16);
            return;
        }
    }
    for (int done = 0; done < sp->cols;) {
        int run = (int)(cv->Wo - ox < sp->cols - done ? cv->Wo - ox : sp->cols - done);
        int64_t iy = oy - cv->pt + ky;
        if (iy >= 0 && iy < cv->H) {
            int64_t ix0 = ox - cv->pl + kx;             /* input column of the run's first output */
            int64_t lo = ix0 < 0 ? -ix0 : 0, hi = cv->W - ix0 < run ? cv->W - ix0 : run;
            if (hi > lo) {
                /* lanes [done+lo, done+hi) read x[row + ix0 + t - done]: base points at lane 0 */
                uintptr_t base = (uintptr_t)(cv->x + (b * cv->Cin + c) * HW + iy * cv->W + ix0) -
                                 (uintptr_t)done * sizeof(float);
                uint64_t bits = (((uint64_t)1 << (hi - lo)) - 1) << (done + lo);
                __mmask16 m0 = (__mmask16)bits, m1 = (__mmask16)(bits >> 16);
                if (m0) a = _mm512_mask_loadu_ps(a, m0, (const float *)base);
                if (m1) z = _mm512_mask_loadu_ps(z, m1, (const float *)(base + 16 * sizeof(float)));
            }
        }
        done += run;
        ox += run;
        if (ox == cv->Wo) { ox = 0; if (++oy == cv->Ho) { oy = 0; b++; } }
    }
    *v0 = a;
    *v1 = z;
}

/* 16 words (lo[i] in the low half, hi[i] in the high half): one two-source convert to
 * bf16 (lo in the low 256 bits) and one word interleave. */
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static __m512i pair_words(__m512 lo, __m512 hi) {
    const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(inter, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* Channels ahead that the gather prefetches: moving to the next channel jumps a whole
 * plane, which the hardware prefetcher cannot guess, so each new row of input would be
 * a string of cache misses (most of the pack's time for Cin 128 at 512x512). */
#define PF_CH 4

/* Ask for the input row ky of channel c that the strips' tap row reads (addresses only:
 * a prefetch outside the row is harmless, so no clamping). Inlined: GCC would find a
 * function of prefetches alone free of side effects and drop the call. */
static inline __attribute__((always_inline)) void prefetch_taprow(const qd_conv_src *cv, const strip_pos *sp, int ns,
                                                                  int64_t c, int ky) {
    int64_t span = 32 * (int64_t)cv->stride + cv->kw;   /* floats one strip's row of taps covers */
    for (int t = 0; t < ns; t++) {
        int64_t iy = sp[t].oy * cv->stride - cv->pt + ky, ix0 = sp[t].ox * cv->stride - cv->pl;
        if (iy < 0 || iy >= cv->H) continue;
        uintptr_t p = (uintptr_t)(cv->x + ((sp[t].b * cv->Cin + c) * cv->H + iy) * cv->W) +
                      (uintptr_t)ix0 * sizeof(float);
        for (int64_t f = 0; f < span + 15; f += 16)
            _mm_prefetch((const char *)(p + (uintptr_t)f * sizeof(float)), _MM_HINT_T0);
    }
}

/* Implicit im2col for nr = 32, stride 1 or 2, straight into the packed strips (fp32 or bf16
 * pairs). The tap loop is outside the strip loop: for one tap, consecutive strips read
 * consecutive input, and the kx taps of one row re-read it from L1 (per strip, the
 * taps would walk all channels, whose planes alias in the caches). */
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void im2col_block_avx512(const qd_conv_src *cv, int64_t j0, int64_t n, int64_t k0, int64_t kc, int bf16,
                                uint32_t *dst) {
    enum { G = 8 };
    int64_t kw = qd_gemm_kw(kc, bf16), S = cv->Ho * cv->Wo, taps = (int64_t)cv->kh * cv->kw;
    for (int64_t g0 = 0; g0 < n; g0 += G * 32) {
        strip_pos sp[G];
        int ns = 0;
        for (; ns < G && g0 + ns * 32 < n; ns++) {
            int64_t j = j0 + g0 + ns * 32, r = j % S;
            sp[ns].b = j / S;
            sp[ns].oy = r / cv->Wo;
            sp[ns].ox = r % cv->Wo;
            sp[ns].cols = (int)(n - g0 - ns * 32 < 32 ? n - g0 - ns * 32 : 32);
        }
        uint32_t *d = dst + (g0 / 32) * kw * 32;
        __m512 prev[G][2];
        int64_t c = k0 / taps;
        int ky = (int)(k0 % taps / cv->kw), kx = (int)(k0 % cv->kw);
        for (int64_t k = 0; k < kc; k++) {
            if (kx == 0 && c + PF_CH < cv->Cin) prefetch_taprow(cv, sp, ns, c + PF_CH, ky);
            for (int t = 0; t < ns; t++) {
                __m512 v0, v1;
                gather32(cv, &sp[t], c, ky, kx, &v0, &v1);
                uint32_t *o = d + t * kw * 32;
                if (!bf16) {
                    _mm512_storeu_ps(o + k * 32, v0);
                    _mm512_storeu_ps(o + k * 32 + 16, v1);
                } else if (k & 1) {
                    _mm512_storeu_si512(o + k / 2 * 32, pair_words(prev[t][0], v0));
                    _mm512_storeu_si512(o + k / 2 * 32 + 16, pair_words(prev[t][1], v1));
                } else if (k + 1 == kc) {   /* odd kc: the last pair's high half is 0 */
                    _mm512_storeu_si512(o + k / 2 * 32, pair_words(v0, _mm512_setzero_ps()));
                    _mm512_storeu_si512(o + k / 2 * 32 + 16, pair_words(v1, _mm512_setzero_ps()));
                } else {
                    prev[t][0] = v0;
                    prev[t][1] = v1;
                }
            }
            if (++kx == cv->kw) { kx = 0; if (++ky == cv->kh) { ky = 0; c++; } }
        }
    }
}

/* Pairs of panel rows 2p, 2p+1 into bf16 words, 32 columns at a time. */
__attribute__((target("avx512f,avx512bf16")))
static void panel_bf16_32(uint32_t *d, const float *panel, int64_t kc) {
    for (int64_t p = 0; p < (kc + 1) / 2; p++) {
        const float *r0 = panel + 2 * p * 32, *r1 = r0 + 32;
        int odd = 2 * p + 1 >= kc;
        for (int h = 0; h < 2; h++) {
            __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + 16 * h)));
            __m512i hi = odd ? _mm512_setzero_si512()
                             : _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + 16 * h)));
            _mm512_storeu_si512(d + p * 32 + 16 * h, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* Rows (row t at src + t*ld, t < cols <= 32) x kc into one 32-wide B strip: 16 x 16
 * blocks transposed in registers; bf16 rows are first converted to pair words. */
__attribute__((target("avx512f,avx512bf16")))
static void rows_to_strip32(const float *src, int64_t ld, int cols, int64_t kc, int bf16, uint32_t *d) {
    int64_t kw = qd_gemm_kw(kc, bf16), step = bf16 ? 32 : 16;
    for (int t0 = 0; t0 < 32; t0 += 16) {
        for (int64_t k = 0; k < kc; k += step) {
            __m512i r[16], o[16];
            int64_t left = kc - k;
            __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            for (int t = 0; t < 16; t++) {
                if (t0 + t >= cols) { r[t] = _mm512_setzero_si512(); continue; }
                const float *row = src + (t0 + t) * ld + k;
                __m512 lo = _mm512_maskz_loadu_ps(m0, row);
                r[t] = bf16 ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, row + 16), lo) : _mm512_castps_si512(lo);
            }
            qd_transpose16(r, o);
            int64_t q0 = bf16 ? k / 2 : k, nq = kw - q0 < 16 ? kw - q0 : 16;
            for (int64_t q = 0; q < nq; q++) _mm512_storeu_si512(d + (q0 + q) * 32 + t0, o[q]);
        }
    }
}

/* Rows of bf16 pair words (row t at src + t*ldw, t < cols <= 32) x kc values into one 32-wide
 * bf16 B strip: rows_to_strip32 without the conversion (the format decoded to bf16 itself). */
__attribute__((target("avx512f")))
static void words_to_strip32(const uint32_t *src, int64_t ldw, int cols, int64_t kc, uint32_t *d) {
    int64_t kw = qd_gemm_kw(kc, 1);
    for (int t0 = 0; t0 < 32; t0 += 16) {
        for (int64_t q0 = 0; q0 < kw; q0 += 16) {
            __m512i r[16], o[16];
            int64_t nq = kw - q0 < 16 ? kw - q0 : 16;
            __mmask16 m = (__mmask16)((1u << nq) - 1);
            for (int t = 0; t < 16; t++)
                r[t] = t0 + t < cols ? _mm512_maskz_loadu_epi32(m, src + (t0 + t) * ldw + q0) : _mm512_setzero_si512();
            qd_transpose16(r, o);
            for (int64_t q = 0; q < nq; q++) _mm512_storeu_si512(d + (q0 + q) * 32 + t0, o[q]);
        }
    }
}

void qd_gemm_pack_b(qd_mat m, int64_t j0, int64_t n, int64_t k0, int64_t kc, int nr, int bf16, uint32_t *dst,
                    float *scratch) {
    int64_t kw = qd_gemm_kw(kc, bf16);
    float *dec = scratch + (int64_t)2 * QD_GEMM_KCW * QD_GEMM_MAXR;   /* decoded weight rows */
    if (m.kind == QD_MAT_IM2COL && nr == 32 && (m.conv->stride == 1 || m.conv->stride == 2) && qd_cpu_avx512() &&
        (!bf16 || qd_cpu_avx512bf16())) {
        im2col_block_avx512(m.conv, j0, n, k0, kc, bf16, dst);
        return;
    }
    for (int64_t s = 0; s < n; s += nr) {
        int cols = (int)(n - s < nr ? n - s : nr);
        uint32_t *d = dst + (s / nr) * qd_gemm_b_strip_words(kw, nr);
        float *panel = bf16 ? scratch : (float *)d;
        if (m.kind == QD_MAT_COLS) {
            for (int64_t k = 0; k < kc; k++) {
                memcpy(panel + k * nr, m.p + (k0 + k) * m.ld + j0 + s, sizeof(float) * (size_t)cols);
                for (int t = cols; t < nr; t++) panel[k * nr + t] = 0;
            }
        } else if (m.kind == QD_MAT_IM2COL) {
            im2col_rows_generic(m.conv, j0 + s, cols, k0, kc, panel, nr);
        } else {
            const float *src = dec;
            int64_t ld = kc;
            if (m.kind == QD_MAT_WEIGHT && m.w->decode_kmajor && nr == 32 && (!bf16 || qd_cpu_avx512bf16())) {
                /* stored input-major: decoded k-major, the strip's own order */
                for (int64_t kk = 0; kk < kc; kk += KT) {
                    int64_t kt = kc - kk < KT ? kc - kk : KT;
                    if (!bf16) {
                        m.w->decode_kmajor(m.w, j0 + s, cols, k0 + kk, kt, (float *)d + kk * 32, 32);
                        continue;
                    }
                    m.w->decode_kmajor(m.w, j0 + s, cols, k0 + kk, kt, dec, 32);
                    panel_bf16_32(d + kk / 2 * 32, dec, kt);
                }
                continue;
            }
            if (m.kind == QD_MAT_WEIGHT && nr == 32 && qd_cpu_avx512() && (!bf16 || qd_cpu_avx512bf16())) {
                for (int64_t kk = 0; kk < kc; kk += KT) {   /* tile by tile, never the whole K block */
                    int64_t kt = kc - kk < KT ? kc - kk : KT;
                    if (bf16 && m.w->decode_bf16 && !m.w->lora &&   /* the format's own bf16 rows, transposed */
                        m.w->decode_bf16(m.w, j0 + s, cols, k0 + kk, kt, (uint32_t *)dec, KT / 2, 1.0f)) {
                        words_to_strip32((const uint32_t *)dec, KT / 2, cols, kt, d + kk / 2 * 32);
                        continue;
                    }
                    (bf16 && m.w->decode_lowp ? m.w->decode_lowp : m.w->decode)(m.w, j0 + s, cols, k0 + kk, kt, dec, kt);
                    rows_to_strip32(dec, kt, cols, kt, bf16, d + (bf16 ? kk / 2 : kk) * 32);
                }
                continue;
            }
            if (m.kind == QD_MAT_ROWS) {
                src = m.p + (j0 + s) * m.ld + k0;
                ld = m.ld;
            } else {
                m.w->decode(m.w, j0 + s, cols, k0, kc, dec, kc);
            }
            if (nr == 32 && qd_cpu_avx512() && (!bf16 || qd_cpu_avx512bf16())) {
                rows_to_strip32(src, ld, cols, kc, bf16, d);
                continue;
            }
            for (int t = 0; t < cols; t++) {
                const float *row = src + t * ld;
                for (int64_t k = 0; k < kc; k++) panel[k * nr + t] = row[k];
            }
            for (int t = cols; t < nr; t++)
                for (int64_t k = 0; k < kc; k++) panel[k * nr + t] = 0;
        }
        if (!bf16) continue;
        if (nr == 32) {
            panel_bf16_32(d, panel, kc);
        } else {
            for (int64_t p = 0; p < kw; p++)
                for (int t = 0; t < nr; t++)
                    d[p * nr + t] = bf16_pair(panel[2 * p * nr + t], 2 * p + 1 < kc ? panel[(2 * p + 1) * nr + t] : 0.0f);
        }
    }
}
