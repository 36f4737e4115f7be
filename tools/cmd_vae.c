/* qdiff vae encode|decode: an image to latents and back with a VAE on its own
 * (a diffusers vae folder or TAESD weights). Latent files are safetensors with
 * one F32 tensor "latent" [batch, channels, h, w] in the diffusion model's space. */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage_vae(FILE *f) {
    fprintf(f,
        "usage: qdiff vae encode --vae PATH -i IMAGE -o LATENT.safetensors [-W N -H N] [options]\n"
        "       qdiff vae decode --vae PATH -i LATENT.safetensors -o IMAGE.png [options]\n"
        "\n"
        "  encode: a PNG or JPEG image to latents (tensor \"latent\" [1, C, H/f, W/f], F32)\n"
        "  decode: latents (tensor \"latent\", \"latents\" as 'generate --save-latents' writes,\n"
        "          or a file's only tensor; [B, C, h, w] or [C, h, w]) to PNG; with B > 1,\n"
        "          IMAGE-1.png ... IMAGE-B.png\n"
        "\n"
        "      --vae PATH     a diffusers vae folder (AutoencoderKL or AutoencoderTiny), or a TAESD\n"
        "                     weight file, .safetensors or .pth (taesd, taesdxl, taesd3, taef1,\n"
        "                     taef2, taesana; detected from the weights). Given X_encoder.EXT, the\n"
        "                     X_decoder.EXT beside it is used too, and the other way round.\n"
        "  -i, --input F      input image (encode) or latent file (decode)\n"
        "  -o, --output F     output latent file (encode) or PNG (decode)\n"
        "  -W, --width N      encode: resize the image to N pixels wide first (a multiple of f)\n"
        "  -H, --height N     encode: resize to N pixels high. Without -W/-H an image whose sides\n"
        "                     are not multiples of f (8; 32 for taesana) is shrunk to the nearest ones\n"
        "  -t, --threads N    worker threads (default: all cores)\n"
        "      --precision P  convolutions in auto (default: bf16 where the CPU has AVX512_BF16;\n"
        "                     $QD_PRECISION sets the default), fp32 or bf16 (see generate --help)\n"
        "      --vae-tile PX  AutoencoderKL: work in overlapping PX x PX image tiles (bounded\n"
        "                     memory; tiles blend over 64 px); 0: never. Default: 512 px tiles\n"
        "                     above 1024 x 1024 pixels, else one pass\n"
        "  -q, --quiet        no messages but errors\n"
        "  -h, --help         this help\n"
        "\n"
        "Latents are those the diffusion model works in: AutoencoderKL's mean scaled by\n"
        "scaling_factor (after shift_factor), TAESD's output as it is.\n");
}

static void numbered(char *buf, size_t n, const char *path, int k, int batch) {
    if (batch <= 1) { snprintf(buf, n, "%s", path); return; }
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) { snprintf(buf, n, "%s-%d", path, k); return; }
    snprintf(buf, n, "%.*s-%d%s", (int)(dot - path), path, k, dot);
}

static int fail(qd_ctx *ctx) {
    fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
    return EXIT_BAD;
}

