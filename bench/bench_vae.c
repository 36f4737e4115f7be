/* The SD1.5 VAE (AutoencoderKL) at real size: a 512x512 decode and encode, timed op by op.
 *
 *   bench_vae [--config bench/configs/sd15_vae.json] [--latent 64] [--dir DIR]
 *             [--precision fp32|bf16] [--threads N] [--steps N] [--max-steps N]
 *             [--idle-wait S] [--encode 0|1] [--tile PX] [--save IO.safetensors]
 *             [--reuse] [--keep]
 *
 * 1. Writes a diffusers "vae" folder into DIR (default /tmp/qd_bench_sd15_vae): the config
 *    and diffusion_pytorch_model.safetensors (F16) with every parameter AutoencoderKL has
 *    for it, named from the config independently of the loader (bench/support/vae_params.c)
 *    and filled with the benches' random values (matrices N(0, 1/fan_in), norm scales 1,
 *    biases N(0, 0.02^2)); --reuse takes an existing folder as is.
 * 2. Loads it, measures this CPU's fp32 and bf16 peak for the thread count, then times
 *    the decode of a N(0,1) latent [1, 4, L, L] (L = --latent, image 8L x 8L) and the
 *    encode of a uniform [0,1] image of that size, each --steps times (default 1) after
 *    waiting (up to --idle-wait s, default 300) for an idle machine; while every run so
 *    far lost more than 5% of the machine to other processes it runs another (up to
 *    --max-steps, default steps + 2). The fastest run is reported.
 * 3. Reports seconds, the FLOPs of the traced conv/linear/attention ops and the nominal
 *    FLOPs of the model (the upsampling convs as the 3x3 convs over the 2x image
 *    PyTorch runs; qdiff runs them as four 2x2 phase convs, 4/9 of that), GFLOP/s and %
 *    of the measured peak, peak RSS and the most expensive op shapes.
 * --tile PX sets qd_set_vae_tiling (0 = never tile; default: the library's automatic rule).
 * --save writes the latent, the decoded image, the encode input and its mean (F32) for
 *    bench/torch_vae.py to check. The weights are deleted at exit unless --keep/--reuse. */
#include "models/vae.h"
#include "base/ctx.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tensor/gemm.h"
#include "bench_util.h"
#include "cpu_peak.h"
#include "op_trace.h"
#include "sdnq_writer.h"
#include "vae_params.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(void) {
    fprintf(stderr,
            "usage: bench_vae [--config FILE] [--latent N] [--dir DIR] [--precision fp32|bf16] [--threads N]\n"
            "                 [--steps N] [--max-steps N] [--idle-wait SECONDS] [--encode 0|1] [--tile PX]\n"
            "                 [--save IO.safetensors] [--reuse] [--keep]\n");
    exit(2);
}

/* Every tensor dense (F16, as the SD1.5 VAE ships in fp16 variants). */
static int never(const pdesc *d, const qd_sdnq_config *cfg, const sdnq_spec *q) {
    (void)d; (void)cfg; (void)q;
    return 0;
}

static const sdnq_writer WRITER = {QD_F16, "qdiff bench_vae", 0, 0, never};

typedef struct {
    double best, others, mean, cpu, best_cpu;   /* wall s; this process's CPU s (best run, least over runs) */
    int runs;
    trace_buf tb;
} timing;

typedef qd_status (*run_fn)(qd_ctx *ctx, void *arg);

/* Runs fn at least `steps` times (more while every run was disturbed, up to max_steps),
 * each after waiting for an idle machine, with the op trace on; keeps the fastest. */
static timing timed(qd_ctx *ctx, run_fn fn, void *arg, int steps, int max_steps, double idle_wait, const char *what) {
    timing t = {.best = 1e30, .cpu = 1e30};
    trace_buf tb = {0};
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN), sum = 0;
    ctx->trace = on_op;
    ctx->trace_user = &tb;
    for (int i = 0; i < max_steps && (i < steps || t.others > 0.05); i++) {
        wait_idle(idle_wait, 1);
        tb.n = 0;
        double busy0 = machine_busy_s(), self0 = self_cpu_s(), t0 = qd_now();
        tb.t0 = t0;
        if (fn(ctx, arg) != QD_OK) die("%s: %s", what, qd_last_error(ctx));
        double s = qd_now() - t0, cpu = self_cpu_s() - self0;
        double others = ((machine_busy_s() - busy0) - cpu) / (s * ncpu);
        if (others < 0) others = 0;
        if (cpu < t.cpu) t.cpu = cpu;
        printf("%-6s %d   %.3f s, CPU %.2f s (other processes: %.0f%% of the CPUs)\n", what, i + 1, s, cpu, 100 * others);
        sum += s;
        t.runs++;
        if (s < t.best) {
            t.best = s;
            t.best_cpu = cpu;
            t.others = others;
            trace_buf x = t.tb;
            t.tb = tb;
            tb = x;
        }
    }
    ctx->trace = NULL;
    free(tb.r);
    t.mean = sum / t.runs;
    return t;
}

