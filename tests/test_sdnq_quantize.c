/* The SDNQ quantizer against sdnq itself: every fixtures/sdnq/layers case's
 * ref.weight_fp32 re-quantized with the case's own quantization_config. Without
 * SVD, Hadamard or codebook the stored tensors must equal sdnq's byte for byte;
 * with them (sdnq's SVD is randomized, its codebook init differs in rounding) the
 * dequantized weight's relative error against ref.weight_fp32 must be no worse
 * than sdnq's stored result's error + 1%. Also: the low-rank SVD against the
 * exact best rank-r error of a matrix with a known spectrum, and float encodes
 * that round-trip through the reader's decoder for every code. */
#include "testutil.h"
#include "base/ctx.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_pack.h"
#include "quant/sdnq_quantize.h"
#include "quant/sdnq_svd.h"
#include "quant/sdnq_unpack.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *names[] = {"weight", "scale", "zero_point", "svd_up", "svd_down"};

static double rel_err_vs(const float *a, const float *ref, int64_t n) {
    double e = 0, r = 0;
    for (int64_t i = 0; i < n; i++) { double d = (double)a[i] - ref[i]; e += d * d; r += (double)ref[i] * ref[i]; }
    return sqrt(e / r);
}

static void one_case(qd_ctx *ctx, const char *cname) {
    char rel[256], jpath[512], spath[512];
    snprintf(rel, sizeof rel, "sdnq/layers/%s.json", cname);
    snprintf(jpath, sizeof jpath, "%s", fixture(rel));
    snprintf(rel, sizeof rel, "sdnq/layers/%s.safetensors", cname);
    snprintf(spath, sizeof spath, "%s", fixture(rel));
    cJSON *root = NULL;
    if (qd_json_load(ctx, jpath, &root) != QD_OK) { check(0, "%s: load %s", cname, qd_last_error(ctx)); return; }
    cJSON *qc = cJSON_DetachItemFromObjectCaseSensitive(root, "quantization_config");
    int64_t out = qd_json_int(root, "out_features", 0), in = qd_json_int(root, "in_features", 0);
    cJSON_Delete(root);
    qd_sdnq_config *cfg = NULL;
    if (!qc || qd_sdnq_config_from_json(ctx, qc, jpath, &cfg) != QD_OK) { check(0, "%s: config", cname); return; }
    qd_st_set st;
    if (qd_st_open(ctx, spath, &st) != QD_OK) { check(0, "%s: %s", cname, qd_last_error(ctx)); qd_sdnq_config_free(cfg); return; }
    const qd_st_tensor *ref = qd_st_find(&st, "ref.weight_fp32");
    float *w = malloc(sizeof(float) * (size_t)(out * in));
    qd_st_to_f32(ref, 0, out * in, w);

    qd_sdnq_qspec spec;
    memset(&spec, 0, sizeof spec);
    int64_t shape[2] = {out, in};
    qd_sdnq_qresult r;
    int ok = qd_sdnq_layout_derive(ctx, cfg, "layer.weight", QD_SDNQ_LINEAR, 2, shape, &spec.l) == QD_OK;
    spec.model_dtype = QD_F32;
    spec.svd_steps = (int)qd_json_int(cfg->qc, "svd_steps", 8);
    spec.codebook_steps = (int)qd_json_int(cfg->qc, "codebook_steps", 24);
    spec.seed = 0;
    ok = ok && qd_sdnq_quantize(ctx, &spec, w, &r) == QD_OK;
    if (!ok) { check(0, "%s: quantize: %s", cname, qd_last_error(ctx)); goto out; }
    int exact = !spec.l.svd && !spec.l.hadamard && !spec.l.codebook;
    if (exact) {
        int same = 1;
        char why[256] = "";
        for (int i = 0; i < QD_SQ_NTENSORS; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layer.%s", names[i]);
            const qd_st_tensor *t = qd_st_find(&st, name);
            if (!t != !r.present[i]) { same = 0; snprintf(why, sizeof why, "%s present differs", names[i]); break; }
            if (!t) continue;
            int shp = t->ndim == r.t[i].ndim && t->dtype == r.t[i].dtype;
            for (int d = 0; shp && d < t->ndim; d++) shp = t->shape[d] == r.t[i].shape[d];
            if (!shp) { same = 0; snprintf(why, sizeof why, "%s dtype/shape differs", names[i]); break; }
            if (memcmp(t->data, r.t[i].data, t->nbytes)) {
                size_t diff = 0, first = (size_t)-1;
                for (size_t b = 0; b < t->nbytes; b++)
                    if (((const uint8_t *)t->data)[b] != ((const uint8_t *)r.t[i].data)[b]) { diff++; if (first == (size_t)-1) first = b; }
                same = 0;
                snprintf(why, sizeof why, "%s: %zu of %zu bytes differ (first at %zu)", names[i], diff, t->nbytes, first);
                break;
            }
        }
        check(same, "%s: stored tensors equal sdnq's bit for bit%s%s", cname, same ? "" : ": ", why);
    } else {
        const qd_st_tensor *dq = qd_st_find(&st, "ref.dequantized_weight");
        float *sd = malloc(sizeof(float) * (size_t)(out * in));
        qd_st_to_f32(dq, 0, out * in, sd);
        double e_sdnq = rel_err_vs(sd, w, out * in);
        check(r.rel_err <= e_sdnq * 1.01, "%s: weight error %.5f <= sdnq's %.5f + 1%%", cname, r.rel_err, e_sdnq);
        free(sd);
    }
    qd_sdnq_qresult_free(&r);
out:
    free(w);
    qd_st_close(&st);
    qd_sdnq_config_free(cfg);
}

