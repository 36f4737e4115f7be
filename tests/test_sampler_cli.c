/* Scheduler and sampler choice through `qdiff generate` run as a separate
 * process ($QD_QDIFF, set by ctest):
 *   - every sd15-tiny pipeline golden with --scheduler CLASSNAME and the case's
 *     scheduler_kwargs as repeated --scheduler-opt KEY=VALUE (JSON scalars),
 *     plus --guidance-rescale: --save-latents within relative L2 1e-3 of the
 *     golden's latents, the PNG within +-2 for >= 99.9% of values;
 *   - the two k-sampler runs that compute what a golden's scheduler computes
 *     (see test_ksample_pipeline.c): euler + karras on sd15-tiny with diffusers'
 *     karras range, euler + simple on flux-tiny;
 *   - `qdiff samplers` and bad names / options: exit status 2, the valid names
 *     listed, no output file. */
#include "testutil.h"
#include "io/json.h"
#include "sample/scheduler.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *qdiff_bin;
static char dir[] = "/tmp/qd_sampler_cli_XXXXXX";

/* Run qdiff with args; stderr to dir/err. Exit status, -1 if it did not exit. */
static int run(const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>'%s/err' >'%s/out'", qdiff_bin, args, dir, dir);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Append ' text' single-quoted for the shell. */
static void arg(char *buf, size_t cap, const char *text) {
    size_t n = strlen(buf);
    if (n + 4 >= cap) return;
    buf[n++] = ' ';
    buf[n++] = '\'';
    for (const char *c = text; *c && n + 6 < cap; c++) {
        if (*c == '\'') { memcpy(buf + n, "'\\''", 4); n += 4; }
        else buf[n++] = *c;
    }
    buf[n++] = '\'';
    buf[n] = 0;
}

static void argf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void argf(char *buf, size_t cap, const char *fmt, ...) {
    char t[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    arg(buf, cap, t);
}

static char *read_file_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = malloc(1 << 16);
    size_t n = fread(s, 1, (1 << 16) - 1, f);
    s[n] = 0;
    fclose(f);
    return s;
}

static const char *err_text(void) {
    static char buf[4096];
    char path[600];
    snprintf(path, sizeof path, "%s/err", dir);
    char *t = read_file_text(path);
    snprintf(buf, sizeof buf, "%s", t ? t : "");
    free(t);
    for (char *c = buf; *c; c++)
        if (*c == '\n') *c = ' ';
    return buf;
}

/* Latents (and the PNG) of a run against a golden. */
static void compare(const char *what, const char *golden, const char *lat_path, const char *png_path) {
    size_t n = 0, n_ref = 0, n_img = 0;
    float *lat = load_f32(lat_path, "latents", NULL, NULL, &n), *ref = load_f32(golden, "latents", NULL, NULL, &n_ref);
    uint8_t *ref_img = load_raw(golden, "image_u8", &n_img), *img = NULL;
    int w = 0, h = 0;
    qd_ctx *ctx = test_ctx_new(1);
    qd_status st = qd_read_image(ctx, png_path, &img, &w, &h);
    qd_ctx_free(ctx);
    if (!lat || !ref || n != n_ref || st != QD_OK || !ref_img || (size_t)w * h * 3 != n_img) {
        check(0, "%s: outputs missing or of the wrong size", what);
    } else {
        double r = rel_l2(lat, ref, n);
        size_t close = 0;
        for (size_t i = 0; i < n_img; i++) close += abs((int)img[i] - (int)ref_img[i]) <= 2;
        check(r <= 1e-3 && close >= n_img * 0.999, "%s: latents rel_l2 %.3g, image %.4f%% within +-2", what, r,
              100.0 * close / n_img);
    }
    free(lat); free(ref); free(ref_img); free(img);
}

static void sd15_goldens_through_cli(void) {
    qd_ctx *ctx = test_ctx_new(1);
    cJSON *cases = NULL;
    if (qd_json_load(ctx, fixture("goldens/sd15-tiny/cases.json"), &cases) != QD_OK) {
        check(0, "%s", qd_last_error(ctx));
        qd_ctx_free(ctx);
        return;
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(cases, "pipelines");
    char lat_path[600], png_path[600];
    snprintf(lat_path, sizeof lat_path, "%s/lat.safetensors", dir);
    snprintf(png_path, sizeof png_path, "%s/img.png", dir);
    for (const cJSON *c = list ? list->child : NULL; c; c = c->next) {
        char args[8192] = "generate -q";
        argf(args, sizeof args, "-m");
        arg(args, sizeof args, fixture("models/sd15-tiny"));
        argf(args, sizeof args, "-p");
        arg(args, sizeof args, qd_json_str(c, "prompt", ""));
        if (qd_json_str(c, "negative_prompt", NULL)) {
            argf(args, sizeof args, "-n");
            arg(args, sizeof args, qd_json_str(c, "negative_prompt", ""));
        }
        argf(args, sizeof args, "--steps=%d", qd_json_int(c, "num_inference_steps", 20));
        argf(args, sizeof args, "--cfg=%.9g", qd_json_num(c, "guidance_scale", 7.5));
        argf(args, sizeof args, "--seed=%.0f", qd_json_num(c, "seed", 0));
        argf(args, sizeof args, "-W%d", qd_json_int(c, "width", 64));
        argf(args, sizeof args, "-H%d", qd_json_int(c, "height", 64));
        if (qd_json_num(c, "guidance_rescale", 0) > 0)
            argf(args, sizeof args, "--guidance-rescale=%.9g", qd_json_num(c, "guidance_rescale", 0));
        argf(args, sizeof args, "--scheduler=%s", qd_json_str(c, "scheduler", ""));
        const cJSON *kw = cJSON_GetObjectItemCaseSensitive(c, "scheduler_kwargs");
        for (const cJSON *k = kw ? kw->child : NULL; k; k = k->next) {
            char *v = cJSON_PrintUnformatted(k);   /* a JSON scalar: 0.995, true, "trailing" */
            if (cJSON_IsString(k)) argf(args, sizeof args, "--scheduler-opt=%s=%s", k->string, k->valuestring);
            else argf(args, sizeof args, "--scheduler-opt=%s=%s", k->string, v);
            free(v);
        }
        argf(args, sizeof args, "--save-latents=%s", lat_path);
        argf(args, sizeof args, "-o");
        arg(args, sizeof args, png_path);
        const char *golden = qd_json_str(c, "golden", "?");
        int rc = run(args);
        check(rc == 0, "CLI %s (%s): exit %d %s", golden, qd_json_str(c, "scheduler", ""), rc, err_text());
        if (rc == 0) {
            char gpath[600], what[700];
            snprintf(gpath, sizeof gpath, "%s/%s", fixture("goldens/sd15-tiny"), golden);
            snprintf(what, sizeof what, "CLI %s", golden);
            compare(what, gpath, lat_path, png_path);
        }
        remove(lat_path);
        remove(png_path);
    }
    cJSON_Delete(cases);
    qd_ctx_free(ctx);
}

static void ksampler_golden(const char *what, const char *golden, const char *model, const char *extra) {
    char lat_path[600], png_path[600], args[8192] = "generate -q";
    snprintf(lat_path, sizeof lat_path, "%s/klat.safetensors", dir);
    snprintf(png_path, sizeof png_path, "%s/kimg.png", dir);
    argf(args, sizeof args, "-m");
    arg(args, sizeof args, fixture(model));
    size_t n = strlen(args);
    snprintf(args + n, sizeof args - n, " %s --save-latents '%s' -o '%s'", extra, lat_path, png_path);
    int rc = run(args);
    check(rc == 0, "CLI %s: exit %d %s", what, rc, err_text());
    if (rc == 0) compare(what, fixture(golden), lat_path, png_path);
    remove(lat_path);
    remove(png_path);
}

static void ksampler_goldens_through_cli(void) {
    /* diffusers' karras range for 6 leading steps: the training sigmas at t = 831 and 1,
     * printed exactly (see test_ksample_pipeline.c) */
    qd_ctx *ctx = test_ctx_new(1);
    cJSON *config = NULL;
    qd_scheduler *s = NULL;
    qd_status st = qd_json_load(ctx, fixture("models/sd15-tiny/scheduler/scheduler_config.json"), &config);
    if (st == QD_OK) st = qd_scheduler_new(ctx, config, "EulerDiscreteScheduler", NULL, &s);
    check(st == QD_OK, "sd15-tiny scheduler config: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        const float *ac = qd_scheduler_alphas_cumprod(s, NULL);
        char extra[1024];
        snprintf(extra, sizeof extra,
                 "-p 'UPPERCASE and MiXeD case, numbers 1234567890 and 3.14159' -n lowres --steps 6 --cfg 6 "
                 "--seed 608 -W 64 -H 64 --sampler euler --schedule karras --noise-mode diffusers "
                 "--scheduler-opt sigma_min=%.17g --scheduler-opt sigma_max=%.17g",
                 (double)qd_sched_sigma_from_ac(ac[1]), (double)qd_sched_sigma_from_ac(ac[831]));
        ksampler_golden("sd15-tiny --sampler euler --schedule karras = pipe_euler_karras",
                        "goldens/sd15-tiny/pipe_euler_karras.safetensors", "models/sd15-tiny", extra);
    }
    qd_scheduler_free(s);
    cJSON_Delete(config);
    qd_ctx_free(ctx);
    ksampler_golden("flux-tiny --sampler euler --schedule simple = pipe_flow_euler",
                    "goldens/flux-tiny/pipe_flow_euler.safetensors", "models/flux-tiny",
                    "-p 'a photograph of an astronaut riding a horse' --steps 4 --guidance 3.5 --seed 2024 -W 96 "
                    "-H 64 --max-sequence-length 512 --sampler euler --schedule simple --noise-mode diffusers");
}

static void names_and_bad_input(void) {
    int rc = run("samplers");
    char path[600];
    snprintf(path, sizeof path, "%s/out", dir);
    char *out = read_file_text(path);
    int lines = 0;
    for (char *c = out; c && *c; c++) lines += *c == '\n';
    check(rc == 0 && out && strstr(out, "dpmpp_2m_sde") && strstr(out, "kl_optimal") &&
              strstr(out, "UniPCMultistepScheduler") && lines >= 70,
          "qdiff samplers: %d lines, samplers, schedules and classes", lines);
    free(out);

    static const char *const bad[][2] = {
        {"--sampler euler_a", "dpmpp_2m_sde"},
        {"--sampler euler --schedule karas", "kl_optimal"},
        {"--scheduler Euler", "EulerDiscreteScheduler"},
        {"--sampler euler --scheduler-opt eta", "KEY=VALUE"},
        {"--sampler euler --eta much", "--eta expects a number"},
        {"--schedule karras", "go with --sampler"},
        {"--sampler euler --scheduler EulerDiscreteScheduler", "replaces"},
        {"--sampler euler --noise-mode torch", "comfyui or diffusers"},
        {"--sampler euler --scheduler-options '[1]'", "JSON object"},
        {"--sampler euler --scheduler-opt eta=fast", "must be a number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[4096] = "generate -q -p cat --steps 2";
        argf(args, sizeof args, "-m");
        arg(args, sizeof args, fixture("models/sd15-tiny"));
        char png[600];
        snprintf(png, sizeof png, "%s/bad.png", dir);
        size_t n = strlen(args);
        snprintf(args + n, sizeof args - n, " %s -o '%s'", bad[i][0], png);
        rc = run(args);
        const char *e = err_text();
        check(rc == 2 && strstr(e, bad[i][1]) && access(png, F_OK) != 0, "%s: exit %d, %.100s", bad[i][0], rc, e);
        remove(png);
    }
}

int main(void) {
    qdiff_bin = getenv("QD_QDIFF");
    setenv("QD_PRECISION", "fp32", 1);   /* the CLI runs are compared with fp32 goldens (its default is auto) */
    if (!qdiff_bin || !mkdtemp(dir)) {
        check(0, "needs $QD_QDIFF (run through ctest) and a temporary directory");
        return test_summary();
    }
    names_and_bad_input();
    sd15_goldens_through_cli();
    ksampler_goldens_through_cli();
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
