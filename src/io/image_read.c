/* PNG (libpng) and JPEG (libjpeg-turbo) input, converted to RGB8 [H, W, 3].
 * Gray is replicated, palettes expanded, 16-bit scaled to 8, alpha dropped
 * (as PIL's convert("RGB") does), or kept as RGBA8 (the _rgba readers: masks; 255
 * where the file has no alpha, tRNS included). Both libraries report errors by longjmp;
 * everything a handler frees is volatile or allocated before setjmp. */
#include "io/image_read.h"
#include "base/ctx.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>          /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <png.h>

static qd_status check_dims(qd_ctx *ctx, const char *path, long long w, long long h) {
    if (w < 1 || h < 1 || w > QD_IMAGE_MAX_SIDE || h > QD_IMAGE_MAX_SIDE || w * h > QD_IMAGE_MAX_PIXELS)
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: image size %lld x %lld is not supported (at most %d per side, "
                       "%lld pixels)", path, w, h, QD_IMAGE_MAX_SIDE, (long long)QD_IMAGE_MAX_PIXELS);
    return QD_OK;
}

/* ---- PNG ------------------------------------------------------------------------ */

typedef struct { char msg[256]; } png_err;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static qd_status read_png(qd_ctx *ctx, const char *path, FILE *f, int rgba, uint8_t **out, int *width, int *height,
                          int *has_alpha) {
    png_err err = {"unknown error"};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    uint8_t *volatile pix = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pix);
        free(rows);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: bad PNG: %s%s", path, err.msg,
                       feof(f) ? " (the file ends early: truncated?)" : "");
    }
    png_init_io(png, f);
    png_set_user_limits(png, QD_IMAGE_MAX_SIDE, QD_IMAGE_MAX_SIDE);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    qd_status st = check_dims(ctx, path, w, h);
    if (st != QD_OK) { png_destroy_read_struct(&png, &info, NULL); return st; }
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_scale_16(png);
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    int alpha = (type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS);
    if (has_alpha) *has_alpha = alpha;
    int nc = rgba ? 4 : 3;
    if (!rgba && (type & PNG_COLOR_MASK_ALPHA)) png_set_strip_alpha(png);
    if (rgba && png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (rgba && !alpha) png_set_add_alpha(png, 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != nc || png_get_rowbytes(png, info) != (size_t)w * nc) {
        png_destroy_read_struct(&png, &info, NULL);
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: PNG colour type %d, depth %d did not convert to RGB8", path, type, depth);
    }
    pix = malloc((size_t)w * h * nc);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pix || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pix + (size_t)y * w * nc;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    *out = pix;
    *width = (int)w;
    *height = (int)h;
    return QD_OK;
}

/* ---- JPEG ----------------------------------------------------------------------- */

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr c) {
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jmp, 1);
}

/* Keep the first warning (truncated or corrupt data): a damaged file is an error. */
static void jpeg_on_message(j_common_ptr c, int level) {
    jpeg_err *e = (jpeg_err *)c->err;
    if (level < 0 && c->err->num_warnings++ == 0) c->err->format_message(c, e->msg);
}

static qd_status read_jpeg(qd_ctx *ctx, const char *path, FILE *f, uint8_t **out, int *width, int *height) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    memset(&err, 0, sizeof err);
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_on_error;
    err.mgr.emit_message = jpeg_on_message;
    uint8_t *volatile pix = NULL;
    if (setjmp(err.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(pix);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: bad JPEG: %s", path, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, f);
    jpeg_read_header(&cinfo, TRUE);
    qd_status st = check_dims(ctx, path, cinfo.image_width, cinfo.image_height);
    if (st == QD_OK && cinfo.jpeg_color_space != JCS_GRAYSCALE && cinfo.jpeg_color_space != JCS_YCbCr &&
        cinfo.jpeg_color_space != JCS_RGB)
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: JPEG colour space %d (CMYK?) is not supported; save it as RGB",
                     path, (int)cinfo.jpeg_color_space);
    if (st != QD_OK) { jpeg_destroy_decompress(&cinfo); return st; }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: JPEG did not convert to RGB", path);
    }
    size_t w = cinfo.output_width, h = cinfo.output_height;
    pix = malloc(w * h * 3);
    if (!pix) {
        jpeg_destroy_decompress(&cinfo);
        return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pix + (size_t)cinfo.output_scanline * w * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    long warnings = err.mgr.num_warnings;
    jpeg_destroy_decompress(&cinfo);
    if (warnings) {
        free(pix);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: bad JPEG: %s", path, err.msg);
    }
    *out = pix;
    *width = (int)w;
    *height = (int)h;
    return QD_OK;
}

