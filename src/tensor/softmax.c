/* Row softmax with a vectorised exp (tensor/exp_avx512.h): libm's scalar expf made
 * it a third of a UNet step when attention still went through it. */
#include "tensor/ops.h"

#include "tensor/exp_avx512.h"

#include <immintrin.h>
#include <math.h>

__attribute__((target("avx512f")))
static void softmax_avx512(float *x, int64_t M, int64_t N) {
    for (int64_t r = 0; r < M; r++) {
        float *row = x + r * N;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 16 <= N; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(row + i));
        float mx = _mm512_reduce_max_ps(vmax);
        for (; i < N; i++) if (row[i] > mx) mx = row[i];
        if (mx == -INFINITY) {                          /* fully masked row: zeros, not NaN */
            for (i = 0; i < N; i++) row[i] = 0;
            continue;
        }
        __m512 vm = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
        for (i = 0; i + 16 <= N; i += 16) {
            __m512 e = qd_exp512(_mm512_sub_ps(_mm512_loadu_ps(row + i), vm));
            _mm512_storeu_ps(row + i, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        if (i < N) {
            __mmask16 k = (__mmask16)((1u << (N - i)) - 1);
            __m512 e = qd_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + i), vm));
            _mm512_mask_storeu_ps(row + i, k, e);
            vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(k, e));
        }
        float sum = _mm512_reduce_add_ps(vsum);
        __m512 inv = _mm512_set1_ps(sum > 0 ? 1.0f / sum : 0.0f);
        for (i = 0; i + 16 <= N; i += 16) _mm512_storeu_ps(row + i, _mm512_mul_ps(_mm512_loadu_ps(row + i), inv));
        for (; i < N; i++) row[i] *= sum > 0 ? 1.0f / sum : 0.0f;
    }
}

static void softmax_scalar(float *x, int64_t M, int64_t N) {
    for (int64_t r = 0; r < M; r++) {
        float *row = x + r * N, mx = -INFINITY;
        for (int64_t i = 0; i < N; i++) if (row[i] > mx) mx = row[i];
        if (mx == -INFINITY) mx = 0;
        double sum = 0;
        for (int64_t i = 0; i < N; i++) { row[i] = expf(row[i] - mx); sum += row[i]; }
        float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
        for (int64_t i = 0; i < N; i++) row[i] *= inv;
    }
}

void qd_softmax_rows(float *x, int64_t M, int64_t N) {
    static int has512 = -1;   /* idempotent: every thread computes the same answer */
    if (has512 < 0) { __builtin_cpu_init(); has512 = __builtin_cpu_supports("avx512f") ? 1 : 0; }
    if (has512) softmax_avx512(x, M, N);
    else softmax_scalar(x, M, N);
}
