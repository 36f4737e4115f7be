/* comfy_quant writer (src/convert/comfy_quant_write.c): a small single-file checkpoint
 * (BF16/F32/F16 weights, biases, norms, embeddings, convs, VAE and text-encoder keys,
 * header metadata) is written as int8_tensorwise (+ConvRot), float8_e4m3fn and
 * float8_e4m3fn_rowwise. Checked against the spec's math done here independently:
 * the codes and scales bit for bit (fp8 by nearest-code search over all 256 codes,
 * ties to the even code; ConvRot through a dense kron(H4) in double, codes equal except
 * at exact .5 ties), the keys, dtypes, shapes and JSON bytes of the spec's examples,
 * copied tensors byte for byte, the metadata, the reader's round trip (decode == q*s
 * bit for bit) and the error bounds (int8 |err| <= s/2; fp8 <= max(2^-4|w|, 2^-10 s)).
 * Then filters, LoRA merging while writing, and bad input (no output left behind). */
#include "testutil.h"
#include "convert/comfy_quant_write.h"
#include "convert/lora.h"
#include "io/safetensors.h"
#include "io/safetensors_meta.h"
#include "quant/comfy_quant.h"
#include "base/half.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) % 2000001) / 1000000.0f - 1.0f;
}

/* ---- the source checkpoint ---- */
enum { QKV_N = 48, QKV_K = 512, FC1_N = 64, FC1_K = 256, FC2_N = 40, FC2_K = 96 };
static uint16_t qkv[QKV_N * QKV_K], qkv_b[QKV_N], fc2[FC2_N * FC2_K], conv[8 * 4 * 3 * 3], te[32 * 32];
static float fc1[FC1_N * FC1_K], norm[32 * 64], emb[32 * 16], img_in[32 * 16], vae[4 * 4 * 3 * 3];
#define SRC "model.diffusion_model."

static void make_source(const char *path) {
    for (int i = 0; i < QKV_N * QKV_K; i++) qkv[i] = qd_f32_to_bf16(frand() * 0.05f);
    for (int i = 0; i < QKV_N; i++) qkv_b[i] = qd_f32_to_bf16(frand());
    for (int i = 0; i < FC1_N * FC1_K; i++) fc1[i] = frand() * 0.02f;
    for (int k = 0; k < FC1_K; k++) fc1[3 * FC1_K + k] = 0;   /* an all-zero row */
    fc1[7 * FC1_K + 5] = 3.0f;                                 /* an outlier */
    for (int i = 0; i < FC2_N * FC2_K; i++) fc2[i] = qd_f32_to_f16(frand() * 1e-3f);   /* subnormal fp8 territory */
    for (int i = 0; i < 8 * 36; i++) conv[i] = qd_f32_to_f16(frand());
    for (int i = 0; i < 32 * 32; i++) te[i] = qd_f32_to_f16(frand());
    for (int i = 0; i < 32 * 64; i++) norm[i] = frand();
    for (int i = 0; i < 32 * 16; i++) { emb[i] = frand(); img_in[i] = frand(); }
    for (int i = 0; i < 4 * 36; i++) vae[i] = frand();
    qd_st_out t[] = {
        {SRC "blocks.0.attn.qkv.weight", QD_BF16, 2, {QKV_N, QKV_K}, qkv},
        {SRC "blocks.0.attn.qkv.bias", QD_BF16, 1, {QKV_N}, qkv_b},
        {SRC "blocks.0.mlp.fc1.weight", QD_F32, 2, {FC1_N, FC1_K}, fc1},
        {SRC "blocks.0.mlp.fc2.weight", QD_F16, 2, {FC2_N, FC2_K}, fc2},
        {SRC "blocks.0.norm1.linear.weight", QD_F32, 2, {32, 64}, norm},
        {SRC "time_embed.0.weight", QD_F32, 2, {32, 16}, emb},
        {SRC "img_in.weight", QD_F32, 2, {32, 16}, img_in},
        {SRC "input_blocks.1.0.in_layers.2.weight", QD_F16, 4, {8, 4, 3, 3}, conv},
        {"first_stage_model.decoder.conv_in.weight", QD_F32, 4, {4, 4, 3, 3}, vae},
        {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", QD_F16, 2, {32, 32}, te},
    };
    qd_ctx *ctx = test_ctx_new(1);
    if (qd_st_write(ctx, path, t, (int)(sizeof t / sizeof t[0]), "\"modelspec.title\":\"tiny\"") != QD_OK)
        check(0, "write source: %s", qd_last_error(ctx));
    qd_ctx_free(ctx);
}

/* the fp32 values of a source layer */
static float *source_f32(const char *layer, int64_t *N, int64_t *K) {
    static float buf[QKV_N * QKV_K];
    if (strstr(layer, "qkv")) { *N = QKV_N; *K = QKV_K; for (int i = 0; i < QKV_N * QKV_K; i++) buf[i] = qd_bf16_to_f32(qkv[i]); }
    else if (strstr(layer, "fc1")) { *N = FC1_N; *K = FC1_K; memcpy(buf, fc1, sizeof fc1); }
    else if (strstr(layer, "fc2")) { *N = FC2_N; *K = FC2_K; for (int i = 0; i < FC2_N * FC2_K; i++) buf[i] = qd_f16_to_f32(fc2[i]); }
    else { *N = 32; *K = 16; memcpy(buf, img_in, sizeof img_in); }
    return buf;
}

/* ---- independent references ---- */
static double e4m3_value(int b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return s ? -v : v;
}
/* nearest e4m3fn code to x (|x| <= 448), ties to the code with even mantissa */
static uint8_t ref_e4m3(float x) {
    int best = -1;
    double bd = INFINITY;
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue;
        if ((b & 0x80) && !signbit(x)) continue;
        if (!(b & 0x80) && signbit(x)) continue;
        double d = fabs(e4m3_value(b) - (double)x);
        if (d < bd || (d == bd && (b & 1) == 0)) { bd = d; best = b; }
    }
    return (uint8_t)best;
}
static double *dense_hadamard(int64_t G) {
    static const int h4[4][4] = {{1, 1, 1, -1}, {1, 1, -1, 1}, {1, -1, 1, 1}, {-1, 1, 1, 1}};
    int digits = 0;
    for (int64_t g = G; g > 1; g /= 4) digits++;
    double *H = malloc(sizeof(double) * (size_t)(G * G));
    for (int64_t i = 0; i < G; i++)
        for (int64_t j = 0; j < G; j++) {
            int sgn = 1;
            int64_t a = i, b = j;
            for (int d = 0; d < digits; d++, a /= 4, b /= 4) sgn *= h4[a % 4][b % 4];
            H[i * G + j] = sgn / sqrt((double)G);
        }
    return H;
}

