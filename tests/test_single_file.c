/* qd_quantize on single-file checkpoints. The checkpoints are written at test time
 * by tests/tools/make_single_file.py from the fixture diffusers folders, with the
 * ORIGINAL key names (LDM layout for SD1.5/SDXL, BFL layout for FLUX, Stability
 * MMDiT layout for the SD3.5 transformer), from the
 * public inverse mapping written independently of qdiff's C code. Checks:
 *  - quantizing the single file (with --config-from the folder) and quantizing the
 *    folder with the same options give the same output folder: every tensor equal
 *    byte for byte (names, dtypes, shapes, bytes) and every other file identical;
 *    also for denoiser-only files with and without the model.diffusion_model. prefix;
 *  - through the single file, sdnq's own stored tensors are reproduced bit for bit
 *    (FLUX int8 quantized-matmul transformer + uint4 g16 T5, SD1.5 CLIP int8), and
 *    the pipelines on those folders meet the goldens within the quantization bounds
 *    test_quantize_models uses;
 *  - without --config-from: the inferred configs agree with the fixture configs on
 *    everything the shapes determine, the report lists the missing tokenizers, and
 *    FLUX's RoPE axes (not inferable for this head size) and SD3 (no inference) make
 *    it ask for --config-from;
 *  - generating straight from the single files (qd_model_open_single_file) meets the
 *    unquantized goldens within the pipeline tolerance;
 *  - bad input: unknown family, truncated file, incomplete fused groups, a tensor with
 *    no diffusers name, a component the file lacks: errors naming the file and the
 *    tensor, nothing left behind. */
#include "testutil.h"
#include "io/file.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_file(const char *family, const char *model, const char *out, const char *opts) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "python3 '%s' %s '%s' '%s' %s", fixture("../tools/make_single_file.py"), family, fixture(model), out,
             opts ? opts : "");
    int rc = system(cmd);
    check(rc == 0, "make_single_file.py %s %s -> %s %s", family, model, out, opts ? opts : "");
    return rc == 0;
}

static void fixture_params(qd_quant_params *p) {
    qd_quant_params_default(p);
    p->default_skips = 0;
    p->min_numel = 0;
    p->min_channels = 16;
}

static qd_status quantize(qd_ctx *ctx, const char *in, const char *out, const qd_quant_params *p, cJSON **report) {
    char *json = NULL;
    qd_status st = qd_quantize(ctx, in, out, p, &json);
    if (st != QD_OK) printf("  qd_quantize(%s): %s\n", in, qd_last_error(ctx));
    if (report) *report = json ? cJSON_Parse(json) : NULL;
    qd_free(json);
    return st;
}

static int ends_with(const char *s, const char *x) {
    size_t n = strlen(s), m = strlen(x);
    return n >= m && !strcmp(s + n - m, x);
}

/* Same tensors (names, dtypes, shapes, bytes). Returns 1 when equal; *what says why not. */
static int same_st(qd_ctx *ctx, const char *a_path, const char *b_path, char *what, size_t n) {
    qd_st_set a, b;
    if (qd_st_open(ctx, a_path, &a) != QD_OK) { snprintf(what, n, "%s", qd_last_error(ctx)); return 0; }
    if (qd_st_open(ctx, b_path, &b) != QD_OK) { snprintf(what, n, "%s", qd_last_error(ctx)); qd_st_close(&a); return 0; }
    int ok = a.n_tensors == b.n_tensors;
    if (!ok) snprintf(what, n, "%lld vs %lld tensors", (long long)a.n_tensors, (long long)b.n_tensors);
    for (int64_t i = 0; ok && i < b.n_tensors; i++) {
        const qd_st_tensor *r = &b.tensors[i], *m = qd_st_find(&a, r->name);
        ok = m && m->dtype == r->dtype && m->ndim == r->ndim && m->nbytes == r->nbytes;
        for (int d = 0; ok && d < r->ndim; d++) ok = m->shape[d] == r->shape[d];
        if (ok) ok = !memcmp(m->data, r->data, r->nbytes);
        if (!ok) snprintf(what, n, "tensor '%s' differs", r->name);
    }
    qd_st_close(&a);
    qd_st_close(&b);
    return ok;
}

