/* TAESD with trained weights (taef2) against the reference, through the model and
 * the public API: encode of photo.png, decode of the golden latent, the 32.0 dB
 * round trip; key layouts (taesd.py indices, diffusers' encoder/decoder.layers,
 * .pth); AutoencoderKL through the same API; previews; bad pairs and files. */
#include "testutil.h"
#include "models/taesd.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S 256
#define L 32
#define NI (3 * S * S)
#define NL (32 * L * L)

static float *g_image, *g_latent, *g_decoded;    /* photo_golden.safetensors, NCHW */

static void nchw_to_nhwc(const float *x, int C, int H, int W, float *y) {
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H * W; i++) y[i * C + c] = x[c * H * W + i];
}

static double psnr(const float *a, const float *b, size_t n) {
    double se = 0;
    for (size_t i = 0; i < n; i++) se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return 10 * log10(1.0 / (se / (double)n));
}

/* The model itself, both halves from the taesd.py-layout safetensors. */
static void test_model(qd_ctx *ctx) {
    qd_st_set enc, dec;
    qd_taesd *t = qd_taesd_new(ctx);
    if (qd_st_open(ctx, fixture("taesd/taef2_encoder.safetensors"), &enc) != QD_OK) { check(0, "open"); return; }
    if (qd_st_open(ctx, fixture("taesd/taef2_decoder.safetensors"), &dec) != QD_OK) { check(0, "open"); return; }
    qd_status st = qd_taesd_add(ctx, t, enc.tensors, enc.n_tensors, "enc");
    if (st == QD_OK) st = qd_taesd_add(ctx, t, dec.tensors, dec.n_tensors, "dec");
    check(st == QD_OK, "taef2 loads%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    const qd_taesd_info *in = qd_taesd_get_info(t);
    check(in->latent_channels == 32 && in->downscale == 8 && in->pool_blocks == 3 && !strcmp(in->variant, "taef2"),
          "taef2 detected from tensors: %d ch, %dx, %d pool blocks, %s", in->latent_channels, in->downscale,
          in->pool_blocks, in->variant);
    float *l = malloc(sizeof(float) * NL), *o = malloc(sizeof(float) * NI);
    double t0 = qd_now();
    st = qd_taesd_encode(ctx, t, g_image, 1, S, S, l);
    double t1 = qd_now();
    check(st == QD_OK, "encode runs");
    check_close("taef2 encode(image) vs latent", l, g_latent, NL, 1e-4, 1e-3);
    st = qd_taesd_decode(ctx, t, g_latent, 1, L, L, o);
    double t2 = qd_now();
    check(st == QD_OK, "decode runs");
    for (int i = 0; i < NI; i++) o[i] = o[i] < 0 ? 0 : o[i] > 1 ? 1 : o[i];
    check_close("taef2 clamp(decode(latent)) vs decoded", o, g_decoded, NI, 1e-4, 1e-3);
    printf("     256x256 on %d threads: encode %.3f s, decode %.3f s\n", qd_ctx_threads(ctx), t1 - t0, t2 - t1);

    check(qd_taesd_add(ctx, t, dec.tensors, dec.n_tensors, "dec2") == QD_ERR_ARG &&
          strstr(qd_last_error(ctx), "already loaded"), "a second decoder is refused: %s", qd_last_error(ctx));
    check(qd_taesd_add(ctx, t, NULL, 0, "empty.safetensors") == QD_ERR_FORMAT &&
          strstr(qd_last_error(ctx), "empty.safetensors"), "no weights: %s", qd_last_error(ctx));
    check(qd_taesd_encode(ctx, t, g_image, 1, 250, 250, l) == QD_ERR_ARG, "sides not multiples of 8 refused");
    free(l); free(o);
    qd_taesd_free(t);
    qd_st_close(&enc);
    qd_st_close(&dec);
}

/* The public API from the PNG file: the issue's acceptance numbers. */
static void test_api_photo(qd_ctx *ctx) {
    uint8_t *rgb;
    int w, h;
    qd_status st = qd_read_image(ctx, fixture("taesd/photo.png"), &rgb, &w, &h);
    check(st == QD_OK && w == S && h == S, "photo.png reads as %dx%d RGB8", w, h);
    if (st) return;
    float *img = malloc(sizeof(float) * NI);
    nchw_to_nhwc(g_image, 3, S, S, img);
    int same = 1;
    for (int i = 0; i < NI; i++) same &= fabsf(rgb[i] / 255.0f - img[i]) < 1e-6f;
    check(same, "photo.png pixels / 255 equal the golden 'image'");

    qd_vae_model *m;
    st = qd_vae_open(ctx, fixture("taesd/taef2_encoder.safetensors"), &m);
    check(st == QD_OK, "qd_vae_open(taef2_encoder) finds the decoder beside it%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st) { free(rgb); free(img); return; }
    const qd_vae_model_info *in = qd_vae_describe(m);
    check(in->can_encode && in->can_decode && in->latent_channels == 32 && in->downscale == 8 && !strcmp(in->kind, "taef2"),
          "info: %s, %d ch, %dx, encode %d decode %d", in->kind, in->latent_channels, in->downscale, in->can_encode, in->can_decode);

    float *lat = malloc(sizeof(float) * NL), *dec = malloc(sizeof(float) * NI), *ref = malloc(sizeof(float) * NI);
    st = qd_vae_encode_image(ctx, m, QD_IMAGE_RGB8, rgb, 1, S, S, lat);
    check(st == QD_OK, "encode photo.png");
    check_close("API encode(photo.png) vs latent", lat, g_latent, NL, 1e-4, 1e-3);

    st = qd_vae_decode_latent(ctx, m, g_latent, 1, L, L, QD_IMAGE_F32, dec);
    check(st == QD_OK, "decode golden latent");
    nchw_to_nhwc(g_decoded, 3, S, S, ref);
    check_close("API decode(latent) vs decoded", dec, ref, NI, 1e-4, 1e-3);

    st = qd_vae_decode_latent(ctx, m, lat, 1, L, L, QD_IMAGE_F32, dec);
    double p = psnr(dec, img, NI);
    check(st == QD_OK && fabs(p - 32.0) <= 0.1, "round trip PSNR %.3f dB (reference 32.007, want 32.0 +- 0.1)", p);

    /* RGB8 output against the reference PNG, and the preview entry point */
    uint8_t *u8 = malloc(NI), *pv = malloc(NI), *ref8;
    int rw, rh;
    qd_vae_decode_latent(ctx, m, g_latent, 1, L, L, QD_IMAGE_RGB8, u8);
    if (qd_read_image(ctx, fixture("taesd/photo_decoded.png"), &ref8, &rw, &rh) == QD_OK) {
        int off = 0;
        for (int i = 0; i < NI; i++) off += abs(u8[i] - ref8[i]) > 1;
        check(rw == S && off == 0, "RGB8 decode within +-1 of photo_decoded.png (%d values off)", off);
        free(ref8);
    }
    check(qd_preview_decode(ctx, m, g_latent, 1, 32, L, L, pv) == QD_OK && !memcmp(pv, u8, NI),
          "qd_preview_decode gives the RGB8 decode");
    st = qd_preview_decode(ctx, m, g_latent, 1, 4, L, L, pv);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "4 channels"), "preview of another family's latents: %s",
          qd_last_error(ctx));
    check(qd_vae_encode_image(ctx, m, QD_IMAGE_RGB8, rgb, 1, 100, 100, lat) == QD_ERR_ARG &&
          strstr(qd_last_error(ctx), "multiples of 8"), "encode of 100x100: %s", qd_last_error(ctx));
    qd_vae_close(m);

    /* decoder from the .pth (the published taesd.py format) gives the same pixels */
    st = qd_vae_open_pair(ctx, NULL, fixture("pth/taef2_decoder.pth"), &m);
    check(st == QD_OK && !qd_vae_describe(m)->can_encode, "decoder alone from taef2_decoder.pth%s%s",
          st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK) {
        check(qd_vae_decode_latent(ctx, m, g_latent, 1, L, L, QD_IMAGE_RGB8, pv) == QD_OK && !memcmp(pv, u8, NI),
              ".pth decoder output identical to the safetensors one");
        check(qd_vae_encode_image(ctx, m, QD_IMAGE_RGB8, rgb, 1, S, S, lat) == QD_ERR_ARG &&
              strstr(qd_last_error(ctx), "no encoder"), "encode without an encoder: %s", qd_last_error(ctx));
        qd_vae_close(m);
    }
    free(u8); free(pv); free(lat); free(dec); free(ref); free(rgb); free(img);
}