/* Nominal FLOPs: a 2x2 conv is an upsampling phase conv; PyTorch runs the 3x3 conv of
 * the upsampled image instead, 9/4 of its work. */
static double nominal_flops(const trace_buf *tb) {
    double f = 0;
    for (int i = 0; i < tb->n; i++) {
        const oprec *r = &tb->r[i];
        double x = op_flops(r);
        if (r->op == OP_CONV2D && r->d[5] == 2 && r->d[6] == 2) x *= 9.0 / 4.0;
        f += x;
    }
    return f;
}

static void report(const char *what, const timing *t, double peak, const char *precision) {
    trace_summary s;
    trace_summarize(&t->tb, &s);
    double nom = nominal_flops(&t->tb);
    printf("\n== VAE %s: %s math ==\n", what, precision);
    printf("seconds     %.3f (best of %d; mean %.3f); CPU seconds of this process: %.2f in that run, %.2f least\n",
           t->best, t->runs, t->mean, t->best_cpu, t->cpu);
    printf("FLOPs       %.1f GFLOP traced (done), %.1f GFLOP nominal (PyTorch's convs)\n", s.flops / 1e9, nom / 1e9);
    printf("GFLOP/s     %.1f traced, %.1f nominal-equivalent; %.0f%% / %.0f%% of the %s peak %.1f GFLOP/s\n",
           s.flops / 1e9 / t->best, nom / 1e9 / t->best, 100 * s.flops / 1e9 / t->best / peak,
           100 * nom / 1e9 / t->best / peak, precision, peak);
    printf("contention  other processes used %.0f%% of the machine's CPU time during the fastest run%s\n\n",
           100 * t->others, t->others > 0.05 ? "  ** numbers are NOT clean: rerun on an idle machine **" : "");
    trace_print(&s, OP_CONV2D, t->best, "group norm + SiLU, residual adds, phase scatter");
    free(s.ss);
}

typedef struct { qd_vae *v; const float *in; int64_t h, w; float *out, *out2; } job;

static qd_status run_decode(qd_ctx *ctx, void *arg) {
    job *j = arg;
    return qd_vae_decode(ctx, j->v, j->in, 1, j->h, j->w, j->out);
}

static qd_status run_encode(qd_ctx *ctx, void *arg) {
    job *j = arg;
    return qd_vae_encode(ctx, j->v, j->in, 1, j->h, j->w, j->out, j->out2);
}

static void check_finite(const char *what, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) die("%s output has a non-finite value at %lld", what, (long long)i);
}

