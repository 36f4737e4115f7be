/* A1111's "Masked content: fill" (inpainting_fill 0, modules/masking.py fill()): the
 * masked area of the init picture is painted with colours from around it before encoding.
 * In Pillow terms: the picture premultiplied with alpha 255 - mask (paste through the
 * inverted mask), blurred by GaussianBlur(r) for r = 256, 64, 16, 4, 2, 0, each result
 * un-premultiplied and alpha-composited 1, 1, 2, 4, 2, 1 times over a transparent canvas,
 * whose RGB is the answer. The arithmetic is Pillow's (9.x) 8-bit one, so the picture is
 * the one A1111 encodes:
 *   GaussianBlur(r): 3 passes of an extended box blur of radius l + a along rows, then 3
 *     along columns (Gwosdek et al., SSVM 2011: sigma^2 = r^2 / 3, L = sqrt(12 sigma^2 + 1),
 *     l = floor((L - 1) / 2), a the fractional part), edge pixels repeated, fixed point
 *     with 24 fractional bits, computed in float as Pillow does;
 *   paste with an L mask: (c * m + 128 + ((c * m + 128) >> 8)) >> 8 (dst is 0);
 *   RGBa -> RGBA: min(255, 255 * c / alpha) truncated (alpha 0 or 255: unchanged);
 *   alpha_composite: 7 extra bits of precision, divisions by 255 rounded. */
#include "pipeline/inpaint_fill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef uint8_t px4[4];

static float box_radius(float radius) {   /* Pillow's _gaussian_blur_radius, 3 passes */
    float sigma2 = radius * radius / 3, L = (float)sqrt(12.0 * sigma2 + 1.0), l = (float)floor((L - 1.0) / 2.0);
    float a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
    a /= 6 * (sigma2 - (l + 1) * (l + 1));
    return l + a;
}

/* One extended-box pass over a line of n pixels (stride apart) of 4 bytes, into tmp. */
static void box_line(px4 *line, int64_t stride, int n, float fr, px4 *tmp) {
    int r = (int)fr, last = n - 1;
    uint32_t ww = (uint32_t)((float)(1 << 24) / (fr * 2 + 1)), fw = ((1u << 24) - (uint32_t)(r * 2 + 1) * ww) / 2;
    int a_edge = r + 1 < n ? r + 1 : n;   /* the first pixel whose window no longer reaches past the left edge */
#define AT(i) line[(int64_t)(i) * stride]
    for (int c = 0; c < 4; c++) {
        uint32_t acc = AT(0)[c] * (uint32_t)(r + 1);
        for (int x = 0; x < a_edge - 1; x++) acc += AT(x)[c];
        acc += AT(last)[c] * (uint32_t)(r - a_edge + 1);
        for (int x = 0; x < n; x++) {
            /* the pixel leaving the window (x - r - 1, or the first while that is off the
             * left edge) and the one entering (x + r, or the last past the right edge) */
            int out = x - r - 1 < 0 ? 0 : x - r - 1, in = x + r > last ? last : x + r, far = x + r + 1 > last ? last : x + r + 1;
            acc += (uint32_t)AT(in)[c] - AT(out)[c];
            uint32_t bulk = acc * ww + (uint32_t)(AT(out)[c] + AT(far)[c]) * fw;
            tmp[x][c] = (uint8_t)((bulk + (1u << 23)) >> 24);
        }
    }
    for (int x = 0; x < n; x++) memcpy(AT(x), tmp[x], 4);
#undef AT
}

static void gaussian_blur(px4 *img, int w, int h, float radius, px4 *tmp) {
    float fr = box_radius(radius);
    if (fr == 0) return;
    for (int pass = 0; pass < 3; pass++)
        for (int y = 0; y < h; y++) box_line(img + (int64_t)y * w, 1, w, fr, tmp);
    for (int pass = 0; pass < 3; pass++)
        for (int x = 0; x < w; x++) box_line(img + x, w, h, fr, tmp);
}

static uint8_t div255(uint32_t v) { v += 128; return (uint8_t)(((v >> 8) + v) >> 8); }

/* src over dst, Pillow's ImagingAlphaComposite */
static void composite(px4 dst, const px4 src) {
    if (src[3] == 0) return;
    uint32_t blend = dst[3] * (255u - src[3]), outa255 = src[3] * 255u + blend;
    uint32_t coef1 = src[3] * 255u * 255u * 128u / outa255, coef2 = 255u * 128u - coef1;
    for (int c = 0; c < 3; c++) {
        uint32_t t = src[c] * coef1 + dst[c] * coef2 + (0x80u << 7);
        dst[c] = (uint8_t)(((t >> 8) + t) >> 8 >> 7);
    }
    uint32_t a = outa255 + 0x80;
    dst[3] = (uint8_t)(((a >> 8) + a) >> 8);
}

qd_status qd_inpaint_fill(qd_ctx *ctx, const float *img, const float *mask, int64_t H, int64_t W, float *out) {
    int64_t n = H * W;
    px4 *masked = malloc(sizeof(px4) * (size_t)n), *blur = malloc(sizeof(px4) * (size_t)n);
    px4 *canvas = calloc((size_t)n, sizeof(px4)), *tmp = malloc(sizeof(px4) * (size_t)(H > W ? H : W));
    if (!masked || !blur || !canvas || !tmp) {
        free(masked); free(blur); free(canvas); free(tmp);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        float mk = mask[i] < 0 ? 0 : mask[i] > 1 ? 1 : mask[i];
        uint32_t keep = 255u - (uint32_t)lrintf(mk * 255.0f);
        for (int c = 0; c < 3; c++) {
            float v = img[i * 3 + c] < 0 ? 0 : img[i * 3 + c] > 1 ? 1 : img[i * 3 + c];
            masked[i][c] = div255((uint32_t)lrintf(v * 255.0f) * keep);
        }
        masked[i][3] = div255(255u * keep);
    }
    static const struct { float radius; int repeats; } rounds[] = {{256, 1}, {64, 1}, {16, 2}, {4, 4}, {2, 2}, {0, 1}};
    for (size_t r = 0; r < sizeof rounds / sizeof rounds[0]; r++) {
        memcpy(blur, masked, sizeof(px4) * (size_t)n);
        gaussian_blur(blur, (int)W, (int)H, rounds[r].radius, tmp);
        for (int64_t i = 0; i < n; i++) {   /* RGBa -> RGBA */
            uint32_t a = blur[i][3];
            if (a != 0 && a != 255)
                for (int c = 0; c < 3; c++) {
                    uint32_t v = 255u * blur[i][c] / a;
                    blur[i][c] = (uint8_t)(v > 255 ? 255 : v);
                }
        }
        for (int k = 0; k < rounds[r].repeats; k++)
            for (int64_t i = 0; i < n; i++) composite(canvas[i], blur[i]);
    }
    for (int64_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) out[i * 3 + c] = canvas[i][c] / 255.0f;
    free(masked); free(blur); free(canvas); free(tmp);
    return QD_OK;
}
