/* qd_inspect on the fixture folders, checked against what the files say on their
 * own: this test reads the safetensors headers itself (8-byte length + JSON, no
 * library reader) and the quantization_config.json files, and counts
 *   - quantized layers = tensors ending in ".scale", SVD layers = ".svd_up" (rank =
 *     its second dim), zero points = ".zero_point";
 *   - per stored type: the config's weights_dtype with the grouping the scale shape
 *     shows ([out, 1] / [1, out] row-wise, [out, G, 1] groups of in / G, where in is
 *     the dense model's weight width);
 *   - quantized-matmul layers = scales stored [1, out] (int8 row-wise layers are
 *     transposed exactly when the config's quantized matmul applies);
 *   - dense layers = ".weight" tensors of >= 2 dims without a scale, per dtype;
 *   - skipped = modules_to_not_convert entries naming a tensor in the file;
 *   - parameters = the sum of numel of the same component of the dense model the
 *     quantized one was made from (models/sd15-tiny, models/flux-tiny). */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- independent file readers ---- */

static cJSON *read_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cJSON *j = NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) { buf[n] = 0; j = cJSON_Parse(buf); }
    free(buf);
    fclose(f);
    return j;
}

/* The JSON header of a .safetensors file, "__metadata__" removed. */
static cJSON *st_header(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char lb[8];
    cJSON *j = NULL;
    if (fread(lb, 1, 8, f) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | lb[i];
        char *buf = n < (1u << 30) ? malloc(n + 1) : NULL;
        if (buf && fread(buf, 1, n, f) == n) { buf[n] = 0; j = cJSON_Parse(buf); }
        free(buf);
    }
    fclose(f);
    if (j) cJSON_DeleteItemFromObjectCaseSensitive(j, "__metadata__");
    return j;
}

static int64_t file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int64_t numel(const cJSON *t) {
    int64_t n = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(t, "shape")) n *= (int64_t)d->valuedouble;
    return n;
}

static int ndim(const cJSON *t) { return cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(t, "shape")); }
static int64_t dim(const cJSON *t, int i) {
    return (int64_t)cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "shape"), i)->valuedouble;
}

static int64_t sum_numel(const cJSON *h) {
    int64_t n = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, h) n += numel(t);
    return n;
}

static int count_suffix(const cJSON *h, const char *suffix) {
    int n = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, h) n += ends_with(t->string, suffix);
    return n;
}

static const cJSON *sibling(const cJSON *h, const char *name, const char *from, const char *to) {
    char buf[600];
    snprintf(buf, sizeof buf, "%.*s%s", (int)(strlen(name) - strlen(from)), name, to);
    return cJSON_GetObjectItemCaseSensitive(h, buf);
}

/* ---- the inspect document ---- */

static double jnum(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : -1;
}

static const cJSON *find_component(const cJSON *doc, const char *name) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "components")) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(c, "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return c;
    }
    return NULL;
}

static cJSON *inspect(qd_ctx *ctx, const char *dir) {
    char *text = NULL;
    if (qd_inspect(ctx, dir, &text) != QD_OK) {
        check(0, "qd_inspect %s: %s", dir, qd_last_error(ctx));
        return NULL;
    }
    cJSON *doc = cJSON_Parse(text);
    check(doc != NULL, "qd_inspect %s: output is JSON", dir);
    qd_free(text);
    return doc;
}

/* label -> layers, as the test expects them */
typedef struct { char label[64]; int n; } want_row;
typedef struct { want_row r[32]; int n; } want;

static void want_add(want *w, const char *label) {
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->r[i].label, label)) { w->r[i].n++; return; }
    if (w->n < 32) { snprintf(w->r[w->n].label, sizeof w->r[w->n].label, "%s", label); w->r[w->n++].n = 1; }
}

/* One component with weights: `qfile` its weights, `qcfg` its quantization_config.json
 * (NULL when dense), `dfile` the dense model's weights it was made from. */
