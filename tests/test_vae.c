/* AutoencoderKL against diffusers 0.32.2 goldens (decode latent -> image, encode
 * image -> mean/logvar) for the SD1.5, SDXL, SD3.5 and FLUX.1 layouts; batching;
 * the pre-0.14 attention tensor names; and bad input: unsupported config, truncated
 * weights, a missing tensor, bad arguments. */
#include "testutil.h"
#include "models/vae.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const double REL = 1e-4, ABS = 1e-3;

typedef struct { float *latent, *decoded, *image, *mean, *logvar; int64_t ls[4], is[4]; } golden;

static int load_golden(const char *model, golden *g) {
    char path[512];
    snprintf(path, sizeof path, "goldens/%s/vae.safetensors", model);
    const char *f = fixture(path);
    int nd;
    memset(g, 0, sizeof *g);
    g->latent = load_f32(f, "latent", g->ls, &nd, NULL);
    g->decoded = load_f32(f, "decoded", NULL, NULL, NULL);
    g->image = load_f32(f, "image", g->is, &nd, NULL);
    g->mean = load_f32(f, "encoded_mean", NULL, NULL, NULL);
    g->logvar = load_f32(f, "encoded_logvar", NULL, NULL, NULL);
    return g->latent && g->decoded && g->image && g->mean && g->logvar;
}

static void free_golden(golden *g) {
    free(g->latent); free(g->decoded); free(g->image); free(g->mean); free(g->logvar);
}

static size_t n4(const int64_t *s) { return (size_t)(s[0] * s[1] * s[2] * s[3]); }

static void check_decode(qd_ctx *ctx, qd_vae *v, const golden *g, const char *what) {
    size_t n = n4(g->is);
    float *img = malloc(sizeof(float) * n);
    qd_status st = qd_vae_decode(ctx, v, g->latent, g->ls[0], g->ls[2], g->ls[3], img);
    check(st == QD_OK, "%s decode runs%s%s", what, st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK) check_close(what, img, g->decoded, n, REL, ABS);
    free(img);
}

static void test_model(qd_ctx *ctx, const char *model, int latent_ch, float scaling, float shift) {
    char dir[512], what[128];
    snprintf(dir, sizeof dir, "models/%s/vae", model);
    golden g;
    if (!load_golden(model, &g)) { check(0, "%s golden loads", model); free_golden(&g); return; }
    qd_vae *v;
    qd_status st = qd_vae_load(ctx, fixture(dir), &v);
    check(st == QD_OK, "%s vae loads%s%s", model, st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st != QD_OK) { free_golden(&g); return; }
    const qd_vae_info *info = qd_vae_get_info(v);
    check(info->latent_channels == latent_ch && info->in_channels == 3 && info->out_channels == 3 &&
          info->downscale == 8 && info->scaling_factor == scaling && info->shift_factor == shift,
          "%s info: latent %d, down %d, scale %g, shift %g", model, info->latent_channels, info->downscale,
          info->scaling_factor, info->shift_factor);

    snprintf(what, sizeof what, "%s decoded", model);
    check_decode(ctx, v, &g, what);

    size_t nl = n4(g.ls);
    float *mean = malloc(sizeof(float) * nl), *logvar = malloc(sizeof(float) * nl);
    st = qd_vae_encode(ctx, v, g.image, g.is[0], g.is[2], g.is[3], mean, logvar);
    check(st == QD_OK, "%s encode runs%s%s", model, st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK) {
        snprintf(what, sizeof what, "%s encoded_mean", model);
        check_close(what, mean, g.mean, nl, REL, ABS);
        snprintf(what, sizeof what, "%s encoded_logvar", model);
        check_close(what, logvar, g.logvar, nl, REL, ABS);
    }
    free(mean); free(logvar);
    qd_vae_free(v);
    free_golden(&g);
}

