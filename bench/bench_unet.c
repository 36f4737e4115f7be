/* One UNet2DConditionModel forward at real size, timed op by op.
 *
 *   bench_unet --config bench/configs/sd15_unet.json --latent 64 --batch 2
 *              [--dtype f16|bf16|f32] [--dir DIR] [--trace OUT.json] [--threads N]
 *              [--warmup N] [--steps N] [--max-steps N] [--idle-wait S] [--save IO.safetensors]
 *              [--reuse] [--keep] [--precision fp32|bf16]
 *
 * 1. Writes a diffusers "unet" folder into DIR: the config and a safetensors file with
 *    every parameter UNet2DConditionModel has for that config, derived from the config
 *    the way diffusers names them (bench/support/unet_params.c, independently of the
 *    loader, so a successful qd_unet_load checks both). Weights are random but sane: weight matrices
 *    N(0, 1/fan_in), norm scales 1, biases N(0, 0.02^2), so activations stay O(1).
 *    With --reuse an existing folder is used as is.
 * 2. Loads it with qd_unet_load, runs --warmup untimed forwards (default 1 when the
 *    latent is <= 64, else 0: an SDXL-size forward takes a minute), then --steps timed
 *    forwards (default 1) with the op trace on. The machine may be shared: before each
 *    step it waits (up to --idle-wait s, default 300) for the other processes to go
 *    quiet, it measures the CPU time they took during the step, and while every step
 *    so far lost more than 5% that way it runs another (up to --max-steps, default
 *    steps + 2). The fastest step is the one reported.
 * 3. Reports seconds per step, FLOPs summed over the traced conv/linear/attention ops,
 *    GFLOP/s, peak RSS, time per op class and the most expensive op shapes, and writes
 *    the fastest timed step's trace (op, dims, seconds) as JSON for bench/torch_ops.py.
 * --save writes the inputs and qdiff's output (F32) for bench/torch_unet.py to check.
 * The weights file is deleted at exit unless --keep or --reuse is given. */
#include "models/unet.h"
#include "base/ctx.h"
#include "base/act_pool.h"
#include "base/half.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tensor/gemm.h"
#include "bench_util.h"
#include "unet_params.h"
#include "op_trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

/* ---- random weights, streamed to disk ---- */

static int cmp_name(const void *a, const void *b) { return strcmp(((const pdesc *)a)->name, ((const pdesc *)b)->name); }

