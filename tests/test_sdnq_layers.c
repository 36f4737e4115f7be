/* SDNQ layers: every fixture case (quantized by sdnq itself) decoded and run
 * through qd_linear against sdnq's own dequantization and output; the spec's bit
 * layouts, float codes, name rules and layout derivation; and doctored layers
 * that must fail with a message naming the layer, never crash. */
#include "testutil.h"
#include "base/ctx.h"
#include "io/safetensors.h"
#include "models/params.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"
#include "quant/sdnq_unpack.h"
#include "quant/sdnq_weight.h"
#include "quant/sdnq_matmul.h"
#include "quant/int8_gemm.h"
#include "quant/hadamard.h"
#include "tensor/ops.h"
#include "tensor/gemm.h"
#include "tensor/lora_path.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); return; }
    fputs(text, f);
    fclose(f);
}

/* ---- fixture cases ---- */

typedef struct {
    qd_st_set st;
    qd_sdnq_config *cfg;
    qd_weight w;
    void *state;
    int64_t out, in, M;
    float *ref_w, *ref_out, *x, *bias;
} layer_case;

static int case_open(qd_ctx *ctx, const char *name, layer_case *c) {
    char path[512], jpath[512];
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s", fixture("sdnq/layers/"));
    snprintf(jpath, sizeof jpath, "%s%s.json", path, name);
    strncat(path, name, sizeof path - strlen(path) - 20);
    strcat(path, ".safetensors");
    int64_t shape[8];
    int nd;
    c->ref_w = load_f32(path, "ref.dequantized_weight", shape, &nd, NULL);
    c->out = shape[0];
    c->in = shape[1];
    c->x = load_f32(path, "ref.input", shape, &nd, NULL);
    c->M = shape[0];
    c->ref_out = load_f32(path, "ref.output", NULL, NULL, NULL);
    c->bias = load_f32(path, "model.layer.bias", NULL, NULL, NULL);
    if (!c->ref_w || !c->x || !c->ref_out || !c->bias) return 0;
    if (qd_sdnq_config_load_file(ctx, jpath, &c->cfg) != QD_OK || qd_st_open(ctx, path, &c->st) != QD_OK) {
        printf("  %s\n", qd_last_error(ctx));
        return 0;
    }
    int64_t ws[2] = {c->out, c->in};
    if (qd_sdnq_weight_open(ctx, c->cfg, &c->st, "model.layer", "layer", QD_SDNQ_LINEAR, 2, ws, &c->w, &c->state) != QD_OK) {
        printf("  %s\n", qd_last_error(ctx));
        return 0;
    }
    return 1;
}

static void case_close(layer_case *c) {
    free(c->state);
    if (c->st.n_files) qd_st_close(&c->st);
    qd_sdnq_config_free(c->cfg);
    free(c->ref_w); free(c->ref_out); free(c->x); free(c->bias);
}

/* y[m, j] = sum_k x[m, k] (W[rows(j), k0 + k]) in double, W = ref_w (+ B.A when given):
 * the reference of a GEMM over a weight view (rows(j): run a for j < n, run b after). */
static void ref_view_gemm(const layer_case *c, const float *A, const float *B, int64_t R, int64_t ra, int64_t rb,
                          int64_t n, int64_t k0, int64_t nk, const float *x, int64_t ldx, double *y) {
    int64_t N = rb >= 0 ? 2 * n : n;
    for (int64_t m = 0; m < c->M; m++)
        for (int64_t j = 0; j < N; j++) {
            int64_t row = j < n ? ra + j : rb + j - n;
            double acc = 0;
            for (int64_t k = 0; k < nk; k++) {
                double wv = c->ref_w[row * c->in + k0 + k];
                if (A)
                    for (int64_t t = 0; t < R; t++) wv += (double)B[row * R + t] * A[t * c->in + k0 + k];
                acc += (double)x[m * ldx + k] * wv;
            }
            y[m * N + j] = acc;
        }
}

static double rel_l2_d(const float *y, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* An SVD layer through the GEMM's low-rank side path (tensor/gemm_lowrank.c, forced with
 * QD_LOWRANK=1), stacked under the weight in the main GEMM where the weight is A
 * (QD_LOWRANK=2; elsewhere the side path) and through the fold (QD_LOWRANK=0): the whole weight, a two-run view of
 * rows and columns (the UNet feed-forward's split), both roles (weight as B: a linear;
 * as A: C = W . X^T), and with a LoRA delta attached (the side path must not drop it:
 * decode_base is off while attached). Reference: double-precision products with sdnq's
 * dequantized weight. Tolerance 1e-5 relative L2 (fp32 context). */