/* Write `src`'s tensors renamed by `rename` (NULL: drop) into out, optionally adding more. */
typedef const char *(*rename_fn)(const char *name, char *buf, size_t n, void *user);

static int rewrite(qd_ctx *ctx, const char *const *srcs, int n_src, const char *out, rename_fn rn, void *user) {
    qd_st_set sets[2];
    qd_st_out *t = NULL;
    char (*names)[128] = NULL;
    int n = 0, ok = 1, opened = 0;
    for (; opened < n_src; opened++)
        if (qd_st_open(ctx, srcs[opened], &sets[opened]) != QD_OK) { ok = 0; break; }
    int64_t total = 0;
    for (int s = 0; s < opened; s++) total += sets[s].n_tensors;
    t = calloc((size_t)total + 1, sizeof *t);
    names = calloc((size_t)total + 1, sizeof *names);
    for (int s = 0; ok && s < n_src; s++)
        for (int64_t i = 0; i < sets[s].n_tensors; i++) {
            const qd_st_tensor *x = &sets[s].tensors[i];
            char buf[128];
            const char *nm = rn(x->name, buf, sizeof buf, s ? (void *)"dec" : user);
            if (!nm) continue;
            snprintf(names[n], 128, "%s", nm);
            t[n].name = names[n];
            t[n].dtype = x->dtype;
            t[n].ndim = x->ndim;
            memcpy(t[n].shape, x->shape, sizeof x->shape);
            t[n].data = x->data;
            n++;
        }
    if (ok) ok = qd_st_write(ctx, out, t, n, NULL) == QD_OK;
    for (int s = 0; s < opened; s++) qd_st_close(&sets[s]);
    free(t);
    free(names);
    return ok;
}

