/* One weight through sdnq's quantizer: Hadamard, SVD, scales, codes or codebook,
 * transpose, pack; then the reader's check and dequantizer on the result. */
#include "quant/sdnq_quantize.h"
#include "base/half.h"
#include "quant/hadamard.h"
#include "quant/sdnq_pack.h"
#include "quant/sdnq_svd.h"
#include "quant/sdnq_weight.h"
#include "base/threads.h"
#include "tensor/gemm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qd_sdnq_qresult_free(qd_sdnq_qresult *r) {
    if (!r) return;
    for (int i = 0; i < QD_SQ_NTENSORS; i++) free((void *)r->t[i].data);
    memset(r, 0, sizeof *r);
}

/* Round fp32 values to the model dtype and back (the factors sdnq stores). */
static void round_to(qd_dtype dt, float *x, int64_t n) {
    if (dt == QD_F16) for (int64_t i = 0; i < n; i++) x[i] = qd_f16_to_f32(qd_f32_to_f16(x[i]));
    else if (dt == QD_BF16) for (int64_t i = 0; i < n; i++) x[i] = qd_bf16_to_f32(qd_f32_to_bf16(x[i]));
}

/* The factors in the model dtype for the file, in the stored orientation. */
static void *store_factor(qd_dtype dt, const float *x, int64_t rows, int64_t cols, int transpose) {
    size_t es = qd_dtype_size(dt);
    uint8_t *d = malloc(es * (size_t)(rows * cols));
    if (!d) return NULL;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            int64_t at = transpose ? j * rows + i : i * cols + j;
            float v = x[i * cols + j];
            if (dt == QD_F16) { uint16_t h = qd_f32_to_f16(v); memcpy(d + 2 * at, &h, 2); }
            else if (dt == QD_BF16) { uint16_t h = qd_f32_to_bf16(v); memcpy(d + 2 * at, &h, 2); }
            else memcpy(d + 4 * at, &v, 4);
        }
    return d;
}

static int64_t n_scales(const qd_sdnq_layout *l) {
    if (l->grouping == QD_SDNQ_TENSORWISE) return 1;
    if (l->transposed) return l->out;
    return l->out * l->groups * l->ksize;
}

static inline int64_t scale_index(const qd_sdnq_layout *l, int64_t so, int64_t sg, int64_t sp, int64_t o, int64_t col) {
    int64_t c = col / l->ksize, p = col % l->ksize;
    return o * so + c / l->group_size * sg + p * sp;
}

static void lloyd_levels(const float *x, int64_t n, int L, int steps, float *lv, uint32_t *codes, double *sum, int64_t *cnt);

/* §2 steps 7-8: scales (and zero points) per group, then codes. Rows are split
 * across threads; every scale belongs to one row unless tensor-wise. */
typedef struct {
    const qd_sdnq_layout *l;
    const float *W;
    float *scale, *zp;
    uint32_t *codes;
    int64_t so, sg, sp;
} sc_job;

static void reduce_rows(void *arg, int64_t o0, int64_t o1, int thread) {
    const sc_job *j = arg;
    const qd_sdnq_layout *l = j->l;
    (void)thread;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c = 0; c < l->cols; c++) {
            int64_t k = scale_index(l, j->so, j->sg, j->sp, o, c);
            float v = j->W[o * l->cols + c];
            if (j->zp) { if (v > j->scale[k]) j->scale[k] = v; if (v < j->zp[k]) j->zp[k] = v; }
            else { float a = fabsf(v); if (a > j->scale[k]) j->scale[k] = a; }
        }
}