static void lowrank_case(qd_ctx *ctx, const char *name, layer_case *c) {
    if (c->state && ((qd_sdnq_state *)c->state)->l.hadamard) {
        check(!c->w.decode_base, "%s: no side path with a Hadamard rotation", name);
        return;
    }
    check(c->w.decode_base && c->w.lr_rank > 0, "%s: SVD layer offers its low-rank term to the GEMM", name);
    int64_t M = c->M, out = c->out, in = c->in;
    int64_t n = out / 4, ra = 1, rb = out / 2, k0 = in / 3, nk = in - in / 3 - 1;
    float *y = malloc(sizeof(float) * (size_t)(M * out * 2));
    double *ref = malloc(sizeof(double) * (size_t)(M * out * 2));
    float *xt = malloc(sizeof(float) * (size_t)(M * in));
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < in; k++) xt[k * M + m] = c->x[m * in + k];
    for (int forced = 0; forced <= 2; forced++) {
        setenv("QD_LOWRANK", forced == 2 ? "2" : forced ? "1" : "0", 1);
        const char *how = forced == 2 ? "stacked rows" : forced ? "side path" : "fold";
        /* whole weight as B */
        ref_view_gemm(c, NULL, NULL, 0, 0, -1, out, 0, in, c->x, in, ref);
        qd_gemm(ctx, M, out, in, qd_rows(c->x, in), qd_wmat(&c->w), y, out, 1.0f, 0.0f, NULL, NULL);
        double r = rel_l2_d(y, ref, M * out);
        check(r <= 1e-5, "%s: GEMM (%s) vs double reference: rel_l2 %.3g (tol 1e-5)", name, how, r);
        /* a two-run view as B, accumulating onto C = 1 (beta 1) */
        qd_weight v;
        qd_weight_view(&v, &c->w, ra, rb, n, k0, nk);
        ref_view_gemm(c, NULL, NULL, 0, ra, rb, n, k0, nk, c->x + k0, in, ref);
        for (int64_t i = 0; i < M * 2 * n; i++) { y[i] = 1.0f; ref[i] += 1.0; }
        qd_gemm(ctx, M, 2 * n, nk, qd_rows(c->x + k0, in), qd_wmat(&v), y, 2 * n, 1.0f, 1.0f, NULL, NULL);
        r = rel_l2_d(y, ref, M * 2 * n);
        check(r <= 1e-5, "%s: GEMM over a two-run view (%s) vs double reference: rel_l2 %.3g (tol 1e-5)", name, how, r);
        /* the weight as A: C[out, M] = W . X^T + row bias (a convolution's role), alpha 0.5,
         * beta 1 onto C = 1 */
        ref_view_gemm(c, NULL, NULL, 0, 0, -1, out, 0, in, c->x, in, ref);
        for (int64_t i = 0; i < out * M; i++) y[i] = 1.0f;
        qd_gemm(ctx, out, M, in, qd_wmat(&c->w), qd_cols(xt, M), y, M, 0.5f, 1.0f, c->bias, NULL);
        double num = 0, den = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t o = 0; o < out; o++) {
                double d = y[o * M + m] - 1.0 - c->bias[o] - 0.5 * ref[m * out + o];
                num += d * d;
                den += 0.25 * ref[m * out + o] * ref[m * out + o];
            }
        r = sqrt(num / den);
        check(r <= 1e-5, "%s: GEMM with the weight as A (%s) vs double reference: rel_l2 %.3g (tol 1e-5)", name, how, r);
    }
    /* LoRA attached: with the side path forced, the delta must still be in the product */
    const int64_t R = 3;
    float *A = malloc(sizeof(float) * (size_t)(R * in)), *B = malloc(sizeof(float) * (size_t)(out * R));
    uint32_t seed = 7;
    for (int64_t i = 0; i < R * in; i++) { seed = seed * 1664525u + 1013904223u; A[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.2f; }
    for (int64_t i = 0; i < out * R; i++) { seed = seed * 1664525u + 1013904223u; B[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.2f; }
    ref_view_gemm(c, A, B, R, 0, -1, out, 0, in, c->x, in, ref);
    float *Ac = malloc(sizeof(float) * (size_t)(R * in)), *Bc = malloc(sizeof(float) * (size_t)(out * R));
    memcpy(Ac, A, sizeof(float) * (size_t)(R * in));
    memcpy(Bc, B, sizeof(float) * (size_t)(out * R));
    setenv("QD_LOWRANK", "1", 1);
    if (qd_lora_delta_attach(ctx, &c->w, Ac, Bc, R) == QD_OK) {
        qd_gemm(ctx, M, out, in, qd_rows(c->x, in), qd_wmat(&c->w), y, out, 1.0f, 0.0f, NULL, NULL);
        double r = rel_l2_d(y, ref, M * out);
        check(r <= 1e-5, "%s: GEMM with a LoRA attached, side path asked for, vs double reference: rel_l2 %.3g (tol 1e-5)",
              name, r);
        qd_lora_delta_detach(&c->w);
        check(c->w.decode_base != NULL, "%s: detaching the LoRA gives the side path back", name);
    } else {
        check(0, "%s: attach a LoRA", name);
    }
    unsetenv("QD_LOWRANK");
    free(A); free(B); free(y); free(ref); free(xt);
}

static void run_case(qd_ctx *ctx, const char *name) {
    layer_case c;
    if (!case_open(ctx, name, &c)) {
        check(0, "%s: open", name);
        case_close(&c);
        return;
    }
    const qd_sdnq_state *s = c.state;
    check(!s->l.adjusted, "%s: the layout derived from the config matches the file (%s, %s, G=%lld%s%s%s%s)", name,
          s->l.dtype.name, s->l.transposed ? "transposed" : s->l.grouping == QD_SDNQ_GROUPED ? "grouped" :
          s->l.grouping == QD_SDNQ_ROWWISE ? "row-wise" : "tensor-wise", (long long)s->l.groups,
          s->l.svd ? ", svd" : "", s->l.codebook ? ", codebook" : "", s->l.hadamard ? ", hadamard" : "",
          s->l.zero_point ? ", zero point" : "");
    size_t n = (size_t)(c.out * c.in);
    float *full = malloc(sizeof(float) * n);
    c.w.decode(&c.w, 0, c.out, 0, c.in, full, c.in);
    double r = rel_l2(full, c.ref_w, n);
    check(r <= 1e-6, "%s: dequantized weight vs sdnq: rel_l2 %.3g (tol 1e-6)", name, r);

    /* any sub-rectangle decodes to exactly the same numbers as the full matrix */
    int64_t rects[][4] = {{3, 7, 5, 77}, {c.out - 1, 1, c.in - 13, 13}, {10, 20, 100, 1}, {0, c.out, 31, 130}};
    int same = 1;
    for (size_t i = 0; i < sizeof rects / sizeof *rects; i++) {
        int64_t r0 = rects[i][0], nr = rects[i][1], k0 = rects[i][2], nk = rects[i][3];
        float *part = malloc(sizeof(float) * (size_t)(nr * nk));
        c.w.decode(&c.w, r0, nr, k0, nk, part, nk);
        for (int64_t a = 0; a < nr; a++)
            if (memcmp(part + a * nk, full + (r0 + a) * c.in + k0, sizeof(float) * (size_t)nk)) same = 0;
        free(part);
    }
    check(same, "%s: sub-rectangle decodes equal the full decode bit for bit", name);

    float *y = malloc(sizeof(float) * (size_t)(c.M * c.out));
    qd_linear(ctx, c.x, c.M, &c.w, c.bias, y);
    r = rel_l2(y, c.ref_out, (size_t)(c.M * c.out));
    check(r <= 1e-5, "%s: qd_linear output vs sdnq: rel_l2 %.3g (tol 1e-5)", name, r);
    free(y);
    free(full);
    if (s->l.svd) lowrank_case(ctx, name, &c);
    case_close(&c);
}

static void test_fixture_cases(qd_ctx *ctx) {
    char *text = test_read_file(fixture("sdnq/layers/index.json"), NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    int count = 0;
    for (const cJSON *e = cases ? cases->child : NULL; e; e = e->next) {
        const cJSON *name = cJSON_GetObjectItem(e, "case");
        if (cJSON_IsString(name)) { run_case(ctx, name->valuestring); count++; }
    }
    check(count >= 20, "ran %d fixture cases from index.json", count);
    cJSON_Delete(root);
    free(text);
}

/* ---- §1.6 bit layouts: a packer transcribed from the spec's table vs the unpacker ---- */

static void spec_pack(int n, const uint32_t *e, uint32_t *w) {
    int j;
    switch (n) {
    case 1: w[0] = 0; for (j = 0; j < 8; j++) w[0] |= e[j] << j; break;
    case 2: w[0] = 0; for (j = 0; j < 4; j++) w[0] |= e[j] << (2 * j); break;
    case 3:
        for (j = 0; j < 2; j++) w[j] = e[j] | e[j + 3] << 3 | (e[j + 6] & 3) << 6;
        w[2] = e[2] | e[5] << 3 | ((e[6] >> 2) & 1) << 6 | ((e[7] >> 2) & 1) << 7;
        break;
    case 4: w[0] = e[0] | e[1] << 4; break;
    case 5:
        for (j = 0; j < 3; j++) w[j] = e[j] | (e[5 + j] & 7) << 5;
        w[3] = e[3] | ((e[5] >> 3) & 3) << 5 | ((e[7] >> 4) & 1) << 7;
        w[4] = e[4] | ((e[6] >> 3) & 3) << 5 | ((e[7] >> 3) & 1) << 7;
        break;
    case 6: for (j = 0; j < 3; j++) w[j] = e[j] | ((e[3] >> (4 - 2 * j)) & 3) << 6; break;
    case 7: for (j = 0; j < 7; j++) w[j] = e[j] | ((e[7] >> (6 - j)) & 1) << 7; break;
    case 9:
        w[8] = 0;
        for (j = 0; j < 8; j++) { w[j] = e[j] | (e[8 + j] & 127) << 9; w[8] |= ((e[8 + j] >> 7) & 3) << (2 * j); }
        break;
    case 10:
        for (j = 0; j < 3; j++) w[j] = e[j] | (e[5 + j] & 63) << 10;
        w[3] = e[3] | ((e[5] >> 6) & 15) << 10 | ((e[7] >> 8) & 3) << 14;
        w[4] = e[4] | ((e[6] >> 6) & 15) << 10 | ((e[7] >> 6) & 3) << 14;
        break;
    case 11:
        for (j = 0; j < 8; j++) w[j] = e[j] | (e[8 + j] & 31) << 11;
        w[8] = ((e[8] >> 5) & 63) | ((e[11] >> 5) & 63) << 6 | ((e[14] >> 5) & 15) << 12;
        w[9] = ((e[9] >> 5) & 63) | ((e[12] >> 5) & 63) << 6 | ((e[15] >> 5) & 15) << 12;
        w[10] = ((e[10] >> 5) & 63) | ((e[13] >> 5) & 63) << 6 | ((e[14] >> 9) & 3) << 12 | ((e[15] >> 9) & 3) << 14;
        break;
    case 12: for (j = 0; j < 3; j++) w[j] = e[j] | ((e[3] >> (8 - 4 * j)) & 15) << 12; break;
    case 13:
        for (j = 0; j < 12; j++) w[j] = e[j] | ((e[13 + j % 3] >> (3 * (j / 3))) & 7) << 13;
        w[12] = e[12] | ((e[13] >> 12) & 1) << 13 | ((e[14] >> 12) & 1) << 14 | ((e[15] >> 12) & 1) << 15;
        break;
    case 14: for (j = 0; j < 7; j++) w[j] = e[j] | ((e[7] >> (12 - 2 * j)) & 3) << 14; break;
    case 15: for (j = 0; j < 15; j++) w[j] = e[j] | ((e[15] >> (14 - j)) & 1) << 15; break;
    }
}

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }

static void test_bit_layouts(void) {
    for (int n = 1; n <= 15; n++) {
        if (n == 8) continue;
        char name[16];
        snprintf(name, sizeof name, "uint%d", n);
        qd_sdnq_dtype d;
        if (qd_sdnq_dtype_parse(name, &d) != 0) { check(0, "parse %s", name); continue; }
        int K = d.block_codes, P = d.block_words, nblk = 7, total = K * nblk;
        uint32_t e[16 * 7], w[16];
        uint8_t bytes[2 * 16 * 7];
        uint32_t seed = (uint32_t)n * 77u;
        for (int i = 0; i < total; i++) e[i] = lcg(&seed) & ((1u << n) - 1);
        for (int i = 0; i < 4; i++) e[i] = (1u << n) - 1;    /* all-ones codes exercise every bit */
        for (int b = 0; b < nblk; b++) {
            spec_pack(n, e + b * K, w);
            for (int j = 0; j < P; j++) {
                if (d.word_bytes == 1) bytes[b * P + j] = (uint8_t)w[j];
                else { bytes[2 * (b * P + j)] = (uint8_t)w[j]; bytes[2 * (b * P + j) + 1] = (uint8_t)(w[j] >> 8); }
            }
        }
        int ok = 1;
        int32_t got[16 * 7];
        for (int start = 0; start < total && ok; start += 3)        /* every start offset, odd lengths */
            for (int len = 1; start + len <= total && ok; len += 5) {
                qd_sdnq_unpack_int(&d, bytes, start, len, got);
                for (int i = 0; i < len; i++) if ((uint32_t)got[i] != e[start + i]) ok = 0;
            }
        /* the signed twin stores q + 2^(N-1) in the same bits */
        if (n >= 2) {
            snprintf(name, sizeof name, "int%d", n);
            qd_sdnq_dtype ds;
            qd_sdnq_dtype_parse(name, &ds);
            float f[16 * 7];
            qd_sdnq_unpack_f32(&ds, bytes, 0, total, f);
            for (int i = 0; i < total; i++) if (f[i] != (float)((int32_t)e[i] - (1 << (n - 1)))) ok = 0;
        }
        check(ok, "%d-bit layout: %d codes -> %d %s words round-trip from any offset (spec table packer)", n, K, P,
              d.word_bytes == 1 ? "byte" : "16-bit");
    }
}

static void test_dtypes(void) {
    qd_sdnq_dtype d;
    int ok = qd_sdnq_dtype_parse("float8_e4m3fn_sdnq", &d) == 0 && d.family == QD_SQ_CFLOAT && d.max == 480.0 &&
             d.storage == QD_U8 && !d.packed && qd_sdnq_cfloat_value(&d, 0x7f) == 480.0f && qd_sdnq_cfloat_value(&d, 0xff) == -480.0f;
    check(ok, "float8_e4m3fn_sdnq: custom, max 480 (code 0x7f), stored raw as U8");
    ok = qd_sdnq_dtype_parse("fp4", &d) == 0 && strcmp(d.name, "float4_e2m1fn") == 0 && d.max == 6.0 &&
         qd_sdnq_cfloat_value(&d, 7) == 6.0f && qd_sdnq_cfloat_value(&d, 1) == 0.5f &&
         !signbit(qd_sdnq_cfloat_value(&d, 8)) && qd_sdnq_cfloat_value(&d, 9) == -0.5f && d.packed && d.block_codes == 2;
    check(ok, "fp4 = float4_e2m1fn: max 6, subnormal 0.5, -0 decodes as +0, packed like uint4");
    ok = qd_sdnq_dtype_parse("ufp1", &d) == 0 && !d.is_signed && d.bits == 1 && qd_sdnq_cfloat_value(&d, 1) == 2.0f &&
         d.storage == QD_BOOL;
    check(ok, "ufp1 = float1_e1m0fnu (stored like uint1 in BOOL)");
    ok = qd_sdnq_dtype_parse("float16_e5m10fn", &d) == 0 && d.storage == QD_U16 && !d.packed &&
         qd_sdnq_cfloat_value(&d, 0x3c00) == 1.0f && qd_sdnq_cfloat_value(&d, 0x7fff) == 131008.0f;
    check(ok, "float16_e5m10fn: raw U16 codes, every exponent finite (max 131008)");
    ok = qd_sdnq_dtype_parse("fp9", &d) == 0 && strcmp(d.name, "float9_e4m4fn") == 0 && d.storage == QD_I16 &&
         d.block_codes == 16 && d.block_words == 9;
    check(ok, "fp9 = float9_e4m4fn, packed like uint9 in I16 words");
    ok = qd_sdnq_dtype_parse("int8", &d) == 0 && d.storage == QD_I8 && !d.custom &&
         qd_sdnq_dtype_parse("uint16", &d) == 0 && d.storage == QD_U16 &&
         qd_sdnq_dtype_parse("int12", &d) == 0 && d.packed && d.storage == QD_I16 &&
         qd_sdnq_dtype_parse("bool", &d) == 0 && strcmp(d.name, "uint1") == 0 &&
         qd_sdnq_dtype_parse("fp8", &d) == 0 && d.family == QD_SQ_FLOAT && d.storage == QD_F8_E4M3;
    check(ok, "native and packed integer names, aliases bool/fp8");
    check(qd_sdnq_dtype_parse("int99", &d) == -1 && qd_sdnq_dtype_parse("float7_e3m3fnx", &d) == -1 &&
          qd_sdnq_dtype_parse("float5_e2m3fn", &d) == -1 && qd_sdnq_dtype_parse("int1", &d) == 0 &&
          qd_sdnq_dtype_parse("float8_e8m0fnu", &d) == -2,
          "unknown names rejected (int99, bad suffix, N != 1+E+M); e8m0fnu recognised as unsupported");
    int8_t nat[4] = {-128, -1, 0, 127};
    float f[4];
    qd_sdnq_dtype_parse("int8", &d);
    qd_sdnq_unpack_f32(&d, nat, 0, 4, f);
    check(f[0] == -128 && f[1] == -1 && f[2] == 0 && f[3] == 127, "native int8 is two's complement");
}

static void test_name_matching(void) {
    check(qd_sdnq_name_matches(".proj_out", "proj_out.weight") && !qd_sdnq_name_matches(".proj_out", "blocks.0.proj_out.weight"),
          "'.proj_out' matches proj_out.weight at the root only");
    check(qd_sdnq_name_matches("time_text_embed", "time_text_embed.linear_1.weight") &&
          qd_sdnq_name_matches("norm_out", "a.norm_out.b.weight") && !qd_sdnq_name_matches("norm", "a.norm_out.weight") &&
          qd_sdnq_name_matches("a.b.weight", "a.b.weight") && !qd_sdnq_name_matches("a.b", "x.a.b.weight"),
          "plain entries: the full name or one dot-separated component");
    check(qd_sdnq_name_matches("transformer_blocks.*.attn", "transformer_blocks.3.attn.to_q.weight") &&
          !qd_sdnq_name_matches("transformer_blocks.*.attn", "single_transformer_blocks.3.attn.to_q.weight") &&
          qd_sdnq_name_matches("*attn*", "blocks.0.attn.weight") && qd_sdnq_name_matches("blocks*", "blocks.weight") &&
          !qd_sdnq_name_matches("blocks.*", "blocks") && qd_sdnq_name_matches("a.c*", "abc.weight"),
          "'*' entries: anchored at the start, '.*' = literal dot then anything, other '.' any character");
}

/* ---- §1.4 derivation on the spec's own examples ---- */

static int derive(qd_ctx *ctx, const char *qc_json, qd_sdnq_class cls, int ndim, const int64_t *shape, const char *param,
                  qd_sdnq_layout *l) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/qd_sdnq_cfg_%d.json", (int)getpid());
    write_text(path, qc_json);
    qd_sdnq_config *cfg = NULL;
    qd_status st = qd_sdnq_config_load_file(ctx, path, &cfg);
    if (st == QD_OK) st = qd_sdnq_layout_derive(ctx, cfg, param, cls, ndim, shape, l);
    qd_sdnq_config_free(cfg);
    unlink(path);
    if (st != QD_OK) printf("  %s\n", qd_last_error(ctx));
    return st == QD_OK;
}