static int do_encode(qd_ctx *ctx, qd_vae_model *m, const char *in, const char *out, int W, int H, int quiet) {
    const qd_vae_model_info *info = qd_vae_describe(m);
    int f = info->downscale, w, h, rc = EXIT_BAD;
    if (!info->can_encode) {
        fprintf(stderr, "qdiff: this VAE (%s) holds no encoder: pass the encoder file, or keep X_encoder.* "
                "beside X_decoder.*\n", info->kind);
        return EXIT_BAD;
    }
    if ((W && W % f) || (H && H % f)) {
        fprintf(stderr, "qdiff: --width and --height must be multiples of %d for this VAE\n", f);
        return EXIT_BAD;
    }
    uint8_t *rgb = NULL, *sized = NULL;
    float *lat = NULL;
    if (qd_read_image(ctx, in, &rgb, &w, &h) != QD_OK) return fail(ctx);
    int tw = W ? W : (w / f) * f, th = H ? H : (h / f) * f;
    if (tw < f || th < f) {
        fprintf(stderr, "qdiff: %s: %d x %d is smaller than the VAE's %d x %d pixels per latent\n", in, w, h, f, f);
        goto done;
    }
    if (tw != w || th != h) {
        if (!W && !H && !quiet) fprintf(stderr, "resizing %d x %d to %d x %d (multiples of %d)\n", w, h, tw, th, f);
        if (!(sized = malloc((size_t)tw * th * 3))) { fprintf(stderr, "qdiff: out of memory\n"); goto done; }
        if (qd_resize_rgb8(ctx, rgb, w, h, sized, tw, th) != QD_OK) { fail(ctx); goto done; }
    }
    int64_t shape[4] = {1, info->latent_channels, th / f, tw / f};
    if (!(lat = malloc(sizeof(float) * (size_t)(shape[1] * shape[2] * shape[3])))) {
        fprintf(stderr, "qdiff: out of memory\n");
        goto done;
    }
    if (qd_vae_encode_image(ctx, m, QD_IMAGE_RGB8, sized ? sized : rgb, 1, tw, th, lat) != QD_OK ||
        qd_write_tensor(ctx, out, "latent", lat, shape, 4) != QD_OK) {
        rc = fail(ctx);
        goto done;
    }
    if (!quiet)
        fprintf(stderr, "wrote %s (latent [1, %lld, %lld, %lld], %s)\n", out, (long long)shape[1], (long long)shape[2],
                (long long)shape[3], info->kind);
    rc = 0;
done:
    free(rgb);
    free(sized);
    free(lat);
    return rc;
}

/* The latent tensor: a file's only tensor, else "latent", else "latents". */
static qd_status read_latent(qd_ctx *ctx, const char *in, float **z, int64_t shape[8], int *ndim) {
    qd_status st = qd_read_tensor(ctx, in, NULL, z, shape, ndim);
    if (st == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "name the one")) {
        st = qd_read_tensor(ctx, in, "latent", z, shape, ndim);
        if (st == QD_ERR_FORMAT) st = qd_read_tensor(ctx, in, "latents", z, shape, ndim);
    }
    return st;
}

static int do_decode(qd_ctx *ctx, qd_vae_model *m, const char *in, const char *out, int quiet) {
    const qd_vae_model_info *info = qd_vae_describe(m);
    if (!info->can_decode) {
        fprintf(stderr, "qdiff: this VAE (%s) holds no decoder: pass the decoder file, or keep X_decoder.* "
                "beside X_encoder.*\n", info->kind);
        return EXIT_BAD;
    }
    float *z = NULL;
    uint8_t *img = NULL;
    int64_t shape[8] = {0};
    int ndim = 0, rc = EXIT_BAD;
    if (read_latent(ctx, in, &z, shape, &ndim) != QD_OK) return fail(ctx);
    int64_t B = ndim == 4 ? shape[0] : 1, C = shape[ndim - 3 >= 0 ? ndim - 3 : 0];
    int64_t h = ndim >= 3 ? shape[ndim - 2] : 0, w = ndim >= 3 ? shape[ndim - 1] : 0;
    int f = info->downscale;
    if (ndim < 3 || ndim > 4 || B < 1 || B > 64 || h < 1 || w < 1 || h * f > 16384 || w * f > 16384) {
        fprintf(stderr, "qdiff: %s: expected a latent [batch, channels, h, w] (batch <= 64, at most %d x %d "
                "pixels decoded) but the tensor has %d dims\n", in, 16384, 16384, ndim);
        goto done;
    }
    if (C != info->latent_channels) {
        fprintf(stderr, "qdiff: %s: the latent has %lld channels but this VAE (%s) takes %d: "
                "it comes from another model family\n", in, (long long)C, info->kind, info->latent_channels);
        goto done;
    }
    size_t per = (size_t)(h * f) * (size_t)(w * f) * 3;
    char path[4200];
    for (int k = 1; k <= B; k++) {
        numbered(path, sizeof path, out, k, (int)B);
        if (cli_check_writable(path)) goto done;
    }
    if (!(img = malloc(per * (size_t)B))) { fprintf(stderr, "qdiff: out of memory\n"); goto done; }
    if (qd_vae_decode_latent(ctx, m, z, (int)B, (int)w, (int)h, QD_IMAGE_RGB8, img) != QD_OK) { rc = fail(ctx); goto done; }
    for (int k = 1; k <= B; k++) {
        numbered(path, sizeof path, out, k, (int)B);
        if (qd_write_png(ctx, path, img + per * (size_t)(k - 1), (int)(w * f), (int)(h * f), NULL, NULL, 0) != QD_OK) {
            rc = fail(ctx);
            for (int j = 1; j < k; j++) { numbered(path, sizeof path, out, j, (int)B); remove(path); }
            goto done;
        }
        if (!quiet) fprintf(stderr, "wrote %s (%lld x %lld, %s)\n", path, (long long)(w * f), (long long)(h * f), info->kind);
    }
    rc = 0;
done:
    free(z);
    free(img);
    return rc;
}