static const qd_st_tensor *get(const qd_st_set *st, const char *name, qd_dtype d, int ndim, int64_t a, int64_t b) {
    const qd_st_tensor *t = qd_st_find(st, name);
    int ok = t && t->dtype == d && t->ndim == ndim && (ndim < 1 || t->shape[0] == a) && (ndim < 2 || t->shape[1] == b);
    check(ok, "%s: %s %dD [%lld, %lld]", name, qd_dtype_name(d), ndim, (long long)a, (long long)b);
    return ok ? t : NULL;
}

static void expect_config(const qd_st_set *st, const char *layer, const char *json) {
    char name[256];
    snprintf(name, sizeof name, "%s.comfy_quant", layer);
    const qd_st_tensor *t = qd_st_find(st, name);
    check(t && t->dtype == QD_U8 && t->ndim == 1 && t->numel == (int64_t)strlen(json) && !memcmp(t->data, json, strlen(json)),
          "%s = '%s' (U8 JSON bytes)", name, json);
}

static void expect_copied(const qd_st_set *out, const qd_st_set *in, const char *name) {
    const qd_st_tensor *a = qd_st_find(out, name), *b = qd_st_find(in, name);
    check(a && b && a->dtype == b->dtype && a->ndim == b->ndim && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes) &&
              !qd_st_find(out, "x.comfy_quant"),
          "%s copied unchanged", name);
}

/* Check one quantized layer: codes/scales vs the reference, reader round trip, error bound.
 * `want` = the source weight after any LoRA merge (fp32). */
