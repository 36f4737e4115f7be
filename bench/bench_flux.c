/* One FLUX.1 transformer step at real size (issue 4), timed op by op, in three weight
 * layouts: bf16 dense, SDNQ int8 and SDNQ uint4 (+ SVD).
 *
 *   bench_flux --config bench/configs/flux1_transformer.json
 *              --layout bf16|int8|int8-qmm|uint4-svd [--matmul exact|int8]
 *              [--double N] [--single N] [--image 512] [--text 512] [--svd-rank 32]
 *              [--dir DIR] [--trace OUT.json] [--threads N] [--warmup N] [--steps N]
 *              [--idle-wait S] [--reuse] [--keep] [--write-only] [--precision fp32|bf16]
 *
 * 1. Writes a diffusers "transformer" folder into DIR (default /tmp/qd_bench_flux_LAYOUT):
 *    config.json (the FLUX.1-dev config, num_layers / num_single_layers replaced by
 *    --double / --single when given: the widths stay the real ones), and for the SDNQ
 *    layouts quantization_config.json; diffusion_pytorch_model.safetensors holds every
 *    parameter FluxTransformer2DModel has, named as diffusers names them (derived here,
 *    independently of the loader). Values: matrices N(0, 1/fan_in), RMSNorm scales 1,
 *    biases N(0, 0.02^2), each tensor from a generator seeded by its name, so every
 *    layout holds the same weights.
 *      bf16       every tensor BF16 (FLUX.1-dev's own dtype);
 *      int8       sdnq int8, group_size -1 (row-wise [out, in] codes, scale [out, 1]);
 *      int8-qmm   sdnq int8 with use_quantized_matmul (row-wise, stored transposed
 *                 [in, out] with scale [1, out]: the layout the int8 kernel reads as is);
 *      uint4-svd  sdnq uint4, auto group size (128 with SVD), zero points, SVD rank
 *                 --svd-rank (random BF16 factors; the residual W - up.down is what is
 *                 quantized, as sdnq does).
 *    Quantized layers: Linear with in >= 32 and >= 16384 weights, minus sdnq's default
 *    skip keys for FluxTransformer2DModel (spec sdnq.md §1.3), written into
 *    modules_to_not_convert and matched with the library's own rules. Each layer's
 *    layout (transposition, groups, SVD orientation) comes from the library's §1.4
 *    derivation (qd_sdnq_layout_derive) of the written config; the loader checks the
 *    tensors against it again. Scales / zero points F32 (dequantize_fp32).
 *    The SDNQ writer is bench/bench_sdnq.c's (bench/support/sdnq_writer.c), with BF16
 *    instead of F16.
 * 2. Loads it with qd_flux_load, sets qd_set_matmul(--matmul), runs --warmup untimed
 *    forwards (default 0) and --steps timed forwards (default 1) with the op trace on:
 *    512x512 image -> 1024 image tokens (64 channels), --text T5 tokens, batch 1,
 *    guidance 3.5, sigma 0.5. Before each step it waits (up to --idle-wait s) for the
 *    machine to be idle and records the CPU time other processes took during it.
 * 3. Reports s/step (fastest), per-block seconds (double and single blocks, from the
 *    trace), FLOPs over the traced linear/attention ops, GFLOP/s, VmHWM, and writes the
 *    fastest step's trace as JSON (the format bench/torch_ops.py reads).
 * The weights file is deleted at exit unless --keep or --reuse is given. */
#include "models/flux_transformer.h"
#include "base/ctx.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "tensor/gemm.h"
#include "bench_util.h"
#include "sdnq_writer.h"
#include "op_trace.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

/* ---- FluxTransformer2DModel's parameters, diffusers names ---- */