static void write_weights(const plist *l, qd_dtype dt, const char *path) {
    size_t es = qd_dtype_size(dt);
    /* header */
    size_t cap = 1024 + (size_t)l->n * 200, len = 0;
    char *h = malloc(cap);
    if (!h) die("out of memory");
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"qdiff bench_unet\"}");
    uint64_t off = 0;
    for (int i = 0; i < l->n; i++) {
        const pdesc *d = &l->p[i];
        uint64_t bytes = (uint64_t)numel(d) * es;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", d->name, qd_dtype_name(dt));
        for (int k = 0; k < d->ndim; k++)
            len += (size_t)snprintf(h + len, cap - len, k ? ",%lld" : "%lld", (long long)d->shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';

    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("%s: %s", tmp, strerror(errno));
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(lb, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    free(h);
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(sizeof(float) * CHUNK);
    if (!buf) die("out of memory");
    rng g = {0x5eed};   /* one stream through all tensors, in name order */
    for (int i = 0; i < l->n && ok; i++) {
        const pdesc *d = &l->p[i];
        int64_t n = numel(d), fan_in = n / d->shape[0];
        float stdev = d->kind == K_MATRIX ? 1.0f / sqrtf((float)fan_in) : 0.02f;
        for (int64_t o = 0; o < n && ok; o += CHUNK) {
            int64_t m = n - o < CHUNK ? n - o : CHUNK;
            for (int64_t k = 0; k < m; k++) buf[k] = d->kind == K_NORM ? 1.0f : stdev * gauss(&g);
            if (dt == QD_F16) {
                uint16_t *u = (uint16_t *)buf;
                for (int64_t k = 0; k < m; k++) u[k] = qd_f32_to_f16(buf[k]);   /* in place: u[k] trails buf[k] */
            } else if (dt == QD_BF16) {
                uint16_t *u = (uint16_t *)buf;
                for (int64_t k = 0; k < m; k++) u[k] = qd_f32_to_bf16(buf[k]);
            }
            ok = fwrite(buf, es, (size_t)m, f) == (size_t)m;
        }
    }
    free(buf);
    if (fclose(f) != 0) ok = 0;
    if (!ok) { remove(tmp); die("%s: write failed (disk full?)", tmp); }
    if (rename(tmp, path)) die("rename %s: %s", tmp, strerror(errno));
}

/* ---- main ---- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_unet --config FILE [--latent N] [--batch N] [--dtype f16|bf16|f32] [--dir DIR]\n"
            "                  [--trace OUT.json] [--threads N] [--warmup N] [--steps N] [--max-steps N]\n"
            "                  [--idle-wait SECONDS] [--save IO.safetensors] [--reuse] [--keep]\n"
            "                  [--precision fp32|bf16]\n");
    exit(2);
}

static void mkdirs(const char *path) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') { *s = 0; mkdir(p, 0755); *s = '/'; }
    if (mkdir(p, 0755) && errno != EEXIST) die("mkdir %s: %s", p, strerror(errno));
}

int main(int argc, char **argv) {
    const char *config = NULL, *dir = NULL, *trace_path = NULL, *save_path = NULL, *dtype = "f16", *precision = "fp32";
    setvbuf(stdout, NULL, _IOLBF, 0);
    int latent = 64, batch = 2, threads = 0, warmup = -1, steps = 1, max_steps = -1, reuse = 0, keep = 0;
    double idle_wait = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--latent")) latent = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--trace")) trace_path = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--max-steps")) max_steps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else if (!strcmp(a, "--save")) save_path = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else usage();
    }
    if (!config || latent < 8 || batch < 1 || steps < 1) usage();
    qd_dtype dt = !strcmp(dtype, "f16") ? QD_F16 : !strcmp(dtype, "bf16") ? QD_BF16 : !strcmp(dtype, "f32") ? QD_F32
                                                                                                                   : QD_DTYPE_COUNT;
    if (dt == QD_DTYPE_COUNT) usage();
    if (warmup < 0) warmup = latent <= 64 ? 1 : 0;
    if (max_steps < steps) max_steps = steps + 2;
    char defdir[256];
    if (!dir) {
        const char *base = strrchr(config, '/') ? strrchr(config, '/') + 1 : config;
        snprintf(defdir, sizeof defdir, "/tmp/qd_bench_%.*s_%s", (int)strcspn(base, "."), base, dtype);
        dir = defdir;
    }

    qd_ctx *ctx = qd_ctx_new(threads);
    if (strcmp(precision, "fp32") && strcmp(precision, "bf16")) usage();
    qd_set_precision(ctx, !strcmp(precision, "bf16") ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
    if (!ctx) die("no context");
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    plist pl = {0};
    unet_params(cfg, &pl);
    qsort(pl.p, (size_t)pl.n, sizeof *pl.p, cmp_name);
    int64_t nparams = 0;
    for (int i = 0; i < pl.n; i++) nparams += numel(&pl.p[i]);
    uint64_t wbytes = (uint64_t)nparams * qd_dtype_size(dt);

    char cfg_out[4200], w_out[4200];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    snprintf(w_out, sizeof w_out, "%s/diffusion_pytorch_model.safetensors", dir);
    struct stat sb;
    int have = stat(cfg_out, &sb) == 0 && stat(w_out, &sb) == 0;
    printf("config      %s\n", config);
    printf("parameters  %d tensors, %lld values (%.3f GB as %s)\n", pl.n, (long long)nparams, wbytes / 1e9, dtype);
    if (reuse && have) {
        printf("weights     reusing %s\n", dir);
    } else {
        mkdirs(dir);
        struct statvfs vs;
        if (statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < wbytes + (1ull << 30))
            die("%s: %.1f GB free, need %.1f GB", dir, (double)vs.f_bavail * vs.f_frsize / 1e9, wbytes / 1e9 + 1);
        char *text = cJSON_Print(cfg);
        FILE *f = fopen(cfg_out, "w");
        if (!f || !text || fputs(text, f) < 0 || fclose(f)) die("%s: write failed", cfg_out);
        free(text);
        double t0 = qd_now();
        write_weights(&pl, dt, w_out);
        printf("weights     wrote %s in %.1f s\n", dir, qd_now() - t0);
    }
    int delete_weights = !keep && !reuse;

    double t0 = qd_now();
    qd_unet *u;
    if (qd_unet_load(ctx, dir, &u) != QD_OK) die("qd_unet_load: %s", qd_last_error(ctx));
    printf("load        %.2f s (qd_unet_load found every tensor it needs)\n", qd_now() - t0);
    const qd_unet_info *info = qd_unet_get_info(u);

    /* inputs: x ~ N(0,1), t = 500, context ~ N(0,1) [B, 77, cross], SDXL text_embeds ~ N(0,1), time_ids */
    int64_t B = batch, H = latent, W = latent, L = 77, C = info->in_channels;
    int64_t pooled = info->addition_time_embed_dim ? info->projection_class_embeddings_input_dim -
                                                     6 * info->addition_time_embed_dim : 0;
    float *x = malloc(sizeof(float) * (size_t)(B * C * H * W));
    float *out = malloc(sizeof(float) * (size_t)(B * info->out_channels * H * W));
    float *context = malloc(sizeof(float) * (size_t)(B * L * info->cross_attention_dim));
    float *temb = pooled ? malloc(sizeof(float) * (size_t)(B * pooled)) : NULL;
    float tids[6 * 16], ts[16];
    if (!x || !out || !context || (pooled && !temb) || B > 16) die("out of memory or batch > 16");
    rng g = {42};
    for (int64_t i = 0; i < B * C * H * W; i++) x[i] = gauss(&g);
    for (int64_t i = 0; i < B * L * info->cross_attention_dim; i++) context[i] = gauss(&g);
    for (int64_t i = 0; i < B * pooled; i++) temb[i] = gauss(&g);
    for (int64_t b = 0; b < B; b++) {
        float px = (float)(8 * latent);
        float id[6] = {px, px, 0, 0, px, px};   /* original size, crop top-left, target size */
        memcpy(tids + 6 * b, id, sizeof id);
        ts[b] = 500.0f;
    }

    for (int i = 0; i < warmup; i++) {
        t0 = qd_now();
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, context, L, temb, pooled ? tids : NULL, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        printf("warm-up     %.2f s\n", qd_now() - t0);
    }
    trace_buf tb = {0};
    ctx->trace = on_op;
    ctx->trace_user = &tb;
    double best = 1e30, best_others = 0, sum = 0;
    int done = 0;
    trace_buf best_tb = {0};   /* the fastest step's trace: the least disturbed by other processes */
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN);
    /* This machine may be shared: wait for it to be idle before each step, measure what
     * other processes took during the step, and (up to --max-steps) run more steps while
     * every step so far was disturbed by more than 5%. */
    for (int i = 0; i < max_steps && (i < steps || best_others > 0.05); i++) {
        wait_idle(idle_wait, 1);
        trace_reset(&tb);
        double busy0 = machine_busy_s(), self0 = self_cpu_s();
        struct rusage r0, r1;
        getrusage(RUSAGE_SELF, &r0);
        t0 = qd_now();
        if (qd_unet_forward(ctx, u, x, B, H, W, ts, context, L, temb, pooled ? tids : NULL, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        double s = qd_now() - t0;
        getrusage(RUSAGE_SELF, &r1);
        double others = ((machine_busy_s() - busy0) - (self_cpu_s() - self0)) / (s * ncpu);
        if (others < 0) others = 0;
        printf("step %d      %.3f s (other processes: %.0f%% of the CPUs; %ld page faults; CPU %.2f s)\n", i + 1, s,
               100 * others, (r1.ru_minflt - r0.ru_minflt) + (r1.ru_majflt - r0.ru_majflt),
               (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                   1e-6 * ((r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)));
        sum += s;
        done++;
        if (s < best) {
            best = s;
            best_others = others;
            trace_buf t = best_tb;
            best_tb = tb;
            tb = t;
        }
    }
    free(tb.r);
    tb = best_tb;
    ctx->trace = NULL;
    double others_frac = best_others;
    int64_t nout = B * info->out_channels * H * W, bad = 0;
    double asum = 0;
    for (int64_t i = 0; i < nout; i++) {
        if (!isfinite(out[i])) bad++;
        else asum += fabs(out[i]);
    }
    if (bad) die("output has %lld non-finite values", (long long)bad);

    trace_summary sum_ops;
    trace_summarize(&tb, &sum_ops);
    double flops = sum_ops.flops, op_s = sum_ops.op_s, step_s = sum / done;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm = status_kb("VmHWM"), anon = status_kb("RssAnon"), file = status_kb("RssFile");
    printf("\n== UNet forward: latent %dx%d, batch %d, %s weights, %s math, %d threads, GEMM kernel %s ==\n", latent, latent,
           batch, dtype, precision, qd_ctx_threads(ctx), qd_gemm_isa());
    printf("s/step      %.3f (best of %d; mean %.3f; %d warm-up)\n", best, done, step_s, warmup);
    printf("FLOPs       %.1f GFLOP per step (traced conv/linear/attention)\n", flops / 1e9);
    printf("GFLOP/s     %.1f (best step), %.1f (mean step), %.1f (inside traced ops)\n", flops / 1e9 / best,
           flops / 1e9 / step_s, flops / 1e9 / op_s);
    printf("peak RSS    %.0f MB (ru_maxrss), VmHWM %.0f MB; now RssAnon %.0f MB, RssFile %.0f MB (mapped weights)\n",
           ru.ru_maxrss / 1024.0, hwm / 1024.0, anon / 1024.0, file / 1024.0);
    qd_act_stats as;
    qd_act_get_stats(ctx, &as);
    printf("step arena  %.0f MB (peak of live activations %.0f MB); %ld plan(s), %ld buffers from malloc, %ld from the "
           "arena\n", as.held / 1e6, as.peak_live / 1e6, as.plans, as.fresh, as.reused);
    printf("output      finite, mean |out| %.4g\n", asum / nout);
    printf("contention  other processes used %.0f%% of the machine's CPU time during the fastest step%s\n\n",
           100 * others_frac, others_frac > 0.05 ? "  ** numbers are NOT clean: rerun on an idle machine **" : "");
    trace_print(&sum_ops, OP_CONV2D, best, "time embedding, upsampling, bias sums, scaling, allocation");

    if (trace_path) {
        FILE *f = fopen(trace_path, "w");
        if (!f) die("%s: %s", trace_path, strerror(errno));
        struct utsname un;
        uname(&un);
        fprintf(f, "{\n\"config\": \"%s\", \"latent\": %d, \"batch\": %d, \"dtype\": \"%s\", \"threads\": %d,\n",
                config, latent, batch, dtype, qd_ctx_threads(ctx));
        fprintf(f, "\"isa\": \"%s\", \"warmup\": %d, \"steps\": %d, \"step_seconds\": %.6f, \"best_seconds\": %.6f,\n",
                qd_gemm_isa(), warmup, done, step_s, best);
        fprintf(f, "\"params\": %lld, \"gflop\": %.3f, \"op_seconds\": %.6f, \"ru_maxrss_kb\": %ld, \"vmhwm_kb\": %ld,\n",
                (long long)nparams, flops / 1e9, op_s, ru.ru_maxrss, hwm);
        fprintf(f, "\"other_processes_cpu_fraction\": %.4f,\n", others_frac);
        fprintf(f, "\"ops\": [\n");
        trace_write_ops(f, &tb);
        fprintf(f, "]\n}\n");
        if (fclose(f)) die("%s: write failed", trace_path);
        printf("\ntrace       %s (%d ops)\n", trace_path, tb.n);
    }

    if (save_path) {
        qd_st_out io[6] = {
            {"x", QD_F32, 4, {B, C, H, W}, x},
            {"timestep", QD_F32, 1, {B}, ts},
            {"context", QD_F32, 3, {B, L, info->cross_attention_dim}, context},
            {"out", QD_F32, 4, {B, info->out_channels, H, W}, out},
            {"text_embeds", QD_F32, 2, {B, pooled}, temb},
            {"time_ids", QD_F32, 2, {B, 6}, tids},
        };
        if (qd_st_write(ctx, save_path, io, pooled ? 6 : 4, NULL) != QD_OK) die("%s", qd_last_error(ctx));
        printf("saved       %s (inputs and output)\n", save_path);
    }

    qd_unet_free(u);
    if (delete_weights) {
        remove(w_out);
        printf("weights     deleted %s (use --keep or --reuse to keep them)\n", w_out);
    }
    free(sum_ops.ss); free(tb.r); free(pl.p);
    free(x); free(out); free(context); free(temb);
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    return 0;
}
