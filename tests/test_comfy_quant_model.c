/* comfy_quant weights inside model folders: the denoiser of flux-tiny and sd15-tiny is
 * rewritten by qd_comfy_quantize (int8_tensorwise + ConvRot, float8_e4m3fn), loaded by
 * qd_model_open (the quantized layers decode tile by tile in the GEMM) and run through
 * the golden pipeline case. Two checks per model:
 *  - the quantized model gives the same latents as a dense F32 twin holding the
 *    reader's dequantized weights (rel L2 <= 1e-5: same math, the decode path is exact);
 *  - against diffusers' unquantized golden, latents within 3x the quantized weights' total
 *    relative L2 error (the report's rel_error): weight-only quantization should move the
 *    result by the order of the weight error (measured 0.9x flux int8+ConvRot, 1.0x flux
 *    fp8, 2.2x sd15 int8 tensor-wise with its 50 steps of CFG). */
#include "testutil.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/comfy_quant.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* dst = a folder of links to src's entries, except component/, which gets links to its files
 * except the weights file. Returns the weights path to write. */
static void mirror(const char *src, const char *dst, const char *component, const char *weights, char *wpath, size_t n) {
    mkdir(dst, 0755);
    DIR *d = opendir(src);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char s[1024];
        snprintf(s, sizeof s, "%s/%s", src, e->d_name);
        if (strcmp(e->d_name, component) != 0) { link_fixture(s, dst, e->d_name); continue; }
        char cd[1024];
        snprintf(cd, sizeof cd, "%s/%s", dst, component);
        mkdir(cd, 0755);
        DIR *c = opendir(s);
        for (struct dirent *f; c && (f = readdir(c));) {
            if (f->d_name[0] == '.' || !strcmp(f->d_name, weights)) continue;
            char sf[1200];
            snprintf(sf, sizeof sf, "%s/%s", s, f->d_name);
            link_fixture(sf, cd, f->d_name);
        }
        if (c) closedir(c);
    }
    if (d) closedir(d);
    snprintf(wpath, n, "%s/%s/%s", dst, component, weights);
}

/* The dense twin: every tensor of `qpath` as stored, except comfy_quant layers, written
 * as their dequantized F32 weight (and their scale/config tensors dropped). */
static void write_dequantized_twin(qd_ctx *ctx, const char *qpath, const char *out) {
    qd_st_set st;
    qd_cq_model m;
    if (qd_st_open(ctx, qpath, &st) != QD_OK || qd_cq_open(ctx, &st, qpath, &m) != QD_OK) {
        check(0, "twin: %s", qd_last_error(ctx));
        return;
    }
    qd_st_out *t = calloc((size_t)st.n_tensors, sizeof *t);
    float **owned = calloc((size_t)st.n_tensors, sizeof *owned);
    int n = 0;
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const qd_st_tensor *s = &st.tensors[i];
        size_t len = strlen(s->name);
        const qd_cq_layer *l = qd_cq_find(&m, s->name);
        if (strstr(s->name, ".comfy_quant") || strstr(s->name, ".weight_scale") || strstr(s->name, ".input_scale")) continue;
        t[n] = (qd_st_out){s->name, s->dtype, s->ndim, {0}, s->data};
        memcpy(t[n].shape, s->shape, sizeof(int64_t) * (size_t)s->ndim);
        if (l && len > 7 && !strcmp(s->name + len - 7, ".weight")) {
            qd_cq_dequantize(ctx, l, &owned[n]);
            t[n].dtype = QD_F32;
            t[n].data = owned[n];
        }
        n++;
    }
    if (qd_st_write(ctx, out, t, n, NULL) != QD_OK) check(0, "twin write: %s", qd_last_error(ctx));
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(t);
    qd_cq_close(&m);
    qd_st_close(&st);
}

