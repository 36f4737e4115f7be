/* UNet2DConditionModel against diffusers 0.32.2 goldens (SD1.5 and SDXL layouts),
 * batch independence, odd latent sizes, and bad input: unsupported config options,
 * a misshapen tensor and a missing tensor must fail with a clear message, no crash. */
#include "testutil.h"
#include "models/unet.h"
#include "io/safetensors.h"
#include "base/ctx.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* model_dir NULL: the fixture model itself; else a folder holding an equivalent config. */
static void golden(qd_ctx *ctx, const char *name, int text_time, const char *model_dir, const char *label) {
    char dir[256], gpath[256];
    snprintf(dir, sizeof dir, "models/%s/unet", name);
    snprintf(gpath, sizeof gpath, "goldens/%s/unet.safetensors", name);
    const char *g = fixture(gpath);
    qd_unet *u;
    if (qd_unet_load(ctx, model_dir ? model_dir : fixture(dir), &u) != QD_OK) {
        check(0, "%s: load: %s", name, qd_last_error(ctx));
        return;
    }
    const qd_unet_info *info = qd_unet_get_info(u);
    check(info->in_channels == 4 && info->out_channels == 4 && info->sample_size == 8, "%s: info", name);
    int64_t xs[4], cs[3];
    size_t n;
    float *x = load_f32(g, "sample", xs, NULL, &n);
    float *t = load_f32(g, "timestep", NULL, NULL, NULL);
    float *c = load_f32(g, "encoder_hidden_states", cs, NULL, NULL);
    float *ref = load_f32(g, "out", NULL, NULL, NULL);
    float *te = text_time ? load_f32(g, "text_embeds", NULL, NULL, NULL) : NULL;
    float *ti = text_time ? load_f32(g, "time_ids", NULL, NULL, NULL) : NULL;
    float *out = malloc(sizeof(float) * n);
    check(cs[2] == info->cross_attention_dim, "%s: cross_attention_dim %d", name, info->cross_attention_dim);
    qd_status st = qd_unet_forward(ctx, u, x, xs[0], xs[2], xs[3], t, c, cs[1], te, ti, out);
    check(st == QD_OK, "%s: forward: %s", name, st ? qd_last_error(ctx) : "ok");
    char what[256];
    snprintf(what, sizeof what, "%s unet%s%s vs diffusers (t = %g, %g)", name, label ? " with " : "",
             label ? label : "", t[0], t[1]);
    check_close(what, out, ref, n, 1e-4, 1e-3);
    if (model_dir) goto done;

    /* batch item 1 alone gives the same answer: no cross-batch indexing mistakes */
    int64_t per = n / (size_t)xs[0];
    st = qd_unet_forward(ctx, u, x + per, 1, xs[2], xs[3], t + 1, c + cs[1] * cs[2], cs[1],
                         te ? te + (info->projection_class_embeddings_input_dim - 6 * info->addition_time_embed_dim)
                            : NULL, ti ? ti + 6 : NULL, out);
    check(st == QD_OK, "%s: forward batch 1", name);
    snprintf(what, sizeof what, "%s unet batch item 1 alone", name);
    check_close(what, out, ref + per, (size_t)per, 1e-4, 1e-3);

    /* cancellation mid-forward frees everything (ASan checks) and says so */
    qd_cancel(ctx);
    st = qd_unet_forward(ctx, u, x, xs[0], xs[2], xs[3], t, c, cs[1], te, ti, out);
    check(st == QD_ERR_CANCELLED, "%s: cancelled forward returns QD_ERR_CANCELLED (%d)", name, st);
    ctx->cancel = 0;

    if (text_time) {
        st = qd_unet_forward(ctx, u, x, xs[0], xs[2], xs[3], t, c, cs[1], NULL, NULL, out);
        check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "text_embeds"), "%s: missing text_embeds: %s", name,
              qd_last_error(ctx));
    }
done:
    free(x); free(t); free(c); free(ref); free(te); free(ti); free(out);
    qd_unet_free(u);
}

/* Sizes that are not multiples of 2^(blocks-1): upsampling targets the skip's size. */
static void odd_sizes(qd_ctx *ctx, const char *model, int64_t H, int64_t W) {
    qd_unet *u;
    if (qd_unet_load(ctx, fixture(model), &u) != QD_OK) {
        check(0, "%s: load: %s", model, qd_last_error(ctx));
        return;
    }
    const qd_unet_info *info = qd_unet_get_info(u);
    int64_t B = 1, L = 5, C = info->in_channels, n = B * C * H * W;
    float *x = malloc(sizeof(float) * (size_t)n), *out = malloc(sizeof(float) * (size_t)(B * info->out_channels * H * W));
    float *c = malloc(sizeof(float) * (size_t)(B * L * info->cross_attention_dim));
    for (int64_t i = 0; i < n; i++) x[i] = sinf((float)i * 0.37f);
    for (int64_t i = 0; i < B * L * info->cross_attention_dim; i++) c[i] = cosf((float)i * 0.11f);
    float t = 500.0f;
    qd_status st = qd_unet_forward(ctx, u, x, B, H, W, &t, c, L, NULL, NULL, out);
    int finite = 1;
    double mx = 0;
    for (int64_t i = 0; i < B * info->out_channels * H * W; i++) {
        if (!isfinite(out[i])) finite = 0;
        if (fabs(out[i]) > mx) mx = fabs(out[i]);
    }
    check(st == QD_OK && finite && mx > 0, "%s: forward %lldx%lld: %s, max|out| %.3g", model, (long long)H,
          (long long)W, st ? qd_last_error(ctx) : "ok", mx);
    free(x); free(out); free(c);
    qd_unet_free(u);
}

