/* Register-only FMA chains (see cpu_peak.h). */
#include "cpu_peak.h"

#include <immintrin.h>
#include <pthread.h>
#include <time.h>

/* Twelve named accumulators (an array would live in memory at -O2), with distinct start
 * values: identical chains would be merged by the compiler into one. */
#define FMA_BODY(T, SET, FMA, ADD)                                                      \
    T m = SET(0.999999f), c = SET(1e-7f);                                               \
    T a0 = SET(0), a1 = SET(1), a2 = SET(2), a3 = SET(3), a4 = SET(4), a5 = SET(5);     \
    T a6 = SET(6), a7 = SET(7), a8 = SET(8), a9 = SET(9), a10 = SET(10), a11 = SET(11); \
    for (long k = 0; k < iters; k++) {                                                  \
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c); \
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c); \
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c); \
    }                                                                                   \
    T s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));            \
    s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)))

__attribute__((target("avx512f"))) float fma512_chains(long iters) {
    FMA_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma256_chains(long iters) {
    FMA_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps);
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_chains(long iters) {
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x33d633d6);
#define D(i) __m512 a##i = _mm512_set1_ps((float)i);
#define F(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
#define ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) \
               X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
    ALL(D)
    for (long k = 0; k < iters; k++) { ALL(F) }
#define S(i) s = _mm512_add_ps(s, a##i);
    __m512 s = _mm512_setzero_ps();
    ALL(S)
    return _mm512_reduce_add_ps(s);
#undef D
#undef F
#undef S
#undef ALL
}

/* ---- the peak of several threads at once ---- */

#define PEAK_ITERS 2000000L

typedef struct { int bf16; double rate; float sink; } peak_job;

static double peak_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *peak_worker(void *arg) {
    peak_job *j = arg;
    double t0 = peak_now();
    j->sink = j->bf16 ? bf16_chains(PEAK_ITERS / 2) : fma512_chains(PEAK_ITERS);
    /* 12 x ITERS instructions (bf16: 24 chains, half the iterations) x 16 lanes x
     * 2 FLOP per FMA or 4 (two products and their sum) per vdpbf16ps */
    j->rate = (double)PEAK_ITERS * 12 * 16 * (j->bf16 ? 4 : 2) / (peak_now() - t0);
    return NULL;
}

double cpu_peak_gflops(int threads, int bf16) {
    if (!__builtin_cpu_supports("avx512f") || (bf16 && !__builtin_cpu_supports("avx512bf16"))) return 0;
    if (threads > 64) threads = 64;
    double best = 0;
    for (int r = 0; r < 5; r++) {
        pthread_t th[64];
        peak_job jobs[64];
        int started = 0;
        for (int i = 0; i < threads; i++) {
            jobs[i] = (peak_job){bf16, 0, 0};
            if (pthread_create(&th[i], NULL, peak_worker, &jobs[i]) == 0) started++;
            else break;
        }
        double total = 0;
        for (int i = 0; i < started; i++) {
            pthread_join(th[i], NULL);
            total += jobs[i].rate;
        }
        if (total > best) best = total;
    }
    return best / 1e9;
}
