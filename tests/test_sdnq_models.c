/* SDNQ-quantized model folders as sdnq publishes them: every quantized layer of
 * the fixture components is recognised through the params API (its layout as the
 * config derives it, its decoded weight near the dense original it came from),
 * the quantized UNet and text encoder run, and the quantized SD1.5 pipeline
 * reproduces diffusers+sdnq's golden. */
#include "testutil.h"
#include "base/ctx.h"
#include "io/json.h"
#include "models/params.h"
#include "models/unet.h"
#include "models/flux_transformer.h"
#include "quant/sdnq_matmul.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_weight.h"
#include "text/clip_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static float frand(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f; }

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

/* Load every "<prefix>.scale" layer of `qdir` with the shape of the same layer in
 * the dense `ddir` (the model it was quantized from) and compare the weights. */
static void check_component(qd_ctx *ctx, const char *qdir, const char *ddir, double max_err) {
    qd_params q, d;
    qd_status st = qd_params_open(ctx, fixture(qdir), "q", &q);
    check(st == QD_OK && q.sdnq, "%s: opens with its SDNQ config%s%s", qdir, st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st != QD_OK) return;
    if (qd_params_open(ctx, fixture(ddir), "d", &d) != QD_OK) { check(0, "%s: %s", ddir, qd_last_error(ctx)); qd_params_close(&q); return; }
    int n_layers = 0, n_ok = 0, n_adjusted = 0, n_listed = 0, n_unlisted_dense = 0;
    double worst = 0;
    char worst_name[256] = "";
    for (int64_t i = 0; i < q.st.n_tensors; i++) {
        const char *name = q.st.tensors[i].name;
        size_t len = strlen(name);
        char prefix[512], param[600];
        if (len > 7 && strcmp(name + len - 7, ".weight") == 0 && q.st.tensors[i].ndim >= 2) {
            /* a dense matrix left unquantized must be one the config says it skipped */
            snprintf(prefix, sizeof prefix, "%.*s", (int)(len - 7), name);
            if (!qd_p_has(&q, "%s.scale", prefix) && q.st.tensors[i].dtype != QD_U8 && !qd_sdnq_skips(q.sdnq, name))
                n_unlisted_dense++;
            continue;
        }
        if (len <= 6 || strcmp(name + len - 6, ".scale") != 0) continue;
        snprintf(prefix, sizeof prefix, "%.*s", (int)(len - 6), name);
        snprintf(param, sizeof param, "%s.weight", prefix);
        n_layers++;
        if (qd_sdnq_skips(q.sdnq, param)) n_listed++;
        const qd_st_tensor *dw = qd_st_find(&d.st, param);
        if (!dw || dw->ndim < 2) { check(0, "%s: no dense twin for %s", ddir, param); continue; }
        qd_weight w;
        if (dw->ndim == 4 && (dw->shape[2] > 1 || dw->shape[3] > 1)) {
            qd_conv_p c;
            st = qd_p_conv(&q, &c, dw->shape[0], dw->shape[1], (int)dw->shape[2], QD_NO_BIAS, "%s", prefix);
            w = c.w;
        } else {
            qd_linear_p l;
            st = qd_p_linear(&q, &l, dw->shape[0], dw->shape[1], QD_NO_BIAS, "%s", prefix);
            w = l.w;
        }
        if (st != QD_OK) { check(0, "%s: %s", qdir, qd_last_error(ctx)); continue; }
        const qd_sdnq_state *s = w.quant;
        if (s && s->l.adjusted) n_adjusted++;
        size_t n = (size_t)(w.rows * w.cols);
        float *got = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
        w.decode(&w, 0, w.rows, 0, w.cols, got, w.cols);
        qd_st_to_f32(dw, 0, dw->numel, ref);
        double r = rel_l2(got, ref, n);
        if (r > worst) { worst = r; snprintf(worst_name, sizeof worst_name, "%s", prefix); }
        if (s && all_finite(got, n)) n_ok++;
        free(got);
        free(ref);
    }
    check(n_layers > 0 && n_ok == n_layers, "%s: %d of %d SDNQ layers load as quantized weights", qdir, n_ok, n_layers);
    check(n_adjusted == 0, "%s: every layer's stored layout is the one its config derives (%d differ)", qdir, n_adjusted);
    check(n_listed == 0 && n_unlisted_dense == 0,
          "%s: quantized layers are not in modules_to_not_convert (%d are) and dense matrices are (%d are not)",
          qdir, n_listed, n_unlisted_dense);
    check(worst <= max_err, "%s: decoded weights within the quantization error of the dense originals "
          "(worst rel_l2 %.3g at %s; bound %.2g)", qdir, worst, worst_name, max_err);
    qd_params_close(&d);
    qd_params_close(&q);
}