/* Walk ref (a folder): every file must be in mine, equal (safetensors: as tensors);
 * and mine must have no file ref lacks. Counts files. */
static void same_tree(qd_ctx *ctx, const char *mine, const char *ref, int64_t *files, int64_t *diffs, char *first, size_t nfirst) {
    DIR *d = opendir(ref);
    if (!d) { (*diffs)++; snprintf(first, nfirst, "%s: cannot list", ref); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char a[2048], b[2048];
        snprintf(a, sizeof a, "%s/%s", mine, e->d_name);
        snprintf(b, sizeof b, "%s/%s", ref, e->d_name);
        if (qd_dir_exists(b)) {
            if (!qd_dir_exists(a)) { (*diffs)++; if (!first[0]) snprintf(first, nfirst, "%s missing", a); continue; }
            same_tree(ctx, a, b, files, diffs, first, nfirst);
            continue;
        }
        (*files)++;
        char why[600] = "";
        int ok;
        if (ends_with(e->d_name, ".safetensors")) ok = same_st(ctx, a, b, why, sizeof why);
        else {
            char *x = NULL, *y = NULL;
            size_t nx = 0, ny = 0;
            ok = qd_read_file(ctx, a, &x, &nx) == QD_OK && qd_read_file(ctx, b, &y, &ny) == QD_OK && nx == ny && !memcmp(x, y, nx);
            if (!ok) snprintf(why, sizeof why, "bytes differ or missing");
            free(x);
            free(y);
        }
        if (!ok) { (*diffs)++; if (!first[0]) snprintf(first, nfirst, "%s: %s", a, why); }
    }
    closedir(d);
    /* nothing extra on our side */
    if ((d = opendir(mine))) {
        while ((e = readdir(d))) {
            char b[2048];
            snprintf(b, sizeof b, "%s/%s", ref, e->d_name);
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && access(b, F_OK) != 0) {
                (*diffs)++;
                if (!first[0]) snprintf(first, nfirst, "%s/%s: not in the reference", mine, e->d_name);
            }
        }
        closedir(d);
    }
}

static void check_same_folder(qd_ctx *ctx, const char *mine, const char *ref, const char *what) {
    int64_t files = 0, diffs = 0;
    char first[1024] = "";
    same_tree(ctx, mine, ref, &files, &diffs, first, sizeof first);
    check(files > 0 && diffs == 0, "%s: %lld files, every tensor and config identical to the folder's output%s%s", what,
          (long long)files, diffs ? "; first difference: " : "", first);
}

/* Latents of one golden case on model_dir (a folder, or a single file with config_from)
 * vs the golden (rel L2; -1 on failure). */
static double golden_dev_sf(qd_ctx *ctx, const char *model_dir, const char *config_from, const char *golden_dir, const char *golden) {
    char path[1024];
    snprintf(path, sizeof path, "%s/cases.json", fixture(golden_dir));
    cJSON *cases;
    if (qd_json_load(ctx, path, &cases) != QD_OK) { check(0, "%s", qd_last_error(ctx)); return -1; }
    const cJSON *c = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cases, "pipelines"))
        if (!strcmp(qd_json_str(it, "golden", ""), golden)) c = it;
    qd_model *m = NULL;
    double r = -1;
    if (c && (config_from ? qd_model_open_single_file(ctx, model_dir, config_from, &m) : qd_model_open(ctx, model_dir, &m)) == QD_OK) {
        qd_gen_params p;
        char *opts = golden_case_params(m, c, &p);
        int64_t shape[4];
        size_t n = qd_latent_shape(m, &p, shape, NULL), nr = 0;
        float *lat = malloc(sizeof(float) * n);
        uint8_t *img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
        snprintf(path, sizeof path, "%s/%s", fixture(golden_dir), golden);
        float *ref = load_f32(path, "latents", NULL, NULL, &nr);
        if (lat && img && ref && nr == n && qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat) == QD_OK) r = rel_l2(lat, ref, n);
        else check(0, "%s: %s", model_dir, qd_last_error(ctx));
        free(lat);
        free(img);
        free(ref);
        free(opts);
        qd_model_free(m);
    } else {
        check(0, "%s: %s", model_dir, c ? qd_last_error(ctx) : "no such golden case");
    }
    cJSON_Delete(cases);
    return r;
}

