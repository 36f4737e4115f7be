/* SDNQ memory and speed at real size (issue 3, "Done when"): an SD1.5 UNet written
 * three ways from the same random weights, fp16, SDNQ int8 and SDNQ uint4 + SVD,
 * then for each: peak RSS after loading and after one forward, and s/step, in exact
 * mode and in int8 matmul mode; plus one big linear's GEMM throughput in both modes
 * against this CPU's int8 VNNI peak (measured here with a tight vpdpbusd loop).
 *
 *   bench_sdnq [--config bench/configs/sd15_unet.json] [--dir /tmp/qd_bench_sdnq]
 *              [--latent 64] [--batch 2] [--steps 2] [--threads N] [--svd-rank 32]
 *              [--quant-conv 0|1] [--models fp16,int8,uint4] [--gemm M,K,N] [--no-unet]
 *              [--no-gemm] [--reuse] [--keep] [--idle-wait S] [--precision fp32|bf16] [--ops]
 *
 * The models (diffusers "unet" folders: config.json, quantization_config.json,
 * diffusion_pytorch_model.safetensors) are written here (with bench/support/sdnq_writer.c):
 *   - every tensor's fp32 values come from a generator seeded by its name, so the three
 *     models hold the same weights: matrices N(0, 1/fan_in), norm scales 1, biases
 *     N(0, 0.02^2) (values() in bench/support/bench_util.c; the parameter list is
 *     bench/support/unet_params.c's);
 *   - fp16: everything stored F16;
 *   - int8: sdnq's int8 with use_quantized_matmul (Linear layers row-wise, stored
 *     transposed [in, out] with a [1, out] scale; the int8 kernel reads the codes as
 *     they are), Conv layers int8 with their auto group size;
 *   - uint4-svd: uint4 with SVD rank --svd-rank (default 32), group size auto (128 for
 *     Linear, 64 for Conv), zero points; the SVD factors are random (sdnq computes them
 *     with svd_lowrank: the values do not change speed or memory), stored F16, and the
 *     residual W - up.down is what gets quantized, as sdnq does, so the model still
 *     approximates the fp16 one.
 * Which layers are quantized follows sdnq: Linear (and Conv with --quant-conv 1, the
 * default) with in_channels >= 32 and >= 16384 weights, minus sdnq's default skip keys
 * (".time_embed" matches time_embedding.*). The per-layer layout (group count,
 * transposition, zero point, SVD orientation) comes from the library's own §1.4
 * derivation of the written quantization_config (qd_sdnq_layout_derive), so the files
 * are what the loader expects; the loader checks them again against the shapes.
 * Quantization: signed absmax (scale = amax / 127), unsigned min/max (zero point = min,
 * scale = range / 15), round half to even, per group / row as the layout says.
 *
 * --ops: after each (model, mode), every traced op of its best step by kind and shape
 * ("op conv2d B x Cin x H x W x Cout x ...", count, wall s, process CPU s since the
 * previous traced op, so untraced work such as a transpose counts towards the next op).
 *
 * Each (model, matmul mode) runs in its own forked process: VmHWM after qd_unet_load
 * and after the first forward (the peak resident set, mapped weights included), then
 * --steps more timed forwards. The machine may be shared: each step records the CPU
 * time other processes took while it ran; the fastest step is reported. Outputs are
 * compared with the fp16 model's (relative L2) as a sanity check of the files. */
#include "models/unet.h"
#include "models/params.h"
#include "base/ctx.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/int8_gemm.h"
#include "quant/sdnq_config.h"
#include "tensor/gemm.h"
#include "tensor/ops.h"
#include "bench_util.h"
#include "unet_params.h"
#include "sdnq_writer.h"
#include "cpu_peak.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- writing a component folder ---- */

/* sdnq's check_quant_is_allowed and default skip keys for a UNet2DConditionModel. */
static int quantizable(const pdesc *d, const qd_sdnq_config *cfg, const sdnq_spec *q) {
    if (d->kind != K_MATRIX || !q->weights_dtype) return 0;
    if (d->ndim == 4 && !q->quant_conv) return 0;
    if (d->shape[1] < 32 || numel(d) < 16384) return 0;
    return strncmp(d->name, "time_embed", 10) != 0;   /* ".time_embed" (root prefix) */
}

