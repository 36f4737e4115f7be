/* TAESD family, after taesd.py (madebyollin/taesd, MIT) and diffusers'
 * AutoencoderTiny: Encoder / Decoder / F32Encoder / F32Decoder as nn.Sequential
 * layer lists, Block = conv-relu-conv-relu-conv + skip, then relu, optionally
 * preceded by x += pool(x) with pool = 1x1 conv (n -> 4n) - GroupNorm(4) - relu
 * - 1x1 conv (4n -> n) (the FLUX.2 "midblock" variant).
 *
 * The layer list of each variant is written out below (spec_*), indexed exactly
 * as the nn.Sequential, so a tensor name maps to a layer by its index; every
 * tensor's shape is checked against the spec before use. */
#include "models/taesd.h"
#include "tensor/ops.h"
#include "tensor/weight.h"
#include "tensor/conv_up2x.h"
#include "base/threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LAYERS 40
#define POOL_GROUPS 4           /* nn.GroupNorm(4, n_gn) */
#define POOL_EPS 1e-5f          /* nn.GroupNorm's default eps */

typedef enum { L_CLAMP, L_RELU, L_UP, L_CONV, L_BLOCK } ltype;
typedef struct { ltype type; int cin, cout, stride, bias; } lspec;

typedef struct {
    qd_weight w;
    float *b;
    int64_t cin, cout;
    int k, stride;
    float *wf;                  /* float copy for the direct path (3x3 convs with few outputs) */
} tconv;

#define DIRECT_MAX_COUT 4       /* the decoder's last conv (64 -> 3) at full resolution */

typedef struct {
    ltype type;
    tconv conv;                 /* L_CONV */
    /* L_CONV right after an Upsample: the 3x3 conv folded into four 2x2 phase convs
     * (tensor/conv_up2x.h), once at load; weights owned by the model */
    int phased;
    qd_up2x_conv up;
    tconv c[3], skip;           /* L_BLOCK: conv.0, conv.2, conv.4, skip (1x1, when cin != cout) */
    int has_skip, has_pool;
    tconv pool_in, pool_out;    /* pool.0, pool.3 */
    float *gn_w, *gn_b;         /* pool.1 */
} layer;

typedef struct { layer l[MAX_LAYERS]; int n, present; int64_t max_ch; } coder;

struct qd_taesd {
    qd_taesd_info info;
    coder enc, dec;
    void **owned;               /* float copies of biases and norm scales */
    int n_owned, cap_owned;
};

/* ---- the variants, as taesd.py writes them ------------------------------------ */

static lspec CONV(int cin, int cout, int stride, int bias) { lspec s = {L_CONV, cin, cout, stride, bias}; return s; }
static lspec BLOCK(int c) { lspec s = {L_BLOCK, c, c, 1, 1}; return s; }
static lspec OP(ltype t) { lspec s = {t, 0, 0, 1, 0}; return s; }

/* Encoder: conv(3,64), Block, then 3 x (stride-2 conv, 3 Blocks), conv(64,C).
 * F32Encoder starts with two stride-2 convs (3->32->64, relu after each). */
static int spec_encoder(lspec *s, int f32, int C) {
    int n = 0;
    if (f32) {
        s[n++] = CONV(3, 32, 2, 1); s[n++] = OP(L_RELU);
        s[n++] = CONV(32, 64, 2, 1); s[n++] = OP(L_RELU);
    } else {
        s[n++] = CONV(3, 64, 1, 1);
    }
    s[n++] = BLOCK(64);
    for (int i = 0; i < 3; i++) {
        s[n++] = CONV(64, 64, 2, 0);
        for (int j = 0; j < 3; j++) s[n++] = BLOCK(64);
    }
    s[n++] = CONV(64, C, 1, 1);
    return n;
}

/* Decoder: Clamp, conv(C, ch0), ReLU, then per stage 3 Blocks, Upsample(2x),
 * conv without bias; a last Block and conv(64, 3). */
