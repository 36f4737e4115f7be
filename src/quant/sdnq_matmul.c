/* SDNQ quantized matmul with int8 activations (§1.9):
 *   1. rotate x per Hadamard block (the stored weight is rotated);
 *   2. per token: s_x = amax/127, xq = RNE(x / s_x), and sum(xq) for zero points;
 *   3. SVD branch on the float (rotated) x: y (+)= (x . svd_down^T) . svd_up^T;
 *   4. weights into int8 panels of 64 outputs, packed once per call and shared by the
 *      threads: the stored codes when they are per-output int8-compatible (int8 and
 *      uint8, packed int2..int7 / uint1..uint7, row-wise or tensor-wise), else the
 *      dequantized base weight re-quantized per output row (amax/127), as sdnq does
 *      for grouped, codebook, > 8-bit and float weights;
 *   5. the int8 GEMM: y (+)= s_x * (s_w * acc + zp * sum(xq)) + bias. */
#include "quant/sdnq_matmul.h"
#include "quant/int8_gemm.h"
#include "quant/sdnq_gemv_i8.h"
#include "quant/hadamard.h"
#include "base/threads.h"
#include "tensor/gemm.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (8 << 20)   /* packed weight panels per pass (a FLUX MLP would be 37 MB) */

/* The public setter lives with the code it steers. */
void qd_set_matmul(qd_ctx *ctx, int mode) {
    if (ctx && mode >= QD_MATMUL_CONFIG && mode <= QD_MATMUL_INT8) ctx->matmul_mode = mode;
}

static int is_int_family(const qd_sdnq_dtype *d) { return d->family == QD_SQ_INT || d->family == QD_SQ_UINT; }

int qd_sdnq_uses_int8(const qd_ctx *ctx, const qd_sdnq_state *s, int64_t M) {
    const qd_sdnq_layout *l = &s->l;
    /* a conv's im2col rows mix kernel taps: a Hadamard rotation along them has no kernel here */
    if (ctx->matmul_mode == QD_MATMUL_EXACT || l->cls == QD_SDNQ_EMBEDDING || (l->ksize != 1 && l->hadamard) ||
        l->cols > QD_I8_MAX_K || M <= 0)
        return 0;
    if (ctx->matmul_mode == QD_MATMUL_INT8) return 1;
    return l->qmm && is_int_family(&l->mm_dtype) && M >= 32;
}

/* Stored codes usable as int8 weights with one scale per output row (a row-wise conv
 * stores one per output and kernel position unless transposed: re-quantized). */
static int direct_codes(const qd_sdnq_layout *l) {
    return is_int_family(&l->dtype) && l->dtype.bits <= 8 && !l->codebook && l->grouping != QD_SDNQ_GROUPED &&
           (l->ksize == 1 || l->transposed || l->grouping == QD_SDNQ_TENSORWISE);
}

typedef struct {
    const qd_sdnq_state *s;
    qd_i8_isa isa;
    const float *x;        /* activations [M, K] as given */
    float *xr;             /* rotated copy (Hadamard only), else NULL */
    int8_t *xq;            /* [Mp, kp] codes */
    float *sx;             /* per-token scale */
    int32_t *xsum;         /* per-token sum of codes */
    int64_t M, K, kp, N;
    int direct;
    const int32_t *perm;   /* packed column k is stored column perm[k] (a conv's tap order), NULL: k */
    /* the current chunk of panels */
    int64_t p0;            /* first panel of the chunk (packed at panels[0]) */
    uint8_t *panels;
    float *sw, *zp;        /* [N] */
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
        j->sx[m] = qd_i8_quantize_row(j->isa, src, K, j->kp, j->xq + m * j->kp, &j->xsum[m]);
    }
}