static const sdnq_writer WRITER = {QD_F16, "qdiff bench_sdnq", 0, 0, quantizable};

/* Write `dir`/diffusion_pytorch_model.safetensors (+ quantization_config.json when q
 * quantizes). Returns the bytes of weights written. */
static uint64_t write_component(qd_ctx *ctx, const char *dir, const plist *pl, const sdnq_spec *q) {
    char *text = NULL;
    if (q->weights_dtype) {
        cJSON *skip = cJSON_CreateArray();
        for (int i = 0; i < pl->n; i++)   /* the quantizer lists every weight it left alone */
            if (!strcmp(pl->p[i].name + strlen(pl->p[i].name) - 7, ".weight") && !quantizable(&pl->p[i], NULL, q))
                cJSON_AddItemToArray(skip, cJSON_CreateString(pl->p[i].name));
        text = sdnq_qconfig_json(q, skip);
    }
    uint64_t bytes = sdnq_write_component(ctx, dir, pl, q, text, &WRITER);
    free(text);
    return bytes;
}

/* ---- measuring ---- */

typedef struct {
    int ok;
    char err[512];
    double load_s, best_s, mean_s, others;  /* others: CPU share other processes took during the best step */
    double op_s[3];                         /* conv2d, linear, attention seconds in the best step */
    double best_cpu_s;                      /* this process's CPU seconds in its least-CPU step */
    int steps;
    long hwm_start_kb, hwm_load_kb, hwm_fwd_kb, rss_file_kb, rss_anon_kb, rss_start_kb;
    int hwm_reset;
} unet_result;

typedef struct {
    const char *dir, *out_path;
    int mode, threads, latent, batch, steps, precision;
    double idle_wait;
    int op_table;      /* --ops: print the best step's ops by kind and shape */
} unet_job;

/* --ops: every traced op of the best step by kind and shape (wall seconds, and the
 * process CPU time since the previous traced op, so untraced work between ops counts
 * towards the op that follows it) */
#define OPS_MAX 512
typedef struct { char key[96]; int n; double wall, cpu; } op_row;
typedef struct {
    double acc[3];
    int table;
    op_row rows[OPS_MAX];
    int nrows;
    double last_cpu;
} op_trace;

static void on_op(void *user, const char *op, const int64_t *dims, int nd, double seconds) {
    op_trace *t = user;
    int k = !strcmp(op, "conv2d") ? 0 : !strcmp(op, "linear") ? 1 : !strcmp(op, "attention") ? 2 : -1;
    if (k >= 0) t->acc[k] += seconds;
    if (!t->table) return;
    double now = self_cpu_s(), cpu = now - t->last_cpu;
    t->last_cpu = now;
    char key[96];
    int o = snprintf(key, sizeof key, "%s", op);
    for (int i = 0; i < nd && o < (int)sizeof key - 24; i++) o += snprintf(key + o, sizeof key - (size_t)o, "%s%ld", i ? "x" : " ", (long)dims[i]);
    int r = 0;
    while (r < t->nrows && strcmp(t->rows[r].key, key)) r++;
    if (r == t->nrows) {
        if (r == OPS_MAX) return;
        t->nrows++;
        memset(&t->rows[r], 0, sizeof t->rows[r]);
        snprintf(t->rows[r].key, sizeof t->rows[r].key, "%s", key);
    }
    t->rows[r].n++;
    t->rows[r].wall += seconds;
    t->rows[r].cpu += cpu;
}