static float *run(qd_ctx *ctx, const char *model_dir, const cJSON *c, size_t *nlat) {
    qd_model *m;
    if (qd_model_open(ctx, model_dir, &m) != QD_OK) { check(0, "open %s: %s", model_dir, qd_last_error(ctx)); return NULL; }
    qd_gen_params p;
    char *opts = golden_case_params(m, c, &p);
    int64_t shape[4];
    *nlat = qd_latent_shape(m, &p, shape, NULL);
    float *lat = malloc(sizeof(float) * *nlat);
    uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    check(st == QD_OK, "generate with %s: %s", model_dir, st ? qd_last_error(ctx) : "ok");
    free(img);
    free(opts);
    qd_model_free(m);
    if (st != QD_OK) { free(lat); return NULL; }
    return lat;
}

static void run_model(qd_ctx *ctx, const char *family, const char *component, const char *dtype, int convrot) {
    char golden_dir[128], path[1024];
    snprintf(golden_dir, sizeof golden_dir, "goldens/%s", family);
    snprintf(path, sizeof path, "%s/cases.json", fixture(golden_dir));
    cJSON *cases;
    if (qd_json_load(ctx, path, &cases) != QD_OK) { check(0, "%s", qd_last_error(ctx)); return; }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cases, "pipelines")->child;
    const char *src = fixture(qd_json_str(cases, "model_dir", ""));
    char srcdir[1024], qdir[256], ddir[256], qw[1024], dw[1024], srcw[1200];
    snprintf(srcdir, sizeof srcdir, "%s", src);
    snprintf(qdir, sizeof qdir, "%s/%s-%s%s", scratch_dir(), family, dtype, convrot ? "-convrot" : "");
    snprintf(ddir, sizeof ddir, "%s-dense", qdir);
    const char *wname = "diffusion_pytorch_model.safetensors";
    mirror(srcdir, qdir, component, wname, qw, sizeof qw);
    mirror(srcdir, ddir, component, wname, dw, sizeof dw);
    snprintf(srcw, sizeof srcw, "%s/%s/%s", srcdir, component, wname);
    qd_comfy_quant_params q;
    qd_comfy_quant_params_default(&q);
    q.weights_dtype = dtype;
    q.convrot = convrot;
    char *rep = NULL;
    if (qd_comfy_quantize(ctx, srcw, qw, &q, &rep) != QD_OK) { check(0, "quantize: %s", qd_last_error(ctx)); cJSON_Delete(cases); return; }
    cJSON *r = cJSON_Parse(rep);
    const cJSON *tot = cJSON_GetObjectItemCaseSensitive(r, "totals");
    int nq = (int)qd_json_num(tot, "quantized", 0);
    double werr = qd_json_num(tot, "rel_error", 0);
    cJSON_Delete(r);
    qd_free(rep);
    write_dequantized_twin(ctx, qw, dw);

    size_t nq_lat = 0, nd_lat = 0, nref = 0;
    float *lq = run(ctx, qdir, c, &nq_lat), *ld = run(ctx, ddir, c, &nd_lat);
    snprintf(path, sizeof path, "%s/%s", fixture(golden_dir), qd_json_str(c, "golden", ""));
    float *ref = load_f32(path, "latents", NULL, NULL, &nref);
    if (lq && ld && ref && nq_lat == nd_lat && nref == nq_lat) {
        double same = rel_l2(lq, ld, nq_lat), gold = rel_l2(lq, ref, nq_lat), bound = 3 * werr;
        check(same <= 1e-5, "%s %s%s (%d layers): latents equal the dequantized dense twin's: rel_l2 %.3g (tol 1e-5)",
              family, dtype, convrot ? "+convrot" : "", nq, same);
        check(werr > 0 && gold <= bound, "%s %s%s: latents vs the unquantized golden rel_l2 %.3g (bound 3x the weights' rel_l2 %.3g)",
              family, dtype, convrot ? "+convrot" : "", gold, werr);
    } else {
        check(0, "%s %s: runs and golden", family, dtype);
    }
    free(lq); free(ld); free(ref);
    cJSON_Delete(cases);
}

int main(void) {
    if (!scratch_make("cqm_test")) return test_summary();
    qd_ctx *ctx = test_ctx_new(0);
    run_model(ctx, "flux-tiny", "transformer", "int8_tensorwise", 1);
    run_model(ctx, "flux-tiny", "transformer", "float8_e4m3fn", 0);
    run_model(ctx, "sd15-tiny", "unet", "int8_tensorwise", 0);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
