/* SDNQ int8 matmul (§1.9) for few tokens: the weight streamed once, no panels. The
 * packed int8 GEMM packs the whole layer for a single token (FLUX's adaLN linears
 * under --matmul int8 ran at ~1 GFLOP/s that way); here each thread takes blocks of 16
 * outputs and dots their int8 codes with every token's codes in int32 (vpmaddwd on
 * pairs of k: exact, as the VNNI kernel's sums), then applies the same epilogue
 * arithmetic as int8_gemm.c's scalar one, so the result equals the GEMM path's.
 *
 * Weight codes per output row: the stored int8/uint8 codes when sdnq stores them
 * transposed [K, out] (read 16 outputs x 2 k at a time), packed ints unpacked to
 * int8 (the "direct" codes), or the dequantized base row re-quantized (amax/127) as
 * the GEMM path's packer does. */
#include "quant/sdnq_gemv_i8.h"
#include "quant/sdnq_decode_fast.h"
#include "quant/int8_gemm.h"
#include "base/threads.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define NB 16   /* outputs per task step */

typedef struct {
    const qd_sdnq_state *s;
    const int16_t *x16;    /* [M, kp] token codes widened to int16 */
    const float *sx;
    const int32_t *xsum;
    int64_t M, K, kp;
    int direct, shift;
    const float *bias;
    float *y;
    int64_t ldy;
    int accumulate;
    int64_t ntasks, next;
    float *fbuf;           /* per slot: kp floats */
    int8_t *wbuf;          /* per slot: kp codes */
} gemv_job;

static int cpu_ok(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") ? 1 : 0;
    }
    return has;
}

/* y for outputs [n0, n0+nb) of token m from their exact sums: int8_gemm.c's AVX-512
 * epilogue, operation for operation, so the results are the GEMM path's bits. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void epilogue(const gemv_job *j, int64_t m, int64_t n0, int nb, const int32_t *acc, const float *sw,
                     const float *zp) {
    __mmask16 t = nb == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1);
    __m512 sx = _mm512_set1_ps(j->sx[m]), xs = _mm512_set1_ps((float)j->xsum[m]);
    float *y = j->y + m * j->ldy + n0;
    __m512 a = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(t, acc));
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, sw), a);
    v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, zp), xs));
    v = _mm512_mul_ps(sx, v);
    if (j->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(t, j->bias + n0));
    if (j->accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(t, y), v);
    _mm512_mask_storeu_ps(y, t, v);
}

/* sum_k x16[m, k] * w[k] for one int8 row w (kp codes, tail zero), all tokens. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void dot_row(const gemv_job *j, const int8_t *w, int32_t *acc) {
    for (int64_t m = 0; m < j->M; m++) {
        const int16_t *x = j->x16 + m * j->kp;
        __m512i a = _mm512_setzero_si512();
        int64_t k = 0;
        for (; k + 32 <= j->kp; k += 32) {
            __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + k)));
            a = _mm512_add_epi32(a, _mm512_madd_epi16(wv, _mm512_loadu_si512(x + k)));
        }
        if (k < j->kp) {
            __mmask32 mk = (__mmask32)((1ull << (j->kp - k)) - 1);
            __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w + k));
            a = _mm512_add_epi32(a, _mm512_madd_epi16(wv, _mm512_maskz_loadu_epi16(mk, x + k)));
        }
        acc[m] = _mm512_reduce_add_epi32(a);
    }
}

/* Outputs [n0, n0+nb) of a transposed [K, out] byte matrix: 16 outputs per vector, two k
 * per step interleaved as int16 pairs. acc[m * NB + i]. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void dot_cols(const gemv_job *j, int64_t n0, int nb, int32_t *acc) {
    const uint8_t *codes = j->s->codes;
    int64_t out = j->s->l.out, K = j->K;
    __mmask16 mn = nb == 16 ? 0xffff : (__mmask16)((1u << nb) - 1);
    __m128i flip = _mm_set1_epi8((char)(j->shift ? 0x80 : 0));   /* uint8: q - 128 as int8 */
    __m512i a[QD_SDNQ_GEMV_MAX_M];
    for (int64_t m = 0; m < j->M; m++) a[m] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 2) {
        __m128i r0 = _mm_xor_si128(_mm_maskz_loadu_epi8(mn, codes + k * out + n0), flip);
        __m128i r1 = k + 1 < K ? _mm_xor_si128(_mm_maskz_loadu_epi8(mn, codes + (k + 1) * out + n0), flip)
                               : _mm_setzero_si128();
        /* (w[k][i], w[k+1][i]) pairs for i = 0..15 */
        __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi8(r0, r1), _mm_unpacklo_epi8(r0, r1));
        __m512i w16 = _mm512_cvtepi8_epi16(pairs);
        for (int64_t m = 0; m < j->M; m++) {
            const int16_t *x = j->x16 + m * j->kp + k;
            int32_t xp = (int32_t)(uint16_t)x[0] | (int32_t)((uint32_t)(uint16_t)x[1] << 16);   /* x[k+1] is 0 past K */
            a[m] = _mm512_add_epi32(a[m], _mm512_madd_epi16(w16, _mm512_set1_epi32(xp)));
        }
    }
    for (int64_t m = 0; m < j->M; m++) _mm512_storeu_si512(acc + m * NB, a[m]);
}

