/* The public API's contract beyond the goldens: progress reports every model call,
 * a non-zero return from the callback (or qd_cancel) stops the run with
 * QD_ERR_CANCELLED, RGB8 is round(F32 * 255), batches fill every image, bad
 * parameters are refused with a message. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int calls, last_step, total, stop_at; qd_ctx *ctx; int use_cancel; } progress_log;

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
    qd_ctx *ctx = qd_ctx_new(0);
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

    free(rgb); free(rgb2); free(f); free(lat);
    qd_model_free(m);
    qd_ctx_free(ctx);
    return test_summary();
}
