/* Few-token linears (M <= QD_GEMV_MAX_M, e.g. FLUX's adaLN and time/text embeddings at
 * M = 1): y[m, n] = x[m, :] . W[n, :]. The blocked GEMM would decode and pack the whole
 * weight into panels for a single strip of tokens; here the weight is read once,
 * row block by row block, decoded tile by tile into L1 and dotted with every token
 * straight away, the rows split over the threads. Meant to be memory-bound: the
 * weight's bytes stream once (or decode-bound for SDNQ layers with an SVD term).
 *
 * In bf16 mode the operands are rounded to bf16 and multiplied with vdpbf16ps (fp32
 * sums), the packed GEMM's semantics; else fp32 FMA. */
#include "base/cpu.h"
#include "tensor/gemv.h"
#include "tensor/weight.h"
#include "base/threads.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define RB 4      /* weight rows per block (accumulators: RB per token) */
#define KT 512    /* k per decoded tile: RB x KT floats = 8 KiB */

typedef struct {
    int64_t M, N, K;
    const float *x;
    int64_t ldx;
    const qd_weight *w;
    float *C;
    int64_t ldc;
    float alpha, beta;
    const float *row_bias, *col_bias;
    const uint32_t *xb;        /* bf16 mode: x as bf16 pairs [M][kwx], else NULL */
    int64_t kwx;
    int64_t rows_per_task, tasks;
    int64_t next;              /* atomic: next task to claim */
    int failed;
} gemv_job;

/* acc[m * RB + r] (16 lanes each) += x[m, k0 : k0+kt] * tile[r, 0:kt] for nb rows. */
__attribute__((target("avx512f")))
static void dot_tile_avx512(const gemv_job *j, int64_t k0, int64_t kt, const float *tile, int nb, __m512 *acc) {
    for (int64_t m = 0; m < j->M; m++) {
        const float *x = j->x + m * j->ldx + k0;
        __m512 a0 = acc[m * RB], a1 = acc[m * RB + 1], a2 = acc[m * RB + 2], a3 = acc[m * RB + 3];
        int64_t k = 0;
        for (; k + 16 <= kt; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(tile + k), a0);
            if (nb > 1) a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(tile + KT + k), a1);
            if (nb > 2) a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(tile + 2 * KT + k), a2);
            if (nb > 3) a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(tile + 3 * KT + k), a3);
        }
        if (k < kt) {
            __mmask16 mk = (__mmask16)((1u << (kt - k)) - 1);
            __m512 xv = _mm512_maskz_loadu_ps(mk, x + k);
            a0 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mk, tile + k), a0);
            if (nb > 1) a1 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mk, tile + KT + k), a1);
            if (nb > 2) a2 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mk, tile + 2 * KT + k), a2);
            if (nb > 3) a3 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mk, tile + 3 * KT + k), a3);
        }
        acc[m * RB] = a0; acc[m * RB + 1] = a1; acc[m * RB + 2] = a2; acc[m * RB + 3] = a3;
    }
}

/* bf16 mode: the tile's rows as bf16 pairs, then acc += x pairs . w pairs (vdpbf16ps). */
__attribute__((target("avx512f,avx512bf16")))
static void dot_tile_bf16(const gemv_job *j, int64_t k0, int64_t kt, const float *tile, int nb, __m512 *acc,
                          uint32_t *tb) {
    int64_t kw = (kt + 1) / 2;
    for (int r = 0; r < nb; r++) {
        const float *t = tile + r * KT;
        uint32_t *d = tb + r * (KT / 2);
        for (int64_t k = 0; k < kt; k += 32) {
            int64_t left = kt - k;
            __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, t + k + 16), _mm512_maskz_loadu_ps(m0, t + k));
            _mm512_storeu_si512(d + k / 2, v);   /* tb rows have room for KT/2 words */
        }
    }
    for (int64_t m = 0; m < j->M; m++) {
        const uint32_t *x = j->xb + m * j->kwx + k0 / 2;
        __m512 a0 = acc[m * RB], a1 = acc[m * RB + 1], a2 = acc[m * RB + 2], a3 = acc[m * RB + 3];
        for (int64_t p = 0; p < kw; p += 16) {
            __mmask16 mk = kw - p >= 16 ? 0xffff : (__mmask16)((1u << (kw - p)) - 1);
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi32(mk, x + p);
            a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_maskz_loadu_epi32(mk, tb + p));
            if (nb > 1) a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_maskz_loadu_epi32(mk, tb + KT / 2 + p));
            if (nb > 2) a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_maskz_loadu_epi32(mk, tb + KT + p));
            if (nb > 3) a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_maskz_loadu_epi32(mk, tb + 3 * KT / 2 + p));
        }
        acc[m * RB] = a0; acc[m * RB + 1] = a1; acc[m * RB + 2] = a2; acc[m * RB + 3] = a3;
    }
}

/* x rows as bf16 pairs (the odd tail's high half 0). */
__attribute__((target("avx512f,avx512bf16")))
static void x_to_bf16(const float *x, int64_t ldx, int64_t M, int64_t K, uint32_t *xb, int64_t kwx) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k += 32) {
            int64_t left = K - k;
            __mmask16 m0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + m * ldx + k + 16),
                                                    _mm512_maskz_loadu_ps(m0, x + m * ldx + k));
            int64_t words = (left + 1) / 2 < 16 ? (left + 1) / 2 : 16;
            _mm512_mask_storeu_epi32(xb + m * kwx + k / 2, (__mmask16)((1u << words) - 1), v);
        }
}

