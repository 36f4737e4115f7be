/* A GEMM against a weight W = base + up.down (qd_weight.decode_base: SDNQ's SVD term)
 * with the low-rank term applied to the activations instead of to every decoded tile:
 *   weight as B (a linear):  C = alpha X.base^T + alpha (X.down^T).up^T
 *   weight as A (a conv):    C = alpha base.X' + alpha up.(down.X'), where down.X' is
 *     either its own thin GEMM or the rank extra rows of [base; down] . X' in the main
 *     GEMM ("stacked": X', e.g. a convolution's im2col, is then packed only once, and the
 *     extra rows cost rank/rows of the main GEMM)
 * Folding the term into the tiles costs rank multiply-adds per weight element and decode
 * (~0.175 ns per element at rank 32 in bf16, measured by bench_sdnq_decode); the side
 * path costs re-packing the activations once more plus rank * tokens * (rows + cols)
 * multiply-adds in two thin GEMMs. With few tokens (FLUX's adaLN, SD1.5's 8x8 level,
 * text-conditioned K/V) the side path is several times cheaper; with many it is not. */
#include "tensor/gemm.h"
#include "tensor/gemm_internal.h"
#include "tensor/weight.h"
#include "base/threads.h"
#include "tensor/bf16_pairs.h"

#include <stdlib.h>
#include <string.h>

/* ns per unit, one thread (bench_sdnq_decode, bench_gemm on the project machine) */
#define FOLD_NS_BF16 0.0055   /* per weight element and rank: the bf16-product fold */
#define FOLD_NS_F32 0.0100    /* the fp32 fold */
#define MAC_NS_BF16 0.0060    /* per multiply-add of a thin (rank-wide) bf16 GEMM */
#define MAC_NS_F32 0.0120
#define MAC_NS_MAIN 0.0040    /* per multiply-add of the main bf16 GEMM (extra rows ride along) */
#define MAC_NS_MAIN_F32 0.0080
#define PACK_NS_ROWS 0.15     /* per activation element packed again */
#define PACK_NS_IM2COL 0.30

/* QD_LOWRANK=0: always fold, 1: always the side path, 2: always stacked where the weight is
 * A (else the side path) (tests, benchmarks); unset: by the cost model. */
static int forced(void) {
    const char *e = getenv("QD_LOWRANK");
    return e && *e >= '0' && *e <= '2' ? *e - '0' : -1;
}

enum { FOLD, SIDE, STACK };

/* The cheapest way to apply the term: FOLD into the tiles; SIDE, two thin GEMMs (the
 * activations packed once more); STACK (weight as A only): down's rank rows stacked under
 * the weight in the main GEMM, whose packed activations they share, then one thin GEMM. */
static int choose(const qd_weight *w, int64_t tokens, int w_on_a, int im2col, int bf16) {
    const qd_weight *b = w->view_base ? w->view_base : w;
    double r = (double)b->lr_rank, rows = (double)w->rows, cols = (double)w->cols, t = (double)tokens;
    double mac = bf16 ? MAC_NS_BF16 : MAC_NS_F32, mac_main = bf16 ? MAC_NS_MAIN : MAC_NS_MAIN_F32;
    double fold = rows * cols * r * (bf16 ? FOLD_NS_BF16 : FOLD_NS_F32);
    double side = t * cols * (im2col ? PACK_NS_IM2COL : PACK_NS_ROWS) + r * t * (rows + cols) * mac;
    double stack = w_on_a ? r * t * cols * mac_main + r * t * rows * mac : 1e300;
    if (side < 0.8 * fold && side <= stack) return SIDE;
    return stack < 0.8 * fold ? STACK : FOLD;
}

/* The weight as A with down's rows under it: rows [0, m) decode the base, rows [m, m + r)
 * copy down's. */
typedef struct {
    qd_weight w;               /* first: decode() gets &w */
    const qd_weight *base;
    int64_t m, r, ld;          /* rows past m + r (to a whole strip) are zero */
    const float *down;
} stacked;