int cmd_vae(int argc, char **argv) {
    static const struct option opts[] = {
        {"vae", required_argument, 0, 'v'}, {"input", required_argument, 0, 'i'},
        {"output", required_argument, 0, 'o'}, {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'}, {"threads", required_argument, 0, 't'},
        {"vae-tile", required_argument, 0, 'T'},
        {"precision", required_argument, 0, 'P'}, {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))) {
        usage_vae(stdout);
        return 0;
    }
    if (argc < 2 || (strcmp(argv[1], "encode") && strcmp(argv[1], "decode"))) {
        fprintf(stderr, "qdiff: vae needs a subcommand: encode or decode\n\n");
        usage_vae(stderr);
        return EXIT_BAD;
    }
    int encode = !strcmp(argv[1], "encode");
    const char *vae = NULL, *in = NULL, *out = NULL;
    long threads = 0, W = 0, H = 0, tile = -1;
    int quiet = 0, c, precision;
    if (cli_default_precision(&precision)) return EXIT_BAD;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "v:i:o:W:H:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'v': vae = optarg; break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'W': if (cli_parse_int(optarg, "--width", 8, 16384, &W)) return EXIT_BAD; break;
        case 'H': if (cli_parse_int(optarg, "--height", 8, 16384, &H)) return EXIT_BAD; break;
        case 't': if (cli_parse_int(optarg, "--threads", 1, 256, &threads)) return EXIT_BAD; break;
        case 'P': if (cli_parse_precision(optarg, "--precision", &precision)) return EXIT_BAD; break;
        case 'T': if (cli_parse_int(optarg, "--vae-tile", 0, 65536, &tile)) return EXIT_BAD; break;
        case 'q': quiet = 1; break;
        case 'h': usage_vae(stdout); return 0;
        default: usage_vae(stderr); return EXIT_BAD;
        }
    }
    if (optind < argc - 1) { fprintf(stderr, "qdiff: unexpected argument '%s'\n", argv[optind + 1]); return EXIT_BAD; }
    if (!vae || !in || !out) {
        fprintf(stderr, "qdiff: vae %s needs --vae PATH, -i %s and -o %s (see qdiff vae --help)\n", argv[1],
                encode ? "IMAGE" : "LATENT.safetensors", encode ? "LATENT.safetensors" : "IMAGE.png");
        return EXIT_BAD;
    }
    if (!encode && (W || H)) { fprintf(stderr, "qdiff: --width/--height apply to encode only\n"); return EXIT_BAD; }
    if (encode && cli_check_writable(out)) return EXIT_BAD;

    qd_ctx *ctx = qd_ctx_new((int)threads);
    if (!ctx) { fprintf(stderr, "qdiff: out of memory\n"); return EXIT_BAD; }
    qd_set_precision(ctx, precision);
    qd_set_vae_tiling(ctx, (int)tile, -1);
    qd_vae_model *m = NULL;
    int rc;
    if (qd_vae_open(ctx, vae, &m) != QD_OK) rc = fail(ctx);
    else if (encode) rc = do_encode(ctx, m, in, out, (int)W, (int)H, quiet);
    else rc = do_decode(ctx, m, in, out, quiet);
    qd_vae_close(m);
    qd_ctx_free(ctx);
    return rc;
}