/* Two copies in one batch must each reproduce the single-image golden. */
static void test_batch(qd_ctx *ctx, const char *model) {
    char dir[512], what[128];
    snprintf(dir, sizeof dir, "models/%s/vae", model);
    golden g;
    qd_vae *v;
    if (!load_golden(model, &g) || qd_vae_load(ctx, fixture(dir), &v) != QD_OK) {
        check(0, "%s batch setup: %s", model, qd_last_error(ctx));
        free_golden(&g);
        return;
    }
    size_t nl = n4(g.ls), ni = n4(g.is);
    float *z2 = malloc(sizeof(float) * 2 * nl), *img2 = malloc(sizeof(float) * 2 * ni);
    float *m2 = malloc(sizeof(float) * 2 * nl), *l2 = malloc(sizeof(float) * 2 * nl);
    memcpy(z2, g.latent, sizeof(float) * nl);
    memcpy(z2 + nl, g.latent, sizeof(float) * nl);
    memcpy(img2, g.image, sizeof(float) * ni);
    memcpy(img2 + ni, g.image, sizeof(float) * ni);
    float *out = malloc(sizeof(float) * 2 * ni);
    check(qd_vae_decode(ctx, v, z2, 2, g.ls[2], g.ls[3], out) == QD_OK, "%s batch-2 decode runs", model);
    for (int b = 0; b < 2; b++) {
        snprintf(what, sizeof what, "%s batch-2 decoded[%d]", model, b);
        check_close(what, out + b * ni, g.decoded, ni, REL, ABS);
    }
    check(qd_vae_encode(ctx, v, img2, 2, g.is[2], g.is[3], m2, l2) == QD_OK, "%s batch-2 encode runs", model);
    for (int b = 0; b < 2; b++) {
        snprintf(what, sizeof what, "%s batch-2 encoded_mean[%d]", model, b);
        check_close(what, m2 + b * nl, g.mean, nl, REL, ABS);
        snprintf(what, sizeof what, "%s batch-2 encoded_logvar[%d]", model, b);
        check_close(what, l2 + b * nl, g.logvar, nl, REL, ABS);
    }
    free(z2); free(img2); free(m2); free(l2); free(out);
    qd_vae_free(v);
    free_golden(&g);
}

/* ---- temporary vae folders ---- */

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Copy <src>/config.json to <dir>/config.json, replacing the first `from` by `to` (if given). */
static int write_config(const char *src, const char *dir, const char *from, const char *to) {
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", src);
    char *text = test_read_file(path, NULL);
    if (!text) return 0;
    char *hit = from ? strstr(text, from) : NULL;
    if (from && !hit) { free(text); return 0; }
    size_t tl = strlen(text), fl = from ? strlen(from) : 0, nl = to ? strlen(to) : 0;
    char *out = malloc(tl + nl + 1);
    if (hit) {
        size_t pre = (size_t)(hit - text);
        memcpy(out, text, pre);
        memcpy(out + pre, to, nl);
        strcpy(out + pre + nl, hit + fl);
    } else {
        strcpy(out, text);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    int ok = write_bytes(path, out, strlen(out));
    free(text);
    free(out);
    return ok;
}

static void clean_dir(const char *dir) {
    static const char *names[] = {"config.json", "diffusion_pytorch_model.safetensors"};
    char path[1024];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_bad_config(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_vae_cfg_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    const char *src = fixture("models/sd15-tiny/vae");
    qd_vae *v = (qd_vae *)1;

    check(write_config(src, dir, "\"DownEncoderBlock2D\",\n    \"DownEncoderBlock2D\",\n    \"DownEncoderBlock2D\"",
                       "\"DownEncoderBlock2D\",\n    \"SimpleDownBlock2D\",\n    \"DownEncoderBlock2D\""),
          "write config with an unknown down block");
    qd_status st = qd_vae_load(ctx, dir, &v);
    const char *err = qd_last_error(ctx);
    check(st == QD_ERR_UNSUPPORTED && v == NULL && strstr(err, "config.json") && strstr(err, "SimpleDownBlock2D"),
          "unknown down block type fails naming config.json: %s", err);

    check(write_config(src, dir, "\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\""), "write config with gelu");
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st == QD_ERR_UNSUPPORTED && strstr(err, "config.json") && strstr(err, "gelu"),
          "unsupported act_fn fails naming config.json: %s", err);

    check(write_config(src, dir, "\"norm_num_groups\": 16", "\"norm_num_groups\": 5"), "write config with 5 groups");
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "config.json") && strstr(err, "norm_num_groups"),
          "channels not divisible by groups fail naming config.json: %s", err);

    check(write_config(src, dir, "\"layers_per_block\": 2", "\"layers_per_block\": \"two\""), "write config with a string");
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "config.json") && strstr(err, "layers_per_block"),
          "non-integer layers_per_block fails naming config.json: %s", err);

    check(write_config(src, dir, "\"UpDecoderBlock2D\"\n  ]", "\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"\n  ]"),
          "write config with an extra up block");
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "config.json"), "mismatched block counts fail naming config.json: %s", err);

    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    check(write_bytes(path, "{\"block_out_channels\": [32, ", 28), "write truncated JSON");
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "config.json"), "invalid JSON fails naming config.json: %s", err);
    clean_dir(dir);
}

