/* GEMM micro-kernels, one per ISA, and the CPUID dispatch between them.
 * Each multiplies an A strip (MR rows, broadcast one k-step at a time) by a B strip
 * (NR columns, loaded as vectors) into an MR x NR tile of C kept in registers.
 * Accumulators are named variables (macros), not arrays: at -O2 GCC would keep an
 * array of vectors in memory. */
#include "tensor/gemm_internal.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AST QD_GEMM_AST

/* ---- generic C: 4 x 16 ---- */

static void k_generic(int64_t kw, const uint32_t *aw, const uint32_t *bw, float *c, int64_t ldc, int acc,
                      const float *rb, const float *cb) {
    enum { R = 4, N = 16 };
    const float *a = (const float *)aw, *b = (const float *)bw;
    float t[R][N] = {{0}};
    for (int64_t k = 0; k < kw; k++)
        for (int i = 0; i < R; i++)
            for (int j = 0; j < N; j++) t[i][j] += a[i * AST + k] * b[k * N + j];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < N; j++) {
            float v = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
            if (rb) v += rb[i];
            if (cb) v += cb[j];
            c[i * ldc + j] = v;
        }
}

/* ---- AVX2 + FMA: 6 x 16 (12 accumulators + 2 B vectors + 1 broadcast of 16 ymm) ---- */

__attribute__((target("avx2,fma")))
static void k_avx2(int64_t kw, const uint32_t *aw, const uint32_t *bw, float *c, int64_t ldc, int acc,
                   const float *rb, const float *cb) {
    const float *a = (const float *)aw, *b = (const float *)bw;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kw; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), x;
#define R2(i) x = _mm256_broadcast_ss(a + i * AST); c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0); \
              c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);
        R2(0) R2(1) R2(2) R2(3) R2(4) R2(5)
#undef R2
        a++;
        b += 16;
    }
    __m256 r[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    __m256 cb0 = cb ? _mm256_loadu_ps(cb) : _mm256_setzero_ps(), cb1 = cb ? _mm256_loadu_ps(cb + 8) : cb0;
    for (int i = 0; i < 6; i++) {
        __m256 add = rb ? _mm256_set1_ps(rb[i]) : _mm256_setzero_ps();
        __m256 a0 = _mm256_add_ps(add, cb0), a1 = _mm256_add_ps(add, cb1);
        float *p = c + i * ldc;
        __m256 v0 = r[i][0], v1 = r[i][1];
        if (acc) { v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p)); v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p + 8)); }
        _mm256_storeu_ps(p, _mm256_add_ps(v0, a0));
        _mm256_storeu_ps(p + 8, _mm256_add_ps(v1, a1));
    }
}

/* ---- AVX-512: 14 x 32, 28 accumulators + 2 B vectors + 1 broadcast of 32 zmm ---- */

#define DECL_ACC(T, Z)                                                               \
    T c00 = Z, c01 = Z, c10 = Z, c11 = Z, c20 = Z, c21 = Z, c30 = Z, c31 = Z,        \
      c40 = Z, c41 = Z, c50 = Z, c51 = Z, c60 = Z, c61 = Z, c70 = Z, c71 = Z,        \
      c80 = Z, c81 = Z, c90 = Z, c91 = Z, c100 = Z, c101 = Z, c110 = Z, c111 = Z,    \
      c120 = Z, c121 = Z, c130 = Z, c131 = Z
#define ALL_ROWS(R) R(0) R(1) R(2) R(3) R(4) R(5) R(6) R(7) R(8) R(9) R(10) R(11) R(12) R(13)

/* The C tile the kernel will add to comes from L3 or memory (it was written one K block
 * ago): ask for it into L2 now, so it arrives while the k loop runs. */
#define PREFETCH_C()                                                                   \
    if (acc)                                                                           \
        for (int i_ = 0; i_ < 14; i_++) {                                              \
            _mm_prefetch((const char *)(c + i_ * ldc), _MM_HINT_T1);                    \
            _mm_prefetch((const char *)(c + i_ * ldc + 16), _MM_HINT_T1);               \
        }

