/* qdiff quantize at real size (issue 5, "Done when"): a random SD1.5 UNet written
 * as an fp16 diffusers folder (the same parameter list and values as bench_sdnq.c, from
 * bench/support), then quantized by qd_quantize in a fresh process per setting, with
 * the peak resident set (VmHWM, mapped input pages included) against the model's size,
 * wall and CPU time, and bytes in/out.
 *
 *   bench_quantize [--config bench/configs/sd15_unet.json] [--dir /tmp/qd_bench_quantize]
 *                  [--threads N] [--keep] [--reuse] [--settings int8,uint4-svd,int8-conv]
 *
 * --reuse keeps an input folder already written by an earlier --keep run.
 *
 * Settings: int8 (sdnq defaults: Linear layers, auto group size, default skip list),
 * uint4-svd (uint4 + SVD rank 32, 8 steps), int8-conv (int8 with --quant-conv: the
 * largest tensors, 1280x2560x3x3 convs, are then quantized too). */
#include "qdiff.h"
#include "base/ctx.h"
#include "base/half.h"
#include "io/json.h"
#include "io/safetensors_stream.h"
#include "bench_util.h"
#include "unet_params.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the input folder ---- */

/* model_index.json + unet/{config.json, diffusion_pytorch_model.safetensors} in fp16,
 * streamed tensor by tensor. Returns the weights' bytes. */
static uint64_t write_input(qd_ctx *ctx, const char *dir, const char *config_path, const cJSON *cfg) {
    char path[4200], unet[4200];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    write_text(path, "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"unet\": [\n    \"diffusers\",\n"
                     "    \"UNet2DConditionModel\"\n  ]\n}");
    snprintf(unet, sizeof unet, "%s/unet", dir);
    mkdir(unet, 0755);
    char *text;
    size_t len;
    FILE *f = fopen(config_path, "rb");
    if (!f) die("%s: %s", config_path, strerror(errno));
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    text = xmalloc(len + 1);
    if (fread(text, 1, len, f) != len) die("%s: read failed", config_path);
    text[len] = 0;
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", unet);
    write_text(path, text);
    free(text);
    plist pl = {0};
    unet_require_sd1(cfg);
    unet_params(cfg, &pl);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", unet);
    qd_st_stream *s;
    if (qd_st_stream_open(ctx, path, &s) != QD_OK) die("%s", qd_last_error(ctx));
    uint64_t bytes = 0;
    for (int i = 0; i < pl.n; i++) {
        const pdesc *d = &pl.p[i];
        int64_t n = numel(d);
        float *w = xmalloc(sizeof(float) * (size_t)n);
        uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)n);
        values(d, w);
        for (int64_t k = 0; k < n; k++) h[k] = qd_f32_to_f16(w[k]);
        if (qd_st_stream_add(ctx, s, d->name, QD_F16, d->ndim, d->shape, h) != QD_OK) die("%s", qd_last_error(ctx));
        bytes += (uint64_t)n * 2;
        free(w);
        free(h);
    }
    if (qd_st_stream_finish(ctx, s, "\"format\":\"pt\"") != QD_OK) die("%s", qd_last_error(ctx));
    free(pl.p);
    return bytes;
}

/* ---- measuring ---- */

typedef struct {
    int ok;
    char err[512];
    long hwm_start_kb, hwm_kb;
    double wall_s, cpu_s, rel_error;
    double bytes_in, bytes_out, quantized;
} result;

typedef struct {
    const char *name, *dtype;
    int svd, conv;
} setting;

static void run(const setting *s, const char *in, const char *out, int threads, result *r) {
    memset(r, 0, sizeof *r);
    r->hwm_start_kb = status_kb("VmHWM");
    qd_ctx *ctx = qd_ctx_new(threads);
    qd_quant_params p;
    qd_quant_params_default(&p);
    p.weights_dtype = s->dtype;
    p.use_svd = s->svd;
    p.quant_conv = s->conv;
    p.force = 1;
    char *json = NULL;
    double t0 = qd_now(), c0 = self_cpu_s();
    qd_status st = qd_quantize(ctx, in, out, &p, &json);
    r->wall_s = qd_now() - t0;
    r->cpu_s = self_cpu_s() - c0;
    r->hwm_kb = status_kb("VmHWM");
    if (st != QD_OK) snprintf(r->err, sizeof r->err, "%s", qd_last_error(ctx));
    else {
        cJSON *rep = cJSON_Parse(json);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rep, "totals");
        r->rel_error = qd_json_num(t, "rel_error", -1);
        r->bytes_in = qd_json_num(t, "bytes_in", 0);
        r->bytes_out = qd_json_num(t, "bytes_out", 0);
        r->quantized = qd_json_num(t, "quantized", 0);
        cJSON_Delete(rep);
        r->ok = 1;
    }
    qd_free(json);
    qd_ctx_free(ctx);
}