static void stacked_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const stacked *s = (const stacked *)w;
    int64_t n1 = r0 < s->m ? (s->m - r0 < nr ? s->m - r0 : nr) : 0;
    if (n1 > 0) s->base->decode_base(s->base, r0, n1, k0, nk, dst, ld);
    for (int64_t r = n1; r < nr; r++) {
        float *d = dst + r * ld;
        if (r0 + r < s->m + s->r) memcpy(d, s->down + (r0 + r - s->m) * s->ld + k0, sizeof(float) * (size_t)nk);
        else memset(d, 0, sizeof(float) * (size_t)nk);   /* padding up to a whole strip */
    }
}

/* The base rows straight into bf16 pairs; a strip with down's rows goes through decode(). */
static int stacked_decode_bf16(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                               int64_t ldw, float alpha) {
    const stacked *s = (const stacked *)w;
    return r0 + nr <= s->m && s->base->decode_base_bf16(s->base, r0, nr, k0, nk, dst, ldw, alpha);
}

/* C rows [i0, i0 + n) = beta C + T rows [0, n) (stride N) + the biases: the rows of the
 * result a stacked GEMM left in its side buffer. */
static void rows_to_c(float *C, int64_t ldc, int64_t c_cols, int64_t c_bstride, int64_t i0, int64_t n, int64_t N,
                      const float *T, float beta, const float *row_bias, const float *col_bias) {
    int64_t run = c_cols ? c_cols : N;   /* C's columns come in runs of one batch image */
    for (int64_t i = 0; i < n; i++) {
        const float *t = T + i * N;
        float rb = row_bias ? row_bias[i0 + i] : 0.0f;
        for (int64_t j0 = 0; j0 < N; j0 += run) {
            float *c = C + (i0 + i) * ldc + (j0 / run) * (c_cols ? c_bstride : 0);
            int64_t e = N - j0 < run ? N - j0 : run;
            for (int64_t j = 0; j < e; j++) {
                float v = (beta != 0 ? beta * c[j] : 0.0f) + t[j0 + j];
                if (row_bias) v += rb;
                if (col_bias) v += col_bias[j0 + j];
                c[j] = v;
            }
        }
    }
}

/* ---- folded weight decoded once per call ----
 * The GEMM driver keeps C in an L2 slab for convolutions with few output channels over
 * many pixels, re-packing the weight once per slab: cheap for a dense weight, a whole
 * decode (here with the SVD fold) for a quantized one, so quantized weights do not get the
 * slab (gemm.c). For those shapes the folded weight is decoded once into bf16 rows, and the
 * GEMM runs over them as a dense-like weight (qd_weight.quant NULL) that packs by copying. */
#define PRE_MAX_ROWS 320      /* gemm.c's CONV_L2_MAX_ROWS and CONV_L2_MIN_PIXELS: where it takes the slab */
#define PRE_MIN_PIXELS 8192

typedef struct {
    qd_weight w;               /* first: the packer gets &w */
    const qd_weight *orig;
    uint32_t *rows;            /* [rows, ldw] bf16 pairs of orig's decode_lowp */
    int64_t ldw;
} predecoded;

static void pre_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const predecoded *p = (const predecoded *)w;
    p->orig->decode_lowp(p->orig, r0, nr, k0, nk, dst, ld);
}

static int pre_bf16(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst, int64_t ldw,
                    float alpha) {
    const predecoded *p = (const predecoded *)w;
    if ((k0 & 1) || alpha != 1.0f) return 0;   /* (the convolution's alpha is 1) */
    int64_t words = (nk + 1) / 2;
    for (int64_t r = 0; r < nr; r++) {
        uint32_t *d = dst + r * ldw;
        memcpy(d, p->rows + (r0 + r) * p->ldw + k0 / 2, sizeof(uint32_t) * (size_t)words);
        if (nk & 1) d[words - 1] &= 0xffffu;   /* the next column is not in the rectangle */
    }
    return 1;
}

#define PRE_STRIP 16   /* rows per task */
#define PRE_KT 256