/* Store the 14 x 32 tile: (+ C if acc) + row bias + column bias. */
#define STORE512(i)                                                                      \
    {                                                                                    \
        float *p = c + (i) * ldc;                                                        \
        __m512 v0 = c##i##0, v1 = c##i##1;                                               \
        if (acc) { v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p)); v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p + 16)); } \
        if (rb) { __m512 x = _mm512_set1_ps(rb[i]); v0 = _mm512_add_ps(v0, x); v1 = _mm512_add_ps(v1, x); } \
        if (cb) { v0 = _mm512_add_ps(v0, cb0); v1 = _mm512_add_ps(v1, cb1); }          \
        _mm512_storeu_ps(p, v0);                                                         \
        _mm512_storeu_ps(p + 16, v1);                                                    \
    }

__attribute__((target("avx512f")))
static void k_avx512(int64_t kw, const uint32_t *aw, const uint32_t *bw, float *c, int64_t ldc, int acc,
                     const float *rb, const float *cb) {
    const float *a = (const float *)aw, *b = (const float *)bw;
    DECL_ACC(__m512, _mm512_setzero_ps());
    PREFETCH_C();
    for (int64_t k = 0; k < kw; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), x;
#define R512(i) x = _mm512_set1_ps(a[(i) * AST]); c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0); \
                c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1);
        ALL_ROWS(R512)
#undef R512
        a++;
        b += 32;
    }
    __m512 cb0 = cb ? _mm512_loadu_ps(cb) : _mm512_setzero_ps(), cb1 = cb ? _mm512_loadu_ps(cb + 16) : cb0;
    ALL_ROWS(STORE512)
}

/* ---- AVX-512 BF16: the same 14 x 32 tile, vdpbf16ps on bf16 pairs (2 k per word) ---- */

__attribute__((target("avx512f,avx512bf16")))
static void k_avx512bf16(int64_t kw, const uint32_t *a, const uint32_t *bw, float *c, int64_t ldc, int acc,
                         const float *rb, const float *cb) {
    const int *b = (const int *)bw;
    DECL_ACC(__m512, _mm512_setzero_ps());
    PREFETCH_C();
    for (int64_t k = 0; k < kw; k++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16), x;
#define RBF(i) x = (__m512bh)_mm512_set1_epi32((int)a[(i) * AST]); c##i##0 = _mm512_dpbf16_ps(c##i##0, x, b0); \
               c##i##1 = _mm512_dpbf16_ps(c##i##1, x, b1);
        ALL_ROWS(RBF)
#undef RBF
        a++;
        b += 32;
    }
    __m512 cb0 = cb ? _mm512_loadu_ps(cb) : _mm512_setzero_ps(), cb1 = cb ? _mm512_loadu_ps(cb + 16) : cb0;
    ALL_ROWS(STORE512)
}

/* ---- AVX-512 BF16 edge strips: the first `rows` (< 14) rows of a strip ----
 * A weight with Cout = 128 leaves a last strip of 2 rows: the full kernel would spend
 * 14 rows of work on it (9% of the whole GEMM). These run R = rows rounded up to even
 * rows of accumulators (the strip's padding rows are zero) and store `rows` rows. */

#define ROWS_2(X) X(0) X(1)
#define ROWS_4(X) ROWS_2(X) X(2) X(3)
#define ROWS_6(X) ROWS_4(X) X(4) X(5)
#define ROWS_8(X) ROWS_6(X) X(6) X(7)
#define ROWS_10(X) ROWS_8(X) X(8) X(9)
#define ROWS_12(X) ROWS_10(X) X(10) X(11)
#define ROWS_14(X) ROWS_12(X) X(12) X(13)
#define DECL_ROW(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0;
#define LIST_ROW(i) {c##i##0, c##i##1},
#define RBF_ROW(i) x = (__m512bh)_mm512_set1_epi32((int)a[(i) * AST]); c##i##0 = _mm512_dpbf16_ps(c##i##0, x, b0); \
                   c##i##1 = _mm512_dpbf16_ps(c##i##1, x, b1);