/* W = U diag(s) V^T with s_k = 2^-k: the best rank-r error is known exactly. */
static void svd_known_spectrum(qd_ctx *ctx) {
    int m = 96, n = 80, k = 40, r = 8;
    float *W = calloc((size_t)(m * n), sizeof(float));
    /* orthonormal U, V columns: cosine basis vectors (exactly orthogonal in theory) */
    for (int t = 0; t < k; t++) {
        double s = pow(2.0, -0.5 * t);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double u = sqrt(2.0 / m) * cos(M_PI * (i + 0.5) * (t + 1) / m);
                double v = sqrt(2.0 / n) * cos(M_PI * (j + 0.5) * (t + 1) / n);
                W[i * n + j] += (float)(s * u * v);
            }
    }
    float *up = malloc(sizeof(float) * (size_t)(m * r)), *down = malloc(sizeof(float) * (size_t)(r * n));
    double best = 0, tot = 0;
    for (int t = 0; t < k; t++) { double s2 = pow(2.0, -1.0 * t); tot += s2; if (t >= r) best += s2; }
    int ok = qd_sdnq_svd_lowrank(ctx, W, m, n, r, 4, 1, up, down) == QD_OK;
    double e = 0;
    for (int i = 0; ok && i < m; i++)
        for (int j = 0; j < n; j++) {
            double a = W[i * n + j];
            for (int t = 0; t < r; t++) a -= (double)up[i * r + t] * down[t * n + j];
            e += a * a;
        }
    double rel = sqrt(e / tot), rel_best = sqrt(best / tot);
    check(ok && rel <= rel_best * 1.01 + 1e-6, "svd_lowrank: rank-%d error %.6f vs optimal %.6f (+1%%)", r, rel, rel_best);
    /* same seed, same factors */
    float *up2 = malloc(sizeof(float) * (size_t)(m * r)), *down2 = malloc(sizeof(float) * (size_t)(r * n));
    ok = qd_sdnq_svd_lowrank(ctx, W, m, n, r, 4, 1, up2, down2) == QD_OK;
    check(ok && !memcmp(up, up2, sizeof(float) * (size_t)(m * r)) && !memcmp(down, down2, sizeof(float) * (size_t)(r * n)),
          "svd_lowrank: deterministic for a seed");
    check(qd_sdnq_svd_lowrank(ctx, W, m, n, 81, 2, 1, up, down) == QD_ERR_UNSUPPORTED, "svd_lowrank: rank > min(m, n) refused");
    free(W); free(up); free(down); free(up2); free(down2);
}

/* Every code of the float types decodes (reader) and re-encodes to itself (writer). */
static void float_codes_roundtrip(void) {
    static const char *types[] = {"float8_e4m3fn", "float8_e5m2", "float16", "float8_e4m3fn_sdnq", "float6_e3m2fn",
                                  "float4_e2m1fn", "float5_e2m3fnu", "float7_e3m3fn", "float12_e5m6fn", "float3_e1m1fn"};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        qd_sdnq_dtype dt;
        if (qd_sdnq_dtype_parse(types[t], &dt) != 0) { check(0, "%s parses", types[t]); continue; }
        uint32_t ncodes = 1u << dt.bits, bad = 0, tested = 0;
        for (uint32_t c = 0; c < ncodes; c++) {
            float v;
            if (dt.family == QD_SQ_CFLOAT) v = qd_sdnq_cfloat_value(&dt, c);
            else {
                uint8_t buf[4] = {(uint8_t)c, (uint8_t)(c >> 8), 0, 0};
                qd_sdnq_unpack_f32(&dt, buf, 0, 1, &v);
            }
            if (v != v || isinf(v) || fabs(v) > dt.max) continue;
            if (v == 0 && c != 0) continue;   /* -0 */
            tested++;
            if (qd_sdnq_float_code(&dt, v) != c) bad++;
        }
        check(bad == 0 && tested > 0, "%s: %u codes decode and encode back (%u wrong)", types[t], tested, bad);
    }
}