static void run_unet(const unet_job *j, unet_result *r) {
    memset(r, 0, sizeof *r);
    r->hwm_reset = reset_hwm() == 0;
    r->rss_start_kb = status_kb("VmRSS");
    r->hwm_start_kb = status_kb("VmHWM");
    qd_ctx *ctx = qd_ctx_new(j->threads);
    if (!ctx) { snprintf(r->err, sizeof r->err, "no context"); return; }
    qd_set_matmul(ctx, j->mode);
    qd_set_precision(ctx, j->precision);
    double t0 = qd_now();
    qd_unet *u;
    if (qd_unet_load(ctx, j->dir, &u) != QD_OK) {
        snprintf(r->err, sizeof r->err, "load: %s", qd_last_error(ctx));
        qd_ctx_free(ctx);
        return;
    }
    r->load_s = qd_now() - t0;
    r->hwm_load_kb = status_kb("VmHWM");
    const qd_unet_info *info = qd_unet_get_info(u);
    int64_t B = j->batch, H = j->latent, W = j->latent, L = 77, C = info->in_channels, X = info->cross_attention_dim;
    float *x = xmalloc(sizeof(float) * (size_t)(B * C * H * W)), *ctxv = xmalloc(sizeof(float) * (size_t)(B * L * X));
    float *out = xmalloc(sizeof(float) * (size_t)(B * info->out_channels * H * W)), ts[16];
    rng g = {42};
    for (int64_t i = 0; i < B * C * H * W; i++) x[i] = gauss(&g);
    for (int64_t i = 0; i < B * L * X; i++) ctxv[i] = gauss(&g);
    for (int64_t b = 0; b < B && b < 16; b++) ts[b] = 500.0f;
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN), sum = 0;
    static op_trace tr, best_tr;
    double *ops = tr.acc;
    tr.table = j->op_table;
    r->best_s = r->best_cpu_s = 1e30;
    ctx->trace = on_op;
    ctx->trace_user = &tr;
    for (int s = 0; s <= j->steps; s++) {   /* step 0 is the first forward: its HWM is "after one forward" */
        wait_idle(j->idle_wait, 0);
        memset(tr.acc, 0, sizeof tr.acc);
        tr.nrows = 0;
        double b0 = machine_busy_s(), c0 = self_cpu_s();
        t0 = qd_now();
        tr.last_cpu = c0;
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, ctxv, L, NULL, NULL, out) != QD_OK) {
            snprintf(r->err, sizeof r->err, "forward: %s", qd_last_error(ctx));
            break;
        }
        double dt = qd_now() - t0, cpu = self_cpu_s() - c0, others = ((machine_busy_s() - b0) - cpu) / (dt * ncpu);
        if (others < 0) others = 0;
        if (s == 0) printf("    load %.2f s; VmRSS at start %.0f MiB, VmHWM after load %.0f MiB\n", r->load_s,
                           r->rss_start_kb / 1024.0, r->hwm_load_kb / 1024.0);
        printf("    step %d: %.2f s, %.2f CPU s (conv %.2f, linear %.2f, attention %.2f; other processes %.0f%% of the CPUs)%s\n",
               s, dt, cpu, ops[0], ops[1], ops[2], 100 * others,
               s == 0 ? " [first forward: page faults, not counted in s/step]" : "");
        if (s == 0) { r->hwm_fwd_kb = status_kb("VmHWM"); continue; }
        sum += dt;
        r->steps++;
        if (dt < r->best_s) { r->best_s = dt; r->others = others; memcpy(r->op_s, tr.acc, sizeof tr.acc); best_tr = tr; }
        if (cpu < r->best_cpu_s) r->best_cpu_s = cpu;
    }
    if (r->steps == j->steps) {
        r->ok = 1;
        for (int i = 0; j->op_table && i < best_tr.nrows; i++)
            printf("    op %-60s %4d %9.4f wall %9.4f cpu\n", best_tr.rows[i].key, best_tr.rows[i].n, best_tr.rows[i].wall,
                   best_tr.rows[i].cpu);
        r->mean_s = sum / r->steps;
        r->rss_file_kb = status_kb("RssFile");
        r->rss_anon_kb = status_kb("RssAnon");
        FILE *f = fopen(j->out_path, "wb");
        size_t n = (size_t)(B * info->out_channels * H * W);
        if (!f || fwrite(out, sizeof(float), n, f) != n || fclose(f)) { r->ok = 0; snprintf(r->err, sizeof r->err, "write %s", j->out_path); }
    }
    ctx->trace = NULL;
    free(x); free(ctxv); free(out);
    qd_unet_free(u);
    qd_ctx_free(ctx);
}

/* Run fn(arg, result) in a forked child: a fresh address space and peak-RSS account. */
static void in_child(void (*fn)(const void *, void *), const void *arg, void *res, size_t res_size) {
    int fd[2];
    if (pipe(fd)) die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fd[0]);
        memset(res, 0, res_size);
        fn(arg, res);
        fflush(stdout);
        ssize_t w = write(fd[1], res, res_size);
        _exit(w == (ssize_t)res_size ? 0 : 1);
    }
    close(fd[1]);
    memset(res, 0, res_size);
    ssize_t got = 0;
    while (got < (ssize_t)res_size) {
        ssize_t n = read(fd[0], (char *)res + got, res_size - (size_t)got);
        if (n <= 0) break;
        got += n;
    }
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (got != (ssize_t)res_size) die("measurement process failed (status %d)", status);
}

