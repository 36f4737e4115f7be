/* int8 dot-product kernels. Panel layout [k/4][32 outputs][4 k]: one 32-bit lane
 * holds the 4 consecutive k of one output, which is what VNNI's vpdpbusd and
 * AVX2's maddubs+madd pairs sum, so a broadcast of 4 activation bytes meets 16
 * (AVX-512) or 8 (AVX2) outputs per instruction. */
#include "quant/int8_gemm.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

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

void qd_i8_prepare_row(qd_i8_isa isa, int8_t *row, int64_t kp) {
    if (isa != QD_I8_VNNI) return;
    for (int64_t k = 0; k < kp; k++) row[k] = (int8_t)((uint8_t)row[k] ^ 0x80u);   /* x + 128 as a byte */
}

void qd_i8_pack(const int8_t *rows, int nb, int64_t K, int64_t kp, int8_t *panel, int32_t *wsum) {
    memset(panel, 0, (size_t)(kp * QD_I8_NB));
    for (int n = 0; n < QD_I8_NB; n++) {
        int32_t s = 0;
        if (n < nb) {
            const int8_t *r = rows + n * K;
            for (int64_t k = 0; k < K; k++) {
                panel[(k / 4) * (4 * QD_I8_NB) + n * 4 + (k & 3)] = r[k];
                s += r[k];
            }
        }
        wsum[n] = s;
    }
}

static void kernel_generic(const int8_t *x, int64_t kp, const int8_t *panel, int32_t *acc) {
    for (int m = 0; m < QD_I8_MR; m++) {
        const int8_t *xr = x + m * kp;
        int32_t *a = acc + m * QD_I8_NB;
        for (int n = 0; n < QD_I8_NB; n++) a[n] = 0;
        for (int64_t k4 = 0; k4 < kp / 4; k4++) {
            const int8_t *p = panel + k4 * 4 * QD_I8_NB, *xk = xr + 4 * k4;
            for (int n = 0; n < QD_I8_NB; n++)
                a[n] += xk[0] * p[4 * n] + xk[1] * p[4 * n + 1] + xk[2] * p[4 * n + 2] + xk[3] * p[4 * n + 3];
        }
    }
}

/* AVX2 has no signed x signed byte product: maddubs(|w|, x * sign(w)) is the same
 * sum, and with |x| <= 127, |w| <= 128 a pair stays below 2^15 (no saturation). */
__attribute__((target("avx2")))
static void kernel_avx2(const int8_t *x, int64_t kp, const int8_t *panel, int32_t *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int m0 = 0; m0 < QD_I8_MR; m0 += 4)
        for (int half = 0; half < 2; half++) {   /* 16 outputs at a time: 8 accumulators */
            __m256i c[4][2];
            for (int i = 0; i < 4; i++) c[i][0] = c[i][1] = _mm256_setzero_si256();
            for (int64_t k4 = 0; k4 < kp / 4; k4++) {
                const int8_t *p = panel + k4 * 4 * QD_I8_NB + half * 64;
                __m256i w0 = _mm256_loadu_si256((const __m256i *)p), w1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
                for (int i = 0; i < 4; i++) {
                    int32_t xv;
                    memcpy(&xv, x + (m0 + i) * kp + 4 * k4, 4);
                    __m256i xb = _mm256_set1_epi32(xv);
                    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones);
                    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones);
                    c[i][0] = _mm256_add_epi32(c[i][0], p0);
                    c[i][1] = _mm256_add_epi32(c[i][1], p1);
                }
            }
            for (int i = 0; i < 4; i++) {
                int32_t *a = acc + (m0 + i) * QD_I8_NB + half * 16;
                _mm256_storeu_si256((__m256i *)a, c[i][0]);
                _mm256_storeu_si256((__m256i *)(a + 8), c[i][1]);
            }
        }
}

/* VNNI: unsigned activations (x + 128) times signed weights, 4 products per lane. */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void kernel_vnni(const int8_t *x, int64_t kp, const int8_t *panel, int32_t *acc) {
    __m512i c[QD_I8_MR][2];
    for (int i = 0; i < QD_I8_MR; i++) c[i][0] = c[i][1] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < kp / 4; k4++) {
        const int8_t *p = panel + k4 * 4 * QD_I8_NB;
        __m512i w0 = _mm512_loadu_si512((const void *)p), w1 = _mm512_loadu_si512((const void *)(p + 64));
        for (int i = 0; i < QD_I8_MR; i++) {
            int32_t xv;
            memcpy(&xv, x + i * kp + 4 * k4, 4);
            __m512i xb = _mm512_set1_epi32(xv);
            c[i][0] = _mm512_dpbusd_epi32(c[i][0], xb, w0);
            c[i][1] = _mm512_dpbusd_epi32(c[i][1], xb, w1);
        }
    }
    for (int i = 0; i < QD_I8_MR; i++) {
        _mm512_storeu_si512((void *)(acc + i * QD_I8_NB), c[i][0]);
        _mm512_storeu_si512((void *)(acc + i * QD_I8_NB + 16), c[i][1]);
    }
}

void qd_i8_kernel(qd_i8_isa isa, const int8_t *x, int64_t kp, const int8_t *panel, const int32_t *wsum, int32_t *acc) {
    if (isa == QD_I8_VNNI) {
        kernel_vnni(x, kp, panel, acc);
        for (int m = 0; m < QD_I8_MR; m++)          /* sum (x+128) w - 128 sum w = sum x w */
            for (int n = 0; n < QD_I8_NB; n++) acc[m * QD_I8_NB + n] -= 128 * wsum[n];
    } else if (isa == QD_I8_AVX2) {
        kernel_avx2(x, kp, panel, acc);
    } else {
        kernel_generic(x, kp, panel, acc);
    }
}
