/* SDNQ dequantization (§1.8) of any rectangle of a layer's weight, in the order
 * sdnq uses: codes -> q*scale (+zero_point) or codebook level -> + svd_up.svd_down
 * -> .H per Hadamard block. All in fp32, the scale dtype sdnq computes in. */
#include "quant/sdnq_weight.h"
#include "quant/sdnq_decode_fast.h"
#include "base/half.h"
#include "quant/hadamard.h"
#include "quant/sdnq_matmul.h"
#include "tensor/gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256           /* columns (or rows) handled per step with stack buffers */
#define MAX_HADAMARD 4096   /* largest Hadamard block decoded on the stack */

static void base_scalar(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                        int64_t ld);

/* row[0..nk) holds the codes' values q for cols [k0, k0+nk) of output o: scale them. */
static void scale_row(const qd_sdnq_state *s, int64_t o, int64_t k0, int64_t nk, float *row) {
    const qd_sdnq_layout *l = &s->l;
    const float *zp = s->zero_point;
    int64_t gs = l->group_size;
    if (l->codebook) {   /* Linear/Embedding only (checked at open) */
        for (int64_t i = 0; i < nk; i++) {
            const float *lut = s->scale + (o * s->so + (k0 + i) / gs * s->sg) * s->lut_size;
            row[i] = lut[(int64_t)row[i]];
        }
        return;
    }
    if (l->ksize == 1) {
        /* runs of columns sharing one scale: a group, or the whole range */
        for (int64_t i = 0; i < nk;) {
            int64_t g = s->sg ? (k0 + i) / gs : 0;
            int64_t end = s->sg ? (g + 1) * gs - k0 : nk;
            if (end > nk) end = nk;
            int64_t idx = o * s->so + g * s->sg;
            float sc = s->scale[idx], z = zp ? zp[idx] : 0.0f;
            if (sc == 0) for (; i < end; i++) row[i] = z;        /* all-zero group: codes are undefined (§1.10) */
            else if (zp) for (; i < end; i++) row[i] = row[i] * sc + z;
            else for (; i < end; i++) row[i] = row[i] * sc;
        }
        return;
    }
    for (int64_t i = 0; i < nk; i++) {   /* Conv: scale per (out, group, kernel position) */
        int64_t k = k0 + i, c = k / l->ksize, p = k % l->ksize;
        int64_t idx = o * s->so + c / gs * s->sg + p * s->sp;
        float sc = s->scale[idx], z = zp ? zp[idx] : 0.0f;
        row[i] = sc == 0 ? z : zp ? row[i] * sc + z : row[i] * sc;
    }
}

void qd_sdnq_decode_base(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    if (qd_sdnq_decode_fast_base(s, r0, nr, k0, nk, dst, ld)) return;
    base_scalar(s, r0, nr, k0, nk, dst, ld);
}

/* The scalar base decode (every layout; the reference the fast path is tested against). */
static void base_scalar(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                        int64_t ld) {
    const qd_sdnq_layout *l = &s->l;
    if (!l->transposed) {
        for (int64_t r = 0; r < nr; r++) {
            float *row = dst + r * ld;
            qd_sdnq_unpack_f32(&l->dtype, s->codes, (r0 + r) * l->cols + k0, nk, row);
            scale_row(s, r0 + r, k0, nk, row);
        }
        return;
    }
    /* stored [cols, out]: read runs of consecutive outputs for each column */
    float q[CHUNK];
    for (int64_t rc = 0; rc < nr; rc += CHUNK) {
        int64_t n = nr - rc < CHUNK ? nr - rc : CHUNK;
        for (int64_t k = 0; k < nk; k++) {
            qd_sdnq_unpack_f32(&l->dtype, s->codes, (k0 + k) * l->out + r0 + rc, n, q);
            for (int64_t r = 0; r < n; r++) {
                int64_t o = r0 + rc + r, idx = o * s->so;
                float sc = s->scale[idx], z = s->zero_point ? s->zero_point[idx] : 0.0f;
                dst[(rc + r) * ld + k] = sc == 0 ? z : s->zero_point ? q[r] * sc + z : q[r] * sc;
            }
        }
    }
}