static void unet_child(const void *a, void *r) { run_unet(a, r); }

/* ---- the written weights against the values they came from ---- */

static double rel_l2(const float *a, const float *b, int64_t n) {
    double d = 0, s = 0;
    for (int64_t i = 0; i < n; i++) { d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); s += (double)b[i] * b[i]; }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}


typedef struct { const char *dir; const plist *pl; } verify_job;
typedef struct {
    int ok;
    char err[512];
    double worst[2], sum_err[2], sum_n[2];  /* Linear, Conv: worst rel. L2, numel-weighted sum */
    char worst_name[2][128];
} verify_result;

static void verify(const void *a, void *res) {
    const verify_job *j = a;
    verify_result *r = res;
    qd_ctx *ctx = qd_ctx_new(1);
    qd_params p;
    if (!ctx || qd_params_open(ctx, j->dir, "unet", &p) != QD_OK) {
        snprintf(r->err, sizeof r->err, "%s", ctx ? qd_last_error(ctx) : "no context");
        qd_ctx_free(ctx);
        return;
    }
    r->ok = 1;
    for (int i = 0; i < j->pl->n && r->ok; i++) {
        const pdesc *d = &j->pl->p[i];
        if (d->kind != K_MATRIX) continue;
        char pre[160];
        snprintf(pre, sizeof pre, "%.*s", (int)(strlen(d->name) - 7), d->name);
        qd_weight w;
        qd_status st;
        if (d->ndim == 2) { qd_linear_p l; st = qd_p_linear(&p, &l, d->shape[0], d->shape[1], QD_NO_BIAS, "%s", pre); w = l.w; }
        else { qd_conv_p c; st = qd_p_conv(&p, &c, d->shape[0], d->shape[1], (int)d->shape[2], QD_NO_BIAS, "%s", pre); w = c.w; }
        if (st != QD_OK) { snprintf(r->err, sizeof r->err, "%s", qd_last_error(ctx)); r->ok = 0; break; }
        int64_t n = numel(d);
        float *ref = xmalloc(sizeof(float) * (size_t)n), *got = xmalloc(sizeof(float) * (size_t)n);
        values(d, ref);
        w.decode(&w, 0, w.rows, 0, w.cols, got, w.cols);
        double e = rel_l2(got, ref, n);
        int c = d->ndim == 4;
        if (e > r->worst[c]) { r->worst[c] = e; snprintf(r->worst_name[c], sizeof r->worst_name[c], "%s", d->name); }
        r->sum_err[c] += e * (double)n;
        r->sum_n[c] += (double)n;
        free(ref);
        free(got);
    }
    qd_params_close(&p);
    qd_ctx_free(ctx);
}

/* ---- peaks: int8 VNNI (vpdpbusd) and fp32 FMA, registers only ---- */

#define ITERS 200000L

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static int vnni512(long iters) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    /* distinct start values: with equal ones the compiler merges the twelve identical
     * chains into one, and the "peak" counted 12 vpdpbusd per executed one */
    __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2), c3 = _mm512_set1_epi32(3),
            c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5), c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7),
            c8 = _mm512_set1_epi32(8), c9 = _mm512_set1_epi32(9), c10 = _mm512_set1_epi32(10), c11 = _mm512_set1_epi32(11);
    for (long k = 0; k < iters; k++) {
        c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b);
        c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b);
        c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b);
        c9 = _mm512_dpbusd_epi32(c9, a, b); c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b);
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    return _mm512_reduce_add_epi32(s);
}

typedef struct { int vnni; double seconds, ops; long sink; } peak_job;

static void *peak_worker(void *arg) {
    peak_job *j = arg;
    double t0 = qd_now();
    long rounds = 0;
    do {
        j->sink += j->vnni ? vnni512(ITERS) : (long)fma512_chains(ITERS);
        rounds++;
    } while (qd_now() - t0 < j->seconds);
    j->seconds = qd_now() - t0;
    /* vpdpbusd zmm: 16 lanes x 4 byte products = 64 multiply-adds = 128 ops; vfmadd zmm: 32 FLOP */
    j->ops = (j->vnni ? 128.0 : 32.0) * 12 * (double)ITERS * (double)rounds;
    return NULL;
}

