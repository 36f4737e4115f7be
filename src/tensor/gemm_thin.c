/* GEMM for a convolution over few output pixels (the SD1.5 UNet's 8x8 level: Cout 1280
 * against 128 pixels, K = Cin*9 up to 23040). The blocked driver (gemm.c) moves all
 * threads through every K block together: pack the weight's block, then compute, so
 * with ~20 K blocks of little compute each, its per-step waits cost 2 threads a third
 * of their time. Here the im2col operand, small for every K, is packed once for all K
 * (the threads share that work by K block), and then each output-row group (a range of
 * weight strips) is one independent job: a thread claims a group and runs all its K
 * blocks alone, packing the group's weight rows itself, with its part of C in L2. No
 * thread ever waits for another until the end. Each element of C is accumulated by one
 * group in K-block order, so the result does not depend on the thread count. */
#include "tensor/gemm_internal.h"
#include "base/threads.h"

#include <stdlib.h>
#include <string.h>

#define THIN_MAX_N 256                 /* streamed columns (pixels) for which this path runs */
/* QD_NO_GEMM_THIN=1 in the environment turns the path off (to compare with the driver). */
#define THIN_MAX_BWORDS (4 << 20)      /* 16 MiB for the whole packed im2col operand */
#define GROUP_STRIPS 24                /* weight strips per group at most (336 rows: 370 KB of bf16 A in L2) */

typedef struct {
    qd_mat A, B;
    const qd_gemm_kernel *kd;
    int bf16;
    int64_t M, N, K, kcmax, nk, nbs;   /* nbs: B strips (of NR columns) */
    float *C;
    int64_t ldc, c_cols, c_bstride;
    float alpha;
    int acc_first;
    const float *row_bias, *col_bias;
    uint32_t *bbuf;                    /* K block kb's B strips at bbuf + kb * bblock */
    int64_t bblock;
    int64_t group_strips;
    uint32_t **abuf;                   /* per thread: one group's A strips for one K block */
    float **scratch;                   /* per thread: packer scratch */
} thin_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static float *c_at(const thin_job *j, int64_t i, int64_t n) {
    int64_t off = j->c_cols ? (n / j->c_cols) * j->c_bstride + n % j->c_cols : n;
    return j->C + i * j->ldc + off;
}

static void kblock(const thin_job *j, int64_t kb, int64_t *k0, int64_t *kc) {
    *k0 = kb * j->kcmax;
    *kc = min64(j->kcmax, j->K - *k0);
}

static void pack_b_part(void *arg, int64_t b, int64_t e, int thread) {
    thin_job *j = arg;
    for (int64_t kb = b; kb < e; kb++) {
        int64_t k0, kc;
        kblock(j, kb, &k0, &kc);
        qd_gemm_pack_b(j->B, 0, j->N, k0, kc, j->kd->nr, j->bf16, j->bbuf + kb * j->bblock, j->scratch[thread]);
    }
}

static void group_part(void *arg, int64_t b, int64_t e, int thread) {
    thin_job *j = arg;
    const int MR = j->kd->mr, NR = j->kd->nr;
    float tile[QD_GEMM_MAXR * QD_GEMM_MAXR];
    uint32_t *ap = j->abuf[thread];
    for (int64_t grp = b; grp < e; grp++) {
        int64_t r0 = grp * j->group_strips * MR, r1 = min64(r0 + j->group_strips * MR, j->M);
        for (int64_t kb = 0; kb < j->nk; kb++) {
            int64_t k0, kc;
            kblock(j, kb, &k0, &kc);
            int64_t kw = qd_gemm_kw(kc, j->bf16);
            qd_gemm_pack_a(j->A, r0, r1 - r0, k0, kc, MR, j->bf16, j->alpha, ap, j->scratch[thread]);
            int acc = kb > 0 || j->acc_first, last = kb == j->nk - 1;
            const float *rb = last ? j->row_bias : NULL, *cb = last ? j->col_bias : NULL;
            const uint32_t *bp = j->bbuf + kb * j->bblock;
            for (int64_t jb = 0; jb < j->N; jb += NR) {   /* a B strip stays in L1 across the group */
                int nj = (int)min64(NR, j->N - jb);
                const uint32_t *bs = bp + jb / NR * qd_gemm_b_strip_words(kw, NR);
                int contiguous = !j->c_cols || jb / j->c_cols == (jb + nj - 1) / j->c_cols;
                for (int64_t i = r0; i < r1; i += MR) {
                    int ni = (int)min64(MR, r1 - i);
                    const uint32_t *as = ap + (i - r0) / MR * qd_gemm_a_strip_words(MR);
                    if (nj == NR && contiguous && (ni == MR || j->kd->fn_rows)) {
                        if (ni == MR)
                            j->kd->fn(kw, as, bs, c_at(j, i, jb), j->ldc, acc, rb ? rb + i : NULL, cb ? cb + jb : NULL);
                        else
                            j->kd->fn_rows(ni, kw, as, bs, c_at(j, i, jb), j->ldc, acc, rb ? rb + i : NULL,
                                           cb ? cb + jb : NULL);
                        continue;
                    }
                    j->kd->fn(kw, as, bs, tile, NR, 0, NULL, NULL);
                    for (int r = 0; r < ni; r++)
                        for (int q = 0; q < nj; q++) {
                            float *c = c_at(j, i + r, jb + q);
                            float v = tile[r * NR + q] + (acc ? *c : 0.0f);
                            if (rb) v += rb[i + r];
                            if (cb) v += cb[jb + q];
                            *c = v;
                        }
                }
            }
        }
    }
}

