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

const qd_st_tensor *qd_weight_dense_storage(const qd_weight *w) { return w->decode == dense_decode ? w->t : NULL; }

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
    w->decode_base = 0;
    w->lr_up = w->lr_down = 0;
    w->lr_rank = w->lr_ld = 0;
    w->view_base = 0;
    w->decode_bf16 = w->decode_base_bf16 = 0;
}

/* ---- views ---- */

/* Split view rows [r0, r0+nr) into runs of consecutive base rows: calls f(base row, count,
 * offset of the run in the view rows) at most twice. */
#define VIEW_RUNS(v, r0, nr, BODY)                                                            \
    do {                                                                                      \
        int64_t r_ = (r0), end_ = (r0) + (nr);                                                \
        while (r_ < end_) {                                                                   \
            int seg_ = r_ >= (v)->view_n;                                                     \
            int64_t lim_ = seg_ ? 2 * (v)->view_n : (v)->view_n;                              \
            int64_t cnt = (end_ < lim_ ? end_ : lim_) - r_;                                   \
            int64_t brow = (v)->view_r[seg_] + r_ - (seg_ ? (v)->view_n : 0), off = r_ - (r0); \
            BODY;                                                                             \
            r_ += cnt;                                                                        \
        }                                                                                     \
    } while (0)

static void view_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const qd_weight *b = w->view_base;
    VIEW_RUNS(w, r0, nr, b->decode(b, brow, cnt, w->view_c + k0, nk, dst + off * ld, ld));
}

static void view_decode_lowp(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    const qd_weight *b = w->view_base;
    VIEW_RUNS(w, r0, nr, b->decode_lowp(b, brow, cnt, w->view_c + k0, nk, dst + off * ld, ld));
}

static void view_decode_base(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    const qd_weight *b = w->view_base;
    VIEW_RUNS(w, r0, nr, b->decode_base(b, brow, cnt, w->view_c + k0, nk, dst + off * ld, ld));
}

static void view_decode_kmajor(const qd_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel,
                               int64_t ld) {
    const qd_weight *b = w->view_base;
    if (r0 + nr <= w->view_n || r0 >= w->view_n || w->view_r[1] < 0) {   /* one run: the base's own k-major decode */
        int seg = r0 >= w->view_n && w->view_r[1] >= 0;
        b->decode_kmajor(b, w->view_r[seg] + r0 - (seg ? w->view_n : 0), nr, w->view_c + k0, nk, panel, ld);
        return;
    }
    /* a strip across the two runs (not with run lengths that are multiples of the strip):
     * row by row through decode(), transposed */
    float row[256];
    for (int64_t k = 0; k < nk; k += 256) {
        int64_t n = nk - k < 256 ? nk - k : 256;
        for (int r = 0; r < ld; r++) {
            if (r < nr) view_decode(w, r0 + r, 1, k0 + k, n, row, n);
            for (int64_t i = 0; i < n; i++) panel[(k + i) * ld + r] = r < nr ? row[i] : 0.0f;
        }
    }
}

void qd_weight_view(qd_weight *v, const qd_weight *base, int64_t ra, int64_t rb, int64_t n, int64_t c0, int64_t nc) {
    memset(v, 0, sizeof *v);
    v->rows = rb >= 0 ? 2 * n : n;
    v->cols = nc;
    v->t = base->t;
    v->quant = base->quant;   /* the GEMM's blocking treats a view like its base */
    v->decode = view_decode;
    v->decode_lowp = base->decode_lowp ? view_decode_lowp : NULL;
    v->decode_kmajor = base->decode_kmajor ? view_decode_kmajor : NULL;
    v->decode_base = base->decode_base ? view_decode_base : NULL;   /* lr_* stay base's: see gemm_lowrank.c */
    v->view_base = base;
    v->view_r[0] = ra;
    v->view_r[1] = rb;
    v->view_n = n;
    v->view_c = c0;
}