/* dst[nr x nk] += (svd_up . svd_down)[r0:r0+nr, k0:k0+nk]: a small GEMM over the rank,
 * summed before it is added, as torch's W + up @ down does. */
static void add_svd(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    int64_t r = s->l.svd_rank;
    if (qd_gemm_serial(nr, nk, r, qd_rows(s->svd_up + r0 * r, r), qd_cols(s->svd_down + k0, s->l.cols), dst, ld,
                       1.0f, 1.0f, NULL, NULL) == 0)
        return;
    /* no memory for packing buffers: the same sums, directly */
    for (int64_t i = 0; i < nr; i++)
        for (int64_t j = 0; j < nk; j++) {
            float acc = 0;
            for (int64_t t = 0; t < r; t++) acc += s->svd_up[(r0 + i) * r + t] * s->svd_down[t * s->l.cols + k0 + j];
            dst[i * ld + j] += acc;
        }
}

static void sdnq_decode(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    qd_sdnq_decode(w->quant, r0, nr, k0, nk, dst, ld);
}

static void sdnq_decode_kmajor(const qd_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel,
                               int64_t ld) {
    if (qd_sdnq_decode_kmajor(w->quant, r0, nr, k0, nk, panel, ld)) return;
    /* no AVX-512: the row decode, transposed (only reached when the CPU lacks it) */
    float row[256];
    for (int r = 0; r < ld; r++)
        for (int64_t k = 0; k < nk; k += 256) {
            int64_t n = nk - k < 256 ? nk - k : 256;
            if (r < nr) qd_sdnq_decode(w->quant, r0 + r, 1, k0 + k, n, row, n);
            for (int64_t i = 0; i < n; i++) panel[(k + i) * ld + r] = r < nr ? row[i] : 0.0f;
        }
}

static void sdnq_decode_base(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    qd_sdnq_decode_base(w->quant, r0, nr, k0, nk, dst, ld);
}

/* The base weight straight into bf16 A strips (4-bit codes; else 0: the packer decodes). */
static int sdnq_decode_base_bf16(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                                 int64_t ldw, float alpha) {
    return qd_sdnq_decode_base_bf16(w->quant, r0, nr, k0, nk, dst, ldw, alpha);
}

/* For a bf16 GEMM: the SVD term from bf16 products (fp32 sums), the rest exact. */
static void sdnq_decode_lowp(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    if (!qd_sdnq_decode_fast_lowp(w->quant, r0, nr, k0, nk, dst, ld)) qd_sdnq_decode(w->quant, r0, nr, k0, nk, dst, ld);
}

void qd_sdnq_weight_bind(qd_weight *w, const qd_sdnq_state *s) {
    const qd_sdnq_layout *l = &s->l;
    memset(w, 0, sizeof *w);
    w->rows = l->out;
    w->cols = l->cols;
    w->decode = sdnq_decode;
    w->quant = s;
    w->linear = l->cls == QD_SDNQ_EMBEDDING ? NULL : qd_sdnq_linear;   /* int8 matmul when asked for */
    w->decode_lowp = l->svd ? sdnq_decode_lowp : NULL;
    w->decode_kmajor = s->kmajor ? sdnq_decode_kmajor : NULL;
    if (!l->hadamard && s->u4) {   /* without SVD the base is the whole weight */
        if (l->svd) w->decode_base_bf16 = sdnq_decode_base_bf16;
        else w->decode_bf16 = sdnq_decode_base_bf16;
    }
    if (l->svd && !l->hadamard) {   /* W = base + up.down: the GEMM may apply up.down to the activations */
        w->decode_base = sdnq_decode_base;
        w->lr_up = s->svd_up;
        w->lr_down = s->svd_down;
        w->lr_rank = l->svd_rank;
        w->lr_ld = l->cols;
    }
}