static int spec_decoder(lspec *s, int f32, int C) {
    static const int ch8[] = {64, 64, 64, 64}, ch32[] = {256, 128, 64, 64, 64, 64};
    const int *ch = f32 ? ch32 : ch8;
    int stages = f32 ? 5 : 3, n = 0;
    s[n++] = OP(L_CLAMP);
    s[n++] = CONV(C, ch[0], 1, 1);
    s[n++] = OP(L_RELU);
    for (int i = 0; i < stages; i++) {
        for (int j = 0; j < 3; j++) s[n++] = BLOCK(ch[i]);
        s[n++] = OP(L_UP);
        s[n++] = CONV(ch[i], ch[i + 1], 1, 0);
    }
    s[n++] = BLOCK(64);
    s[n++] = CONV(64, 3, 1, 1);
    return n;
}

/* ---- loading ------------------------------------------------------------------ */

typedef struct { const char *prefix; int offset; } naming;   /* key index = layer index - offset */
static const naming ENC_NAMES[] = {{"", 0}, {"encoder.layers.", 0}, {"taesd_encoder.", 0}};
static const naming DEC_NAMES[] = {{"", 0}, {"decoder.layers.", 1}, {"taesd_decoder.", 0}};

typedef struct {
    qd_ctx *ctx;
    qd_taesd *t;
    qd_st_set view;             /* lookup only: never closed */
    const char *file, *what;    /* "encoder" / "decoder" */
    naming nm;
} loader;

static void key(char *buf, size_t n, const loader *ld, int idx, const char *rest) {
    snprintf(buf, n, "%s%d.%s", ld->nm.prefix, idx - ld->nm.offset, rest);
}

static const qd_st_tensor *find(const loader *ld, int idx, const char *rest) {
    char name[256];
    key(name, sizeof name, ld, idx, rest);
    return qd_st_find(&ld->view, name);
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *s) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)s[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static qd_status get(const loader *ld, int idx, const char *rest, int ndim, const int64_t *shape,
                     const qd_st_tensor **out) {
    char name[256], want[96], got[96];
    key(name, sizeof name, ld, idx, rest);
    const qd_st_tensor *t = qd_st_find(&ld->view, name);
    fmt_shape(want, sizeof want, ndim, shape);
    if (!t)
        return qd_fail(ld->ctx, QD_ERR_FORMAT, "%s: TAESD %s: tensor '%s' %s is missing", ld->file, ld->what, name, want);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        fmt_shape(got, sizeof got, t->ndim, t->shape);
        return qd_fail(ld->ctx, QD_ERR_FORMAT, "%s: TAESD %s: tensor '%s' has shape %s, expected %s",
                       ld->file, ld->what, name, got, want);
    }
    if (t->dtype != QD_F32 && t->dtype != QD_F16 && t->dtype != QD_BF16 && t->dtype != QD_F64)
        return qd_fail(ld->ctx, QD_ERR_FORMAT, "%s: TAESD %s: tensor '%s' has dtype %s, expected a float type",
                       ld->file, ld->what, name, qd_dtype_name(t->dtype));
    *out = t;
    return QD_OK;
}

static float *own(qd_taesd *t, int64_t n) {
    if (t->n_owned == t->cap_owned) {
        int cap = t->cap_owned ? 2 * t->cap_owned : 64;
        void **o = realloc(t->owned, sizeof(void *) * (size_t)cap);
        if (!o) return NULL;
        t->owned = o;
        t->cap_owned = cap;
    }
    float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (f) t->owned[t->n_owned++] = f;
    return f;
}

static qd_status get_floats(const loader *ld, int idx, const char *rest, int64_t n, float **out) {
    const qd_st_tensor *t;
    QD_TRY(get(ld, idx, rest, 1, &n, &t));
    if (!(*out = own(ld->t, n))) return qd_fail(ld->ctx, QD_ERR_NOMEM, "out of memory");
    qd_st_to_f32(t, 0, n, *out);
    return QD_OK;
}