/* One panel: outputs [n0, n0 + nb) into the packed layout, with their scales and zero points. */
static void pack_panel(const i8_job *j, int64_t n0, int nb, uint8_t *panel, int8_t *rows, int32_t *ibuf, float *fbuf) {
    const qd_sdnq_state *s = j->s;
    const qd_sdnq_layout *l = &s->l;
    int64_t K = j->K;
    const int32_t *perm = j->perm;
    if (!j->direct) {   /* dequantize the (rotated, SVD-less) base weight and re-quantize per row */
        for (int i = 0; i < nb; i++) {
            int32_t unused;
            int8_t *r = rows + i * K, *q = perm ? (int8_t *)ibuf : r;   /* codes in stored order, then permuted */
            qd_sdnq_decode_base(s, n0 + i, 1, 0, K, fbuf, K);
            j->sw[n0 + i] = qd_i8_quantize_row(j->isa, fbuf, K, K, q, &unused);
            j->zp[n0 + i] = 0;
            if (perm) for (int64_t k = 0; k < K; k++) r[k] = q[perm[k]];
        }
        qd_i8_pack_rows(j->isa, rows, K, nb, K, j->kp, panel);
        return;
    }
    /* uint codes do not fit int8 when 8-bit: use q - 128 and fold 128 * scale into the zero point */
    int32_t shift = l->dtype.family == QD_SQ_UINT && l->dtype.bits == 8 ? 128 : 0;
    if (l->transposed && !perm) {   /* [K, out] bytes: int8 or uint8 */
        qd_i8_pack_cols(j->isa, s->codes, l->out, n0, nb, K, j->kp, shift ? 0x80 : 0, panel);
    } else if (l->transposed) {     /* the same bytes gathered in the permuted order */
        uint8_t flip = shift ? 0x80 : 0;
        for (int i = 0; i < nb; i++)
            for (int64_t k = 0; k < K; k++) rows[i * K + k] = (int8_t)(s->codes[perm[k] * l->out + n0 + i] ^ flip);
        qd_i8_pack_rows(j->isa, rows, K, nb, K, j->kp, panel);
    } else {
        for (int i = 0; i < nb; i++) {
            qd_sdnq_unpack_int(&l->dtype, s->codes, (n0 + i) * K, K, ibuf);
            for (int64_t k = 0; k < K; k++) rows[i * K + k] = (int8_t)(ibuf[perm ? perm[k] : k] - shift);
        }
        qd_i8_pack_rows(j->isa, rows, K, nb, K, j->kp, panel);
    }
    for (int i = 0; i < nb; i++) {
        int64_t idx = (n0 + i) * s->so;
        float sw = s->scale[idx];
        j->sw[n0 + i] = sw;
        j->zp[n0 + i] = (s->zero_point ? s->zero_point[idx] : 0.0f) + (float)shift * sw;
    }
}

static void pack_panels(void *arg, int64_t b, int64_t e, int thread) {
    i8_job *j = arg;
    int64_t K = j->K;
    int8_t *rows = malloc((size_t)(QD_I8_NR * K));
    int32_t *ibuf = malloc(sizeof(int32_t) * (size_t)K);
    float *fbuf = malloc(sizeof(float) * (size_t)K);
    if (!rows || !ibuf || !fbuf) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        free(rows); free(ibuf); free(fbuf);
        return;
    }
    for (int64_t p = b; p < e; p++) {
        int64_t n0 = (j->p0 + p) * QD_I8_NR;
        int nb = (int)(j->N - n0 < QD_I8_NR ? j->N - n0 : QD_I8_NR);
        pack_panel(j, n0, nb, j->panels + p * qd_i8_panel_bytes(j->kp), rows, ibuf, fbuf);
    }
    free(rows); free(ibuf); free(fbuf);
}

struct qd_sdnq_i8_panels {
    const qd_sdnq_state *s;
    int64_t N, kp;
    qd_i8_isa isa;
    uint8_t *panels;       /* every panel of the layer */
    float *sw, *zp;        /* [N] */
};

static void job_init(i8_job *j, const qd_sdnq_state *s) {
    memset(j, 0, sizeof *j);
    j->s = s;
    j->isa = qd_i8_pick();
    j->K = s->l.cols;
    j->kp = qd_i8_kpad(s->l.cols);
    j->N = s->l.out;
    j->direct = direct_codes(&s->l);
}

