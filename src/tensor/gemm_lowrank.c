/* A GEMM against a weight W = base + up.down (qd_weight.decode_base: SDNQ's SVD term)
 * with the low-rank term applied to the activations instead of to every decoded tile:
 *   weight as B (a linear):  C = alpha X.base^T + alpha (X.down^T).up^T
 *   weight as A (a conv):    C = alpha base.X' + alpha up.(down.X')
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
#define PACK_NS_ROWS 0.15     /* per activation element packed again */
#define PACK_NS_IM2COL 0.30

/* QD_LOWRANK=0: never (always fold), 1: always (tests), unset: by the cost model. */
static int forced(void) {
    const char *e = getenv("QD_LOWRANK");
    return e && (*e == '0' || *e == '1') ? *e - '0' : -1;
}

static int cheaper(const qd_weight *w, int64_t tokens, int im2col, int bf16) {
    const qd_weight *b = w->view_base ? w->view_base : w;
    double r = (double)b->lr_rank, rows = (double)w->rows, cols = (double)w->cols, t = (double)tokens;
    double fold = rows * cols * r * (bf16 ? FOLD_NS_BF16 : FOLD_NS_F32);
    double side = t * cols * (im2col ? PACK_NS_IM2COL : PACK_NS_ROWS) + r * t * (rows + cols) * (bf16 ? MAC_NS_BF16 : MAC_NS_F32);
    return side < 0.8 * fold;
}

int qd_gemm_lowrank(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                    int64_t c_cols, int64_t c_bstride, float alpha, float beta, const float *row_bias,
                    const float *col_bias, int *rc) {
    int w_on_a = A.kind == QD_MAT_WEIGHT;
    const qd_weight *w = w_on_a ? A.w : B.kind == QD_MAT_WEIGHT ? B.w : NULL;
    if (!w || !w->decode_base || w->lora || (!w_on_a && c_cols)) return 0;
    int f = forced();
    if (f == 0 || (f < 0 && !cheaper(w, w_on_a ? N : M, B.kind == QD_MAT_IM2COL, qd_ctx_bf16(ctx)))) return 0;
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
    if (w_on_a) {
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
