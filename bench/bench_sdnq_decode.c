/* What one weight element costs to decode and pack into the GEMM's bf16 panels, per
 * SDNQ layout, against a dense fp16 weight (the packers of src/tensor/gemm_pack.c over
 * a whole layer, both roles: B = a linear's weight, A = a convolution's weight).
 *
 *   bench_sdnq_decode [--out 320] [--in 320] [--reps 5] [--lowrank [--threads 1] [--filter SHAPE]]
 *
 * --lowrank: instead, whole uint4+SVD convs and linears of SD1.5's shapes with the SVD term
 * folded into the tiles vs as a side GEMM on the activations (tensor/gemm_lowrank.c), and
 * the same shape with dense fp16 weights; --threads N > 1 times wall clock; --filter runs the
 * shapes whose name contains SHAPE, --col only one column (0 fp16 .. 4 auto; the others print 0).
 *
 * Layers (synthetic codes and scales; the values do not change the speed): SD1.5's
 * 3x3 conv shape [out, in, 3, 3] and a linear [out, in*9], as fp16, int8 row-wise,
 * uint4 grouped (group 64) with zero points, the same + SVD rank 32
 * (bf16 SVD products: the bf16 GEMM's decode), and the scalar reference decode. Time:
 * the calling thread's CPU time (not lowered by other processes' time slices), best of
 * --reps, per element of the layer. */
#include "quant/sdnq_weight.h"
#include "quant/sdnq_decode_fast.h"
#include "tensor/gemm_internal.h"
#include "tensor/weight.h"
#include "tensor/conv.h"
#include "tensor/gemm.h"
#include "qdiff.h"
#include "base/half.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void dec(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *d, int64_t ld) {
    qd_sdnq_decode(w->quant, r0, nr, k0, nk, d, ld);
}
static void dec_lowp(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *d, int64_t ld) {
    if (!qd_sdnq_decode_fast_lowp(w->quant, r0, nr, k0, nk, d, ld)) qd_sdnq_decode(w->quant, r0, nr, k0, nk, d, ld);
}
static int dec_base_bf16(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *d, int64_t ldw,
                         float alpha) {
    return qd_sdnq_decode_base_bf16(w->quant, r0, nr, k0, nk, d, ldw, alpha);
}
static void dec_scalar(const qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *d, int64_t ld) {
    qd_sdnq_decode_scalar(w->quant, r0, nr, k0, nk, d, ld);
}

typedef struct {
    qd_sdnq_state *s;
    uint8_t *codes;
    float *scale, *zp, *up, *down;
    uint32_t *upb, *downb;
} layer;