static void part(void *arg, int64_t b, int64_t e, int thread) {
    gemv_job *j = arg;
    const qd_sdnq_state *s = j->s;
    const qd_sdnq_layout *l = &s->l;
    int64_t K = j->K, kp = j->kp;
    float *f = j->fbuf + b * kp;   /* one slot per range (ranges are [slot, slot+1) or all of them) */
    int8_t *w = j->wbuf + b * kp;
    int32_t acc[QD_SDNQ_GEMV_MAX_M * NB];   /* [m][output in the block] */
    qd_i8_isa isa = qd_i8_pick();
    for (int64_t t; (t = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->ntasks;) {
        int64_t n0 = t * NB;
        int nb = (int)(l->out - n0 < NB ? l->out - n0 : NB);
        float sw[NB], zp[NB];
        int32_t rows[QD_SDNQ_GEMV_MAX_M * NB];
        if (j->direct && l->transposed) {
            dot_cols(j, n0, nb, acc);
            for (int i = 0; i < nb; i++) {
                int64_t idx = (n0 + i) * s->so;
                sw[i] = s->scale[idx];
                zp[i] = (s->zero_point ? s->zero_point[idx] : 0.0f) + (float)j->shift * sw[i];
            }
        } else {
            for (int i = 0; i < nb; i++) {
                int64_t n = n0 + i;
                if (j->direct) {   /* the stored codes (minus 128 for uint8) with the row's scale */
                    if (!qd_sdnq_codes_fast(s, n * K, K, f)) qd_sdnq_unpack_f32(&l->dtype, s->codes, n * K, K, f);
                    for (int64_t k = 0; k < K; k++) w[k] = (int8_t)((int32_t)f[k] - j->shift);
                    int64_t idx = n * s->so;
                    sw[i] = s->scale[idx];
                    zp[i] = (s->zero_point ? s->zero_point[idx] : 0.0f) + (float)j->shift * sw[i];
                } else {           /* the base weight re-quantized per row, as the panel packer does */
                    int32_t unused;
                    qd_sdnq_decode_base(s, n, 1, 0, K, f, K);
                    sw[i] = qd_i8_quantize_row(isa, f, K, kp, w, &unused);
                    zp[i] = 0;
                }
                dot_row(j, w, rows);
                for (int64_t m = 0; m < j->M; m++) acc[m * NB + i] = rows[m];
            }
        }
        for (int64_t m = 0; m < j->M; m++) epilogue(j, m, n0, nb, acc + m * NB, sw, zp);
    }
}

int qd_sdnq_i8_gemv(qd_ctx *ctx, const qd_sdnq_state *s, int direct, const int8_t *xq, int64_t kp, const float *sx,
                    const int32_t *xsum, int64_t M, const float *bias, float *y, int64_t ldy, int accumulate) {
    if (M > QD_SDNQ_GEMV_MAX_M || !cpu_ok()) return -1;
    const qd_sdnq_layout *l = &s->l;
    int threads = qd_threads(ctx);
    /* every buffer before the first write: a failure leaves y untouched */
    int16_t *x16 = malloc(sizeof(int16_t) * (size_t)(M * kp));
    float *fbuf = malloc(sizeof(float) * (size_t)(threads * kp));
    int8_t *wbuf = calloc((size_t)(threads * kp), 1);
    if (!x16 || !fbuf || !wbuf) { free(x16); free(fbuf); free(wbuf); return -1; }
    for (int64_t i = 0; i < M * kp; i++) x16[i] = xq[i];
    gemv_job j;
    memset(&j, 0, sizeof j);
    j.s = s;
    j.x16 = x16;
    j.sx = sx;
    j.xsum = xsum;
    j.M = M;
    j.K = l->cols;
    j.kp = kp;
    j.direct = direct;
    j.shift = direct && l->dtype.family == QD_SQ_UINT && l->dtype.bits == 8 ? 128 : 0;
    j.bias = bias;
    j.y = y;
    j.ldy = ldy;
    j.accumulate = accumulate;
    j.ntasks = (l->out + NB - 1) / NB;
    j.fbuf = fbuf;
    j.wbuf = wbuf;
    qd_parallel_for(ctx, threads, part, &j);
    free(x16); free(fbuf); free(wbuf);
    return 0;
}
