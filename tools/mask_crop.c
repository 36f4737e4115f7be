/* A1111's "Inpaint area: Only masked" (inpaint_full_res), as its processing.py and
 * masking.py do it:
 *   the box: the bounding box of the mask's non-zero pixels (after blur), grown by the
 *     padding and clamped to the picture (get_crop_region_v2), then grown along one side to
 *     the output's aspect ratio, shifted back inside the picture (expand_crop_region);
 *   the box of the picture and of the mask resized to the output size "resize and fill"
 *     (resize_image mode 2: fitted inside, the margins filled by stretching the edge rows
 *     or columns);
 *   each result resized to the box "crop and resize" (mode 1: scaled to cover it, centred),
 *     pasted into the picture, and the original composited over it with alpha 255 - mask
 *     (its mask_for_overlay: the blurred mask, not doubled as in whole-picture inpainting).
 * Resizing is qd_resize_rgb8's (A1111: Lanczos). */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

/* get_crop_region_v2: 0 when the mask has no non-zero pixel. */
static int mask_box(const uint8_t *g, int w, int h, int pad, int box[4]) {
    int x1 = w, y1 = h, x2 = -1, y2 = -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (g[(size_t)y * w + x]) {
                if (x < x1) x1 = x;
                if (x > x2) x2 = x;
                if (y < y1) y1 = y;
                if (y > y2) y2 = y;
            }
    if (x2 < 0) return 0;
    box[0] = x1 - pad < 0 ? 0 : x1 - pad;
    box[1] = y1 - pad < 0 ? 0 : y1 - pad;
    box[2] = x2 + 1 + pad > w ? w : x2 + 1 + pad;
    box[3] = y2 + 1 + pad > h ? h : y2 + 1 + pad;
    return 1;
}

/* expand_crop_region along one axis: [*a, *b) grown by `grow` pixels, kept inside [0, len). */
static void grow_span(int *a, int *b, int grow, int len) {
    *a -= grow / 2;
    *b += grow - grow / 2;
    if (*b >= len) { int d = *b - len; *b -= d; *a -= d; }
    if (*a < 0) { *b -= *a; *a = 0; }
    if (*b >= len) *b = len;
}

static void expand_box(int box[4], int width, int height, int iw, int ih) {
    double ratio_box = (double)(box[2] - box[0]) / (box[3] - box[1]), ratio = (double)width / height;
    if (ratio_box > ratio)
        grow_span(&box[1], &box[3], (int)((box[2] - box[0]) / ratio - (box[3] - box[1])), ih);
    else
        grow_span(&box[0], &box[2], (int)((box[3] - box[1]) * ratio - (box[2] - box[0])), iw);
}

/* The box of an RGB8 picture (iw wide), resized "resize and fill" to dw x dh. */
static int box_to(qd_ctx *ctx, const uint8_t *rgb, int iw, const int box[4], uint8_t *dst, int dw, int dh, char *err,
                  size_t errn) {
    int w = box[2] - box[0], h = box[3] - box[1];
    uint8_t *cut = malloc((size_t)w * h * 3);
    if (!cut) {
        snprintf(err, errn, "out of memory");
        return -1;
    }
    for (int y = 0; y < h; y++) memcpy(cut + (size_t)y * w * 3, rgb + ((size_t)(box[1] + y) * iw + box[0]) * 3, (size_t)w * 3);
    int rc = cli_resize_mode(ctx, cut, w, h, dst, dw, dh, CLI_RESIZE_FILL, err, errn);
    free(cut);
    return rc;
}

int cli_crop_setup(qd_ctx *ctx, const qd_model *m, const char *name, uint8_t *rgb, int iw, int ih, const uint8_t *g,
                   int gw, int gh, int pad, qd_gen_params *p, cli_crop *c, float **init_out, float **mask_out,
                   char *err, size_t errn) {
    memset(c, 0, sizeof *c);
    *init_out = *mask_out = NULL;
    int native = qd_model_default_size(m), W = p->width > 0 ? p->width : native, H = p->height > 0 ? p->height : native;
    if (cli_check_size(m, name, W, H, err, errn)) return -1;
    size_t n = (size_t)iw * ih, out_n = (size_t)W * H;
    uint8_t *g8 = malloc(n), *grey = malloc(n * 3), *pic = malloc(out_n * 3), *mk = malloc(out_n * 3);
    float *init = malloc(sizeof(float) * out_n * 3), *mask = malloc(sizeof(float) * out_n);
    int rc = -1, box[4];
    if (!g8 || !grey || !pic || !mk || !init || !mask) snprintf(err, errn, "out of memory");
    else if (!cli_resize_gray8(ctx, g, gw, gh, g8, iw, ih, CLI_RESIZE_JUST, err, errn)) {
        if (!mask_box(g8, iw, ih, pad, box)) rc = 1;
        else {
            expand_box(box, W, H, iw, ih);
            for (size_t i = 0; i < n; i++) grey[i * 3] = grey[i * 3 + 1] = grey[i * 3 + 2] = g8[i];
            char why[512];
            if (box_to(ctx, rgb, iw, box, pic, W, H, why, sizeof why) || box_to(ctx, grey, iw, box, mk, W, H, why, sizeof why))
                snprintf(err, errn, "%s: resizing the masked area to %dx%d: %s", name, W, H, why);
            else rc = 0;
        }
    }
    if (rc == 0) {
        for (size_t i = 0; i < out_n * 3; i++) init[i] = pic[i] / 255.0f;
        for (size_t i = 0; i < out_n; i++) mask[i] = mk[i * 3] / 255.0f;
        *c = (cli_crop){box[0], box[1], box[2] - box[0], box[3] - box[1], iw, ih, pad, rgb, g8};
        g8 = NULL;
        p->width = W;
        p->height = H;
        p->init_image = *init_out = init;
        p->init_count = 1;
        p->mask = *mask_out = mask;
        p->mask_count = 1;
        init = mask = NULL;
    }
    free(g8); free(grey); free(pic); free(mk); free(init); free(mask);
    return rc;
}

int cli_crop_paste(qd_ctx *ctx, const cli_crop *c, const uint8_t *gen, int n, int width, int height, uint8_t **out,
                   char *err, size_t errn) {
    size_t per = (size_t)c->iw * c->ih * 3;
    uint8_t *res = malloc(per * (size_t)n), *box = malloc((size_t)c->w * c->h * 3);
    *out = NULL;
    if (!res || !box) {
        snprintf(err, errn, "out of memory");
        free(res); free(box);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        uint8_t *o = res + per * (size_t)k;
        char why[512];
        if (cli_resize_mode(ctx, gen + (size_t)width * height * 3 * (size_t)k, width, height, box, c->w, c->h,
                            CLI_RESIZE_CROP, why, sizeof why)) {
            snprintf(err, errn, "resizing the result to the %dx%d masked area: %s", c->w, c->h, why);
            free(res); free(box);
            return -1;
        }
        memcpy(o, c->orig, per);
        for (int y = 0; y < c->h; y++)
            memcpy(o + ((size_t)(c->y + y) * c->iw + c->x) * 3, box + (size_t)y * c->w * 3, (size_t)c->w * 3);
        for (size_t i = 0; i < (size_t)c->iw * c->ih; i++) cli_blend_original(o + i * 3, c->orig + i * 3, 255 - c->mask8[i]);
    }
    free(box);
    *out = res;
    return 0;
}

void cli_crop_free(cli_crop *c) {
    free(c->orig);
    free(c->mask8);
    memset(c, 0, sizeof *c);
}
