/* `qdiff vae encode/decode` run as a separate process ($QD_QDIFF, set by ctest) on
 * files, its outputs compared with the goldens: taef2 on photo.png (latent, the
 * decoded PNG, the round-trip PSNR) and diffusers' AutoencoderKL (sd15-tiny). */
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *qdiff_bin;
static char dir[] = "/tmp/qd_vae_cli_XXXXXX";

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s", qdiff_bin, args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static const char *tmp(const char *name) {
    static char bufs[4][512];
    static int slot;
    char *b = bufs[slot++ % 4];
    snprintf(b, 512, "%s/%s", dir, name);
    return b;
}

/* u8 images equal within +-2 for >= 99.9% of values (the pipelines' image tolerance). */
static void check_u8(const char *what, const uint8_t *got, const uint8_t *ref, size_t n) {
    size_t off = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)ref[i]);
        off += d > 2;
        if (d > worst) worst = d;
    }
    check(off * 1000 <= n, "%s: %zu of %zu values differ by more than 2 (max %d)", what, off, n, worst);
}

static void test_taef2(qd_ctx *ctx) {
    const char *photo = fixture("taesd/photo.png"), *g = fixture("taesd/photo_golden.safetensors");
    int rc = run("vae encode -q --vae '%s' -i '%s' -o '%s'", fixture("taesd/taef2_encoder.safetensors"), photo,
                 tmp("lat.safetensors"));
    check(rc == 0, "CLI taef2 encode of photo.png exits 0 (%d)", rc);
    float *lat, *ref = load_f32(g, "latent", NULL, NULL, NULL);
    int64_t shape[8];
    int nd;
    if (rc == 0 && qd_read_tensor(ctx, tmp("lat.safetensors"), "latent", &lat, shape, &nd) == QD_OK) {
        check(nd == 4 && shape[0] == 1 && shape[1] == 32 && shape[2] == 32 && shape[3] == 32, "latent [1, 32, 32, 32]");
        check_close("CLI taef2 latent vs golden", lat, ref, 32 * 32 * 32, 1e-4, 1e-3);
        free(lat);
    }
    free(ref);

    /* decode the golden latent itself, and our own latent (the full round trip) */
    rc = run("vae decode -q --vae '%s' -i '%s' -o '%s'", fixture("taesd/taef2_decoder.safetensors"), g, tmp("dec.png"));
    rc |= run("vae decode -q --vae '%s' -i '%s' -o '%s'", fixture("taesd/taef2_decoder.safetensors"),
              tmp("lat.safetensors"), tmp("rt.png"));
    check(rc == 0, "CLI taef2 decodes exit 0");
    uint8_t *dec, *want, *rt, *orig;
    int w, h, w2, h2;
    if (rc == 0 && qd_read_image(ctx, tmp("dec.png"), &dec, &w, &h) == QD_OK &&
        qd_read_image(ctx, fixture("taesd/photo_decoded.png"), &want, &w2, &h2) == QD_OK) {
        check(w == 256 && h == 256 && w2 == w && h2 == h, "decoded PNG is 256x256");
        check_u8("CLI decode(latent) PNG vs photo_decoded.png", dec, want, (size_t)w * h * 3);
        free(dec);
        free(want);
    }
    if (rc == 0 && qd_read_image(ctx, tmp("rt.png"), &rt, &w, &h) == QD_OK &&
        qd_read_image(ctx, photo, &orig, &w2, &h2) == QD_OK) {
        double se = 0;
        size_t n = (size_t)w * h * 3;
        for (size_t i = 0; i < n; i++) se += ((double)rt[i] - orig[i]) * ((double)rt[i] - orig[i]) / (255.0 * 255.0);
        double p = 10 * log10((double)n / se);
        check(fabs(p - 32.0) <= 0.1, "CLI round trip photo.png -> latent -> PNG: %.3f dB (32.0 +- 0.1)", p);
        free(rt);
        free(orig);
    }
}

static uint8_t to_u8(float x) {   /* [-1,1] -> round(clamp((x+1)/2) * 255), as diffusers postprocesses */
    float v = (x + 1) / 2;
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    return (uint8_t)lrintf(v * 255);
}