static void check_layer(qd_ctx *ctx, const char *path, const qd_st_set *st, const qd_cq_model *m, const char *layer,
                        qd_cqw_type type, int convrot, const float *want, int64_t N, int64_t K) {
    int64_t G = convrot;   /* ConvRot group size, 0: none */
    char wn[256], sn[256];
    snprintf(wn, sizeof wn, "%s.weight", layer);
    snprintf(sn, sizeof sn, "%s.weight_scale", layer);
    int fp8 = type != QD_CQW_INT8_TENSORWISE, rowwise = type == QD_CQW_FLOAT8_E4M3FN_ROWWISE || convrot;
    const qd_st_tensor *w = get(st, wn, fp8 ? QD_F8_E4M3 : QD_I8, 2, N, K);
    const qd_st_tensor *s = convrot ? get(st, sn, QD_F32, 2, N, 1) : rowwise ? get(st, sn, QD_F32, 1, N, 0)
                                    : get(st, sn, QD_F32, 0, 0, 0);
    if (!w || !s) return;
    const uint8_t *q = w->data;
    float scales[FC1_N];   /* the most rows of any layer */
    memcpy(scales, s->data, sizeof(float) * (size_t)(rowwise ? N : 1));
    /* reference codes and scales */
    double *rot = malloc(sizeof(double) * (size_t)(N * K));
    for (int64_t i = 0; i < N * K; i++) rot[i] = want[i];
    if (convrot) {
        double *H = dense_hadamard(G), row[256];
        for (int64_t r = 0; r < N; r++)
            for (int64_t b = 0; b < K; b += G) {
                for (int64_t j = 0; j < G; j++) {
                    double acc = 0;
                    for (int64_t i = 0; i < G; i++) acc += (double)want[r * K + b + i] * H[i * G + j];
                    row[j] = acc;
                }
                memcpy(rot + r * K + b, row, sizeof(double) * (size_t)G);
            }
        free(H);
    }
    int64_t code_bad = 0, scale_bad = 0, ties = 0;
    double err_over = 0;
    for (int64_t r = 0; r < N; r++) {
        int64_t lo = rowwise ? r * K : 0, hi = rowwise ? (r + 1) * K : N * K;
        double amax = 0;
        for (int64_t i = lo; i < hi; i++) amax = fmax(amax, fabs(rot[i]));
        float sref, inv = 1;
        if (!fp8) sref = fmaxf((float)amax / 127.0f, 1e-30f);
        else { inv = amax > 0 ? 448.0f / (float)amax : 1.0f; sref = 1.0f / inv; }
        float sgot = scales[rowwise ? r : 0];
        if (convrot ? fabs(sgot - sref) > 1e-5 * sref : memcmp(&sgot, &sref, 4) != 0) scale_bad++;
        for (int64_t k = 0; k < K; k++) {
            int64_t i = r * K + k;
            int ok;
            if (!fp8) {
                double v = rot[i] / sgot, fr = v - floor(v);
                if (convrot && fabs(fr - 0.5) < 1e-3) { ties++; ok = 1; }
                else ok = (int8_t)q[i] == (int8_t)(convrot ? lrint(v) : lrintf(want[i] / sgot));
                double e = fabs((int8_t)q[i] * (double)sgot - rot[i]) - 0.5 * sgot * (1 + 1e-5);
                if (e > err_over) err_over = e;
            } else {
                float x = want[i] * inv;
                ok = q[i] == ref_e4m3(x > 448.f ? 448.f : x < -448.f ? -448.f : x);
                double e = fabs(e4m3_value(q[i]) * sgot - want[i]) - fmax(fabs(want[i]) / 16, sgot / 1024) * (1 + 1e-5);
                if (e > err_over) err_over = e;
            }
            if (!ok) code_bad++;
        }
    }
    check(code_bad == 0 && scale_bad == 0, "%s: codes and scales equal the spec's quantization (%lld codes, %lld scales differ; "
          "%lld exact-tie codes not compared)", layer, (long long)code_bad, (long long)scale_bad, (long long)ties);
    check(err_over <= 0, "%s: every element within the format's bound (%s): worst excess %.3g", layer,
          fp8 ? "max(|w|/16, s/1024)" : "s/2 in the rotated basis", err_over);
    /* reader round trip: decode == q*s (then .H for ConvRot) */
    const qd_cq_layer *l = qd_cq_find(m, layer);
    float *deq = NULL;
    if (!l || qd_cq_dequantize(ctx, l, &deq) != QD_OK) { check(0, "%s: reader has the layer", layer); free(rot); return; }
    int64_t diff = 0;
    double maxd = 0, num = 0, den = 0;
    double *H = convrot ? dense_hadamard(G) : NULL;
    for (int64_t r = 0; r < N; r++)
        for (int64_t k = 0; k < K; k++) {
            int64_t i = r * K + k;
            float sc = scales[rowwise ? r : 0];
            if (!convrot) {
                float v = (fp8 ? (float)e4m3_value(q[i]) : (float)(int8_t)q[i]) * sc;
                if (memcmp(&v, &deq[i], 4)) diff++;
            } else {
                double acc = 0;
                int64_t b = k / G * G;
                for (int64_t j = 0; j < G; j++) acc += (int8_t)q[r * K + b + j] * (double)sc * H[j * G + (k - b)];
                maxd = fmax(maxd, fabs(acc - deq[i]));
            }
            num += (deq[i] - want[i]) * (double)(deq[i] - want[i]);
            den += (double)want[i] * want[i];
        }
    free(H);
    if (!convrot) check(diff == 0, "%s: the reader decodes q*s bit for bit (%lld differ)", layer, (long long)diff);
    else check(maxd <= 1e-6, "%s: the reader decodes (q*s).H (max diff %.3g vs double, tol 1e-6)", layer, maxd);
    printf("     %s: relative L2 error vs source %.3g\n", layer, sqrt(num / den));
    free(deq);
    free(rot);
    (void)path;
}

