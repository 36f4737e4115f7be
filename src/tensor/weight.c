#include "tensor/weight.h"

#include <immintrin.h>
#include <string.h>

/* fp16 and bf16 rows are what most models store: convert them 16 at a time (a
 * weight is decoded once per K block and call, and for small batches that decode
 * is a large part of a linear's time). Other dtypes take qd_st_to_f32. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void f16_row_avx512(const uint16_t *s, int64_t n, float *d) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(d + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void bf16_row_avx512(const uint16_t *s, int64_t n, float *d) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
        _mm512_storeu_si512(d + i, _mm512_slli_epi32(v, 16));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
        _mm512_mask_storeu_ps(d + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

static int cpu_avx512bwvl(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl");
    }
    return has;
}

static void dense_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                         float *dst, int64_t ld) {
    const qd_st_tensor *t = w->t;
    int fast = (t->dtype == QD_F16 || t->dtype == QD_BF16) && ((uintptr_t)t->data & 1) == 0 && cpu_avx512bwvl();
    for (int64_t r = 0; r < nr; r++) {
        int64_t off = (r0 + r) * w->cols + k0;
        if (fast && t->dtype == QD_F16) f16_row_avx512((const uint16_t *)t->data + off, nk, dst + r * ld);
        else if (fast) bf16_row_avx512((const uint16_t *)t->data + off, nk, dst + r * ld);
        else qd_st_to_f32(t, off, nk, dst + r * ld);
    }
}

void qd_weight_dense(qd_weight *w, const qd_st_tensor *t, int64_t rows, int64_t cols) {
    w->rows = rows;
    w->cols = cols;
    w->t = t;
    w->decode = dense_decode;
    w->quant = 0;
    w->linear = 0;
    w->decode_lowp = 0;
    w->decode_kmajor = 0;
    w->lora = 0;
}
