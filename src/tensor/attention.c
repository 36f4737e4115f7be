/* Multi-head attention, flash style: softmax(q k^T / sqrt(dh)) v without the Lq x Lk
 * score matrix. One task per (batch, head, block of QB queries); the keys go by in
 * blocks of KB with an online softmax in fp32 (running max m and sum l per query:
 * when a block raises the max, the sums and the output accumulated so far are scaled
 * by exp(m_old - m_new)). Per-thread scratch is O(QB x (KB + dh)), whatever Lk is.
 *
 * Per key block: K is packed transposed ([dh][KB]) so a 6 x 64 register tile of
 * scores is 24 FMAs per head-dim step (a broadcast query element times 4 vectors of
 * keys); then P . V accumulates a 6 x 64 tile of the output from V rows as stored.
 * The same flow runs in plain C where AVX-512 is missing. */
#include "tensor/ops.h"
#include "tensor/exp_avx512.h"
#include "base/threads.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QB 96     /* queries per task: a multiple of MR */
#define KB 128    /* keys per block */
#define MR 6      /* query rows per register tile */
#define NC 64     /* keys (scores) or head-dim columns (output) per register tile */

typedef struct {
    float *qs;      /* [QB][dh] queries times 1/sqrt(dh), rows past the last query zero */
    float *kt;      /* [dh][KB] the key block transposed */
    float *s;       /* [QB][KB] scores, then probabilities */
    float *o;       /* [QB][dh] unnormalised output */
    float *m, *l, *alpha;   /* [QB] running max, running sum, this block's rescale */
} att_scratch;

/* ---- kernels: scores S[MR][NC] = Qs . Kt, and O[MR][<= NC] = alpha O + P . V ---- */

typedef struct {
    void (*qk)(const float *qs, int64_t dh, const float *kt, float *s);
    void (*pv)(const float *p, int64_t kb, const float *v, int64_t ldv, int nc, const float *alpha, float *o,
               int64_t ldo);
    void (*update)(att_scratch *w, int64_t rows, int64_t kb, int64_t q0, int64_t k0, int causal);
} att_kernels;

static void qk_scalar(const float *qs, int64_t dh, const float *kt, float *s) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NC; j++) {
            float a = 0;
            for (int64_t d = 0; d < dh; d++) a += qs[i * dh + d] * kt[d * KB + j];
            s[i * KB + j] = a;
        }
}

static void pv_scalar(const float *p, int64_t kb, const float *v, int64_t ldv, int nc, const float *alpha, float *o,
                      int64_t ldo) {
    for (int i = 0; i < MR; i++) {
        float *oi = o + i * ldo;
        for (int c = 0; c < nc; c++) oi[c] *= alpha[i];
        for (int64_t j = 0; j < kb; j++) {
            float pj = p[i * KB + j];
            for (int c = 0; c < nc; c++) oi[c] += pj * v[j * ldv + c];
        }
    }
}

/* Valid keys of query row i in this block: all kb, or under the causal mask those <= q. */
static inline int64_t valid_keys(int64_t q, int64_t k0, int64_t kb, int causal) {
    if (!causal) return kb;
    int64_t n = q - k0 + 1;
    return n < 0 ? 0 : n > kb ? kb : n;
}

static void update_scalar(att_scratch *w, int64_t rows, int64_t kb, int64_t q0, int64_t k0, int causal) {
    for (int64_t i = 0; i < rows; i++) {
        float *s = w->s + i * KB;
        int64_t n = valid_keys(q0 + i, k0, kb, causal);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
        if (n == 0 || mx == -INFINITY) {   /* nothing visible here: leave the state as it is */
            memset(s, 0, sizeof(float) * (size_t)kb);
            w->alpha[i] = 1;
            continue;
        }
        float mn = w->m[i] > mx ? w->m[i] : mx;
        float a = w->m[i] == -INFINITY ? 0.0f : expf(w->m[i] - mn), sum = 0;
        for (int64_t j = 0; j < n; j++) { s[j] = expf(s[j] - mn); sum += s[j]; }
        for (int64_t j = n; j < kb; j++) s[j] = 0;
        w->l[i] = w->l[i] * a + sum;
        w->m[i] = mn;
        w->alpha[i] = a;
    }
}

#define QK_ROW(i)                                                            \
    do {                                                                     \
        __m512 b = _mm512_set1_ps(qs[(i) * dh + d]);                         \
        a##i##0 = _mm512_fmadd_ps(b, k0, a##i##0);                           \
        a##i##1 = _mm512_fmadd_ps(b, k1, a##i##1);                           \
        a##i##2 = _mm512_fmadd_ps(b, k2, a##i##2);                           \
        a##i##3 = _mm512_fmadd_ps(b, k3, a##i##3);                           \
    } while (0)
