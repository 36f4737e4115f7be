/* SDNQ per-layer layout: the §1.4 derivation, then the check against the file. */
#include "quant/sdnq_layout.h"

#include <stdio.h>
#include <string.h>

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static int is_int(const qd_sdnq_dtype *d) { return d->family == QD_SQ_INT || d->family == QD_SQ_UINT; }

/* §1.2: a null quantized_matmul_dtype follows the weights. */
static void default_mm(const qd_sdnq_dtype *wd, qd_sdnq_dtype *mm) {
    const char *name = is_int(wd) ? (wd->is_signed ? "int8" : "uint8") : wd->bits < 16 ? "float8_e4m3fn" : "float16";
    qd_sdnq_dtype_parse(name, mm);
}

static int64_t next_pow2(int64_t x) {
    int64_t p = 1;
    while (p < x && p < ((int64_t)1 << 40)) p <<= 1;
    return p;
}

qd_status qd_sdnq_layout_derive(qd_ctx *ctx, const qd_sdnq_config *cfg, const char *param, qd_sdnq_class cls,
                                int ndim, const int64_t *shape, qd_sdnq_layout *l) {
    qd_sdnq_kwargs kw;
    memset(l, 0, sizeof *l);
    QD_TRY(qd_sdnq_layer_kwargs(ctx, cfg, param, &kw));
    return qd_sdnq_layout_derive_kw(ctx, &kw, qd_sdnq_no_matmul(cfg, param), cfg->path, param, cls, ndim, shape, l);
}

qd_status qd_sdnq_layout_derive_kw(qd_ctx *ctx, const qd_sdnq_kwargs *kwp, int no_matmul, const char *where,
                                   const char *param, qd_sdnq_class cls, int ndim, const int64_t *shape,
                                   qd_sdnq_layout *l) {
    qd_sdnq_kwargs kw = *kwp;
    memset(l, 0, sizeof *l);
    snprintf(l->param, sizeof l->param, "%s", param);
    l->cls = cls;
    int want_ndim_ok = cls == QD_SDNQ_CONV ? ndim >= 3 && ndim <= 5 : ndim == 2;
    if (!want_ndim_ok) return qd_fail(ctx, QD_ERR_ARG, "layer '%s': a %s weight cannot have %d dims", param,
                                      cls == QD_SDNQ_CONV ? "Conv" : "Linear/Embedding", ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] <= 0 || shape[i] > ((int64_t)1 << 31))
            return qd_fail(ctx, QD_ERR_ARG, "layer '%s': bad weight dimension %lld", param, (long long)shape[i]);
    l->out = shape[0];
    l->in = shape[1];
    l->ksize = 1;
    l->kdims = ndim - 2;
    for (int i = 2; i < ndim; i++) { l->kshape[i - 2] = shape[i]; l->ksize *= shape[i]; }
    l->cols = l->in * l->ksize;
    if (l->ksize > ((int64_t)1 << 20) || l->cols > ((int64_t)1 << 40))   /* also keeps out * cols in int64 */
        return qd_fail(ctx, QD_ERR_ARG, "layer '%s': weight of %lld x %lld x %lld is too large", param,
                       (long long)l->out, (long long)l->in, (long long)l->ksize);

    int st = qd_sdnq_dtype_parse(kw.weights_dtype, &l->dtype);
    if (st == -2) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': weights_dtype '%s' (%s) is not supported",
                                 param, kw.weights_dtype, where);
    if (st != 0) return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': unknown weights_dtype '%s' (%s)", param, kw.weights_dtype, where);
    const qd_sdnq_dtype *wd = &l->dtype;

    /* step 2: does the config ask for quantized matmul here? */
    int use_mm = cls == QD_SDNQ_LINEAR ? kw.use_quantized_matmul : cls == QD_SDNQ_CONV ? kw.use_quantized_matmul_conv : 0;
    l->qmm = use_mm && !no_matmul && l->out >= 32 && l->cols >= 32 &&
             l->out % 16 == 0 && l->cols % 16 == 0;
    if (kw.matmul_dtype[0]) {
        if (qd_sdnq_dtype_parse(kw.matmul_dtype, &l->mm_dtype) != 0) {
            if (l->qmm) return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': unknown quantized_matmul_dtype '%s' (%s)",
                                       param, kw.matmul_dtype, where);
            default_mm(wd, &l->mm_dtype);
        }
    } else {
        default_mm(wd, &l->mm_dtype);
    }
    const qd_sdnq_dtype *mm = &l->mm_dtype;

    /* step 3: would quantized matmul need the weight re-quantized? */
    l->codebook = kw.use_codebook && wd->family == QD_SQ_UINT;
    l->requant = l->codebook || wd->bits > mm->bits || is_int(wd) != is_int(mm) || (!wd->is_signed && !is_int(mm)) ||
                 (wd->family == QD_SQ_CFLOAT && !is_int(mm) && (wd->bits >= mm->bits || wd->max > mm->max));

    /* step 4: group size */
    long gs = kw.group_size;
    if (gs == 0) {
        if (l->qmm && !l->requant && wd->bits >= 6) gs = -1;
        else {
            int e = 1 + wd->bits + (cls == QD_SDNQ_LINEAR) + (kw.use_svd != 0) + 3 * l->codebook;
            gs = e > 40 ? (1L << 40) : 1L << e;
        }
    }
    l->grouping = QD_SDNQ_ROWWISE;
    l->groups = 1;
    if (gs == -2) l->grouping = QD_SDNQ_TENSORWISE;
    else if (gs < -2) return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': group_size %ld is not valid (%s)", param, gs, where);
    else if (gs > 0 && gs < l->in) {
        int64_t G = l->in / gs;
        while (G > 1 && G * gs != l->in) {
            G--;
            if (G > 1) gs = (long)(l->in / G);
        }
        if (G > 1) { l->grouping = QD_SDNQ_GROUPED; l->groups = G; }
    }
    l->group_size = l->in / l->groups;
    if (l->groups > 1) l->requant = 1;

    /* step 5: stored transposed for quantized matmul */
    l->transposed = l->qmm && !l->requant && !wd->custom;

    /* step 6: Hadamard block */
    if (kw.use_hadamard && kw.hadamard_group_size > 0) {
        int64_t g = next_pow2(l->in < kw.hadamard_group_size ? l->in : kw.hadamard_group_size);
        while (g > 1 && l->in % g) g /= 2;
        if (g >= 4) { l->hadamard = 1; l->hadamard_size = g; }
    }

    l->zero_point = !wd->is_signed && !l->codebook;
    l->svd = kw.use_svd != 0;
    l->svd_rank = kw.svd_rank;
    l->svd_transposed = l->qmm;
    return QD_OK;
}