static void check_component(const cJSON *doc, const char *comp, const char *qfile, const char *qcfg, const char *dfile) {
    const cJSON *c = find_component(doc, comp);
    check(c != NULL, "%s: listed", comp);
    if (!c) return;
    cJSON *h = st_header(qfile), *d = st_header(dfile), *cfg = qcfg ? read_json(qcfg) : NULL;
    check(h && d && (!qcfg || cfg), "%s: fixture files readable", comp);
    if (!h || !d || (qcfg && !cfg)) { cJSON_Delete(h); cJSON_Delete(d); cJSON_Delete(cfg); return; }
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(c, "layers");

    check(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "weights")), "%s: has weights", comp);
    int64_t want_params = sum_numel(d);
    check(jnum(c, "parameters") == (double)want_params, "%s: parameters %.0f == dense model's numel %lld", comp,
          jnum(c, "parameters"), (long long)want_params);
    check(jnum(c, "disk_bytes") == (double)file_size(qfile), "%s: disk bytes %.0f == file size %lld", comp,
          jnum(c, "disk_bytes"), (long long)file_size(qfile));
    check(jnum(c, "tensors") == cJSON_GetArraySize(h), "%s: %d tensors", comp, cJSON_GetArraySize(h));
    check(jnum(c, "resident_bytes") == jnum(c, "mapped_bytes") + jnum(c, "fp32_copy_bytes") &&
          jnum(c, "resident_bytes") > 0.5 * jnum(c, "disk_bytes") && jnum(c, "resident_bytes") < 2 * jnum(c, "disk_bytes"),
          "%s: resident %.0f = mapped + copies, near the file size", comp, jnum(c, "resident_bytes"));

    /* what the files say */
    int n_scale = count_suffix(h, ".scale"), n_svd = count_suffix(h, ".svd_up"), n_zp = count_suffix(h, ".zero_point");
    int n_t = 0, n_rank_ok = 0, skipped = 0;
    const char *wd = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "weights_dtype")->valuestring : "";
    int cfg_rank = cfg ? (int)jnum(cfg, "svd_rank") : 0;
    want w = {0};
    const cJSON *t;
    cJSON_ArrayForEach(t, h) {
        const char *name = t->string;
        char label[64];
        if (ends_with(name, ".scale")) {
            const cJSON *dw = sibling(d, name, ".scale", ".weight");
            if (ndim(t) == 2 && (dim(t, 1) == 1 || dim(t, 0) == 1)) snprintf(label, sizeof label, "%s row-wise", wd);
            else if (ndim(t) == 3 && dw) snprintf(label, sizeof label, "%s g%lld", wd, (long long)(dim(dw, 1) / dim(t, 1)));
            else snprintf(label, sizeof label, "unexpected scale shape");
            want_add(&w, label);
            if (ndim(t) == 2 && dim(t, 0) == 1 && dim(t, 1) > 1) n_t++;
        } else if (ends_with(name, ".svd_up")) {
            n_rank_ok += dim(t, 1) == cfg_rank;
        } else if (ends_with(name, ".weight") && ndim(t) >= 2 && !sibling(h, name, ".weight", ".scale")) {
            char dt[16];
            snprintf(dt, sizeof dt, "%s", cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring);
            for (char *p = dt; *p; p++) *p = (char)tolower((unsigned char)*p);
            snprintf(label, sizeof label, "%s dense", dt);
            want_add(&w, label);
        }
    }
    if (cfg) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(cfg, "modules_to_not_convert"))
            skipped += cJSON_GetObjectItemCaseSensitive(h, e->valuestring) != NULL;
    }

    check(jnum(layers, "quantized") == n_scale, "%s: quantized layers %.0f == %d '.scale' tensors", comp,
          jnum(layers, "quantized"), n_scale);
    check(jnum(layers, "svd") == n_svd, "%s: SVD layers %.0f == %d '.svd_up' tensors", comp, jnum(layers, "svd"), n_svd);
    check(jnum(layers, "zero_point") == n_zp, "%s: zero-point layers %.0f == %d '.zero_point' tensors", comp,
          jnum(layers, "zero_point"), n_zp);
    check(jnum(layers, "skipped") == skipped, "%s: skipped %.0f == %d modules_to_not_convert entries in the file", comp,
          jnum(layers, "skipped"), skipped);
    int use_qmm = cfg && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_quantized_matmul"));
    check(jnum(layers, "quantized_matmul") == (use_qmm ? n_t : 0), "%s: quantized-matmul layers %.0f == %d ([1, out] scales%s)",
          comp, jnum(layers, "quantized_matmul"), use_qmm ? n_t : 0, use_qmm ? "" : "; the config does not ask for it");
    int had = cfg && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_hadamard"));
    int cb = cfg && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_codebook"));
    check(jnum(layers, "hadamard") == (had ? n_scale : 0) && jnum(layers, "codebook") == (cb ? n_scale : 0),
          "%s: Hadamard %.0f, codebook %.0f as the config says", comp, jnum(layers, "hadamard"), jnum(layers, "codebook"));

    /* SVD ranks: one rank, the config's, on every SVD layer */
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(c, "svd_ranks");
    if (n_svd) {
        const cJSON *r0 = cJSON_GetArrayItem(ranks, 0);
        check(cJSON_GetArraySize(ranks) == 1 && jnum(r0, "rank") == cfg_rank && jnum(r0, "layers") == n_svd &&
              n_rank_ok == n_svd, "%s: SVD rank %d on all %d layers", comp, cfg_rank, n_svd);
    } else {
        check(cJSON_GetArraySize(ranks) <= 0, "%s: no SVD ranks", comp);
    }

    /* layers per stored type: the same labels with the same counts, nothing else */
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(c, "layer_types");
    check(cJSON_GetArraySize(types) == w.n, "%s: %d layer types (got %d)", comp, w.n, cJSON_GetArraySize(types));
    for (int i = 0; i < w.n; i++) {
        double got = -1;
        const cJSON *r;
        cJSON_ArrayForEach(r, types) {
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(r, "label");
            if (cJSON_IsString(l) && !strcmp(l->valuestring, w.r[i].label)) got = jnum(r, "layers");
        }
        check(got == w.r[i].n, "%s: \"%s: %d layers\" (got %.0f)", comp, w.r[i].label, w.r[i].n, got);
    }
    cJSON_Delete(h);
    cJSON_Delete(d);
    cJSON_Delete(cfg);
}