int main(int argc, char **argv) {
    const char *config = "bench/configs/sd15_vae.json", *dir = "/tmp/qd_bench_sd15_vae", *save_path = NULL;
    const char *precision = "fp32";
    setvbuf(stdout, NULL, _IOLBF, 0);
    int latent = 64, threads = 2, steps = 1, max_steps = -1, reuse = 0, keep = 0, encode = 1, tile = -1;
    double idle_wait = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--latent")) latent = atoi(v);
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--max-steps")) max_steps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else if (!strcmp(a, "--encode")) encode = atoi(v);
        else if (!strcmp(a, "--tile")) tile = atoi(v);
        else if (!strcmp(a, "--save")) save_path = v;
        else usage();
    }
    if (latent < 1 || steps < 1 || (strcmp(precision, "fp32") && strcmp(precision, "bf16"))) usage();
    if (max_steps < steps) max_steps = steps + 2;
    int bf16 = !strcmp(precision, "bf16");

    qd_ctx *ctx = qd_ctx_new(threads);
    if (!ctx) die("no context");
    qd_set_precision(ctx, bf16 ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
    if (tile >= 0) qd_set_vae_tiling(ctx, tile, -1);
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    plist pl = {0};
    vae_params(cfg, &pl);
    int64_t nparams = 0;
    for (int i = 0; i < pl.n; i++) nparams += numel(&pl.p[i]);

    char cfg_out[4200], w_out[4200];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    snprintf(w_out, sizeof w_out, "%s/diffusion_pytorch_model.safetensors", dir);
    struct stat sb;
    int have = stat(cfg_out, &sb) == 0 && stat(w_out, &sb) == 0;
    printf("config      %s\nparameters  %d tensors, %lld values (%.1f MB as F16)\n", config, pl.n,
           (long long)nparams, nparams * 2 / 1e6);
    if (reuse && have) {
        printf("weights     reusing %s\n", dir);
    } else {
        if (mkdir(dir, 0755) && errno != EEXIST) die("mkdir %s: %s", dir, strerror(errno));
        char *text = cJSON_Print(cfg);
        if (!text) die("out of memory");
        write_text(cfg_out, text);
        free(text);
        sdnq_spec dense = {0};
        sdnq_write_component(ctx, dir, &pl, &dense, NULL, &WRITER);
        printf("weights     wrote %s\n", dir);
    }

    qd_vae *v;
    if (qd_vae_load(ctx, dir, &v) != QD_OK) die("qd_vae_load: %s", qd_last_error(ctx));
    const qd_vae_info *info = qd_vae_get_info(v);
    int64_t L = info->latent_channels, h = latent, w = latent, f = info->downscale, H = h * f, W = w * f;
    double peak = cpu_peak_gflops(qd_ctx_threads(ctx), bf16);
    printf("peak        %.1f GFLOP/s %s with %d threads (measured now), GEMM kernel %s\n", peak,
           bf16 ? "bf16 vdpbf16ps" : "fp32 FMA", qd_ctx_threads(ctx), qd_gemm_isa());

    float *z = xmalloc(sizeof(float) * (size_t)(L * h * w));
    float *img = xmalloc(sizeof(float) * (size_t)(info->out_channels * H * W));
    rng g = {42};
    for (int64_t i = 0; i < L * h * w; i++) z[i] = gauss(&g);
    job dj = {v, z, h, w, img, NULL};
    reset_hwm();
    timing td = timed(ctx, run_decode, &dj, steps, max_steps, idle_wait, "decode");
    long hwm_dec = status_kb("VmHWM");
    check_finite("decode", img, info->out_channels * H * W);

    float *x = NULL, *mean = NULL, *logvar = NULL;
    timing te = {0};
    if (encode) {
        x = xmalloc(sizeof(float) * (size_t)(info->in_channels * H * W));
        mean = xmalloc(sizeof(float) * (size_t)(L * h * w));
        logvar = xmalloc(sizeof(float) * (size_t)(L * h * w));
        for (int64_t i = 0; i < info->in_channels * H * W; i++) x[i] = 2.0f * (float)(next64(&g) >> 40) / 16777216.0f - 1.0f;
        job ej = {v, x, H, W, mean, logvar};
        te = timed(ctx, run_encode, &ej, steps, max_steps, idle_wait, "encode");
        check_finite("encode", mean, L * h * w);
    }

    report("decode", &td, peak, precision);
    printf("decode      %lldx%lld latent -> %lldx%lld image, peak RSS during it (VmHWM) %.0f MB\n", (long long)h,
           (long long)w, (long long)H, (long long)W, hwm_dec / 1024.0);
    if (encode) report("encode", &te, peak, precision);

    if (save_path) {
        qd_st_out io[4] = {
            {"z", QD_F32, 4, {1, L, h, w}, z},
            {"decoded", QD_F32, 4, {1, info->out_channels, H, W}, img},
            {"image", QD_F32, 4, {1, info->in_channels, H, W}, x},
            {"mean", QD_F32, 4, {1, L, h, w}, mean},
        };
        if (qd_st_write(ctx, save_path, io, encode ? 4 : 2, NULL) != QD_OK) die("%s", qd_last_error(ctx));
        printf("saved       %s\n", save_path);
    }
    qd_vae_free(v);
    if (!keep && !reuse) {
        remove(w_out);
        printf("weights     deleted %s (use --keep or --reuse to keep them)\n", w_out);
    }
    free(td.tb.r); free(te.tb.r); free(pl.p);
    free(z); free(img); free(x); free(mean); free(logvar);
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    return 0;
}
