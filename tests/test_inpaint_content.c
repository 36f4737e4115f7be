/* qd_gen_params.masked_content (A1111's "Masked content"), fp32, on sd15-tiny and flux-tiny
 * with the shapes-sd golden picture and a left-half mask (whole latent cells: the nearest
 * and bilinear grids are exactly 1 in columns 0..3 and 0 elsewhere):
 *   - k-sampler (euler) LATENT_NOTHING = ORIGINAL started from init latents that are the
 *     image's (the encoder's mean) with the masked cells set to 0 here; LATENT_NOISE = the
 *     same with the masked cells set to the seed's randn (qd_rng, checked against torch's
 *     stream in test_rng): final latents rel L2 <= 1e-6 (the same arithmetic: 0 expected);
 *   - FILL = ORIGINAL started from the picture qd_inpaint_fill paints (byte-exact with
 *     Pillow in test_inpaint_fill), bit for bit;
 *   - diffusers classes (PNDM) LATENT_NOTHING: the kept cells end as the image latents,
 *     exactly as with ORIGINAL, and the masked ones differ from ORIGINAL's;
 *   - bad values: masked_content 4, without a mask, FILL from init latents: QD_ERR_ARG. */
#include "testutil.h"
#include "pipeline/img2img.h"
#include "pipeline/inpaint_fill.h"
#include "pipeline/model.h"
#include "base/rng.h"

#include <stdlib.h>
#include <string.h>

enum { S = 64 };

static void params(qd_gen_params *p, const float *img, const float *mask, const char *sampler) {
    qd_gen_params_default(p);
    p->prompt = "a green square on a yellow background";
    p->steps = 4;
    p->seed = 11;
    p->width = p->height = S;
    p->sampler = sampler;
    p->init_image = img;
    p->mask = mask;
    p->strength = 0.7;
}

