/* SDNQ Conv2d as an int8 GEMM over im2col rows, without an im2col buffer of floats:
 *
 *   1. the input goes to pixel-major (NHWC) once, and each input pixel's channel
 *      amax max_c |x| is kept: an output pixel's row amax (its receptive field, the
 *      zero padding adding nothing) is the max of kh x kw of them;
 *   2. an output pixel's row is kh * kw runs of Cin contiguous NHWC floats, quantized
 *      with the row's scale tap by tap (k = (ky * kw + kx) * Cin + c) into the int8
 *      GEMM's row-major codes; the weight panels, packed once per call, use the same
 *      column order (qd_sdnq_i8_pack_perm). Over fewer pixels than outputs (SD1.5's
 *      8x8 and 16x16 levels) the rows are reordered to the stored (c, tap) order
 *      instead, so the weight packs without a reorder: each side's reorder costs its
 *      rows x K bytes;
 *   3. output pixels go in chunks whose codes stay in cache (chunk_bytes): quantize,
 *      the int8 GEMM into a pixel-major tile [pixels, Cout] with the bias, then the
 *      tile is transposed into the NCHW output (accumulating when asked);
 *   4. SVD (W = base + up . down), in float on the unquantized rows: one GEMM projects
 *      every NHWC input pixel by each tap's svd_down columns (u [pixels, kh*kw*r], no
 *      im2col), an output pixel's t = row . svd_down^T is the sum of its taps' u rows
 *      (taken while quantizing it), and the tile gets t . svd_up^T before step 3's
 *      transpose. u covers the whole input when it is small, else each chunk's rows.
 * The codes, scales, sums and the int8 epilogue are those of the Linear path
 * (quant/sdnq_matmul.c, quant/int8_gemm.c) on the same rows: only the K order of
 * the exact int32 sums differs. */
#include "quant/sdnq_conv_i8.h"
#include "quant/sdnq_matmul.h"
#include "quant/int8_gemm.h"
#include "base/act_pool.h"
#include "base/threads.h"
#include "tensor/gemm.h"
#include "tensor/transpose16.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* activation codes per chunk of output pixels; the SVD branch's per-tap projections of
 * the whole input at most (else per chunk, halo rows recomputed). Variables so the
 * test can make both small (qd_sdnq_conv_i8_limits). */
static int64_t chunk_bytes = 2 << 20, u_bytes_max = 32 << 20;

void qd_sdnq_conv_i8_limits(int64_t chunk, int64_t u_max) {
    chunk_bytes = chunk > 0 ? chunk : 2 << 20;
    u_bytes_max = u_max > 0 ? u_max : 32 << 20;
}

typedef struct {
    const float *x;
    int64_t C, H, W;
    float *xn;       /* [B, H, W, C] */
    float *pamax;    /* [B, H, W]: max_c |x| (NaN ignored, as qd_i8_amax does) */
} nhwc_job;

static int have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* 16 x 16 transpose of float lanes: outf[c][i] = rf[i][c]. */
__attribute__((target("avx512f")))
static void transpose16(const __m512 rf[16], __m512 outf[16]) {
    __m512i r[16], o[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_castps_si512(rf[i]);
    qd_transpose16(r, o);
    for (int i = 0; i < 16; i++) outf[i] = _mm512_castsi512_ps(o[i]);
}

/* One NCHW row of 16 pixels x C channels -> 16 NHWC pixels, with their channel amax. */
__attribute__((target("avx512f")))
static void nhwc_block16(const float *xr, int64_t HW, int64_t C, float *dst, float *am) {
    __m512 m = _mm512_setzero_ps();
    int64_t c0 = 0;
    for (; c0 + 16 <= C; c0 += 16) {
        __m512 r[16], o[16];
        for (int i = 0; i < 16; i++) {
            r[i] = _mm512_loadu_ps(xr + (c0 + i) * HW);
            m = _mm512_max_ps(_mm512_abs_ps(r[i]), m);   /* NaN: keeps m, as qd_i8_amax */
        }
        transpose16(r, o);
        for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * C + c0, o[i]);
    }
    for (int64_t c = c0; c < C; c++) {
        __m512 v = _mm512_loadu_ps(xr + c * HW);
        m = _mm512_max_ps(_mm512_abs_ps(v), m);
        float t[16];
        _mm512_storeu_ps(t, v);
        for (int i = 0; i < 16; i++) dst[i * C + c] = t[i];
    }
    _mm512_storeu_ps(am, m);
}