static void unet_forward(qd_ctx *ctx, const char *dir, const float *x, const float *t, const float *ctxt, float *out) {
    qd_unet *u;
    qd_status st = qd_unet_load(ctx, fixture(dir), &u);
    check(st == QD_OK, "%s: qd_unet_load%s%s", dir, st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st != QD_OK) return;
    st = qd_unet_forward(ctx, u, x, 1, 8, 8, t, ctxt, 7, NULL, NULL, out);
    check(st == QD_OK, "%s: forward%s%s", dir, st ? ": " : "", st ? qd_last_error(ctx) : "");
    qd_unet_free(u);
}

static void test_unet(qd_ctx *ctx) {
    unsigned seed = 7;
    float x[4 * 64], ctxt[7 * 32], t = 500.0f, yq[4 * 64], yd[4 * 64];
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = frand(&seed);
    for (size_t i = 0; i < sizeof ctxt / sizeof *ctxt; i++) ctxt[i] = frand(&seed);
    memset(yq, 0xff, sizeof yq);   /* NaN until written */
    memset(yd, 0, sizeof yd);
    unet_forward(ctx, "models/sd15-tiny-sdnq-uint4-svd/unet", x, &t, ctxt, yq);
    unet_forward(ctx, "models/sd15-tiny/unet", x, &t, ctxt, yd);
    /* a different model (uint4 + SVD rank 8): only required to run and stay finite */
    check(all_finite(yq, 4 * 64), "quantized UNet output is finite (rel_l2 to the dense UNet %.3g, for information)",
          rel_l2(yq, yd, 4 * 64));
}

static int flux_forward(qd_ctx *ctx, const char *dir, int64_t N, int64_t L, float *out) {
    qd_flux *m;
    qd_status st = qd_flux_load(ctx, fixture(dir), &m);
    if (st != QD_OK) { check(0, "%s: qd_flux_load: %s", dir, qd_last_error(ctx)); return 0; }
    const qd_flux_info *in = qd_flux_get_info(m);
    unsigned seed = 11;
    float *h = malloc(sizeof(float) * (size_t)(N * in->in_channels)), *c = malloc(sizeof(float) * (size_t)(L * in->joint_attention_dim));
    float *pooled = malloc(sizeof(float) * (size_t)in->pooled_projection_dim), *img_ids = calloc((size_t)N * 3, sizeof(float));
    float *txt_ids = calloc((size_t)L * 3, sizeof(float)), t = 0.6f, g = 3.5f;
    for (int64_t i = 0; i < N * in->in_channels; i++) h[i] = frand(&seed);
    for (int64_t i = 0; i < L * in->joint_attention_dim; i++) c[i] = frand(&seed);
    for (int i = 0; i < in->pooled_projection_dim; i++) pooled[i] = frand(&seed);
    for (int64_t i = 0; i < N; i++) { img_ids[i * 3 + 1] = (float)(i / 4); img_ids[i * 3 + 2] = (float)(i % 4); }
    st = qd_flux_forward(ctx, m, h, 1, N, &t, in->guidance_embeds ? &g : NULL, pooled, c, L, img_ids, txt_ids, out);
    check(st == QD_OK, "%s: forward with %lld image and %lld text tokens%s%s", dir, (long long)N, (long long)L,
          st ? ": " : "", st ? qd_last_error(ctx) : "");
    free(h); free(c); free(pooled); free(img_ids); free(txt_ids);
    qd_flux_free(m);
    return st == QD_OK;
}