typedef struct { const char *name; qd_cqw_type type; int convrot; int input_scale; int meta; } variant;

static void test_variant(qd_ctx *ctx, const char *src, const variant *v) {
    char outname[64];
    snprintf(outname, sizeof outname, "out_%s%s.safetensors", v->name, v->convrot ? "_convrot" : "");
    char out[256];
    snprintf(out, sizeof out, "%s", scratch_path(outname));
    qd_cqw_options o = {0};
    o.type = v->type;
    o.convrot = v->convrot;
    o.input_scale = v->input_scale;
    o.save_quant_metadata = v->meta;
    qd_cqw_report rep;
    if (qd_cqw_write(ctx, src, out, &o, &rep) != QD_OK) { check(0, "%s: write: %s", v->name, qd_last_error(ctx)); return; }
    check(rep.quantized == 4 && rep.copied == 6, "%s: 4 layers quantized, 6 tensors copied (%lld, %lld)", v->name,
          (long long)rep.quantized, (long long)rep.copied);
    qd_st_set in, st;
    qd_cq_model m;
    if (qd_st_open(ctx, src, &in) != QD_OK || qd_st_open(ctx, out, &st) != QD_OK) { check(0, "open: %s", qd_last_error(ctx)); return; }
    if (qd_cq_open(ctx, &st, out, &m) != QD_OK) { check(0, "%s: reader: %s", v->name, qd_last_error(ctx)); return; }
    check(m.n_layers == 4, "%s: the reader finds 4 layers", v->name);
    const char *fmt = v->type == QD_CQW_INT8_TENSORWISE ? "int8_tensorwise"
                    : v->type == QD_CQW_FLOAT8_E4M3FN ? "float8_e4m3fn" : "float8_e4m3fn_rowwise";
    char plain[96], rot[128], rot16[160];
    snprintf(plain, sizeof plain, "{\"format\": \"%s\"}", fmt);
    snprintf(rot, sizeof rot, "{\"format\": \"%s\", \"convrot\": true}", fmt);
    snprintf(rot16, sizeof rot16, "{\"format\": \"%s\", \"convrot\": true, \"convrot_groupsize\": 16}", fmt);
    const char *layers[4] = {SRC "blocks.0.attn.qkv", SRC "blocks.0.mlp.fc1", SRC "blocks.0.mlp.fc2", SRC "img_in"};
    for (int i = 0; i < 4; i++) {
        /* K = 512, 256 take G = 256; fc2 (96) and img_in (16): the largest power of 4 dividing K, 16 */
        int cr = !v->convrot ? 0 : i < 2 ? 256 : 16;
        expect_config(&st, layers[i], cr == 256 ? rot : cr ? rot16 : plain);
        int64_t N, K;
        float *w = source_f32(layers[i], &N, &K);
        check_layer(ctx, out, &st, &m, layers[i], v->type, cr, w, N, K);
        char is[160];
        snprintf(is, sizeof is, "%s.input_scale", layers[i]);
        const qd_st_tensor *t = qd_st_find(&st, is);
        float one = 0;
        if (t && t->nbytes == 4) memcpy(&one, t->data, 4);   /* tensors after odd-sized ones are unaligned */
        if (v->input_scale) check(t && t->dtype == QD_F32 && t->ndim == 0 && one == 1.0f, "%s = 1.0", is);
        else check(!t, "%s: no input_scale unless asked", layers[i]);
    }
    const char *copied[] = {SRC "blocks.0.attn.qkv.bias", SRC "blocks.0.norm1.linear.weight", SRC "time_embed.0.weight",
                            SRC "input_blocks.1.0.in_layers.2.weight", "first_stage_model.decoder.conv_in.weight",
                            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"};
    for (int i = 0; i < 6; i++) expect_copied(&st, &in, copied[i]);
    check(st.n_tensors == 6 + 4 * (v->input_scale ? 4 : 3), "%s: %lld tensors in the output", v->name, (long long)st.n_tensors);
    cJSON *meta = NULL;
    qd_st_read_metadata(ctx, out, &meta);
    const cJSON *title = meta ? cJSON_GetObjectItemCaseSensitive(meta, "modelspec.title") : NULL;
    check(cJSON_IsString(title) && !strcmp(title->valuestring, "tiny"), "%s: input metadata kept", v->name);
    const cJSON *qm = meta ? cJSON_GetObjectItemCaseSensitive(meta, "_quantization_metadata") : NULL;
    if (v->meta) {
        char want[1024];
        snprintf(want, sizeof want, "{\"format_version\": \"1.0\", \"layers\": {\"blocks.0.attn.qkv\": %s, "
                 "\"blocks.0.mlp.fc1\": %s, \"blocks.0.mlp.fc2\": %s, \"img_in\": %s}}", plain, plain, plain, plain);
        check(cJSON_IsString(qm) && !strcmp(qm->valuestring, want), "%s: _quantization_metadata = %s", v->name,
              cJSON_IsString(qm) ? qm->valuestring : "(none)");
    } else {
        check(!qm, "%s: no _quantization_metadata unless asked", v->name);
    }
    cJSON_Delete(meta);
    qd_cq_close(&m);
    qd_st_close(&st);
    qd_st_close(&in);
}

static void test_filters_and_lora(qd_ctx *ctx, const char *src) {
    /* flux2 preset keeps img_in; a regex keeps fc2 */
    const char *filters[] = {"flux2"}, *exclude[] = {"mlp\\.fc2$"};
    qd_cqw_options o = {0};
    o.type = QD_CQW_INT8_TENSORWISE;
    o.filters = filters;
    o.n_filters = 1;
    o.exclude = exclude;
    o.n_exclude = 1;
    char out[256], outl[256], lp[256];
    snprintf(out, sizeof out, "%s", scratch_path("filtered.safetensors"));
    qd_cqw_report rep;
    check(qd_cqw_write(ctx, src, out, &o, &rep) == QD_OK && rep.quantized == 2 && rep.copied == 8,
          "filters: flux2 preset and an exclude regex leave 2 layers quantized (%lld)", (long long)rep.quantized);
    qd_st_set st;
    if (qd_st_open(ctx, out, &st) == QD_OK) {
        check(!qd_st_find(&st, SRC "img_in.comfy_quant") && !qd_st_find(&st, SRC "blocks.0.mlp.fc2.comfy_quant") &&
                  qd_st_find(&st, SRC "blocks.0.mlp.fc1.comfy_quant"),
              "img_in and fc2 kept in high precision");
        qd_st_close(&st);
    }

    /* LoRA (kohya, LDM names) on fc1 (quantized) and the 3x3 conv (copied as F16) */
    enum { R = 4 };
    static uint16_t d1[R * FC1_K], u1[FC1_N * R], d2[R * 4 * 9], u2[8 * R];
    static float alpha1 = 2.0f, alpha2 = 4.0f;
    for (int i = 0; i < R * FC1_K; i++) d1[i] = qd_f32_to_f16(frand() * 0.1f);
    for (int i = 0; i < FC1_N * R; i++) u1[i] = qd_f32_to_f16(frand() * 0.1f);
    for (int i = 0; i < R * 36; i++) d2[i] = qd_f32_to_f16(frand() * 0.3f);
    for (int i = 0; i < 8 * R; i++) u2[i] = qd_f32_to_f16(frand() * 0.3f);
    qd_st_out lt[] = {
        {"lora_unet_blocks_0_mlp_fc1.lora_down.weight", QD_F16, 2, {R, FC1_K}, d1},
        {"lora_unet_blocks_0_mlp_fc1.lora_up.weight", QD_F16, 2, {FC1_N, R}, u1},
        {"lora_unet_blocks_0_mlp_fc1.alpha", QD_F32, 0, {0}, &alpha1},
        {"lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight", QD_F16, 4, {R, 4, 3, 3}, d2},
        {"lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight", QD_F16, 4, {8, R, 1, 1}, u2},
        {"lora_unet_input_blocks_1_0_in_layers_2.alpha", QD_F32, 0, {0}, &alpha2},
    };
    snprintf(lp, sizeof lp, "%s", scratch_path("lora.safetensors"));
    if (qd_st_write(ctx, lp, lt, 6, NULL) != QD_OK) check(0, "write lora: %s", qd_last_error(ctx));
    const char *paths[1] = {lp};
    float scale = 0.5f;
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, &scale, 1, 1.0f, &set) != QD_OK) { check(0, "lora: %s", qd_last_error(ctx)); return; }
    qd_cqw_options ol = {0};
    ol.type = QD_CQW_INT8_TENSORWISE;
    ol.lora = set;
    snprintf(outl, sizeof outl, "%s", scratch_path("merged.safetensors"));
    check(qd_cqw_write(ctx, src, outl, &ol, &rep) == QD_OK && rep.lora_merged == 2, "LoRA merged into 2 tensors while writing (%lld): %s",
          (long long)rep.lora_merged, qd_last_error(ctx));
    check(qd_lora_set_check(ctx, set) == QD_OK, "every LoRA pair matched");
    /* references: W + 0.5 * alpha/R * up.down, in double */
    static float want1[FC1_N * FC1_K];
    for (int o = 0; o < FC1_N; o++)
        for (int k = 0; k < FC1_K; k++) {
            double acc = 0;
            for (int r = 0; r < R; r++) acc += (double)qd_f16_to_f32(u1[o * R + r]) * qd_f16_to_f32(d1[r * FC1_K + k]);
            want1[o * FC1_K + k] = (float)(fc1[o * FC1_K + k] + 0.5 * 2.0 / R * acc);
        }
    if (qd_st_open(ctx, outl, &st) == QD_OK) {
        qd_cq_model m;
        if (qd_cq_open(ctx, &st, outl, &m) == QD_OK) {
            check_layer(ctx, outl, &st, &m, SRC "blocks.0.mlp.fc1", QD_CQW_INT8_TENSORWISE, 0, want1, FC1_N, FC1_K);
            qd_cq_close(&m);
        }
        const qd_st_tensor *c = get(&st, SRC "input_blocks.1.0.in_layers.2.weight", QD_F16, 4, 8, 4);
        if (c) {
            double worst = 0;
            for (int o = 0; o < 8; o++)
                for (int j = 0; j < 36; j++) {
                    double acc = 0;
                    for (int r = 0; r < R; r++) acc += (double)qd_f16_to_f32(u2[o * R + r]) * qd_f16_to_f32(d2[r * 36 + j]);
                    double ref = qd_f16_to_f32(conv[o * 36 + j]) + 0.5 * 4.0 / R * acc;
                    uint16_t h;
                    memcpy(&h, (const uint8_t *)c->data + 2 * (o * 36 + j), 2);
                    /* one fp16 rounding of the fp32 sum: half an ulp, 2^-11 relative */
                    worst = fmax(worst, fabs(qd_f16_to_f32(h) - ref) / fmax(fabs(ref), 6.1e-5) - 1.0 / 2048);
                }
            check(worst <= 1e-6, "merged 3x3 conv written back as F16 within fp16 rounding (excess %.3g)", worst);
        }
        qd_st_close(&st);
    }
    qd_lora_set_free(set);
}

