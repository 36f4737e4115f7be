/* PNG output through libpng, with tEXt chunks (A1111-style "parameters"). */
#include "qdiff.h"
#include "base/ctx.h"
#include "io/file.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    png_destroy_write_struct(&png, &info);
    free(text);
    return qd_outfile_commit(ctx, &out);
}

