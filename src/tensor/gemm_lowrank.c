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
    int64_t m, ld;
    const float *down;
} stacked;

static void stacked_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    const stacked *s = (const stacked *)w;
    int64_t n1 = r0 < s->m ? (s->m - r0 < nr ? s->m - r0 : nr) : 0;
    if (n1 > 0) s->base->decode_base(s->base, r0, n1, k0, nk, dst, ld);
    for (int64_t r = n1; r < nr; r++) memcpy(dst + r * ld, s->down + (r0 + r - s->m) * s->ld + k0, sizeof(float) * (size_t)nk);
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
    if (how == FOLD) return 0;
    /* the low-rank factors: a view's rows come in up to two runs of its base's rows */
    const qd_weight *b = w->view_base ? w->view_base : w;
    int64_t r = b->lr_rank, c0 = w->view_base ? w->view_c : 0;
    int64_t nrun = w->view_base && w->view_r[1] >= 0 ? 2 : 1;
    int64_t run_n = w->view_base ? w->view_n : w->rows;
    const float *down = b->lr_down + c0;
    int64_t tokens = w_on_a ? N : M;
    float *t = malloc(sizeof(float) * (size_t)(tokens * r));
    if (!t) return 0;   /* the folding GEMM needs no more memory than this */
    qd_weight base = *w;
    base.decode = w->decode_base;
    base.decode_lowp = NULL;
    base.decode_kmajor = NULL;
    base.decode_base = NULL;   /* the main GEMM below must not come back here */
    *rc = 0;
    if (how == STACK) {
        /* [base; down] . X' in one GEMM: t = alpha down.X' from its extra rows; C += up_run . t */
        stacked st;
        st.w = base;
        st.w.rows = M + r;
        st.w.decode = stacked_decode;
        st.base = w;
        st.m = M;
        st.ld = b->lr_ld;
        st.down = down;
        memset(t, 0, sizeof(float) * (size_t)(tokens * r));   /* beta scales it, then it accumulates */
        *rc |= qd_gemm_split_rows(ctx, M + r, N, K, qd_wmat(&st.w), B, C, ldc, c_cols, c_bstride, alpha, beta, row_bias,
                                  col_bias, M, t, N);
        for (int64_t q = 0; q < nrun; q++) {
            const float *up = b->lr_up + (w->view_base ? w->view_r[q] : 0) * r;
            *rc |= qd_gemm_cbatch(ctx, run_n, N, r, qd_rows(up, r), qd_cols(t, N), C + q * run_n * ldc, ldc, c_cols,
                                  c_bstride, 1.0f, 1.0f, NULL, NULL);
        }
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