static void test_derivation(qd_ctx *ctx) {
    qd_sdnq_layout l;
    int64_t flux[2] = {3072, 3072}, odd[2] = {64, 4304}, emb[2] = {1000, 256}, conv[4] = {64, 256, 3, 3};
    int ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"use_svd\":true,\"svd_rank\":32}",
                    QD_SDNQ_LINEAR, 2, flux, "transformer_blocks.0.attn.to_q.weight", &l) &&
             l.grouping == QD_SDNQ_GROUPED && l.group_size == 128 && l.groups == 24 && l.zero_point && l.svd && !l.svd_transposed;
    check(ok, "FLUX to_q 3072x3072 uint4+SVD: group 128, G=24, zero point");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"group_size\":64}", QD_SDNQ_LINEAR, 2, odd, "x.weight", &l) &&
         l.groups == 16 && l.group_size == 269;
    check(ok, "in=4304 with group_size 64 searches down to G=16, group 269");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"int8\"}", QD_SDNQ_LINEAR, 2, flux, "x.weight", &l) &&
         l.grouping == QD_SDNQ_GROUPED && l.group_size == 1024 && l.groups == 3 && !l.transposed;
    check(ok, "int8 Linear without quantized matmul: auto group 1024 (G=3 for in=3072)");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"int8\",\"use_quantized_matmul\":true}", QD_SDNQ_LINEAR, 2,
                flux, "x.weight", &l) && l.grouping == QD_SDNQ_ROWWISE && l.transposed && l.qmm && !l.requant;
    check(ok, "int8 Linear with quantized matmul: row-wise, stored transposed");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"quant_embedding\":true,\"use_quantized_matmul\":true}",
                QD_SDNQ_EMBEDDING, 2, emb, "wte.weight", &l) && l.group_size == 32 && !l.qmm;
    check(ok, "uint4 Embedding: group 32, never quantized matmul");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"quant_conv\":true}", QD_SDNQ_CONV, 4, conv,
                "conv.weight", &l) && l.group_size == 32 && l.groups == 8 && l.ksize == 9 && l.cols == 2304;
    check(ok, "uint4 Conv 3x3: group 32 over input channels, 9 kernel positions");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"use_hadamard\":true,\"hadamard_group_size\":256}",
                QD_SDNQ_LINEAR, 2, odd, "x.weight", &l) && l.hadamard && l.hadamard_size == 16;
    check(ok, "Hadamard block for in=4304: next_pow2(256) halved until it divides -> 16");
    ok = derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"modules_dtype_dict\":{\"int5\":[\"ff\"],"
                "\"minimum_6bit\":[\"attn\"]},\"modules_quant_config\":{\".proj\":{\"group_size\":-1}}}",
                QD_SDNQ_LINEAR, 2, flux, "blocks.0.ff.net.weight", &l) && strcmp(l.dtype.name, "int5") == 0;
    ok = ok && derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"modules_dtype_dict\":{\"int5\":[\"ff\"],"
                      "\"minimum_6bit\":[\"attn\"]}}", QD_SDNQ_LINEAR, 2, flux, "blocks.0.attn.to_q.weight", &l) &&
         strcmp(l.dtype.name, "int6") == 0;
    ok = ok && derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"uint4\",\"modules_dtype_dict\":{"
                      "\"minimum_uint4bits\":[\"attn\"]}}", QD_SDNQ_LINEAR, 2, flux, "blocks.0.attn.to_q.weight", &l) &&
         strcmp(l.dtype.name, "uint4") == 0;
    ok = ok && derive(ctx, "{\"quant_method\":\"sdnq\",\"weights_dtype\":\"int8\",\"modules_quant_config\":{\".proj\":"
                      "{\"group_size\":-2,\"weights_dtype\":\"int6\"}}}", QD_SDNQ_LINEAR, 2, flux, "proj.weight", &l) &&
         l.grouping == QD_SDNQ_TENSORWISE && strcmp(l.dtype.name, "int6") == 0;
    check(ok, "modules_dtype_dict (dtype and minimum-bit keys) and modules_quant_config resolve per layer");
}