static void check_no_weights(const cJSON *doc, const char *comp) {
    const cJSON *c = find_component(doc, comp);
    check(c && cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "weights")), "%s: listed, no weights", comp);
}

/* totals are the components' sums */
static void check_totals(const cJSON *doc) {
    static const char *keys[] = {"parameters", "disk_bytes", "resident_bytes", "tensors"};
    const cJSON *tot = cJSON_GetObjectItemCaseSensitive(doc, "totals");
    for (int k = 0; k < 4; k++) {
        double sum = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "components"))
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "weights"))) sum += jnum(c, keys[k]);
        check(jnum(tot, keys[k]) == sum, "totals: %s %.0f == sum over components", keys[k], jnum(tot, keys[k]));
    }
}

static void test_dense(qd_ctx *ctx) {
    cJSON *doc = inspect(ctx, fixture("models/sd15-tiny"));
    if (!doc) return;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(doc, "pipeline");
    check(cJSON_IsString(p) && !strcmp(p->valuestring, "StableDiffusionPipeline"), "sd15-tiny: pipeline class");
    static const char *comps[][2] = {{"unet", "diffusion_pytorch_model"}, {"text_encoder", "model"}, {"vae", "diffusion_pytorch_model"}};
    for (int i = 0; i < 3; i++) {
        char f[256];
        snprintf(f, sizeof f, "models/sd15-tiny/%s/%s.safetensors", comps[i][0], comps[i][1]);
        check_component(doc, comps[i][0], fixture(f), NULL, fixture(f));
        const cJSON *c = find_component(doc, comps[i][0]);
        check(c && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "quantization")), "%s: not quantized", comps[i][0]);
    }
    const cJSON *u = find_component(doc, "unet");
    const cJSON *cls = u ? cJSON_GetObjectItemCaseSensitive(u, "class") : NULL;
    check(cJSON_IsString(cls) && !strcmp(cls->valuestring, "UNet2DConditionModel"), "unet: class from model_index.json");
    check_no_weights(doc, "tokenizer");
    check_no_weights(doc, "scheduler");
    check_totals(doc);
    cJSON_Delete(doc);
}