static void code_rows(void *arg, int64_t o0, int64_t o1, int thread) {
    const sc_job *j = arg;
    const qd_sdnq_layout *l = j->l;
    const qd_sdnq_dtype *dt = &l->dtype;
    (void)thread;
    int is_int = dt->family == QD_SQ_INT || dt->family == QD_SQ_UINT;
    int64_t qmax_i = (int64_t)dt->max, qmin = dt->family == QD_SQ_INT ? -qmax_i - 1 : 0;
    uint32_t code_mask = dt->bits >= 32 ? 0xffffffffu : (1u << dt->bits) - 1;
    uint32_t offset = dt->family == QD_SQ_INT && dt->packed ? 1u << (dt->bits - 1) : 0;
    int64_t out = l->out, cols = l->cols;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t k = scale_index(l, j->so, j->sg, j->sp, o, c);
            float v = j->W[o * cols + c];
            float x = j->zp ? (v - j->zp[k]) / j->scale[k] : v / j->scale[k];
            int64_t at = l->transposed ? c * out + o : o * cols + c;
            if (is_int) {
                /* round in fp32 as torch does; clamp as integers (int32/uint32 extremes do not fit a float) */
                double xr = rintf(x);
                int64_t q = xr != xr ? 0 : xr >= 9e18 ? qmax_i : xr <= -9e18 ? qmin : (int64_t)xr;   /* NaN: an all-zero group (§1.10) */
                if (q < qmin) q = qmin;
                if (q > qmax_i) q = qmax_i;
                if (dt->family == QD_SQ_INT && dt->packed) j->codes[at] = (uint32_t)(q + (int64_t)offset);
                else j->codes[at] = (uint32_t)(q & 0xffffffff) & code_mask;
            } else {
                if (x != x) x = 0.0f;                        /* nan_to_num */
                j->codes[at] = qd_sdnq_float_code(dt, x);
            }
        }
}

static void scale_and_codes(qd_ctx *ctx, const qd_sdnq_layout *l, const float *W, float *scale, float *zp, uint32_t *codes) {
    sc_job j = {l, W, scale, zp, codes, 0, 0, 0};
    qd_sdnq_scale_strides(l, &j.so, &j.sg, &j.sp);
    int64_t ns = n_scales(l);
    for (int64_t i = 0; i < ns; i++) { scale[i] = zp ? -INFINITY : 0.0f; if (zp) zp[i] = INFINITY; }
    if (l->grouping == QD_SDNQ_TENSORWISE) reduce_rows(&j, 0, l->out, 0);
    else qd_parallel_for(ctx, l->out, reduce_rows, &j);
    float qmax = (float)l->dtype.max;
    /* unsigned ints and unsigned floats start at 0; signed types are symmetric around it */
    for (int64_t i = 0; i < ns; i++) scale[i] = zp ? (scale[i] - zp[i]) / qmax : scale[i] / qmax;
    qd_parallel_for(ctx, l->out, code_rows, &j);
}

/* §2 step 9: Lloyd-Max levels per group; the LUT replaces the scale. */
typedef struct {
    const float *W;
    float *lut;
    uint32_t *codes;
    int64_t glen;
    int L, steps;
    double *sum;        /* per thread: L sums ... */
    int64_t *cnt;       /* ... and L counts */
} cb_job;

static void codebook_groups(void *arg, int64_t g0, int64_t g1, int thread) {
    const cb_job *j = arg;
    for (int64_t g = g0; g < g1; g++)   /* groups are contiguous runs (never transposed) */
        lloyd_levels(j->W + g * j->glen, j->glen, j->L, j->steps, j->lut + g * j->L, j->codes + g * j->glen,
                     j->sum + (size_t)thread * (size_t)j->L, j->cnt + (size_t)thread * (size_t)j->L);
}