/* ---- bad input: doctored layers in a temporary component folder ---- */

#define LAYER "blocks.0.proj"

typedef struct { char dir[256]; } tmpdir;

static void tmp_make(tmpdir *d, const char *tag) {
    snprintf(d->dir, sizeof d->dir, "/tmp/qd_sdnq_%d_%s", (int)getpid(), tag);
    mkdir(d->dir, 0700);
}

static void tmp_remove(tmpdir *d) {
    char p[512];
    const char *files[] = {"model.safetensors", "quantization_config.json", "config.json"};
    for (int i = 0; i < 3; i++) { snprintf(p, sizeof p, "%s/%s", d->dir, files[i]); unlink(p); }
    rmdir(d->dir);
}

/* A layer folder from a fixture case's tensors, renamed to LAYER.*, with some doctored. */
typedef struct { const char *suffix; qd_dtype dtype; int ndim; int64_t shape[4]; int drop; int transpose; } doctor;

static int build_layer_dir(qd_ctx *ctx, tmpdir *d, const char *case_name, const char *config, const doctor *docs, int n_docs) {
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s%s.safetensors", fixture("sdnq/layers/"), case_name);
    qd_st_set st;
    if (qd_st_open(ctx, src, &st) != QD_OK) return 0;
    qd_st_out outs[8];
    char names[8][64];
    void *bufs[8] = {0};
    int n = 0;
    for (int64_t i = 0; i < st.n_tensors && n < 8; i++) {
        const qd_st_tensor *t = &st.tensors[i];
        if (strncmp(t->name, "model.layer.", 12) != 0) continue;
        const char *suffix = t->name + 12;
        qd_st_out o;
        memset(&o, 0, sizeof o);
        snprintf(names[n], sizeof names[n], "%s.%s", LAYER, suffix);
        o.name = names[n];
        o.dtype = t->dtype;
        o.ndim = t->ndim;
        memcpy(o.shape, t->shape, sizeof o.shape);
        o.data = t->data;
        int dropped = 0;
        for (int k = 0; k < n_docs; k++) {
            if (strcmp(docs[k].suffix, suffix) != 0) continue;
            if (docs[k].drop) { dropped = 1; break; }
            if (docs[k].transpose) {   /* store the 2-D tensor transposed, as quantized matmul does */
                size_t es = qd_dtype_size(t->dtype);
                int64_t a = t->shape[0], b = t->shape[1];
                bufs[n] = malloc(t->nbytes + 1);
                for (int64_t i = 0; i < a; i++)
                    for (int64_t j = 0; j < b; j++)
                        memcpy((char *)bufs[n] + (j * a + i) * es, (const char *)t->data + (i * b + j) * es, es);
                o.shape[0] = b;
                o.shape[1] = a;
                o.data = bufs[n];
                continue;
            }
            o.dtype = docs[k].dtype;
            o.ndim = docs[k].ndim;
            memcpy(o.shape, docs[k].shape, sizeof docs[k].shape);
            int64_t numel = 1;
            for (int a = 0; a < o.ndim; a++) numel *= o.shape[a];
            size_t bytes = (size_t)numel * qd_dtype_size(o.dtype);
            bufs[n] = calloc(1, bytes + 1);
            memcpy(bufs[n], t->data, bytes < t->nbytes ? bytes : t->nbytes);
            o.data = bufs[n];
        }
        if (!dropped) outs[n++] = o;
    }
    snprintf(dst, sizeof dst, "%s/model.safetensors", d->dir);
    qd_status s = qd_st_write(ctx, dst, outs, n, NULL);
    for (int i = 0; i < 8; i++) free(bufs[i]);
    qd_st_close(&st);
    if (config) {
        snprintf(dst, sizeof dst, "%s/quantization_config.json", d->dir);
        write_text(dst, config);
    }
    return s == QD_OK;
}

