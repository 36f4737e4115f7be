/* Vectorised GroupNorm + SiLU (see vae_norm.h). Two passes over each group as the
 * reference does (mean, then the centred sum of squares, so large offsets lose no
 * precision): 16-lane fp32 partial sums, flushed into double every 4096 elements,
 * then one pass that normalises, applies the channel's scale and shift and SiLU. */
#include "models/vae_norm.h"
#include "tensor/ops.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include "tensor/exp_avx512.h"

typedef struct {
    const float *x; float *y; int64_t C, S; int groups; float eps;
    const float *gamma, *beta; int silu;
} vgn_args;

enum { FLUSH = 4096 };

/* sum of (x[i] - m) ^ p for p = 1 (m = 0) or 2, n a multiple of nothing in particular */
__attribute__((target("avx512f")))
static double sum_pow(const float *x, int64_t n, float m, int sq) {
    double total = 0;
    __m512 vm = _mm512_set1_ps(m);
    for (int64_t o = 0; o < n; o += FLUSH) {
        int64_t e = n - o < FLUSH ? n - o : FLUSH, i = 0;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; i + 32 <= e; i += 32) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + o + i), vm);
            __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(x + o + i + 16), vm);
            a0 = sq ? _mm512_fmadd_ps(d0, d0, a0) : _mm512_add_ps(a0, d0);
            a1 = sq ? _mm512_fmadd_ps(d1, d1, a1) : _mm512_add_ps(a1, d1);
        }
        double part = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (; i < e; i++) {
            double d = (double)x[o + i] - m;
            part += sq ? d * d : d;
        }
        total += part;
    }
    return total;
}

__attribute__((target("avx512f")))
static void apply(const float *x, float *y, int64_t n, float m, float s, float o, int silu) {
    __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(s), vo = _mm512_set1_ps(o), one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs, vo);
        if (silu) v = _mm512_div_ps(v, _mm512_add_ps(one, qd_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        _mm512_storeu_ps(y + i, v);
    }
    for (; i < n; i++) {
        float v = (x[i] - m) * s + o;
        y[i] = silu ? v / (1.0f + expf(-v)) : v;
    }
}

static void vgn_part(void *arg, int64_t b, int64_t e, int thread) {
    const vgn_args *a = arg;
    (void)thread;
    int64_t cpg = a->C / a->groups, n = cpg * a->S;
    for (int64_t bg = b; bg < e; bg++) {       /* bg = batch * groups + group */
        int64_t g = bg % a->groups;
        const float *x = a->x + bg * n;
        float *y = a->y + bg * n;
        double mean = sum_pow(x, n, 0.0f, 0) / (double)n;
        double var = sum_pow(x, n, (float)mean, 1) / (double)n;
        float inv = (float)(1.0 / sqrt(var + a->eps)), m = (float)mean;
        for (int64_t c = 0; c < cpg; c++) {
            int64_t ch = g * cpg + c;
            float s = inv * (a->gamma ? a->gamma[ch] : 1.0f), o = a->beta ? a->beta[ch] : 0.0f;
            apply(x + c * a->S, y + c * a->S, a->S, m, s, o, a->silu);
        }
    }
}
#endif

void qd_vae_group_norm(qd_ctx *ctx, const float *x, int64_t B, int64_t C, int64_t S, int groups, float eps,
                       const float *gamma, const float *beta, int silu, float *y) {
#if defined(__x86_64__)
    const char *isa = getenv("QD_ISA");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && !(isa && (!strcmp(isa, "generic") || !strcmp(isa, "avx2")))) {
        vgn_args a = {x, y, C, S, groups, eps, gamma, beta, silu};
        qd_parallel_for(ctx, B * groups, vgn_part, &a);
        return;
    }
#endif
    qd_group_norm(ctx, x, B, C, S, groups, eps, gamma, beta, silu, y);
}