static double golden_dev(qd_ctx *ctx, const char *model_dir, const char *golden_dir, const char *golden) {
    return golden_dev_sf(ctx, model_dir, NULL, golden_dir, golden);
}

/* generate straight from the single files (qd_model_open_single_file): the goldens
 * within the pipeline tolerance (latents rel L2 1e-3) */
static void generate_from_file(qd_ctx *ctx) {
    double d = golden_dev_sf(ctx, scratch_path("sd1.safetensors"), fixture("models/sd15-tiny"), "goldens/sd15-tiny", "pipe_euler.safetensors");
    check(d >= 0 && d <= 1e-3, "SD1.5 generated from the LDM single file: latents rel_l2 %.3g to the diffusers golden (tol 1e-3)", d);
    d = golden_dev_sf(ctx, scratch_path("sdxl.safetensors"), fixture("models/sdxl-tiny"), "goldens/sdxl-tiny", "pipe_euler.safetensors");
    check(d >= 0 && d <= 1e-3, "SDXL generated from the LDM single file: latents rel_l2 %.3g to the diffusers golden (tol 1e-3)", d);
    d = golden_dev_sf(ctx, scratch_path("flux-bare.safetensors"), fixture("models/flux-tiny"), "goldens/flux-tiny", "pipe_flow_euler.safetensors");
    check(d >= 0 && d <= 1e-3, "FLUX generated from a bare BFL transformer file (the rest from --config-from): latents rel_l2 %.3g (tol 1e-3)", d);
    d = golden_dev_sf(ctx, scratch_path("sd3.safetensors"), fixture("models/sd35-tiny"), "goldens/sd35-tiny", "pipe_flow_euler.safetensors");
    double df = golden_dev(ctx, fixture("models/sd35-tiny"), "goldens/sd35-tiny", "pipe_flow_euler.safetensors");
    check(d >= 0 && d <= 1e-3 && df >= 0 && fabs(d - df) <= 1e-6,
          "SD3.5 generated from the full Stability checkpoint (MMDiT, VAE, CLIP-L/G, T5 from the file): latents rel_l2 %.3g "
          "(tol 1e-3; the folder's %.3g)", d, df);
    d = golden_dev_sf(ctx, scratch_path("sd3-bare.safetensors"), fixture("models/sd35-tiny"), "goldens/sd35-tiny", "pipe_flow_euler.safetensors");
    check(d >= 0 && d <= 1e-3 && df >= 0 && fabs(d - df) <= 1e-6,
          "SD3.5 generated from a bare MMDiT file (the rest from --config-from): latents rel_l2 %.3g (tol 1e-3; the folder's %.3g)", d, df);
    qd_model *m = NULL;
    qd_status st = qd_model_open_single_file(ctx, scratch_path("sd1.safetensors"), NULL, &m);
    check(st != QD_OK && !m && strstr(qd_last_error(ctx), "--config-from"), "generate from a single file without a config folder: %s",
          qd_last_error(ctx));
    st = qd_model_open_single_file(ctx, scratch_path("sd1.safetensors"), fixture("models/sdxl-tiny"), &m);
    check(st != QD_OK && !m && strstr(qd_last_error(ctx), "StableDiffusionXLPipeline") && strstr(qd_last_error(ctx), "SD1.x"),
          "an SD1.5 file with an SDXL config folder is refused: %s", qd_last_error(ctx));
}