/* diffusers' AutoencoderTiny names: encoder.layers.N = N, decoder.layers.N = N + 1 */
static const char *to_diffusers(const char *name, char *buf, size_t n, void *user) {
    int dec = user && !strcmp(user, "dec");
    char *end;
    long idx = strtol(name, &end, 10);
    snprintf(buf, n, "%s.layers.%ld%s", dec ? "decoder" : "encoder", dec ? idx - 1 : idx, end);
    return buf;
}

static const char *drop_one(const char *name, char *buf, size_t n, void *user) {
    return strcmp(name, "13.conv.2.weight") ? name : NULL;
}

static void test_layouts(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_taesd_XXXXXX", comb[256], broken[256];
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    snprintf(comb, sizeof comb, "%s/taef2.safetensors", dir);
    snprintf(broken, sizeof broken, "%s/broken_decoder.safetensors", dir);
    const char *both[] = {fixture("taesd/taef2_encoder.safetensors"), fixture("taesd/taef2_decoder.safetensors")};
    check(rewrite(ctx, both, 2, comb, to_diffusers, "enc"), "write a diffusers-layout combined file");
    qd_vae_model *m;
    qd_status st = qd_vae_open(ctx, comb, &m);
    check(st == QD_OK && qd_vae_describe(m)->can_encode && qd_vae_describe(m)->can_decode,
          "combined encoder.layers/decoder.layers file opens%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK) {
        float *lat = malloc(sizeof(float) * NL), *img = malloc(sizeof(float) * NI), *out = malloc(sizeof(float) * NI);
        float *ref = malloc(sizeof(float) * NI);
        nchw_to_nhwc(g_image, 3, S, S, img);
        nchw_to_nhwc(g_decoded, 3, S, S, ref);
        qd_vae_encode_image(ctx, m, QD_IMAGE_F32, img, 1, S, S, lat);
        check_close("diffusers layout: encode", lat, g_latent, NL, 1e-4, 1e-3);
        qd_vae_decode_latent(ctx, m, g_latent, 1, L, L, QD_IMAGE_F32, out);
        check_close("diffusers layout: decode", out, ref, NI, 1e-4, 1e-3);
        free(lat); free(img); free(out); free(ref);
        qd_vae_close(m);
    }
    /* the same file as a diffusers AutoencoderTiny folder */
    char sub[300], cfgp[320], wp[340];
    snprintf(sub, sizeof sub, "%s/vae", dir);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", sub);
    snprintf(wp, sizeof wp, "%s/diffusion_pytorch_model.safetensors", sub);
    FILE *cf = NULL;
    if (mkdir(sub, 0700) == 0 && (cf = fopen(cfgp, "w")) != NULL) {
        fputs("{\"_class_name\": \"AutoencoderTiny\", \"latent_channels\": 32, \"scaling_factor\": 1.0}\n", cf);
        fclose(cf);
    }
    st = cf && rename(comb, wp) == 0 ? qd_vae_open(ctx, sub, &m) : QD_ERR_IO;
    check(st == QD_OK && !strcmp(qd_vae_describe(m)->kind, "taef2") && qd_vae_describe(m)->can_encode,
          "diffusers AutoencoderTiny folder opens as taef2%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK) qd_vae_close(m);
    unlink(wp);
    unlink(cfgp);
    rmdir(sub);

    const char *dec[] = {fixture("taesd/taef2_decoder.safetensors")};
    check(rewrite(ctx, dec, 1, broken, drop_one, NULL), "write a decoder missing a tensor");
    st = qd_vae_open(ctx, broken, &m);
    check(st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "broken_decoder.safetensors") &&
          strstr(qd_last_error(ctx), "13.conv.2.weight"), "missing tensor named: %s", qd_last_error(ctx));
    st = qd_vae_open(ctx, fixture("pth/state.pth"), &m);
    check(st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "no TAESD encoder or decoder"),
          "a .pth of something else: %s", qd_last_error(ctx));
    st = qd_vae_open_pair(ctx, fixture("taesd/taef2_decoder.safetensors"), NULL, &m);
    check(st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "holds no TAESD encoder"),
          "a decoder given as the encoder: %s", qd_last_error(ctx));
    st = qd_vae_open(ctx, fixture("taesd/photo.png"), &m);
    check(st != QD_OK && strstr(qd_last_error(ctx), "photo.png"), "an image as weights: %s", qd_last_error(ctx));
    st = qd_vae_open(ctx, "/nonexistent/taesd", &m);
    check(st == QD_ERR_IO && strstr(qd_last_error(ctx), "/nonexistent/taesd"), "missing path: %s", qd_last_error(ctx));
    unlink(comb);
    unlink(broken);
    rmdir(dir);
}

