/* SDNQ quantized matmul with int8 activations (§1.9):
 *   1. rotate x per Hadamard block (the stored weight is rotated);
 *   2. SVD branch on the float x: y = (x . svd_down^T) . svd_up^T;
 *   3. per token: s_x = amax/127, xq = RNE(x / s_x), and sum(xq) for zero points;
 *   4. per block of 32 outputs: int8 weight rows (the stored codes when they are
 *      per-output int8-compatible, else the dequantized base weight re-quantized
 *      per row, amax/127), int32 dot products, then
 *      y += s_x * (s_w * acc + zp * sum(xq)) + bias. */
#include "quant/sdnq_matmul.h"
#include "quant/int8_gemm.h"
#include "quant/hadamard.h"
#include "base/threads.h"
#include "tensor/gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_K 65536   /* keeps every int32 sum exact (int8_gemm.h) */

/* The public setter lives with the code it steers. */
void qd_set_matmul(qd_ctx *ctx, int mode) {
    if (ctx && mode >= QD_MATMUL_CONFIG && mode <= QD_MATMUL_INT8) ctx->matmul_mode = mode;
}

static int is_int_family(const qd_sdnq_dtype *d) { return d->family == QD_SQ_INT || d->family == QD_SQ_UINT; }

int qd_sdnq_uses_int8(const qd_ctx *ctx, const qd_sdnq_state *s, int64_t M) {
    const qd_sdnq_layout *l = &s->l;
    if (ctx->matmul_mode == QD_MATMUL_EXACT || l->cls == QD_SDNQ_EMBEDDING || l->ksize != 1 || l->cols > MAX_K || M <= 0)
        return 0;
    if (ctx->matmul_mode == QD_MATMUL_INT8) return 1;
    return l->qmm && is_int_family(&l->mm_dtype) && M >= 32;
}

/* Stored codes usable as int8 weights with one scale per output row. */
static int direct_codes(const qd_sdnq_layout *l) {
    return is_int_family(&l->dtype) && l->dtype.bits <= 8 && !l->codebook && l->grouping != QD_SDNQ_GROUPED;
}

/* Round half to even and clamp to [-127, 127]; NaN goes to -127 rather than UB. */
static int8_t to_i8(float v) {
    v = nearbyintf(v);
    if (v > 127.0f) v = 127.0f;
    else if (!(v >= -127.0f)) v = -127.0f;
    return (int8_t)v;
}

typedef struct {
    const qd_sdnq_state *s;
    qd_i8_isa isa;
    const float *x;        /* activations [M, K] as given */
    float *xr;             /* rotated copy (Hadamard only), else NULL */
    int8_t *xq;            /* [Mp, kp] prepared for the kernel */
    float *sx;             /* per-token scale */
    int32_t *xsum;         /* per-token sum of codes */
    int64_t M, Mp, K, kp, N;
    const float *bias;
    float *y;              /* [M, N]; holds the SVD term on entry when svd */
    int svd, direct;
    int failed;            /* a worker could not allocate */
} i8_job;

static void quantize_tokens(void *arg, int64_t b, int64_t e, int thread) {
    i8_job *j = arg;
    int64_t K = j->K, g = j->s->l.hadamard_size;
    for (int64_t m = b; m < e; m++) {
        const float *src = j->x + m * K;
        if (j->xr) {
            float *dst = j->xr + m * K;
            memcpy(dst, src, sizeof(float) * (size_t)K);
            for (int64_t k = 0; k < K; k += g) qd_hadamard(dst + k, g);
            src = dst;
        }
        float amax = 0;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(src[k]));
        float s = amax / 127.0f;
        int8_t *q = j->xq + m * j->kp;
        int32_t sum = 0;
        for (int64_t k = 0; k < K; k++) {
            q[k] = s > 0 ? to_i8(src[k] / s) : 0;
            sum += q[k];
        }
        j->sx[m] = s;
        j->xsum[m] = sum;
        qd_i8_prepare_row(j->isa, q, j->kp);
    }
}

/* int8 rows for outputs [n0, n0+nb): codes, per-row scale and zero point. */
static void weight_rows(const i8_job *j, int64_t n0, int nb, int8_t *rows, float *sw, float *zp,
                        int32_t *ibuf, float *fbuf) {
    const qd_sdnq_state *s = j->s;
    const qd_sdnq_layout *l = &s->l;
    int64_t K = j->K;
    if (!j->direct) {   /* dequantize the (rotated, SVD-less) weight and re-quantize per row */
        for (int i = 0; i < nb; i++) {
            qd_sdnq_decode_base(s, n0 + i, 1, 0, K, fbuf, K);
            float amax = 0;
            for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(fbuf[k]));
            sw[i] = amax / 127.0f;
            zp[i] = 0;
            for (int64_t k = 0; k < K; k++) rows[i * K + k] = sw[i] > 0 ? to_i8(fbuf[k] / sw[i]) : 0;
        }
        return;
    }
    /* uint8 codes do not fit int8: use q - 128 and fold 128 * scale into the zero point */
    int32_t shift = l->dtype.family == QD_SQ_UINT && l->dtype.bits == 8 ? 128 : 0;
    if (l->transposed) {
        for (int64_t k = 0; k < K; k++) {
            qd_sdnq_unpack_int(&l->dtype, s->codes, k * l->out + n0, nb, ibuf);
            for (int i = 0; i < nb; i++) rows[i * K + k] = (int8_t)(ibuf[i] - shift);
        }
    } else {
        for (int i = 0; i < nb; i++) {
            qd_sdnq_unpack_int(&l->dtype, s->codes, (n0 + i) * K, K, ibuf);
            for (int64_t k = 0; k < K; k++) rows[i * K + k] = (int8_t)(ibuf[k] - shift);
        }
    }
    for (int i = 0; i < nb; i++) {
        int64_t idx = (n0 + i) * s->so;
        sw[i] = s->scale[idx];
        zp[i] = (s->zero_point ? s->zero_point[idx] : 0.0f) + (float)shift * sw[i];
    }
}