__attribute__((target("avx512f")))
static void rows_avx512(const gemv_job *j, int64_t n0, int64_t n1, float *tile) {
    __m512 acc[QD_GEMV_MAX_M * RB];
    for (int64_t n = n0; n < n1; n += RB) {
        int nb = (int)(n1 - n < RB ? n1 - n : RB);
        for (int i = 0; i < j->M * RB; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t k0 = 0; k0 < j->K; k0 += KT) {
            int64_t kt = j->K - k0 < KT ? j->K - k0 : KT;
            if (j->xb) {
                (j->w->decode_lowp ? j->w->decode_lowp : j->w->decode)(j->w, n, nb, k0, kt, tile, KT);
                dot_tile_bf16(j, k0, kt, tile, nb, acc, (uint32_t *)(tile + RB * KT));
            } else {
                j->w->decode(j->w, n, nb, k0, kt, tile, KT);
                dot_tile_avx512(j, k0, kt, tile, nb, acc);
            }
        }
        for (int64_t m = 0; m < j->M; m++)
            for (int r = 0; r < nb; r++) {
                float *c = j->C + m * j->ldc + n + r;
                float v = j->alpha * _mm512_reduce_add_ps(acc[m * RB + r]);
                if (j->beta != 0) v += j->beta * *c;
                if (j->row_bias) v += j->row_bias[m];
                if (j->col_bias) v += j->col_bias[n + r];
                *c = v;
            }
    }
}

static void rows_generic(const gemv_job *j, int64_t n0, int64_t n1, float *tile) {
    for (int64_t n = n0; n < n1; n += RB) {
        int nb = (int)(n1 - n < RB ? n1 - n : RB);
        float acc[QD_GEMV_MAX_M * RB] = {0};
        for (int64_t k0 = 0; k0 < j->K; k0 += KT) {
            int64_t kt = j->K - k0 < KT ? j->K - k0 : KT;
            j->w->decode(j->w, n, nb, k0, kt, tile, KT);
            for (int64_t m = 0; m < j->M; m++)
                for (int r = 0; r < nb; r++) {
                    const float *x = j->x + m * j->ldx + k0, *t = tile + r * KT;
                    float s = 0;
                    for (int64_t k = 0; k < kt; k++) s += x[k] * t[k];
                    acc[m * RB + r] += s;
                }
        }
        for (int64_t m = 0; m < j->M; m++)
            for (int r = 0; r < nb; r++) {
                float *c = j->C + m * j->ldc + n + r;
                float v = j->alpha * acc[m * RB + r];
                if (j->beta != 0) v += j->beta * *c;
                if (j->row_bias) v += j->row_bias[m];
                if (j->col_bias) v += j->col_bias[n + r];
                *c = v;
            }
    }
}

static void gemv_part(void *arg, int64_t b, int64_t e, int thread) {
    gemv_job *j = arg;
    float *tile = aligned_alloc(64, sizeof(float) * RB * KT * 2);   /* + the bf16 pairs (bf16 mode) */
    if (!tile) { __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED); return; }
    for (int64_t t; (t = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->tasks;) {
        int64_t n0 = t * j->rows_per_task, n1 = n0 + j->rows_per_task < j->N ? n0 + j->rows_per_task : j->N;
        if (qd_cpu_avx512()) rows_avx512(j, n0, n1, tile);
        else rows_generic(j, n0, n1, tile);
    }
    free(tile);
}

int qd_gemv_weight(qd_ctx *ctx, int threads, int bf16, int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx,
                   const qd_weight *w, float *C, int64_t ldc, float alpha, float beta, const float *row_bias,
                   const float *col_bias) {
    if (M <= 0 || N <= 0) return 0;
    if (M > QD_GEMV_MAX_M) return -1;
    gemv_job j = {M, N, K, x, ldx, w, C, ldc, alpha, beta, row_bias, col_bias, NULL, 0, 0, 0, 0, 0};
    uint32_t *xb = NULL;
    if (bf16 && qd_cpu_avx512bf16()) {   /* the bf16 GEMM's semantics: operands rounded to bf16 */
        j.kwx = (K + 1) / 2 + 16;
        xb = aligned_alloc(64, (sizeof(uint32_t) * (size_t)(M * j.kwx) + 63) / 64 * 64);   /* size: a multiple of 64 */
        if (!xb) return -1;
        x_to_bf16(x, ldx, M, K, xb, j.kwx);
        j.xb = xb;
    }
    /* tasks of whole row blocks, claimed dynamically, several per thread so a busy core
     * does not hold the rest back */
    int64_t tasks = threads > 1 ? 8 * (int64_t)threads : 1;
    j.rows_per_task = (N + tasks - 1) / tasks;
    j.rows_per_task = (j.rows_per_task + RB - 1) / RB * RB;
    j.tasks = (N + j.rows_per_task - 1) / j.rows_per_task;
    if (threads > 1) qd_parallel_for(ctx, threads, gemv_part, &j);
    else gemv_part(&j, 0, 1, 0);
    free(xb);
    return j.failed ? -1 : 0;
}