/* One input row (b, h) per item: 16-pixel blocks transposed in registers (the tail and
 * CPUs without AVX-512 element by element), amax over channels. */
static void nhwc_rows(void *arg, int64_t b, int64_t e, int thread) {
    const nhwc_job *j = arg;
    int64_t C = j->C, H = j->H, W = j->W, HW = H * W;
    int wide = have_avx512();
    for (int64_t row = b; row < e; row++) {
        int64_t bi = row / H, h = row % H;
        const float *xr = j->x + bi * C * HW + h * W;
        float *dst = j->xn + row * W * C, *am = j->pamax + row * W;
        int64_t w0 = 0;
        if (wide)
            for (; w0 + 16 <= W; w0 += 16) nhwc_block16(xr + w0, HW, C, dst + w0 * C, am + w0);
        for (int64_t w = w0; w < W; w++) {
            float m = 0;
            for (int64_t c = 0; c < C; c++) {
                float v = xr[c * HW + w], a = v < 0 ? -v : v;
                m = a > m ? a : m;
                dst[w * C + c] = v;
            }
            am[w] = m;
        }
    }
}

typedef struct {
    qd_i8_isa isa;
    const float *xn, *pamax;
    int64_t C, H, W, Ho, Wo, S;
    int kh, kw, stride, pt, pl;
    int64_t K, kp;
    int64_t m0;          /* first output pixel (global index b * S + s) of the chunk */
    int8_t *xq;          /* [chunk rows, kp] */
    float *sx;
    int32_t *xsum;
    /* SVD: u [ks, u_np input pixels from u_p0, r] = each input pixel's projection by each tap's
     * svd_down columns; t [rows, r] = the output pixel's sum over its taps (NULL: no SVD) */
    const float *u;
    int64_t u_p0, u_np, r;
    float *t;
    int wide;            /* AVX-512 */
    int cmajor;          /* rows in the stored K order (c, tap): built tap-major in rowtmp, then reordered */
    int8_t *rowtmp;      /* [threads, K] */
    /* the tile -> NCHW step */
    const float *tile;   /* [rows, N] */
    float *y;
    int64_t N, rows;
    float beta;
} conv_job;

/* d[0..n) += s[0..n) (the same sums in the same order either way). */
__attribute__((target("avx512f")))
static void add_row_avx512(float *d, const float *s, int64_t n) {
    for (int64_t q = 0; q < n; q += 16) {
        __mmask16 m = n - q >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - q)) - 1);
        _mm512_mask_storeu_ps(d + q, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + q), _mm512_maskz_loadu_ps(m, s + q)));
    }
}

static inline void add_row(float *d, const float *s, int64_t n, int wide) {
    if (wide) add_row_avx512(d, s, n);
    else for (int64_t q = 0; q < n; q++) d[q] += s[q];
}

/* The chunk's rows [b, e): the receptive field's amax, then each tap's run of Cin codes
 * (zero codes for a tap in the padding), the K..kp tail zero. */