static float *run(qd_ctx *ctx, qd_model *m, const qd_gen_params *p, size_t *n, const char *what) {
    int64_t shape[4];
    *n = qd_latent_shape(m, p, shape, NULL);
    float *lat = malloc(sizeof(float) * *n);
    uint8_t *img = malloc(qd_image_size(m, p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, p, QD_IMAGE_RGB8, img, lat);
    check(st == QD_OK, "%s runs: %s", what, st ? qd_last_error(ctx) : "ok");
    free(img);
    if (st != QD_OK) { free(lat); return NULL; }
    return lat;
}

/* k-sampler: masked_content against ORIGINAL from init latents prepared here */
static void latent_cases(qd_ctx *ctx, qd_model *m, const char *name, const float *img, const float *mask) {
    qd_gen_params p;
    params(&p, img, mask, "euler");
    int64_t C = m->latent_channels, h = S / m->vae_scale, w = S / m->vae_scale, per = C * h * w;
    float *enc = malloc(sizeof(float) * (size_t)per), *noise = malloc(sizeof(float) * (size_t)per);
    qd_gen_params_resolve(m, &p);
    check(qd_img2img_latents(ctx, m, &p, 1, NULL, enc) == QD_OK, "%s: the image's latents", name);
    qd_rng r;
    qd_rng_seed(&r, p.seed);
    qd_rng_randn(&r, noise, per);
    for (int content = QD_MASKED_LATENT_NOISE; content <= QD_MASKED_LATENT_NOTHING; content++) {
        const char *label = content == QD_MASKED_LATENT_NOISE ? "latent noise" : "latent nothing";
        float *init = malloc(sizeof(float) * (size_t)per);
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < h; i++)
                for (int64_t j = 0; j < w; j++) {
                    int64_t k = (c * h + i) * w + j;
                    init[k] = j < w / 2 ? (content == QD_MASKED_LATENT_NOISE ? noise[k] : 0.0f) : enc[k];
                }
        qd_gen_params a, b;
        params(&a, img, mask, "euler");
        a.masked_content = content;
        params(&b, NULL, mask, "euler");
        b.init_latents = init;
        size_t na, nb;
        char what[128];
        snprintf(what, sizeof what, "%s euler %s", name, label);
        float *la = run(ctx, m, &a, &na, what), *lb = run(ctx, m, &b, &nb, "... from the prepared latents");
        if (la && lb && na == nb) {
            double e = rel_l2(la, lb, na);
            check(e <= 1e-6, "%s = ORIGINAL from init latents with the masked cells set here: rel L2 %.3g (tol 1e-6)",
                  what, e);
        }
        free(la); free(lb); free(init);
    }
    free(enc); free(noise);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    qd_model *sd = test_open_model(ctx, "models/sd15-tiny"), *flux = test_open_model(ctx, "models/flux-tiny");
    float *img = load_f32(fixture("goldens/shapes-sd/pipe_00.safetensors"), "image_nhwc", NULL, NULL, NULL);
    if (!sd || !flux || !img) { check(0, "fixtures load"); return test_summary(); }
    float mask[S * S];
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) mask[y * S + x] = x < S / 2 ? 1.0f : 0.0f;

    latent_cases(ctx, sd, "sd15-tiny", img, mask);
    latent_cases(ctx, flux, "flux-tiny", img, mask);

    /* FILL = ORIGINAL from the painted picture */
    float *painted = malloc(sizeof(float) * S * S * 3);
    check(qd_inpaint_fill(ctx, img, mask, S, S, painted) == QD_OK, "the picture painted");
    qd_gen_params a, b;
    params(&a, img, mask, "euler");
    a.masked_content = QD_MASKED_FILL;
    params(&b, painted, mask, "euler");
    size_t na, nb;
    float *la = run(ctx, sd, &a, &na, "sd15-tiny euler fill"), *lb = run(ctx, sd, &b, &nb, "... from the painted picture");
    if (la && lb) check(!memcmp(la, lb, sizeof(float) * na), "fill = ORIGINAL from qd_inpaint_fill's picture, bit for bit");
    free(la); free(lb);

    /* diffusers classes: the kept cells still end as the image latents */
    params(&a, img, mask, NULL);
    a.masked_content = QD_MASKED_LATENT_NOTHING;
    params(&b, img, mask, NULL);
    la = run(ctx, sd, &a, &na, "sd15-tiny PNDM latent nothing");
    lb = run(ctx, sd, &b, &nb, "sd15-tiny PNDM original");
    if (la && lb) {
        int64_t h = S / 8, w = S / 8;
        double kept = 0, masked = 0;
        for (int64_t k = 0; k < (int64_t)na; k++) {
            double d = (double)la[k] - lb[k];
            if ((k % (h * w)) % w < w / 2) masked += d * d;
            else kept += d * d;
        }
        check(kept == 0, "PNDM latent nothing: the kept cells equal ORIGINAL's (the image latents) exactly (sum sq %g)", kept);
        check(masked > 1e-3, "PNDM latent nothing: the masked cells differ from ORIGINAL's (sum sq %g)", masked);
    }
    free(la); free(lb);

    /* bad values */
    uint8_t *out = malloc(qd_image_size(sd, &a, QD_IMAGE_RGB8));
    params(&a, img, mask, "euler");
    a.masked_content = 4;
    qd_status st = qd_generate(ctx, sd, &a, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "masked_content 4"), "masked_content 4: %s", qd_last_error(ctx));
    params(&a, img, NULL, "euler");
    a.masked_content = QD_MASKED_LATENT_NOISE;
    st = qd_generate(ctx, sd, &a, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "needs a mask"), "masked content without a mask: %s",
          qd_last_error(ctx));
    params(&a, NULL, mask, "euler");
    float *lat0 = calloc((size_t)4 * (S / 8) * (S / 8), sizeof(float));
    a.init_latents = lat0;
    a.masked_content = QD_MASKED_FILL;
    st = qd_generate(ctx, sd, &a, QD_IMAGE_RGB8, out, NULL);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "give the init image"), "fill from init latents: %s",
          qd_last_error(ctx));
    free(lat0); free(out); free(painted); free(img);
    qd_model_free(sd);
    qd_model_free(flux);
    qd_ctx_free(ctx);
    return test_summary();
}
