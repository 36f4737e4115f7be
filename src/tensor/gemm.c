/* Blocked GEMM in the GotoBLAS shape: B is packed in KC x NC panels, A in
 * MC x KC blocks, and a register-blocked micro-kernel (per ISA, chosen once
 * from CPUID) multiplies MR x KC strips by KC x NR strips. Packing is where
 * stored weights get decoded, so fp16/bf16/quantized weights cost one decode
 * per panel, not per use. */
#include "tensor/gemm.h"
#include "tensor/weight.h"
#include "base/threads.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define KC 256
#define MC 96
#define NC 512
#define MAXR 32   /* largest MR or NR of any kernel */

typedef void (*ukernel_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc);

typedef struct {
    int mr, nr;
    ukernel_fn fn;
    const char *name;
} kernel_desc;

/* ---- micro-kernels: c[MR x NR] (=|+=) sum_k a[k*MR + i] * b[k*NR + j] ---- */

static void ukernel_generic(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc) {
    enum { R = 4, N = 16 };
    float t[R][N] = {{0}};
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < R; i++)
            for (int j = 0; j < N; j++) t[i][j] += a[k * R + i] * b[k * N + j];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < N; j++) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

__attribute__((target("avx2,fma")))
static void ukernel_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc) {
    /* 6 x 16: 12 accumulators + 2 B vectors + 1 broadcast fit in 16 ymm registers. */
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b + k * 16), b1 = _mm256_loadu_ps(b + k * 16 + 8);
        const float *ak = a + k * 6;
        __m256 x;
        x = _mm256_broadcast_ss(ak + 0); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(ak + 1); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(ak + 2); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(ak + 3); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(ak + 4); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(ak + 5); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    __m256 r[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (int i = 0; i < 6; i++)
        for (int h = 0; h < 2; h++) {
            float *p = c + i * ldc + h * 8;
            _mm256_storeu_ps(p, acc ? _mm256_add_ps(_mm256_loadu_ps(p), r[i][h]) : r[i][h]);
        }
}

__attribute__((target("avx512f")))
static void ukernel_avx512(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc) {
    /* 8 x 32: 16 zmm accumulators keep both FMA pipes busy through their latency. */
    __m512 acc0[8], acc1[8];
    for (int i = 0; i < 8; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); }
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b + k * 32), b1 = _mm512_loadu_ps(b + k * 32 + 16);
        const float *ak = a + k * 8;
        for (int i = 0; i < 8; i++) {
            __m512 x = _mm512_set1_ps(ak[i]);
            acc0[i] = _mm512_fmadd_ps(x, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(x, b1, acc1[i]);
        }
    }
    for (int i = 0; i < 8; i++) {
        float *p = c + i * ldc;
        if (acc) {
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc0[i]));
            _mm512_storeu_ps(p + 16, _mm512_add_ps(_mm512_loadu_ps(p + 16), acc1[i]));
        } else {
            _mm512_storeu_ps(p, acc0[i]);
            _mm512_storeu_ps(p + 16, acc1[i]);
        }
    }
}

static const kernel_desc *pick_kernel(void) {
    static const kernel_desc k512 = {8, 32, ukernel_avx512, "avx512"};
    static const kernel_desc k2 = {6, 16, ukernel_avx2, "avx2"};
    static const kernel_desc kg = {4, 16, ukernel_generic, "generic"};
    static const kernel_desc *chosen;   /* idempotent: every thread computes the same answer */
    if (!chosen) {
        const char *force = getenv("QD_ISA");
        __builtin_cpu_init();
        if (force && strcmp(force, "generic") == 0) chosen = &kg;
        else if (force && strcmp(force, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) chosen = &k2;
        else if (__builtin_cpu_supports("avx512f")) chosen = &k512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) chosen = &k2;
        else chosen = &kg;
    }
    return chosen;
}

const char *qd_gemm_isa(void) { return pick_kernel()->name; }

/* ---- packing: rows [i0, i0+n) x k [k0, k0+kc) into strips of R rows, k-major ---- */

static void pack(qd_mat m, int64_t i0, int64_t n, int64_t k0, int64_t kc, int R, float alpha,
                 float *dst, float *scratch) {
    for (int64_t s = 0; s < n; s += R) {
        int rows = (int)(n - s < R ? n - s : R);
        float *d = dst + s * kc;
        if (m.kind == QD_MAT_COLS) {
            for (int64_t k = 0; k < kc; k++) {
                const float *src = m.p + (k0 + k) * m.ld + i0 + s;
                float *dk = d + k * R;
                for (int r = 0; r < rows; r++) dk[r] = src[r] * alpha;
                for (int r = rows; r < R; r++) dk[r] = 0;
            }
            continue;
        }
        const float *src;
        int64_t ld;
        if (m.kind == QD_MAT_ROWS) {
            src = m.p + (i0 + s) * m.ld + k0;
            ld = m.ld;
        } else {
            m.w->decode(m.w, i0 + s, rows, k0, kc, scratch, kc);
            src = scratch;
            ld = kc;
        }
        for (int r = 0; r < rows; r++) {
            const float *row = src + r * ld;
            for (int64_t k = 0; k < kc; k++) d[k * R + r] = row[k] * alpha;
        }
        for (int r = rows; r < R; r++)
            for (int64_t k = 0; k < kc; k++) d[k * R + r] = 0;
    }
}

typedef struct {
    int64_t M, N, K;
    qd_mat A, B;
    float *C;
    int64_t ldc;
    float alpha, beta;
    const float *row_bias, *col_bias;
} gemm_args;