/* The single file and the folder quantized with the same options: same folder. */
static void equal_to_folder(qd_ctx *ctx, const char *file, const char *model, const char *tag, const char *components,
                            int qmm) {
    qd_quant_params p;
    fixture_params(&p);
    p.components = components;
    p.use_quantized_matmul = qmm;
    char ref[64], mine[64];
    snprintf(ref, sizeof ref, "ref-%s", tag);
    snprintf(mine, sizeof mine, "sf-%s", tag);
    if (access(scratch_path(ref), F_OK) != 0 && quantize(ctx, fixture(model), scratch_path(ref), &p, NULL) != QD_OK) {
        check(0, "%s: folder quantized", model);
        return;
    }
    p.config_from = fixture(model);
    cJSON *rep = NULL;
    int ok = quantize(ctx, file, scratch_path(mine), &p, &rep) == QD_OK;
    check(ok, "%s (%s): quantized from the single file", tag, components ? components : "denoiser");
    if (!ok) return;
    const cJSON *miss = cJSON_GetObjectItemCaseSensitive(rep, "missing");
    check(cJSON_IsArray(miss) && cJSON_GetArraySize(miss) == 0 && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(rep, "single_file_family")),
          "%s: the report names the family (%s) and nothing missing", tag, qd_json_str(rep, "single_file_family", "?"));
    cJSON_Delete(rep);
    check_same_folder(ctx, scratch_path(mine), scratch_path(ref), tag);
}

/* SD3.5-medium's dual attention (x_block.attn2): a folder with one dual block made from
 * sd35-tiny (make_single_file.py make-dual), its Stability-named file from the same
 * independent inverse map: the quantized file equals the quantized folder byte for byte,
 * and generating from the file gives the folder's latents, which the second attention
 * moves away from the plain sd35-tiny golden (so attn2 is really read). */
static void dual_attention(qd_ctx *ctx) {
    char dir[600], file[600], cmd[4096];
    snprintf(dir, sizeof dir, "%s", scratch_path("sd35-dual"));
    snprintf(file, sizeof file, "%s", scratch_path("sd35-dual.safetensors"));
    snprintf(cmd, sizeof cmd, "python3 '%s' make-dual '%s' '%s' 0 && python3 '%s' sd3 '%s' '%s' --denoiser-only",
             fixture("../tools/make_single_file.py"), fixture("models/sd35-tiny"), dir, fixture("../tools/make_single_file.py"),
             dir, file);
    int rc = system(cmd);
    check(rc == 0, "make_single_file.py make-dual + sd3: a dual-attention SD3.5 folder and its Stability file");
    if (rc != 0) return;
    qd_quant_params p;
    fixture_params(&p);
    int ok = quantize(ctx, dir, scratch_path("ref-dual"), &p, NULL) == QD_OK;
    p.config_from = dir;
    ok = ok && quantize(ctx, file, scratch_path("sf-dual"), &p, NULL) == QD_OK;
    check(ok, "dual-attention SD3.5: folder and file quantized");
    if (ok) check_same_folder(ctx, scratch_path("sf-dual"), scratch_path("ref-dual"), "sd3-dual");
    double d = golden_dev_sf(ctx, file, dir, "goldens/sd35-tiny", "pipe_flow_euler.safetensors");
    double df = golden_dev(ctx, dir, "goldens/sd35-tiny", "pipe_flow_euler.safetensors");
    check(d >= 0 && df > 1e-2 && fabs(d - df) <= 1e-9,
          "dual-attention SD3.5 generated from its file: the folder's latents (rel_l2 to the plain golden %.3g vs the folder's %.3g; "
          "attn2 moves it > 1e-2)", d, df);
}