/* An SDNQ state by hand: dtype, [out, in, ks], groups (0 row-wise), zero points, SVD rank. */
static void make(layer *L, const char *dtype, int64_t out, int64_t in, int64_t ks, int64_t groups, int zp, int rank) {
    memset(L, 0, sizeof *L);
    qd_sdnq_state *s = calloc(1, sizeof *s);
    qd_sdnq_layout *l = &s->l;
    if (qd_sdnq_dtype_parse(dtype, &l->dtype)) die("dtype %s", dtype);
    l->out = out; l->in = in; l->ksize = ks; l->cols = in * ks;
    l->cls = ks > 1 ? QD_SDNQ_CONV : QD_SDNQ_LINEAR;
    l->grouping = groups > 0 ? QD_SDNQ_GROUPED : QD_SDNQ_ROWWISE;
    l->groups = groups > 0 ? groups : 1;
    l->group_size = in / l->groups;
    l->zero_point = zp;
    l->svd = rank > 0;
    l->svd_rank = rank;
    qd_sdnq_scale_strides(l, &s->so, &s->sg, &s->sp);
    int64_t n = out * l->cols, ns = out * l->groups * ks;
    rng g = {3};
    L->codes = xmalloc((size_t)n);
    for (int64_t i = 0; i < n; i++) L->codes[i] = (uint8_t)next64(&g);
    L->scale = xmalloc(sizeof(float) * (size_t)ns);
    L->zp = xmalloc(sizeof(float) * (size_t)ns);
    for (int64_t i = 0; i < ns; i++) { L->scale[i] = 0.01f; L->zp[i] = -0.1f; }
    s->codes = L->codes;
    s->scale = L->scale;
    s->zero_point = zp ? L->zp : NULL;
    if (rank) {
        int64_t rp = (rank + 1) / 2;
        L->up = xmalloc(sizeof(float) * (size_t)(out * rank));
        L->down = xmalloc(sizeof(float) * (size_t)(rank * l->cols));
        L->upb = xmalloc(sizeof(uint32_t) * (size_t)(out * rp));
        L->downb = xmalloc(sizeof(uint32_t) * (size_t)(rp * l->cols));
        for (int64_t i = 0; i < out * rank; i++) L->up[i] = 0.01f * gauss(&g);
        for (int64_t i = 0; i < rank * l->cols; i++) L->down[i] = 0.01f * gauss(&g);
        for (int64_t i = 0; i < out * rp; i++) L->upb[i] = 0x3c003c00u;
        for (int64_t i = 0; i < rp * l->cols; i++) L->downb[i] = 0x3c003c00u;
        s->svd_up = L->up; s->svd_down = L->down;
        s->svd_up_bf16 = L->upb; s->svd_down_bf16 = L->downb;
    }
    qd_sdnq_fast_init(s);
    L->s = s;
}

static void drop(layer *L) {
    free(L->s); free(L->codes); free(L->scale); free(L->zp); free(L->up); free(L->down); free(L->upb); free(L->downb);
}

/* ns per element to pack the whole weight as bf16 B strips (linear role) or A strips (conv role). */
static double pack_ns(const qd_weight *w, int as_a, int reps) {
    const int64_t kcmax = 2 * QD_GEMM_KCW;
    uint32_t *dst = aligned_alloc(64, sizeof(uint32_t) * 32 * (QD_GEMM_AST + QD_GEMM_KCW * 2));
    float *scratch = aligned_alloc(64, sizeof(float) * QD_GEMM_PACK_SCRATCH);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = thread_cpu_s();
        for (int64_t k0 = 0; k0 < w->cols; k0 += kcmax) {
            int64_t kc = w->cols - k0 < kcmax ? w->cols - k0 : kcmax;
            if (as_a)
                for (int64_t j = 0; j < w->rows; j += 14)
                    qd_gemm_pack_a(qd_wmat(w), j, w->rows - j < 14 ? w->rows - j : 14, k0, kc, 14, 1, 1.0f, dst, scratch);
            else
                for (int64_t j = 0; j < w->rows; j += 32)
                    qd_gemm_pack_b(qd_wmat(w), j, w->rows - j < 32 ? w->rows - j : 32, k0, kc, 32, 1, dst, scratch);
        }
        double dt = thread_cpu_s() - t0;
        if (dt < best) best = dt;
    }
    free(dst);
    free(scratch);
    return best / (double)(w->rows * w->cols) * 1e9;
}

/* The SVD term folded into the decoded tiles (QD_LOWRANK=0) vs applied to the activations
 * (QD_LOWRANK=1, tensor/gemm_lowrank.c) on SD1.5's uint4+SVD shapes: one whole conv or
 * linear, bf16, one thread, thread CPU time (ms), best of reps; "auto" = what the cost
 * model picks. */
