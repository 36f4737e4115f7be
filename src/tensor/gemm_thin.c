/* GEMM where one operand is small for every K: a convolution over few output pixels (the
 * SD1.5 UNet's 8x8 level: Cout 1280 against 128 pixels, K = Cin*9 up to 23040), or a
 * linear layer over few tokens (cross-attention's k/v over 2x77 text tokens, K 768).
 * The blocked driver (gemm.c) moves all threads through every K block together: pack the
 * weight's block, then compute, so with little compute per K block its per-step waits
 * cost 2 threads a third of their time. Here the small operand (the im2col columns, or
 * the token rows) is packed once for all K, the threads sharing that work in pieces, and
 * then each group of weight strips is one independent job: a thread claims a group and
 * runs all its K blocks alone, packing the group's weight rows itself, with its part of C
 * in L2. Everything is one pool job: a thread waits only for the pieces of the small
 * operand's K block it is about to use (claimed by running threads before any group is
 * started), never for another group. Groups shrink towards the end (each takes about
 * 1/(2*threads) of the strips left), so the threads finish close together. Each element
 * of C is accumulated by one group in K-block order, so the result does not depend on the
 * thread count or the grouping. */
#include "tensor/gemm_internal.h"
#include "base/threads.h"
#include "tensor/weight.h"

#include <immintrin.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define THIN_MAX_N 256                 /* conv: output pixels (B columns) for which this path runs */
#define SMALLM_MAX_M 512               /* linear: token rows (A rows) for which this path runs */
/* QD_NO_GEMM_THIN=1 in the environment turns the conv path off, QD_NO_GEMM_SMALLM=1 the
 * linear one (to compare with the driver). */
#define THIN_MAX_WORDS (4 << 20)       /* 16 MiB for the whole packed small operand */
#define GROUP_STRIPS_A 24              /* conv: weight strips per group at most (336 rows: 370 KB of bf16 A in L2) */
#define GROUP_STRIPS_B 8               /* linear: weight strips of 32 columns (8 x 32 KB of bf16 B per K block) */

