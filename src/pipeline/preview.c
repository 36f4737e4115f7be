#include "pipeline/preview.h"
#include "base/ctx.h"

#include <stdlib.h>

/* The integer factor that brings (h, w) latent cells of f pixels each within max_size. */
static int64_t shrink_factor(int64_t h, int64_t w, int f, int max_size) {
    int64_t side = h > w ? h : w, k = 1;
    if (max_size <= 0) return 1;
    while (side / k * f > max_size && side / (k + 1) >= 1 && (h / (k + 1)) >= 1 && (w / (k + 1)) >= 1) k++;
    return k;
}

qd_status qd_send_preview(qd_ctx *ctx, const qd_gen_params *p, const float *z, int64_t C, int64_t h, int64_t w,
                          int step, int total) {
    int f = qd_vae_describe(p->preview_vae)->downscale;
    int64_t k = shrink_factor(h, w, f, p->preview_max_size), hk = h / k, wk = w / k;
    float *zk = NULL;
    if (k > 1) {   /* box average; a remainder row/column (h or w not a multiple of k) is dropped */
        zk = qd_malloc(ctx, sizeof(float) * (size_t)(C * hk * wk));
        if (!zk) return QD_ERR_NOMEM;
        float inv = 1.0f / (float)(k * k);
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < hk; i++)
                for (int64_t j = 0; j < wk; j++) {
                    float s = 0;
                    for (int64_t a = 0; a < k; a++)
                        for (int64_t b = 0; b < k; b++) s += z[(c * h + i * k + a) * w + j * k + b];
                    zk[(c * hk + i) * wk + j] = s * inv;
                }
        z = zk;
    }
    uint8_t *rgb = qd_malloc(ctx, (size_t)(hk * f) * (size_t)(wk * f) * 3);
    qd_status st = rgb ? qd_preview_decode(ctx, p->preview_vae, z, 1, (int)C, (int)wk, (int)hk, rgb) : QD_ERR_NOMEM;
    if (st == QD_OK) p->preview(p->preview_user, step, total, rgb, (int)(wk * f), (int)(hk * f));
    free(rgb);
    free(zk);
    return st;
}
