/* The init image of an image-to-image run (generate --init-image, serve's img2img):
 * a PNG/JPEG resized to the output size, as float NHWC [0,1] for qd_gen_params.
 * Unset sides take the image's own size rounded down to the model's multiple, as
 * diffusers' VaeImageProcessor.get_default_height_width does (it then resizes with
 * Lanczos; qdiff's resize averages areas when shrinking, bilinear when enlarging). */
#include "cli.h"

#include <stdlib.h>

int cli_check_size(const qd_model *m, const char *name, int width, int height, char *err, size_t errn) {
    int unit = qd_model_size_unit(m);
    if (width % unit || height % unit || width < unit || height < unit || width > 16384 || height > 16384) {
        snprintf(err, errn, "%s: output size %dx%d: width and height must be multiples of %d up to 16384 for this "
                 "%s model", name, width, height, unit, qd_model_family(m));
        return -1;
    }
    return 0;
}

int cli_init_image_rgb(qd_ctx *ctx, const qd_model *m, const char *name, uint8_t *rgb, int iw, int ih, int mode,
                       qd_gen_params *p, float **out, char *err, size_t errn) {
    *out = NULL;
    int unit = qd_model_size_unit(m);
    if (p->width <= 0) p->width = iw - iw % unit;
    if (p->height <= 0) p->height = ih - ih % unit;
    if (p->width < unit || p->height < unit) {
        snprintf(err, errn, "%s: the image is %dx%d, smaller than the %d-pixel unit of this %s model", name, iw, ih,
                 unit, qd_model_family(m));
        return -1;
    }
    if (cli_check_size(m, name, p->width, p->height, err, errn)) return -1;
    size_t n = (size_t)p->width * (size_t)p->height * 3;
    uint8_t *sized = rgb;
    if (iw != p->width || ih != p->height) {
        sized = malloc(n);
        char why[512] = "out of memory";
        if (!sized || cli_resize_mode(ctx, rgb, iw, ih, sized, p->width, p->height, mode, why, sizeof why)) {
            snprintf(err, errn, "%s: resizing to %dx%d: %s", name, p->width, p->height, why);
            free(sized);
            return -1;
        }
    }
    float *img = malloc(n * sizeof(float));
    if (!img) snprintf(err, errn, "out of memory");
    for (size_t i = 0; img && i < n; i++) img[i] = sized[i] / 255.0f;
    if (sized != rgb) free(sized);
    if (!img) return -1;
    *out = img;
    p->init_image = img;
    p->init_count = 1;
    return 0;
}

int cli_init_image(qd_ctx *ctx, const qd_model *m, const char *path, int mode, qd_gen_params *p, float **out) {
    uint8_t *rgb = NULL;
    int iw, ih;
    *out = NULL;
    if (qd_read_image(ctx, path, &rgb, &iw, &ih) != QD_OK) {
        fprintf(stderr, "qdiff: --init-image: %s\n", qd_last_error(ctx));
        return -1;
    }
    char err[1024];
    int rc = cli_init_image_rgb(ctx, m, path, rgb, iw, ih, mode, p, out, err, sizeof err);
    if (rc) fprintf(stderr, "qdiff: %s\n", err);
    free(rgb);
    return rc;
}