/* Open the folder as a component and load LAYER as out x in: expect failure naming layer and folder. */
static void expect_layer_error(qd_ctx *ctx, tmpdir *d, int64_t out, int64_t in, const char *what, const char *needle) {
    qd_params p;
    qd_status st = qd_params_open(ctx, d->dir, "test", &p);
    if (st == QD_OK) {
        qd_linear_p lin;
        st = qd_p_linear(&p, &lin, out, in, QD_BIAS, "%s", LAYER);
        qd_params_close(&p);
    }
    const char *err = qd_last_error(ctx);
    check(st != QD_OK && strstr(err, LAYER) && strstr(err, d->dir) && (!needle || strstr(err, needle)),
          "bad input, %s: fails naming the folder and layer: \"%s\"", what, st != QD_OK ? err : "(loaded!)");
}

static const char *cfg_with(char *buf, size_t n, const char *case_name, const char *key, const char *json_value) {
    char path[512];
    snprintf(path, sizeof path, "%s%s.json", fixture("sdnq/layers/"), case_name);
    char *text = test_read_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    cJSON *qc = cJSON_GetObjectItem(root, "quantization_config");
    if (key) cJSON_ReplaceItemInObject(qc, key, cJSON_Parse(json_value));
    char *out = cJSON_Print(qc);
    snprintf(buf, n, "%s", out ? out : "{}");
    free(out);
    cJSON_Delete(root);
    free(text);
    return buf;
}