static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void lowrank_table(int reps, int threads, const char *filter, int col) {
    static const struct { const char *name; int64_t C, hw, tokens; int conv; } shapes[] = {
        {"conv 3x3 320, 64x64 x2", 320, 64, 0, 1},   {"conv 3x3 640, 32x32 x2", 640, 32, 0, 1},
        {"conv 3x3 1280, 16x16 x2", 1280, 16, 0, 1}, {"conv 3x3 1280, 8x8 x2", 1280, 8, 0, 1},
        {"linear 640>640, 2048 tok", 640, 0, 2048, 0}, {"linear 1280>1280, 512 tok", 1280, 0, 512, 0},
        {"linear 1280>1280, 128 tok", 1280, 0, 128, 0}, {"linear 768>1280, 154 tok", 1280, 0, 154, 0},
        {"linear 3072>3072, 1 tok", 3072, 0, 1, 0},
    };
    qd_ctx *ctx = qd_ctx_new(threads);
    qd_set_precision(ctx, QD_PRECISION_BF16);
    printf("\nSVD rank 32: folded into the tiles vs side path vs stacked rows (uint4 g64 + zp), against the same shape with dense fp16 weights;"
           " bf16, %d thread(s), ms (%s), best of %d\n", threads, threads > 1 ? "wall" : "thread CPU", reps);
    printf("%-28s %10s %10s %10s %10s %10s\n", "shape", "fp16", "fold", "side", "stacked", "auto");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        if (filter && !strstr(shapes[i].name, filter)) continue;
        int64_t C = shapes[i].C, in = shapes[i].conv ? C : (strstr(shapes[i].name, "768>") ? 768 : C);
        layer L;
        if (shapes[i].conv) make(&L, "uint4", C, in, 9, in / 64, 1, 32);
        else make(&L, "uint4", C, in, 1, in / 64, 1, 32);
        qd_weight w;
        qd_sdnq_weight_bind(&w, L.s);   /* as the loader binds it */
        int64_t hw = shapes[i].hw, N = shapes[i].conv ? 2 * hw * hw : shapes[i].tokens;
        float *x = xmalloc(sizeof(float) * (size_t)(N * in)), *y = xmalloc(sizeof(float) * (size_t)(N * C));
        rng g = {9};
        for (int64_t k = 0; k < N * in; k++) x[k] = gauss(&g);
        /* the dense fp16 weight of the same shape */
        int64_t nw = C * w.cols;
        uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)nw);
        for (int64_t k = 0; k < nw; k++) h[k] = qd_f32_to_f16(0.01f * gauss(&g));
        qd_st_tensor t;
        memset(&t, 0, sizeof t);
        t.dtype = QD_F16; t.ndim = 2; t.shape[0] = C; t.shape[1] = w.cols; t.numel = nw; t.data = h; t.nbytes = 2 * (size_t)nw;
        qd_weight wd;
        memset(&wd, 0, sizeof wd);
        qd_weight_dense(&wd, &t, C, w.cols);
        double ms[5];
        for (int mode = 0; mode < 5; mode++) {
            ms[mode] = 0;
            if (col >= 0 && mode != col) continue;
            const qd_weight *wp = mode == 0 ? &wd : &w;
            static const char *force[5] = {NULL, "0", "1", "2", NULL};   /* QD_LOWRANK per column */
            if (force[mode]) setenv("QD_LOWRANK", force[mode], 1);
            else unsetenv("QD_LOWRANK");
            double best = 1e30;
            for (int r = 0; r < reps; r++) {
                double t0 = threads > 1 ? wall_s() : thread_cpu_s();
                if (shapes[i].conv) qd_conv2d(ctx, x, 2, in, hw, hw, wp, NULL, 3, 3, 1, 1, y);
                else qd_gemm(ctx, N, C, in, qd_rows(x, in), qd_wmat(wp), y, C, 1.0f, 0.0f, NULL, NULL);
                double dt = (threads > 1 ? wall_s() : thread_cpu_s()) - t0;
                if (dt < best) best = dt;
            }
            ms[mode] = best * 1e3;
        }
        unsetenv("QD_LOWRANK");
        printf("%-28s %10.3f %10.3f %10.3f %10.3f %10.3f\n", shapes[i].name, ms[0], ms[1], ms[2], ms[3], ms[4]);
        free(x); free(y); free(h);
        drop(&L);
    }
    qd_ctx_free(ctx);
}