#define DEF_BF16_ROWS(R)                                                                                    \
    __attribute__((target("avx512f,avx512bf16")))                                                          \
    static void k_bf16_r##R(int rows, int64_t kw, const uint32_t *a, const uint32_t *bw, float *c, int64_t ldc, \
                            int acc, const float *rb, const float *cb) {                                    \
        const int *b = (const int *)bw;                                                                     \
        ROWS_##R(DECL_ROW)                                                                                  \
        for (int64_t k = 0; k < kw; k++) {                                                                  \
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16), x;  \
            ROWS_##R(RBF_ROW)                                                                               \
            a++;                                                                                            \
            b += 32;                                                                                        \
        }                                                                                                   \
        __m512 t[R][2] = {ROWS_##R(LIST_ROW)};                                                              \
        store_rows(t, rows, c, ldc, acc, rb, cb);                                                           \
    }

__attribute__((target("avx512f")))
static void store_rows(const __m512 (*t)[2], int rows, float *c, int64_t ldc, int acc, const float *rb, const float *cb) {
    __m512 cb0 = cb ? _mm512_loadu_ps(cb) : _mm512_setzero_ps(), cb1 = cb ? _mm512_loadu_ps(cb + 16) : cb0;
    for (int i = 0; i < rows; i++) {
        float *p = c + i * ldc;
        __m512 v0 = t[i][0], v1 = t[i][1];
        if (acc) { v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p)); v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p + 16)); }
        if (rb) { __m512 x = _mm512_set1_ps(rb[i]); v0 = _mm512_add_ps(v0, x); v1 = _mm512_add_ps(v1, x); }
        if (cb) { v0 = _mm512_add_ps(v0, cb0); v1 = _mm512_add_ps(v1, cb1); }
        _mm512_storeu_ps(p, v0);
        _mm512_storeu_ps(p + 16, v1);
    }
}

DEF_BF16_ROWS(2)
DEF_BF16_ROWS(4)
DEF_BF16_ROWS(6)
DEF_BF16_ROWS(8)
DEF_BF16_ROWS(10)
DEF_BF16_ROWS(12)
DEF_BF16_ROWS(14)

static void k_avx512bf16_rows(int rows, int64_t kw, const uint32_t *a, const uint32_t *b, float *c, int64_t ldc, int acc,
                              const float *rb, const float *cb) {
    static const qd_gemm_ukernel_rows by_pairs[7] = {k_bf16_r2, k_bf16_r4, k_bf16_r6, k_bf16_r8, k_bf16_r10,
                                                     k_bf16_r12, k_bf16_r14};
    by_pairs[(rows - 1) / 2](rows, kw, a, b, c, ldc, acc, rb, cb);
}

const qd_gemm_kernel *qd_gemm_kernel_pick(int bf16) {
    static const qd_gemm_kernel kbf = {14, 32, 1, k_avx512bf16, "avx512bf16", k_avx512bf16_rows};
    static const qd_gemm_kernel k512 = {14, 32, 0, k_avx512, "avx512", NULL};
    static const qd_gemm_kernel k2 = {6, 16, 0, k_avx2, "avx2", NULL};
    static const qd_gemm_kernel kg = {4, 16, 0, k_generic, "generic", NULL};
    static const qd_gemm_kernel *fp32, *bf;   /* idempotent: every thread computes the same answer */
    if (!__atomic_load_n(&fp32, __ATOMIC_ACQUIRE)) {
        const char *force = getenv("QD_ISA");
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        const qd_gemm_kernel *f, *b;
        if (force && strcmp(force, "generic") == 0) f = &kg;
        else if (force && strcmp(force, "avx2") == 0 && avx2) f = &k2;
        else if (__builtin_cpu_supports("avx512f")) f = &k512;
        else if (avx2) f = &k2;
        else f = &kg;
        b = f == &k512 && __builtin_cpu_supports("avx512bf16") ? &kbf : f;
        __atomic_store_n(&bf, b, __ATOMIC_RELEASE);
        __atomic_store_n(&fp32, f, __ATOMIC_RELEASE);
    }
    return bf16 ? __atomic_load_n(&bf, __ATOMIC_ACQUIRE) : __atomic_load_n(&fp32, __ATOMIC_ACQUIRE);
}