/* The int8-qmm FLUX fixture: its config asks for quantized matmul, so layers with
 * >= 32 tokens run int8 by default; exact mode dequantizes everything. */
static void test_flux(qd_ctx *ctx) {
    int64_t N = 16, L = 48, n = N * 64;
    float *y8 = malloc(sizeof(float) * (size_t)n), *ye = malloc(sizeof(float) * (size_t)n), *yd = malloc(sizeof(float) * (size_t)n);
    int ok = flux_forward(ctx, "models/flux-tiny-sdnq-int8-qmm/transformer", N, L, y8);
    qd_set_matmul(ctx, QD_MATMUL_EXACT);
    ok = ok && flux_forward(ctx, "models/flux-tiny-sdnq-int8-qmm/transformer", N, L, ye);
    qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    ok = ok && flux_forward(ctx, "models/flux-tiny/transformer", N, L, yd);
    if (ok) {
        double r8 = rel_l2(y8, ye, (size_t)n), rq = rel_l2(ye, yd, (size_t)n);
        check(all_finite(y8, (size_t)n) && r8 > 0 && r8 < 0.05,
              "int8-qmm FLUX: the config's int8 matmul runs, within %.3g of exact dequantization (exact vs the dense "
              "model: %.3g)", r8, rq);
    }
    free(y8); free(ye); free(yd);
}

static void test_clip(qd_ctx *ctx) {
    qd_clip_text *m;
    qd_status st = qd_clip_text_load(ctx, fixture("models/sd15-tiny-sdnq-uint4-svd/text_encoder"), &m);
    check(st == QD_OK, "int8 CLIP text encoder loads%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st != QD_OK) return;
    const qd_clip_text_info *info = qd_clip_text_get_info(m);
    int32_t ids[8] = {info->vocab_size - 2, 5, 17, 33, info->eos_token_id, info->eos_token_id, info->eos_token_id, info->eos_token_id};
    float *last = malloc(sizeof(float) * 8 * (size_t)info->hidden_size), *pooled = malloc(sizeof(float) * (size_t)info->hidden_size);
    st = qd_clip_text_forward(ctx, m, ids, 1, 8, last, NULL, pooled, NULL);
    check(st == QD_OK && all_finite(last, 8 * (size_t)info->hidden_size) && all_finite(pooled, (size_t)info->hidden_size),
          "int8 CLIP text encoder forward runs, outputs finite");
    free(last);
    free(pooled);
    qd_clip_text_free(m);
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b) fclose(b);
    return ok;
}

/* quant_embedding: the dense sd15-tiny CLIP with its token and position tables
 * re-stored as SDNQ int8 row-wise (quantized here), run against the dense model. */