int main(int argc, char **argv) {
    int64_t out = 320, in = 320;
    int reps = 5, lowrank = 0, threads = 1;
    const char *filter = NULL;
    int col = -1;
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--lowrank")) { lowrank = 1; i--; continue; }
        if (i + 1 >= argc) die("usage: bench_sdnq_decode [--out N] [--in N] [--reps N] [--lowrank]");
        if (!strcmp(argv[i], "--out")) out = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--in")) in = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--filter")) filter = argv[i + 1];
        else if (!strcmp(argv[i], "--col")) col = atoi(argv[i + 1]);
        else die("usage: bench_sdnq_decode [--out N] [--in N] [--reps N] [--lowrank [--threads N] [--filter SHAPE] [--col 0-4]]");
    }
    if (lowrank) {
        lowrank_table(reps, threads < 1 ? 1 : threads, filter, col);
        return 0;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("bench_sdnq_decode: weight [%lld, %lld x 9] (conv) / [%lld, %lld] (linear); bf16 panels; ns per element,"
           " thread CPU time, best of %d\n\n", (long long)out, (long long)in, (long long)out, (long long)(in * 9), reps);
    printf("%-34s %12s %12s\n", "weights", "linear (B)", "conv (A)");
    /* dense fp16 */
    {
        int64_t n = out * in * 9;
        uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)n);
        rng g = {5};
        for (int64_t i = 0; i < n; i++) h[i] = qd_f32_to_f16(0.1f * gauss(&g));
        qd_st_tensor t;
        memset(&t, 0, sizeof t);
        t.dtype = QD_F16; t.ndim = 2; t.shape[0] = out; t.shape[1] = in * 9; t.numel = n; t.data = h; t.nbytes = 2 * (size_t)n;
        qd_weight w;
        qd_weight_dense(&w, &t, out, in * 9);
        printf("%-34s %12.3f %12.3f\n", "dense fp16", pack_ns(&w, 0, reps), pack_ns(&w, 1, reps));
        free(h);
    }
    static const struct { const char *name, *dtype; int64_t gl, gc; int zp, rank, path; } cases[] = {
        {"int8 row-wise", "int8", 0, 0, 0, 0, 0},
        {"uint4 grouped + zero points", "uint4", 0, 0, 1, 0, 0},
        {"uint4 grouped + zp, bf16 pairs", "uint4", 0, 0, 1, 0, 3},
        {"uint4 grouped + zp + SVD 32 (bf16)", "uint4", 0, 0, 1, 32, 1},
        {"uint4 grouped + zp + SVD 32 (fp32)", "uint4", 0, 0, 1, 32, 0},
        {"uint4 + zp + SVD 32, scalar decode", "uint4", 0, 0, 1, 32, 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        layer lin, cv;
        int grouped = strcmp(cases[c].dtype, "uint4") == 0;
        make(&lin, cases[c].dtype, out, in * 9, 1, grouped ? in * 9 / 64 : 0, cases[c].zp, cases[c].rank);
        make(&cv, cases[c].dtype, out, in, 9, grouped ? in / 64 : 0, cases[c].zp, cases[c].rank);
        qd_weight wl, wc;
        memset(&wl, 0, sizeof wl);
        wl.rows = out; wl.cols = in * 9; wl.quant = lin.s;
        wc = wl;
        wc.quant = cv.s;
        void (*fn)(const qd_weight *, int64_t, int64_t, int64_t, int64_t, float *, int64_t) =
            cases[c].path == 2 ? dec_scalar : dec;
        wl.decode = wc.decode = fn;
        if (cases[c].path == 1) wl.decode_lowp = wc.decode_lowp = dec_lowp;
        if (cases[c].path == 3) wl.decode_bf16 = wc.decode_bf16 = dec_base_bf16;   /* no SVD: the base is all */
        printf("%-34s %12.3f %12.3f\n", cases[c].name, pack_ns(&wl, 0, reps), pack_ns(&wc, 1, reps));
        drop(&lin);
        drop(&cv);
    }
    return 0;
}