void qd_sdnq_svd_bf16_pairs(const float *up, const float *down, int64_t out, int64_t cols, int64_t r,
                            uint32_t *up_pairs, uint32_t *down_pairs) {
    int64_t rp = (r + 1) / 2;
    for (int64_t o = 0; o < out; o++)
        for (int64_t p = 0; p < rp; p++)
            up_pairs[o * rp + p] = qd_f32_to_bf16(up[o * r + 2 * p]) |
                                   (uint32_t)(2 * p + 1 < r ? qd_f32_to_bf16(up[o * r + 2 * p + 1]) : 0) << 16;
    for (int64_t p = 0; p < rp; p++)
        for (int64_t k = 0; k < cols; k++)
            down_pairs[p * cols + k] = qd_f32_to_bf16(down[2 * p * cols + k]) |
                (uint32_t)(2 * p + 1 < r ? qd_f32_to_bf16(down[(2 * p + 1) * cols + k]) : 0) << 16;
}

void qd_sdnq_decode(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld) {
    if (!qd_sdnq_decode_fast(s, r0, nr, k0, nk, dst, ld)) qd_sdnq_decode_scalar(s, r0, nr, k0, nk, dst, ld);
}

void qd_sdnq_decode_scalar(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                           int64_t ld) {
    if (!s->l.hadamard) {
        base_scalar(s, r0, nr, k0, nk, dst, ld);
        if (s->l.svd) add_svd(s, r0, nr, k0, nk, dst, ld);
        return;
    }
    /* Hadamard mixes a whole block: decode the blocks covering the range, rotate, copy out */
    int64_t g = s->l.hadamard_size;
    float buf[MAX_HADAMARD];
    for (int64_t r = 0; r < nr; r++) {
        for (int64_t b = k0 / g * g; b < k0 + nk; b += g) {
            base_scalar(s, r0 + r, 1, b, g, buf, g);
            if (s->l.svd) add_svd(s, r0 + r, 1, b, g, buf, g);
            qd_hadamard(buf, g);
            int64_t lo = b > k0 ? b : k0, hi = b + g < k0 + nk ? b + g : k0 + nk;
            memcpy(dst + r * ld + (lo - k0), buf + (lo - b), sizeof(float) * (size_t)(hi - lo));
        }
    }
}

/* ---- building ---- */

static int f32_in_place(const qd_st_tensor *t) {
    return t->dtype == QD_F32 && ((uintptr_t)t->data & 3) == 0;
}

/* The tensor as fp32: in place when possible, else converted into *pool. */
static const float *as_f32(const qd_st_tensor *t, float **pool) {
    if (f32_in_place(t)) return t->data;
    float *d = *pool;
    qd_st_to_f32(t, 0, t->numel, d);
    *pool += t->numel;
    return d;
}

/* A stored [a, b] matrix as fp32 [b, a] into *pool (svd factors in the qmm orientation). */
static const float *transposed_f32(const qd_st_tensor *t, float **pool, float *tmp) {
    int64_t a = t->shape[0], b = t->shape[1];
    float *d = *pool;
    for (int64_t i = 0; i < a; i++) {
        qd_st_to_f32(t, i * b, b, tmp);
        for (int64_t j = 0; j < b; j++) d[j * a + i] = tmp[j];
    }
    *pool += t->numel;
    return d;
}