void qd_sdnq_scale_strides(const qd_sdnq_layout *l, int64_t *so, int64_t *sg, int64_t *sp) {
    if (l->grouping == QD_SDNQ_TENSORWISE) { *so = 0; *sg = 0; *sp = 0; }
    else if (l->transposed) { *so = 1; *sg = 0; *sp = 0; }
    else if (l->grouping == QD_SDNQ_ROWWISE) { *so = l->ksize; *sg = 0; *sp = 1; }
    else { *so = l->groups * l->ksize; *sg = l->ksize; *sp = 1; }
}

/* ---- the check against the file ---- */

static int is_float_dtype(qd_dtype t) {
    return t == QD_F32 || t == QD_F16 || t == QD_BF16 || t == QD_F64;
}

static int shape_eq(const qd_st_tensor *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

int qd_sdnq_scale_shape(const qd_sdnq_layout *l, int64_t *s) {
    int64_t L = (int64_t)1 << l->dtype.bits;
    if (l->codebook) {
        if (l->grouping == QD_SDNQ_TENSORWISE) { s[0] = L; return 1; }
        if (l->grouping == QD_SDNQ_ROWWISE) { s[0] = l->out; s[1] = L; return 2; }
        s[0] = l->out; s[1] = l->groups; s[2] = L;
        return 3;
    }
    int n = 0;
    if (l->grouping == QD_SDNQ_TENSORWISE) {
        for (n = 0; n < 2 + l->kdims; n++) s[n] = 1;
        return n;
    }
    if (l->transposed) { s[0] = 1; s[1] = l->out; return 2; }
    s[n++] = l->out;
    if (l->grouping == QD_SDNQ_GROUPED) s[n++] = l->groups;
    s[n++] = 1;
    for (int i = 0; i < l->kdims; i++) s[n++] = l->kshape[i];
    return n;
}

static int scale_fits(const qd_sdnq_layout *l, const qd_st_tensor *scale) {
    int64_t s[QD_MAX_DIMS + 2];
    int n = qd_sdnq_scale_shape(l, s);
    if (l->grouping == QD_SDNQ_TENSORWISE && !l->codebook) return scale->numel == 1;
    return shape_eq(scale, n, s);
}

/* Does the weight tensor hold this layout's codes? (type and element count; storage orientation) */
static int weight_fits(const qd_sdnq_layout *l, const qd_st_tensor *w, char *why, size_t n) {
    const qd_sdnq_dtype *d = &l->dtype;
    int64_t codes = l->out * l->cols;
    if (d->packed) {
        int64_t words = qd_sdnq_storage_elems(d, codes);
        if (words < 0) {
            snprintf(why, n, "%lld %s codes are not a whole number of %d-code packing blocks",
                     (long long)codes, d->name, d->block_codes);
            return 0;
        }
        if (qd_dtype_size(w->dtype) != (size_t)d->word_bytes || w->dtype == QD_F16 || w->dtype == QD_BF16) {
            snprintf(why, n, "a packed %s weight is stored as %d-byte integer words, not %s", d->name,
                     d->word_bytes, qd_dtype_name(w->dtype));
            return 0;
        }
        int shape_ok = w->numel == words &&
                       (w->ndim == 1 || (w->ndim == 2 && w->shape[1] == d->block_words));
        if (!shape_ok) {
            char have[160];
            fmt_shape(have, sizeof have, w->ndim, w->shape);
            snprintf(why, n, "packed %s weight has shape %s, expected [%lld] or [%lld, %d] (%lld codes in blocks of %d)",
                     d->name, have, (long long)words, (long long)(words / d->block_words), d->block_words,
                     (long long)codes, d->block_codes);
            return 0;
        }
        return 1;
    }
    /* raw codes: the exact type matters for native types (sign); custom 8/16-bit floats are bit patterns */
    int type_ok = d->custom ? qd_dtype_size(w->dtype) == qd_dtype_size(d->storage) && !is_float_dtype(w->dtype)
                            : w->dtype == d->storage;
    if (!type_ok) {
        snprintf(why, n, "%s weight codes are stored as %s, not %s", d->name, qd_dtype_name(d->storage), qd_dtype_name(w->dtype));
        return 0;
    }
    char have[160];
    fmt_shape(have, sizeof have, w->ndim, w->shape);
    if (w->numel != codes) {
        snprintf(why, n, "weight has shape %s (%lld elements), expected %lld x %lld", have, (long long)w->numel,
                 (long long)l->out, (long long)l->cols);
        return 0;
    }
    int orient_ok = l->transposed ? w->ndim == 2 && w->shape[0] == l->cols && w->shape[1] == l->out
                                  : w->shape[0] == l->out;
    if (!orient_ok) {
        snprintf(why, n, "weight has shape %s, expected %s", have, l->transposed ? "[in, out] (stored for quantized matmul)" : "[out, ...]");
        return 0;
    }
    return 1;
}

static qd_status fail_layer(qd_ctx *ctx, const qd_sdnq_layout *l, const char *what) {
    return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s' (%s, %lld x %lld): %s", l->param, l->dtype.name,
                   (long long)l->out, (long long)l->cols, what);
}