#define ZERO4(i) __m512 a##i##0 = _mm512_setzero_ps(), a##i##1 = a##i##0, a##i##2 = a##i##0, a##i##3 = a##i##0
#define STORE_S(i)                                                           \
    _mm512_storeu_ps(s + (i) * KB, a##i##0);                                 \
    _mm512_storeu_ps(s + (i) * KB + 16, a##i##1);                            \
    _mm512_storeu_ps(s + (i) * KB + 32, a##i##2);                            \
    _mm512_storeu_ps(s + (i) * KB + 48, a##i##3)

__attribute__((target("avx512f")))
static void qk_avx512(const float *qs, int64_t dh, const float *kt, float *s) {
    ZERO4(0); ZERO4(1); ZERO4(2); ZERO4(3); ZERO4(4); ZERO4(5);
    for (int64_t d = 0; d < dh; d++) {
        const float *kr = kt + d * KB;
        __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
        __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
        QK_ROW(0); QK_ROW(1); QK_ROW(2); QK_ROW(3); QK_ROW(4); QK_ROW(5);
    }
    STORE_S(0); STORE_S(1); STORE_S(2); STORE_S(3); STORE_S(4); STORE_S(5);
}

#define PV_LOAD(i)                                                                              \
    __m512 al##i = _mm512_set1_ps(alpha[i]);                                                    \
    __m512 a##i##0 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m0, o + (i) * ldo)),           \
           a##i##1 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m1, o + (i) * ldo + 16)),      \
           a##i##2 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m2, o + (i) * ldo + 32)),      \
           a##i##3 = _mm512_mul_ps(al##i, _mm512_maskz_loadu_ps(m3, o + (i) * ldo + 48))
#define PV_ROW(i)                                                            \
    do {                                                                     \
        __m512 b = _mm512_set1_ps(p[(i) * KB + j]);                          \
        a##i##0 = _mm512_fmadd_ps(b, v0, a##i##0);                           \
        a##i##1 = _mm512_fmadd_ps(b, v1, a##i##1);                           \
        a##i##2 = _mm512_fmadd_ps(b, v2, a##i##2);                           \
        a##i##3 = _mm512_fmadd_ps(b, v3, a##i##3);                           \
    } while (0)
#define PV_STORE(i)                                                          \
    _mm512_mask_storeu_ps(o + (i) * ldo, m0, a##i##0);                       \
    _mm512_mask_storeu_ps(o + (i) * ldo + 16, m1, a##i##1);                  \
    _mm512_mask_storeu_ps(o + (i) * ldo + 32, m2, a##i##2);                  \
    _mm512_mask_storeu_ps(o + (i) * ldo + 48, m3, a##i##3)

static inline __mmask16 cols_mask(int nc, int c) {
    int n = nc - c;
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

__attribute__((target("avx512f")))
static void pv_avx512(const float *p, int64_t kb, const float *v, int64_t ldv, int nc, const float *alpha, float *o,
                      int64_t ldo) {
    __mmask16 m0 = cols_mask(nc, 0), m1 = cols_mask(nc, 16), m2 = cols_mask(nc, 32), m3 = cols_mask(nc, 48);
    PV_LOAD(0); PV_LOAD(1); PV_LOAD(2); PV_LOAD(3); PV_LOAD(4); PV_LOAD(5);
    for (int64_t j = 0; j < kb; j++) {
        const float *vr = v + j * ldv;
        __m512 v0 = _mm512_maskz_loadu_ps(m0, vr), v1 = _mm512_maskz_loadu_ps(m1, vr + 16);
        __m512 v2 = _mm512_maskz_loadu_ps(m2, vr + 32), v3 = _mm512_maskz_loadu_ps(m3, vr + 48);
        PV_ROW(0); PV_ROW(1); PV_ROW(2); PV_ROW(3); PV_ROW(4); PV_ROW(5);
    }
    PV_STORE(0); PV_STORE(1); PV_STORE(2); PV_STORE(3); PV_STORE(4); PV_STORE(5);
}

__attribute__((target("avx512f")))
static void update_avx512(att_scratch *w, int64_t rows, int64_t kb, int64_t q0, int64_t k0, int causal) {
    for (int64_t i = 0; i < rows; i++) {
        float *s = w->s + i * KB;
        int64_t n = valid_keys(q0 + i, k0, kb, causal), j;
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (j = 0; j < n; j += 16) {
            __mmask16 t = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
            vm = _mm512_mask_max_ps(vm, t, vm, _mm512_loadu_ps(s + j));
        }
        float mx = _mm512_reduce_max_ps(vm);
        if (n == 0 || mx == -INFINITY) {
            memset(s, 0, sizeof(float) * (size_t)kb);
            w->alpha[i] = 1;
            continue;
        }
        float mn = w->m[i] > mx ? w->m[i] : mx;
        float a = w->m[i] == -INFINITY ? 0.0f : expf(w->m[i] - mn);
        __m512 vmn = _mm512_set1_ps(mn), vs = _mm512_setzero_ps();
        for (j = 0; j < kb; j += 16) {   /* exp of the visible scores, 0 for masked and tail keys */
            __mmask16 t = n - j >= 16 ? (__mmask16)0xffff : n - j <= 0 ? (__mmask16)0 : (__mmask16)((1u << (n - j)) - 1);
            __m512 e = _mm512_maskz_mov_ps(t, qd_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmn)));
            _mm512_storeu_ps(s + j, e);
            vs = _mm512_add_ps(vs, e);
        }
        w->l[i] = w->l[i] * a + _mm512_reduce_add_ps(vs);
        w->m[i] = mn;
        w->alpha[i] = a;
    }
}

/* ---- driver ---- */

typedef struct {
    const float *q, *k, *v;
    int64_t ldq, ldk, ldv, Lq, Lk, dh, qblocks;
    int heads, causal;
    float *out;
    att_kernels kn;
    int failed;
} att_args;

static void att_task(const att_args *a, const att_kernels *kn, att_scratch *w, int64_t task) {
    int64_t qb = task % a->qblocks, bh = task / a->qblocks, dh = a->dh;
    int64_t h = bh % a->heads, bi = bh / a->heads;
    int64_t q0 = qb * QB, nq = a->Lq - q0 < QB ? a->Lq - q0 : QB, rows = (nq + MR - 1) / MR * MR;
    const float *q = a->q + (bi * a->Lq + q0) * a->ldq + h * dh;
    const float *k = a->k + bi * a->Lk * a->ldk + h * dh;
    const float *v = a->v + bi * a->Lk * a->ldv + h * dh;
    float scale = 1.0f / sqrtf((float)dh);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t d = 0; d < dh; d++) w->qs[i * dh + d] = i < nq ? q[i * a->ldq + d] * scale : 0.0f;
    memset(w->o, 0, sizeof(float) * (size_t)(rows * dh));
    for (int64_t i = 0; i < rows; i++) { w->m[i] = -INFINITY; w->l[i] = 0; }
    /* causal: the last query of the block sees keys < q0 + nq */
    int64_t kend = a->causal && q0 + nq < a->Lk ? q0 + nq : a->Lk;
    for (int64_t k0 = 0; k0 < kend; k0 += KB) {
        int64_t kb = kend - k0 < KB ? kend - k0 : KB, kc = (kb + NC - 1) / NC * NC;
        for (int64_t j = 0; j < kc; j++)
            for (int64_t d = 0; d < dh; d++) w->kt[d * KB + j] = j < kb ? k[(k0 + j) * a->ldk + d] : 0.0f;
        for (int64_t r = 0; r < rows; r += MR)
            for (int64_t c = 0; c < kc; c += NC) kn->qk(w->qs + r * dh, dh, w->kt + c, w->s + r * KB + c);
        kn->update(w, rows, kb, q0, k0, a->causal);
        for (int64_t r = 0; r < rows; r += MR)
            for (int64_t c = 0; c < dh; c += NC)
                kn->pv(w->s + r * KB, kb, v + k0 * a->ldv + c, a->ldv, (int)(dh - c < NC ? dh - c : NC), w->alpha + r,
                       w->o + r * dh + c, dh);
    }
    int64_t ldo = a->heads * dh;
    float *out = a->out + (bi * a->Lq + q0) * ldo + h * dh;
    for (int64_t i = 0; i < nq; i++) {
        float inv = w->l[i] > 0 ? 1.0f / w->l[i] : 0.0f;   /* no visible key (Lk = 0): zeros */
        for (int64_t d = 0; d < dh; d++) out[i * ldo + d] = w->o[i * dh + d] * inv;
    }
}

static void att_part(void *arg, int64_t b, int64_t e, int thread) {
    att_args *a = arg;
    int64_t dh = a->dh;
    float *buf = malloc(sizeof(float) * (size_t)(QB * dh + dh * KB + QB * KB + QB * dh + 3 * QB));
    if (!buf) { __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED); return; }
    att_scratch w = {buf, buf + QB * dh, buf + QB * dh + dh * KB, buf + QB * dh + dh * KB + QB * KB, NULL, NULL, NULL};
    w.m = w.o + QB * dh;
    w.l = w.m + QB;
    w.alpha = w.l + QB;
    for (int64_t task = b; task < e; task++) att_task(a, &a->kn, &w, task);
    free(buf);
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
    att_kernels kn = wide ? (att_kernels){qk_avx512, pv_avx512, update_avx512}
                          : (att_kernels){qk_scalar, pv_scalar, update_scalar};
    att_args a = {q, k, v, ldq, ldk, ldv, Lq, Lk < 0 ? 0 : Lk, dh, qblocks, heads, causal, out, kn, 0};
    qd_parallel_for(ctx, B * heads * qblocks, att_part, &a);
    if (a.failed) qd_op_failed(ctx, "attention");
    if (ctx->trace) {
        int64_t d[6] = {B, heads, Lq, Lk, dh, causal};
        ctx->trace(ctx->trace_user, "attention", d, 6, qd_now() - t0);
    }
}