/* ---- dispatch ------------------------------------------------------------------- */

static qd_status read_stream(qd_ctx *ctx, const char *path, FILE *f, int rgba, uint8_t **rgb, int *width, int *height,
                             int *has_alpha);

static qd_status open_file(qd_ctx *ctx, const char *path, int rgba, uint8_t **rgb, int *width, int *height,
                           int *has_alpha) {
    if (!rgb || !width || !height || !path) return qd_fail(ctx, QD_ERR_ARG, "read image: bad arguments");
    *rgb = NULL;
    *width = *height = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return read_stream(ctx, path, f, rgba, rgb, width, height, has_alpha);
}

/* The same decoders over a memory stream (POSIX fmemopen), e.g. an upload. */
static qd_status open_memory(qd_ctx *ctx, const char *name, const void *data, size_t len, int rgba, uint8_t **rgb,
                             int *width, int *height, int *has_alpha) {
    if (!rgb || !width || !height || !name || (!data && len)) return qd_fail(ctx, QD_ERR_ARG, "decode image: bad arguments");
    *rgb = NULL;
    *width = *height = 0;
    if (len == 0) return qd_fail(ctx, QD_ERR_FORMAT, "%s: empty image", name);
    FILE *f = fmemopen((void *)data, len, "rb");
    if (!f) return qd_fail(ctx, QD_ERR_NOMEM, "%s: cannot open a memory stream: %s", name, strerror(errno));
    return read_stream(ctx, name, f, rgba, rgb, width, height, has_alpha);
}

qd_status qd_read_image(qd_ctx *ctx, const char *path, uint8_t **rgb, int *width, int *height) {
    return open_file(ctx, path, 0, rgb, width, height, NULL);
}

qd_status qd_decode_image(qd_ctx *ctx, const char *name, const void *data, size_t len, uint8_t **rgb, int *width,
                          int *height) {
    return open_memory(ctx, name, data, len, 0, rgb, width, height, NULL);
}

qd_status qd_read_image_rgba(qd_ctx *ctx, const char *path, uint8_t **rgba, int *width, int *height, int *has_alpha) {
    return open_file(ctx, path, 1, rgba, width, height, has_alpha);
}

qd_status qd_decode_image_rgba(qd_ctx *ctx, const char *name, const void *data, size_t len, uint8_t **rgba, int *width,
                               int *height, int *has_alpha) {
    return open_memory(ctx, name, data, len, 1, rgba, width, height, has_alpha);
}

/* RGB8 -> RGBA8 with opaque alpha (JPEG has none). */
static qd_status add_alpha(qd_ctx *ctx, const char *path, uint8_t **pix, int w, int h) {
    size_t n = (size_t)w * (size_t)h;
    uint8_t *o = malloc(n * 4);
    if (!o) return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        memcpy(o + i * 4, *pix + i * 3, 3);
        o[i * 4 + 3] = 255;
    }
    free(*pix);
    *pix = o;
    return QD_OK;
}

static qd_status read_stream(qd_ctx *ctx, const char *path, FILE *f, int rgba, uint8_t **rgb, int *width, int *height,
                             int *has_alpha) {
    uint8_t magic[8] = {0};
    size_t n = fread(magic, 1, sizeof magic, f);
    rewind(f);
    qd_status st;
    if (has_alpha) *has_alpha = 0;
    if (n == 8 && !png_sig_cmp(magic, 0, 8)) {
        st = read_png(ctx, path, f, rgba, rgb, width, height, has_alpha);
    } else if (n >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) {
        st = read_jpeg(ctx, path, f, rgb, width, height);
        if (st == QD_OK && rgba) st = add_alpha(ctx, path, rgb, *width, *height);
        if (st != QD_OK && *rgb) { free(*rgb); *rgb = NULL; }
    } else {
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: not a PNG or JPEG image", path);
    }
    fclose(f);
    return st;
}