static qd_status codebook(qd_ctx *ctx, const qd_sdnq_layout *l, int steps, const float *W, float *lut, uint32_t *codes) {
    int L = 1 << l->dtype.bits, nt = qd_threads(ctx);
    int64_t ngroups = l->grouping == QD_SDNQ_TENSORWISE ? 1 : l->out * l->groups;
    cb_job j = {W, lut, codes, l->out * l->cols / ngroups, L, steps, NULL, NULL};
    j.sum = malloc(sizeof(double) * (size_t)L * (size_t)nt);
    j.cnt = malloc(sizeof(int64_t) * (size_t)L * (size_t)nt);
    if (!j.sum || !j.cnt) { free(j.sum); free(j.cnt); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    qd_parallel_for(ctx, ngroups, codebook_groups, &j);
    free(j.sum);
    free(j.cnt);
    return QD_OK;
}

/* Index of the level nearest x among sorted levels (ties to the lower one). */
static uint32_t nearest(const float *lv, int L, float x) {
    int lo = 0, hi = L - 1;
    while (lo < hi) {   /* first level whose midpoint with the next is >= x */
        int mid = (lo + hi) / 2;
        if (x <= 0.5f * (lv[mid] + lv[mid + 1])) hi = mid; else lo = mid + 1;
    }
    return (uint32_t)lo;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void lloyd_levels(const float *x, int64_t n, int L, int steps, float *lv, uint32_t *codes, double *sum, int64_t *cnt) {
    float mn = x[0], mx = x[0];
    for (int64_t i = 1; i < n; i++) { if (x[i] < mn) mn = x[i]; if (x[i] > mx) mx = x[i]; }
    for (int i = 0; i < L; i++) lv[i] = L > 1 ? mn + (mx - mn) * (float)i / (float)(L - 1) : mn;
    for (int s = 0; s < steps; s++) {
        qsort(lv, (size_t)L, sizeof *lv, cmp_float);
        for (int i = 0; i < L; i++) { sum[i] = 0; cnt[i] = 0; }
        for (int64_t i = 0; i < n; i++) {
            uint32_t k = nearest(lv, L, x[i]);
            sum[k] += x[i];
            cnt[k]++;
        }
        for (int i = 0; i < L; i++)
            if (cnt[i]) lv[i] = (float)(sum[i] / (double)cnt[i]);
    }
    qsort(lv, (size_t)L, sizeof *lv, cmp_float);
    for (int64_t i = 0; i < n; i++) codes[i] = nearest(lv, L, x[i]);
}

static void weight_shape(const qd_sdnq_layout *l, qd_st_out *t) {
    const qd_sdnq_dtype *dt = &l->dtype;
    int64_t n = l->out * l->cols;
    if (dt->packed) {
        int64_t words = qd_sdnq_storage_elems(dt, n);
        if (dt->bits == 4 || dt->bits == 2 || dt->bits == 1) { t->ndim = 1; t->shape[0] = words; }
        else { t->ndim = 2; t->shape[0] = words / dt->block_words; t->shape[1] = dt->block_words; }
        return;
    }
    if (l->transposed) { t->ndim = 2; t->shape[0] = l->cols; t->shape[1] = l->out; return; }
    int k = 0;
    t->shape[k++] = l->out;
    if (l->grouping == QD_SDNQ_GROUPED) { t->shape[k++] = l->groups; t->shape[k++] = l->group_size; }
    else t->shape[k++] = l->in;
    for (int i = 0; i < l->kdims; i++) t->shape[k++] = l->kshape[i];
    t->ndim = k;
}

int qd_sdnq_svd_fits(const qd_sdnq_layout *l) {
    return l->svd && l->svd_rank >= 1 && l->svd_rank <= l->out && l->svd_rank <= l->cols;
}

void qd_sdnq_stored_tensors(const qd_sdnq_layout *l, qd_dtype model_dtype, qd_st_out *t, int *present) {
    static const char *names[] = {"weight", "scale", "zero_point", "svd_up", "svd_down"};
    memset(t, 0, sizeof *t * QD_SQ_NTENSORS);
    for (int i = 0; i < QD_SQ_NTENSORS; i++) { t[i].name = names[i]; present[i] = 0; }
    t[0].dtype = l->dtype.storage;
    weight_shape(l, &t[0]);
    t[1].dtype = QD_F32;
    t[1].ndim = qd_sdnq_scale_shape(l, t[1].shape);
    present[0] = present[1] = 1;
    if (l->zero_point) {
        t[2] = t[1];
        t[2].name = names[2];
        present[2] = 1;
    }
    if (qd_sdnq_svd_fits(l)) {
        int64_t rank = l->svd_rank;
        t[3].dtype = t[4].dtype = model_dtype;
        t[3].ndim = t[4].ndim = 2;
        if (l->svd_transposed) {
            t[3].shape[0] = rank; t[3].shape[1] = l->out;
            t[4].shape[0] = l->cols; t[4].shape[1] = rank;
        } else {
            t[3].shape[0] = l->out; t[3].shape[1] = rank;
            t[4].shape[0] = rank; t[4].shape[1] = l->cols;
        }
        present[3] = present[4] = 1;
    }
}

static void as_st_tensor(const qd_st_out *o, qd_st_tensor *t, const char *name) {
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = o->dtype;
    t->ndim = o->ndim;
    t->numel = 1;
    for (int i = 0; i < o->ndim; i++) { t->shape[i] = o->shape[i]; t->numel *= o->shape[i]; }
    t->data = o->data;
    t->nbytes = (size_t)t->numel * qd_dtype_size(o->dtype);
    t->file = "(quantizer output)";
}

typedef struct {
    const qd_sdnq_state *s;
    const float *w;
    double *part;       /* per chunk: sum w, sum w^2, sum (w - dequant)^2 */
    float *buf;         /* per thread: 16 rows */
} ms_job;

static void measure_chunks(void *arg, int64_t c0, int64_t c1, int thread) {
    const ms_job *j = arg;
    int64_t cols = j->s->l.cols, out = j->s->l.out;
    float *buf = j->buf + (size_t)thread * 16 * (size_t)cols;
    for (int64_t c = c0; c < c1; c++) {
        int64_t r0 = c * 16, nr = out - r0 < 16 ? out - r0 : 16;
        qd_sdnq_decode(j->s, r0, nr, 0, cols, buf, cols);
        double sw = 0, sw2 = 0, se = 0;
        for (int64_t i = 0; i < nr * cols; i++) {
            double a = j->w[r0 * cols + i], d = a - buf[i];
            sw += a;
            sw2 += a * a;
            se += d * d;
        }
        j->part[3 * c] = sw;
        j->part[3 * c + 1] = sw2;
        j->part[3 * c + 2] = se;
    }
}

/* The reader's check on what was produced, and its dequantizer for the error. */
static qd_status measure(qd_ctx *ctx, qd_sdnq_qresult *r, const float *w, const float *scale, const float *zp,
                         const float *up, const float *down) {
    qd_sdnq_layout l = r->l;
    static const char *names[] = {"weight", "scale", "zero_point", "svd_up", "svd_down"};
    qd_st_tensor st[QD_SQ_NTENSORS];
    for (int i = 0; i < QD_SQ_NTENSORS; i++) as_st_tensor(&r->t[i], &st[i], names[i]);
    qd_sdnq_tensors t = {&st[0], &st[1], r->present[2] ? &st[2] : NULL, r->present[3] ? &st[3] : NULL,
                         r->present[4] ? &st[4] : NULL};
    qd_sdnq_layout chk = l;
    if (qd_sdnq_layout_check(ctx, &chk, &t) != QD_OK)
        return qd_fail_prefix(ctx, QD_ERR_UNSUPPORTED, "internal: the reader rejects what the quantizer wrote");
    if (chk.adjusted || chk.grouping != l.grouping || chk.groups != l.groups || chk.transposed != l.transposed ||
        chk.svd != l.svd)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': internal: the reader would read the written tensors "
                       "with another layout", l.param);
    qd_sdnq_state s;
    memset(&s, 0, sizeof s);
    s.l = l;
    s.codes = r->t[0].data;
    s.scale = scale;
    s.zero_point = zp;
    s.svd_up = up;
    s.svd_down = down;
    qd_sdnq_scale_strides(&l, &s.so, &s.sg, &s.sp);
    s.lut_size = l.codebook ? (int64_t)1 << l.dtype.bits : 0;
    /* chunks of 16 rows, each chunk's sums kept apart and added in order: the same
     * result for any thread count */
    int64_t nchunks = (l.out + 15) / 16;
    ms_job j = {&s, w, qd_malloc(ctx, sizeof(double) * 3 * (size_t)nchunks), NULL};
    j.buf = qd_malloc(ctx, sizeof(float) * 16 * (size_t)l.cols * (size_t)qd_threads(ctx));
    if (!j.part || !j.buf) { free(j.part); free(j.buf); return QD_ERR_NOMEM; }
    qd_parallel_for(ctx, nchunks, measure_chunks, &j);
    double sw = 0, sw2 = 0, se = 0, n = (double)l.out * (double)l.cols;
    for (int64_t c = 0; c < nchunks; c++) { sw += j.part[3 * c]; sw2 += j.part[3 * c + 1]; se += j.part[3 * c + 2]; }
    free(j.part);
    free(j.buf);
    r->rel_err = sw2 > 0 ? sqrt(se / sw2) : (se > 0 ? INFINITY : 0.0);
    r->snr_db = se > 0 ? 10.0 * log10(sw2 / se) : INFINITY;
    double var = n > 1 ? (sw2 - sw * sw / n) / (n - 1) : 0;
    if (var < 1e-8) var = 1e-8;
    r->loss = se / n / var;
    return QD_OK;
}

qd_status qd_sdnq_quantize(qd_ctx *ctx, const qd_sdnq_qspec *spec, const float *w, qd_sdnq_qresult *r) {
    memset(r, 0, sizeof *r);
    r->l = spec->l;
    qd_sdnq_layout *l = &r->l;
    const qd_sdnq_dtype *dt = &l->dtype;
    int64_t out = l->out, cols = l->cols, n = out * cols;
    if (l->codebook && l->ksize > 1)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': codebook Conv layers are not supported", l->param);
    if (l->codebook && dt->bits > 12)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': a codebook of %d-bit codes is too large", l->param, dt->bits);
    int64_t words = qd_sdnq_storage_elems(dt, n);
    if (words < 0)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': %lld weights are not a whole number of %s packing blocks of %d",
                       l->param, (long long)n, dt->name, dt->block_codes);

    float *W = qd_malloc(ctx, sizeof(float) * (size_t)n);
    uint32_t *codes = qd_malloc(ctx, sizeof(uint32_t) * (size_t)n);
    float *up = NULL, *down = NULL, *scale = NULL, *zp = NULL;
    qd_status st = QD_OK;
    if (!W || !codes) { st = QD_ERR_NOMEM; goto done; }
    memcpy(W, w, sizeof(float) * (size_t)n);

    /* step 4: rotate */
    if (l->hadamard)
        for (int64_t o = 0; o < out; o++)
            for (int64_t b = 0; b + l->hadamard_size <= cols; b += l->hadamard_size) qd_hadamard(W + o * cols + b, l->hadamard_size);

    /* step 5: low-rank part, stored in the model dtype and subtracted as stored */
    if (l->svd) {
        int rank = (int)l->svd_rank;
        up = qd_malloc(ctx, sizeof(float) * (size_t)(out * (rank > 0 ? rank : 1)));
        down = qd_malloc(ctx, sizeof(float) * (size_t)(cols * (rank > 0 ? rank : 1)));
        if (!up || !down) { st = QD_ERR_NOMEM; goto done; }
        qd_sdnq_svd_cache *cache = spec->svd_cache;
        int cached = cache && cache->valid && cache->rank == rank && cache->up && cache->down;
        if (!qd_sdnq_svd_fits(l)) {   /* svd_lowrank fails; sdnq then stores the layer without SVD */
            l->svd = 0;
            free(up); free(down); up = down = NULL;
        } else if (cached) {
            memcpy(up, cache->up, sizeof(float) * (size_t)(out * rank));
            memcpy(down, cache->down, sizeof(float) * (size_t)(rank * cols));
        } else if ((st = qd_sdnq_svd_lowrank(ctx, W, out, cols, rank, spec->svd_steps, spec->seed, up, down)) != QD_OK) {
            goto done;
        }
        if (l->svd) {
            if (!cached) {
                round_to(spec->model_dtype, up, out * rank);
                round_to(spec->model_dtype, down, (int64_t)rank * cols);
                if (cache && cache->up && cache->down) {
                    memcpy(cache->up, up, sizeof(float) * (size_t)(out * rank));
                    memcpy(cache->down, down, sizeof(float) * (size_t)(rank * cols));
                    cache->rank = rank;
                    cache->valid = 1;
                }
            }
            qd_gemm(ctx, out, cols, rank, qd_rows(up, rank), qd_cols(down, cols), W, cols, -1.0f, 1.0f, NULL, NULL);
            if ((st = qd_op_status(ctx)) != QD_OK) goto done;
        }
    }

    /* steps 6-9 */
    int64_t ns_shape[QD_MAX_DIMS + 2];
    int sdims = qd_sdnq_scale_shape(l, ns_shape);
    int64_t ns = 1;
    for (int i = 0; i < sdims; i++) ns *= ns_shape[i];
    scale = qd_malloc(ctx, sizeof(float) * (size_t)ns);
    if (!scale) { st = QD_ERR_NOMEM; goto done; }
    if (l->zero_point && !(zp = qd_malloc(ctx, sizeof(float) * (size_t)ns))) { st = QD_ERR_NOMEM; goto done; }
    if (l->codebook) {
        if ((st = codebook(ctx, l, spec->codebook_steps, W, scale, codes)) != QD_OK) goto done;
    } else {
        scale_and_codes(ctx, l, W, scale, zp, codes);
    }

    /* step 10: pack (codes are already in the stored orientation) */
    qd_sdnq_stored_tensors(l, spec->model_dtype, r->t, r->present);
    size_t wbytes = (size_t)words * qd_dtype_size(dt->storage);
    void *wdata = qd_malloc(ctx, wbytes ? wbytes : 1);
    if (!wdata) { st = QD_ERR_NOMEM; goto done; }
    r->t[0].data = wdata;
    if ((st = qd_sdnq_pack(ctx, dt, codes, n, wdata)) != QD_OK) goto done;
    r->t[1].data = scale;
    scale = NULL;
    if (zp) { r->t[2].data = zp; zp = NULL; }
    if (l->svd) {
        int64_t rank = l->svd_rank;
        r->t[3].data = store_factor(spec->model_dtype, up, out, rank, l->svd_transposed);
        r->t[4].data = store_factor(spec->model_dtype, down, rank, cols, l->svd_transposed);
        if (!r->t[3].data || !r->t[4].data) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); goto done; }
    }
    r->bytes = 0;
    for (int i = 0; i < QD_SQ_NTENSORS; i++) {
        if (!r->present[i]) continue;
        int64_t e = 1;
        for (int d = 0; d < r->t[i].ndim; d++) e *= r->t[i].shape[d];
        r->bytes += e * (int64_t)qd_dtype_size(r->t[i].dtype);
    }
    st = measure(ctx, r, w, r->t[1].data, r->present[2] ? r->t[2].data : NULL, up, down);

done:
    free(W);
    free(codes);
    free(up);
    free(down);
    free(scale);
    free(zp);
    if (st != QD_OK) qd_sdnq_qresult_free(r);
    return st;
}