static void test_sd15_sdnq(qd_ctx *ctx) {
    cJSON *doc = inspect(ctx, fixture("models/sd15-tiny-sdnq-uint4-svd"));
    if (!doc) return;
    check_component(doc, "unet", fixture("models/sd15-tiny-sdnq-uint4-svd/unet/diffusion_pytorch_model.safetensors"),
                    fixture("models/sd15-tiny-sdnq-uint4-svd/unet/quantization_config.json"),
                    fixture("models/sd15-tiny/unet/diffusion_pytorch_model.safetensors"));
    check_component(doc, "text_encoder", fixture("models/sd15-tiny-sdnq-uint4-svd/text_encoder/model.safetensors"),
                    fixture("models/sd15-tiny-sdnq-uint4-svd/text_encoder/quantization_config.json"),
                    fixture("models/sd15-tiny/text_encoder/model.safetensors"));
    /* the SVD factors are F16 on disk: the loader keeps fp32 copies, so resident > what stays mapped */
    const cJSON *u = find_component(doc, "unet");
    check(u && jnum(u, "fp32_copy_bytes") > 0 && jnum(u, "mapped_bytes") < jnum(u, "disk_bytes"),
          "unet: F16 SVD factors become fp32 copies");
    const cJSON *q = u ? cJSON_GetObjectItemCaseSensitive(u, "quantization") : NULL;
    const cJSON *v = q ? cJSON_GetObjectItemCaseSensitive(q, "version") : NULL;
    check(cJSON_IsString(v) && !strcmp(v->valuestring, "0.2.5"), "unet: sdnq_version");
    check_totals(doc);
    cJSON_Delete(doc);

    /* the unet folder on its own */
    doc = inspect(ctx, fixture("models/sd15-tiny-sdnq-uint4-svd/unet/"));
    if (!doc) return;
    check(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "components")) == 1, "component folder: one component");
    check_component(doc, "unet", fixture("models/sd15-tiny-sdnq-uint4-svd/unet/diffusion_pytorch_model.safetensors"),
                    fixture("models/sd15-tiny-sdnq-uint4-svd/unet/quantization_config.json"),
                    fixture("models/sd15-tiny/unet/diffusion_pytorch_model.safetensors"));
    u = find_component(doc, "unet");
    const cJSON *cls = u ? cJSON_GetObjectItemCaseSensitive(u, "class") : NULL;
    check(cJSON_IsString(cls) && !strcmp(cls->valuestring, "UNet2DConditionModel"), "component folder: class from config.json");
    cJSON_Delete(doc);
}

static void test_flux_sdnq(qd_ctx *ctx) {
    cJSON *doc = inspect(ctx, fixture("models/flux-tiny-sdnq-int8-qmm"));
    if (!doc) return;
    check_component(doc, "transformer", fixture("models/flux-tiny-sdnq-int8-qmm/transformer/diffusion_pytorch_model.safetensors"),
                    fixture("models/flux-tiny-sdnq-int8-qmm/transformer/quantization_config.json"),
                    fixture("models/flux-tiny/transformer/diffusion_pytorch_model.safetensors"));
    check_component(doc, "text_encoder_2", fixture("models/flux-tiny-sdnq-int8-qmm/text_encoder_2/model.safetensors"),
                    fixture("models/flux-tiny-sdnq-int8-qmm/text_encoder_2/quantization_config.json"),
                    fixture("models/flux-tiny/text_encoder_2/model.safetensors"));
    check_component(doc, "text_encoder", fixture("models/flux-tiny-sdnq-int8-qmm/text_encoder/model.safetensors"), NULL,
                    fixture("models/flux-tiny/text_encoder/model.safetensors"));
    check_no_weights(doc, "tokenizer_2");
    /* int8 qmm layers are stored [in, out] with an F32 [1, out] scale: nothing to copy but 1-D tensors */
    const cJSON *t = find_component(doc, "transformer");
    const cJSON *layers = t ? cJSON_GetObjectItemCaseSensitive(t, "layers") : NULL;
    check(layers && jnum(layers, "transposed") == jnum(layers, "quantized_matmul") && jnum(layers, "quantized_matmul") > 0,
          "transformer: the quantized-matmul layers are the transposed ones");
    check_totals(doc);
    cJSON_Delete(doc);
}

/* Every layer case of fixtures/sdnq/layers (each stored type, grouping, SVD, Hadamard,
 * codebook, quantized-matmul orientation) as a one-layer component folder: config.json
 * with the case's quantization_config beside its safetensors file. */