/* "<idx>.<sub>weight" [cout, cin, k, k] and, with bias, "<idx>.<sub>bias" [cout]. */
static qd_status load_conv(const loader *ld, tconv *c, int idx, const char *sub, int64_t cout, int64_t cin,
                           int k, int stride, int bias) {
    char rest[64];
    int64_t shape[4] = {cout, cin, k, k};
    const qd_st_tensor *t;
    snprintf(rest, sizeof rest, "%sweight", sub);
    QD_TRY(get(ld, idx, rest, 4, shape, &t));
    qd_weight_dense(&c->w, t, cout, cin * k * k);
    c->cin = cin;
    c->cout = cout;
    c->k = k;
    c->stride = stride;
    c->b = NULL;
    c->wf = NULL;
    if (k == 3 && stride == 1 && cout <= DIRECT_MAX_COUT) {
        if (!(c->wf = own(ld->t, cout * cin * 9))) return qd_fail(ld->ctx, QD_ERR_NOMEM, "out of memory");
        qd_st_to_f32(t, 0, cout * cin * 9, c->wf);
    }
    snprintf(rest, sizeof rest, "%sbias", sub);
    if (bias) QD_TRY(get_floats(ld, idx, rest, cout, &c->b));
    else if (find(ld, idx, rest)) {
        char name[256];
        key(name, sizeof name, ld, idx, rest);
        return qd_fail(ld->ctx, QD_ERR_FORMAT, "%s: TAESD %s: unexpected tensor '%s' (this conv has no bias)",
                       ld->file, ld->what, name);
    }
    return QD_OK;
}

static qd_status load_block(const loader *ld, layer *L, int idx, int64_t cin, int64_t cout) {
    QD_TRY(load_conv(ld, &L->c[0], idx, "conv.0.", cout, cin, 3, 1, 1));
    QD_TRY(load_conv(ld, &L->c[1], idx, "conv.2.", cout, cout, 3, 1, 1));
    QD_TRY(load_conv(ld, &L->c[2], idx, "conv.4.", cout, cout, 3, 1, 1));
    L->has_skip = cin != cout;
    if (L->has_skip) QD_TRY(load_conv(ld, &L->skip, idx, "skip.", cout, cin, 1, 1, 0));
    /* the pool is present in some blocks only: its tensors say which */
    L->has_pool = find(ld, idx, "pool.0.weight") != NULL;
    if (L->has_pool) {
        int64_t n = cin * 4;
        QD_TRY(load_conv(ld, &L->pool_in, idx, "pool.0.", n, cin, 1, 1, 0));
        QD_TRY(get_floats(ld, idx, "pool.1.weight", n, &L->gn_w));
        QD_TRY(get_floats(ld, idx, "pool.1.bias", n, &L->gn_b));
        QD_TRY(load_conv(ld, &L->pool_out, idx, "pool.3.", cin, n, 1, 1, 0));
    }
    return QD_OK;
}

/* Fold the conv after an Upsample into its four phase convs (tensor/conv_up2x.h). */
static qd_status fold_phases(const loader *ld, layer *L) {
    const tconv *c = &L->conv;
    int64_t C = c->cout, Ci = c->cin;
    float *w9 = malloc(sizeof(float) * (size_t)(C * Ci * 9)), *w4 = own(ld->t, 4 * C * Ci * 4);
    if (!w9 || !w4) { free(w9); return qd_fail(ld->ctx, QD_ERR_NOMEM, "out of memory"); }
    qd_up2x_fold(&c->w, C, Ci, w9, w4, ld->file, &L->up);
    free(w9);
    L->phased = 1;
    return QD_OK;
}

static qd_status load_coder(const loader *ld, coder *cd, const lspec *s, int n) {
    cd->n = n;
    cd->max_ch = 3;
    for (int i = 0; i < n; i++) {
        layer *L = &cd->l[i];
        memset(L, 0, sizeof *L);
        L->type = s[i].type;
        if (s[i].type == L_CONV) QD_TRY(load_conv(ld, &L->conv, i, "", s[i].cout, s[i].cin, 3, s[i].stride, s[i].bias));
        if (s[i].type == L_CONV && i > 0 && s[i - 1].type == L_UP && s[i].stride == 1) QD_TRY(fold_phases(ld, L));
        else if (s[i].type == L_BLOCK) QD_TRY(load_block(ld, L, i, s[i].cin, s[i].cout));
        int64_t c = s[i].cout * (L->has_pool ? 4 : 1);
        if (c > cd->max_ch) cd->max_ch = c;
    }
    cd->present = 1;
    return QD_OK;
}