/* AutoencoderKL through the same API: latents are mean * scaling_factor. */
static void test_kl(qd_ctx *ctx) {
    const char *g = fixture("goldens/sd15-tiny/vae.safetensors");
    int64_t ls[4], is[4];
    float *lat = load_f32(g, "latent", ls, NULL, NULL), *dec = load_f32(g, "decoded", NULL, NULL, NULL);
    float *img = load_f32(g, "image", is, NULL, NULL), *mean = load_f32(g, "encoded_mean", NULL, NULL, NULL);
    qd_vae_model *m;
    if (!lat || !dec || !img || !mean || qd_vae_open(ctx, fixture("models/sd15-tiny/vae"), &m) != QD_OK) {
        check(0, "sd15-tiny vae: %s", qd_last_error(ctx));
        free(lat); free(dec); free(img); free(mean);
        return;
    }
    const qd_vae_model_info *in = qd_vae_describe(m);
    check(!strcmp(in->kind, "AutoencoderKL") && in->latent_channels == 4 && in->downscale == 8, "sd15-tiny: %s", in->kind);
    int H = (int)is[2], W = (int)is[3], h = (int)ls[2], w = (int)ls[3];
    size_t ni = (size_t)(3 * H * W), nl = (size_t)(4 * h * w);
    float *x = malloc(sizeof(float) * ni), *y = malloc(sizeof(float) * ni), *z = malloc(sizeof(float) * nl);
    for (size_t i = 0; i < ni; i++) img[i] = (img[i] + 1) / 2;     /* [-1,1] -> [0,1] */
    nchw_to_nhwc(img, 3, H, W, x);
    check(qd_vae_encode_image(ctx, m, QD_IMAGE_F32, x, 1, W, H, z) == QD_OK, "encode runs");
    for (size_t i = 0; i < nl; i++) mean[i] *= 0.18215f;
    check_close("AutoencoderKL API encode vs encoded_mean * 0.18215", z, mean, nl, 1e-4, 1e-3);
    for (size_t i = 0; i < nl; i++) z[i] = lat[i] * 0.18215f;
    check(qd_vae_decode_latent(ctx, m, z, 1, w, h, QD_IMAGE_F32, y) == QD_OK, "decode runs");
    for (size_t i = 0; i < ni; i++) { float v = (dec[i] + 1) / 2; dec[i] = v < 0 ? 0 : v > 1 ? 1 : v; }
    nchw_to_nhwc(dec, 3, H, W, x);
    check_close("AutoencoderKL API decode vs clamp((decoded+1)/2)", y, x, ni, 1e-4, 1e-3);
    free(x); free(y); free(z); free(lat); free(dec); free(img); free(mean);
    qd_vae_close(m);
}

