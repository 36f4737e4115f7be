/* PNG output through libpng, with tEXt chunks (A1111-style "parameters"): to a file
 * (qd_write_png) or to memory (qd_encode_png, e.g. for base64 in an HTTP reply). */
#include "qdiff.h"
#include "base/ctx.h"
#include "io/file.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Header, text chunks and rows; longjmps through png_jmpbuf on libpng errors.
 * text is the caller's png_text array of n_text entries (allocated before setjmp). */
static void png_emit(png_structp png, png_infop info, png_textp text, const uint8_t *rgb, int width, int height,
                     const char *const *keys, const char *const *values, int n_text) {
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (text) {
        for (int i = 0; i < n_text; i++) {
            text[i].compression = PNG_TEXT_COMPRESSION_NONE;
            text[i].key = (png_charp)keys[i];
            text[i].text = (png_charp)values[i];
            text[i].text_length = strlen(values[i]);
        }
        png_set_text(png, info, text, n_text);
    }
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)width * 3));
    png_write_end(png, info);
}

qd_status qd_write_png(qd_ctx *ctx, const char *path, const uint8_t *rgb, int width, int height,
                       const char *const *keys, const char *const *values, int n_text) {
    if (width <= 0 || height <= 0 || !rgb)
        return qd_fail(ctx, QD_ERR_ARG, "%s: invalid image (%dx%d)", path, width, height);
    qd_outfile out;
    QD_TRY(qd_outfile_open(ctx, &out, path));
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        qd_outfile_abort(&out);
        return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    /* allocated before setjmp so the longjmp path sees its value */
    png_textp text = n_text > 0 ? calloc((size_t)n_text, sizeof(png_text)) : NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(text);
        qd_outfile_abort(&out);
        return qd_fail(ctx, QD_ERR_IO, "%s: PNG write failed", path);
    }
    png_init_io(png, out.fp);
    png_emit(png, info, text, rgb, width, height, keys, values, n_text);
    png_destroy_write_struct(&png, &info);
    free(text);
    return qd_outfile_commit(ctx, &out);
}

/* ---- in memory ---- */

typedef struct { uint8_t *data; size_t len, cap; } png_membuf;

static void membuf_write(png_structp png, png_bytep bytes, png_size_t n) {
    png_membuf *b = png_get_io_ptr(png);
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 4096;
        while (n > cap - b->len) {
            if (cap > (size_t)-1 / 2) png_error(png, "PNG too large");
            cap *= 2;
        }
        uint8_t *d = realloc(b->data, cap);
        if (!d) png_error(png, "out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void membuf_flush(png_structp png) { (void)png; }

qd_status qd_encode_png(qd_ctx *ctx, const uint8_t *rgb, int width, int height,
                        const char *const *keys, const char *const *values, int n_text,
                        uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (width <= 0 || height <= 0 || !rgb)
        return qd_fail(ctx, QD_ERR_ARG, "PNG encode: invalid image (%dx%d)", width, height);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        return qd_fail(ctx, QD_ERR_NOMEM, "PNG encode: out of memory");
    }
    png_membuf buf = {0};
    png_membuf *volatile bufp = &buf;   /* read after longjmp */
    png_textp text = n_text > 0 ? calloc((size_t)n_text, sizeof(png_text)) : NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(text);
        free(bufp->data);
        return qd_fail(ctx, QD_ERR_NOMEM, "PNG encode of a %dx%d image failed", width, height);
    }
    png_set_write_fn(png, &buf, membuf_write, membuf_flush);
    png_emit(png, info, text, rgb, width, height, keys, values, n_text);
    png_destroy_write_struct(&png, &info);
    free(text);
    *out = buf.data;
    *out_len = buf.len;
    return QD_OK;
}