int qd_gemm_thin(qd_ctx *ctx, int threads, const qd_gemm_kernel *kd, int64_t M, int64_t N, int64_t K, qd_mat A,
                 qd_mat B, float *C, int64_t ldc, int64_t c_cols, int64_t c_bstride, float alpha, int acc_first,
                 const float *row_bias, const float *col_bias, int *rc) {
    if (!ctx || A.kind != QD_MAT_WEIGHT || B.kind != QD_MAT_IM2COL || N > THIN_MAX_N || getenv("QD_NO_GEMM_THIN"))
        return 0;
    thin_job j;
    memset(&j, 0, sizeof j);
    j.A = A;
    j.B = B;
    j.kd = kd;
    j.bf16 = kd->bf16;
    j.M = M;
    j.N = N;
    j.K = K;
    j.kcmax = j.bf16 ? 2 * QD_GEMM_KCW : QD_GEMM_KCW;
    j.nk = (K + j.kcmax - 1) / j.kcmax;
    if (j.nk < 2) return 0;   /* one K block: the driver has no per-block waits to save */
    j.kcmax = ((K + j.nk - 1) / j.nk + 31) / 32 * 32;
    j.nbs = (N + kd->nr - 1) / kd->nr;
    j.bblock = j.nbs * qd_gemm_b_strip_words(qd_gemm_kw(j.kcmax, j.bf16), kd->nr);
    if (j.nk * j.bblock > THIN_MAX_BWORDS) return 0;
    int64_t astrips = (M + kd->mr - 1) / kd->mr;
    /* at least 4 groups per thread, so a thread slowed by the machine takes fewer */
    int64_t want = 4 * (int64_t)threads;
    j.group_strips = astrips / want >= GROUP_STRIPS ? GROUP_STRIPS : (astrips + want - 1) / want;
    if (j.group_strips < 1) j.group_strips = 1;
    int64_t ngroups = (astrips + j.group_strips - 1) / j.group_strips;
    j.C = C;
    j.ldc = ldc;
    j.c_cols = c_cols;
    j.c_bstride = c_bstride;
    j.alpha = alpha;
    j.acc_first = acc_first;
    j.row_bias = row_bias;
    j.col_bias = col_bias;
    int nt = threads > 1 ? qd_threads(ctx) : 1;
    j.bbuf = aligned_alloc(64, (size_t)(j.nk * j.bblock) * 4);
    j.abuf = calloc((size_t)nt, sizeof *j.abuf);
    j.scratch = calloc((size_t)nt, sizeof *j.scratch);
    int ok = j.bbuf && j.abuf && j.scratch;
    for (int t = 0; ok && t < nt; t++) {
        j.abuf[t] = aligned_alloc(64, (size_t)(j.group_strips * qd_gemm_a_strip_words(kd->mr)) * 4);
        j.scratch[t] = aligned_alloc(64, sizeof(float) * QD_GEMM_PACK_SCRATCH);
        ok = j.abuf[t] && j.scratch[t];
    }
    if (ok) {
        if (nt > 1) {
            qd_parallel_for_dyn(ctx, j.nk, 1, pack_b_part, &j);
            qd_parallel_for_dyn(ctx, ngroups, 1, group_part, &j);
        } else {
            pack_b_part(&j, 0, j.nk, 0);
            group_part(&j, 0, ngroups, 0);
        }
    }
    for (int t = 0; t < nt && j.abuf && j.scratch; t++) {
        free(j.abuf[t]);
        free(j.scratch[t]);
    }
    free(j.abuf);
    free(j.scratch);
    free(j.bbuf);
    *rc = ok ? 0 : -1;
    return 1;
}