qd_taesd *qd_taesd_new(qd_ctx *ctx) {
    qd_taesd *t = qd_calloc(ctx, 1, sizeof *t);
    if (t) t->info.variant = "tiny autoencoder";
    return t;
}

void qd_taesd_free(qd_taesd *t) {
    if (!t) return;
    for (int i = 0; i < t->n_owned; i++) free(t->owned[i]);
    free(t->owned);
    free(t);
}

const qd_taesd_info *qd_taesd_get_info(const qd_taesd *t) { return &t->info; }

static int count_pools(const coder *cd) {
    int n = 0;
    for (int i = 0; i < cd->n; i++) n += cd->l[i].type == L_BLOCK && cd->l[i].has_pool;
    return n;
}

/* Latent channels and 8x/32x from the first (decoder: second) conv's shape. */
static qd_status add_coder(loader *ld, int is_enc, const naming *nm) {
    qd_taesd *t = ld->t;
    ld->nm = *nm;
    ld->what = is_enc ? "encoder" : "decoder";
    coder *cd = is_enc ? &t->enc : &t->dec;
    if (cd->present)
        return qd_fail(ld->ctx, QD_ERR_ARG, "%s: a TAESD %s was already loaded from another file", ld->file, ld->what);
    const qd_st_tensor *first = find(ld, is_enc ? 0 : 1, "weight");
    int f32, C;
    if (first->ndim != 4 || first->shape[2] != 3 || first->shape[3] != 3)
        goto unsupported;
    if (is_enc) {
        if (first->shape[1] != 3 || (first->shape[0] != 64 && first->shape[0] != 32)) goto unsupported;
        f32 = first->shape[0] == 32;
        const qd_st_tensor *last = find(ld, f32 ? 17 : 14, "weight");
        if (!last || last->ndim != 4 || last->shape[0] < 1 || last->shape[0] > 4096) goto unsupported;
        C = (int)last->shape[0];
    } else {
        if ((first->shape[0] != 64 && first->shape[0] != 256) || first->shape[1] < 1 || first->shape[1] > 4096)
            goto unsupported;
        f32 = first->shape[0] == 256;
        C = (int)first->shape[1];
    }
    int f = f32 ? 32 : 8;
    if (t->info.latent_channels && (t->info.latent_channels != C || t->info.downscale != f))
        return qd_fail(ld->ctx, QD_ERR_FORMAT,
                       "%s: TAESD %s has %d latent channels at %dx, but the other half has %d at %dx: not a pair",
                       ld->file, ld->what, C, f, t->info.latent_channels, t->info.downscale);
    lspec s[MAX_LAYERS];
    int n = is_enc ? spec_encoder(s, f32, C) : spec_decoder(s, f32, C);
    QD_TRY(load_coder(ld, cd, s, n));
    t->info.latent_channels = C;
    t->info.downscale = f;
    if (is_enc) t->info.has_encoder = 1; else t->info.has_decoder = 1;
    int pools = count_pools(cd);
    if (pools > t->info.pool_blocks) t->info.pool_blocks = pools;
    t->info.variant = f32 ? "taesana" : C == 4 ? "taesd/taesdxl" : C == 16 ? "taesd3/taef1"
                    : C == 32 && t->info.pool_blocks ? "taef2" : "tiny autoencoder";
    return QD_OK;
unsupported: {
        char got[96], name[256];
        fmt_shape(got, sizeof got, first->ndim, first->shape);
        key(name, sizeof name, ld, is_enc ? 0 : 1, "weight");
        return qd_fail(ld->ctx, QD_ERR_UNSUPPORTED,
                       "%s: unsupported TAESD %s layout: '%s' is %s (known: taesd, taesdxl, taesd3, taef1, taef2, taesana)",
                       ld->file, ld->what, name, got);
    }
}

