/* qd_read_image on PNG and JPEG variants written here with libpng / libjpeg
 * (gray, gray+alpha, RGBA, palette, 1-bit, 16-bit, interlaced; RGB and gray JPEG),
 * damaged files (every truncation, corrupt bytes: clean errors naming the file),
 * and qd_resize_rgb8 (identity, 2x area average, bilinear upscale). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jpeglib.h>
#include <png.h>

static char dir[] = "/tmp/qd_image_XXXXXX";

static const char *tmp(const char *name) {
    static char bufs[4][512];
    static int slot;
    char *b = bufs[slot++ % 4];
    snprintf(b, 512, "%s/%s", dir, name);
    return b;
}

enum { W = 37, H = 23 };   /* odd sizes catch row-stride mistakes */

static uint8_t pix(int x, int y, int c) { return (uint8_t)((x * 7 + y * 13 + c * 71) & 255); }

/* Write a W x H PNG: `channels` samples per pixel of `depth` bits, sample value from pix(). */
static int write_png(const char *path, int type, int depth, int interlace) {
    FILE *f = fopen(path, "wb");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) { fclose(f); return 0; }
    png_init_io(png, f);
    png_set_IHDR(png, info, W, H, depth, type, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_color pal[256];
    if (type == PNG_COLOR_TYPE_PALETTE) {
        for (int i = 0; i < 256; i++) { pal[i].red = (uint8_t)i; pal[i].green = (uint8_t)(255 - i); pal[i].blue = (uint8_t)(i / 2); }
        png_set_PLTE(png, info, pal, 256);
    }
    png_write_info(png, info);
    int ch = type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_PALETTE ? 1 : type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
           : type == PNG_COLOR_TYPE_RGB ? 3 : 4;
    int passes = png_set_interlace_handling(png);
    uint8_t *row = calloc((size_t)W * ch * 2, 1);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < H; y++) {
            memset(row, 0, (size_t)W * ch * 2);
            for (int x = 0; x < W; x++)
                for (int c = 0; c < ch; c++) {
                    uint8_t v = pix(x, y, c);
                    if (depth == 16) { row[(x * ch + c) * 2] = v; row[(x * ch + c) * 2 + 1] = 0x80; }
                    else if (depth == 1) { if (v & 128) row[x / 8] |= (uint8_t)(0x80 >> (x % 8)); }
                    else row[x * ch + c] = v;
                }
            png_write_row(png, row);
        }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    return fclose(f) == 0;
}

static int write_jpeg(const char *path, int gray, int quality) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = W;
    c.image_height = H;
    c.input_components = gray ? 1 : 3;
    c.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    uint8_t row[W * 3];
    while (c.next_scanline < H) {
        /* smooth content so the JPEG round trip stays close */
        for (int x = 0; x < W; x++)
            for (int k = 0; k < (gray ? 1 : 3); k++) row[x * (gray ? 1 : 3) + k] = (uint8_t)(40 + x * 3 + (int)c.next_scanline * 2 + k * 30);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) == 0;
}

