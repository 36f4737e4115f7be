/* Blocked GEMM driver. One operand is the "shared" one (the stored weight when there
 * is one): each K block of it is decoded and packed once per call into a buffer all
 * threads read. The other is the "streamed" one (activations, or a convolution's
 * input read as implicit im2col): each thread packs blocks of it privately, sized
 * for L2, and runs the micro-kernel over them against the shared panel.
 *
 * Threads take work dynamically from atomic counters, step by step (a step is one
 * K block of one chunk of shared rows, for one super-block of streamed rows): first
 * the pack tasks of the step, then its compute items. With several K blocks, C is
 * read and written once per K block, so the part of C a K block covers (chunk x
 * super-block) is kept small enough to stay in L3; what is cheaper to re-pack (the
 * streamed operand per chunk, or the shared one per super-block) decides the split. Shared panels are double-buffered, so packing step s+1 overlaps
 * computing step s; a step's compute starts only after the previous step's compute
 * is complete, since both accumulate into the same C. Nobody waits for work that is
 * not already claimed by a running thread, so the scheme does not depend on how
 * many threads the pool really runs. */
#include "tensor/gemm.h"
#include "tensor/gemm_internal.h"
#include "tensor/gemv.h"
#include "tensor/weight.h"
#include "base/threads.h"

#include <immintrin.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define MC_STRIPS 12        /* A rows per L2 block = 12 strips (168 rows at MR 14) */
#define NC_STRIPS 8         /* streamed B columns per block = 8 strips (256 at NR 32) */
#define SHARED_MAX_WORDS (1 << 20)   /* 4 MiB per shared panel buffer: chunks of shared rows beyond it */
#define C_SLAB_FLOATS (2 << 20)      /* 8 MiB of C per (chunk, super-block): stays in the 32 MiB L3 */
#define C_SLAB_QUANT (4 << 20)       /* 16 MiB when the weight is quantized: its decode costs more than C's trips */
/* A convolution with few output channels: its weight panel is small and re-packed cheaply from
 * cache, so keeping C in L2 across the K blocks wins (bench_gemm, 1 thread: Cout 128-256 VAE
 * convs +10-15%, Cout 320 at 64x64 +5-9%; Cout >= 512 lose 3-13%, so they keep the L3 slab) */
#define C_SLAB_L2 (256 << 10)
#define CONV_L2_MAX_ROWS 320
#define CONV_L2_MIN_PIXELS 8192   /* fewer (the stride-2 320 conv, 2048): more, shorter steps cost 2 threads more */

typedef struct {
    int64_t M, N, K;
    qd_mat A, B;
    float *C;
    int64_t ldc, c_cols, c_bstride;
    float alpha, beta;
    const float *row_bias, *col_bias;
    /* rows i >= m_split of C (when C2) go to C2[(i - m_split) * ldc2 + j], without biases:
     * extra rows of a stacked A operand (tensor/gemm_lowrank.c) */
    int64_t m_split, ldc2;
    float *C2;
} gemm_args;

typedef struct {
    const gemm_args *g;
    const qd_gemm_kernel *kd;
    int bf16;
    int shared_is_a;           /* the shared operand is A (a conv weight) or B (a linear weight) */
    int acc_first;             /* C already holds beta*C: accumulate from the first K block */
    int64_t kcmax, nk;         /* K block and number of K blocks */
    int64_t srows, sw;         /* shared operand: rows (M or N) and its strip width (MR or NR) */
    int64_t xrows, xw;         /* streamed operand: rows and strip width */
    int64_t chunk, nchunk;     /* shared rows per chunk (multiple of sw), chunks */
    int64_t xblk, nxb;         /* streamed rows per block (multiple of xw), blocks per super-block */
    int64_t xsup, nxs;         /* streamed rows per super-block (multiple of xblk), super-blocks */
    int64_t nws, ws_strips;    /* slices of a chunk per compute item, strips per slice */
    int64_t pack_strips;       /* shared strips per pack task */
    int64_t nsteps;
    int64_t *pbase, *qbase;    /* per step: first global pack task / compute item, [nsteps+1] */
    uint32_t *sbuf[2];
    int64_t sbuf_words;
    int64_t pack_next, pack_done, comp_next, comp_done;   /* atomics */
    int failed;
} gemm_job;