qd_status qd_taesd_add(qd_ctx *ctx, qd_taesd *t, const qd_st_tensor *tensors, int64_t n, const char *file) {
    loader ld = {ctx, t, {NULL, 0, (qd_st_tensor *)tensors, n}, file, "", {"", 0}};
    int found = 0;
    for (int enc = 1; enc >= 0; enc--) {
        const naming *names = enc ? ENC_NAMES : DEC_NAMES;
        for (int i = 0; i < 3; i++) {
            ld.nm = names[i];
            if (!find(&ld, enc ? 0 : 1, "weight")) continue;
            QD_TRY(add_coder(&ld, enc, &names[i]));
            found = 1;
            break;
        }
    }
    if (!found)
        return qd_fail(ctx, QD_ERR_FORMAT,
                       "%s: no TAESD encoder or decoder weights (expected '0.weight' or '1.weight' as taesd.py "
                       "saves them, or 'encoder.layers.0.weight' / 'decoder.layers.0.weight')", file);
    return QD_OK;
}

/* ---- forward ------------------------------------------------------------------ */

static float *act(qd_ctx *ctx, int64_t n) { return qd_malloc_aligned(ctx, sizeof(float) * (size_t)n); }

enum { EW_RELU, EW_CLAMP, EW_ADD };
typedef struct { int op; float *y; const float *x; } ew_args;

static void ew_part(void *arg, int64_t b, int64_t e, int thread) {
    const ew_args *a = arg;
    float *y = a->y;
    switch (a->op) {
    case EW_RELU: for (int64_t i = b; i < e; i++) y[i] = y[i] > 0.0f ? y[i] : 0.0f; break;
    case EW_CLAMP: for (int64_t i = b; i < e; i++) y[i] = tanhf(y[i] / 3.0f) * 3.0f; break;
    default: for (int64_t i = b; i < e; i++) y[i] += a->x[i]; break;
    }
}

/* Elementwise in place, on the context's threads (these run at full resolution). */
static void ew(qd_ctx *ctx, int op, float *y, const float *x, int64_t n) {
    ew_args a = {op, y, x};
    qd_parallel_for(ctx, n, ew_part, &a);
}

typedef struct { const tconv *c; const float *x; float *y; int64_t H, W; } direct_args;

/* Rows [b, e) of all images (row r = image r / H, row r % H): each output row is
 * accumulated over input channels and taps in an L1-sized buffer. */
static void direct_part(void *arg, int64_t b, int64_t e, int thread) {
    const direct_args *a = arg;
    const tconv *c = a->c;
    int64_t H = a->H, W = a->W, Ci = c->cin, Co = c->cout;
    float acc[DIRECT_MAX_COUT][1024];
    for (int64_t r = b; r < e; r++) {
        int64_t img = r / H, oy = r % H;
        for (int64_t x0 = 0; x0 < W; x0 += 1024) {
            int64_t n = W - x0 < 1024 ? W - x0 : 1024;
            for (int64_t o = 0; o < Co; o++)
                for (int64_t j = 0; j < n; j++) acc[o][j] = c->b ? c->b[o] : 0.0f;
            for (int64_t ci = 0; ci < Ci; ci++)
                for (int ky = 0; ky < 3; ky++) {
                    int64_t iy = oy + ky - 1;
                    if (iy < 0 || iy >= H) continue;
                    const float *xr = a->x + ((img * Ci + ci) * H + iy) * W;
                    for (int kx = 0; kx < 3; kx++)
                        for (int64_t o = 0; o < Co; o++) {
                            float w = c->wf[((o * Ci + ci) * 3 + ky) * 3 + kx];
                            /* output column x reads input column x + kx - 1 (zero outside) */
                            int64_t lo = x0 + kx - 1 < 0 ? 1 : 0;
                            int64_t hi = x0 + n + kx - 1 > W ? n - 1 : n;
                            const float *xs = xr + x0 + kx - 1;
                            float *ac = acc[o];
                            for (int64_t j = lo; j < hi; j++) ac[j] += w * xs[j];
                        }
                }
            for (int64_t o = 0; o < Co; o++)
                memcpy(a->y + ((img * Co + o) * H + oy) * W + x0, acc[o], sizeof(float) * (size_t)n);
        }
    }
}

static void conv(qd_ctx *ctx, const tconv *c, const float *x, int64_t B, int64_t H, int64_t W, float *y) {
    if (c->wf) {   /* few outputs: a GEMM with M <= 4 wastes most of its tile, so convolve directly */
        direct_args a = {c, x, y, H, W};
        qd_parallel_for(ctx, B * H, direct_part, &a);
        return;
    }
    qd_conv2d(ctx, x, B, c->cin, H, W, &c->w, c->b, c->k, c->k, c->stride, c->k / 2, y);
}