/* In a fresh process, so VmHWM is this run's alone. */
static void in_child(const setting *s, const char *in, const char *out, int threads, result *r) {
    int fd[2];
    if (pipe(fd)) die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fd[0]);
        result res;
        run(s, in, out, threads, &res);
        ssize_t w = write(fd[1], &res, sizeof res);
        _exit(w == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fd[1]);
    memset(r, 0, sizeof *r);
    ssize_t n = read(fd[0], r, sizeof *r);
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (n != (ssize_t)sizeof *r) snprintf(r->err, sizeof r->err, "child failed (status %d)", status);
}

int main(int argc, char **argv) {
    const char *config = "bench/configs/sd15_unet.json", *root = "/tmp/qd_bench_quantize";
    const char *which = "int8,uint4-svd,int8-conv";
    int threads = 0, keep = 0, reuse = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v) { config = v; i++; }
        else if (!strcmp(a, "--dir") && v) { root = v; i++; }
        else if (!strcmp(a, "--threads") && v) { threads = atoi(v); i++; }
        else if (!strcmp(a, "--settings") && v) { which = v; i++; }
        else if (!strcmp(a, "--keep")) keep = 1;
        else if (!strcmp(a, "--reuse")) reuse = 1;
        else die("usage: bench_quantize [--config FILE] [--dir DIR] [--threads N] [--settings LIST] [--keep]");
    }
    qd_ctx *ctx = qd_ctx_new(threads);
    cJSON *cfg;
    if (qd_json_load(ctx, config, &cfg) != QD_OK) die("%s", qd_last_error(ctx));
    char in[4200], out[4200];
    mkdir(root, 0755);
    snprintf(in, sizeof in, "%s/fp16", root);
    snprintf(out, sizeof out, "%s/out", root);
    double t0 = qd_now();
    char wpath[4400];
    snprintf(wpath, sizeof wpath, "%s/unet/diffusion_pytorch_model.safetensors", in);
    struct stat sb;
    uint64_t bytes;
    if (reuse && stat(wpath, &sb) == 0) {
        bytes = (uint64_t)sb.st_size;
        printf("input: %s (%.1f MiB fp16 UNet, reused)\n", in, bytes / 1048576.0);
    } else {
        bytes = write_input(ctx, in, config, cfg);
        printf("input: %s (%.1f MiB fp16 UNet, written in %.1f s)\n", in, bytes / 1048576.0, qd_now() - t0);
    }
    cJSON_Delete(cfg);
    qd_ctx_free(ctx);
    static const setting all[] = {{"int8", "int8", 0, 0}, {"uint4-svd", "uint4", 1, 0}, {"int8-conv", "int8", 0, 1}};
    printf("\n| setting | layers | bytes in -> out | weight rel. error | VmHWM | VmHWM / model | wall s | CPU s |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) {
        if (!strstr(which, all[k].name)) continue;
        result r;
        in_child(&all[k], in, out, threads, &r);
        if (!r.ok) { printf("| %s | failed: %s |\n", all[k].name, r.err); continue; }
        printf("| %s | %.0f | %.0f -> %.0f MiB | %.4f | %.0f MiB | %.1f%% | %.1f | %.1f |\n", all[k].name, r.quantized,
               r.bytes_in / 1048576.0, r.bytes_out / 1048576.0, r.rel_error, r.hwm_kb / 1024.0,
               100.0 * r.hwm_kb * 1024.0 / (double)bytes, r.wall_s, r.cpu_s);
        fflush(stdout);
    }
    if (!keep) {
        char cmd[8600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", in, out);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    }
    return 0;
}