/* Serial GEMM over the rectangle [m0, m1) x [n0, n1) of C. */
static int gemm_block(const gemm_args *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const kernel_desc *kd = pick_kernel();
    const int MR = kd->mr, NR = kd->nr;
    int64_t mc_max = (MC / MR) * MR, nc_max = (NC / NR) * NR;
    float *bp = aligned_alloc(64, (size_t)KC * (size_t)(nc_max + NR) * sizeof(float));
    float *ap = aligned_alloc(64, (size_t)KC * (size_t)(mc_max + MR) * sizeof(float));
    float *scratch = aligned_alloc(64, (size_t)KC * MAXR * sizeof(float));
    float tile[MAXR * MAXR];
    if (!bp || !ap || !scratch) {
        free(bp);
        free(ap);
        free(scratch);
        return -1;
    }

    /* beta: fold into C once, so the kernel only overwrites or accumulates */
    int acc_first = 0;
    if (g->beta != 0) {
        acc_first = 1;
        if (g->beta != 1)
            for (int64_t i = m0; i < m1; i++)
                for (int64_t j = n0; j < n1; j++) g->C[i * g->ldc + j] *= g->beta;
    }
    for (int64_t nb = n0; nb < n1; nb += nc_max) {
        int64_t nc = n1 - nb < nc_max ? n1 - nb : nc_max;
        for (int64_t kb = 0; kb < g->K; kb += KC) {
            int64_t kc = g->K - kb < KC ? g->K - kb : KC;
            int acc = kb > 0 || acc_first;
            pack(g->B, nb, nc, kb, kc, NR, 1.0f, bp, scratch);
            for (int64_t mb = m0; mb < m1; mb += mc_max) {
                int64_t mc = m1 - mb < mc_max ? m1 - mb : mc_max;
                pack(g->A, mb, mc, kb, kc, MR, g->alpha, ap, scratch);
                for (int64_t j = 0; j < nc; j += NR) {
                    int nj = (int)(nc - j < NR ? nc - j : NR);
                    for (int64_t i = 0; i < mc; i += MR) {
                        int ni = (int)(mc - i < MR ? mc - i : MR);
                        float *c = g->C + (mb + i) * g->ldc + nb + j;
                        if (ni == MR && nj == NR) {
                            kd->fn(kc, ap + i * kc, bp + j * kc, c, g->ldc, acc);
                        } else {
                            kd->fn(kc, ap + i * kc, bp + j * kc, tile, NR, 0);
                            for (int r = 0; r < ni; r++)
                                for (int q = 0; q < nj; q++)
                                    c[r * g->ldc + q] = acc ? c[r * g->ldc + q] + tile[r * NR + q] : tile[r * NR + q];
                        }
                    }
                }
            }
        }
    }
    if (g->K == 0 && !acc_first)
        for (int64_t i = m0; i < m1; i++)
            for (int64_t j = n0; j < n1; j++) g->C[i * g->ldc + j] = 0;
    if (g->row_bias || g->col_bias)
        for (int64_t i = m0; i < m1; i++) {
            float rb = g->row_bias ? g->row_bias[i] : 0;
            float *c = g->C + i * g->ldc;
            for (int64_t j = n0; j < n1; j++) c[j] += rb + (g->col_bias ? g->col_bias[j] : 0);
        }
    free(bp);
    free(ap);
    free(scratch);
    return 0;
}

typedef struct { const gemm_args *g; int split_n; int64_t align; int64_t parts; int failed; } split_args;

static void gemm_part(void *arg, int64_t b, int64_t e, int thread) {
    const split_args *s = arg;
    const gemm_args *g = s->g;
    int64_t len = s->split_n ? g->N : g->M;
    /* parts are [b, e) of `parts` equal slices, rounded to the kernel's strip size */
    int64_t lo = (len * b / s->parts) / s->align * s->align;
    int64_t hi = e == s->parts ? len : (len * e / s->parts) / s->align * s->align;
    if (lo >= hi) return;
    int rc = s->split_n ? gemm_block(g, 0, g->M, lo, hi) : gemm_block(g, lo, hi, 0, g->N);
    if (rc) __atomic_store_n(&((split_args *)arg)->failed, 1, __ATOMIC_RELAXED);
}

int qd_gemm_serial(int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
                   float alpha, float beta, const float *row_bias, const float *col_bias) {
    gemm_args g = {M, N, K, A, B, C, ldc, alpha, beta, row_bias, col_bias};
    return M > 0 && N > 0 ? gemm_block(&g, 0, M, 0, N) : 0;
}

void qd_gemm(qd_ctx *ctx, int64_t M, int64_t N, int64_t K, qd_mat A, qd_mat B, float *C, int64_t ldc,
             float alpha, float beta, const float *row_bias, const float *col_bias) {
    gemm_args g = {M, N, K, A, B, C, ldc, alpha, beta, row_bias, col_bias};
    if (M <= 0 || N <= 0) return;
    const kernel_desc *kd = pick_kernel();
    int t = qd_threads(ctx);
    double work = (double)M * N * (K + 1);
    if (t <= 1 || work < 200000) {
        if (gemm_block(&g, 0, M, 0, N)) qd_op_failed(ctx, "GEMM");
        return;
    }
    /* Split the dimension with more strips; splitting N keeps each thread's B panel its own. */
    int split_n = N / kd->nr >= M / kd->mr;
    split_args s = {&g, split_n, split_n ? kd->nr : kd->mr, t, 0};
    qd_parallel_for(ctx, t, gemm_part, &s);
    if (s.failed) qd_op_failed(ctx, "GEMM");
}