/* ---- synthetic variants: every layout taesd.py defines, random weights ------------ */

/* Layer lists written from taesd.py's Encoder/Decoder/F32Encoder/F32Decoder, one token
 * per nn.Sequential index: "cI:O" conv with bias, "nI:O" conv without, "BN" Block(N, N),
 * "r" ReLU, "u" Upsample, "k" Clamp. '#' stands for the latent channels. */
static const char *ENC8 = "c3:64 B64 n64:64 B64 B64 B64 n64:64 B64 B64 B64 n64:64 B64 B64 B64 c64:#";
static const char *DEC8 = "k c#:64 r B64 B64 B64 u n64:64 B64 B64 B64 u n64:64 B64 B64 B64 u n64:64 B64 c64:3";
static const char *ENC32 = "c3:32 r c32:64 r B64 n64:64 B64 B64 B64 n64:64 B64 B64 B64 n64:64 B64 B64 B64 c64:#";
static const char *DEC32 = "k c#:256 r B256 B256 B256 u n256:128 B128 B128 B128 u n128:64 B64 B64 B64 u n64:64 "
                           "B64 B64 B64 u n64:64 B64 B64 B64 u n64:64 B64 c64:3";

typedef struct { qd_st_out *t; char (*names)[64]; float **data; int n; uint32_t seed; } synth;

static void synth_add(synth *s, const char *name, int ndim, const int64_t *shape, float scale) {
    qd_st_out *o = &s->t[s->n];
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    float *d = malloc(sizeof(float) * (size_t)numel);
    for (int64_t i = 0; i < numel; i++) {
        s->seed = s->seed * 1664525u + 1013904223u;
        d[i] = ((float)(s->seed >> 8) / 16777216.0f - 0.5f) * 2 * scale;
    }
    snprintf(s->names[s->n], 64, "%s", name);
    o->name = s->names[s->n];
    o->dtype = QD_F32;
    o->ndim = ndim;
    memcpy(o->shape, shape, sizeof(int64_t) * (size_t)ndim);
    o->data = d;
    s->data[s->n++] = d;
}

static void synth_conv(synth *s, const char *pre, int64_t o, int64_t i, int k, int bias) {
    char name[64];
    int64_t w[4] = {o, i, k, k};
    snprintf(name, sizeof name, "%s.weight", pre);
    synth_add(s, name, 4, w, 1.0f / sqrtf((float)(i * k * k)));
    if (bias) { snprintf(name, sizeof name, "%s.bias", pre); synth_add(s, name, 1, &o, 0.02f); }
}

static int write_spec(qd_ctx *ctx, const char *spec, int C, const char *path) {
    synth s = {calloc(512, sizeof(qd_st_out)), calloc(512, 64), calloc(512, sizeof(float *)), 0, 12345u};
    char buf[512], pre[32];
    snprintf(buf, sizeof buf, "%s", spec);
    int idx = 0;
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "), idx++) {
        snprintf(pre, sizeof pre, "%d", idx);
        if (tok[0] == 'c' || tok[0] == 'n') {
            int64_t i = tok[1] == '#' ? C : atoi(tok + 1);
            const char *o = strchr(tok, ':') + 1;
            synth_conv(&s, pre, o[0] == '#' ? C : atoi(o), i, 3, tok[0] == 'c');
        } else if (tok[0] == 'B') {
            int64_t n = atoi(tok + 1);
            char sub[48];
            for (int j = 0; j < 3; j++) {
                snprintf(sub, sizeof sub, "%d.conv.%d", idx, 2 * j);
                synth_conv(&s, sub, n, n, 3, 1);
            }
        }
    }
    int ok = qd_st_write(ctx, path, s.t, s.n, NULL) == QD_OK;
    for (int i = 0; i < s.n; i++) free(s.data[i]);
    free(s.t); free(s.names); free(s.data);
    return ok;
}

