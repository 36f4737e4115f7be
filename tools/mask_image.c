/* The mask of an inpainting run (generate --mask, serve's img2img mask and OpenAI edits):
 * an RGBA8 picture to float [H, W] in [0, 1] (1 = repaint) at the output size, in
 * A1111's order (processing.py, StableDiffusionProcessingImg2Img.init):
 *   create_binary_mask: a mask whose alpha is not all opaque gives its alpha, thresholded
 *     (> 128 -> 255, else 0: opaque = repaint); otherwise its luminance (PIL's "L":
 *     (299 R + 587 G + 114 B) / 1000), grey levels kept;
 *   inpainting_mask_invert: 255 - v;
 *   mask_blur: a Gaussian blur of sigma = blur pixels at the mask's own size, x then y,
 *     as cv2.GaussianBlur with ksize int(2.5 sigma + 0.5) * 2 + 1, reflect-101 borders,
 *     rounded to 8 bits after each pass;
 *   resized to the output size (qd_resize_rgb8), / 255.
 * OpenAI's edits use transparency instead (transparent = repaint): alpha_repaint. */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One pass of cv2's Gaussian blur along rows (dx 1) or columns. */
static void blur_pass(const uint8_t *src, uint8_t *dst, int w, int h, double sigma, int horizontal) {
    int r = (int)(2.5 * sigma + 0.5), k = 2 * r + 1;
    double *kern = malloc(sizeof(double) * (size_t)k), sum = 0;
    if (!kern) { memcpy(dst, src, (size_t)w * h); return; }
    for (int i = 0; i < k; i++) sum += kern[i] = exp(-(double)(i - r) * (i - r) / (2 * sigma * sigma));
    for (int i = 0; i < k; i++) kern[i] /= sum;
    int len = horizontal ? w : h;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double acc = 0;
            int pos = horizontal ? x : y;
            for (int i = -r; i <= r; i++) {
                int q = pos + i;
                if (len == 1) q = 0;
                else {   /* BORDER_REFLECT_101: -1 -> 1, len -> len - 2 */
                    while (q < 0 || q >= len) q = q < 0 ? -q : 2 * (len - 1) - q;
                }
                acc += kern[i + r] * (horizontal ? src[y * w + q] : src[q * w + x]);
            }
            long v = lround(acc);
            dst[y * w + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    free(kern);
}

int cli_mask8(const char *name, const uint8_t *rgba, int iw, int ih, int has_alpha, int alpha_repaint, int invert,
              int blur, uint8_t **out, char *err, size_t errn) {
    *out = NULL;
    size_t n = (size_t)iw * ih;
    uint8_t *g = malloc(n), *t = blur > 0 ? malloc(n) : NULL;
    if (!g || (blur > 0 && !t)) {
        snprintf(err, errn, "out of memory");
        free(g); free(t);
        return -1;
    }
    int use_alpha = 0;
    for (size_t i = 0; has_alpha && i < n; i++)
        if (rgba[i * 4 + 3] != 255) { use_alpha = 1; break; }
    if (alpha_repaint && !use_alpha) {
        snprintf(err, errn, "%s: the mask has no transparent pixels (transparent areas mark what to repaint)", name);
        free(g); free(t);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *px = rgba + i * 4;
        uint8_t v;
        if (alpha_repaint) v = px[3] == 0 ? 255 : 0;   /* OpenAI: fully transparent = edit */
        else if (use_alpha) v = px[3] > 128 ? 255 : 0;
        else v = (uint8_t)((px[0] * 299 + px[1] * 587 + px[2] * 114 + 500) / 1000);
        g[i] = invert ? (uint8_t)(255 - v) : v;
    }
    if (blur > 0) {
        blur_pass(g, t, iw, ih, blur, 1);
        blur_pass(t, g, iw, ih, blur, 0);
    }
    free(t);
    *out = g;
    return 0;
}

int cli_resize_gray8(qd_ctx *ctx, const uint8_t *g, int w, int h, uint8_t *dst, int dw, int dh, int mode, char *err,
                     size_t errn) {
    if (w == dw && h == dh) {
        memcpy(dst, g, (size_t)w * h);
        return 0;
    }
    size_t n = (size_t)w * h, dn = (size_t)dw * dh;
    uint8_t *rgb = malloc(n * 3), *sized = malloc(dn * 3);
    int rc = -1;
    if (rgb && sized) {
        for (size_t i = 0; i < n; i++) rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = g[i];
        char why[512];
        if (!cli_resize_mode(ctx, rgb, w, h, sized, dw, dh, mode, why, sizeof why)) {
            for (size_t i = 0; i < dn; i++) dst[i] = sized[i * 3];
            rc = 0;
        } else {
            snprintf(err, errn, "resizing the mask to %dx%d: %s", dw, dh, why);
        }
    } else {
        snprintf(err, errn, "out of memory");
    }
    free(rgb);
    free(sized);
    return rc;
}

int cli_mask_from8(qd_ctx *ctx, const char *name, const uint8_t *g, int iw, int ih, int mode, qd_gen_params *p,
                   float **out, char *err, size_t errn) {
    *out = NULL;
    size_t n = (size_t)p->width * p->height;
    uint8_t *sized = malloc(n);
    float *mask = malloc(sizeof(float) * n);
    char why[512] = "out of memory";
    if (!sized || !mask || cli_resize_gray8(ctx, g, iw, ih, sized, p->width, p->height, mode, why, sizeof why)) {
        snprintf(err, errn, "%s: %s", name, why);
        free(sized);
        free(mask);
        return -1;
    }
    for (size_t i = 0; i < n; i++) mask[i] = sized[i] / 255.0f;
    free(sized);
    *out = mask;
    p->mask = mask;
    p->mask_count = 1;
    return 0;
}

int cli_mask_rgba(qd_ctx *ctx, const char *name, const uint8_t *rgba, int iw, int ih, int has_alpha, int alpha_repaint,
                  int invert, int blur, int mode, qd_gen_params *p, float **out, char *err, size_t errn) {
    uint8_t *g;
    *out = NULL;
    if (cli_mask8(name, rgba, iw, ih, has_alpha, alpha_repaint, invert, blur, &g, err, errn)) return -1;
    int rc = cli_mask_from8(ctx, name, g, iw, ih, mode, p, out, err, errn);
    free(g);
    return rc;
}

int cli_mask(qd_ctx *ctx, const char *path, int invert, int blur, int mode, qd_gen_params *p, float **out) {
    uint8_t *rgba = NULL;
    int iw, ih, alpha = 0;
    *out = NULL;
    if (qd_read_image_rgba(ctx, path, &rgba, &iw, &ih, &alpha) != QD_OK) {
        fprintf(stderr, "qdiff: --mask: %s\n", qd_last_error(ctx));
        return -1;
    }
    char err[1024];
    int rc = cli_mask_rgba(ctx, path, rgba, iw, ih, alpha, 0, invert, blur, mode, p, out, err, sizeof err);
    if (rc) fprintf(stderr, "qdiff: %s\n", err);
    free(rgba);
    return rc;
}

void cli_blend_original(uint8_t *out, const uint8_t *orig, int share) {
    for (int c = 0; c < 3; c++) out[c] = (uint8_t)((orig[c] * share + out[c] * (255 - share) + 127) / 255);
}

void cli_mask_overlay(uint8_t *rgb, int n, int w, int h, const qd_gen_params *p) {
    size_t hw = (size_t)w * (size_t)h;
    int images = p->init_count > 1 ? p->init_count : 1, masks = p->mask_count > 1 ? p->mask_count : 1;
    for (int k = 0; k < n; k++) {
        const float *img = p->init_image + (size_t)(k % images) * hw * 3, *mk = p->mask + (size_t)(k % masks) * hw;
        uint8_t *out = rgb + (size_t)k * hw * 3;
        for (size_t i = 0; i < hw; i++) {
            long m8 = lrintf(mk[i] * 255.0f), o = 2 * m8 > 255 ? 255 : 2 * m8;
            uint8_t orig[3];
            for (int c = 0; c < 3; c++) orig[c] = (uint8_t)lrintf(img[i * 3 + c] * 255.0f);
            cli_blend_original(out + i * 3, orig, (int)(255 - o));
        }
    }
}