static void test_clip_quantized_embedding(qd_ctx *ctx) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "/tmp/qd_sdnq_emb_%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(fixture("models/sd15-tiny/text_encoder/config.json"), path);
    snprintf(path, sizeof path, "%s/quantization_config.json", dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("{\"quant_method\": \"sdnq\", \"weights_dtype\": \"int8\", \"group_size\": -1, \"quant_embedding\": true}", f);
        fclose(f);
    }
    qd_st_set st;
    if (qd_st_open(ctx, fixture("models/sd15-tiny/text_encoder/model.safetensors"), &st) != QD_OK) {
        check(0, "%s", qd_last_error(ctx));
        return;
    }
    qd_st_out *outs = calloc((size_t)st.n_tensors + 2, sizeof *outs);
    void *bufs[4] = {0};
    char names[4][128];
    int n = 0, nb = 0;
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const qd_st_tensor *t = &st.tensors[i];
        qd_st_out *o = &outs[n++];
        o->name = t->name; o->dtype = t->dtype; o->ndim = t->ndim; o->data = t->data;
        memcpy(o->shape, t->shape, sizeof o->shape);
        if (!strstr(t->name, "embeddings.") || t->ndim != 2) continue;
        int64_t rows = t->shape[0], cols = t->shape[1];
        float *row = malloc(sizeof(float) * (size_t)cols), *scale = malloc(sizeof(float) * (size_t)rows);
        int8_t *codes = malloc((size_t)(rows * cols));
        for (int64_t r = 0; r < rows; r++) {
            qd_st_to_f32(t, r * cols, cols, row);
            float amax = 0;
            for (int64_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(row[c]));
            scale[r] = amax / 127.0f;
            for (int64_t c = 0; c < cols; c++) codes[r * cols + c] = (int8_t)lrintf(scale[r] > 0 ? row[c] / scale[r] : 0);
        }
        free(row);
        o->dtype = QD_I8; o->data = codes;
        qd_st_out *so = &outs[n++];
        snprintf(names[nb / 2], sizeof names[0], "%.*s.scale", (int)(strlen(t->name) - 7), t->name);
        so->name = names[nb / 2]; so->dtype = QD_F32; so->ndim = 2; so->shape[0] = rows; so->shape[1] = 1; so->data = scale;
        bufs[nb++] = codes;
        bufs[nb++] = scale;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    qd_status s = qd_st_write(ctx, path, outs, n, NULL);
    for (int i = 0; i < 4; i++) free(bufs[i]);
    free(outs);
    qd_st_close(&st);
    check(s == QD_OK && nb == 4, "wrote a CLIP with SDNQ int8 token and position embeddings");

    qd_clip_text *mq = NULL, *md = NULL;
    s = qd_clip_text_load(ctx, dir, &mq);
    check(s == QD_OK, "CLIP with quantized embeddings loads%s%s", s ? ": " : "", s ? qd_last_error(ctx) : "");
    if (s == QD_OK && qd_clip_text_load(ctx, fixture("models/sd15-tiny/text_encoder"), &md) == QD_OK) {
        const qd_clip_text_info *in = qd_clip_text_get_info(md);
        int32_t ids[6] = {in->vocab_size - 2, 7, 300, 41, in->eos_token_id, in->eos_token_id};
        size_t nd = 6 * (size_t)in->hidden_size;
        float *yq = malloc(sizeof(float) * nd), *yd = malloc(sizeof(float) * nd);
        qd_clip_text_forward(ctx, mq, ids, 1, 6, yq, NULL, NULL, NULL);
        qd_clip_text_forward(ctx, md, ids, 1, 6, yd, NULL, NULL, NULL);
        double r = rel_l2(yq, yd, nd);
        check(r < 2e-2, "quantized-embedding CLIP output near the dense one: rel_l2 %.3g (int8 row-wise error)", r);
        free(yq);
        free(yd);
    }
    qd_clip_text_free(mq);
    qd_clip_text_free(md);
    const char *files[] = {"config.json", "quantization_config.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", dir, files[i]); unlink(path); }
    rmdir(dir);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    /* bounds: a few times each fixture's own quantization error (uint4+SVD ~0.1, int8 ~0.01) */
    check_component(ctx, "models/sd15-tiny-sdnq-uint4-svd/unet", "models/sd15-tiny/unet", 0.25);
    check_component(ctx, "models/sd15-tiny-sdnq-uint4-svd/text_encoder", "models/sd15-tiny/text_encoder", 0.05);
    check_component(ctx, "models/flux-tiny-sdnq-int8-qmm/transformer", "models/flux-tiny/transformer", 0.05);
    check_component(ctx, "models/flux-tiny-sdnq-int8-qmm/text_encoder_2", "models/flux-tiny/text_encoder_2", 0.25);
    test_unet(ctx);
    test_flux(ctx);
    test_clip(ctx);
    test_clip_quantized_embedding(ctx);
    /* the quantized pipelines against their goldens run in test_pipeline */
    qd_ctx_free(ctx);
    return test_summary();
}