static void quantize_pixels(void *arg, int64_t b, int64_t e, int thread) {
    const conv_job *j = arg;
    int64_t C = j->C;
    for (int64_t r = b; r < e; r++) {
        int64_t gm = j->m0 + r, bi = gm / j->S, s = gm % j->S, oy = s / j->Wo, ox = s % j->Wo;
        int64_t iy0 = oy * j->stride - j->pt, ix0 = ox * j->stride - j->pl;
        const float *pam = j->pamax + bi * j->H * j->W;
        float amax = 0;
        for (int ky = 0; ky < j->kh; ky++) {
            int64_t iy = iy0 + ky;
            if (iy < 0 || iy >= j->H) continue;
            for (int kx = 0; kx < j->kw; kx++) {
                int64_t ix = ix0 + kx;
                if (ix < 0 || ix >= j->W) continue;
                float a = pam[iy * j->W + ix];
                amax = a > amax ? a : amax;
            }
        }
        if (j->t) {   /* the SVD branch's row . svd_down^T, tap by tap (padding adds nothing) */
            float *tr = j->t + r * j->r;
            for (int64_t q = 0; q < j->r; q++) tr[q] = 0;
            for (int ky = 0; ky < j->kh; ky++)
                for (int kx = 0; kx < j->kw; kx++) {
                    int64_t iy = iy0 + ky, ix = ix0 + kx;
                    if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) continue;
                    const float *up = j->u + ((ky * j->kw + kx) * j->u_np + ((bi * j->H + iy) * j->W + ix) - j->u_p0) * j->r;
                    add_row(tr, up, j->r, j->wide);
                }
        }
        float sc = amax / 127.0f;   /* as qd_i8_quantize_row */
        int8_t *q = j->xq + r * j->kp;
        memset(q + j->K, 0, (size_t)(j->kp - j->K));
        if (!(sc > 0)) {            /* an all-zero row: codes 0 */
            memset(q, 0, (size_t)j->K);
            j->sx[r] = 0;
            j->xsum[r] = 0;
            continue;
        }
        int32_t sum = 0;
        int8_t *qtap = j->cmajor ? j->rowtmp + (int64_t)thread * j->K : q;   /* codes tap-major */
        for (int ky = 0; ky < j->kh; ky++)
            for (int kx = 0; kx < j->kw; kx++) {
                int64_t iy = iy0 + ky, ix = ix0 + kx;
                int8_t *qt = qtap + (ky * j->kw + kx) * C;
                if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) memset(qt, 0, (size_t)C);
                else sum += qd_i8_quantize_scaled(j->isa, j->xn + ((bi * j->H + iy) * j->W + ix) * C, C, sc, qt);
            }
        if (j->cmajor) {   /* to the stored (c, tap) order */
            int64_t ks = (int64_t)j->kh * j->kw;
            for (int64_t t = 0; t < ks; t++)
                for (int64_t c = 0; c < C; c++) q[c * ks + t] = qtap[t * C + c];
        }
        j->sx[r] = sc;
        j->xsum[r] = sum;
    }
}