/* The linear path: SDNQ layers whose weight is a plain [out, cols] matrix (Linear, 1x1 conv). */
static int uses_int8(const qd_ctx *ctx, const qd_weight *w, int64_t M) {
    return w->linear == qd_sdnq_linear && w->quant && ((const qd_sdnq_state *)w->quant)->l.ksize == 1 &&
           qd_sdnq_uses_int8(ctx, w->quant, M);
}

static qd_sdnq_i8_panels *pack_all(qd_ctx *ctx, const qd_sdnq_state *s, const int32_t *perm) {
    i8_job j;
    job_init(&j, s);
    j.perm = perm;
    int64_t npan = (j.N + QD_I8_NR - 1) / QD_I8_NR;
    qd_sdnq_i8_panels *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->s = s;
    p->N = j.N;
    p->kp = j.kp;
    p->isa = j.isa;
    p->panels = qd_malloc_aligned(ctx, (size_t)(npan * qd_i8_panel_bytes(j.kp)));
    p->sw = malloc(sizeof(float) * (size_t)j.N);
    p->zp = malloc(sizeof(float) * (size_t)j.N);
    if (p->panels && p->sw && p->zp) {
        j.panels = p->panels;
        j.sw = p->sw;
        j.zp = p->zp;
        qd_parallel_for(ctx, npan, pack_panels, &j);
        if (!j.failed) return p;
    }
    qd_sdnq_i8_panels_free(p);
    return NULL;
}

qd_sdnq_i8_panels *qd_sdnq_i8_prepack(qd_ctx *ctx, const qd_weight *w, int64_t M) {
    return uses_int8(ctx, w, M) ? pack_all(ctx, w->quant, NULL) : NULL;
}

qd_sdnq_i8_panels *qd_sdnq_i8_pack_perm(qd_ctx *ctx, const qd_sdnq_state *s, const int32_t *perm) {
    return pack_all(ctx, s, perm);
}

int qd_sdnq_i8_panels_gemm(qd_ctx *ctx, const qd_sdnq_i8_panels *p, const int8_t *xq, const float *sx,
                           const int32_t *xsum, int64_t M, const float *bias, float *y, int64_t ldy, int accumulate) {
    qd_i8_gemm_args g = {xq, sx, xsum, M, p->kp, p->panels, p->N, p->sw, p->zp, bias, y, ldy, accumulate};
    return qd_i8_gemm(ctx, p->isa, &g);
}

qd_i8_isa qd_sdnq_i8_panels_isa(const qd_sdnq_i8_panels *p) { return p->isa; }

void qd_sdnq_i8_panels_free(qd_sdnq_i8_panels *p) {
    if (!p) return;
    free(p->panels); free(p->sw); free(p->zp);
    free(p);
}

int qd_sdnq_uses_int8_weight(const qd_ctx *ctx, const qd_weight *w, int64_t M) { return uses_int8(ctx, w, M); }