static void families(qd_ctx *ctx) {
    /* own copies: scratch_path's buffers rotate */
    char sd1[1024], sd1u[1024], xl[1024], fl[1024], flb[1024], s3[1024], s3b[1024];
    snprintf(sd1, sizeof sd1, "%s", scratch_path("sd1.safetensors"));
    snprintf(sd1u, sizeof sd1u, "%s", scratch_path("sd1-unet.safetensors"));
    snprintf(xl, sizeof xl, "%s", scratch_path("sdxl.safetensors"));
    snprintf(fl, sizeof fl, "%s", scratch_path("flux.safetensors"));
    snprintf(flb, sizeof flb, "%s", scratch_path("flux-bare.safetensors"));
    if (make_file("sd1", "models/sd15-tiny", sd1, "--extra")) {
        equal_to_folder(ctx, sd1, "models/sd15-tiny", "sd1-unet", NULL, 0);
        equal_to_folder(ctx, sd1, "models/sd15-tiny", "sd1-all", "unet,vae,text_encoder", 0);
    }
    if (make_file("sd1", "models/sd15-tiny", sd1u, "--denoiser-only --no-prefix"))
        equal_to_folder(ctx, sd1u, "models/sd15-tiny", "sd1-unet-bare", "unet", 0);
    if (make_file("sdxl", "models/sdxl-tiny", xl, "--extra")) {
        equal_to_folder(ctx, xl, "models/sdxl-tiny", "sdxl", "unet,text_encoder,text_encoder_2,vae", 0);
    }
    if (make_file("flux", "models/flux-tiny", fl, NULL)) equal_to_folder(ctx, fl, "models/flux-tiny", "flux", "transformer,text_encoder_2", 1);
    if (make_file("flux", "models/flux-tiny", flb, "--denoiser-only --no-prefix"))
        equal_to_folder(ctx, flb, "models/flux-tiny", "flux-bare", NULL, 1);
    /* SD3.5: Stability MMDiT names, with and without model.diffusion_model. */
    snprintf(s3, sizeof s3, "%s", scratch_path("sd3.safetensors"));
    snprintf(s3b, sizeof s3b, "%s", scratch_path("sd3-bare.safetensors"));
    if (make_file("sd3", "models/sd35-tiny", s3, NULL)) {
        equal_to_folder(ctx, s3, "models/sd35-tiny", "sd3", NULL, 0);
        equal_to_folder(ctx, s3, "models/sd35-tiny", "sd3-all", "transformer,vae,text_encoder,text_encoder_2,text_encoder_3", 0);
    }
    if (make_file("sd3", "models/sd35-tiny", s3b, "--denoiser-only --no-prefix"))
        equal_to_folder(ctx, s3b, "models/sd35-tiny", "sd3-bare", NULL, 1);
}

/* Through the single file, sdnq's stored tensors bit for bit and the goldens. */
static void against_sdnq(qd_ctx *ctx) {
    char why[600];
    qd_quant_params p;
    fixture_params(&p);
    p.use_quantized_matmul = 1;
    p.config_from = fixture("models/flux-tiny");
    int ok = quantize(ctx, scratch_path("flux.safetensors"), scratch_path("fq-a"), &p, NULL) == QD_OK;
    fixture_params(&p);
    p.components = "text_encoder_2";
    p.weights_dtype = "uint4";
    p.group_size = 16;
    ok = ok && quantize(ctx, scratch_path("fq-a"), scratch_path("fq"), &p, NULL) == QD_OK;
    check(ok, "FLUX from the single file: transformer int8 (quantized matmul), then T5 uint4 g16");
    if (ok) {
        ok = same_st(ctx, scratch_path("fq/transformer/diffusion_pytorch_model.safetensors"),
                     fixture("models/flux-tiny-sdnq-int8-qmm/transformer/diffusion_pytorch_model.safetensors"), why, sizeof why);
        check(ok, "FLUX transformer from the BFL single file: every tensor sdnq's, byte for byte%s%s", ok ? "" : ": ", ok ? "" : why);
        qd_set_matmul(ctx, QD_MATMUL_EXACT);
        double d = golden_dev(ctx, scratch_path("fq"), "goldens/flux-tiny-sdnq-int8-qmm", "pipe_default.safetensors");
        check(d >= 0 && d <= 1e-3, "FLUX quantized from the single file reproduces the diffusers+sdnq golden: latents rel_l2 %.3g (tol 1e-3)", d);
        double du = golden_dev(ctx, scratch_path("fq"), "goldens/flux-tiny", "pipe_flow_euler.safetensors");
        double su = golden_dev(ctx, fixture("models/flux-tiny-sdnq-int8-qmm"), "goldens/flux-tiny", "pipe_flow_euler.safetensors");
        check(du >= 0 && su >= 0 && du <= su + 1e-3,
              "FLUX from the single file vs the unquantized golden: latents rel_l2 %.3g (bound: sdnq's folder %.3g + 1e-3)", du, su);
        qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    }
    fixture_params(&p);
    p.components = "text_encoder";
    p.config_from = fixture("models/sd15-tiny");
    ok = quantize(ctx, scratch_path("sd1.safetensors"), scratch_path("sq"), &p, NULL) == QD_OK;
    if (ok) {
        ok = same_st(ctx, scratch_path("sq/text_encoder/model.safetensors"),
                     fixture("models/sd15-tiny-sdnq-uint4-svd/text_encoder/model.safetensors"), why, sizeof why);
        check(ok, "SD1.5 CLIP int8 from the LDM single file: every tensor sdnq's, byte for byte%s%s", ok ? "" : ": ", ok ? "" : why);
    } else {
        check(0, "SD1.5 CLIP from the single file");
    }
    /* the SD1.5 UNet int8 from the single file runs within the bound test_quantize_models
     * uses for quantized variants: latents rel_l2 to the dense run <= 6 x the weights' total
     * relative error */
    fixture_params(&p);
    p.config_from = fixture("models/sd15-tiny");
    cJSON *rep = NULL;
    ok = quantize(ctx, scratch_path("sd1.safetensors"), scratch_path("su"), &p, &rep) == QD_OK;
    double we = rep ? qd_json_num(cJSON_GetObjectItemCaseSensitive(rep, "totals"), "rel_error", -1) : -1;
    cJSON_Delete(rep);
    if (ok) {
        qd_set_matmul(ctx, QD_MATMUL_EXACT);
        double d = golden_dev(ctx, scratch_path("su"), "goldens/sd15-tiny", "pipe_euler.safetensors");
        double d0 = golden_dev(ctx, fixture("models/sd15-tiny"), "goldens/sd15-tiny", "pipe_euler.safetensors");
        check(d >= 0 && d0 >= 0 && d0 <= 1e-3 && we > 0 && d <= 6 * we,
              "SD1.5 UNet int8 from the single file: latents rel_l2 %.3g to the golden (dense folder %.3g) <= 6 x the weight error %.4f",
              d, d0, we);
        qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    } else {
        check(0, "SD1.5 UNet from the single file");
    }
}