/* 16 tile rows (consecutive pixels of one image) x 16 outputs into y rows n0..n0+15. */
__attribute__((target("avx512f")))
static void tile_block16(const float *t, int64_t N, float *y, int64_t S, float beta) {
    __m512 r[16], o[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(t + i * N);
    transpose16(r, o);
    __m512 vb = _mm512_set1_ps(beta);
    for (int n = 0; n < 16; n++) {
        float *yp = y + n * S;
        _mm512_storeu_ps(yp, beta != 0.0f ? _mm512_fmadd_ps(_mm512_loadu_ps(yp), vb, o[n]) : o[n]);
    }
}

/* y[b, n, s] = tile[r, n] (+ beta * y) for the chunk's rows r (pixel m0 + r = b * S + s).
 * An item is 16 outputs; the rows go per image in blocks of 16 transposed in registers
 * (tails and CPUs without AVX-512 element by element). */
static void tile_to_nchw(void *arg, int64_t b, int64_t e, int thread) {
    const conv_job *j = arg;
    int64_t N = j->N, S = j->S;
    float beta = j->beta;
    int wide = have_avx512();
    for (int64_t it = b; it < e; it++) {
        int64_t n0 = it * 16, n1 = n0 + 16 < N ? n0 + 16 : N;
        for (int64_t r0 = 0; r0 < j->rows;) {
            int64_t gm = j->m0 + r0, bi = gm / S, s0 = gm % S;
            int64_t r1 = r0 + (S - s0) < j->rows ? r0 + (S - s0) : j->rows;   /* this image's rows */
            float *yb = j->y + bi * N * S + s0;                                /* row r0: yb[n * S] */
            int64_t r = r0;
            if (wide && n1 - n0 == 16)
                for (; r + 16 <= r1; r += 16) tile_block16(j->tile + r * N + n0, N, yb + n0 * S + (r - r0), S, beta);
            for (int64_t n = n0; n < n1; n++)
                for (int64_t q = r; q < r1; q++) {
                    float *yp = yb + n * S + (q - r0), v = j->tile[q * N + n];
                    *yp = beta != 0.0f ? *yp * beta + v : v;
                }
            r0 = r1;
        }
    }
}

/* The input rows [*g0, *g1) (global b * H + iy) that output pixels [m0, m0 + rows) read. */
static void chunk_inputs(const conv_job *j, int64_t m0, int64_t rows, int64_t *g0, int64_t *g1) {
    int64_t ga = m0 / j->S, oa = m0 % j->S / j->Wo, gb = (m0 + rows - 1) / j->S, ob = (m0 + rows - 1) % j->S / j->Wo;
    int64_t ia = oa * j->stride - j->pt, ib = ob * j->stride - j->pt + j->kh;
    *g0 = ga * j->H + (ia > 0 ? ia : 0);
    *g1 = gb * j->H + (ib < j->H ? ib : j->H);
}

/* u = the projections of input rows [g0, g1) (global b * H + iy) by every tap's svd_down
 * columns: one GEMM of the NHWC pixels [.., Cin] by dtap [ks * r, Cin]. */
static void svd_project(qd_ctx *ctx, conv_job *j, const float *dtap, int64_t g0, int64_t g1, float *u) {
    int64_t n = j->kh * j->kw * j->r, np = (g1 - g0) * j->W;
    j->u = u;
    j->u_p0 = g0 * j->W;
    j->u_np = np;
    /* tap-major u [ks][pixels][r]: a tap's rows of consecutive pixels are contiguous */
    if (qd_gemm_cbatch(ctx, np, n, j->C, qd_rows(j->xn + g0 * j->W * j->C, j->C), qd_rows(dtap, j->C), u, j->r, j->r,
                       np * j->r, 1.0f, 0.0f, NULL, NULL))
        qd_op_failed(ctx, "int8 convolution");
}

int qd_sdnq_conv_i8(qd_ctx *ctx, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W, const qd_weight *w,
                    const float *bias, int kh, int kw, int stride, int pt, int pb, int pl, int pr, float beta,
                    float *y) {
    if (w->linear != qd_sdnq_linear || !w->quant || stride < 1) return 0;
    const qd_sdnq_state *s = w->quant;
    const qd_sdnq_layout *l = &s->l;
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1, S = Ho * Wo, M = B * S;
    int64_t ksize = (int64_t)kh * kw;
    if (l->cls != QD_SDNQ_CONV || l->kdims != 2 || l->kshape[0] != kh || l->kshape[1] != kw || l->in != Cin ||
        l->out != w->rows || Ho <= 0 || Wo <= 0 || !qd_sdnq_uses_int8(ctx, s, M))
        return 0;
    int64_t K = l->cols, N = l->out;
    /* tap-major K order: packed column (tap * Cin + c) is stored column (c * ksize + tap) */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)K);
    if (!perm) return 0;
    for (int64_t tap = 0; tap < ksize; tap++)
        for (int64_t c = 0; c < Cin; c++) perm[tap * Cin + c] = (int32_t)(c * ksize + tap);
    /* one side's K order is a [C, ks] <-> [ks, C] byte reorder: the weight's (N rows)
     * or the activations' (M rows), whichever has fewer (a 1x1 conv has none) */
    int cmajor = ksize > 1 && M < N;
    qd_sdnq_i8_panels *P = qd_sdnq_i8_pack_perm(ctx, s, cmajor || ksize == 1 ? NULL : perm);
    free(perm);
    if (!P) return 0;

    conv_job j;
    memset(&j, 0, sizeof j);
    j.isa = qd_sdnq_i8_panels_isa(P);
    j.C = Cin; j.H = H; j.W = W; j.Ho = Ho; j.Wo = Wo; j.S = S;
    j.kh = kh; j.kw = kw; j.stride = stride; j.pt = pt; j.pl = pl;
    j.K = K;
    j.kp = qd_i8_kpad(K);
    j.N = N;
    j.cmajor = cmajor;
    /* equal chunks of at most chunk_bytes of codes (at least one micro-kernel row block) */
    int64_t mc = chunk_bytes / j.kp;
    if (mc < QD_I8_MR) mc = QD_I8_MR;
    int64_t nch = (M + mc - 1) / mc;
    mc = ((M + nch - 1) / nch + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
    /* the SVD branch: per-tap svd_down [ks * r, Cin]; u for the whole input when small */
    int64_t r = l->svd ? l->svd_rank : 0, un = ksize * r;
    int u_whole = B * H * W * un * 4 <= u_bytes_max;
    int64_t u_rows = B * H;
    if (!u_whole)   /* the most input rows a chunk reads */
        for (int64_t m0 = 0, g0, g1; m0 < M; m0 += mc) {
            if (m0 == 0) u_rows = 0;
            chunk_inputs(&j, m0, M - m0 < mc ? M - m0 : mc, &g0, &g1);
            if (g1 - g0 > u_rows) u_rows = g1 - g0;
        }
    float *dtap = r ? malloc(sizeof(float) * (size_t)(un * Cin)) : NULL;
    float *u = r ? qd_act_floats(ctx, u_rows * W * un) : NULL, *t = r ? qd_act_floats(ctx, mc * r) : NULL;
    for (int64_t tap = 0; dtap && tap < ksize; tap++)
        for (int64_t q = 0; q < r; q++)
            for (int64_t c = 0; c < Cin; c++) dtap[(tap * r + q) * Cin + c] = s->svd_down[q * K + c * ksize + tap];
    float *xn = qd_act_floats(ctx, B * H * W * Cin), *pamax = qd_act_floats(ctx, B * H * W);
    float *tile = qd_act_floats(ctx, mc * N);
    j.xq = qd_malloc_aligned(ctx, (size_t)(mc * j.kp));
    j.sx = malloc(sizeof(float) * (size_t)mc);
    j.xsum = malloc(sizeof(int32_t) * (size_t)mc);
    if (cmajor) j.rowtmp = malloc((size_t)(qd_threads(ctx) * K));
    int ok = xn && pamax && tile && j.xq && j.sx && j.xsum && (!cmajor || j.rowtmp) && (!r || (dtap && u && t));
    if (ok) {
        nhwc_job nj = {x, Cin, H, W, xn, pamax};
        qd_parallel_for(ctx, B * H, nhwc_rows, &nj);
        j.xn = xn;
        j.pamax = pamax;
        j.tile = tile;
        j.y = y;
        j.beta = beta;
        j.r = r;
        j.wide = have_avx512();
        if (r && u_whole) svd_project(ctx, &j, dtap, 0, B * H, u);
        for (int64_t m0 = 0; m0 < M; m0 += mc) {
            int64_t rows = M - m0 < mc ? M - m0 : mc, rp = (rows + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
            j.m0 = m0;
            j.rows = rows;
            if (r && !u_whole) {   /* the input rows this chunk's receptive fields cover */
                int64_t g0, g1;
                chunk_inputs(&j, m0, rows, &g0, &g1);
                svd_project(ctx, &j, dtap, g0, g1, u);
            }
            j.t = r ? t : NULL;
            qd_parallel_for(ctx, rows, quantize_pixels, &j);
            memset(j.xq + rows * j.kp, 0, (size_t)((rp - rows) * j.kp));   /* pad rows the kernel reads */
            if (qd_sdnq_i8_panels_gemm(ctx, P, j.xq, j.sx, j.xsum, rows, bias, tile, N, 0)) {
                qd_op_failed(ctx, "int8 convolution");   /* y partly written: nothing can redo it */
                break;
            }
            if (r)   /* the SVD branch: tile += t . svd_up^T */
                qd_gemm(ctx, rows, N, r, qd_rows(t, r), qd_rows(s->svd_up, r), tile, N, 1.0f, 1.0f, NULL, NULL);
            qd_parallel_for(ctx, (N + 15) / 16, tile_to_nchw, &j);
        }
    }
    qd_act_free(ctx, xn);
    qd_act_free(ctx, pamax);
    qd_act_free(ctx, tile);
    qd_act_free(ctx, u);
    qd_act_free(ctx, t);
    free(dtap);
    free(j.xq);
    free(j.sx);
    free(j.xsum);
    free(j.rowtmp);
    qd_sdnq_i8_panels_free(P);
    return ok;
}