/* Load LAYER from the folder and compare its decode with a fixture case's sdnq dequantization. */
static void expect_layer_decodes(qd_ctx *ctx, tmpdir *d, const char *ref_case, int want_adjusted, const char *what) {
    char path[512];
    snprintf(path, sizeof path, "%s%s.safetensors", fixture("sdnq/layers/"), ref_case);
    int64_t shape[8];
    int nd;
    float *ref = load_f32(path, "ref.dequantized_weight", shape, &nd, NULL);
    qd_params p;
    qd_linear_p lin;
    qd_status st = qd_params_open(ctx, d->dir, "test", &p);
    if (st == QD_OK) st = qd_p_linear(&p, &lin, shape[0], shape[1], QD_BIAS, "%s", LAYER);
    double r = 1;
    int adjusted = -1;
    if (st == QD_OK && ref) {
        float *got = malloc(sizeof(float) * (size_t)(shape[0] * shape[1]));
        lin.w.decode(&lin.w, 0, shape[0], 0, shape[1], got, shape[1]);
        r = rel_l2(got, ref, (size_t)(shape[0] * shape[1]));
        adjusted = ((const qd_sdnq_state *)lin.w.quant)->l.adjusted;
        free(got);
    }
    if (p.ctx) qd_params_close(&p);
    check(st == QD_OK && r <= 1e-6 && adjusted == want_adjusted, "shapes win: %s: decodes as %s (rel_l2 %.2g, adjusted %d)%s%s",
          what, ref_case, r, adjusted, st ? ": " : "", st ? qd_last_error(ctx) : "");
    free(ref);
}

/* Older writers stored some layers differently than today's derivation says: the file decides. */
static void test_shapes_win(qd_ctx *ctx) {
    static char cfg[16384];
    tmpdir d;
    tmp_make(&d, "win1");   /* qmm config (derives [in, out] + scale [1, out]); file row-wise, as v0.1.x wrote uint8 */
    build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_qmm", NULL, NULL), NULL, 0);
    expect_layer_decodes(ctx, &d, "int8_auto", 1, "row-wise int8 file under a quantized-matmul config");
    tmp_remove(&d);
    tmp_make(&d, "win2");   /* the reverse: transposed file, plain config */
    build_layer_dir(ctx, &d, "int8_qmm", cfg_with(cfg, sizeof cfg, "int8_auto", NULL, NULL), NULL, 0);
    expect_layer_decodes(ctx, &d, "int8_qmm", 1, "transposed int8 file under a plain config");
    tmp_remove(&d);
    tmp_make(&d, "win3");   /* the config derives G=2 (group 128), the file has G=4 */
    build_layer_dir(ctx, &d, "uint4_auto", cfg_with(cfg, sizeof cfg, "uint4_auto", "group_size", "128"), NULL, 0);
    expect_layer_decodes(ctx, &d, "uint4_auto", 1, "G=4 file where the config derives G=2");
    tmp_remove(&d);
    tmp_make(&d, "win4");   /* use_svd in the config, but the (unchanged) file has none, as v0.1 meta loading dropped it */
    build_layer_dir(ctx, &d, "uint4_auto", cfg_with(cfg, sizeof cfg, "uint4_auto", "use_svd", "true"), NULL, 0);
    expect_layer_decodes(ctx, &d, "uint4_auto", 1, "no svd tensors under use_svd (and its +1 group exponent)");
    tmp_remove(&d);
    {   /* tensor-wise int8 under quantized matmul: stored [in, out] with a [1, 1] scale */
        doctor dt = {"weight", QD_I8, 2, {0}, 0, 1};
        tmp_make(&d, "win6");
        build_layer_dir(ctx, &d, "int8_tensorwise", cfg_with(cfg, sizeof cfg, "int8_tensorwise", "use_quantized_matmul", "true"), &dt, 1);
        expect_layer_decodes(ctx, &d, "int8_tensorwise", 0, "transposed tensor-wise int8, as derived");
        tmp_remove(&d);
        tmp_make(&d, "win7");
        build_layer_dir(ctx, &d, "int8_tensorwise", cfg_with(cfg, sizeof cfg, "int8_tensorwise", "use_quantized_matmul", "true"), NULL, 0);
        expect_layer_decodes(ctx, &d, "int8_tensorwise", 1, "row-major tensor-wise int8 under a quantized-matmul config");
        tmp_remove(&d);
    }
    tmp_make(&d, "win5");   /* unchanged: no adjustment */
    build_layer_dir(ctx, &d, "uint4_svd_r8_qmm", cfg_with(cfg, sizeof cfg, "uint4_svd_r8_qmm", NULL, NULL), NULL, 0);
    expect_layer_decodes(ctx, &d, "uint4_svd_r8_qmm", 0, "svd in the quantized-matmul orientation, as derived");
    tmp_remove(&d);
}