typedef struct {
    qd_mat A, B;
    const qd_gemm_kernel *kd;
    int bf16;
    int group_is_a;                    /* the weight (grouped) is A (conv) or B (linear) */
    int64_t M, N, K, kcmax, nk;
    float *C;
    int64_t ldc, c_cols, c_bstride;
    float alpha;
    int acc_first;
    const float *row_bias, *col_bias;
    uint32_t *whole;                   /* the small operand, K block kb at whole + kb * wblock */
    int64_t wblock;
    int64_t wstrips, wpieces, piece_strips;   /* its strips; pack tasks per K block, strips per task */
    int64_t npack;                     /* nk * wpieces */
    int64_t *gstart, ngroups;          /* group g = weight strips [gstart[g], gstart[g+1]) */
    int64_t gmax;                      /* strips of the largest group */
    uint32_t **gbuf;                   /* per thread: one group's weight strips for one K block */
    float **scratch;                   /* per thread: packer scratch */
    int64_t pack_next, group_next;     /* atomics */
    int64_t *pack_done;                /* atomics: finished pieces per K block */
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

static int claim(int64_t *next, int64_t limit, int64_t *got) {
    int64_t g = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
    if (g >= limit) return 0;
    *got = g;
    return 1;
}

static void wait_for(const int64_t *counter, int64_t target) {
    for (int spins = 0; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < target; spins++) {
        if (spins < 2000) _mm_pause();
        else sched_yield();   /* the machine may have fewer free cores than threads */
    }
}

/* Words of one packed strip of the small operand, and of the weight, for kw k-steps. */
static int64_t whole_strip_words(const thin_job *j, int64_t kw) {
    return j->group_is_a ? qd_gemm_b_strip_words(kw, j->kd->nr) : qd_gemm_a_strip_words(j->kd->mr);
}
static int64_t group_strip_words(const thin_job *j, int64_t kw) {
    return j->group_is_a ? qd_gemm_a_strip_words(j->kd->mr) : qd_gemm_b_strip_words(kw, j->kd->nr);
}

static void pack_piece(thin_job *j, int64_t task, float *scratch) {
    int64_t kb = task / j->wpieces, piece = task % j->wpieces, k0, kc;
    kblock(j, kb, &k0, &kc);
    int64_t kw = qd_gemm_kw(kc, j->bf16), w = j->group_is_a ? j->kd->nr : j->kd->mr;
    int64_t rows = j->group_is_a ? j->N : j->M;
    int64_t s0 = piece * j->piece_strips, r0 = s0 * w, r1 = min64(r0 + j->piece_strips * w, rows);
    if (r0 >= r1) return;
    uint32_t *dst = j->whole + kb * j->wblock + s0 * whole_strip_words(j, kw);
    if (j->group_is_a) qd_gemm_pack_b(j->B, r0, r1 - r0, k0, kc, j->kd->nr, j->bf16, dst, scratch);
    else qd_gemm_pack_a(j->A, r0, r1 - r0, k0, kc, j->kd->mr, j->bf16, j->alpha, dst, scratch);
}

/* The group's weight runs of the next K block, fetched into L2 a few lines per kernel
 * call while this block computes: they are short runs a whole row apart, which the
 * hardware prefetcher does not follow, so packing would otherwise wait on DRAM with
 * nothing to overlap (dense storage only; perf, 1 thread, 1280 @8x8: the fp16 decode and
 * packing 18.6% of the samples -> 15.3% with the prefetch loop). */
typedef struct {
    const char *base;        /* the first line of the next run to fetch; NULL: nothing to fetch */
    int64_t stride, lines_per_run, runs, line, per_call;   /* line: next line within the run */
} run_prefetch;

static void prefetch_init(run_prefetch *pf, const thin_job *j, int64_t r0, int64_t r1, int64_t kb, int64_t calls) {
    memset(pf, 0, sizeof *pf);
    const qd_weight *w = j->group_is_a ? j->A.w : j->B.w;
    const qd_st_tensor *t = qd_weight_dense_storage(w);
    /* convs only: the linears' weight runs measured 2% slower with it (bench_gemm cross k/v,
     * whose weights stay in L3 between calls), the 8x8 convs 3-7% faster */
    if (!j->group_is_a || kb >= j->nk || !t || !t->data) return;
    int64_t k0, kc, es = (int64_t)qd_dtype_size(t->dtype);
    kblock(j, kb, &k0, &kc);
    uintptr_t first = (uintptr_t)t->data + (uintptr_t)((r0 * w->cols + k0) * es);
    pf->base = (const char *)(first & ~(uintptr_t)63);
    pf->lines_per_run = (int64_t)((first & 63) + (uintptr_t)(kc * es) + 63) / 64;
    pf->stride = w->cols * es;
    pf->runs = r1 - r0;
    pf->per_call = (pf->runs * pf->lines_per_run + calls - 1) / (calls > 0 ? calls : 1);
}

static inline void prefetch_some(run_prefetch *pf) {
    for (int64_t n = 0; n < pf->per_call && pf->runs > 0; n++) {
        _mm_prefetch(pf->base + pf->line * 64, _MM_HINT_T1);
        if (++pf->line == pf->lines_per_run) {
            pf->line = 0;
            pf->base += pf->stride;
            pf->runs--;
        }
    }
}

/* C[a0..a1) x [b0..b1) (+)= A strips at ap (from a0) . B strips at bp (from b0), one K
 * block; a B strip stays in L1 across the A strips. */
static void compute(const thin_job *j, int64_t kw, int acc, int last, const uint32_t *ap, int64_t a0, int64_t a1,
                    const uint32_t *bp, int64_t b0, int64_t b1, run_prefetch *pf) {
    const int MR = j->kd->mr, NR = j->kd->nr;
    const float *rb = last ? j->row_bias : NULL, *cb = last ? j->col_bias : NULL;
    float tile[QD_GEMM_MAXR * QD_GEMM_MAXR];
    for (int64_t jb = b0; jb < b1; jb += NR) {
        int nj = (int)min64(NR, b1 - jb);
        const uint32_t *bs = bp + (jb - b0) / NR * qd_gemm_b_strip_words(kw, NR);
        int contiguous = !j->c_cols || jb / j->c_cols == (jb + nj - 1) / j->c_cols;
        for (int64_t i = a0; i < a1; i += MR) {
            int ni = (int)min64(MR, a1 - i);
            if (pf->runs) prefetch_some(pf);
            const uint32_t *as = ap + (i - a0) / MR * qd_gemm_a_strip_words(MR);
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

static void run_group(thin_job *j, int64_t grp, int thread) {
    const int MR = j->kd->mr, NR = j->kd->nr;
    int64_t gw = j->group_is_a ? MR : NR, grows = j->group_is_a ? j->M : j->N;
    int64_t r0 = j->gstart[grp] * gw, r1 = min64(j->gstart[grp + 1] * gw, grows);
    uint32_t *gp = j->gbuf[thread];
    for (int64_t kb = 0; kb < j->nk; kb++) {
        int64_t k0, kc;
        kblock(j, kb, &k0, &kc);
        int64_t kw = qd_gemm_kw(kc, j->bf16);
        if (j->group_is_a) qd_gemm_pack_a(j->A, r0, r1 - r0, k0, kc, MR, j->bf16, j->alpha, gp, j->scratch[thread]);
        else qd_gemm_pack_b(j->B, r0, r1 - r0, k0, kc, NR, j->bf16, gp, j->scratch[thread]);
        wait_for(&j->pack_done[kb], j->wpieces);
        const uint32_t *wp = j->whole + kb * j->wblock;
        int acc = kb > 0 || j->acc_first, last = kb == j->nk - 1;
        int64_t na = j->group_is_a ? (r1 - r0 + MR - 1) / MR : (j->M + MR - 1) / MR;
        int64_t nb = j->group_is_a ? (j->N + NR - 1) / NR : (r1 - r0 + NR - 1) / NR;
        run_prefetch pf;
        prefetch_init(&pf, j, r0, r1, kb + 1, na * nb);
        if (j->group_is_a) compute(j, kw, acc, last, gp, r0, r1, wp, 0, j->N, &pf);
        else compute(j, kw, acc, last, wp, 0, j->M, gp, r0, r1, &pf);
    }
}

/* One thread: pack pieces while there are any, then groups while there are any. A
 * thread reaches the groups only once every piece is claimed, so it waits only for
 * pieces running threads are packing. */
static void worker(thin_job *j, int thread) {
    int64_t got;
    while (claim(&j->pack_next, j->npack, &got)) {
        pack_piece(j, got, j->scratch[thread]);
        __atomic_add_fetch(&j->pack_done[got / j->wpieces], 1, __ATOMIC_RELEASE);
    }
    while (claim(&j->group_next, j->ngroups, &got)) run_group(j, got, thread);
}

static void worker_part(void *arg, int64_t b, int64_t e, int thread) {
    (void)b;
    (void)e;
    worker(arg, thread);
}

int qd_gemm_thin(qd_ctx *ctx, int threads, const qd_gemm_kernel *kd, int64_t M, int64_t N, int64_t K, qd_mat A,
                 qd_mat B, float *C, int64_t ldc, int64_t c_cols, int64_t c_bstride, float alpha, int acc_first,
                 const float *row_bias, const float *col_bias, int *rc) {
    int conv = A.kind == QD_MAT_WEIGHT && B.kind == QD_MAT_IM2COL && N <= THIN_MAX_N && !getenv("QD_NO_GEMM_THIN");
    int lin = B.kind == QD_MAT_WEIGHT && A.kind != QD_MAT_WEIGHT && M <= SMALLM_MAX_M && !getenv("QD_NO_GEMM_SMALLM");
    if (!conv && !lin) return 0;
    thin_job j;
    memset(&j, 0, sizeof j);
    j.A = A;
    j.B = B;
    j.kd = kd;
    j.bf16 = kd->bf16;
    j.group_is_a = conv;
    j.M = M;
    j.N = N;
    j.K = K;
    j.kcmax = j.bf16 ? 2 * QD_GEMM_KCW : QD_GEMM_KCW;
    j.nk = (K + j.kcmax - 1) / j.kcmax;
    if (j.nk < 2) return 0;   /* one K block: the driver has no per-block waits to save */
    j.kcmax = ((K + j.nk - 1) / j.nk + 31) / 32 * 32;
    int64_t ww = conv ? kd->nr : kd->mr, gw = conv ? kd->mr : kd->nr;
    j.wstrips = ((conv ? N : M) + ww - 1) / ww;
    j.wblock = j.wstrips * whole_strip_words(&j, qd_gemm_kw(j.kcmax, j.bf16));
    if (j.nk * j.wblock > THIN_MAX_WORDS) return 0;
    int nt = threads > 1 && ctx ? qd_threads(ctx) : 1;
    /* pack tasks: at least 2 per thread over all K blocks */
    j.wpieces = nt > 1 ? min64((2 * nt + j.nk - 1) / j.nk, j.wstrips) : 1;
    j.piece_strips = (j.wstrips + j.wpieces - 1) / j.wpieces;
    j.wpieces = (j.wstrips + j.piece_strips - 1) / j.piece_strips;
    j.npack = j.nk * j.wpieces;
    /* groups: each about 1/(2*threads) of the weight strips left, at most gcap, at least 2
     * (when there are that many): the last ones are short, so no thread is left with a long one */
    int64_t gstrips = ((conv ? M : N) + gw - 1) / gw, gcap = conv ? GROUP_STRIPS_A : GROUP_STRIPS_B;
    j.gstart = malloc(sizeof(int64_t) * (size_t)(gstrips + 1));
    j.pack_done = calloc((size_t)j.nk, sizeof(int64_t));
    int ok = j.gstart && j.pack_done;
    if (ok) {
        j.gstart[0] = 0;
        for (int64_t s = 0; s < gstrips; j.ngroups++) {
            int64_t left = gstrips - s, n = (left + 2 * nt - 1) / (2 * nt);
            if (n > gcap) n = gcap;
            if (n < 2) n = 2;
            if (n > left) n = left;
            s += n;
            if (n > j.gmax) j.gmax = n;
            j.gstart[j.ngroups + 1] = s;
        }
    }
    j.C = C;
    j.ldc = ldc;
    j.c_cols = c_cols;
    j.c_bstride = c_bstride;
    j.alpha = alpha;
    j.acc_first = acc_first;
    j.row_bias = row_bias;
    j.col_bias = col_bias;
    j.whole = aligned_alloc(64, (size_t)(j.nk * j.wblock) * 4);
    j.gbuf = calloc((size_t)nt, sizeof *j.gbuf);
    j.scratch = calloc((size_t)nt, sizeof *j.scratch);
    ok = ok && j.whole && j.gbuf && j.scratch;
    int64_t gwords = j.gmax * group_strip_words(&j, qd_gemm_kw(j.kcmax, j.bf16));
    for (int t = 0; ok && t < nt; t++) {
        j.gbuf[t] = aligned_alloc(64, (size_t)gwords * 4);
        j.scratch[t] = aligned_alloc(64, sizeof(float) * QD_GEMM_PACK_SCRATCH);
        ok = j.gbuf[t] && j.scratch[t];
    }
    if (ok) {
        if (nt > 1) qd_parallel_for(ctx, nt, worker_part, &j);
        else worker(&j, 0);
    }
    for (int t = 0; t < nt && j.gbuf && j.scratch; t++) {
        free(j.gbuf[t]);
        free(j.scratch[t]);
    }
    free(j.gbuf);
    free(j.scratch);
    free(j.whole);
    free(j.gstart);
    free(j.pack_done);
    *rc = ok ? 0 : -1;
    return 1;
}