/* Block.forward: x += pool(x) (if any); relu(conv(x) + skip(x)). Takes *x, returns a new buffer. */
static qd_status block_fwd(qd_ctx *ctx, const layer *L, float **px, int64_t B, int64_t H, int64_t W) {
    int64_t S = H * W, n = L->c[0].cin, m = L->c[0].cout;
    float *x = *px, *a = NULL, *b = NULL;
    if (L->has_pool) {
        float *t = act(ctx, B * 4 * n * S), *p = t ? act(ctx, B * n * S) : NULL;
        if (!p) { free(t); return QD_ERR_NOMEM; }
        conv(ctx, &L->pool_in, x, B, H, W, t);
        qd_group_norm(ctx, t, B, 4 * n, S, POOL_GROUPS, POOL_EPS, L->gn_w, L->gn_b, 0, t);
        ew(ctx, EW_RELU, t, NULL, B * 4 * n * S);
        conv(ctx, &L->pool_out, t, B, H, W, p);
        free(t);
        ew(ctx, EW_ADD, x, p, B * n * S);
        free(p);
    }
    if (!(a = act(ctx, B * m * S)) || !(b = act(ctx, B * m * S))) { free(a); return QD_ERR_NOMEM; }
    conv(ctx, &L->c[0], x, B, H, W, a);
    ew(ctx, EW_RELU, a, NULL, B * m * S);
    conv(ctx, &L->c[1], a, B, H, W, b);
    ew(ctx, EW_RELU, b, NULL, B * m * S);
    conv(ctx, &L->c[2], b, B, H, W, a);
    if (L->has_skip) {
        conv(ctx, &L->skip, x, B, H, W, b);
        ew(ctx, EW_ADD, a, b, B * m * S);
    } else {
        ew(ctx, EW_ADD, a, x, B * m * S);
    }
    ew(ctx, EW_RELU, a, NULL, B * m * S);
    free(b);
    free(x);
    *px = a;
    return QD_OK;
}

/* Upsample(2x) + the phased conv L: x [B, Ci, H, W] -> [B, Co, 2H, 2W]. Takes *x. */
static qd_status up_conv_fwd(qd_ctx *ctx, const layer *L, float **px, int64_t B, int64_t H, int64_t W) {
    int64_t C = L->conv.cout;
    float *ph = act(ctx, B * C * H * W), *y = ph ? act(ctx, B * C * 4 * H * W) : NULL;
    if (!y) { free(ph); return QD_ERR_NOMEM; }
    qd_up2x_conv_run(ctx, &L->up, *px, B, H, W, L->conv.b, ph, y);
    free(ph);
    free(*px);
    *px = y;
    return QD_OK;
}

/* Run the layer list on x [B, C, H, W] (a copy of the input, owned); the result
 * replaces it. C, H, W follow the layers. */
static qd_status run(qd_ctx *ctx, const coder *cd, float **px, int64_t B, int64_t *pC, int64_t *pH, int64_t *pW) {
    int64_t C = *pC, H = *pH, W = *pW;
    for (int i = 0; i < cd->n; i++) {
        if (__atomic_load_n(&ctx->cancel, __ATOMIC_RELAXED)) return qd_fail(ctx, QD_ERR_CANCELLED, "cancelled");
        const layer *L = &cd->l[i];
        float *x = *px, *y;
        switch (L->type) {
        case L_CLAMP: ew(ctx, EW_CLAMP, x, NULL, B * C * H * W); break;
        case L_RELU: ew(ctx, EW_RELU, x, NULL, B * C * H * W); break;
        case L_UP:
            if (i + 1 < cd->n && cd->l[i + 1].phased) {   /* fused with the conv after it */
                QD_TRY(up_conv_fwd(ctx, &cd->l[i + 1], px, B, H, W));
                C = cd->l[i + 1].conv.cout;
                H *= 2;
                W *= 2;
                i++;
                break;
            }
            if (!(y = act(ctx, B * C * 4 * H * W))) return QD_ERR_NOMEM;
            qd_upsample_nearest2x(ctx, x, B * C, H, W, y);
            free(x);
            *px = y;
            H *= 2;
            W *= 2;
            break;
        case L_CONV: {
            int s = L->conv.stride;
            int64_t Ho = (H + 2 - 3) / s + 1, Wo = (W + 2 - 3) / s + 1;
            if (!(y = act(ctx, B * L->conv.cout * Ho * Wo))) return QD_ERR_NOMEM;
            conv(ctx, &L->conv, x, B, H, W, y);
            free(x);
            *px = y;
            C = L->conv.cout;
            H = Ho;
            W = Wo;
            break;
        }
        case L_BLOCK:
            QD_TRY(block_fwd(ctx, L, px, B, H, W));
            C = L->c[0].cout;
            break;
        }
    }
    *pC = C;
    *pH = H;
    *pW = W;
    return QD_OK;
}