static void test_layer_cases(qd_ctx *ctx) {
    cJSON *index = read_json(fixture("sdnq/layers/index.json"));
    check(index != NULL, "sdnq/layers/index.json");
    if (!index) return;
    const cJSON *cs;
    int n = 0;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItemCaseSensitive(index, "cases")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(cs, "case")->valuestring;
        char path[512], dir[] = "/tmp/qd_test_inspect_XXXXXX", cfg_path[600], st_path[600];
        snprintf(path, sizeof path, "sdnq/layers/%s.json", name);
        cJSON *c = read_json(fixture(path));
        snprintf(path, sizeof path, "sdnq/layers/%s.safetensors", name);
        cJSON *h = st_header(fixture(path));
        if (!c || !h || !mkdtemp(dir)) { check(0, "%s: fixture", name); cJSON_Delete(c); cJSON_Delete(h); continue; }
        snprintf(st_path, sizeof st_path, "%s/diffusion_pytorch_model.safetensors", dir);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
        char real[4096];
        int ok = realpath(fixture(path), real) && symlink(real, st_path) == 0;
        cJSON *cfg = cJSON_CreateObject();
        cJSON_AddStringToObject(cfg, "_class_name", "Linear");
        const cJSON *qc = cJSON_GetObjectItemCaseSensitive(c, "quantization_config");
        cJSON_AddItemToObject(cfg, "quantization_config", cJSON_Duplicate(qc, 1));
        char *text = cJSON_Print(cfg);
        FILE *f = fopen(cfg_path, "w");
        ok = ok && f && text && fputs(text, f) >= 0;
        if (f) fclose(f);
        free(text);
        cJSON_Delete(cfg);
        cJSON *doc = ok ? inspect(ctx, dir) : NULL;
        const cJSON *comp = doc ? cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "components"), 0) : NULL;
        if (comp) {
            /* what the case's own description and tensors say */
            int64_t out = (int64_t)jnum(c, "out_features"), in = (int64_t)jnum(c, "in_features");
            const char *wd = cJSON_GetObjectItemCaseSensitive(qc, "weights_dtype")->valuestring;
            const cJSON *scale = cJSON_GetObjectItemCaseSensitive(h, "model.layer.scale");
            const cJSON *up = cJSON_GetObjectItemCaseSensitive(h, "model.layer.svd_up");
            int cb = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "use_codebook"));
            int had = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "use_hadamard"));
            int qmm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "use_quantized_matmul"));
            char label[96];
            if (ndim(scale) == 3) snprintf(label, sizeof label, "%s g%lld%s", wd, (long long)(in / dim(scale, 1)), cb ? " codebook" : "");
            else if (numel(scale) == 1) snprintf(label, sizeof label, "%s tensor-wise", wd);
            else snprintf(label, sizeof label, "%s row-wise%s", wd, cb ? " codebook" : "");
            const cJSON *layers = cJSON_GetObjectItemCaseSensitive(comp, "layers");
            const cJSON *row = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(comp, "layer_types"), 0);
            const cJSON *l = row ? cJSON_GetObjectItemCaseSensitive(row, "label") : NULL;
            int64_t rank = up ? (dim(up, 0) == out ? dim(up, 1) : dim(up, 0)) : 0;
            const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(comp, "svd_ranks"), 0);
            int good = jnum(layers, "quantized") == 1 && cJSON_IsString(l) && !strcmp(l->valuestring, label) &&
                       jnum(row, "parameters") == (double)(out * in) && jnum(layers, "codebook") == cb &&
                       jnum(layers, "hadamard") == had && jnum(layers, "quantized_matmul") == qmm &&
                       jnum(layers, "svd") == (up != NULL) && (!up || jnum(r0, "rank") == (double)rank);
            check(good, "layer case %s: \"%s\", %lld x %lld%s%s%s%s (got \"%s\", %.0f parameters)", name, label,
                  (long long)out, (long long)in, cb ? ", codebook" : "", had ? ", Hadamard" : "", qmm ? ", qmm" : "",
                  up ? ", SVD" : "", cJSON_IsString(l) ? l->valuestring : "?", row ? jnum(row, "parameters") : -1);
            n++;
        }
        cJSON_Delete(doc);
        cJSON_Delete(c);
        cJSON_Delete(h);
        remove(st_path);
        remove(cfg_path);
        rmdir(dir);
    }
    check(n >= 20, "%d layer cases inspected", n);
    cJSON_Delete(index);
}

/* Bad input names the file at fault (the CLI cases are in cli_inspect.sh). */
static void test_bad(qd_ctx *ctx) {
    char *text = (char *)"untouched";
    const char *missing = fixture("models/no-such-model");
    qd_status st = qd_inspect(ctx, missing, &text);
    check(st != QD_OK && text == NULL && strstr(qd_last_error(ctx), missing), "missing folder: %s", qd_last_error(ctx));

    char dir[] = "/tmp/qd_test_inspect_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (f) { fputs("{\"_class_name\": \"UNet2DConditionModel\", ", f); fclose(f); }
    st = qd_inspect(ctx, dir, &text);
    check(st != QD_OK && strstr(qd_last_error(ctx), "config.json"), "invalid JSON: %s", qd_last_error(ctx));
    remove(path);
    st = qd_inspect(ctx, dir, &text);
    check(st != QD_OK && strstr(qd_last_error(ctx), dir), "neither model_index.json nor config.json: %s", qd_last_error(ctx));
    rmdir(dir);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(1);
    test_dense(ctx);
    test_sd15_sdnq(ctx);
    test_flux_sdnq(ctx);
    test_layer_cases(ctx);
    test_bad(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