int qd_sdnq_linear_into(qd_ctx *ctx, const qd_weight *w, const qd_sdnq_i8_panels *pre, const float *x, int64_t M,
                        const float *bias, float *y, int64_t ldy, int accumulate) {
    /* with panels, the int8 decision was taken for the caller's whole call at packing */
    if (pre ? pre->s != w->quant || M <= 0 : !uses_int8(ctx, w, M)) return 0;
    const qd_sdnq_state *s = w->quant;
    const qd_sdnq_layout *l = &s->l;
    i8_job j;
    job_init(&j, s);
    if (pre) j.isa = pre->isa;
    j.x = x;
    j.M = M;
    int64_t Mp = (M + QD_I8_MR - 1) / QD_I8_MR * QD_I8_MR, npan = (j.N + QD_I8_NR - 1) / QD_I8_NR;
    int64_t pbytes = qd_i8_panel_bytes(j.kp), chunk = pre ? npan : CHUNK_BYTES / pbytes;
    if (chunk < 1) chunk = 1;
    if (chunk > npan) chunk = npan;
    j.xq = qd_malloc_aligned(ctx, (size_t)(Mp * j.kp));
    j.sx = malloc(sizeof(float) * (size_t)M);
    j.xsum = malloc(sizeof(int32_t) * (size_t)M);
    if (pre) {
        j.sw = pre->sw;
        j.zp = pre->zp;
        j.panels = pre->panels;
    } else {
        j.sw = malloc(sizeof(float) * (size_t)j.N);
        j.zp = malloc(sizeof(float) * (size_t)j.N);
        j.panels = qd_malloc_aligned(ctx, (size_t)(chunk * pbytes));
    }
    if (l->hadamard) j.xr = malloc(sizeof(float) * (size_t)(M * j.K));
    float *t = l->svd ? malloc(sizeof(float) * (size_t)(M * l->svd_rank)) : NULL;
    int ok = j.xq && j.sx && j.xsum && j.sw && j.zp && j.panels && (!l->hadamard || j.xr) && (!l->svd || t);
    int touched = 0;   /* y written: from here a failure cannot fall back to the exact GEMM */
    if (ok) {
        memset(j.xq + M * j.kp, 0, (size_t)((Mp - M) * j.kp));   /* pad rows the kernel reads */
        qd_parallel_for(ctx, M, quantize_tokens, &j);
        if (l->svd) {   /* float low-rank branch on the (rotated) activations */
            const float *xa = j.xr ? j.xr : x;
            touched = 1;
            int64_t r = l->svd_rank;
            qd_gemm(ctx, M, r, j.K, qd_rows(xa, j.K), qd_rows(s->svd_down, j.K), t, r, 1.0f, 0.0f, NULL, NULL);
            qd_gemm(ctx, M, j.N, r, qd_rows(t, r), qd_rows(s->svd_up, r), y, ldy, 1.0f, accumulate ? 1.0f : 0.0f,
                    NULL, NULL);
        }
        /* one token: stream the weight once instead of packing it (same results). Opt-in
         * (QD_I8_GEMV=1): measured slower than the packed int8 GEMM so far (bench_gemv) */
        int gemv = !pre && M <= QD_SDNQ_GEMV_MAX_M && getenv("QD_I8_GEMV") && !getenv("QD_NO_GEMV") &&
                   qd_sdnq_i8_gemv(ctx, s, j.direct, j.xq, j.kp, j.sx, j.xsum, M, bias, y, ldy, accumulate || l->svd) == 0;
        if (gemv) touched = 1;
        for (int64_t p0 = 0; ok && !gemv && p0 < npan; p0 += chunk) {
            int64_t np = npan - p0 < chunk ? npan - p0 : chunk;
            int64_t n0 = p0 * QD_I8_NR, nn = (p0 + np) * QD_I8_NR < j.N ? np * QD_I8_NR : j.N - n0;
            const uint8_t *panels = j.panels + (pre ? p0 * pbytes : 0);
            if (!pre) {
                j.p0 = p0;
                qd_parallel_for(ctx, np, pack_panels, &j);
                if (j.failed) { ok = 0; break; }
            }
            touched = 1;
            qd_i8_gemm_args g = {j.xq, j.sx, j.xsum, M, j.kp, panels, nn, j.sw + n0, j.zp + n0,
                                 bias ? bias + n0 : NULL, y + n0, ldy, accumulate || l->svd};
            if (qd_i8_gemm(ctx, j.isa, &g)) ok = 0;
        }
    }
    free(j.xq); free(j.sx); free(j.xsum); free(j.xr); free(t);
    if (!pre) { free(j.sw); free(j.zp); free(j.panels); }
    if (ok) return 1;
    if (!touched || !accumulate) return 0;   /* the exact GEMM (re)computes y */
    qd_op_failed(ctx, "int8 linear");      /* y was partly accumulated into: nothing can redo it */
    return 1;
}

int qd_sdnq_linear(qd_ctx *ctx, const qd_weight *w, const float *x, int64_t M, const float *bias, float *y) {
    /* 0: nothing usable was written (not int8 here, or no memory); the exact GEMM recomputes y */
    return qd_sdnq_linear_into(ctx, w, NULL, x, M, bias, y, w->rows, 0);
}