/* ---- bad input ---- */

static char tmpdir[256];

/* tmpdir/config.json = the sd15-tiny config with `key` set to the JSON `value` (key NULL:
 * value is an object of several overrides); weights symlinked. */
static void make_config(const char *key, const char *value) {
    char path[512], src[512];
    snprintf(src, sizeof src, "%s", fixture("models/sd15-tiny/unet/config.json"));
    FILE *f = fopen(src, "r");
    char buf[8192];
    size_t len = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[len] = 0;
    cJSON *cfg = cJSON_Parse(buf);
    if (key) {
        cJSON_ReplaceItemInObjectCaseSensitive(cfg, key, cJSON_Parse(value));
    } else {
        cJSON *o = cJSON_Parse(value);
        for (cJSON *e = o ? o->child : NULL; e; e = e->next)
            cJSON_ReplaceItemInObjectCaseSensitive(cfg, e->string, cJSON_Duplicate(e, 1));
        cJSON_Delete(o);
    }
    char *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    write_text_file(path, text);
    free(text);
    cJSON_Delete(cfg);
    link_fixture(fixture("models/sd15-tiny/unet/diffusion_pytorch_model.safetensors"), tmpdir,
                 "diffusion_pytorch_model.safetensors");
}

static void expect_fail(qd_ctx *ctx, const char *what, qd_status want, const char *needle1, const char *needle2) {
    qd_unet *u = (qd_unet *)1;
    qd_status st = qd_unet_load(ctx, tmpdir, &u);
    const char *e = qd_last_error(ctx);
    check(st == want && u == NULL && strstr(e, needle1) && (!needle2 || strstr(e, needle2)),
          "%s fails (%d): %s", what, st, e);
    if (st == QD_OK) qd_unet_free(u);
}

static void bad_configs(qd_ctx *ctx) {
    static const char *cases[][3] = {
        {"down_block_types", "[\"SimpleCrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"]",
         "SimpleCrossAttnDownBlock2D"},
        {"up_block_types", "[\"UpBlock2D\", \"AttnUpBlock2D\", \"CrossAttnUpBlock2D\"]", "AttnUpBlock2D"},
        {"mid_block_type", "\"UNetMidBlock2DSimpleCrossAttn\"", "mid_block_type"},
        {"class_embed_type", "\"timestep\"", "class_embed_type"},
        {"addition_embed_type", "\"text\"", "addition_embed_type"},
        {"act_fn", "\"gelu\"", "act_fn"},
        {"resnet_time_scale_shift", "\"scale_shift\"", "resnet_time_scale_shift"},
        {"time_cond_proj_dim", "256", "time_cond_proj_dim"},
        {"only_cross_attention", "true", "only_cross_attention"},
        {"encoder_hid_dim_type", "\"text_proj\"", "encoder_hid_dim_type"},
        {"attention_type", "\"gated\"", "attention_type"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        make_config(cases[i][0], cases[i][1]);
        char what[128];
        snprintf(what, sizeof what, "config %s = %s", cases[i][0], cases[i][1]);
        expect_fail(ctx, what, QD_ERR_UNSUPPORTED, "config.json", cases[i][2]);
    }
    /* spellings diffusers treats the same as the fixture's config give the same output */
    static const char *same[][2] = {
        {"transformer_layers_per_block", "[1, 1, 1]"}, {"attention_head_dim", "[4, 4, 4]"},
        {"layers_per_block", "[2, 2, 2]"}, {"cross_attention_dim", "[32, 32, 32]"},
        {"num_attention_heads", "4"},   /* diffusers itself refuses this key; we read it as the head count */
        {NULL, "{\"transformer_layers_per_block\": [[1, 1], [1, 1], [1, 1]], "
               "\"reverse_transformer_layers_per_block\": [[1, 1, 1], 1, [1, 1, 1]]}"},
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        make_config(same[i][0], same[i][1]);
        char label[256];
        snprintf(label, sizeof label, "%s%s%s", same[i][0] ? same[i][0] : "", same[i][0] ? " = " : "", same[i][1]);
        golden(ctx, "sd15-tiny", 0, tmpdir, label);
    }
    /* no mid block: loads (the mid tensors are simply unused) and runs */
    make_config("mid_block_type", "null");
    qd_unet *u;
    qd_status st = qd_unet_load(ctx, tmpdir, &u);
    check(st == QD_OK, "mid_block_type null loads: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        float x[2 * 4 * 8 * 8], c[2 * 3 * 32], t[2] = {10, 900}, out[2 * 4 * 8 * 8];
        for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = sinf((float)i);
        for (size_t i = 0; i < sizeof c / sizeof *c; i++) c[i] = cosf((float)i);
        st = qd_unet_forward(ctx, u, x, 2, 8, 8, t, c, 3, NULL, NULL, out);
        int finite = 1;
        for (size_t i = 0; i < sizeof out / sizeof *out; i++) finite &= isfinite(out[i]) != 0;
        check(st == QD_OK && finite, "mid_block_type null forward");
        qd_unet_free(u);
    }
    /* deeper transformers than the weights hold: the missing tensor is named */
    make_config("transformer_layers_per_block", "[1, 2, 1]");
    expect_fail(ctx, "transformer_layers_per_block deeper than the weights", QD_ERR_FORMAT,
                "down_blocks.1.attentions.0.transformer_blocks.1.", NULL);
    make_config("transformer_layers_per_block", "[[1, 1], [1, 1], [1, 1]]");
    expect_fail(ctx, "nested transformer_layers_per_block without the reverse list", QD_ERR_FORMAT, "config.json",
                "reverse_transformer_layers_per_block");
    make_config("attention_head_dim", "[4, 4, 100]");
    expect_fail(ctx, "more heads than channels", QD_ERR_FORMAT, "config.json", "heads");

    /* malformed rather than unsupported */
    make_config("block_out_channels", "[32, 64]");
    expect_fail(ctx, "config with 2 block_out_channels for 3 blocks", QD_ERR_FORMAT, "config.json", NULL);
    make_config("norm_num_groups", "12");
    expect_fail(ctx, "config norm_num_groups not dividing channels", QD_ERR_FORMAT, "config.json", "norm_num_groups");
    make_config("layers_per_block", "[2, 2]");
    expect_fail(ctx, "config layers_per_block list too short", QD_ERR_FORMAT, "config.json", "layers_per_block");
    /* a valid config that disagrees with the weights: the error names a tensor */
    make_config("use_linear_projection", "true");
    expect_fail(ctx, "use_linear_projection vs 1x1 conv weights", QD_ERR_FORMAT, "proj_in.weight", NULL);
    make_config("cross_attention_dim", "48");
    expect_fail(ctx, "cross_attention_dim vs weights", QD_ERR_FORMAT, "attn2.to_k.weight", NULL);
}