/* Detection and shapes for taesd (4 ch), taesd3/taef1 (16 ch) and taesana (32x). Random
 * weights: no reference numbers, only that each layout loads, is recognised and runs. */
static void test_variants(qd_ctx *ctx) {
    static const struct { int C, f; const char *kind; } v[] = {
        {4, 8, "taesd/taesdxl"}, {16, 8, "taesd3/taef1"}, {32, 32, "taesana"}};
    char dir[] = "/tmp/qd_taesd_var_XXXXXX", e[256], d[256];
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    for (int k = 0; k < 3; k++) {
        snprintf(e, sizeof e, "%s/x_encoder.safetensors", dir);
        snprintf(d, sizeof d, "%s/x_decoder.safetensors", dir);
        int f32 = v[k].f == 32;
        if (!write_spec(ctx, f32 ? ENC32 : ENC8, v[k].C, e) || !write_spec(ctx, f32 ? DEC32 : DEC8, v[k].C, d)) {
            check(0, "write %s", v[k].kind);
            continue;
        }
        qd_vae_model *m;
        qd_status st = qd_vae_open(ctx, d, &m);   /* the decoder's name finds the encoder */
        if (st) { check(0, "%s opens: %s", v[k].kind, qd_last_error(ctx)); continue; }
        const qd_vae_model_info *in = qd_vae_describe(m);
        check(in->latent_channels == v[k].C && in->downscale == v[k].f && !strcmp(in->kind, v[k].kind) &&
              in->can_encode && in->can_decode, "synthetic %s: %d ch, %dx, kind %s", v[k].kind, in->latent_channels,
              in->downscale, in->kind);
        int side = 2 * v[k].f, l = 2;
        float *img = malloc(sizeof(float) * (size_t)(side * side * 3)), *z = malloc(sizeof(float) * (size_t)(v[k].C * l * l));
        float *out = malloc(sizeof(float) * (size_t)(side * side * 3));
        for (int i = 0; i < side * side * 3; i++) img[i] = (float)(i % 251) / 250.0f;
        st = qd_vae_encode_image(ctx, m, QD_IMAGE_F32, img, 1, side, side, z);
        if (st == QD_OK) st = qd_vae_decode_latent(ctx, m, z, 1, l, l, QD_IMAGE_F32, out);
        int finite = 1;
        for (int i = 0; i < v[k].C * l * l; i++) finite &= isfinite(z[i]);
        check(st == QD_OK && finite, "synthetic %s: %dx%d image -> [%d, %d, %d] -> %dx%d image%s%s", v[k].kind, side,
              side, v[k].C, l, l, side, side, st ? ": " : "", st ? qd_last_error(ctx) : "");
        free(img); free(z); free(out);
        qd_vae_close(m);
        unlink(e);
        unlink(d);
    }
    /* halves of different latent spaces are refused */
    write_spec(ctx, ENC8, 4, e);
    write_spec(ctx, DEC8, 16, d);
    qd_vae_model *m;
    qd_status st = qd_vae_open_pair(ctx, e, d, &m);
    check(st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "not a pair"), "4-ch encoder + 16-ch decoder: %s",
          qd_last_error(ctx));
    unlink(e);
    unlink(d);
    rmdir(dir);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    const char *g = fixture("taesd/photo_golden.safetensors");
    g_image = load_f32(g, "image", NULL, NULL, NULL);
    g_latent = load_f32(g, "latent", NULL, NULL, NULL);
    g_decoded = load_f32(g, "decoded", NULL, NULL, NULL);
    if (g_image && g_latent && g_decoded) {
        test_model(ctx);
        test_api_photo(ctx);
        test_layouts(ctx);
        test_variants(ctx);
    } else {
        check(0, "photo_golden.safetensors loads");
    }
    test_kl(ctx);
    free(g_image); free(g_latent); free(g_decoded);
    qd_ctx_free(ctx);
    return test_summary();
}