/* Could the weight be stored in this orientation? Packed streams are flat and never transposed. */
static int orientation_ok(const qd_sdnq_layout *l, const qd_st_tensor *w) {
    if (!l->transposed) return l->dtype.packed || w->shape[0] == l->out;
    return !l->dtype.custom && !l->codebook && w->ndim == 2 && w->shape[0] == l->cols && w->shape[1] == l->out;
}

/* Pick the grouping and orientation the scale (and weight) shapes say, the derived one first. */
static qd_status match_scale(qd_ctx *ctx, qd_sdnq_layout *l, const qd_st_tensor *scale, const qd_st_tensor *w) {
    qd_sdnq_layout cand[6], c;
    int n = 0;
    cand[n++] = *l;
    if (scale->ndim >= 2 && scale->shape[0] == l->out && scale->shape[1] > 1 && scale->shape[1] <= l->in &&
        l->in % scale->shape[1] == 0) {   /* grouped with the G the scale shows */
        c = *l;
        c.grouping = QD_SDNQ_GROUPED;
        c.groups = scale->shape[1];
        c.group_size = l->in / c.groups;
        c.transposed = 0;
        cand[n++] = c;
    }
    c = *l;
    c.grouping = QD_SDNQ_ROWWISE;
    c.groups = 1;
    c.group_size = l->in;
    for (int t = 0; t < 2; t++) { c.transposed = t; cand[n++] = c; }
    c.grouping = QD_SDNQ_TENSORWISE;
    for (int t = 0; t < 2; t++) { c.transposed = t ? !l->transposed : l->transposed; cand[n++] = c; }
    for (int i = 0; i < n; i++) {
        if (!scale_fits(&cand[i], scale) || !orientation_ok(&cand[i], w)) continue;
        if (i > 0) {
            cand[i].adjusted = 1;
            cand[i].requant = l->requant || cand[i].groups > 1;
        }
        *l = cand[i];
        return QD_OK;
    }
    char have[160], want[160], msg[512];
    int64_t s[QD_MAX_DIMS + 2];
    fmt_shape(have, sizeof have, scale->ndim, scale->shape);
    fmt_shape(want, sizeof want, qd_sdnq_scale_shape(l, s), s);
    snprintf(msg, sizeof msg, "%s has shape %s, which fits no %s layout (expected %s)", l->codebook ? "codebook scale" : "scale",
             have, l->codebook ? "codebook" : "grouped, row-wise, transposed or tensor-wise", want);
    return fail_layer(ctx, l, msg);
}