/* AutoencoderKL: the CLI's latents are mean * scaling_factor, its input an 8-bit image. */
static void test_kl(qd_ctx *ctx) {
    const char *g = fixture("goldens/sd15-tiny/vae.safetensors"), *vae = fixture("models/sd15-tiny/vae");
    int64_t ls[4], is[4];
    float *lat = load_f32(g, "latent", ls, NULL, NULL), *dec = load_f32(g, "decoded", NULL, NULL, NULL);
    float *img = load_f32(g, "image", is, NULL, NULL), *mean = load_f32(g, "encoded_mean", NULL, NULL, NULL);
    if (!lat || !dec || !img || !mean) { check(0, "sd15-tiny golden loads"); return; }
    int H = (int)is[2], W = (int)is[3], h = (int)ls[2], w = (int)ls[3];
    size_t S = (size_t)H * W, nl = (size_t)(4 * h * w);

    /* decode: golden latent * 0.18215 in a file -> PNG vs the golden decoded image in u8 */
    float *z = malloc(sizeof(float) * nl);
    for (size_t i = 0; i < nl; i++) z[i] = lat[i] * 0.18215f;
    check(qd_write_tensor(ctx, tmp("kl_lat.safetensors"), "latent", z, ls, 4) == QD_OK, "write scaled golden latent");
    int rc = run("vae decode -q --vae '%s' -i '%s' -o '%s'", vae, tmp("kl_lat.safetensors"), tmp("kl_dec.png"));
    check(rc == 0, "CLI AutoencoderKL decode exits 0");
    uint8_t *got, *want = malloc(S * 3);
    for (size_t i = 0; i < S; i++)
        for (int c = 0; c < 3; c++) want[i * 3 + c] = to_u8(dec[c * S + i]);
    int gw, gh;
    if (rc == 0 && qd_read_image(ctx, tmp("kl_dec.png"), &got, &gw, &gh) == QD_OK) {
        check(gw == W && gh == H, "decoded PNG is %dx%d", gw, gh);
        check_u8("CLI AutoencoderKL decode PNG vs golden decoded", got, want, S * 3);
        free(got);
    }

    /* encode: the golden image can only reach the CLI as 8-bit pixels. The latent from
     * that PNG must equal the library's encoding of the same pixels, and stay within
     * the 8-bit quantisation error of the golden (float-input) encoded_mean. */
    uint8_t *q = malloc(S * 3);
    for (size_t i = 0; i < S; i++)
        for (int c = 0; c < 3; c++) q[i * 3 + c] = to_u8(img[c * S + i]);
    check(qd_write_png(ctx, tmp("kl_img.png"), q, W, H, NULL, NULL, 0) == QD_OK, "write the golden image as PNG");
    rc = run("vae encode -q --vae '%s' -i '%s' -o '%s'", vae, tmp("kl_img.png"), tmp("kl_enc.safetensors"));
    check(rc == 0, "CLI AutoencoderKL encode exits 0");
    float *enc;
    int64_t shape[8];
    int nd;
    qd_vae_model *m;
    if (rc == 0 && qd_read_tensor(ctx, tmp("kl_enc.safetensors"), "latent", &enc, shape, &nd) == QD_OK &&
        qd_vae_open(ctx, vae, &m) == QD_OK) {
        float *lib = malloc(sizeof(float) * nl);
        qd_vae_encode_image(ctx, m, QD_IMAGE_RGB8, q, 1, W, H, lib);
        check(nd == 4 && shape[1] == 4 && shape[2] == h && shape[3] == w, "latent [1, 4, %d, %d]", h, w);
        check_close("CLI encode vs library encode of the same PNG", enc, lib, nl, 1e-6, 1e-6);
        for (size_t i = 0; i < nl; i++) mean[i] *= 0.18215f;
        check_close("CLI encode vs encoded_mean * 0.18215 (8-bit input)", enc, mean, nl, 1e-2, 1e-2);
        free(lib);
        free(enc);
        qd_vae_close(m);
    }
    free(q); free(want); free(z); free(lat); free(dec); free(img); free(mean);
}

int main(void) {
    qdiff_bin = getenv("QD_QDIFF");
    setenv("QD_PRECISION", "fp32", 1);   /* the CLI runs are compared with fp32 goldens (its default is auto) */
    if (!qdiff_bin) qdiff_bin = "build/qdiff";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return test_summary(); }
    qd_ctx *ctx = test_ctx_new(1);
    test_taef2(ctx);
    test_kl(ctx);
    qd_ctx_free(ctx);
    static const char *files[] = {"lat.safetensors", "dec.png", "rt.png", "kl_lat.safetensors", "kl_dec.png",
                                  "kl_img.png", "kl_enc.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) unlink(tmp(files[i]));
    rmdir(dir);
    return test_summary();
}