/* Ops per second over `threads` threads, best of `reps` (each after waiting for an idle machine). */
static double peak(int vnni, int threads, int reps, double idle_wait) {
    double best = 0;
    for (int r = 0; r < reps; r++) {
        wait_idle(idle_wait, 0);
        pthread_t th[64];
        peak_job jobs[64];
        for (int i = 0; i < threads; i++) {
            memset(&jobs[i], 0, sizeof jobs[i]);
            jobs[i].vnni = vnni;
            jobs[i].seconds = 0.5;
            if (pthread_create(&th[i], NULL, peak_worker, &jobs[i])) die("pthread_create");
        }
        double total = 0;
        for (int i = 0; i < threads; i++) { pthread_join(th[i], NULL); total += jobs[i].ops / jobs[i].seconds; }
        if (total > best) best = total;
    }
    return best;
}

/* ---- one big linear: exact vs int8 ---- */

typedef struct {
    const char *root;
    int threads;
    int64_t M, K, N;
    int svd_rank, precision;
    double idle_wait;
} gemm_job;

typedef struct {
    int ok;
    char err[512];
    double exact_s[3], int8_s[3], rel_int8[3], rel_exact[3];   /* fp16, int8, uint4-svd */
} gemm_result;

static double time_linear(qd_ctx *ctx, const float *x, int64_t M, const qd_weight *w, float *y, double idle_wait) {
    double best = 1e30;
    qd_linear(ctx, x, M, w, NULL, y);   /* warm-up: pages, packing buffers */
    wait_idle(idle_wait, 0);
    for (int r = 0; r < 5; r++) {
        double t0 = qd_now();
        qd_linear(ctx, x, M, w, NULL, y);
        double dt = qd_now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static void run_gemm(const gemm_job *j, gemm_result *r) {
    static const char *names[3] = {"fp16", "int8", "uint4-svd"};
    qd_ctx *ctx = qd_ctx_new(j->threads);
    if (!ctx) { snprintf(r->err, sizeof r->err, "no context"); return; }
    qd_set_precision(ctx, j->precision);
    float *x = xmalloc(sizeof(float) * (size_t)(j->M * j->K)), *ref = xmalloc(sizeof(float) * (size_t)(j->M * j->N));
    float *y = xmalloc(sizeof(float) * (size_t)(j->M * j->N)), *wf = xmalloc(sizeof(float) * (size_t)(j->N * j->K));
    rng g = {99};
    for (int64_t i = 0; i < j->M * j->K; i++) x[i] = gauss(&g);
    /* the fp32 reference: the same values the writer stores */
    pdesc d = {"layer.weight", 2, {j->N, j->K}, K_MATRIX};
    values(&d, wf);
    qd_gemm(ctx, j->M, j->N, j->K, qd_rows(x, j->K), qd_rows(wf, j->K), ref, j->N, 1.0f, 0.0f, NULL, NULL);
    r->ok = 1;
    for (int v = 0; v < 3 && r->ok; v++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/gemm-%s", j->root, names[v]);
        qd_params p;
        qd_linear_p lin;
        if (qd_params_open(ctx, dir, "gemm", &p) != QD_OK ||
            qd_p_linear(&p, &lin, j->N, j->K, QD_NO_BIAS, "layer") != QD_OK) {
            snprintf(r->err, sizeof r->err, "%s: %s", dir, qd_last_error(ctx));
            r->ok = 0;
            break;
        }
        qd_set_matmul(ctx, 1);
        r->exact_s[v] = time_linear(ctx, x, j->M, &lin.w, y, j->idle_wait);
        r->rel_exact[v] = rel_l2(y, ref, j->M * j->N);
        qd_set_matmul(ctx, 2);
        r->int8_s[v] = time_linear(ctx, x, j->M, &lin.w, y, j->idle_wait);
        r->rel_int8[v] = rel_l2(y, ref, j->M * j->N);
        qd_params_close(&p);
    }
    free(x); free(ref); free(y); free(wf);
    qd_ctx_free(ctx);
}

static void gemm_child(const void *a, void *r) { run_gemm(a, r); }

/* ---- main ---- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_sdnq [--config FILE] [--dir DIR] [--latent N] [--batch N] [--steps N] [--threads N]\n"
            "                  [--svd-rank R] [--quant-conv 0|1] [--models fp16,int8,uint4] [--gemm M,K,N] [--ops]\n"
            "                  [--no-unet] [--no-gemm] [--reuse] [--keep] [--idle-wait S] [--precision fp32|bf16]\n");
    exit(2);
}

static double file_mb(const char *dir) {
    char p[4200];
    struct stat sb;
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    return stat(p, &sb) == 0 ? (double)sb.st_size / 1e6 : -1;
}

static float *read_out(const char *path, size_t n) {
    float *o = xmalloc(sizeof(float) * n);
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(o, sizeof(float), n, f) : 0;
    if (f) fclose(f);
    if (got != n) { free(o); return NULL; }
    return o;
}

int main(int argc, char **argv) {
    const char *config = "bench/configs/sd15_unet.json", *root = "/tmp/qd_bench_sdnq", *models = "fp16,int8,uint4";
    int latent = 64, batch = 2, steps = 2, threads = 0, svd_rank = 32, quant_conv = 1, reuse = 0, keep = 0;
    int do_unet = 1, do_gemm = 1, precision = QD_PRECISION_FP32, op_table = 0;
    long gm = 4096, gk = 1280, gn = 1280;
    double idle_wait = 120;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!strcmp(a, "--no-unet")) { do_unet = 0; continue; }
        if (!strcmp(a, "--no-gemm")) { do_gemm = 0; continue; }
        if (!strcmp(a, "--ops")) { op_table = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--dir")) root = v;
        else if (!strcmp(a, "--latent")) latent = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--svd-rank")) svd_rank = atoi(v);
        else if (!strcmp(a, "--quant-conv")) quant_conv = atoi(v);
        else if (!strcmp(a, "--models")) models = v;
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else if (!strcmp(a, "--precision")) {
            if (!strcmp(v, "fp32")) precision = QD_PRECISION_FP32;
            else if (!strcmp(v, "bf16")) precision = QD_PRECISION_BF16;
            else usage();
        }
        else if (!strcmp(a, "--gemm")) { if (sscanf(v, "%ld,%ld,%ld", &gm, &gk, &gn) != 3) usage(); }
        else usage();
    }
    if (latent < 8 || batch < 1 || batch > 16 || steps < 1 || svd_rank < 1 || gm < 1 || gk < 32 || gn < 32) usage();
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    mkdir(root, 0755);
    /* no threads in this process until the last fork: each measurement runs in a child */
    qd_ctx *ctx = qd_ctx_new(1);
    if (!ctx) die("no context");

    static const struct { const char *tag; sdnq_spec q; } kinds[3] = {
        {"fp16", {.weights_dtype = NULL}},
        {"int8", {.weights_dtype = "int8", .qmm = 1}},
        {"uint4", {.weights_dtype = "uint4", .svd_rank = 32}},
    };
    sdnq_spec qs[3];
    for (int k = 0; k < 3; k++) {
        qs[k] = kinds[k].q;
        qs[k].quant_conv = quant_conv;
        if (qs[k].svd_rank) qs[k].svd_rank = svd_rank;
    }
    printf("bench_sdnq: %d threads, int8 kernel %s, float GEMM kernel %s, precision %s\n", threads,
           qd_i8_isa_name(qd_i8_pick()), qd_gemm_isa(), precision == QD_PRECISION_BF16 ? "bf16" : "fp32");

    /* ---- CPU peaks ---- */
    __builtin_cpu_init();
    double vnni_peak = 0, fma_peak = 0;
    if (__builtin_cpu_supports("avx512vnni")) {
        double v1 = peak(1, 1, 5, idle_wait / 4), f1 = peak(0, 1, 5, idle_wait / 4);
        vnni_peak = peak(1, threads, 5, idle_wait / 4);
        fma_peak = peak(0, threads, 5, idle_wait / 4);
        printf("peak        int8 VNNI (vpdpbusd zmm): %.0f GOP/s on 1 thread, %.0f GOP/s on %d; fp32 FMA (zmm): %.0f GFLOP/s on 1,"
               " %.0f GFLOP/s on %d (best of 5 each; 1 op = 1 multiply or add)\n",
               v1 / 1e9, vnni_peak / 1e9, threads, f1 / 1e9, fma_peak / 1e9, threads);
    } else {
        printf("peak        this CPU has no AVX-512 VNNI: no int8 peak measured\n");
    }

    /* ---- GEMM: one linear, exact vs int8 ---- */
    if (do_gemm) {
        plist gp = {0};
        int64_t s[2] = {gn, gk};
        add(&gp, K_MATRIX, 2, s, "layer.weight");
        static const char *gnames[3] = {"fp16", "int8", "uint4-svd"};
        for (int k = 0; k < 3; k++) {
            char dir[4200], cfgp[4300];
            snprintf(dir, sizeof dir, "%s/gemm-%s", root, gnames[k]);
            mkdir(dir, 0755);
            snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
            write_text(cfgp, "{\"_class_name\": \"Linear\"}\n");
            sdnq_spec q = qs[k];
            q.quant_conv = 0;
            write_component(ctx, dir, &gp, &q);
        }
        free(gp.p);
        gemm_job gj = {root, threads, gm, gk, gn, svd_rank, precision, idle_wait};
        gemm_result gr;
        printf("\n== linear M=%ld tokens, K=%ld -> N=%ld (%.1f GOP per call), best of 5 ==\n", gm, gk, gn, 2.0 * gm * gk * gn / 1e9);
        in_child(gemm_child, &gj, &gr, sizeof gr);
        if (!gr.ok) die("gemm: %s", gr.err);
        double ops = 2.0 * (double)gm * (double)gk * (double)gn;
        printf("%-22s %10s %10s %10s %12s %12s\n", "weights", "exact s", "GFLOP/s", "int8 s", "GOP/s", "% VNNI peak");
        for (int k = 0; k < 3; k++) {
            printf("%-22s %10.4f %10.1f %10.4f %12.1f %11.1f%%   rel. error vs fp32: exact %.2e, int8 %.2e\n",
                   gnames[k], gr.exact_s[k], ops / gr.exact_s[k] / 1e9, gr.int8_s[k], ops / gr.int8_s[k] / 1e9,
                   vnni_peak > 0 ? 100 * ops / gr.int8_s[k] / vnni_peak : 0, gr.rel_exact[k], gr.rel_int8[k]);
        }
        printf("(fp16 has no int8 path: its \"int8\" column is the same exact GEMM; exact GFLOP/s vs the fp32 FMA peak %.0f)\n",
               fma_peak / 1e9);
    }

    /* ---- the UNet three ways ---- */
    if (do_unet) {
        cJSON *cfg;
        if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
        plist pl = {0};
        unet_require_sd1(cfg);
        unet_params(cfg, &pl);
        int64_t nparams = 0, nlin = 0, nconv = 0;
        for (int i = 0; i < pl.n; i++) {
            nparams += numel(&pl.p[i]);
            if (pl.p[i].kind == K_MATRIX) *(pl.p[i].ndim == 2 ? &nlin : &nconv) += numel(&pl.p[i]);
        }
        printf("\n== UNet %s: %d tensors, %.1f M parameters (Linear %.1f M, Conv %.1f M); latent %dx%d, batch %d; quant_conv %d ==\n",
               config, pl.n, nparams / 1e6, nlin / 1e6, nconv / 1e6, latent, latent, batch, quant_conv);
        char *cfg_text = cJSON_Print(cfg);
        cJSON_Delete(cfg);
        unet_result res[3][2];
        int have[3] = {0};
        memset(res, 0, sizeof res);
        for (int k = 0; k < 3; k++) {
            if (!strstr(models, kinds[k].tag)) continue;
            char dir[4200], p[4300];
            snprintf(dir, sizeof dir, "%s/unet-%s", root, kinds[k].tag);
            snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
            struct stat sb;
            if (!(reuse && stat(p, &sb) == 0)) {
                mkdir(dir, 0755);
                snprintf(p, sizeof p, "%s/config.json", dir);
                write_text(p, cfg_text);
                double t0 = qd_now();
                write_component(ctx, dir, &pl, &qs[k]);
                printf("wrote %s (%.0f MB) in %.1f s\n", dir, file_mb(dir), qd_now() - t0);
            }
            verify_job vj = {dir, &pl};
            verify_result vr;
            in_child(verify, &vj, &vr, sizeof vr);
            if (!vr.ok) die("%s: %s", dir, vr.err);
            printf("weights     decoded by the loader vs the fp32 values: rel. L2 Linear mean %.3g (worst %.3g %s), "
                   "Conv mean %.3g (worst %.3g %s)\n", vr.sum_err[0] / vr.sum_n[0], vr.worst[0], vr.worst_name[0],
                   vr.sum_err[1] / vr.sum_n[1], vr.worst[1], vr.worst_name[1]);
            for (int m = 0; m < 2; m++) {
                if (m == 1 && !qs[k].weights_dtype) continue;   /* fp16 has no int8 path */
                char outp[4300];
                snprintf(outp, sizeof outp, "%s/out-%s-%s.f32", root, kinds[k].tag, m ? "int8" : "exact");
                unet_job uj = {dir, outp, m ? 2 : 1, threads, latent, batch, steps, precision, idle_wait, op_table};
                printf("%s, %s mode:\n", kinds[k].tag, m ? "int8" : "exact");
                in_child(unet_child, &uj, &res[k][m], sizeof res[k][m]);
                if (!res[k][m].ok) die("%s %s: %s", kinds[k].tag, m ? "int8" : "exact", res[k][m].err);
            }
            have[k] = 1;
        }
        free(cfg_text);
        size_t nout = (size_t)batch * 4 * (size_t)latent * (size_t)latent;
        char refp[4300];
        snprintf(refp, sizeof refp, "%s/out-fp16-exact.f32", root);
        float *ref = have[0] ? read_out(refp, nout) : NULL;
        printf("\n%-6s %-6s %8s %7s %9s %8s %8s %8s %7s %7s %6s %6s %6s %7s %s\n", "model", "mode", "file MB", "load s",
               "HWM load", "HWM fwd", "RssFile", "RssAnon", "s/step", "CPU s", "conv", "linear", "attn", "others",
               "rel. L2 vs fp16");
        for (int k = 0; k < 3; k++) {
            if (!have[k]) continue;
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/unet-%s", root, kinds[k].tag);
            for (int m = 0; m < 2; m++) {
                const unet_result *r = &res[k][m];
                if (!r->ok) continue;
                char outp[4300];
                snprintf(outp, sizeof outp, "%s/out-%s-%s.f32", root, kinds[k].tag, m ? "int8" : "exact");
                float *o = read_out(outp, nout);
                double e = o && ref ? rel_l2(o, ref, (int64_t)nout) : -1;
                free(o);
                printf("%-6s %-6s %8.0f %7.2f %9.0f %8.0f %8.0f %8.0f %7.2f %7.2f %6.2f %6.2f %6.2f %6.0f%% %.3g%s\n",
                       kinds[k].tag, m ? "int8" : "exact", file_mb(dir), r->load_s, r->hwm_load_kb / 1024.0,
                       r->hwm_fwd_kb / 1024.0, r->rss_file_kb / 1024.0, r->rss_anon_kb / 1024.0, r->best_s, r->best_cpu_s,
                       r->op_s[0], r->op_s[1], r->op_s[2],
                       100 * r->others, e, r->hwm_reset ? "" : " (VmHWM not reset: includes the parent's)");
            }
        }
        printf("(file MB = 10^6 bytes; HWM = VmHWM, the peak resident set incl. mapped weights, MiB: 'HWM load' after\n"
               " qd_unet_load, 'HWM fwd' after the first forward; RssFile/RssAnon (MiB) at the end; s/step = best of %d timed\n"
               " forwards after the first; CPU s = the least process CPU time of those forwards (with --threads 1, the step's\n"
               " time without other processes' interference); conv/linear/attn = seconds inside those ops in the fastest\n"
               " step; others = CPU share other\n"
               " processes took during it; rel. L2 = output vs the fp16 model's, same weights before quantization)\n", steps);
        free(ref);
        if (!keep && !reuse)
            for (int k = 0; k < 3; k++) {
                char p[4300];
                snprintf(p, sizeof p, "%s/unet-%s/diffusion_pytorch_model.safetensors", root, kinds[k].tag);
                remove(p);
            }
        free(pl.p);
    }
    qd_ctx_free(ctx);
    return 0;
}