static void pre_part(void *arg, int64_t b, int64_t e, int thread) {
    predecoded *p = arg;
    const qd_weight *w = p->orig;
    float f[PRE_STRIP * PRE_KT];
    for (int64_t t = b; t < e; t++) {
        int64_t r0 = t * PRE_STRIP, nr = w->rows - r0 < PRE_STRIP ? w->rows - r0 : PRE_STRIP;
        for (int64_t k0 = 0; k0 < w->cols; k0 += PRE_KT) {
            int64_t kt = w->cols - k0 < PRE_KT ? w->cols - k0 : PRE_KT;
            w->decode_lowp(w, r0, nr, k0, kt, f, kt);
            for (int64_t r = 0; r < nr; r++)
                qd_floats_to_bf16_pairs(p->rows + (r0 + r) * p->ldw + k0 / 2, f + r * kt, kt, 1.0f);
        }
    }
}

/* Runs the GEMM over the once-decoded weight and returns 1 when the shape is one for it. */
static int gemm_predecoded(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                           int64_t c_cols, int64_t c_bstride, float alpha, float beta, const float *row_bias,
                           const float *col_bias, int *rc) {
    const qd_weight *w = A.w;
    if (A.kind != QD_MAT_WEIGHT || B.kind != QD_MAT_IM2COL || !qd_ctx_bf16(ctx) || !w->decode_lowp || w->view_base ||
        M > PRE_MAX_ROWS || N < PRE_MIN_PIXELS || K <= 2 * QD_GEMM_KCW || alpha != 1.0f ||
        !qd_gemm_kernel_pick(1)->bf16)
        return 0;
    predecoded p;
    p.orig = w;
    p.ldw = (K + 1) / 2;
    p.rows = malloc(sizeof(uint32_t) * (size_t)(M * p.ldw));
    if (!p.rows) return 0;
    qd_parallel_for_dyn(ctx, (M + PRE_STRIP - 1) / PRE_STRIP, 1, pre_part, &p);
    memset(&p.w, 0, sizeof p.w);
    p.w.rows = M;
    p.w.cols = K;
    p.w.decode = pre_decode;
    p.w.decode_lowp = pre_decode;
    p.w.decode_bf16 = pre_bf16;   /* quant NULL: the driver blocks it as a dense weight */
    *rc = qd_gemm_cbatch(ctx, M, N, K, qd_wmat(&p.w), B, C, ldc, c_cols, c_bstride, alpha, beta, row_bias, col_bias);
    free(p.rows);
    return 1;
}