static void test_png(qd_ctx *ctx) {
    static const struct { const char *name; int type, depth, interlace; } cases[] = {
        {"rgb8", PNG_COLOR_TYPE_RGB, 8, 0},         {"rgba8", PNG_COLOR_TYPE_RGB_ALPHA, 8, 0},
        {"gray8", PNG_COLOR_TYPE_GRAY, 8, 0},       {"gray_alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0},
        {"palette8", PNG_COLOR_TYPE_PALETTE, 8, 0}, {"rgb16", PNG_COLOR_TYPE_RGB, 16, 0},
        {"gray1", PNG_COLOR_TYPE_GRAY, 1, 0},       {"rgb8_interlaced", PNG_COLOR_TYPE_RGB, 8, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *path = tmp("t.png");
        if (!write_png(path, cases[k].type, cases[k].depth, cases[k].interlace)) { check(0, "write %s", cases[k].name); continue; }
        uint8_t *rgb;
        int w, h;
        qd_status st = qd_read_image(ctx, path, &rgb, &w, &h);
        int ok = st == QD_OK && w == W && h == H;
        for (int y = 0; ok && y < H; y++)
            for (int x = 0; ok && x < W; x++) {
                const uint8_t *p = rgb + ((size_t)y * W + x) * 3;
                int t = cases[k].type;
                uint8_t g = pix(x, y, 0);
                uint8_t want[3] = {pix(x, y, 0), pix(x, y, 1), pix(x, y, 2)};
                if (t == PNG_COLOR_TYPE_GRAY || t == PNG_COLOR_TYPE_GRAY_ALPHA) want[0] = want[1] = want[2] = g;
                if (cases[k].depth == 1) want[0] = want[1] = want[2] = (g & 128) ? 255 : 0;
                if (t == PNG_COLOR_TYPE_PALETTE) { want[0] = g; want[1] = (uint8_t)(255 - g); want[2] = (uint8_t)(g / 2); }
                if (cases[k].depth == 16)   /* (v*256 + 0x80) scaled to 8 bits rounds to v or v+1 */
                    for (int c = 0; c < 3; c++) ok &= p[c] == want[c] || p[c] == want[c] + 1;
                else
                    ok &= !memcmp(p, want, 3);
            }
        check(ok, "PNG %s reads as RGB8%s%s", cases[k].name, st ? ": " : "", st ? qd_last_error(ctx) : "");
        if (st == QD_OK) free(rgb);
    }
}

static void test_jpeg(qd_ctx *ctx) {
    for (int gray = 0; gray <= 1; gray++) {
        const char *path = tmp(gray ? "g.jpg" : "c.jpg");
        write_jpeg(path, gray, 98);
        uint8_t *rgb;
        int w, h;
        qd_status st = qd_read_image(ctx, path, &rgb, &w, &h);
        int worst = 0;
        for (int y = 0; st == QD_OK && y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++) {
                    int want = 40 + x * 3 + y * 2 + (gray ? 0 : c * 30);
                    int d = abs(rgb[((size_t)y * W + x) * 3 + c] - want);
                    if (d > worst) worst = d;
                }
        check(st == QD_OK && w == W && h == H && worst <= 6, "%s JPEG reads as RGB8 (max error %d at quality 98)%s%s",
              gray ? "gray" : "colour", worst, st ? ": " : "", st ? qd_last_error(ctx) : "");
        if (st == QD_OK) free(rgb);
    }
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    if (fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(b, 1, n, f); fclose(f); }
}

/* Every truncation fails naming the file; single-byte corruptions never crash. */
static void test_damaged(qd_ctx *ctx, const char *src, const char *what) {
    size_t n;
    unsigned char *b = slurp(src, &n);
    if (!b) { check(0, "read %s", src); return; }
    const char *path = tmp("damaged");
    uint8_t *rgb;
    int w, h, all_fail = 1, named = 1, loaded = 0;
    for (size_t len = 0; len < n; len++) {
        spit(path, b, len);
        if (qd_read_image(ctx, path, &rgb, &w, &h) == QD_OK) { all_fail = 0; free(rgb); }
        else if (!strstr(qd_last_error(ctx), path)) named = 0;
    }
    check(all_fail && named, "%s: all %zu truncations fail, naming the file", what, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char save = b[i];
        b[i] ^= 0x5a;
        spit(path, b, n);
        if (qd_read_image(ctx, path, &rgb, &w, &h) == QD_OK) { loaded++; free(rgb); }
        b[i] = save;
    }
    check(1, "%s: %zu single-byte corruptions handled (%d still decode)", what, n, loaded);
    free(b);
    unlink(path);
}

static void test_resize(qd_ctx *ctx) {
    uint8_t src[4 * 4 * 3], dst[8 * 8 * 3];
    for (int i = 0; i < 4 * 4 * 3; i++) src[i] = (uint8_t)(i * 5);
    check(qd_resize_rgb8(ctx, src, 4, 4, dst, 4, 4) == QD_OK && !memcmp(src, dst, sizeof src), "resize to the same size is exact");
    int ok = qd_resize_rgb8(ctx, src, 4, 4, dst, 2, 2) == QD_OK;
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++)
            for (int c = 0; c < 3; c++) {
                int s = 0;
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++) s += src[((2 * y + dy) * 4 + 2 * x + dx) * 3 + c];
                ok &= abs(dst[(y * 2 + x) * 3 + c] - (s + 2) / 4) <= 1;
            }
    check(ok, "2x shrink averages 2x2 blocks");
    uint8_t flat[2 * 2 * 3];
    memset(flat, 77, sizeof flat);
    ok = qd_resize_rgb8(ctx, flat, 2, 2, dst, 8, 5) == QD_OK;
    for (int i = 0; i < 8 * 5 * 3; i++) ok &= dst[i] == 77;
    check(ok, "enlarging a flat image keeps it flat");
    check(qd_resize_rgb8(ctx, src, 0, 4, dst, 2, 2) == QD_ERR_ARG, "zero-sized source refused");
}

int main(void) {
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return test_summary(); }
    qd_ctx *ctx = test_ctx_new(1);
    test_png(ctx);
    test_jpeg(ctx);
    write_png(tmp("small.png"), PNG_COLOR_TYPE_RGB, 8, 0);
    test_damaged(ctx, tmp("small.png"), "PNG");
    test_damaged(ctx, tmp("c.jpg"), "JPEG");
    test_resize(ctx);
    uint8_t *rgb;
    int w, h;
    check(qd_read_image(ctx, "/nonexistent/x.png", &rgb, &w, &h) == QD_ERR_IO && strstr(qd_last_error(ctx), "/nonexistent/x.png"),
          "missing file: %s", qd_last_error(ctx));
    static const char *files[] = {"t.png", "g.jpg", "c.jpg", "small.png"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) unlink(tmp(files[i]));
    rmdir(dir);
    qd_ctx_free(ctx);
    return test_summary();
}