/* A good config with the weights file cut in half: the error names the file. */
static void test_truncated(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_vae_trunc_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    const char *src = fixture("models/sd15-tiny/vae");
    char path[1024];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", src);
    size_t n;
    char *bytes = test_read_file(path, &n);
    check(bytes && write_config(src, dir, NULL, NULL), "copy vae folder");
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    check(bytes && write_bytes(path, bytes, n / 2), "write half of the weights");
    free(bytes);
    qd_vae *v = (qd_vae *)1;
    qd_status st = qd_vae_load(ctx, dir, &v);
    const char *err = qd_last_error(ctx);
    check(st != QD_OK && v == NULL && strstr(err, path), "truncated weights fail naming the file: %s", err);

    /* the weights file missing entirely */
    unlink(path);
    st = qd_vae_load(ctx, dir, &v);
    err = qd_last_error(ctx);
    check(st == QD_ERR_IO && strstr(err, dir), "missing weights fail naming the folder: %s", err);
    clean_dir(dir);
}

/* Copy the sd15 weights renaming some tensors; returns 1 on success. */
static int write_renamed(qd_ctx *ctx, const char *dir, const char *const *from, const char *const *to, int nren) {
    char path[1024];
    qd_st_set set;
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", fixture("models/sd15-tiny/vae"));
    if (qd_st_open(ctx, path, &set) != QD_OK) return 0;
    qd_st_out *t = calloc((size_t)set.n_tensors, sizeof *t);
    char **names = calloc((size_t)set.n_tensors, sizeof *names);
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *s = &set.tensors[i];
        names[i] = malloc(strlen(s->name) + 64);
        strcpy(names[i], s->name);
        for (int r = 0; r < nren; r++) {
            char *hit = strstr(s->name, from[r]);
            if (!hit) continue;
            size_t pre = (size_t)(hit - s->name);
            memcpy(names[i], s->name, pre);
            strcpy(names[i] + pre, to[r]);
            strcat(names[i], hit + strlen(from[r]));
        }
        t[i].name = names[i];
        t[i].dtype = s->dtype;
        t[i].ndim = s->ndim;
        memcpy(t[i].shape, s->shape, sizeof s->shape);
        t[i].data = s->data;
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    int ok = qd_st_write(ctx, path, t, (int)set.n_tensors, NULL) == QD_OK;
    for (int64_t i = 0; i < set.n_tensors; i++) free(names[i]);
    free(names);
    free(t);
    qd_st_close(&set);
    return ok;
}

/* Checkpoints saved before diffusers 0.14 use query/key/value/proj_attn. */
static void test_old_names(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_vae_old_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    check(write_config(fixture("models/sd15-tiny/vae"), dir, NULL, NULL) && write_renamed(ctx, dir, from, to, 4),
          "write vae with old attention names");
    golden g;
    qd_vae *v;
    qd_status st = qd_vae_load(ctx, dir, &v);
    check(st == QD_OK, "old attention names load%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st == QD_OK && load_golden("sd15-tiny", &g)) {
        check_decode(ctx, v, &g, "sd15-tiny old names decoded");
        free_golden(&g);
    }
    if (st == QD_OK) qd_vae_free(v);

    /* a missing tensor: the error names the file and the tensor */
    static const char *const from2[] = {"decoder.up_blocks.1.resnets.2.conv2.weight"};
    static const char *const to2[] = {"decoder.up_blocks.1.resnets.2.conv2.weigh"};
    check(write_renamed(ctx, dir, from2, to2, 1), "write vae lacking one tensor");
    st = qd_vae_load(ctx, dir, &v);
    const char *err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "decoder.up_blocks.1.resnets.2.conv2.weight") &&
          strstr(err, "diffusion_pytorch_model.safetensors"),
          "missing tensor fails naming file and tensor: %s", err);
    clean_dir(dir);
}