int qd_gemm_lowrank(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                    int64_t c_cols, int64_t c_bstride, float alpha, float beta, const float *row_bias,
                    const float *col_bias, int *rc) {
    int w_on_a = A.kind == QD_MAT_WEIGHT;
    const qd_weight *w = w_on_a ? A.w : B.kind == QD_MAT_WEIGHT ? B.w : NULL;
    if (!w || !w->decode_base || w->lora || (!w_on_a && c_cols)) return 0;
    int f = forced();
    int how = f == 0 ? FOLD : f == 1 ? SIDE : f == 2 ? (w_on_a ? STACK : SIDE)
            : choose(w, w_on_a ? N : M, w_on_a, B.kind == QD_MAT_IM2COL, qd_ctx_bf16(ctx));
    if (how == FOLD)
        return f != 0 && gemm_predecoded(ctx, M, N, K, A, B, C, ldc, c_cols, c_bstride, alpha, beta, row_bias, col_bias, rc);
    /* the low-rank factors: a view's rows come in up to two runs of its base's rows */
    const qd_weight *b = w->view_base ? w->view_base : w;
    int64_t r = b->lr_rank, c0 = w->view_base ? w->view_c : 0;
    int64_t nrun = w->view_base && w->view_r[1] >= 0 ? 2 : 1;
    int64_t run_n = w->view_base ? w->view_n : w->rows;
    const float *down = b->lr_down + c0;
    int64_t tokens = w_on_a ? N : M;
    float *t = how == STACK ? NULL : malloc(sizeof(float) * (size_t)(tokens * r));
    if (!t && how != STACK) return 0;   /* the folding GEMM needs no more memory than this */
    qd_weight base = *w;
    base.decode = w->decode_base;
    base.decode_lowp = NULL;
    base.decode_kmajor = NULL;
    base.decode_base = NULL;   /* the main GEMM below must not come back here */
    base.decode_bf16 = w->view_base ? NULL : w->decode_base_bf16;   /* (a view's rows are not its base's) */
    base.decode_base_bf16 = NULL;
    *rc = 0;
    if (how == STACK) {
        /* [base; down; 0] . X' in one GEMM, its rows from ms on into a side buffer T: ms is the
         * last whole strip boundary at or below M (a strip across the split, or a short last
         * one, would leave the micro-kernel for the scalar tile path on every K block), and
         * the stacked rows run to a whole strip. Then the rows [ms, M) of T go to C, t = alpha
         * down.X' is T's next r rows, and C += up_run . t. A convolution over few pixels
         * (gemm_thin.c, which takes no side buffer) puts all rows into T (ms = 0). */
        int mr = qd_gemm_kernel_pick(qd_ctx_bf16(ctx))->mr;
        int64_t ms = N <= 256 ? 0 : M / mr * mr, mt = ms + (M - ms + r + mr - 1) / mr * mr;
        float *T = malloc(sizeof(float) * (size_t)((mt - ms) * N));
        if (!T) { free(t); return 0; }
        stacked st;
        st.w = base;
        st.w.rows = mt;
        st.w.decode = stacked_decode;
        st.w.decode_bf16 = base.decode_bf16 ? stacked_decode_bf16 : NULL;
        st.base = w;
        st.m = M;
        st.r = r;
        st.ld = b->lr_ld;
        st.down = down;
        if (ms == 0) {
            *rc |= qd_gemm_cbatch(ctx, mt, N, K, qd_wmat(&st.w), B, T, N, 0, 0, alpha, 0.0f, NULL, NULL);
        } else {
            memset(T, 0, sizeof(float) * (size_t)((mt - ms) * N));
            *rc |= qd_gemm_split_rows(ctx, mt, N, K, qd_wmat(&st.w), B, C, ldc, c_cols, c_bstride, alpha, beta,
                                      row_bias, col_bias, ms, T, N);
        }
        rows_to_c(C, ldc, c_cols, c_bstride, ms, M - ms, N, T, beta, row_bias, col_bias);
        const float *tt = T + (M - ms) * N;
        for (int64_t q = 0; q < nrun; q++) {
            const float *up = b->lr_up + (w->view_base ? w->view_r[q] : 0) * r;
            *rc |= qd_gemm_cbatch(ctx, run_n, N, r, qd_rows(up, r), qd_cols(tt, N), C + q * run_n * ldc, ldc, c_cols,
                                  c_bstride, 1.0f, 1.0f, NULL, NULL);
        }
        free(T);
    } else if (w_on_a) {
        /* t[r, N] = down . X'; C[rows of run, :] += alpha up_run . t */
        *rc |= qd_gemm_cbatch(ctx, M, N, K, qd_wmat(&base), B, C, ldc, c_cols, c_bstride, alpha, beta, row_bias, col_bias);
        *rc |= qd_gemm_cbatch(ctx, r, N, K, qd_rows(down, b->lr_ld), B, t, N, 0, 0, 1.0f, 0.0f, NULL, NULL);
        for (int64_t q = 0; q < nrun; q++) {
            const float *up = b->lr_up + (w->view_base ? w->view_r[q] : 0) * r;
            *rc |= qd_gemm_cbatch(ctx, run_n, N, r, qd_rows(up, r), qd_cols(t, N), C + q * run_n * ldc, ldc, c_cols,
                                  c_bstride, alpha, 1.0f, NULL, NULL);
        }
    } else {
        /* t[M, r] = X . down^T; C[:, cols of run] += alpha t . up_run^T */
        *rc |= qd_gemm_cbatch(ctx, M, N, K, A, qd_wmat(&base), C, ldc, 0, 0, alpha, beta, row_bias, col_bias);
        *rc |= qd_gemm_cbatch(ctx, M, r, K, A, qd_rows(down, b->lr_ld), t, r, 0, 0, 1.0f, 0.0f, NULL, NULL);
        for (int64_t q = 0; q < nrun; q++) {
            const float *up = b->lr_up + (w->view_base ? w->view_r[q] : 0) * r;
            *rc |= qd_gemm_cbatch(ctx, M, run_n, r, qd_rows(t, r), qd_rows(up, r), C + q * run_n, ldc, 0, 0, alpha,
                                  1.0f, NULL, NULL);
        }
    }
    free(t);
    return 1;
}