static inline float *c_at(const gemm_args *g, int64_t i, int64_t j) {
    if (g->C2 && i >= g->m_split) return g->C2 + (i - g->m_split) * g->ldc2 + j;
    int64_t off = g->c_cols ? (j / g->c_cols) * g->c_bstride + j % g->c_cols : j;
    return g->C + i * g->ldc + off;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int claim(int64_t *next, int64_t limit, int64_t *got) {
    int64_t g = __atomic_load_n(next, __ATOMIC_RELAXED);
    while (g < limit) {
        if (__atomic_compare_exchange_n(next, &g, g + 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            *got = g;
            return 1;
        }
    }
    return 0;
}

static void wait_for(const int64_t *counter, int64_t target) {
    for (int spins = 0; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < target; spins++) {
        if (spins < 2000) _mm_pause();
        else sched_yield();   /* the machine may have fewer free cores than threads */
    }
}

/* Step s -> (super-block, chunk, K block); the super-block's rows are [*xs0, *xs1) when asked. */
static void step_pos(const gemm_job *j, int64_t s, int64_t *c0, int64_t *c1, int64_t *k0, int64_t *kc) {
    int64_t chunk = s / j->nk % j->nchunk, kb = s % j->nk;
    *c0 = chunk * j->chunk;
    *c1 = min64(*c0 + j->chunk, j->srows);
    *k0 = kb * j->kcmax;
    *kc = min64(j->kcmax, j->g->K - *k0);
}

static int64_t strip_words(const gemm_job *j, int64_t kw, int64_t width, int is_a) {
    return is_a ? qd_gemm_a_strip_words((int)width) : qd_gemm_b_strip_words(kw, (int)width);
}

static void pack_task(gemm_job *j, int64_t s, int64_t task, float *scratch) {
    int64_t c0, c1, k0, kc;
    step_pos(j, s, &c0, &c1, &k0, &kc);
    int64_t kw = qd_gemm_kw(kc, j->bf16);
    int64_t r0 = c0 + task * j->pack_strips * j->sw, r1 = min64(r0 + j->pack_strips * j->sw, c1);
    uint32_t *dst = j->sbuf[s & 1] + (r0 - c0) / j->sw * strip_words(j, kw, j->sw, j->shared_is_a);
    if (j->shared_is_a)
        qd_gemm_pack_a(j->g->A, r0, r1 - r0, k0, kc, (int)j->sw, j->bf16, j->g->alpha, dst, scratch);
    else
        qd_gemm_pack_b(j->g->B, r0, r1 - r0, k0, kc, (int)j->sw, j->bf16, dst, scratch);
}

/* One compute item: a block of streamed rows against a slice of the step's shared rows.
 * *xkey remembers which (step, block) xbuf holds: consecutive items of a thread often
 * share the block (several slices of few streamed rows), and then it is packed once. */
static void compute_item(gemm_job *j, int64_t s, int64_t item, uint32_t *xbuf, float *scratch, float *tile,
                         int64_t *xkey) {
    const gemm_args *g = j->g;
    const qd_gemm_kernel *kd = j->kd;
    const int MR = kd->mr, NR = kd->nr;
    int64_t c0, c1, k0, kc;
    step_pos(j, s, &c0, &c1, &k0, &kc);
    int64_t kw = qd_gemm_kw(kc, j->bf16);
    int64_t xb = item / j->nws, ws = item % j->nws;
    int64_t xs0 = s / (j->nk * j->nchunk) * j->xsup, xs1 = min64(xs0 + j->xsup, j->xrows);
    int64_t x0 = xs0 + xb * j->xblk, x1 = min64(x0 + j->xblk, xs1);
    int64_t w0 = c0 + ws * j->ws_strips * j->sw, w1 = min64(w0 + j->ws_strips * j->sw, c1);
    if (w0 >= w1 || x0 >= x1) return;
    const uint32_t *wp = j->sbuf[s & 1] + (w0 - c0) / j->sw * strip_words(j, kw, j->sw, j->shared_is_a);
    /* the streamed block, packed privately */
    int64_t key = s * j->nxb + xb;
    if (*xkey != key) {
        if (j->shared_is_a) qd_gemm_pack_b(g->B, x0, x1 - x0, k0, kc, NR, j->bf16, xbuf, scratch);
        else qd_gemm_pack_a(g->A, x0, x1 - x0, k0, kc, MR, j->bf16, g->alpha, xbuf, scratch);
        *xkey = key;
    }
    /* A rows [a0, a1) packed at ap, B columns [b0, b1) at bp */
    const uint32_t *ap = j->shared_is_a ? wp : xbuf, *bp = j->shared_is_a ? xbuf : wp;
    int64_t a0 = j->shared_is_a ? w0 : x0, a1 = j->shared_is_a ? w1 : x1;
    int64_t b0 = j->shared_is_a ? x0 : w0, b1 = j->shared_is_a ? x1 : w1;
    int acc = k0 > 0 || j->acc_first, last = k0 + kc == g->K;
    const float *rb = last ? g->row_bias : NULL, *cb = last ? g->col_bias : NULL;
    int64_t astrip = qd_gemm_a_strip_words(MR), bstrip = qd_gemm_b_strip_words(kw, NR);
    int64_t mc = (int64_t)MC_STRIPS * MR;
    for (int64_t ab = a0; ab < a1; ab += mc) {
        int64_t ae = min64(ab + mc, a1);
        for (int64_t jb = b0; jb < b1; jb += NR) {
            int nj = (int)min64(NR, b1 - jb);
            const uint32_t *bs = bp + (jb - b0) / NR * bstrip;
            /* a strip of C columns stays in one batch image unless it straddles one */
            int contiguous = !g->c_cols || jb / g->c_cols == (jb + nj - 1) / g->c_cols;
            for (int64_t i = ab; i < ae; i += MR) {
                int ni = (int)min64(MR, ae - i);
                const uint32_t *as = ap + (i - a0) / MR * astrip;
                int in2 = g->C2 && i >= g->m_split, cross = g->C2 && i < g->m_split && i + ni > g->m_split;
                if (ni == MR && nj == NR && (in2 || (contiguous && !cross))) {
                    kd->fn(kw, as, bs, c_at(g, i, jb), in2 ? g->ldc2 : g->ldc, acc, rb && !in2 ? rb + i : NULL,
                           cb && !in2 ? cb + jb : NULL);
                    continue;
                }
                if (ni < MR && nj == NR && kd->fn_rows && contiguous && !g->C2) {   /* short last strip of A */
                    kd->fn_rows(ni, kw, as, bs, c_at(g, i, jb), g->ldc, acc, rb ? rb + i : NULL, cb ? cb + jb : NULL);
                    continue;
                }
                kd->fn(kw, as, bs, tile, NR, 0, NULL, NULL);
                for (int r = 0; r < ni; r++) {
                    int bias = !g->C2 || i + r < g->m_split;
                    for (int q = 0; q < nj; q++) {
                        float *c = c_at(g, i + r, jb + q);
                        float v = tile[r * NR + q] + (acc ? *c : 0.0f);
                        if (rb && bias) v += rb[i + r];
                        if (cb && bias) v += cb[jb + q];
                        *c = v;
                    }
                }
            }
        }
    }
}

static void worker(gemm_job *j) {
    const qd_gemm_kernel *kd = j->kd;
    int64_t xwords = j->shared_is_a ? ceil_div(j->xblk, kd->nr) * qd_gemm_b_strip_words(QD_GEMM_KCW, kd->nr)
                                    : ceil_div(j->xblk, kd->mr) * qd_gemm_a_strip_words(kd->mr);
    uint32_t *xbuf = aligned_alloc(64, (size_t)xwords * 4);
    float *scratch = aligned_alloc(64, sizeof(float) * QD_GEMM_PACK_SCRATCH);
    float tile[QD_GEMM_MAXR * QD_GEMM_MAXR];
    if (!xbuf || !scratch) {   /* sit out: the other threads take every task */
        free(xbuf);
        free(scratch);
        return;
    }
    int64_t got, xkey = -1;
    for (int64_t s = 0; s < j->nsteps; s++) {
        while (claim(&j->pack_next, j->pbase[s + 1], &got)) {
            pack_task(j, s, got - j->pbase[s], scratch);
            __atomic_add_fetch(&j->pack_done, 1, __ATOMIC_RELEASE);
        }
        wait_for(&j->pack_done, j->pbase[s + 1]);
        wait_for(&j->comp_done, j->qbase[s]);
        while (claim(&j->comp_next, j->qbase[s + 1], &got)) {
            compute_item(j, s, got - j->qbase[s], xbuf, scratch, tile, &xkey);
            __atomic_add_fetch(&j->comp_done, 1, __ATOMIC_RELEASE);
        }
    }
    free(xbuf);
    free(scratch);
}

static void worker_part(void *arg, int64_t b, int64_t e, int thread) { worker(arg); }

/* Plan and run. threads <= 1 (or ctx NULL): the calling thread alone. Returns -1 when
 * no thread could allocate its buffers (C then is incomplete). */
static int gemm_run(qd_ctx *ctx, int threads, const gemm_args *g, int bf16) {
    if (g->M <= 0 || g->N <= 0) return 0;
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.g = g;
    j.kd = qd_gemm_kernel_pick(bf16);
    j.bf16 = j.kd->bf16;
    const int MR = j.kd->mr, NR = j.kd->nr;
    /* beta: fold into C once, so the kernels only overwrite or accumulate */
    if (g->beta != 0) {
        j.acc_first = 1;
        if (g->beta != 1)
            for (int64_t i = 0; i < g->M; i++)
                for (int64_t n = 0; n < g->N; n++) *c_at(g, i, n) *= g->beta;
    }
    if (g->K <= 0) {   /* nothing to multiply: C = beta*C + biases */
        for (int64_t i = 0; i < g->M; i++)
            for (int64_t n = 0; n < g->N; n++) {
                float *c = c_at(g, i, n);
                int bias = !g->C2 || i < g->m_split;
                *c = (j.acc_first ? *c : 0.0f) + (bias && g->row_bias ? g->row_bias[i] : 0) +
                     (bias && g->col_bias ? g->col_bias[n] : 0);
            }
        return 0;
    }
    int thin_rc;   /* a convolution over few pixels, or a linear over few tokens: tensor/gemm_thin.c */
    if (!g->C2 && qd_gemm_thin(ctx, threads, j.kd, g->M, g->N, g->K, g->A, g->B, g->C, g->ldc, g->c_cols, g->c_bstride,
                               g->alpha, j.acc_first, g->row_bias, g->col_bias, &thin_rc))
        return thin_rc;
    j.shared_is_a = g->A.kind == QD_MAT_WEIGHT || g->B.kind == QD_MAT_IM2COL;
    j.kcmax = j.bf16 ? 2 * QD_GEMM_KCW : QD_GEMM_KCW;
    j.nk = ceil_div(g->K, j.kcmax);
    /* equal K blocks (multiples of 32): a short last one (K 1152 = 512 + 512 + 128) costs a
     * pass over C and a kernel call per tile for little work */
    if (j.nk > 1) j.kcmax = (ceil_div(g->K, j.nk) + 31) / 32 * 32;
    j.srows = j.shared_is_a ? g->M : g->N;
    j.sw = j.shared_is_a ? MR : NR;
    j.xrows = j.shared_is_a ? g->N : g->M;
    j.xw = j.shared_is_a ? NR : MR;
    int64_t kwmax = qd_gemm_kw(min64(g->K, j.kcmax), j.bf16);
    int64_t swords = strip_words(&j, kwmax, j.sw, j.shared_is_a);
    int64_t sstrips = ceil_div(j.srows, j.sw);
    int64_t max_strips = SHARED_MAX_WORDS / swords > 1 ? SHARED_MAX_WORDS / swords : 1;
    j.xblk = (j.shared_is_a ? NC_STRIPS : MC_STRIPS) * j.xw;
    if (j.xblk > j.xrows) j.xblk = ceil_div(j.xrows, j.xw) * j.xw;
    j.nchunk = ceil_div(sstrips, max_strips);
    j.xsup = ceil_div(j.xrows, j.xblk) * j.xblk;
    if (j.nk > 1) {
        /* Keep chunk x super-block of C within C_SLAB_FLOATS, choosing the count of chunks
         * by estimated re-packing cost (ns per element: a weight decodes and transposes,
         * streamed rows are copied or converted, im2col gathers). */
        double cw = g->A.kind == QD_MAT_WEIGHT || g->B.kind == QD_MAT_WEIGHT ? 1.5 : 0.3;
        const qd_weight *w = g->A.kind == QD_MAT_WEIGHT ? g->A.w : g->B.kind == QD_MAT_WEIGHT ? g->B.w : NULL;
        int64_t slab = w && w->quant ? C_SLAB_QUANT : C_SLAB_FLOATS;
        /* only for dense weights: the L2 slab re-packs the weight per super-block, which a
         * quantized one pays in decodes (bench_sdnq uint4+SVD: conv 1.20 -> 1.28 s/step) */
        if (g->B.kind == QD_MAT_IM2COL && !(w && w->quant) && j.srows <= CONV_L2_MAX_ROWS &&
            j.xrows >= CONV_L2_MIN_PIXELS)
            slab = C_SLAB_L2;
        double cx = j.shared_is_a ? 0.4 : 0.15, best = -1;
        int64_t first = j.nchunk;
        for (int64_t nc = first; nc <= sstrips && nc < first + 64; nc++) {
            int64_t crows = ceil_div(sstrips, nc) * j.sw;
            int64_t xs = slab / crows / j.xblk * j.xblk;
            if (xs < j.xblk) xs = j.xblk;
            if (xs > j.xrows) xs = ceil_div(j.xrows, j.xblk) * j.xblk;
            int64_t nxs = ceil_div(j.xrows, xs);
            double cost = (double)nc * (double)j.xrows * cx + (double)nxs * (double)j.srows * cw;
            if (best < 0 || cost < best) { best = cost; j.nchunk = nc; j.xsup = xs; }
        }
        if (slab == C_SLAB_L2 && threads > 1) {   /* few blocks per step: a multiple of the threads */
            int64_t q = j.xblk * threads;
            j.xsup = min64(ceil_div(j.xsup, q) * q, ceil_div(j.xrows, j.xblk) * j.xblk);
        }
    }
    j.chunk = ceil_div(sstrips, j.nchunk) * j.sw;
    j.nchunk = ceil_div(j.srows, j.chunk);
    int64_t chunk_strips = j.chunk / j.sw;
    j.nxs = ceil_div(j.xrows, j.xsup);
    j.nxb = j.xsup / j.xblk;
    /* few streamed blocks: split the shared rows too, so every thread gets items; not when
     * the blocks already divide evenly among the threads: two threads taking two slices of
     * one block each pack that block's im2col rows, twice the packing of one thread (Cout 320
     * convs at 64x64, 4 blocks per step: 1.73x -> 1.88x over one thread; VAE 256 @256x256
     * 1.75x -> 1.95x) */
    int64_t want = threads > 1 ? 3 * (int64_t)threads : 1;
    int even = threads > 1 && j.nxb % threads == 0;
    j.nws = j.nxb >= want || even ? 1 : min64(ceil_div(want, j.nxb), ceil_div(chunk_strips, 2));
    if (j.nws < 1) j.nws = 1;
    j.ws_strips = ceil_div(chunk_strips, j.nws);
    j.pack_strips = threads > 1 ? (chunk_strips + 4 * threads - 1) / (4 * threads) : chunk_strips;
    if (j.pack_strips < 1) j.pack_strips = 1;
    j.nsteps = j.nxs * j.nchunk * j.nk;
    j.sbuf_words = chunk_strips * swords;
    j.pbase = malloc(sizeof(int64_t) * (size_t)(2 * (j.nsteps + 1)));
    j.sbuf[0] = aligned_alloc(64, (size_t)j.sbuf_words * 4);
    j.sbuf[1] = j.nsteps > 1 ? aligned_alloc(64, (size_t)j.sbuf_words * 4) : j.sbuf[0];
    int rc = 0;
    if (!j.pbase || !j.sbuf[0] || !j.sbuf[1]) {
        rc = -1;
        goto done;
    }
    j.qbase = j.pbase + j.nsteps + 1;
    j.pbase[0] = j.qbase[0] = 0;
    for (int64_t s = 0; s < j.nsteps; s++) {
        int64_t c0, c1, k0, kc;
        step_pos(&j, s, &c0, &c1, &k0, &kc);
        j.pbase[s + 1] = j.pbase[s] + ceil_div(ceil_div(c1 - c0, j.sw), j.pack_strips);
        int64_t xs0 = s / (j.nk * j.nchunk) * j.xsup, xs1 = min64(xs0 + j.xsup, j.xrows);
        j.qbase[s + 1] = j.qbase[s] + ceil_div(xs1 - xs0, j.xblk) * j.nws;
    }
    if (threads > 1) qd_parallel_for(ctx, threads, worker_part, &j);
    else worker(&j);
    if (j.comp_done != j.qbase[j.nsteps]) rc = -1;
done:
    if (j.sbuf[1] != j.sbuf[0]) free(j.sbuf[1]);
    free(j.sbuf[0]);
    free(j.pbase);
    return rc;
}

int qd_gemm_serial(int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                   float alpha, float beta, const float *row_bias, const float *col_bias) {
    gemm_args g = {M, N, K, A, B, C, ldc, 0, 0, alpha, beta, row_bias, col_bias, 0, 0, NULL};
    return gemm_run(NULL, 1, &g, 0);
}

int qd_gemm_cbatch(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                   int64_t c_cols, int64_t c_batch_stride, float alpha, float beta, const float *row_bias,
                   const float *col_bias) {
    gemm_args g = {M, N, K, A, B, C, ldc, c_cols, c_batch_stride, alpha, beta, row_bias, col_bias, 0, 0, NULL};
    if (M <= 0 || N <= 0) return 0;
    int lr_rc;
    if (K > 0 && ctx && qd_gemm_lowrank(ctx, M, N, K, A, B, C, ldc, c_cols, c_batch_stride, alpha, beta, row_bias, col_bias,
                                        &lr_rc))
        return lr_rc;
    int t = qd_threads(ctx);
    double work = (double)M * N * (K + 1);
    if (work < 200000) t = 1;
    /* a few tokens against a stored weight: stream it once instead of packing it (not for
     * input-major storage, whose strided rows the packer reads faster: bench_gemv) */
    if (M <= QD_GEMV_MAX_M && K > 0 && A.kind == QD_MAT_ROWS && B.kind == QD_MAT_WEIGHT && !c_cols &&
        !B.w->decode_kmajor && !getenv("QD_NO_GEMV"))
        return qd_gemv_weight(ctx, t, qd_ctx_bf16(ctx), M, N, K, A.p, A.ld, B.w, C, ldc, alpha, beta, row_bias, col_bias);
    return gemm_run(ctx, t, &g, qd_ctx_bf16(ctx));
}

int qd_gemm_split_rows(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                       int64_t c_cols, int64_t c_batch_stride, float alpha, float beta, const float *row_bias,
                       const float *col_bias, int64_t m_split, float *C2, int64_t ldc2) {
    gemm_args g = {M, N, K, A, B, C, ldc, c_cols, c_batch_stride, alpha, beta, row_bias, col_bias, m_split, ldc2, C2};
    if (M <= 0 || N <= 0) return 0;
    return gemm_run(ctx, qd_threads(ctx), &g, qd_ctx_bf16(ctx));
}

void qd_gemm(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
             float alpha, float beta, const float *row_bias, const float *col_bias) {
    if (qd_gemm_cbatch(ctx, M, N, K, A, B, C, ldc, 0, 0, alpha, beta, row_bias, col_bias)) qd_op_failed(ctx, "GEMM");
}

const char *qd_gemm_isa(void) { return qd_gemm_kernel_pick(0)->name; }

const char *qd_gemm_kernel_name(const qd_ctx *ctx) { return qd_gemm_kernel_pick(qd_ctx_bf16(ctx))->name; }