/* Every type through qd_sdnq_quantize on a Gaussian 64 x 256 weight (auto group size):
 * the reader's decoder must give the weight back within the type's resolution,
 * 1.5 x 2^-(bits-1) for integers (a step of amax / (2^(bits-1) - 1) over groups
 * of Gaussians; uint1: 1) and 2^-mantissa for floats, not below fp32's 2e-7 (a
 * broken layout or packing gives errors of order 1). */
static void every_type(qd_ctx *ctx) {
    static const char *types[] = {
        "uint1", "int2", "uint2", "int3", "uint3", "int4", "uint4", "int5", "uint5", "int6", "uint6", "int7", "uint7",
        "int8", "uint8", "int9", "uint9", "int10", "uint11", "int12", "uint12", "int13", "uint14", "int15", "uint15",
        "int16", "uint16", "int32", "uint32", "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2",
        "float8_e4m3fn_sdnq", "float7_e3m3fn", "float6_e2m3fn", "float5_e2m2fn", "float4_e2m1fn", "float3_e1m1fn",
        "float2_e1m0fn", "float9_e4m4fn", "float12_e5m6fn", "float16_e5m10fn", "float1_e1m0fnu", "float4_e2m2fnu",
        "float8_e4m4fnu", "float11_e5m6fnu", "float16_e5m11fnu"};
    int64_t out = 64, in = 256, shape[2] = {64, 256};
    float *w = malloc(sizeof(float) * (size_t)(out * in));
    unsigned seed = 12345;
    for (int64_t i = 0; i < out * in; i++) {   /* Box-Muller from an LCG */
        seed = seed * 1103515245u + 12345u; double u1 = ((seed >> 8) + 1.0) / 16777217.0;
        seed = seed * 1103515245u + 12345u; double u2 = (seed >> 8) / 16777216.0;
        w[i] = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
    }
    int bad = 0;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        qd_sdnq_kwargs kw;
        memset(&kw, 0, sizeof kw);
        snprintf(kw.weights_dtype, sizeof kw.weights_dtype, "%s", types[t]);
        kw.hadamard_group_size = 256;
        qd_sdnq_qspec spec;
        memset(&spec, 0, sizeof spec);
        spec.model_dtype = QD_F32;
        qd_sdnq_qresult r;
        if (qd_sdnq_layout_derive_kw(ctx, &kw, 0, "test", "layer.weight", QD_SDNQ_LINEAR, 2, shape, &spec.l) != QD_OK ||
            qd_sdnq_quantize(ctx, &spec, w, &r) != QD_OK) {
            check(0, "%s: %s", types[t], qd_last_error(ctx));
            bad++;
            continue;
        }
        const qd_sdnq_dtype *d = &spec.l.dtype;
        int is_int = d->family == QD_SQ_INT || d->family == QD_SQ_UINT;
        double bound = is_int ? (d->bits > 1 ? 1.5 * ldexp(1.0, -(d->bits - 1)) : 1.0) : ldexp(1.0, -d->man_bits);
        if (bound < 2e-7) bound = 2e-7;   /* fp32 arithmetic */
        if (!(r.rel_err <= bound)) { check(0, "%s: rel error %.3g > %.3g", types[t], r.rel_err, bound); bad++; }
        qd_sdnq_qresult_free(&r);
    }
    check(bad == 0, "%zu types quantize and decode back within their resolution", sizeof types / sizeof *types);
    /* SVD rank above the weight's smaller side: stored without SVD, as sdnq does */
    qd_sdnq_kwargs kw;
    memset(&kw, 0, sizeof kw);
    snprintf(kw.weights_dtype, sizeof kw.weights_dtype, "uint4");
    kw.use_svd = 1;
    kw.svd_rank = 100;
    qd_sdnq_qspec spec;
    memset(&spec, 0, sizeof spec);
    spec.model_dtype = QD_F16;
    spec.svd_steps = 2;
    qd_sdnq_qresult r;
    int ok = qd_sdnq_layout_derive_kw(ctx, &kw, 0, "test", "layer.weight", QD_SDNQ_LINEAR, 2, shape, &spec.l) == QD_OK &&
             qd_sdnq_quantize(ctx, &spec, w, &r) == QD_OK;
    check(ok && !r.present[QD_SQ_SVD_UP] && !r.l.svd && r.rel_err < 0.15, "SVD rank 100 on 64 x 256: stored without SVD");
    if (ok) qd_sdnq_qresult_free(&r);
    free(w);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    char *idx = NULL;
    cJSON *root = NULL;
    if (qd_json_load(ctx, fixture("sdnq/layers/index.json"), &root) != QD_OK) { check(0, "index: %s", qd_last_error(ctx)); return test_summary(); }
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    int n = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next, n++) one_case(ctx, qd_json_str(c, "case", ""));
    check(n >= 20, "%d layer cases", n);
    cJSON_Delete(root);
    free(idx);
    svd_known_spectrum(ctx);
    every_type(ctx);
    float_codes_roundtrip();
    qd_ctx_free(ctx);
    return test_summary();
}