/* PRE.weight [out, in], PRE.bias, PRE given printf-style. */
static void flinear(plist *l, int64_t out, int64_t in, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void flinear(plist *l, int64_t out, int64_t in, const char *fmt, ...) {
    char pre[112];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    linear(l, pre, out, in, 1);
}

static void rmsnorm(plist *l, int64_t n, const char *pre, const char *name) {
    int64_t s[1] = {n};
    add(l, K_NORM, 1, s, "%s.%s.weight", pre, name);
}

/* FluxTransformer2DModel.__init__ (diffusers 0.32), patch_size 1. */
static void flux_params(int64_t D, int64_t dh, int64_t in_ch, int64_t out_ch, int64_t joint, int64_t pooled,
                        int guidance, int nd, int ns, plist *l) {
    const int64_t TPROJ = 256, F = 4 * D;
    flinear(l, D, in_ch, "x_embedder");
    flinear(l, D, joint, "context_embedder");
    flinear(l, D, TPROJ, "time_text_embed.timestep_embedder.linear_1");
    flinear(l, D, D, "time_text_embed.timestep_embedder.linear_2");
    if (guidance) {
        flinear(l, D, TPROJ, "time_text_embed.guidance_embedder.linear_1");
        flinear(l, D, D, "time_text_embed.guidance_embedder.linear_2");
    }
    flinear(l, D, pooled, "time_text_embed.text_embedder.linear_1");
    flinear(l, D, D, "time_text_embed.text_embedder.linear_2");
    for (int i = 0; i < nd; i++) {
        char p[64], a[80];
        snprintf(p, sizeof p, "transformer_blocks.%d", i);
        snprintf(a, sizeof a, "%s.attn", p);
        flinear(l, 6 * D, D, "%s.norm1.linear", p);
        flinear(l, 6 * D, D, "%s.norm1_context.linear", p);
        flinear(l, D, D, "%s.to_q", a);
        flinear(l, D, D, "%s.to_k", a);
        flinear(l, D, D, "%s.to_v", a);
        flinear(l, D, D, "%s.to_out.0", a);
        flinear(l, D, D, "%s.add_q_proj", a);
        flinear(l, D, D, "%s.add_k_proj", a);
        flinear(l, D, D, "%s.add_v_proj", a);
        flinear(l, D, D, "%s.to_add_out", a);
        rmsnorm(l, dh, a, "norm_q");
        rmsnorm(l, dh, a, "norm_k");
        rmsnorm(l, dh, a, "norm_added_q");
        rmsnorm(l, dh, a, "norm_added_k");
        flinear(l, F, D, "%s.ff.net.0.proj", p);
        flinear(l, D, F, "%s.ff.net.2", p);
        flinear(l, F, D, "%s.ff_context.net.0.proj", p);
        flinear(l, D, F, "%s.ff_context.net.2", p);
    }
    for (int i = 0; i < ns; i++) {
        char p[64], a[80];
        snprintf(p, sizeof p, "single_transformer_blocks.%d", i);
        snprintf(a, sizeof a, "%s.attn", p);
        flinear(l, 3 * D, D, "%s.norm.linear", p);
        flinear(l, D, D, "%s.to_q", a);
        flinear(l, D, D, "%s.to_k", a);
        flinear(l, D, D, "%s.to_v", a);
        rmsnorm(l, dh, a, "norm_q");
        rmsnorm(l, dh, a, "norm_k");
        flinear(l, F, D, "%s.proj_mlp", p);
        flinear(l, D, D + F, "%s.proj_out", p);
    }
    flinear(l, 2 * D, D, "norm_out.linear");
    flinear(l, out_ch, D, "proj_out");
}

/* ---- the SDNQ writer (bench/support/sdnq_writer.c) ---- */

/* sdnq's default skip keys for FluxTransformer2DModel (spec sdnq.md §1.3) */
static const char *FLUX_SKIP[] = {"single_transformer_blocks.0.norm.linear.weight", "time_text_embed", "time_embed",
                                  "context_embedder", "x_embedder", ".proj_out", "norm_out"};

static int quantizable(const pdesc *d, const qd_sdnq_config *cfg, const sdnq_spec *q) {
    if (d->kind != K_MATRIX || !cfg) return 0;
    if (d->shape[1] < 32 || numel(d) < 16384) return 0;   /* check_quant_is_allowed */
    return !qd_sdnq_skips(cfg, d->name);
}

/* BF16 dense tensors and SVD factors; the quantized layers start from the bf16 model's values */
static const sdnq_writer WRITER = {QD_BF16, "qdiff bench_flux", 1, 1, quantizable};

/* Write dir/diffusion_pytorch_model.safetensors (+ quantization_config.json). Returns bytes. */
static uint64_t write_component(qd_ctx *ctx, const char *dir, const plist *pl, const sdnq_spec *q) {
    char *text = NULL;
    if (q->weights_dtype) {
        cJSON *skip = cJSON_CreateArray();
        for (size_t i = 0; i < sizeof FLUX_SKIP / sizeof *FLUX_SKIP; i++) cJSON_AddItemToArray(skip, cJSON_CreateString(FLUX_SKIP[i]));
        text = sdnq_qconfig_json(q, skip);
    }
    uint64_t bytes = sdnq_write_component(ctx, dir, pl, q, text, &WRITER);
    free(text);
    return bytes;
}

/* ---- main ---- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_flux --config FILE --layout bf16|int8|int8-qmm|uint4-svd [--matmul exact|int8]\n"
            "                  [--double N] [--single N] [--image PX] [--text L] [--svd-rank R] [--dir DIR]\n"
            "                  [--trace OUT.json] [--threads N] [--warmup N] [--steps N] [--idle-wait S]\n"
            "                  [--reuse] [--keep] [--write-only] [--precision fp32|bf16]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *config = NULL, *dir = NULL, *trace_path = NULL, *layout = "bf16", *matmul = "exact",
               *precision = "fp32";
    setvbuf(stdout, NULL, _IOLBF, 0);
    int image = 512, text = 512, threads = 0, warmup = 0, steps = 1, reuse = 0, keep = 0, write_only = 0;
    int nd = -1, ns = -1, svd_rank = 32;
    double idle_wait = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--reuse")) { reuse = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        if (!strcmp(a, "--write-only")) { write_only = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--layout")) layout = v;
        else if (!strcmp(a, "--matmul")) matmul = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else if (!strcmp(a, "--double")) nd = atoi(v);
        else if (!strcmp(a, "--single")) ns = atoi(v);
        else if (!strcmp(a, "--image")) image = atoi(v);
        else if (!strcmp(a, "--text")) text = atoi(v);
        else if (!strcmp(a, "--svd-rank")) svd_rank = atoi(v);
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--trace")) trace_path = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--idle-wait")) idle_wait = atof(v);
        else usage();
    }
    if (!config || image < 16 || image % 16 || text < 1 || steps < 1 || warmup < 0) usage();
    sdnq_spec q = {0};
    if (!strcmp(layout, "int8")) { q.weights_dtype = "int8"; q.group_size = -1; }
    else if (!strcmp(layout, "int8-qmm")) { q.weights_dtype = "int8"; q.group_size = -1; q.qmm = 1; }
    else if (!strcmp(layout, "uint4-svd")) { q.weights_dtype = "uint4"; q.svd_rank = svd_rank; }
    else if (strcmp(layout, "bf16")) usage();
    int mm = !strcmp(matmul, "exact") ? QD_MATMUL_EXACT : !strcmp(matmul, "int8") ? QD_MATMUL_INT8 : -1;
    if (mm < 0) usage();
    char defdir[256];
    if (!dir) {
        snprintf(defdir, sizeof defdir, "/tmp/qd_bench_flux_%s", layout);
        dir = defdir;
    }

    qd_ctx *ctx = qd_ctx_new(threads);
    if (!ctx) die("no context");
    if (strcmp(precision, "fp32") && strcmp(precision, "bf16")) die("--precision must be fp32 or bf16");
    qd_set_precision(ctx, !strcmp(precision, "bf16") ? QD_PRECISION_BF16 : QD_PRECISION_FP32);
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    if (nd >= 0) cJSON_ReplaceItemInObjectCaseSensitive(cfg, "num_layers", cJSON_CreateNumber(nd));
    if (ns >= 0) cJSON_ReplaceItemInObjectCaseSensitive(cfg, "num_single_layers", cJSON_CreateNumber(ns));
    nd = (int)qd_json_int(cfg, "num_layers", 19);
    ns = (int)qd_json_int(cfg, "num_single_layers", 38);
    int64_t heads = qd_json_int(cfg, "num_attention_heads", 24), dh = qd_json_int(cfg, "attention_head_dim", 128);
    int64_t D = heads * dh, in_ch = qd_json_int(cfg, "in_channels", 64);
    int64_t joint = qd_json_int(cfg, "joint_attention_dim", 4096), pooled = qd_json_int(cfg, "pooled_projection_dim", 768);
    int guidance = qd_json_bool(cfg, "guidance_embeds", 0);
    plist pl = {0};
    flux_params(D, dh, in_ch, in_ch, joint, pooled, guidance, nd, ns, &pl);
    int64_t nparams = 0, nblock[2] = {0, 0};
    for (int i = 0; i < pl.n; i++) {
        nparams += numel(&pl.p[i]);
        if (!strncmp(pl.p[i].name, "transformer_blocks.0.", 21)) nblock[0] += numel(&pl.p[i]);
        if (!strncmp(pl.p[i].name, "single_transformer_blocks.1.", 28)) nblock[1] += numel(&pl.p[i]);
    }

    char cfg_out[4200], w_out[4200];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    snprintf(w_out, sizeof w_out, "%s/diffusion_pytorch_model.safetensors", dir);
    struct stat sb;
    int have = stat(cfg_out, &sb) == 0 && stat(w_out, &sb) == 0;
    printf("config      %s: %d double + %d single blocks, %lld dims, %lld heads\n", config, nd, ns, (long long)D,
           (long long)heads);
    printf("parameters  %d tensors, %lld values (%.3f GB as bf16); per double block %lld, per single block %lld\n",
           pl.n, (long long)nparams, nparams * 2 / 1e9, (long long)nblock[0], (long long)nblock[1]);
    if (reuse && have) {
        printf("weights     reusing %s (%.3f GB on disk)\n", dir, (double)sb.st_size / 1e9);
    } else {
        if (mkdir(dir, 0755) && errno != EEXIST) die("mkdir %s: %s", dir, strerror(errno));
        char *txt = cJSON_Print(cfg);
        if (!txt) die("out of memory");
        write_text(cfg_out, txt);
        free(txt);
        double t0 = qd_now();
        uint64_t bytes = write_component(ctx, dir, &pl, &q);
        printf("weights     wrote %s (%s, %.3f GB) in %.1f s\n", dir, layout, bytes / 1e9, qd_now() - t0);
    }
    if (write_only) {
        free(pl.p);
        cJSON_Delete(cfg);
        qd_ctx_free(ctx);
        return 0;
    }
    int delete_weights = !keep && !reuse;

    qd_set_matmul(ctx, mm);
    double t0 = qd_now();
    qd_flux *m;
    if (qd_flux_load(ctx, dir, &m) != QD_OK) die("qd_flux_load: %s", qd_last_error(ctx));
    long hwm_load = status_kb("VmHWM");
    printf("load        %.2f s (qd_flux_load found every tensor it needs); VmHWM %.0f MB\n", qd_now() - t0,
           hwm_load / 1024.0);

    /* inputs: packed latents [1, N, 64] ~ N(0,1), T5 context [1, L, 4096] ~ N(0,1), pooled CLIP [1, 768] ~ N(0,1),
     * img_ids (0, row, col), txt_ids 0, sigma 0.5, guidance 3.5 (as FluxPipeline passes them) */
    int64_t side = image / 16, N = side * side, L = text;
    float *x = xmalloc(sizeof(float) * (size_t)(N * in_ch)), *out = xmalloc(sizeof(float) * (size_t)(N * in_ch));
    float *context = xmalloc(sizeof(float) * (size_t)(L * joint)), *pool = xmalloc(sizeof(float) * (size_t)pooled);
    float *img_ids = calloc((size_t)(N * 3), sizeof(float)), *txt_ids = calloc((size_t)(L * 3), sizeof(float));
    if (!img_ids || !txt_ids) die("out of memory");
    rng r = seeded("inputs", 42);
    for (int64_t i = 0; i < N * in_ch; i++) x[i] = gauss(&r);
    for (int64_t i = 0; i < L * joint; i++) context[i] = gauss(&r);
    for (int64_t i = 0; i < pooled; i++) pool[i] = gauss(&r);
    for (int64_t i = 0; i < N; i++) { img_ids[3 * i + 1] = (float)(i / side); img_ids[3 * i + 2] = (float)(i % side); }
    float ts = 0.5f, gd = 3.5f;

    for (int i = 0; i < warmup; i++) {
        t0 = qd_now();
        if (qd_flux_forward(ctx, m, x, 1, N, &ts, guidance ? &gd : NULL, pool, context, L, img_ids, txt_ids, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        printf("warm-up     %.2f s\n", qd_now() - t0);
    }
    trace_buf tb = {0}, best_tb = {0};
    ctx->trace = on_op;
    ctx->trace_user = &tb;
    double best = 1e30, best_others = 0, sum = 0;
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < steps; i++) {
        wait_idle(idle_wait, 1);
        trace_reset(&tb);
        double busy0 = machine_busy_s(), self0 = self_cpu_s();
        t0 = tb.t0 = qd_now();
        if (qd_flux_forward(ctx, m, x, 1, N, &ts, guidance ? &gd : NULL, pool, context, L, img_ids, txt_ids, out) != QD_OK)
            die("forward: %s", qd_last_error(ctx));
        double s = qd_now() - t0;
        double others = ((machine_busy_s() - busy0) - (self_cpu_s() - self0)) / (s * ncpu);
        if (others < 0) others = 0;
        printf("step %d      %.3f s (other processes: %.0f%% of the CPUs)\n", i + 1, s, 100 * others);
        sum += s;
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
    int64_t nout = N * in_ch, bad = 0;
    double asum = 0;
    for (int64_t i = 0; i < nout; i++) {
        if (!isfinite(out[i])) bad++;
        else asum += fabs(out[i]);
    }
    if (bad) die("output has %lld non-finite values", (long long)bad);

    /* totals per op class and per shape; block spans from the trace's timestamps */
    trace_summary sum_ops;
    trace_summarize(&tb, &sum_ops);
    double flops = sum_ops.flops, op_s = sum_ops.op_s;
    /* block spans: first modulation linear of a block (M=1, out 6D for double blocks
     * [two per block: norm1, norm1_context], 3D for single blocks) starts it. */
    double dstart = -1, sstart = -1, dend = 0, send = 0, prev_end = 0;
    int seen6 = 0;
    for (int i = 0; i < tb.n; i++) {
        const oprec *o = &tb.r[i];
        int lin = o->op == OP_LINEAR && o->d[0] == 1;
        if (lin && o->d[2] == 6 * D && !seen6++) dstart = prev_end;
        if (lin && o->d[2] == 3 * D && sstart < 0) { sstart = prev_end; dend = prev_end; }
        if (lin && o->d[2] == 2 * D) send = prev_end;   /* norm_out */
        prev_end = o->t_end;
    }
    if (ns == 0) dend = send;
    double per_double = nd > 0 && dstart >= 0 ? (dend - dstart) / nd : 0;
    double per_single = ns > 0 && sstart >= 0 ? (send - sstart) / ns : 0;
    double rest = best - per_double * nd - per_single * ns;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm = status_kb("VmHWM"), anon = status_kb("RssAnon"), file = status_kb("RssFile");
    printf("\n== FLUX transformer forward: %dx%d image (%lld tokens) + %lld text tokens, batch 1, %s weights, "
           "matmul %s, %s math, %d threads, GEMM kernel %s ==\n",
           image, image, (long long)N, (long long)L, layout, matmul, precision, qd_ctx_threads(ctx), qd_gemm_isa());
    printf("blocks      %d double + %d single (FLUX.1-dev has 19 + 38)\n", nd, ns);
    printf("s/step      %.3f (best of %d; mean %.3f; %d warm-up)\n", best, steps, sum / steps, warmup);
    printf("per block   double %.3f s, single %.3f s, outside the blocks %.3f s (from the trace's timestamps)\n",
           per_double, per_single, rest);
    printf("extrapolated to 19 double + 38 single: %.1f s/step (EXTRAPOLATED, not measured)\n",
           rest + 19 * per_double + 38 * per_single);
    printf("FLOPs       %.1f GFLOP per step (traced linear/attention)\n", flops / 1e9);
    printf("GFLOP/s     %.1f (best step), %.1f (inside traced ops)\n", flops / 1e9 / best, flops / 1e9 / op_s);
    printf("peak RSS    VmHWM %.0f MB (after load %.0f MB), ru_maxrss %.0f MB; now RssAnon %.0f MB, RssFile %.0f MB "
           "(mapped weights)\n",
           hwm / 1024.0, hwm_load / 1024.0, ru.ru_maxrss / 1024.0, anon / 1024.0, file / 1024.0);
    printf("output      finite, mean |out| %.4g\n", asum / nout);
    printf("contention  other processes used %.0f%% of the machine's CPU time during the fastest step%s\n\n",
           100 * best_others, best_others > 0.05 ? "  ** numbers are NOT clean **" : "");
    trace_print(&sum_ops, OP_LINEAR, best, "RMS/layer norms, RoPE, GELU, modulation, copies");

    if (trace_path) {
        FILE *f = fopen(trace_path, "w");
        if (!f) die("%s: %s", trace_path, strerror(errno));
        fprintf(f, "{\n\"config\": \"%s\", \"layout\": \"%s\", \"matmul\": \"%s\", \"double\": %d, \"single\": %d,\n",
                config, layout, matmul, nd, ns);
        fprintf(f, "\"image\": %d, \"text\": %d, \"batch\": 1, \"threads\": %d, \"isa\": \"%s\",\n", image, text,
                qd_ctx_threads(ctx), qd_gemm_isa());
        fprintf(f, "\"steps\": %d, \"step_seconds\": %.6f, \"best_seconds\": %.6f, \"per_double_s\": %.6f, "
                   "\"per_single_s\": %.6f, \"rest_s\": %.6f,\n",
                steps, sum / steps, best, per_double, per_single, rest);
        fprintf(f, "\"params\": %lld, \"gflop\": %.3f, \"op_seconds\": %.6f, \"ru_maxrss_kb\": %ld, \"vmhwm_kb\": %ld,\n",
                (long long)nparams, flops / 1e9, op_s, ru.ru_maxrss, hwm);
        fprintf(f, "\"other_processes_cpu_fraction\": %.4f,\n\"ops\": [\n", best_others);
        trace_write_ops(f, &tb);
        fprintf(f, "]\n}\n");
        if (fclose(f)) die("%s: write failed", trace_path);
        printf("\ntrace       %s (%d ops)\n", trace_path, tb.n);
    }

    qd_flux_free(m);
    if (delete_weights) {
        remove(w_out);
        printf("weights     deleted %s (use --keep or --reuse to keep them)\n", w_out);
    }
    free(sum_ops.ss); free(tb.r); free(pl.p);
    free(x); free(out); free(context); free(pool); free(img_ids); free(txt_ids);
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    return 0;
}