/* Copy every tensor of the sd15-tiny weights, reshaping or dropping `victim`. */
static void bad_weights(qd_ctx *ctx, const char *victim, int drop) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    if (symlink(fixture("models/sd15-tiny/unet/config.json"), path) != 0) check(0, "symlink %s", path);
    qd_st_set set;
    if (qd_st_open(ctx, fixture("models/sd15-tiny/unet/diffusion_pytorch_model.safetensors"), &set) != QD_OK) {
        check(0, "open weights: %s", qd_last_error(ctx));
        return;
    }
    qd_st_out *t = calloc((size_t)set.n_tensors, sizeof *t);
    int n = 0;
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *s = &set.tensors[i];
        if (drop && !strcmp(s->name, victim)) continue;
        t[n].name = s->name;
        t[n].dtype = s->dtype;
        t[n].ndim = s->ndim;
        memcpy(t[n].shape, s->shape, sizeof s->shape);
        t[n].data = s->data;
        if (!strcmp(s->name, victim) && s->ndim == 4) {   /* same bytes, wrong shape: [O, I, k, k] -> [O, I/2, k, 2k] */
            t[n].shape[1] /= 2;
            t[n].shape[3] *= 2;
        }
        n++;
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", tmpdir);
    unlink(path);
    qd_status st = qd_st_write(ctx, path, t, n, NULL);
    check(st == QD_OK, "write modified weights: %s", st ? qd_last_error(ctx) : "ok");
    free(t);
    qd_st_close(&set);
    char what[128];
    snprintf(what, sizeof what, "weights with %s %s", victim, drop ? "missing" : "misshapen");
    expect_fail(ctx, what, QD_ERR_FORMAT, victim, "diffusion_pytorch_model.safetensors");
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    golden(ctx, "sd15-tiny", 0, NULL, NULL);
    golden(ctx, "sdxl-tiny", 1, NULL, NULL);
    odd_sizes(ctx, "models/shapes-sd/unet", 8, 8);
    odd_sizes(ctx, "models/shapes-sd/unet", 9, 7);
    odd_sizes(ctx, "models/sd15-tiny/unet", 10, 6);

    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_test_unet_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        check(0, "mkdtemp");
    } else {
        bad_configs(ctx);
        bad_weights(ctx, "conv_in.weight", 0);
        bad_weights(ctx, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.bias", 1);
        bad_weights(ctx, "up_blocks.2.resnets.2.conv_shortcut.weight", 0);
        char path[512];
        snprintf(path, sizeof path, "%s/config.json", tmpdir);
        unlink(path);
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", tmpdir);
        unlink(path);
        rmdir(tmpdir);
    }
    qd_ctx_free(ctx);
    return test_summary();
}
