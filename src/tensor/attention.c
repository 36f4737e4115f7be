/* Multi-head attention, flash style: softmax(q k^T / sqrt(dh)) v without the Lq x Lk
 * score matrix. One task per (batch, head, block of QB queries); the keys go by in
 * blocks of KB with an online softmax in fp32 (running max m and sum l per query:
 * when a block raises the max, the sums and the output accumulated so far are scaled
 * by exp(m_old - m_new)). Per-thread scratch is O(QB x (KB + dh)), whatever Lk is.
 *
 * The task's queries are transposed once ([dh][QB], scaled): a score tile of 6 keys x
 * 64 queries is 24 FMAs per head-dim step (a broadcast key element, read from K as
 * stored, times 4 vectors of queries), the scores come out key-major, and the online
 * softmax runs across queries in vector lanes (no horizontal reductions). P . V then
 * accumulates 4 x 64 (or 8 x 48 for small heads) output tiles from V rows as stored.
 * The same flow runs in plain C where AVX-512 is missing. */
#include "tensor/ops.h"
#include "tensor/exp_avx512.h"
#include "base/threads.h"
#include "base/act_pool.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QB 128   /* queries per task: 2 x 64 score lanes */
#define KB 96    /* keys per block: a multiple of KR */
#define PRE_QBLOCKS 16   /* bf16: query blocks per head from which K and V are converted once per call */
#define KR 6     /* keys per score tile */
#define QC 64    /* queries per score tile (4 zmm) */

typedef struct {
    float *qt;      /* [dh][QB] queries times 1/sqrt(dh), transposed; columns past the last query zero */
    float *kpad;    /* [KR][dh] the last, partial key tile zero-padded */
    float *st;      /* [KB][QB] scores, then probabilities, key-major */
    float *o;       /* [QB][dh] unnormalised output */
    float *m, *l, *alpha;   /* [QB] running max, running sum, this block's rescale */
} att_scratch;

/* Scores for KR keys (rows of k, stride ldk) x QC queries: st[j][i] = sum_d k[j][d] qt[d][i].
 * Output: for MR queries (rows of o, stride ldo) and nc <= the tile's columns of dh:
 * o = alpha o + sum_j p[j][i] v[j][:] over kb keys. Update: the online softmax over kb
 * keys for all QB queries (vectorised across queries). */
typedef struct {
    void (*qk)(const float *k, int64_t ldk, int64_t dh, const float *qt, float *st);
    void (*update)(att_scratch *w, int64_t kb, int64_t q0, int64_t k0, int causal);
} att_kernels;

static void qk_scalar(const float *k, int64_t ldk, int64_t dh, const float *qt, float *st) {
    for (int j = 0; j < KR; j++)
        for (int i = 0; i < QC; i++) {
            float a = 0;
            for (int64_t d = 0; d < dh; d++) a += k[j * ldk + d] * qt[d * QB + i];
            st[j * QB + i] = a;
        }
}

/* Keys of this block visible to query q: all kb, or under the causal mask those <= q. */
static inline int64_t valid_keys(int64_t q, int64_t k0, int64_t kb, int causal) {
    if (!causal) return kb;
    int64_t n = q - k0 + 1;
    return n < 0 ? 0 : n > kb ? kb : n;
}

static void update_scalar(att_scratch *w, int64_t kb, int64_t q0, int64_t k0, int causal) {
    for (int64_t i = 0; i < QB; i++) {
        int64_t n = valid_keys(q0 + i, k0, kb, causal);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) mx = w->st[j * QB + i] > mx ? w->st[j * QB + i] : mx;
        if (n == 0 || mx == -INFINITY) {   /* nothing visible here: the state stays */
            for (int64_t j = 0; j < kb; j++) w->st[j * QB + i] = 0;
            w->alpha[i] = 1;
            continue;
        }
        float mn = w->m[i] > mx ? w->m[i] : mx;
        float a = w->m[i] == -INFINITY ? 0.0f : expf(w->m[i] - mn), sum = 0;
        for (int64_t j = 0; j < kb; j++) {
            float e = j < n ? expf(w->st[j * QB + i] - mn) : 0.0f;
            w->st[j * QB + i] = e;
            sum += e;
        }
        w->l[i] = w->l[i] * a + sum;
        w->m[i] = mn;
        w->alpha[i] = a;
    }
}

static void pv_scalar(const float *p, int64_t kb, const float *v, int64_t ldv, int rows, int nc, const float *alpha,
                      float *o, int64_t ldo) {
    for (int i = 0; i < rows; i++) {
        float *oi = o + i * ldo;
        for (int c = 0; c < nc; c++) oi[c] *= alpha[i];
        for (int64_t j = 0; j < kb; j++) {
            float pj = p[j * QB + i];
            for (int c = 0; c < nc; c++) oi[c] += pj * v[j * ldv + c];
        }
    }
}