/* Reject sizes whose largest activation would not fit in memory or in int64 math. */
static qd_status check_size(qd_ctx *ctx, const char *what, int64_t B, int64_t H, int64_t W, int64_t ch) {
    double elems = (double)B * (double)H * (double)W * (double)ch;
    if (!(elems < 1e13))
        return qd_fail(ctx, QD_ERR_ARG, "TAESD %s: size %lld x %lld x %lld is too large", what,
                       (long long)B, (long long)H, (long long)W);
    return QD_OK;
}

static qd_status forward(qd_ctx *ctx, const coder *cd, const float *in, int64_t B, int64_t C, int64_t H, int64_t W,
                         float *out, int64_t want_c, int64_t want_h, int64_t want_w) {
    float *x = act(ctx, B * C * H * W);
    if (!x) return QD_ERR_NOMEM;
    memcpy(x, in, sizeof(float) * (size_t)(B * C * H * W));
    qd_status st = run(ctx, cd, &x, B, &C, &H, &W);
    if (st == QD_OK && (C != want_c || H != want_h || W != want_w))   /* the spec guarantees it; be sure */
        st = qd_fail(ctx, QD_ERR_FORMAT, "TAESD: output %lld x %lld x %lld, expected %lld x %lld x %lld",
                     (long long)C, (long long)H, (long long)W, (long long)want_c, (long long)want_h, (long long)want_w);
    if (st == QD_OK) memcpy(out, x, sizeof(float) * (size_t)(B * C * H * W));
    free(x);
    return st;
}

qd_status qd_taesd_encode(qd_ctx *ctx, qd_taesd *t, const float *img, int64_t B, int64_t H, int64_t W,
                          float *latent) {
    int f = t ? t->info.downscale : 8;
    if (!t || !img || !latent || B < 1 || H < f || W < f || H % f || W % f)
        return qd_fail(ctx, QD_ERR_ARG, "TAESD encode: bad arguments (batch %lld, image %lld x %lld; sides must be "
                       "positive multiples of %d)", (long long)B, (long long)H, (long long)W, f);
    if (!t->enc.present) return qd_fail(ctx, QD_ERR_ARG, "TAESD encode: no encoder weights were loaded");
    QD_TRY(check_size(ctx, "encode", B, H, W, t->enc.max_ch));
    return forward(ctx, &t->enc, img, B, 3, H, W, latent, t->info.latent_channels, H / f, W / f);
}

qd_status qd_taesd_decode(qd_ctx *ctx, qd_taesd *t, const float *latent, int64_t B, int64_t h, int64_t w,
                          float *img) {
    if (!t || !latent || !img || B < 1 || h < 1 || w < 1)
        return qd_fail(ctx, QD_ERR_ARG, "TAESD decode: bad arguments (batch %lld, latent %lld x %lld)",
                       (long long)B, (long long)h, (long long)w);
    if (!t->dec.present) return qd_fail(ctx, QD_ERR_ARG, "TAESD decode: no decoder weights were loaded");
    int f = t->info.downscale;
    if (h > INT32_MAX / f || w > INT32_MAX / f) return qd_fail(ctx, QD_ERR_ARG, "TAESD decode: latent too large");
    QD_TRY(check_size(ctx, "decode", B, h * f, w * f, t->dec.max_ch));
    return forward(ctx, &t->dec, latent, B, t->info.latent_channels, h, w, img, 3, h * f, w * f);
}
