/* qd_inpaint_fill (A1111's "Masked content: fill") against Pillow: tests/fixtures/inpaint_fill
 * holds a 72x40 picture, a mask with hard and soft parts, and the picture A1111's
 * masking.fill makes of them with Pillow 9.4 (tests/tools/make_fill_fixture.py). The fill
 * reproduces Pillow's 8-bit arithmetic, so the result must be the same bytes (max abs 0
 * on the 8-bit values). Also: a mask of zeros returns the picture itself, and a mask of
 * ones fills with a flat colour (nothing is left to take colours from: the canvas stays
 * transparent black). */
#include "testutil.h"
#include "pipeline/inpaint_fill.h"

#include <math.h>
#include <stdlib.h>

static float *read_rgb(qd_ctx *ctx, const char *rel, int *w, int *h) {
    uint8_t *rgb = NULL;
    if (qd_read_image(ctx, fixture(rel), &rgb, w, h) != QD_OK) {
        check(0, "read %s: %s", rel, qd_last_error(ctx));
        return NULL;
    }
    size_t n = (size_t)*w * *h * 3;
    float *f = malloc(sizeof(float) * n);
    for (size_t i = 0; f && i < n; i++) f[i] = rgb[i] / 255.0f;
    qd_free(rgb);
    return f;
}

static int max_diff8(const float *a, const float *b, size_t n) {
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)lrintf(a[i] * 255.0f) - (int)lrintf(b[i] * 255.0f));
        if (d > worst) worst = d;
    }
    return worst;
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(1);
    int w, h, mw, mh, fw, fh;
    float *img = read_rgb(ctx, "inpaint_fill/image.png", &w, &h), *mrgb = read_rgb(ctx, "inpaint_fill/mask.png", &mw, &mh);
    float *want = read_rgb(ctx, "inpaint_fill/filled.png", &fw, &fh);
    if (!img || !mrgb || !want) return test_summary();
    check(w == 72 && h == 40 && mw == w && mh == h && fw == w && fh == h, "fixture sizes %dx%d", w, h);
    size_t n = (size_t)w * h;
    float *mask = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n * 3), *out2 = malloc(sizeof(float) * n * 3);
    for (size_t i = 0; i < n; i++) mask[i] = mrgb[i * 3];   /* the grey mask read as RGB */

    check(qd_inpaint_fill(ctx, img, mask, h, w, out) == QD_OK, "fill runs");
    int d = max_diff8(out, want, n * 3);
    check(d == 0, "fill = Pillow's masking.fill byte for byte (max abs diff %d levels, tol 0)", d);
    int changed = max_diff8(out, img, n * 3);
    check(changed > 20, "the masked area changed (max %d levels)", changed);

    for (size_t i = 0; i < n; i++) mask[i] = 0;
    qd_inpaint_fill(ctx, img, mask, h, w, out2);
    d = max_diff8(out2, img, n * 3);
    check(d == 0, "a mask of zeros returns the picture (max abs diff %d levels)", d);
    for (size_t i = 0; i < n; i++) mask[i] = 1;
    qd_inpaint_fill(ctx, img, mask, h, w, out2);
    double sum = 0;
    for (size_t i = 0; i < n * 3; i++) sum += out2[i];
    check(sum == 0, "a mask of ones: nothing to take colours from, black (sum %g)", sum);

    free(img); free(mrgb); free(want); free(mask); free(out); free(out2);
    qd_ctx_free(ctx);
    return test_summary();
}