#define QK_ROW(j)                                                            \
    do {                                                                     \
        __m512 b = _mm512_set1_ps(k[(j) * ldk + d]);                         \
        a##j##0 = _mm512_fmadd_ps(b, q0, a##j##0);                           \
        a##j##1 = _mm512_fmadd_ps(b, q1, a##j##1);                           \
        a##j##2 = _mm512_fmadd_ps(b, q2, a##j##2);                           \
        a##j##3 = _mm512_fmadd_ps(b, q3, a##j##3);                           \
    } while (0)
#define ZERO4(j) __m512 a##j##0 = _mm512_setzero_ps(), a##j##1 = a##j##0, a##j##2 = a##j##0, a##j##3 = a##j##0
#define STORE_S(j)                                                           \
    _mm512_storeu_ps(st + (j) * QB, a##j##0);                                \
    _mm512_storeu_ps(st + (j) * QB + 16, a##j##1);                           \
    _mm512_storeu_ps(st + (j) * QB + 32, a##j##2);                           \
    _mm512_storeu_ps(st + (j) * QB + 48, a##j##3)

__attribute__((target("avx512f")))
static void qk_avx512(const float *k, int64_t ldk, int64_t dh, const float *qt, float *st) {
    ZERO4(0); ZERO4(1); ZERO4(2); ZERO4(3); ZERO4(4); ZERO4(5);
    for (int64_t d = 0; d < dh; d++) {
        const float *qr = qt + d * QB;
        __m512 q0 = _mm512_loadu_ps(qr), q1 = _mm512_loadu_ps(qr + 16);
        __m512 q2 = _mm512_loadu_ps(qr + 32), q3 = _mm512_loadu_ps(qr + 48);
        QK_ROW(0); QK_ROW(1); QK_ROW(2); QK_ROW(3); QK_ROW(4); QK_ROW(5);
    }
    STORE_S(0); STORE_S(1); STORE_S(2); STORE_S(3); STORE_S(4); STORE_S(5);
}

__attribute__((target("avx512f")))
static void update_avx512(att_scratch *w, int64_t kb, int64_t q0, int64_t k0, int causal) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t i = 0; i < QB; i += 16) {
        /* query q sees key k0 + j when j <= q - k0: per lane, the last visible key */
        __m512i last = causal ? _mm512_add_epi32(lane, _mm512_set1_epi32((int)(q0 + i - k0)))
                              : _mm512_set1_epi32((int)kb - 1);
        __m512 mx = ninf;
        for (int64_t j = 0; j < kb; j++) {
            __mmask16 vis = _mm512_cmpge_epi32_mask(last, _mm512_set1_epi32((int)j));
            mx = _mm512_mask_max_ps(mx, vis, mx, _mm512_loadu_ps(w->st + j * QB + i));
        }
        __m512 mo = _mm512_loadu_ps(w->m + i), mn = _mm512_max_ps(mo, mx);
        /* lanes with nothing visible so far keep m = -inf: alpha 1, probabilities 0 */
        __mmask16 live = _mm512_cmp_ps_mask(mn, ninf, _CMP_NEQ_OQ), had = _mm512_cmp_ps_mask(mo, ninf, _CMP_NEQ_OQ);
        __m512 a = _mm512_mask_blend_ps(live, _mm512_set1_ps(1.0f),
                                        _mm512_maskz_mov_ps(had, qd_exp512(_mm512_sub_ps(mo, mn))));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < kb; j++) {
            __mmask16 vis = _mm512_cmpge_epi32_mask(last, _mm512_set1_epi32((int)j)) & live;
            __m512 e = _mm512_maskz_mov_ps(vis, qd_exp512(_mm512_sub_ps(_mm512_loadu_ps(w->st + j * QB + i), mn)));
            _mm512_storeu_ps(w->st + j * QB + i, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(w->l + i, _mm512_fmadd_ps(_mm512_loadu_ps(w->l + i), a, sum));
        _mm512_storeu_ps(w->m + i, mn);
        _mm512_storeu_ps(w->alpha + i, a);
    }
}

static inline __mmask16 cols_mask(int nc, int c) {
    int n = nc - c;
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* P.V, 4 queries x 64 columns of dh (16 accumulators). */
#define PV4_LOAD(i)                                                                             \
    __m512 al##i = _mm512_set1_ps(alpha[i]);                                                    \
    __m512 a##i##0 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m0, o + (i) * ldo)),           \
           a##i##1 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m1, o + (i) * ldo + 16)),      \
           a##i##2 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m2, o + (i) * ldo + 32)),      \
           a##i##3 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m3, o + (i) * ldo + 48))
#define PV4_ROW(i)                                                           \
    do {                                                                     \
        __m512 b = _mm512_set1_ps(pj[i]);                                    \
        a##i##0 = _mm512_fmadd_ps(b, v0, a##i##0);                           \
        a##i##1 = _mm512_fmadd_ps(b, v1, a##i##1);                           \
        a##i##2 = _mm512_fmadd_ps(b, v2, a##i##2);                           \
        a##i##3 = _mm512_fmadd_ps(b, v3, a##i##3);                           \
    } while (0)
#define PV4_STORE(i)                                                         \
    _mm512_mask_storeu_ps(o + (i) * ldo, m0, a##i##0);                       \
    _mm512_mask_storeu_ps(o + (i) * ldo + 16, m1, a##i##1);                  \
    _mm512_mask_storeu_ps(o + (i) * ldo + 32, m2, a##i##2);                  \
    _mm512_mask_storeu_ps(o + (i) * ldo + 48, m3, a##i##3)

__attribute__((target("avx512f")))
static void pv4_avx512(const float *p, int64_t kb, const float *v, int64_t ldv, int nc, const float *alpha, float *o,
                       int64_t ldo) {
    __mmask16 m0 = cols_mask(nc, 0), m1 = cols_mask(nc, 16), m2 = cols_mask(nc, 32), m3 = cols_mask(nc, 48);
    PV4_LOAD(0); PV4_LOAD(1); PV4_LOAD(2); PV4_LOAD(3);
    for (int64_t j = 0; j < kb; j++) {
        const float *vr = v + j * ldv, *pj = p + j * QB;
        __m512 v0 = _mm512_maskz_loadu_ps(m0, vr), v1 = _mm512_maskz_loadu_ps(m1, vr + 16);
        __m512 v2 = _mm512_maskz_loadu_ps(m2, vr + 32), v3 = _mm512_maskz_loadu_ps(m3, vr + 48);
        PV4_ROW(0); PV4_ROW(1); PV4_ROW(2); PV4_ROW(3);
    }
    PV4_STORE(0); PV4_STORE(1); PV4_STORE(2); PV4_STORE(3);
}

/* P.V, 8 queries x 48 columns (24 accumulators): small head sizes (SD1.5's 40). */
#define PV3_LOAD(i)                                                                             \
    __m512 al##i = _mm512_set1_ps(alpha[i]);                                                    \
    __m512 a##i##0 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m0, o + (i) * ldo)),           \
           a##i##1 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m1, o + (i) * ldo + 16)),      \
           a##i##2 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m2, o + (i) * ldo + 32))
#define PV3_ROW(i)                                                           \
    do {                                                                     \
        __m512 b = _mm512_set1_ps(pj[i]);                                    \
        a##i##0 = _mm512_fmadd_ps(b, v0, a##i##0);                           \
        a##i##1 = _mm512_fmadd_ps(b, v1, a##i##1);                           \
        a##i##2 = _mm512_fmadd_ps(b, v2, a##i##2);                           \
    } while (0)
#define PV3_STORE(i)                                                         \
    _mm512_mask_storeu_ps(o + (i) * ldo, m0, a##i##0);                       \
    _mm512_mask_storeu_ps(o + (i) * ldo + 16, m1, a##i##1);                  \
    _mm512_mask_storeu_ps(o + (i) * ldo + 32, m2, a##i##2)

__attribute__((target("avx512f")))
static void pv3_avx512(const float *p, int64_t kb, const float *v, int64_t ldv, int nc, const float *alpha, float *o,
                       int64_t ldo) {
    __mmask16 m0 = cols_mask(nc, 0), m1 = cols_mask(nc, 16), m2 = cols_mask(nc, 32);
    PV3_LOAD(0); PV3_LOAD(1); PV3_LOAD(2); PV3_LOAD(3); PV3_LOAD(4); PV3_LOAD(5); PV3_LOAD(6); PV3_LOAD(7);
    for (int64_t j = 0; j < kb; j++) {
        const float *vr = v + j * ldv, *pj = p + j * QB;
        __m512 v0 = _mm512_maskz_loadu_ps(m0, vr), v1 = _mm512_maskz_loadu_ps(m1, vr + 16);
        __m512 v2 = _mm512_maskz_loadu_ps(m2, vr + 32);
        PV3_ROW(0); PV3_ROW(1); PV3_ROW(2); PV3_ROW(3); PV3_ROW(4); PV3_ROW(5); PV3_ROW(6); PV3_ROW(7);
    }
    PV3_STORE(0); PV3_STORE(1); PV3_STORE(2); PV3_STORE(3); PV3_STORE(4); PV3_STORE(5); PV3_STORE(6); PV3_STORE(7);
}

/* o[QB][dh] = alpha o + P^T V for the block: head-dim chunks of 64 (4 x 4 tiles), the
 * last <= 48 columns with 8 x 3 tiles. */
static void pv_block(int wide, const float *st, int64_t kb, const float *v, int64_t ldv, int64_t dh, const float *alpha,
                     float *o) {
    for (int64_t c = 0; c < dh;) {
        int64_t left = dh - c;
        if (!wide) {
            pv_scalar(st, kb, v + c, ldv, QB, (int)left, alpha, o + c, dh);
            return;
        }
        if (left > 48) {
            for (int64_t r = 0; r < QB; r += 4) pv4_avx512(st + r, kb, v + c, ldv, (int)(left < 64 ? left : 64), alpha + r, o + r * dh + c, dh);
            c += 64;
        } else {
            for (int64_t r = 0; r < QB; r += 8) pv3_avx512(st + r, kb, v + c, ldv, (int)left, alpha + r, o + r * dh + c, dh);
            c += 48;
        }
    }
}

/* ---- bf16 operands (qd_ctx_bf16): vdpbf16ps sums pairs, fp32 accumulation ----
 * Pairs are two bf16 in one 32-bit lane, the even element low: queries as pairs of
 * head-dim elements [dh/2][QB], keys as rows of bf16 (a broadcast 32-bit read is a
 * pair of head-dim elements), probabilities as pairs of keys [KB/2][QB] and values as
 * pairs of keys [KB/2][dh]. Scores, the softmax statistics and the output stay fp32. */

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* 16 lanes of (bf16(hi) << 16) | bf16(lo), rounded to nearest even. */
BF16_TARGET static inline __m512i pair_bf16(__m512 lo, __m512 hi) {
    __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

static inline __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

#define QKB_ROW(j)                                                                          \
    do {                                                                                    \
        __m512bh b = (__m512bh)_mm512_set1_epi32((int)kp[(j) * ldk2 + p]);                   \
        a##j##0 = _mm512_dpbf16_ps(a##j##0, b, q0);                                         \
        a##j##1 = _mm512_dpbf16_ps(a##j##1, b, q1);                                         \
        a##j##2 = _mm512_dpbf16_ps(a##j##2, b, q2);                                         \
        a##j##3 = _mm512_dpbf16_ps(a##j##3, b, q3);                                         \
    } while (0)

/* Scores for KR keys (bf16 rows of dhp = 2 * pairs elements) x QC queries. */
BF16_TARGET static void qk_bf16(const uint32_t *kp, int64_t ldk2, int64_t pairs, const uint32_t *qt2, float *st) {
    ZERO4(0); ZERO4(1); ZERO4(2); ZERO4(3); ZERO4(4); ZERO4(5);
    for (int64_t p = 0; p < pairs; p++) {
        const uint32_t *qr = qt2 + p * QB;
        __m512bh q0 = (__m512bh)_mm512_loadu_si512((const void *)qr), q1 = (__m512bh)_mm512_loadu_si512((const void *)(qr + 16));
        __m512bh q2 = (__m512bh)_mm512_loadu_si512((const void *)(qr + 32)), q3 = (__m512bh)_mm512_loadu_si512((const void *)(qr + 48));
        QKB_ROW(0); QKB_ROW(1); QKB_ROW(2); QKB_ROW(3); QKB_ROW(4); QKB_ROW(5);
    }
    STORE_S(0); STORE_S(1); STORE_S(2); STORE_S(3); STORE_S(4); STORE_S(5);
}

#define PVB_ROW4(i)                                                                         \
    do {                                                                                    \
        __m512bh b = (__m512bh)_mm512_set1_epi32((int)pt[i]);                                \
        a##i##0 = _mm512_dpbf16_ps(a##i##0, b, w0);                                         \
        a##i##1 = _mm512_dpbf16_ps(a##i##1, b, w1);                                         \
        a##i##2 = _mm512_dpbf16_ps(a##i##2, b, w2);                                         \
        a##i##3 = _mm512_dpbf16_ps(a##i##3, b, w3);                                         \
    } while (0)

/* 4 queries x 64 columns over kp key pairs; v2 rows hold ldv2 pairs. */
BF16_TARGET static void pv4_bf16(const uint32_t *p2, int64_t kpairs, const uint32_t *v2, int64_t ldv2, int nc,
                                 const float *alpha, float *o, int64_t ldo) {
    __mmask16 m0 = cols_mask(nc, 0), m1 = cols_mask(nc, 16), m2 = cols_mask(nc, 32), m3 = cols_mask(nc, 48);
    PV4_LOAD(0); PV4_LOAD(1); PV4_LOAD(2); PV4_LOAD(3);
    for (int64_t t = 0; t < kpairs; t++) {
        const uint32_t *vr = v2 + t * ldv2, *pt = p2 + t * QB;
        __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, vr), w1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, vr + 16);
        __m512bh w2 = (__m512bh)_mm512_maskz_loadu_epi32(m2, vr + 32), w3 = (__m512bh)_mm512_maskz_loadu_epi32(m3, vr + 48);
        PVB_ROW4(0); PVB_ROW4(1); PVB_ROW4(2); PVB_ROW4(3);
    }
    PV4_STORE(0); PV4_STORE(1); PV4_STORE(2); PV4_STORE(3);
}

#define PVB_ROW3(i)                                                                         \
    do {                                                                                    \
        __m512bh b = (__m512bh)_mm512_set1_epi32((int)pt[i]);                                \
        a##i##0 = _mm512_dpbf16_ps(a##i##0, b, w0);                                         \
        a##i##1 = _mm512_dpbf16_ps(a##i##1, b, w1);                                         \
        a##i##2 = _mm512_dpbf16_ps(a##i##2, b, w2);                                         \
    } while (0)

/* 8 queries x 48 columns. */
BF16_TARGET static void pv3_bf16(const uint32_t *p2, int64_t kpairs, const uint32_t *v2, int64_t ldv2, int nc,
                                 const float *alpha, float *o, int64_t ldo) {
    __mmask16 m0 = cols_mask(nc, 0), m1 = cols_mask(nc, 16), m2 = cols_mask(nc, 32);
    PV3_LOAD(0); PV3_LOAD(1); PV3_LOAD(2); PV3_LOAD(3); PV3_LOAD(4); PV3_LOAD(5); PV3_LOAD(6); PV3_LOAD(7);
    for (int64_t t = 0; t < kpairs; t++) {
        const uint32_t *vr = v2 + t * ldv2, *pt = p2 + t * QB;
        __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, vr), w1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, vr + 16);
        __m512bh w2 = (__m512bh)_mm512_maskz_loadu_epi32(m2, vr + 32);
        PVB_ROW3(0); PVB_ROW3(1); PVB_ROW3(2); PVB_ROW3(3); PVB_ROW3(4); PVB_ROW3(5); PVB_ROW3(6); PVB_ROW3(7);
    }
    PV3_STORE(0); PV3_STORE(1); PV3_STORE(2); PV3_STORE(3); PV3_STORE(4); PV3_STORE(5); PV3_STORE(6); PV3_STORE(7);
}

/* rows of n fp32 (stride ld) -> bf16 rows (stride ld2 elements, zero padded to ld2) */
BF16_TARGET static void rows_to_bf16(const float *x, int64_t ld, int64_t rows, int64_t n, uint16_t *y, int64_t ld2) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld2; c += 16) {
            __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail16(n - c), x + r * ld + c));
            _mm256_mask_storeu_epi16(y + r * ld2 + c, tail16(ld2 - c), (__m256i)h);
        }
}

/* pairs of rows (2t, 2t+1) of n fp32 columns -> [rows/2][n] pairs; a missing odd row is 0 */
BF16_TARGET static void row_pairs_bf16(const float *x, int64_t ld, int64_t rows, int64_t n, uint32_t *y, int64_t ld2) {
    for (int64_t t = 0; 2 * t < rows; t++)
        for (int64_t c = 0; c < n; c += 16) {
            __mmask16 m = tail16(n - c);
            __m512 lo = _mm512_maskz_loadu_ps(m, x + 2 * t * ld + c);
            __m512 hi = 2 * t + 1 < rows ? _mm512_maskz_loadu_ps(m, x + (2 * t + 1) * ld + c) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(y + t * ld2 + c, m, pair_bf16(lo, hi));
        }
}

typedef struct {
    uint32_t *qt2;    /* [dhp/2][QB] query pairs */
    uint16_t *k16;    /* [KB + KR][dhp] keys of the block */
    uint32_t *p2;     /* [KB/2][QB] probability pairs */
    uint32_t *v2;     /* [KB/2][dh] value pairs */
} att_bf16_scratch;

BF16_TARGET static void att_block_bf16(const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t kb, int64_t dh,
                                       att_scratch *w, att_bf16_scratch *b, int64_t q0, int64_t k0, int causal,
                                       const uint16_t *k16, const uint32_t *v2) {
    int64_t dhp = (dh + 1) / 2 * 2, kr = (kb + KR - 1) / KR * KR;
    if (!k16) {
        rows_to_bf16(k, ldk, kb, dh, b->k16, dhp);
        memset(b->k16 + kb * dhp, 0, sizeof(uint16_t) * (size_t)((kr - kb) * dhp));
        k16 = b->k16;
    }
    for (int64_t j = 0; j < kb; j += KR)
        for (int64_t c = 0; c < QB; c += QC)
            qk_bf16((const uint32_t *)(const void *)(k16 + j * dhp), dhp / 2, dhp / 2, b->qt2 + c, w->st + j * QB + c);
    update_avx512(w, kb, q0, k0, causal);
    row_pairs_bf16(w->st, QB, kb, QB, b->p2, QB);
    if (!v2) {
        row_pairs_bf16(v, ldv, kb, dh, b->v2, dh);
        v2 = b->v2;
    }
    int64_t kpairs = (kb + 1) / 2;
    for (int64_t c = 0; c < dh;) {
        int64_t left = dh - c;
        if (left > 48) {
            for (int64_t r = 0; r < QB; r += 4)
                pv4_bf16(b->p2 + r, kpairs, v2 + c, dh, (int)(left < 64 ? left : 64), w->alpha + r, w->o + r * dh + c, dh);
            c += 64;
        } else {
            for (int64_t r = 0; r < QB; r += 8)
                pv3_bf16(b->p2 + r, kpairs, v2 + c, dh, (int)left, w->alpha + r, w->o + r * dh + c, dh);
            c += 48;
        }
    }
}

/* queries (scaled) -> [dhp/2][QB] pairs; rows past nq zero */
BF16_TARGET static void queries_bf16(const float *q, int64_t ldq, int64_t nq, int64_t dh, float scale, float *tmp,
                                     uint32_t *qt2) {
    /* transpose to [dhp][QB] fp32 first (tmp = w->qt), then pair rows 2p, 2p+1 */
    int64_t dhp = (dh + 1) / 2 * 2;
    for (int64_t d = 0; d < dhp; d++)
        for (int64_t i = 0; i < QB; i++) tmp[d * QB + i] = i < nq && d < dh ? q[i * ldq + d] * scale : 0.0f;
    row_pairs_bf16(tmp, QB, dhp, QB, qt2, QB);
}

/* ---- driver ---- */

typedef struct {
    const float *q, *k, *v;
    int64_t ldq, ldk, ldv, Lq, Lk, dh, qblocks;
    int heads, causal, wide, bf16;
    float *out;
    att_kernels kn;
    float *scratch;   /* scratch_floats() per thread slot */
    uint16_t *k16;    /* bf16 keys converted once: [B*heads][krows][dhp] (NULL: per block) */
    uint32_t *v2;     /* bf16 value pairs: [B*heads][krows/2][dh] */
    int64_t krows;
} att_args;

static void att_task(const att_args *a, att_scratch *w, att_bf16_scratch *b16, int64_t task) {
    int64_t qb = task % a->qblocks, bh = task / a->qblocks, dh = a->dh;
    int64_t h = bh % a->heads, bi = bh / a->heads;
    int64_t q0 = qb * QB, nq = a->Lq - q0 < QB ? a->Lq - q0 : QB;
    const float *q = a->q + (bi * a->Lq + q0) * a->ldq + h * dh;
    const float *k = a->k + bi * a->Lk * a->ldk + h * dh;
    const float *v = a->v + bi * a->Lk * a->ldv + h * dh;
    float scale = 1.0f / sqrtf((float)dh);
    if (a->bf16) queries_bf16(q, a->ldq, nq, dh, scale, w->qt, b16->qt2);
    else
        for (int64_t i = 0; i < QB; i++)
            for (int64_t d = 0; d < dh; d++) w->qt[d * QB + i] = i < nq ? q[i * a->ldq + d] * scale : 0.0f;
    memset(w->o, 0, sizeof(float) * (size_t)(QB * dh));
    for (int64_t i = 0; i < QB; i++) { w->m[i] = -INFINITY; w->l[i] = 0; }
    /* causal: the last query of the block sees keys < q0 + nq */
    int64_t kend = a->causal && q0 + nq < a->Lk ? q0 + nq : a->Lk;
    for (int64_t k0 = 0; k0 < kend; k0 += KB) {
        int64_t kb = kend - k0 < KB ? kend - k0 : KB;
        if (a->bf16) {
            int64_t dhp = (dh + 1) / 2 * 2;
            const uint16_t *k16 = a->k16 ? a->k16 + (bh * a->krows + k0) * dhp : NULL;
            const uint32_t *v2 = a->v2 ? a->v2 + (bh * a->krows + k0) / 2 * dh : NULL;
            att_block_bf16(k + k0 * a->ldk, a->ldk, v + k0 * a->ldv, a->ldv, kb, dh, w, b16, q0, k0, a->causal, k16, v2);
            continue;
        }
        for (int64_t j = 0; j < kb; j += KR) {
            const float *kr = k + (k0 + j) * a->ldk;
            int64_t ldk = a->ldk;
            if (kb - j < KR) {   /* partial tile: copy, zero-padded, so no read passes the last key */
                for (int64_t r = 0; r < KR; r++)
                    for (int64_t d = 0; d < dh; d++) w->kpad[r * dh + d] = j + r < kb ? kr[r * a->ldk + d] : 0.0f;
                kr = w->kpad;
                ldk = dh;
            }
            for (int64_t c = 0; c < QB; c += QC) a->kn.qk(kr, ldk, dh, w->qt + c, w->st + j * QB + c);
        }
        a->kn.update(w, kb, q0, k0, a->causal);
        pv_block(a->wide, w->st, kb, v + k0 * a->ldv, a->ldv, dh, w->alpha, w->o);
    }
    int64_t ldo = a->heads * dh;
    float *out = a->out + (bi * a->Lq + q0) * ldo + h * dh;
    for (int64_t i = 0; i < nq; i++) {
        float inv = w->l[i] > 0 ? 1.0f / w->l[i] : 0.0f;   /* no visible key (Lk = 0): zeros */
        for (int64_t d = 0; d < dh; d++) out[i * ldo + d] = w->o[i * dh + d] * inv;
    }
}

/* Scratch of one thread slot, in floats (a multiple of 64 bytes): the fp32 part (*n32
 * floats), then the bf16 pairs. */
static size_t scratch_floats(int64_t dh, int bf16, size_t *n32) {
    /* scores: KB + KR rows, so a partial key tile's padded rows stay inside */
    int64_t dhp = (dh + 1) / 2 * 2;
    *n32 = (size_t)(dhp * QB + KR * dh + (KB + KR) * QB + QB * dh + 3 * QB);
    /* bf16: query pairs, key rows, probability and value pairs (4-byte units) */
    size_t n16 = bf16 ? (size_t)(dhp / 2 * QB + (KB + KR) * dhp / 2 + KB / 2 * QB + KB / 2 * dh) : 0;
    return (*n32 + n16 + 15) / 16 * 16;
}

static void att_part(void *arg, int64_t b, int64_t e, int thread) {
    att_args *a = arg;
    int64_t dh = a->dh, dhp = (dh + 1) / 2 * 2;
    size_t n, per = scratch_floats(dh, a->bf16, &n);
    float *buf = a->scratch + (size_t)thread * per;
    att_bf16_scratch b16 = {0};
    if (a->bf16) {
        b16.qt2 = (uint32_t *)(void *)(buf + n);
        b16.k16 = (uint16_t *)(void *)(b16.qt2 + dhp / 2 * QB);
        b16.p2 = (uint32_t *)(void *)(b16.k16 + (KB + KR) * dhp);
        b16.v2 = b16.p2 + KB / 2 * QB;
    }
    att_scratch w;
    w.qt = buf;
    w.kpad = w.qt + dhp * QB;
    w.st = w.kpad + KR * dh;
    w.o = w.st + (KB + KR) * QB;
    w.m = w.o + QB * dh;
    w.l = w.m + QB;
    w.alpha = w.l + QB;
    for (int64_t task = b; task < e; task++) att_task(a, &w, &b16, task);
}

/* One (batch, head)'s keys -> bf16 rows of dhp, values -> row pairs, zero past Lk (up
 * to krows): what att_block_bf16 would build per key block. */
BF16_TARGET static void kv_convert(const att_args *a, int64_t bh) {
    int64_t h = bh % a->heads, bi = bh / a->heads, dh = a->dh, dhp = (dh + 1) / 2 * 2;
    const float *k = a->k + bi * a->Lk * a->ldk + h * dh, *v = a->v + bi * a->Lk * a->ldv + h * dh;
    uint16_t *k16 = a->k16 + bh * a->krows * dhp;
    uint32_t *v2 = a->v2 + bh * a->krows / 2 * dh;
    int64_t vpairs = (a->Lk + 1) / 2;
    rows_to_bf16(k, a->ldk, a->Lk, dh, k16, dhp);
    memset(k16 + a->Lk * dhp, 0, sizeof(uint16_t) * (size_t)((a->krows - a->Lk) * dhp));
    row_pairs_bf16(v, a->ldv, a->Lk, dh, v2, dh);
    memset(v2 + vpairs * dh, 0, sizeof(uint32_t) * (size_t)((a->krows / 2 - vpairs) * dh));
}

static void kv_part(void *arg, int64_t b, int64_t e, int thread) {
    for (int64_t bh = b; bh < e; bh++) kv_convert(arg, bh);
}

void qd_attention(qd_ctx *ctx, const float *q, int64_t ldq, const float *k, int64_t ldk,
                  const float *v, int64_t ldv, int64_t B, int64_t Lq, int64_t Lk, int heads, int64_t dh,
                  int causal, float *out) {
    if (B <= 0 || Lq <= 0 || heads <= 0 || dh <= 0) return;
    double t0 = ctx->trace ? qd_now() : 0;
    int64_t qblocks = (Lq + QB - 1) / QB;
    /* AVX-512 unless the CPU lacks it or QD_ISA narrows it (as for the GEMMs) */
    const char *isa = getenv("QD_ISA");
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f") && !(isa && (!strcmp(isa, "generic") || !strcmp(isa, "avx2")));
    att_kernels kn = wide ? (att_kernels){qk_avx512, update_avx512} : (att_kernels){qk_scalar, update_scalar};
    /* bf16 operands when the context asks for them (qd_ctx_bf16: the CPU has AVX512_BF16) */
    int bf16 = wide && qd_ctx_bf16(ctx);
    size_t n32, per = scratch_floats(dh, bf16, &n32);
    /* buffers from the step arena (base/act_pool.h): inside a forward no malloc per call */
    float *scratch = qd_act_alloc(ctx, sizeof(float) * per * (size_t)qd_threads(ctx));
    if (!scratch) {
        qd_op_failed(ctx, "attention");
        return;
    }
    att_args a = {q, k, v, ldq, ldk, ldv, Lq, Lk < 0 ? 0 : Lk, dh, qblocks, heads, causal, wide, bf16, out, kn, scratch,
                  NULL, NULL, 0};
    /* bf16 keys and value pairs converted once per call when each (batch, head) has at
     * least PRE_QBLOCKS query blocks, rather than by every task for every key block:
     * bench_attention, 2 threads, GFLOP/s: FLUX joint (36 blocks) 627 -> 722, SDXL 4096
     * tokens 580 -> 642, SD1.5 64x64 self 483 -> 523; with 8 blocks (SD1.5 32x32) 509 -> 474
     * and 2 (16x16) 506 -> 426 the extra pass and buffer cost more than they save.
     * QD_ATT_NO_PRE=1 turns it off (to compare). */
    if (bf16 && qblocks >= PRE_QBLOCKS && Lk > 0 && !getenv("QD_ATT_NO_PRE")) {
        int64_t dhp = (dh + 1) / 2 * 2;
        a.krows = (Lk + KB - 1) / KB * KB;   /* whole key blocks (KB even, a multiple of KR): what a block reads */
        a.k16 = qd_act_alloc(ctx, sizeof(uint16_t) * (size_t)(B * heads * a.krows * dhp));
        a.v2 = a.k16 ? qd_act_alloc(ctx, sizeof(uint32_t) * (size_t)(B * heads * a.krows / 2 * dh)) : NULL;
        if (!a.v2) {
            qd_act_free(ctx, a.k16);
            qd_act_free(ctx, scratch);
            qd_op_failed(ctx, "attention");
            return;
        }
        qd_parallel_for_dyn(ctx, B * heads, 1, kv_part, &a);
    }
    /* tasks claimed one at a time (scratch per thread slot, not per claim): with halves
     * claimed whole, a thread the host slowed held back its half (bench_attention, 2
     * threads: FLUX joint 1.81-1.88x -> 1.98-2.04x, SD1.5 cross 1.69-1.78x -> 1.97-2.00x) */
    qd_parallel_for_dyn(ctx, B * heads * qblocks, 1, att_part, &a);
    qd_act_free(ctx, a.v2);
    qd_act_free(ctx, a.k16);
    qd_act_free(ctx, scratch);
    if (ctx->trace) {
        int64_t d[6] = {B, heads, Lq, Lk, dh, causal};
        ctx->trace(ctx->trace_user, "attention", d, 6, qd_now() - t0);
    }
}
