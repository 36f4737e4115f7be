/* CLIP text encoders against transformers' outputs (sd15-tiny CLIPTextModel with
 * quick_gelu; sdxl-tiny CLIPTextModelWithProjection with gelu). */
#include "testutil.h"
#include "text/clip_text.h"

#include <stdlib.h>
#include <string.h>

static void run(qd_ctx *ctx, const char *model, const char *golden, const char *pooled_name) {
    char dir[512], gpath[512];
    snprintf(dir, sizeof dir, "%s", fixture(model));
    snprintf(gpath, sizeof gpath, "%s", fixture(golden));
    qd_clip_text *m;
    qd_status st = qd_clip_text_load(ctx, dir, &m);
    check(st == QD_OK, "load %s: %s", model, st ? qd_last_error(ctx) : "ok");
    if (st) return;
    int64_t shape[4];
    size_t n_ids, n_last, n_pool;
    float *idf = load_f32(gpath, "input_ids", shape, NULL, &n_ids);
    float *ref_last = load_f32(gpath, "last_hidden_state", NULL, NULL, &n_last);
    float *ref_pen = load_f32(gpath, "penultimate_hidden_state", NULL, NULL, NULL);
    float *ref_pool = load_f32(gpath, pooled_name, NULL, NULL, &n_pool);
    int64_t B = shape[0], L = shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * n_ids);
    for (size_t i = 0; i < n_ids; i++) ids[i] = (int32_t)idf[i];
    float *last = malloc(sizeof(float) * n_last), *pen = malloc(sizeof(float) * n_last);
    float *pool = malloc(sizeof(float) * n_pool);
    int proj = strcmp(pooled_name, "text_embeds") == 0;
    st = qd_clip_text_forward(ctx, m, ids, B, L, last, pen, proj ? NULL : pool, proj ? pool : NULL);
    check(st == QD_OK, "forward %s", model);
    char what[600];
    snprintf(what, sizeof what, "%s last_hidden_state", model);
    check_close(what, last, ref_last, n_last, 1e-4, 1e-3);
    snprintf(what, sizeof what, "%s penultimate_hidden_state", model);
    check_close(what, pen, ref_pen, n_last, 1e-4, 1e-3);
    snprintf(what, sizeof what, "%s %s", model, pooled_name);
    check_close(what, pool, ref_pool, n_pool, 1e-4, 1e-3);
    free(idf); free(ref_last); free(ref_pen); free(ref_pool); free(ids); free(last); free(pen); free(pool);
    qd_clip_text_free(m);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    run(ctx, "models/sd15-tiny/text_encoder", "goldens/sd15-tiny/text_encoder.safetensors", "pooler_output");
    run(ctx, "models/sdxl-tiny/text_encoder_2", "goldens/sdxl-tiny/text_encoder_2.safetensors", "text_embeds");
    qd_clip_text *m;
    check(qd_clip_text_load(ctx, "/nonexistent/text_encoder", &m) != QD_OK &&
              strstr(qd_last_error(ctx), "/nonexistent/text_encoder/config.json"),
          "missing folder names config.json: %s", qd_last_error(ctx));
    qd_ctx_free(ctx);
    return test_summary();
}