/* Keys the shapes determine: equal to the fixture's config. */
static void same_keys(qd_ctx *ctx, const char *mine, const char *ref, const char *const *keys) {
    cJSON *a = NULL, *b = NULL;
    if (qd_json_load(ctx, mine, &a) != QD_OK || qd_json_load(ctx, ref, &b) != QD_OK) {
        check(0, "%s", qd_last_error(ctx));
        cJSON_Delete(a);
        return;
    }
    const char *bad = NULL;
    for (int i = 0; keys[i]; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(a, keys[i]), *y = cJSON_GetObjectItemCaseSensitive(b, keys[i]);
        int eq = (cJSON_IsNull(x) || !x) && (cJSON_IsNull(y) || !y);   /* absent = null: diffusers' default */
        if (!eq) eq = x && y && cJSON_Compare(x, y, 1);
        /* an int and a list of that int repeated are the same config */
        if (!eq && x && cJSON_IsArray(y) && cJSON_IsNumber(x)) {
            eq = 1;
            const cJSON *e;
            cJSON_ArrayForEach(e, y) eq &= cJSON_IsNumber(e) && e->valuedouble == x->valuedouble;
        }
        if (!eq && !bad) bad = keys[i];
    }
    check(!bad, "%s: inferred %s%s", mine, bad ? "wrongly: " : "keys equal the fixture config's", bad ? bad : "");
    cJSON_Delete(a);
    cJSON_Delete(b);
}

