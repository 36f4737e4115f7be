/* A1111's img2img resize modes (modules/images.py resize_image), on RGB8 pictures:
 *   0 "Just resize": stretched to the size;
 *   1 "Crop and resize": scaled to cover it (the side that fits, the other by
 *     w * H // h or h * W // w), centred, the overflow cut;
 *   2 "Resize and fill": scaled to fit inside, centred, the margins filled by stretching the
 *     picture's edge rows or columns.
 * The resampling is qd_resize_rgb8's (A1111: Lanczos). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_resize_mode(qd_ctx *ctx, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh, int mode, char *err,
                    size_t errn) {
    if (mode == CLI_RESIZE_JUST || (sw == dw && sh == dh)) {
        if (qd_resize_rgb8(ctx, src, sw, sh, dst, dw, dh) == QD_OK) return 0;
        snprintf(err, errn, "%s", qd_last_error(ctx));
        return -1;
    }
    double ratio = (double)dw / dh, src_ratio = (double)sw / sh;
    int fit_w = mode == CLI_RESIZE_FILL ? ratio < src_ratio : ratio > src_ratio;   /* the scaled picture spans dw */
    int rw = fit_w ? dw : (int)((long long)sw * dh / sh), rh = fit_w ? (int)((long long)sh * dw / sw) : dh;
    if (rw < 1) rw = 1;
    if (rh < 1) rh = 1;
    uint8_t *r = malloc((size_t)rw * rh * 3);
    if (!r || qd_resize_rgb8(ctx, src, sw, sh, r, rw, rh) != QD_OK) {
        snprintf(err, errn, "%s", r ? qd_last_error(ctx) : "out of memory");
        free(r);
        return -1;
    }
    int ox = dw / 2 - rw / 2, oy = dh / 2 - rh / 2;
    for (int y = 0; y < dh; y++) {
        int sy = y - oy;
        sy = sy < 0 ? 0 : sy >= rh ? rh - 1 : sy;   /* fill: the edge rows stretched (cropping: never) */
        for (int x = 0; x < dw; x++) {
            int sx = x - ox;
            sx = sx < 0 ? 0 : sx >= rw ? rw - 1 : sx;
            memcpy(dst + ((size_t)y * dw + x) * 3, r + ((size_t)sy * rw + sx) * 3, 3);
        }
    }
    free(r);
    return 0;
}

int cli_resize_mode_name(const char *name) {
    static const char *const names[] = {"just", "crop", "fill"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}
