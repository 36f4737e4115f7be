/* Full text-to-image runs against diffusers' pipeline goldens: every case in
 * goldens/{sd15-tiny,sdxl-tiny,shapes-sd,sd35-tiny,flux-tiny}/cases.json (scheduler class and kwargs,
 * steps, cfg, seed, size), and the SDNQ-quantized sd15 and FLUX goldens (made by
 * diffusers + sdnq with exact dequantization). Latents within relative L2 1e-3;
 * image_u8 within +-2 for >= 99.9% of values (tests/fixtures/README.md). With
 * int8 matmul (an approximation of the golden's exact math) only the latents are
 * checked, against a stated bound. */
#include "testutil.h"
#include "io/json.h"

#include <stdlib.h>
#include <string.h>

/* approx > 0: int8-matmul run, latents within that relative L2 of the exact golden. */
static void run_case(qd_ctx *ctx, qd_model *m, const char *golden_dir, const cJSON *c, double approx) {
    const char *golden = qd_json_str(c, "golden", "?");
    qd_gen_params p;
    char *opts = golden_case_params(m, c, &p);

    int64_t shape[4];
    size_t nlat = qd_latent_shape(m, &p, shape, NULL);
    size_t nimg = qd_image_size(m, &p, QD_IMAGE_RGB8);
    float *lat = malloc(sizeof(float) * nlat), *imgf = malloc(sizeof(float) * nimg);
    uint8_t *img = malloc(nimg);
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    check(st == QD_OK, "%s/%s generate: %s", golden_dir, golden, st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) st = qd_generate(ctx, m, &p, QD_IMAGE_F32, imgf, NULL);
    if (st == QD_OK) {
        char path[1024], what[1200];
        snprintf(path, sizeof path, "%s/%s", fixture(golden_dir), golden);
        size_t n_ref = 0, n_ref_img = 0;
        float *ref = load_f32(path, "latents", NULL, NULL, &n_ref);
        uint8_t *ref_img = load_raw(path, "image_u8", &n_ref_img);
        float *ref_nhwc = load_f32(path, "image_nhwc", NULL, NULL, NULL);
        check(ref && n_ref == nlat && ref_img && n_ref_img == nimg, "%s: golden shapes match", golden);
        if (ref && n_ref == nlat && ref_img && n_ref_img == nimg) {
            double r = rel_l2(lat, ref, nlat);
            size_t close = 0;
            int worst = 0;
            for (size_t i = 0; i < nimg; i++) {
                int d = abs((int)img[i] - (int)ref_img[i]);
                if (d <= 2) close++;
                if (d > worst) worst = d;
            }
            if (approx > 0) {
                check(r <= approx, "%s/%s with int8 matmul: latents rel_l2 %.3g of the exact golden (bound %g)",
                      golden_dir, golden, r, approx);
                free(ref); free(ref_img); free(ref_nhwc);
                free(opts); free(lat); free(img); free(imgf);
                return;
            }
            check(r <= 1e-3, "%s %s latents rel_l2 %.3g (tol 1e-3)", golden, p.scheduler ? p.scheduler : "", r);
            check(close >= nimg * 0.999, "%s image_u8 within +-2: %.4f%% (max diff %d; need 99.9%%)",
                  golden, 100.0 * close / nimg, worst);
            snprintf(what, sizeof what, "%s image_nhwc", golden);
            check_close(what, imgf, ref_nhwc, nimg, 1e-2, 2.0 / 255 * 4);
        }
        free(ref); free(ref_img); free(ref_nhwc);
    }
    free(opts); free(lat); free(img); free(imgf);
}

static void run_family(qd_ctx *ctx, const char *golden_dir, double approx) {
    char path[1024];
    snprintf(path, sizeof path, "%s/cases.json", fixture(golden_dir));
    cJSON *cases;
    if (qd_json_load(ctx, path, &cases) != QD_OK) { check(0, "%s", qd_last_error(ctx)); return; }
    const char *model_dir = qd_json_str(cases, "model_dir", "");
    qd_model *m = test_open_model(ctx, model_dir);
    if (m) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(cases, "pipelines");
        const char *only = getenv("QD_CASE");   /* e.g. QD_CASE=pipe_pndm to run one */
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next)
            if (!only || strstr(qd_json_str(c, "golden", ""), only)) run_case(ctx, m, golden_dir, c, approx);
        qd_model_free(m);
    }
    cJSON_Delete(cases);
}

int main(int argc, char **argv) {
    qd_ctx *ctx = test_ctx_new(0);
    if (argc > 1) {
        for (int i = 1; i < argc; i++) run_family(ctx, argv[i], 0);
    } else {
        run_family(ctx, "goldens/sd15-tiny", 0);
        run_family(ctx, "goldens/sdxl-tiny", 0);
        run_family(ctx, "goldens/shapes-sd", 0);
        run_family(ctx, "goldens/sd35-tiny", 0);
        run_family(ctx, "goldens/flux-tiny", 0);
        /* SDNQ: exact dequantization reproduces diffusers + sdnq */
        qd_set_matmul(ctx, QD_MATMUL_EXACT);
        run_family(ctx, "goldens/sd15-tiny-sdnq-uint4-svd", 0);
        run_family(ctx, "goldens/flux-tiny-sdnq-int8-qmm", 0);
        /* int8 activations approximate it: ~1% per quantized linear, compounding over the
         * layers and steps of these tiny random models (measured 1.5e-3 with the FLUX
         * config's own choice; with int8 forced everywhere 2.6e-2 for sd15 (its attention
         * output, feed-forward down and 1x1 proj/shortcut GEMMs now run int8 too) and
         * 1.2e-2 for FLUX) */
        qd_set_matmul(ctx, QD_MATMUL_CONFIG);
        run_family(ctx, "goldens/flux-tiny-sdnq-int8-qmm", 0.01);
        qd_set_matmul(ctx, QD_MATMUL_INT8);
        run_family(ctx, "goldens/sd15-tiny-sdnq-uint4-svd", 0.05);
        run_family(ctx, "goldens/flux-tiny-sdnq-int8-qmm", 0.05);
    }
    qd_ctx_free(ctx);
    return test_summary();
}