static void inferred(qd_ctx *ctx) {
    qd_quant_params p;
    fixture_params(&p);
    p.components = "unet,text_encoder_2";
    cJSON *rep = NULL;
    int ok = quantize(ctx, scratch_path("sdxl.safetensors"), scratch_path("xl-noconf"), &p, &rep) == QD_OK;
    check(ok, "SDXL single file without --config-from: written");
    if (!ok) return;
    const cJSON *miss = cJSON_GetObjectItemCaseSensitive(rep, "missing");
    char *ms = miss ? cJSON_PrintUnformatted(miss) : NULL;
    check(ms && !strcmp(ms, "[\"tokenizer\",\"tokenizer_2\"]"), "the report lists what the folder lacks: %s", ms ? ms : "(none)");
    free(ms);
    cJSON_Delete(rep);
    static const char *unet[] = {"in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                                 "up_block_types", "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection",
                                 "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim", NULL};
    static const char *vae[] = {"in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                                "down_block_types", "up_block_types", NULL};
    static const char *clip[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings", "vocab_size",
                                 "projection_dim", NULL};
    static const char *clip1[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings", "vocab_size", NULL};
    same_keys(ctx, scratch_path("xl-noconf/unet/config.json"), fixture("models/sdxl-tiny/unet/config.json"), unet);
    same_keys(ctx, scratch_path("xl-noconf/vae/config.json"), fixture("models/sdxl-tiny/vae/config.json"), vae);
    same_keys(ctx, scratch_path("xl-noconf/text_encoder_2/config.json"), fixture("models/sdxl-tiny/text_encoder_2/config.json"), clip);
    same_keys(ctx, scratch_path("xl-noconf/text_encoder/config.json"), fixture("models/sdxl-tiny/text_encoder/config.json"), clip1);
    static const char *cls[] = {"_class_name", NULL};
    same_keys(ctx, scratch_path("xl-noconf/scheduler/scheduler_config.json"), fixture("models/sdxl-tiny/scheduler/scheduler_config.json"), cls);
    same_keys(ctx, scratch_path("xl-noconf/model_index.json"), fixture("models/sdxl-tiny/model_index.json"), cls);
    /* the quantized tensors do not depend on where the config came from */
    char why[600];
    ok = same_st(ctx, scratch_path("xl-noconf/unet/diffusion_pytorch_model.safetensors"),
                 scratch_path("sf-sdxl/unet/diffusion_pytorch_model.safetensors"), why, sizeof why);
    check(ok, "SDXL UNet without --config-from: the same tensors as with it%s%s", ok ? "" : ": ", ok ? "" : why);
    /* SD1.x: UNet, VAE and CLIP configs */
    fixture_params(&p);
    ok = quantize(ctx, scratch_path("sd1.safetensors"), scratch_path("sd1-noconf"), &p, NULL) == QD_OK;
    check(ok, "SD1.5 single file without --config-from: written");
    if (ok) {
        same_keys(ctx, scratch_path("sd1-noconf/unet/config.json"), fixture("models/sd15-tiny/unet/config.json"), unet);
        same_keys(ctx, scratch_path("sd1-noconf/vae/config.json"), fixture("models/sd15-tiny/vae/config.json"), vae);
        same_keys(ctx, scratch_path("sd1-noconf/text_encoder/config.json"), fixture("models/sd15-tiny/text_encoder/config.json"), clip1);
        same_keys(ctx, scratch_path("sd1-noconf/scheduler/scheduler_config.json"), fixture("models/sd15-tiny/scheduler/scheduler_config.json"), cls);
    }
    /* FLUX: this head size has no known RoPE axes: ask for --config-from */
    fixture_params(&p);
    qd_status st = qd_quantize(ctx, scratch_path("flux.safetensors"), scratch_path("fl-noconf"), &p, NULL);
    check(st != QD_OK && strstr(qd_last_error(ctx), "--config-from") && strstr(qd_last_error(ctx), "flux.safetensors") &&
          access(scratch_path("fl-noconf"), F_OK) != 0,
          "FLUX without --config-from (head size 16): %s", qd_last_error(ctx));
}

/* No folder or temporary folder at out, or beside it. */
static int nothing_left(const char *out) {
    if (access(out, F_OK) == 0) return 0;
    DIR *d = opendir(scratch_dir());
    int clean = 1;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp-")) clean = 0;
    if (d) closedir(d);
    return clean;
}

static void expect_fail(qd_ctx *ctx, const char *file, const char *config_from, const char *components, const char *needle1,
                        const char *needle2, const char *what) {
    qd_quant_params p;
    fixture_params(&p);
    p.config_from = config_from;
    p.components = components;
    const char *out = scratch_path("bad-out");
    qd_status st = qd_quantize(ctx, file, out, &p, NULL);
    const char *e = qd_last_error(ctx);
    check(st != QD_OK && strstr(e, needle1) && (!needle2 || strstr(e, needle2)) && nothing_left(out), "%s: %s", what, e);
}

static void bad_input(qd_ctx *ctx) {
    /* a safetensors file of no known family (a diffusers VAE file) */
    expect_fail(ctx, fixture("models/sd15-tiny/vae/diffusion_pytorch_model.safetensors"), NULL, NULL, "not a checkpoint of a family",
                "diffusion_pytorch_model.safetensors", "unknown family");
    /* truncated: the header promises more data than the file has */
    const char *tr = scratch_path("trunc.safetensors");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "head -c 3000000 '%s' > '%s'", scratch_path("sd1.safetensors"), tr);
    check(system(cmd) == 0, "truncated copy written");
    expect_fail(ctx, tr, fixture("models/sd15-tiny"), NULL, "trunc.safetensors", NULL, "truncated file");
    /* incomplete fused groups */
    const char *f1 = scratch_path("flux-noweight.safetensors");
    if (make_file("flux", "models/flux-tiny", f1, "--drop model.diffusion_model.single_blocks.1.linear1.weight"))
        expect_fail(ctx, f1, fixture("models/flux-tiny"), NULL, "single_blocks.1.linear1.weight", "flux-noweight.safetensors",
                    "FLUX linear1.bias without its weight");
    const char *f2 = scratch_path("flux-nobias.safetensors");
    if (make_file("flux", "models/flux-tiny", f2, "--drop model.diffusion_model.double_blocks.1.txt_attn.qkv.bias"))
        expect_fail(ctx, f2, fixture("models/flux-tiny"), NULL, "double_blocks.1.txt_attn.qkv.bias", "is missing",
                    "FLUX double block without its txt qkv bias");
    const char *f5 = scratch_path("sd3-noqkv.safetensors");
    if (make_file("sd3", "models/sd35-tiny", f5, "--drop model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight"))
        expect_fail(ctx, f5, fixture("models/sd35-tiny"), NULL, "joint_blocks.1.context_block.attn.qkv.weight", "is missing",
                    "SD3 context qkv bias without its weight");
    qd_quant_params p;
    fixture_params(&p);
    qd_status st = qd_quantize(ctx, scratch_path("sd3.safetensors"), scratch_path("s3-noconf"), &p, NULL);
    check(st != QD_OK && strstr(qd_last_error(ctx), "--config-from") && strstr(qd_last_error(ctx), "sd3.safetensors") &&
              nothing_left(scratch_path("s3-noconf")),
          "SD3 without --config-from: %s", qd_last_error(ctx));
    expect_fail(ctx, scratch_path("sd3.safetensors"), fixture("models/flux-tiny"), NULL, "is a FluxPipeline folder", "SD3",
                "SD3 file with a FLUX --config-from");
    const char *f3 = scratch_path("xl-noinproj.safetensors");
    if (make_file("sdxl", "models/sdxl-tiny", f3, "--drop conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight"))
        expect_fail(ctx, f3, fixture("models/sdxl-tiny"), NULL, "resblocks.2.attn.in_proj_weight", "xl-noinproj.safetensors",
                    "OpenCLIP in_proj_bias without its weight");
    /* a tensor with no diffusers name */
    const char *f4 = scratch_path("sd1-unknown.safetensors");
    if (make_file("sd1", "models/sd15-tiny", f4, "--rename model.diffusion_model.out.2.bias=model.diffusion_model.out.7.bias"))
        expect_fail(ctx, f4, fixture("models/sd15-tiny"), NULL, "model.diffusion_model.out.7.bias", "no diffusers name",
                    "unmapped key");
    /* a component the file lacks; a --config-from of another family */
    expect_fail(ctx, scratch_path("sd1-unet.safetensors"), fixture("models/sd15-tiny"), "unet,vae", "no component 'vae'",
                "sd1-unet.safetensors", "component not in a denoiser-only file");
    expect_fail(ctx, scratch_path("sd1.safetensors"), fixture("models/flux-tiny"), NULL, "is a FluxPipeline folder", "SD1.x",
                "--config-from of another family");
}

int main(void) {
    if (!scratch_make("single_file")) return test_summary();
    qd_ctx *ctx = test_ctx_new(0);
    qd_set_log(ctx, NULL, NULL);
    families(ctx);
    against_sdnq(ctx);
    inferred(ctx);
    generate_from_file(ctx);
    dual_attention(ctx);
    bad_input(ctx);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