static void output_panels(void *arg, int64_t b, int64_t e, int thread) {
    i8_job *j = arg;
    int64_t K = j->K, kp = j->kp, N = j->N;
    int8_t *rows = malloc((size_t)(QD_I8_NB * K)), *panel = malloc((size_t)(QD_I8_NB * kp));
    int32_t *ibuf = malloc(sizeof(int32_t) * (size_t)(K > QD_I8_NB ? K : QD_I8_NB));
    float *fbuf = malloc(sizeof(float) * (size_t)K);
    if (!rows || !panel || !ibuf || !fbuf) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        free(rows); free(panel); free(ibuf); free(fbuf);
        return;
    }
    int32_t wsum[QD_I8_NB], acc[QD_I8_MR * QD_I8_NB];
    float sw[QD_I8_NB], zp[QD_I8_NB];
    for (int64_t p = b; p < e; p++) {
        int64_t n0 = p * QD_I8_NB;
        int nb = (int)(N - n0 < QD_I8_NB ? N - n0 : QD_I8_NB);
        weight_rows(j, n0, nb, rows, sw, zp, ibuf, fbuf);
        qd_i8_pack(rows, nb, K, kp, panel, wsum);
        for (int64_t m0 = 0; m0 < j->M; m0 += QD_I8_MR) {
            qd_i8_kernel(j->isa, j->xq + m0 * kp, kp, panel, wsum, acc);
            int64_t mr = j->M - m0 < QD_I8_MR ? j->M - m0 : QD_I8_MR;
            for (int64_t m = 0; m < mr; m++) {
                float s = j->sx[m0 + m], xs = (float)j->xsum[m0 + m];
                float *y = j->y + (m0 + m) * N + n0;
                for (int n = 0; n < nb; n++) {
                    float v = s * (sw[n] * (float)acc[m * QD_I8_NB + n] + zp[n] * xs);
                    if (j->bias) v += j->bias[n0 + n];
                    y[n] = j->svd ? y[n] + v : v;
                }
            }
        }
    }
    free(rows); free(panel); free(ibuf); free(fbuf);
}

int qd_sdnq_linear(qd_ctx *ctx, const qd_weight *w, const float *x, int64_t M, const float *bias, float *y) {
    const qd_sdnq_state *s = w->quant;
    if (!qd_sdnq_uses_int8(ctx, s, M)) return 0;
    const qd_sdnq_layout *l = &s->l;
    i8_job j;
    memset(&j, 0, sizeof j);
    j.s = s;
    j.isa = qd_i8_pick();
    j.x = x;
    j.M = M;
    j.Mp = (M + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR;
    j.K = l->cols;
    j.kp = qd_i8_kpad(l->cols);
    j.N = l->out;
    j.bias = bias;
    j.y = y;
    j.svd = l->svd;
    j.direct = direct_codes(l);
    j.xq = calloc((size_t)(j.Mp * j.kp), 1);
    j.sx = malloc(sizeof(float) * (size_t)M);
    j.xsum = malloc(sizeof(int32_t) * (size_t)M);
    if (l->hadamard) j.xr = malloc(sizeof(float) * (size_t)(M * j.K));
    float *t = l->svd ? malloc(sizeof(float) * (size_t)(M * l->svd_rank)) : NULL;
    int ok = j.xq && j.sx && j.xsum && (!l->hadamard || j.xr) && (!l->svd || t);
    if (ok) {
        qd_parallel_for(ctx, M, quantize_tokens, &j);
        if (l->svd) {   /* float low-rank branch on the (rotated) activations */
            const float *xa = j.xr ? j.xr : x;
            int64_t r = l->svd_rank;
            qd_gemm(ctx, M, r, j.K, qd_rows(xa, j.K), qd_rows(s->svd_down, j.K), t, r, 1.0f, 0.0f, NULL, NULL);
            qd_gemm(ctx, M, j.N, r, qd_rows(t, r), qd_rows(s->svd_up, r), y, j.N, 1.0f, 0.0f, NULL, NULL);
        }
        qd_parallel_for(ctx, (j.N + QD_I8_NB - 1) / QD_I8_NB, output_panels, &j);
        ok = !j.failed;
    }
    free(j.xq); free(j.sx); free(j.xsum); free(j.xr); free(t);
    return ok;   /* 0: nothing usable was written, the exact GEMM recomputes y */
}