qd_status qd_sdnq_weight_open(qd_ctx *ctx, const qd_sdnq_config *cfg, const qd_st_set *st, const char *prefix,
                              const char *module, qd_sdnq_class cls, int ndim, const int64_t *shape,
                              qd_weight *w, void **state) {
    char name[700];
    *state = NULL;
    qd_sdnq_tensors t;
    snprintf(name, sizeof name, "%s.weight", prefix);  t.weight = qd_st_find(st, name);
    snprintf(name, sizeof name, "%s.scale", prefix);   t.scale = qd_st_find(st, name);
    snprintf(name, sizeof name, "%s.zero_point", prefix); t.zero_point = qd_st_find(st, name);
    snprintf(name, sizeof name, "%s.svd_up", prefix);  t.svd_up = qd_st_find(st, name);
    snprintf(name, sizeof name, "%s.svd_down", prefix); t.svd_down = qd_st_find(st, name);

    qd_sdnq_layout l;
    snprintf(name, sizeof name, "%s.weight", module);
    QD_TRY(qd_sdnq_layout_derive(ctx, cfg, name, cls, ndim, shape, &l));
    QD_TRY(qd_sdnq_layout_check(ctx, &l, &t));
    if (l.adjusted)
        qd_info(ctx, "layer '%s': stored layout differs from what %s derives (an older sdnq?); following the tensors",
                l.param, cfg->path);
    if (l.hadamard && l.hadamard_size > MAX_HADAMARD)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': Hadamard block %lld is larger than %d", l.param,
                       (long long)l.hadamard_size, MAX_HADAMARD);

    /* one allocation: the state, then every fp32 copy the mapping cannot serve */
    size_t pool_n = 0;
    pool_n += f32_in_place(t.scale) ? 0 : (size_t)t.scale->numel;
    if (t.zero_point) pool_n += f32_in_place(t.zero_point) ? 0 : (size_t)t.zero_point->numel;
    if (l.svd) {
        pool_n += f32_in_place(t.svd_up) && !l.svd_transposed ? 0 : (size_t)t.svd_up->numel;
        pool_n += f32_in_place(t.svd_down) && !l.svd_transposed ? 0 : (size_t)t.svd_down->numel;
        pool_n += (size_t)((l.svd_rank + 1) / 2 * (l.out + l.cols));   /* the bf16 pair copies */
    }
    size_t head = (sizeof(qd_sdnq_state) + 63) / 64 * 64;
    qd_sdnq_state *s = qd_malloc(ctx, head + pool_n * sizeof(float));
    if (!s) return QD_ERR_NOMEM;
    memset(s, 0, sizeof *s);
    float *pool = (float *)((char *)s + head);
    s->l = l;
    s->codes = t.weight->data;
    s->scale = as_f32(t.scale, &pool);
    s->zero_point = t.zero_point ? as_f32(t.zero_point, &pool) : NULL;
    if (l.svd && !l.svd_transposed) {
        s->svd_up = as_f32(t.svd_up, &pool);
        s->svd_down = as_f32(t.svd_down, &pool);
    } else if (l.svd) {
        int64_t longest = t.svd_up->shape[1] > t.svd_down->shape[1] ? t.svd_up->shape[1] : t.svd_down->shape[1];
        float *tmp = qd_malloc(ctx, sizeof(float) * (size_t)longest);
        if (!tmp) { free(s); return QD_ERR_NOMEM; }
        s->svd_up = transposed_f32(t.svd_up, &pool, tmp);      /* [r, out] -> [out, r] */
        s->svd_down = transposed_f32(t.svd_down, &pool, tmp);  /* [cols, r] -> [r, cols] */
        free(tmp);
    }
    if (l.svd) {   /* bf16 pairs along the rank for the bf16 GEMM's decode (sdnq_decode_lowp) */
        int64_t rp = (l.svd_rank + 1) / 2;
        uint32_t *up = (uint32_t *)pool, *down = up + rp * l.out;
        qd_sdnq_svd_bf16_pairs(s->svd_up, s->svd_down, l.out, l.cols, l.svd_rank, up, down);
        s->svd_up_bf16 = up;
        s->svd_down_bf16 = down;
        pool += rp * (l.out + l.cols);
    }
    qd_sdnq_scale_strides(&l, &s->so, &s->sg, &s->sp);
    s->lut_size = l.codebook ? (int64_t)1 << l.dtype.bits : 0;
    qd_sdnq_fast_init(s);

    qd_sdnq_weight_bind(w, s);
    w->t = t.weight;
    *state = s;
    return QD_OK;
}