static int qd_file_exists_test(const char *path) { return access(path, F_OK) == 0; }

static int dir_entries(void) {
    DIR *d = opendir(scratch_dir());
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void test_bad(qd_ctx *ctx, const char *src) {
    int before = dir_entries();
    qd_cqw_options o = {0};
    char out[256];
    snprintf(out, sizeof out, "%s", scratch_path("bad_out.safetensors"));
    o.type = QD_CQW_FLOAT8_E4M3FN;
    o.convrot = 1;
    check(qd_cqw_write(ctx, src, out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "int8_tensorwise only"),
          "ConvRot with fp8: %s", qd_last_error(ctx));
    o.type = QD_CQW_INT8_TENSORWISE;
    o.convrot_group = 128;
    check(qd_cqw_write(ctx, src, out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "power of 4"),
          "ConvRot group 128: %s", qd_last_error(ctx));
    o.convrot = 0;
    o.convrot_group = 0;
    const char *bad_filter[] = {"sdxl"};
    o.filters = bad_filter;
    o.n_filters = 1;
    check(qd_cqw_write(ctx, src, out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "unknown model filter 'sdxl'") &&
              strstr(qd_last_error(ctx), "flux2"),
          "unknown filter lists the valid ones: %s", qd_last_error(ctx));
    o.n_filters = 0;
    const char *bad_re[] = {"("};
    o.exclude = bad_re;
    o.n_exclude = 1;
    check(qd_cqw_write(ctx, src, out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "bad exclude pattern"),
          "bad regex: %s", qd_last_error(ctx));
    o.n_exclude = 0;
    check(qd_cqw_write(ctx, scratch_path("nope.safetensors"), out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "nope.safetensors"),
          "missing input: %s", qd_last_error(ctx));
    check(qd_cqw_write(ctx, scratch_path("out_int8_tensorwise.safetensors"), out, &o, NULL) != QD_OK &&
              strstr(qd_last_error(ctx), "already a comfy_quant"),
          "already quantized input: %s", qd_last_error(ctx));
    check(qd_cqw_write(ctx, src, scratch_path("no/such/dir/out.safetensors"), &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "no/such/dir"),
          "unwritable output: %s", qd_last_error(ctx));
    /* a LoRA naming a weight with a different shape fails mid-stream: nothing is left behind */
    static uint16_t d[2 * 7], u[FC1_N * 2];
    qd_st_out lt[] = {{"lora_unet_blocks_0_mlp_fc1.lora_down.weight", QD_F16, 2, {2, 7}, d},
                      {"lora_unet_blocks_0_mlp_fc1.lora_up.weight", QD_F16, 2, {FC1_N, 2}, u}};
    const char *lp = scratch_path("badlora.safetensors");
    qd_st_write(ctx, lp, lt, 2, NULL);
    before++;
    const char *paths[1] = {lp};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) == QD_OK) {
        o.lora = set;
        check(qd_cqw_write(ctx, src, out, &o, NULL) != QD_OK && strstr(qd_last_error(ctx), "does not fit"),
              "LoRA shape mismatch stops the write: %s", qd_last_error(ctx));
        qd_lora_set_free(set);
    }
    check(dir_entries() == before, "no output or temporary file left behind (%d entries, %d before)", dir_entries(), before);
}