static qd_status check_svd(qd_ctx *ctx, qd_sdnq_layout *l, const qd_st_tensor *up, const qd_st_tensor *down) {
    if (!up && !down) {
        if (l->svd) l->adjusted = 1;   /* sdnq drops SVD silently when it fails (§1.10) */
        l->svd = 0;
        return QD_OK;
    }
    if (!up || !down) return fail_layer(ctx, l, up ? "has svd_up but no svd_down" : "has svd_down but no svd_up");
    if (!is_float_dtype(up->dtype) || !is_float_dtype(down->dtype))
        return fail_layer(ctx, l, "svd_up/svd_down must be float tensors");
    int plain = 0, trans = 0;
    if (up->ndim == 2 && down->ndim == 2) {
        plain = up->shape[0] == l->out && down->shape[1] == l->cols && up->shape[1] == down->shape[0] && up->shape[1] > 0;
        trans = up->shape[1] == l->out && down->shape[0] == l->cols && up->shape[0] == down->shape[1] && up->shape[0] > 0;
    }
    if (!plain && !trans) {
        char a[160], b[160], msg[512];
        fmt_shape(a, sizeof a, up->ndim, up->shape);
        fmt_shape(b, sizeof b, down->ndim, down->shape);
        snprintf(msg, sizeof msg, "svd_up %s and svd_down %s fit neither [%lld, r] x [r, %lld] nor the quantized-matmul "
                 "orientation [r, %lld] x [%lld, r]", a, b, (long long)l->out, (long long)l->cols, (long long)l->out,
                 (long long)l->cols);
        return fail_layer(ctx, l, msg);
    }
    int use_trans = plain && trans ? l->svd_transposed : trans;
    if (!l->svd || use_trans != l->svd_transposed) l->adjusted = 1;
    l->svd = 1;
    l->svd_transposed = use_trans;
    l->svd_rank = use_trans ? up->shape[0] : up->shape[1];
    return QD_OK;
}

qd_status qd_sdnq_layout_check(qd_ctx *ctx, qd_sdnq_layout *l, const qd_sdnq_tensors *t) {
    char why[512];
    if (!t->weight) return fail_layer(ctx, l, "has a scale but no weight tensor");
    if (!t->scale) return fail_layer(ctx, l, "has no scale tensor");
    if (!is_float_dtype(t->scale->dtype)) {
        snprintf(why, sizeof why, "scale has dtype %s, expected a float type", qd_dtype_name(t->scale->dtype));
        return fail_layer(ctx, l, why);
    }
    if (l->codebook && l->dtype.bits > 16) return fail_layer(ctx, l, "a codebook needs at most 16-bit codes");
    QD_TRY(match_scale(ctx, l, t->scale, t->weight));
    if (!weight_fits(l, t->weight, why, sizeof why)) return fail_layer(ctx, l, why);

    if (t->zero_point) {
        if (l->codebook) return fail_layer(ctx, l, "a codebook layer has no zero_point");
        if (!is_float_dtype(t->zero_point->dtype)) return fail_layer(ctx, l, "zero_point must be a float tensor");
        if (!shape_eq(t->zero_point, t->scale->ndim, t->scale->shape)) return fail_layer(ctx, l, "zero_point and scale differ in shape");
        if (!l->zero_point) l->adjusted = 1;
        l->zero_point = 1;
    } else if (l->zero_point) {
        snprintf(why, sizeof why, "an unsigned %s layer needs a zero_point tensor", l->dtype.name);
        return fail_layer(ctx, l, why);
    }
    QD_TRY(check_svd(ctx, l, t->svd_up, t->svd_down));
    if (l->codebook && l->cls == QD_SDNQ_CONV && l->ksize > 1)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "layer '%s': codebook Conv layers are not supported", l->param);
    return QD_OK;
}