static void test_bad_inputs(qd_ctx *ctx) {
    static char cfg[16384];
    tmpdir d;

    /* a good layer loads through the params API first (the doctoring itself is sound) */
    tmp_make(&d, "good");
    if (build_layer_dir(ctx, &d, "uint4_svd_r8", cfg_with(cfg, sizeof cfg, "uint4_svd_r8", NULL, NULL), NULL, 0)) {
        qd_params p;
        qd_linear_p lin;
        int ok = qd_params_open(ctx, d.dir, "test", &p) == QD_OK && p.sdnq &&
                 qd_p_linear(&p, &lin, 64, 256, QD_BIAS, "%s", LAYER) == QD_OK && lin.w.rows == 64 && lin.w.cols == 256;
        if (p.ctx) qd_params_close(&p);
        check(ok, "a renamed fixture layer loads through qd_params_open / qd_p_linear%s%s", ok ? "" : ": ", ok ? "" : qd_last_error(ctx));
    }
    expect_layer_error(ctx, &d, 64, 128, "weight is not out x in as the model expects", "64 x 128");
    tmp_remove(&d);

    tmp_make(&d, "dtype");
    build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", "weights_dtype", "\"int99\""), NULL, 0);
    expect_layer_error(ctx, &d, 64, 256, "unknown weights_dtype", "int99");
    tmp_remove(&d);

    tmp_make(&d, "dtype2");
    build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", "modules_dtype_dict", "{\"int77\":[\"proj\"]}"), NULL, 0);
    expect_layer_error(ctx, &d, 64, 256, "modules_dtype_dict key that is no dtype", "int77");
    tmp_remove(&d);

    tmp_make(&d, "gs");
    build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", "group_size", "\"big\""), NULL, 0);
    {   /* a malformed global field is the folder's error, found at open */
        qd_params p;
        qd_status st = qd_params_open(ctx, d.dir, "test", &p);
        if (st == QD_OK) qd_params_close(&p);
        check(st != QD_OK && strstr(qd_last_error(ctx), "quantization_config.json") && strstr(qd_last_error(ctx), "group_size"),
              "bad input, group_size \"big\": qd_params_open fails naming the file and field: \"%s\"", qd_last_error(ctx));
    }
    tmp_remove(&d);

    {   /* packed stream one byte short of whole blocks: uint4 [8191] for 64 x 256 codes */
        doctor dw = {"weight", QD_U8, 1, {8191}, 0, 0};
        tmp_make(&d, "short");
        build_layer_dir(ctx, &d, "uint4_auto", cfg_with(cfg, sizeof cfg, "uint4_auto", NULL, NULL), &dw, 1);
        expect_layer_error(ctx, &d, 64, 256, "packed uint4 tensor not a whole number of blocks", "8192");
        tmp_remove(&d);
    }
    {   /* int5 packs 8 codes in 5 bytes: a 2-D [n/8, 5] stream cut to [2047, 5] */
        doctor dw = {"weight", QD_U8, 2, {2047, 5}, 0, 0};
        tmp_make(&d, "short5");
        build_layer_dir(ctx, &d, "int5_auto", cfg_with(cfg, sizeof cfg, "int5_auto", NULL, NULL), &dw, 1);
        expect_layer_error(ctx, &d, 64, 256, "int5 words for fewer codes than the layer has", "2048");
        tmp_remove(&d);
    }
    {   /* a layer whose code count is not a whole number of 8-code uint3 blocks */
        doctor dw[3] = {{"weight", QD_U8, 2, {250, 3}, 0, 0}, {"scale", QD_F32, 2, {63, 1}, 0, 0}, {"zero_point", QD_F32, 2, {63, 1}, 0, 0}};
        tmp_make(&d, "blocks");
        build_layer_dir(ctx, &d, "uint3_g32", cfg_with(cfg, sizeof cfg, "uint3_g32", "group_size", "-1"), dw, 3);
        expect_layer_error(ctx, &d, 63, 33, "63 x 33 uint3 codes are not whole 8-code blocks", "not a whole number");
        tmp_remove(&d);
    }
    {
        doctor ds = {"scale", QD_F32, 3, {64, 3, 1}, 0, 0};
        tmp_make(&d, "scale");
        build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", NULL, NULL), &ds, 1);
        expect_layer_error(ctx, &d, 64, 256, "scale [64, 3, 1] fits no layout", "fits no");
        tmp_remove(&d);
    }
    {
        doctor ds = {"scale", QD_F32, 2, {32, 2}, 0, 0};
        tmp_make(&d, "scale2");
        build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", NULL, NULL), &ds, 1);
        expect_layer_error(ctx, &d, 64, 256, "scale [32, 2] fits no layout", "fits no");
        tmp_remove(&d);
    }
    {
        doctor ds = {"scale", QD_I32, 2, {64, 1}, 0, 0};
        tmp_make(&d, "scaletype");
        build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", NULL, NULL), &ds, 1);
        expect_layer_error(ctx, &d, 64, 256, "integer scale", "float");
        tmp_remove(&d);
    }
    {
        doctor dw = {"weight", QD_U8, 2, {64, 256}, 0, 0};
        tmp_make(&d, "sign");
        build_layer_dir(ctx, &d, "int8_auto", cfg_with(cfg, sizeof cfg, "int8_auto", NULL, NULL), &dw, 1);
        expect_layer_error(ctx, &d, 64, 256, "int8 codes stored as U8", "U8");
        tmp_remove(&d);
    }
    {
        doctor dz = {"zero_point", QD_F32, 0, {0}, 1, 0};
        tmp_make(&d, "zp");
        build_layer_dir(ctx, &d, "uint4_auto", cfg_with(cfg, sizeof cfg, "uint4_auto", NULL, NULL), &dz, 1);
        expect_layer_error(ctx, &d, 64, 256, "unsigned layer without zero_point", "zero_point");
        tmp_remove(&d);
    }
    {
        doctor du = {"svd_up", QD_F32, 2, {64, 7}, 0, 0};
        tmp_make(&d, "svd");
        build_layer_dir(ctx, &d, "uint4_svd_r8", cfg_with(cfg, sizeof cfg, "uint4_svd_r8", NULL, NULL), &du, 1);
        expect_layer_error(ctx, &d, 64, 256, "svd_up rank differs from svd_down", "svd_up");
        tmp_remove(&d);
    }
    {
        doctor dd = {"svd_down", QD_F32, 0, {0}, 1, 0};
        tmp_make(&d, "svd2");
        build_layer_dir(ctx, &d, "uint4_svd_r8", cfg_with(cfg, sizeof cfg, "uint4_svd_r8", NULL, NULL), &dd, 1);
        expect_layer_error(ctx, &d, 64, 256, "svd_up without svd_down", "svd_down");
        tmp_remove(&d);
    }
    tmp_make(&d, "nocfg");
    build_layer_dir(ctx, &d, "int8_auto", NULL, NULL, 0);
    expect_layer_error(ctx, &d, 64, 256, "SDNQ tensors without a quantization_config", "quantization_config");
    tmp_remove(&d);

    tmp_make(&d, "badjson");
    build_layer_dir(ctx, &d, "int8_auto", "{\"quant_method\": \"sdnq\", ", NULL, 0);
    {
        qd_params p;
        qd_status st = qd_params_open(ctx, d.dir, "test", &p);
        if (st == QD_OK) qd_params_close(&p);
        check(st != QD_OK && strstr(qd_last_error(ctx), "quantization_config.json"),
              "bad input, malformed quantization_config.json: qd_params_open fails naming it: \"%s\"", qd_last_error(ctx));
    }
    tmp_remove(&d);
}

/* ---- int8 quantized matmul (§1.9) ---- */

/* sdnq's int8 matmul written out in double: x (rotated) quantized per token, the
 * base weight as int8 codes (or re-quantized per row), plus the float SVD branch. */
static void emulate_int8(const layer_case *c, const float *x, int64_t M, float *y, double *err_x, double *err_w) {
    const qd_sdnq_state *s = c->state;
    const qd_sdnq_layout *l = &s->l;
    int64_t K = c->in, N = c->out;
    float *xr = malloc(sizeof(float) * (size_t)(M * K)), *wb = malloc(sizeof(float) * (size_t)(N * K));
    double *xh = malloc(sizeof(double) * (size_t)(M * K)), *wh = malloc(sizeof(double) * (size_t)(N * K));
    memcpy(xr, x, sizeof(float) * (size_t)(M * K));
    for (int64_t m = 0; l->hadamard && m < M; m++)
        for (int64_t k = 0; k < K; k += l->hadamard_size) qd_hadamard(xr + m * K + k, l->hadamard_size);
    double dx = 0, nx = 0, dw = 0, nw = 0;   /* what 8-bit rounding does to each operand */
    for (int64_t m = 0; m < M; m++) {
        float amax = 0;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(xr[m * K + k]));
        float sx = amax / 127.0f;
        for (int64_t k = 0; k < K; k++) {
            xh[m * K + k] = (double)sx * nearbyintf(xr[m * K + k] / sx);
            dx += (xh[m * K + k] - xr[m * K + k]) * (xh[m * K + k] - xr[m * K + k]);
            nx += (double)xr[m * K + k] * xr[m * K + k];
        }
    }
    qd_sdnq_decode_base(s, 0, N, 0, K, wb, K);
    int direct = (l->dtype.family == QD_SQ_INT || l->dtype.family == QD_SQ_UINT) && l->dtype.bits <= 8 &&
                 !l->codebook && l->grouping != QD_SDNQ_GROUPED;
    for (int64_t n = 0; n < N; n++) {
        float amax = 0;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(wb[n * K + k]));
        float sw = amax / 127.0f;
        for (int64_t k = 0; k < K; k++) {
            wh[n * K + k] = direct ? wb[n * K + k] : (double)sw * nearbyintf(wb[n * K + k] / sw);
            dw += (wh[n * K + k] - wb[n * K + k]) * (wh[n * K + k] - wb[n * K + k]);
            nw += (double)wb[n * K + k] * wb[n * K + k];
        }
    }
    *err_x = sqrt(dx / nx);
    *err_w = sqrt(dw / nw);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = c->bias[n];
            for (int64_t k = 0; k < K; k++) acc += xh[m * K + k] * wh[n * K + k];
            for (int64_t r = 0; l->svd && r < l->svd_rank; r++) {
                double t = 0;
                for (int64_t k = 0; k < K; k++) t += (double)xr[m * K + k] * s->svd_down[r * K + k];
                acc += t * s->svd_up[n * l->svd_rank + r];
            }
            y[m * N + n] = (float)acc;
        }
    free(xr); free(wb); free(xh); free(wh);
}