/* use_quant_conv=true on a folder that has no quant_conv: fails naming the tensor;
 * mid_block_add_attention=false: loads without the attention and still decodes. */
static void test_config_switches(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_vae_sw_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    char src[1024], path[1024];
    snprintf(src, sizeof src, "%s", fixture("models/sd35-tiny/vae"));
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    char weights[1024], *abs_weights;
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", src);
    abs_weights = realpath(weights, NULL);   /* the link must not depend on the working directory */
    check(abs_weights && symlink(abs_weights, path) == 0, "link sd35 weights");
    free(abs_weights);

    check(write_config(src, dir, "\"use_quant_conv\": false", "\"use_quant_conv\": true"), "write config with quant_conv");
    qd_vae *v;
    qd_status st = qd_vae_load(ctx, dir, &v);
    const char *err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, "quant_conv.weight"), "absent quant_conv fails naming it: %s", err);

    check(write_config(src, dir, "\"mid_block_add_attention\": true", "\"mid_block_add_attention\": false"),
          "write config without mid attention");
    v = NULL;
    st = qd_vae_load(ctx, dir, &v);
    check(st == QD_OK, "no-attention config loads%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    golden g;
    if (v && load_golden("sd35-tiny", &g)) {
        size_t n = n4(g.is);
        float *img = malloc(sizeof(float) * n);
        st = qd_vae_decode(ctx, v, g.latent, 1, g.ls[2], g.ls[3], img);
        int finite = 1;
        for (size_t i = 0; i < n; i++) finite &= isfinite(img[i]) != 0;
        double r = rel_l2(img, g.decoded, n);
        check(st == QD_OK && finite && r > 1e-3, "no-attention decode runs and differs (rel %.3g)", r);
        free(img);
        free_golden(&g);
    }
    qd_vae_free(v);
    clean_dir(dir);
}

static void test_bad_args(qd_ctx *ctx) {
    qd_vae *v;
    if (qd_vae_load(ctx, fixture("models/sd15-tiny/vae"), &v) != QD_OK) { check(0, "load"); return; }
    float z[4 * 8 * 8] = {0}, img[3 * 64 * 64], m[16], l[16];
    check(qd_vae_decode(ctx, v, z, 0, 8, 8, img) == QD_ERR_ARG, "batch 0 rejected");
    check(qd_vae_decode(ctx, v, z, 1, 0, 8, img) == QD_ERR_ARG, "height 0 rejected");
    check(qd_vae_decode(ctx, v, z, 1, (int64_t)1 << 40, (int64_t)1 << 40, img) == QD_ERR_ARG, "huge size rejected");
    check(qd_vae_encode(ctx, v, img, 1, 4, 64, m, l) == QD_ERR_ARG, "image smaller than the downscale rejected");
    check(qd_vae_encode(ctx, v, NULL, 1, 64, 64, m, l) == QD_ERR_ARG, "NULL image rejected");
    qd_vae_free(v);
    qd_vae_free(NULL);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    test_model(ctx, "sd15-tiny", 4, 0.18215f, 0.0f);
    test_model(ctx, "sdxl-tiny", 4, 0.13025f, 0.0f);
    test_model(ctx, "sd35-tiny", 16, 1.5305f, 0.0609f);
    test_model(ctx, "flux-tiny", 16, 0.3611f, 0.1159f);
    test_batch(ctx, "sd15-tiny");
    test_batch(ctx, "flux-tiny");
    test_bad_config(ctx);
    test_truncated(ctx);
    test_old_names(ctx);
    test_config_switches(ctx);
    test_bad_args(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
