/* The public API's contract beyond the goldens: progress reports every model call,
 * a non-zero return from the callback (or qd_cancel) stops the run with
 * QD_ERR_CANCELLED, RGB8 is round(F32 * 255), batches fill every image, bad
 * parameters are refused with a message. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int calls, last_step, total, stop_at; qd_ctx *ctx; int use_cancel; } progress_log;

typedef struct { int calls, last_step, w, h; uint8_t last[64 * 64 * 3]; } preview_log;

static void on_preview(void *user, int step, int total, const uint8_t *rgb, int width, int height) {
    preview_log *p = user;
    p->calls++;
    p->last_step = step;
    p->w = width;
    p->h = height;
    if (width * height * 3 <= (int)sizeof p->last) memcpy(p->last, rgb, (size_t)(width * height * 3));
}

static int on_progress(void *user, int step, int total, double elapsed) {
    progress_log *p = user;
    p->calls++;
    p->last_step = step;
    p->total = total;
    if (p->stop_at && step == p->stop_at) {
        if (p->use_cancel) { qd_cancel(p->ctx); return 0; }
        return 1;
    }
    return 0;
}

int main(void) {
    check(qd_gen_params_size() == sizeof(qd_gen_params), "qd_gen_params_size() is sizeof(qd_gen_params)");
    qd_ctx *ctx = qd_ctx_new(0);
    /* precision: AUTO by default, bf16 exactly where the CPU has AVX512_BF16 */
    __builtin_cpu_init();
    int has_bf16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    if (!getenv("QD_ISA")) {   /* QD_ISA=avx2|generic rules bf16 out: nothing to compare with then */
        int want = has_bf16 ? QD_PRECISION_BF16 : QD_PRECISION_FP32;
        check(qd_ctx_precision(ctx) == want, "default precision auto: %s on this CPU", has_bf16 ? "bf16" : "fp32");
        qd_set_precision(ctx, QD_PRECISION_BF16);
        check(qd_ctx_precision(ctx) == want, "bf16 asked: %s on this CPU", has_bf16 ? "bf16" : "fp32");
    }
    qd_set_precision(ctx, QD_PRECISION_FP32);
    check(qd_ctx_precision(ctx) == QD_PRECISION_FP32, "fp32 asked: fp32");
    qd_set_precision(ctx, 7);
    check(qd_ctx_precision(ctx) == QD_PRECISION_FP32, "an unknown precision is ignored");
    qd_set_precision(ctx, QD_PRECISION_AUTO);
    qd_model *m;
    qd_status st = qd_model_open(ctx, fixture("models/sd15-tiny"), &m);
    check(st == QD_OK, "open sd15-tiny: %s", st ? qd_last_error(ctx) : "ok");
    if (st) return test_summary();
    check(strcmp(qd_model_family(m), "sd15") == 0 && strcmp(qd_model_scheduler(m), "PNDMScheduler") == 0 &&
              qd_model_default_size(m) == 64, "family sd15, scheduler PNDM, 64 px");

    qd_gen_params p;
    qd_gen_params_default(&p);
    p.prompt = "a photograph of an astronaut riding a horse";
    p.steps = 4;
    p.seed = 5;
    p.scheduler = "EulerDiscreteScheduler";
    progress_log log = {0};
    p.progress = on_progress;
    p.progress_user = &log;
    size_t n = qd_image_size(m, &p, QD_IMAGE_RGB8);
    uint8_t *rgb = malloc(n);
    float *f = malloc(qd_image_size(m, &p, QD_IMAGE_F32));
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL);
    check(st == QD_OK && log.calls == 4 && log.last_step == 4 && log.total == 4, "progress: %d calls, total %d", log.calls, log.total);
    st = qd_generate(ctx, m, &p, QD_IMAGE_F32, f, NULL);
    int same = st == QD_OK;
    for (size_t i = 0; same && i < n; i++) same = rgb[i] == (uint8_t)lrintf(f[i] * 255.0f) && f[i] >= 0 && f[i] <= 1;
    check(same, "RGB8 equals round(F32 * 255), F32 in [0,1]");

    log = (progress_log){0};
    log.stop_at = 2;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL);
    check(st == QD_ERR_CANCELLED && log.calls == 2, "callback returning 1 cancels after step 2: %s", qd_last_error(ctx));
    log = (progress_log){0};
    log.stop_at = 3; log.use_cancel = 1; log.ctx = ctx;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL);
    check(st == QD_ERR_CANCELLED && log.calls == 3, "qd_cancel stops after step 3");
    log = (progress_log){0};
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL);
    check(st == QD_OK, "a new run after a cancel works");

    /* batch 2: both images finite and different (they get different noise) */
    p.batch = 2;
    uint8_t *rgb2 = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    int64_t shape[4];
    size_t nl = qd_latent_shape(m, &p, shape, NULL);
    float *lat = malloc(sizeof(float) * nl);
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb2, lat);
    int finite = 1;
    for (size_t i = 0; i < nl; i++) finite &= isfinite(lat[i]);
    check(st == QD_OK && shape[0] == 2 && shape[1] == 4 && shape[2] == 8 && finite &&
              memcmp(rgb2, rgb2 + n, n) != 0, "batch 2: latents [2,4,8,8] finite, images differ");
    p.batch = 1;

    p.width = 60;
    check(qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL) == QD_ERR_ARG && strstr(qd_last_error(ctx), "multiples of 8"),
          "width 60 refused: %s", qd_last_error(ctx));
    p.width = 0;
    p.steps = -1;
    check(qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL) == QD_ERR_ARG, "steps -1 refused: %s", qd_last_error(ctx));
    p.steps = 2;
    p.scheduler_options = "[1,2]";
    check(qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL) == QD_ERR_ARG && strstr(qd_last_error(ctx), "JSON object"),
          "scheduler options must be an object: %s", qd_last_error(ctx));

    /* previews: with Euler, the last step lands exactly on the predicted x0, so the
     * last preview decoded with the model's own VAE is the final image */
    p.scheduler_options = NULL;
    p.steps = 4;
    qd_vae_model *vae = NULL;
    check(qd_vae_open(ctx, fixture("models/sd15-tiny/vae"), &vae) == QD_OK, "open the model's VAE for previews");
    preview_log pl = {0};
    p.preview_vae = vae;
    p.preview_every = 3;
    p.preview = on_preview;
    p.preview_user = &pl;
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL);
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)rgb[i] - (int)pl.last[i]);
        if (d > maxd) maxd = d;
    }
    check(st == QD_OK && pl.calls == 2 && pl.last_step == 4 && pl.w == 64 && pl.h == 64,
          "previews at steps 3 and 4 of 4 (every 3, and the last): %d calls, last %d, %dx%d", pl.calls, pl.last_step,
          pl.w, pl.h);
    check(maxd <= 1, "Euler's last preview equals the final image (max diff %d)", maxd);
    /* preview_max_size 32 on a 64x64 image: the latents are averaged over 2x2 cells
     * first, so the last preview is the decode of the final latents averaged here */
    p.preview_max_size = 32;
    pl.calls = 0;
    float lat1[4 * 8 * 8], small[4 * 4 * 4];
    st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, lat1);
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                const float *q = lat1 + (c * 8 + 2 * i) * 8 + 2 * j;
                small[(c * 4 + i) * 4 + j] = (q[0] + q[1] + q[8] + q[9]) / 4;
            }
    uint8_t want[32 * 32 * 3];
    qd_status st2 = qd_vae_decode_latent(ctx, vae, small, 1, 4, 4, QD_IMAGE_RGB8, want);
    maxd = 0;
    for (size_t i = 0; i < sizeof want; i++) {
        int d = abs((int)want[i] - (int)pl.last[i]);
        if (d > maxd) maxd = d;
    }
    check(st == QD_OK && st2 == QD_OK && pl.w == 32 && pl.h == 32 && maxd <= 1,
          "preview_max_size 32: a %dx%d preview, the decode of the 2x2-averaged final latents (max diff %d)", pl.w,
          pl.h, maxd);
    p.preview_max_size = 0;
    qd_vae_model *wrong = NULL;
    check(qd_vae_open(ctx, fixture("taesd/taef2_decoder.safetensors"), &wrong) == QD_OK, "open taef2 (32 channels)");
    p.preview_vae = wrong;
    check(qd_generate(ctx, m, &p, QD_IMAGE_RGB8, rgb, NULL) == QD_ERR_ARG && strstr(qd_last_error(ctx), "family"),
          "a preview VAE of another family is refused: %s", qd_last_error(ctx));
    qd_vae_close(wrong);
    qd_vae_close(vae);

    free(rgb); free(rgb2); free(f); free(lat);
    qd_model_free(m);
    qd_ctx_free(ctx);
    return test_summary();
}