static void run_int8_case(qd_ctx *ctx, const char *name) {
    layer_case c;
    if (!case_open(ctx, name, &c)) { check(0, "%s: open", name); case_close(&c); return; }
    size_t ny = (size_t)(c.M * c.out);
    float *y8 = malloc(sizeof(float) * ny), *ye = malloc(sizeof(float) * ny), *yf = malloc(sizeof(float) * ny);
    qd_set_matmul(ctx, QD_MATMUL_INT8);
    qd_linear(ctx, c.x, c.M, &c.w, c.bias, y8);
    qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    double ex, ew;
    emulate_int8(&c, c.x, c.M, ye, &ex, &ew);
    double r_emul = rel_l2(y8, ye, ny);
    check(r_emul <= 1e-5, "%s int8: equals sdnq's int8 algorithm (double emulation): rel_l2 %.3g (tol 1e-5)", name, r_emul);
    /* accuracy: the fp32 original weight's output shows what weight quantization costs */
    char path[512];
    snprintf(path, sizeof path, "%s%s.safetensors", fixture("sdnq/layers/"), name);
    float *wf = load_f32(path, "ref.weight_fp32", NULL, NULL, NULL);
    for (int64_t m = 0; wf && m < c.M; m++)
        for (int64_t n = 0; n < c.out; n++) {
            double a = c.bias[n];
            for (int64_t k = 0; k < c.in; k++) a += (double)c.x[m * c.in + k] * wf[n * c.in + k];
            yf[m * c.out + n] = (float)a;
        }
    double r8 = rel_l2(y8, c.ref_out, ny), rq = wf ? rel_l2(yf, c.ref_out, ny) : 0, pred = hypot(ex, ew);
    /* Bound: int8 matmul rounds its two operands to 8 bits (per-token activations, and
     * per-row weights when re-quantized), so its error vs the exact output is about
     * hypot(ex, ew) of those roundings (measured ratio 0.67-1.09 over the cases); allow
     * 1.5x. Where the weights have <= 6 bits (output error of the stored weights >= 4%)
     * that must also be well under the quantization error itself: <= half of it. At 7-8
     * bits the 8-bit activations cost about as much as the weights, inherently. */
    check(r8 <= 1.5 * pred, "%s int8: vs sdnq's exact output rel_l2 %.4f <= 1.5 x %.4f (8-bit rounding of x: %.4f, "
          "of the weight: %.4f)", name, r8, pred, ex, ew);
    if (rq >= 0.04)
        check(r8 <= 0.5 * rq, "%s int8: error %.4f is under half the weight quantization's own %.4f", name, r8, rq);
    free(wf); free(y8); free(ye); free(yf);
    case_close(&c);
}

static void test_int8_cases(qd_ctx *ctx) {
    char *text = test_read_file(fixture("sdnq/layers/index.json"), NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    for (const cJSON *e = cases ? cases->child : NULL; e; e = e->next) {
        const cJSON *name = cJSON_GetObjectItem(e, "case");
        if (cJSON_IsString(name)) run_int8_case(ctx, name->valuestring);
    }
    cJSON_Delete(root);
    free(text);
}

/* Which path runs: the config's use_quantized_matmul with sdnq's 32-token minimum,
 * or the context's override. */
static void test_matmul_modes(qd_ctx *ctx) {
    layer_case q, a;
    if (!case_open(ctx, "int8_qmm", &q) || !case_open(ctx, "int8_auto", &a)) {
        check(0, "open int8_qmm / int8_auto");
        case_close(&q);
        return;
    }
    int64_t M = 40, N = q.out, K = q.in;
    float *x = malloc(sizeof(float) * (size_t)(M * K));
    for (int64_t m = 0; m < M; m++) memcpy(x + m * K, q.x + (m % q.M) * K, sizeof(float) * (size_t)K);
    float *y0 = malloc(sizeof(float) * (size_t)(M * N)), *y1 = malloc(sizeof(float) * (size_t)(M * N)),
          *y2 = malloc(sizeof(float) * (size_t)(M * N));
    const qd_sdnq_state *sq = q.state, *sa = a.state;
    qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    check(!qd_sdnq_uses_int8(ctx, sq, 5) && qd_sdnq_uses_int8(ctx, sq, 40) && !qd_sdnq_uses_int8(ctx, sa, 40),
          "config mode: int8 only where use_quantized_matmul holds and from 32 tokens on");
    qd_linear(ctx, x, M, &q.w, q.bias, y0);
    qd_set_matmul(ctx, QD_MATMUL_INT8);
    qd_linear(ctx, x, M, &q.w, q.bias, y2);
    check(qd_sdnq_uses_int8(ctx, sa, 1) && memcmp(y0, y2, sizeof(float) * (size_t)(M * N)) == 0,
          "int8 mode: every linear; the config's choice for 40 tokens gave the same int8 result");
    qd_set_matmul(ctx, QD_MATMUL_EXACT);
    qd_linear(ctx, x, M, &q.w, q.bias, y1);
    check(!qd_sdnq_uses_int8(ctx, sq, 40) && memcmp(y0, y1, sizeof(float) * (size_t)(M * N)) != 0 &&
          rel_l2(y1, y0, (size_t)(M * N)) < 0.02,
          "exact mode overrides the config: dequantized GEMM (differs from int8 by rel_l2 %.3g)", rel_l2(y1, y0, (size_t)(M * N)));
    qd_set_matmul(ctx, 7);
    check(ctx->matmul_mode == QD_MATMUL_EXACT, "qd_set_matmul ignores an unknown mode");
    qd_set_matmul(ctx, QD_MATMUL_CONFIG);
    free(x); free(y0); free(y1); free(y2);
    case_close(&q);
    case_close(&a);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    test_dtypes();
    test_bit_layouts();
    test_name_matching();
    test_derivation(ctx);
    test_fixture_cases(ctx);
    test_bad_inputs(ctx);
    test_shapes_win(ctx);
    test_int8_cases(ctx);
    test_matmul_modes(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