static int cancel_after_first(void *user, int64_t done, int64_t total, const char *tensor, double elapsed) {
    int *calls = user;
    (*calls)++;
    return done > 0 && done < total;   /* stop after the first tensor */
}

/* The public entry: report JSON, dry run, refusing an existing output, bad dtype, cancel. */
static void test_public_api(qd_ctx *ctx, const char *src) {
    int before = dir_entries();
    qd_comfy_quant_params p;
    qd_comfy_quant_params_default(&p);
    p.weights_dtype = "float8_e4m3fn";
    p.dry_run = 1;
    char *json = NULL;
    check(qd_comfy_quantize(ctx, src, NULL, &p, &json) == QD_OK && json, "dry run: %s", qd_last_error(ctx));
    check(dir_entries() == before, "dry run writes nothing");
    cJSON *r = json ? cJSON_Parse(json) : NULL;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(r, "layers"), *tot = cJSON_GetObjectItemCaseSensitive(r, "totals");
    int nq = 0, nskip = 0;
    double worst = 0;
    const char *why_norm = NULL, *why_te = NULL;
    for (const cJSON *e = layers ? layers->child : NULL; e; e = e->next) {
        const cJSON *sk = cJSON_GetObjectItemCaseSensitive(e, "skipped"), *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (sk) {
            nskip++;
            if (strstr(nm->valuestring, "norm1")) why_norm = sk->valuestring;
            if (strstr(nm->valuestring, "cond_stage")) why_te = sk->valuestring;
        } else {
            nq++;
            worst = fmax(worst, cJSON_GetObjectItemCaseSensitive(e, "rel_error")->valuedouble);
        }
    }
    check(nq == 4 && nskip == 5, "report: 4 quantized layers and 5 skipped weights (%d, %d)", nq, nskip);
    check(why_norm && strstr(why_norm, "'norm'") && why_te && strstr(why_te, "text encoder"),
          "skip reasons: '%s', '%s'", why_norm ? why_norm : "-", why_te ? why_te : "-");
    /* fp8 keeps ~2^-4 relative error per element at worst; rel L2 well under it */
    check(worst > 0 && worst < 0.04, "per-layer rel_error of float8_e4m3fn in (0, 0.04): worst %.4f", worst);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(tot, "quantized"), *snr = cJSON_GetObjectItemCaseSensitive(tot, "snr_db");
    check(cJSON_IsNumber(q) && q->valuedouble == 4 && cJSON_IsNumber(snr) && snr->valuedouble > 28,
          "totals: 4 quantized, SNR %.1f dB", cJSON_IsNumber(snr) ? snr->valuedouble : 0);
    cJSON_Delete(r);
    qd_free(json);

    char out[256];
    snprintf(out, sizeof out, "%s", scratch_path("api.safetensors"));
    p.dry_run = 0;
    check(qd_comfy_quantize(ctx, src, out, &p, NULL) == QD_OK, "write through the API: %s", qd_last_error(ctx));
    check(qd_comfy_quantize(ctx, src, out, &p, NULL) != QD_OK && strstr(qd_last_error(ctx), "already exists"),
          "existing output refused: %s", qd_last_error(ctx));
    p.force = 1;
    check(qd_comfy_quantize(ctx, src, out, &p, NULL) == QD_OK, "replaced with force");
    p.weights_dtype = "int4";
    check(qd_comfy_quantize(ctx, src, out, &p, NULL) != QD_OK && strstr(qd_last_error(ctx), "'int4'") &&
              strstr(qd_last_error(ctx), "float8_e4m3fn_rowwise"),
          "unknown dtype lists the valid ones: %s", qd_last_error(ctx));
    p.weights_dtype = NULL;
    /* a LoRA naming no weight of the input: refused before anything is written */
    static uint16_t d[2 * 7], u[5 * 2];
    qd_st_out lt[] = {{"lora_unet_nothing_here.lora_down.weight", QD_F16, 2, {2, 7}, d},
                      {"lora_unet_nothing_here.lora_up.weight", QD_F16, 2, {5, 2}, u}};
    char lp[256], out3[256];
    snprintf(lp, sizeof lp, "%s", scratch_path("nomatch_lora.safetensors"));
    snprintf(out3, sizeof out3, "%s", scratch_path("nomatch_out.safetensors"));
    qd_st_write(ctx, lp, lt, 2, NULL);
    const char *lpaths[1] = {lp};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, lpaths, NULL, 1, 1.0f, &set) == QD_OK) {
        p.lora = set;
        check(qd_comfy_quantize(ctx, src, out3, &p, NULL) != QD_OK && strstr(qd_last_error(ctx), "0 of its 1 LoRA layers") &&
                  !qd_file_exists_test(out3),
              "LoRA matching nothing: refused, no output: %s", qd_last_error(ctx));
        p.lora = NULL;
        qd_lora_set_free(set);
    }
    int calls = 0;
    p.progress = cancel_after_first;
    p.progress_user = &calls;
    char out2[256];
    snprintf(out2, sizeof out2, "%s", scratch_path("cancelled.safetensors"));
    check(qd_comfy_quantize(ctx, src, out2, &p, NULL) == QD_ERR_CANCELLED && calls == 1 && !qd_file_exists_test(out2),
          "progress callback cancels; no output left (%d calls)", calls);
}

int main(void) {
    if (!scratch_make("cqw_test")) return test_summary();
    qd_ctx *ctx = test_ctx_new(2);
    static char src[256];
    snprintf(src, sizeof src, "%s", scratch_path("source.safetensors"));
    make_source(src);
    variant vs[] = {
        {"int8_tensorwise", QD_CQW_INT8_TENSORWISE, 0, 0, 1},
        {"int8_tensorwise", QD_CQW_INT8_TENSORWISE, 1, 0, 0},
        {"float8_e4m3fn", QD_CQW_FLOAT8_E4M3FN, 0, 1, 0},
        {"float8_e4m3fn_rowwise", QD_CQW_FLOAT8_E4M3FN_ROWWISE, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) test_variant(ctx, src, &vs[i]);
    test_filters_and_lora(ctx, src);
    test_bad(ctx, src);
    test_public_api(ctx, src);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
