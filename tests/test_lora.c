/* LoRA merge (src/convert/lora.c): LoRA files written here in every supported naming
 * convention with known down (A), up (B) and alpha; the merged weight must equal
 * W + scale * dampen^i * alpha/rank * B.A computed by a plain double loop (rel L2 <= 1e-6,
 * max abs <= 1e-5 of max |W'|). Then dampening across two files, the matched/total
 * report, and errors: a LoRA matching no weight (says 0 of N), shape mismatch, LoHa,
 * a missing up half, a missing file. PEFT adapter_config.json (alpha/r, rank_pattern,
 * alpha_pattern, rsLoRA) against factors written out by hand, and FLUX q/k/v <-> fused
 * qkv/linear1 in both directions against row-sliced deltas computed here. SDXL kohya
 * LoRAs with LDM module names against hand-written diffusers names. */
#include "testutil.h"
#include "convert/lora.h"
#include "io/safetensors.h"
#include "base/half.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) % 2000001) / 1000000.0f - 1.0f;
}

/* A LoRA pair: down [r, in(, kh, kw)], up [out, r(, 1, 1)] stored as F16 (values exactly representable). */
typedef struct {
    int64_t out, in, r, kh, kw;
    uint16_t *down, *up;     /* f16 bits */
    float *downf, *upf;      /* the same values as float */
} pair;

static pair make_pair(int64_t out, int64_t in, int64_t r, int64_t kh, int64_t kw) {
    pair p = {out, in, r, kh, kw, NULL, NULL, NULL, NULL};
    int64_t nd = r * in * kh * kw, nu = out * r;
    p.down = malloc(2 * (size_t)nd); p.up = malloc(2 * (size_t)nu);
    p.downf = malloc(4 * (size_t)nd); p.upf = malloc(4 * (size_t)nu);
    for (int64_t i = 0; i < nd; i++) { p.down[i] = qd_f32_to_f16(frand()); p.downf[i] = qd_f16_to_f32(p.down[i]); }
    for (int64_t i = 0; i < nu; i++) { p.up[i] = qd_f32_to_f16(frand()); p.upf[i] = qd_f16_to_f32(p.up[i]); }
    return p;
}
static void free_pair(pair *p) { free(p->down); free(p->up); free(p->downf); free(p->upf); }

/* ref[o, j] += f * sum_k up[o,k] * down[k, j], in double */
static void ref_add(double *ref, const pair *p, double f) {
    int64_t cols = p->in * p->kh * p->kw;
    for (int64_t o = 0; o < p->out; o++)
        for (int64_t j = 0; j < cols; j++) {
            double acc = 0;
            for (int64_t k = 0; k < p->r; k++) acc += (double)p->upf[o * p->r + k] * p->downf[k * cols + j];
            ref[o * cols + j] += f * acc;
        }
}

/* Tensors of one file: up to 16 pairs by base name and suffix style. */
typedef struct { qd_st_out t[64]; int n; char names[64][256]; float alpha[64]; } lora_file;

static void add_pair(lora_file *f, const char *base, const char *down_sfx, const char *up_sfx, const pair *p, float alpha) {
    snprintf(f->names[f->n], 256, "%s%s", base, down_sfx);
    qd_st_out d = {f->names[f->n], QD_F16, p->kh > 1 || p->kw > 1 ? 4 : 2, {p->r, p->in, p->kh, p->kw}, p->down};
    f->t[f->n++] = d;
    snprintf(f->names[f->n], 256, "%s%s", base, up_sfx);
    qd_st_out u = {f->names[f->n], QD_F16, d.ndim, {p->out, p->r, 1, 1}, p->up};
    f->t[f->n++] = u;
    if (alpha > 0) {
        int k = f->n;
        f->alpha[k] = alpha;
        snprintf(f->names[f->n], 256, "%s.alpha", base);
        qd_st_out a = {f->names[f->n], QD_F32, 0, {0}, &f->alpha[k]};
        f->t[f->n++] = a;
    }
}

static void write_lora(const char *path, lora_file *f, const char *meta) {
    qd_ctx *ctx = test_ctx_new(1);
    if (qd_st_write(ctx, path, f->t, f->n, meta) != QD_OK) check(0, "write %s: %s", path, qd_last_error(ctx));
    qd_ctx_free(ctx);
}

static void expect_merge(qd_ctx *ctx, qd_lora_set *set, const char *what, const char *component, const char *name,
                         int64_t out, int64_t in, int64_t kh, int64_t kw, const pair *const *ps, const double *factors,
                         int np) {
    int64_t n = out * in * kh * kw, shape[4] = {out, in, kh, kw};
    float *w = malloc(4 * (size_t)n);
    double *ref = malloc(8 * (size_t)n);
    for (int64_t i = 0; i < n; i++) { w[i] = frand(); ref[i] = w[i]; }
    for (int i = 0; i < np; i++) ref_add(ref, ps[i], factors[i]);
    int k = qd_lora_apply(ctx, set, component, name, w, shape, kh * kw > 1 || !strncmp(what, "conv", 4) ? 4 : 2);
    check(k == np, "%s: %d pair(s) applied (want %d)%s%s", what, k, np, k < 0 ? ": " : "", k < 0 ? qd_last_error(ctx) : "");
    float *rf = malloc(4 * (size_t)n);
    for (int64_t i = 0; i < n; i++) rf[i] = (float)ref[i];
    check_close(what, w, rf, (size_t)n, 1e-6, 1e-5);
    free(w); free(ref); free(rf);
}

static void test_conventions(qd_ctx *ctx) {
    pair k1 = make_pair(16, 12, 4, 1, 1), te1 = make_pair(8, 8, 2, 1, 1), te2 = make_pair(8, 8, 2, 1, 1),
         dold = make_pair(10, 6, 3, 1, 1), dnew = make_pair(12, 12, 4, 1, 1), peft = make_pair(6, 10, 2, 1, 1),
         bfl = make_pair(18, 6, 2, 1, 1), conv3 = make_pair(8, 4, 2, 3, 3), conv1 = make_pair(6, 5, 3, 1, 1),
         meta = make_pair(7, 9, 3, 1, 1), proc = make_pair(8, 8, 2, 1, 1);
    lora_file f;
    memset(&f, 0, sizeof f);
    add_pair(&f, "lora_unet_down_blocks_0_attentions_0_proj_in", ".lora_down.weight", ".lora_up.weight", &k1, 2.0f);
    add_pair(&f, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", ".lora_down.weight", ".lora_up.weight", &te1, 1.0f);
    add_pair(&f, "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", ".lora_down.weight", ".lora_up.weight", &te2, 4.0f);
    add_pair(&f, "unet.mid_block.attentions.0.proj_out", ".lora.down.weight", ".lora.up.weight", &dold, 0);
    add_pair(&f, "transformer.transformer_blocks.0.attn.to_q", ".lora_A.weight", ".lora_B.weight", &dnew, 0);
    add_pair(&f, "base_model.model.up_blocks.1.attentions.0.proj_in", ".lora_A.weight", ".lora_B.weight", &peft, 0);
    add_pair(&f, "diffusion_model.double_blocks.1.img_attn.qkv", ".lora_A.weight", ".lora_B.weight", &bfl, 0);
    add_pair(&f, "lora_unet_down_blocks_0_resnets_0_conv1", ".lora_down.weight", ".lora_up.weight", &conv3, 1.0f);
    add_pair(&f, "lora_unet_up_blocks_0_attentions_0_proj_out", ".lora_down.weight", ".lora_up.weight", &conv1, 6.0f);
    add_pair(&f, "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2", ".lora_down.weight", ".lora_up.weight",
             &meta, 0);
    add_pair(&f, "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_k", "_lora.down.weight",
             "_lora.up.weight", &proc, 0);
    const char *path = scratch_path("conventions.safetensors");
    /* alpha for the "meta" pair comes from the header key the fork reads */
    write_lora(path, &f, "\"lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2_alpha\":\"1.5\"");

    const char *paths[1] = {path};
    float scales[1] = {0.8f};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) != QD_OK) {
        check(0, "open LoRA: %s", qd_last_error(ctx));
        return;
    }
    const float s = 0.8f;
    const pair *pp[1];
    double fa[1];
#define ONE(what, comp, name, P, alpha, kh_, kw_) do { pp[0] = &P; fa[0] = s * (alpha) / (double)P.r; \
        expect_merge(ctx, set, what, comp, name, P.out, P.in, kh_, kw_, pp, fa, 1); } while (0)
    ONE("kohya unet (alpha tensor)", "unet", "down_blocks.0.attentions.0.proj_in.weight", k1, 2.0, 1, 1);
    ONE("kohya lora_te1_", "text_encoder", "text_model.encoder.layers.0.self_attn.q_proj.weight", te1, 1.0, 1, 1);
    ONE("kohya lora_te2_ (te1 pair not applied to text_encoder_2)", "text_encoder_2",
        "text_model.encoder.layers.0.self_attn.q_proj.weight", te2, 4.0, 1, 1);
    ONE("diffusers unet. lora.down/up (alpha = rank)", "unet", "mid_block.attentions.0.proj_out.weight", dold, 3.0, 1, 1);
    ONE("diffusers transformer. lora_A/B", "transformer", "transformer_blocks.0.attn.to_q.weight", dnew, 4.0, 1, 1);
    ONE("PEFT base_model.model.", "unet", "up_blocks.1.attentions.0.proj_in.weight", peft, 2.0, 1, 1);
    ONE("BFL diffusion_model. on a single-file name", NULL, "model.diffusion_model.double_blocks.1.img_attn.qkv.weight",
        bfl, 2.0, 1, 1);
    ONE("BFL diffusion_model. on a bare name", NULL, "double_blocks.1.img_attn.qkv.weight", bfl, 2.0, 1, 1);
    ONE("conv 3x3 LoRA", "unet", "down_blocks.0.resnets.0.conv1.weight", conv3, 1.0, 3, 3);
    ONE("conv 1x1 weight, linear-shaped LoRA", "unet", "up_blocks.0.attentions.0.proj_out.weight", conv1, 6.0, 1, 1);
    ONE("alpha from header metadata", "unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight", meta, 1.5, 1, 1);
    ONE("old attention-processor names", "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight", proc,
        2.0, 1, 1);
#undef ONE
    /* not named: untouched, 0 returned; component mismatch: unet pair not for the text encoder */
    float w0[4] = {1, 2, 3, 4};
    int64_t sh[2] = {2, 2};
    check(qd_lora_apply(ctx, set, "unet", "down_blocks.9.proj.weight", w0, sh, 2) == 0 && w0[0] == 1 && w0[3] == 4,
          "an unnamed weight is left alone");
    int64_t tsh[2] = {16, 12};
    check(qd_lora_touches(set, "text_encoder", "down_blocks.0.attentions.0.proj_in.weight", tsh, 2) == 0 &&
              qd_lora_touches(set, "unet", "down_blocks.0.attentions.0.proj_in.weight", tsh, 2) == 1,
          "component tags are honoured");
    int64_t matched = 0, total = 0;
    qd_lora_set_report(set, &matched, &total);
    check(matched == 11 && total == 11, "report: %lld of %lld pairs matched", (long long)matched, (long long)total);
    check(qd_lora_set_check(ctx, set) == QD_OK, "check passes when every pair matched");
    /* shape mismatch names file, LoRA and weight */
    float wbad[16 * 13];
    int64_t shb[2] = {16, 13};
    check(qd_lora_apply(ctx, set, "unet", "down_blocks.0.attentions.0.proj_in.weight", wbad, shb, 2) < 0 &&
              strstr(qd_last_error(ctx), path) && strstr(qd_last_error(ctx), "does not fit") &&
              strstr(qd_last_error(ctx), "[16,13]"),
          "shape mismatch: %s", qd_last_error(ctx));
    qd_lora_set_free(set);
    pair *all[] = {&k1, &te1, &te2, &dold, &dnew, &peft, &bfl, &conv3, &conv1, &meta, &proc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free_pair(all[i]);
}

/* Two files, scales 0.7 and 1.3, dampen 0.5: on a layer both name the second is halved;
 * on a layer only the second names it is the first applied there and is not. */
static void test_dampening(qd_ctx *ctx) {
    pair a = make_pair(8, 6, 2, 1, 1), b = make_pair(8, 6, 3, 1, 1), c = make_pair(5, 4, 2, 1, 1);
    lora_file f1, f2;
    memset(&f1, 0, sizeof f1);
    memset(&f2, 0, sizeof f2);
    add_pair(&f1, "lora_unet_x_proj", ".lora_down.weight", ".lora_up.weight", &a, 1.0f);
    add_pair(&f2, "lora_unet_x_proj", ".lora_down.weight", ".lora_up.weight", &b, 3.0f);
    add_pair(&f2, "lora_unet_y_proj", ".lora_down.weight", ".lora_up.weight", &c, 2.0f);
    const char *p1 = scratch_path("l1.safetensors"), *p2 = scratch_path("l2.safetensors");
    write_lora(p1, &f1, NULL);
    write_lora(p2, &f2, NULL);
    const char *paths[2] = {p1, p2};
    float scales[2] = {0.7f, 1.3f};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, scales, 2, 0.5f, &set) != QD_OK) { check(0, "open: %s", qd_last_error(ctx)); return; }
    const pair *pp[2] = {&a, &b};
    double fa[2] = {0.7 * 1.0 / 2, 1.3 * 0.5 * 3.0 / 3};
    expect_merge(ctx, set, "two LoRAs, the second dampened by 0.5", "unet", "x.proj.weight", 8, 6, 1, 1, pp, fa, 2);
    pp[0] = &c;
    fa[0] = 1.3 * 2.0 / 2;
    expect_merge(ctx, set, "a layer only the second LoRA names: not dampened", "unet", "y.proj.weight", 5, 4, 1, 1, pp, fa, 1);
    qd_lora_set_free(set);
    free_pair(&a); free_pair(&b); free_pair(&c);
}

static void test_errors(qd_ctx *ctx) {
    pair a = make_pair(8, 6, 2, 1, 1);
    lora_file f;
    memset(&f, 0, sizeof f);
    add_pair(&f, "lora_unet_nowhere_a", ".lora_down.weight", ".lora_up.weight", &a, 1.0f);
    add_pair(&f, "lora_unet_nowhere_b", ".lora_down.weight", ".lora_up.weight", &a, 1.0f);
    const char *path = scratch_path("nomatch.safetensors");
    write_lora(path, &f, NULL);
    const char *paths[1] = {path};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) == QD_OK) {
        float w[48];
        int64_t sh[2] = {8, 6};
        check(qd_lora_apply(ctx, set, "unet", "down_blocks.0.proj.weight", w, sh, 2) == 0, "no pair for this weight");
        check(qd_lora_set_check(ctx, set) != QD_OK && strstr(qd_last_error(ctx), path) &&
                  strstr(qd_last_error(ctx), "0 of its 2 LoRA layers matched"),
              "a LoRA matching nothing: %s", qd_last_error(ctx));
        /* planning against a weights file: a weight named like one pair makes it pass before any merge */
        static float wt[8 * 6];
        qd_st_out mt[] = {{"model.diffusion_model.nowhere.b.weight", QD_F32, 2, {8, 6}, wt},
                          {"model.diffusion_model.somewhere.weight", QD_F32, 2, {8, 6}, wt}};
        const char *mp = scratch_path("model.safetensors");
        qd_st_write(ctx, mp, mt, 2, NULL);
        check(qd_lora_set_plan(ctx, set, mp, NULL) == QD_OK && qd_lora_set_check(ctx, set) == QD_OK,
              "planned against a file naming one of the pairs: check passes (%s)", qd_last_error(ctx));
        qd_lora_set_free(set);
    } else {
        check(0, "open: %s", qd_last_error(ctx));
    }
    /* LoHa */
    memset(&f, 0, sizeof f);
    add_pair(&f, "lora_unet_x", ".hada_w1_a", ".hada_w1_b", &a, 0);
    const char *loha = scratch_path("loha.safetensors");
    write_lora(loha, &f, NULL);
    paths[0] = loha;
    check(qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), loha) &&
              strstr(qd_last_error(ctx), "LoHa"),
          "LoHa refused: %s", qd_last_error(ctx));
    /* a down half without its up half */
    memset(&f, 0, sizeof f);
    add_pair(&f, "lora_unet_x", ".lora_down.weight", ".something_else", &a, 0);
    const char *half = scratch_path("half.safetensors");
    write_lora(half, &f, NULL);
    paths[0] = half;
    check(qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), "lora_unet_x.lora_up.weight"),
          "missing up half: %s", qd_last_error(ctx));
    /* no LoRA keys at all */
    memset(&f, 0, sizeof f);
    add_pair(&f, "model.x", ".weight", ".bias", &a, 0);
    const char *none = scratch_path("none.safetensors");
    write_lora(none, &f, NULL);
    paths[0] = none;
    check(qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), "no LoRA pairs"),
          "not a LoRA file: %s", qd_last_error(ctx));
    paths[0] = scratch_path("missing.safetensors");
    check(qd_lora_set_open(ctx, paths, NULL, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), "missing.safetensors"),
          "missing file: %s", qd_last_error(ctx));
    paths[0] = path;
    check(qd_lora_set_open(ctx, paths, NULL, 1, 1.5f, &set) != QD_OK && strstr(qd_last_error(ctx), "dampening"),
          "dampening outside (0, 1]: %s", qd_last_error(ctx));
    free_pair(&a);
}

/* ref[(dst0 + o) * cols + j] += f * sum_k up[up0 + o, k] * down[k, j] for o < n, in double */
static void ref_add_rows(double *ref, const pair *p, double f, int64_t dst0, int64_t up0, int64_t n) {
    int64_t cols = p->in * p->kh * p->kw;
    for (int64_t o = 0; o < n; o++)
        for (int64_t j = 0; j < cols; j++) {
            double acc = 0;
            for (int64_t k = 0; k < p->r; k++) acc += (double)p->upf[(up0 + o) * p->r + k] * p->downf[k * cols + j];
            ref[(dst0 + o) * cols + j] += f * acc;
        }
}

typedef struct { const pair *p; double f; int64_t dst0, up0, n; } slice;

/* Merge into a random [rows, cols] weight and compare with W + the slices' deltas. */
static void expect_slices(qd_ctx *ctx, qd_lora_set *set, const char *what, const char *component, const char *name,
                          int64_t rows, int64_t cols, const slice *sl, int ns, int want_pairs) {
    int64_t n = rows * cols, shape[2] = {rows, cols};
    float *w = malloc(4 * (size_t)n), *rf = malloc(4 * (size_t)n);
    double *ref = malloc(8 * (size_t)n);
    for (int64_t i = 0; i < n; i++) { w[i] = frand(); ref[i] = w[i]; }
    for (int i = 0; i < ns; i++) ref_add_rows(ref, sl[i].p, sl[i].f, sl[i].dst0, sl[i].up0, sl[i].n);
    int k = qd_lora_apply(ctx, set, component, name, w, shape, 2);
    check(k == want_pairs, "%s: %d pair(s) applied (want %d)%s%s", what, k, want_pairs, k < 0 ? ": " : "",
          k < 0 ? qd_last_error(ctx) : "");
    for (int64_t i = 0; i < n; i++) rf[i] = (float)ref[i];
    check_close(what, w, rf, (size_t)n, 1e-6, 1e-5);
    free(w); free(ref); free(rf);
}

/* PEFT: alpha and r from adapter_config.json beside the file (rank_pattern, alpha_pattern,
 * use_rslora); the expected factors are written out from PEFT's rule alpha/r (alpha/sqrt(r)). */
static void test_peft_config(qd_ctx *ctx) {
    pair a = make_pair(8, 6, 4, 1, 1), b = make_pair(6, 5, 2, 1, 1), c = make_pair(7, 4, 4, 1, 1);
    lora_file f;
    memset(&f, 0, sizeof f);
    add_pair(&f, "base_model.model.down_blocks.0.attentions.0.proj_in", ".lora_A.weight", ".lora_B.weight", &a, 0);
    add_pair(&f, "base_model.model.mid_block.attentions.0.proj_out", ".lora_A.weight", ".lora_B.weight", &b, 0);
    add_pair(&f, "base_model.model.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_k", ".lora_A.weight",
             ".lora_B.weight", &c, 0);
    static const char *const cfgs[] = {
        "{\"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"proj_out\": 2},"
        " \"alpha_pattern\": {\"up_blocks\\\\.0\\\\..*to_k\": 3}, \"use_rslora\": false, \"peft_type\": \"LORA\"}",
        "{\"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"proj_out\": 2},"
        " \"alpha_pattern\": {\"up_blocks\\\\.0\\\\..*to_k\": 3}, \"use_rslora\": true}",
    };
    /* alpha/r: proj_in 8/4, proj_out 8/2 (rank_pattern), to_k 3/4 (alpha_pattern); rsLoRA: alpha/sqrt(r) */
    const double want[2][3] = {{8.0 / 4, 8.0 / 2, 3.0 / 4}, {8.0 / 2, 8.0 / sqrt(2.0), 3.0 / 2}};
    for (int v = 0; v < 2; v++) {
        char dir[64];
        snprintf(dir, sizeof dir, "peft%d", v);
        char dpath[4096], fpath[4096], cpath[4096];
        snprintf(dpath, sizeof dpath, "%s", scratch_path(dir));
        mkdir(dpath, 0755);
        snprintf(fpath, sizeof fpath, "%s/adapter_model.safetensors", dpath);
        snprintf(cpath, sizeof cpath, "%s/adapter_config.json", dpath);
        write_lora(fpath, &f, NULL);
        write_text_file(cpath, cfgs[v]);
        const char *paths[1] = {fpath};
        float scales[1] = {0.5f};
        qd_lora_set *set = NULL;
        if (qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) != QD_OK) { check(0, "open PEFT: %s", qd_last_error(ctx)); continue; }
        const pair *pp[1];
        double fa[1];
        pp[0] = &a; fa[0] = 0.5 * want[v][0];
        expect_merge(ctx, set, v ? "PEFT rsLoRA: alpha/sqrt(r)" : "PEFT adapter_config: lora_alpha/r", "unet",
                     "down_blocks.0.attentions.0.proj_in.weight", 8, 6, 1, 1, pp, fa, 1);
        pp[0] = &b; fa[0] = 0.5 * want[v][1];
        expect_merge(ctx, set, v ? "PEFT rsLoRA with rank_pattern" : "PEFT rank_pattern (suffix match)", "unet",
                     "mid_block.attentions.0.proj_out.weight", 6, 5, 1, 1, pp, fa, 1);
        pp[0] = &c; fa[0] = 0.5 * want[v][2];
        expect_merge(ctx, set, v ? "PEFT rsLoRA with alpha_pattern" : "PEFT alpha_pattern (regex)", "unet",
                     "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_k.weight", 7, 4, 1, 1, pp, fa, 1);
        qd_lora_set_free(set);
        if (v == 1) {
            /* a config whose r disagrees with the tensors is refused, naming both */
            write_text_file(cpath, "{\"r\": 8, \"lora_alpha\": 8}");
            check(qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), "r = 8") &&
                      strstr(qd_last_error(ctx), "rank 4") && strstr(qd_last_error(ctx), fpath),
                  "adapter_config.json r != tensor rank: %s", qd_last_error(ctx));
            write_text_file(cpath, "{\"r\": 4}");
            check(qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) != QD_OK && strstr(qd_last_error(ctx), "lora_alpha") &&
                      strstr(qd_last_error(ctx), "adapter_config.json"),
                  "adapter_config.json without lora_alpha: %s", qd_last_error(ctx));
        }
    }
    free_pair(&a); free_pair(&b); free_pair(&c);
}

/* FLUX q/k/v <-> fused: a diffusers LoRA into a BFL checkpoint's fused qkv / linear1 rows,
 * and a BFL (kohya) LoRA's fused up split over diffusers' separate to_q/to_k/to_v/proj_mlp. */
static void test_fused(qd_ctx *ctx) {
    const int64_t D = 6, MLP = 10;
    pair q = make_pair(D, D, 2, 1, 1), k = make_pair(D, D, 3, 1, 1), v = make_pair(D, D, 2, 1, 1),
         ak = make_pair(D, D, 2, 1, 1), o = make_pair(D, D, 2, 1, 1), sq = make_pair(D, D, 2, 1, 1),
         sv = make_pair(D, D, 3, 1, 1), smlp = make_pair(MLP, D, 2, 1, 1);
    lora_file f;
    memset(&f, 0, sizeof f);
    add_pair(&f, "transformer.transformer_blocks.0.attn.to_q", ".lora_A.weight", ".lora_B.weight", &q, 0);
    add_pair(&f, "transformer.transformer_blocks.0.attn.to_k", ".lora_A.weight", ".lora_B.weight", &k, 0);
    add_pair(&f, "transformer.transformer_blocks.0.attn.to_v", ".lora_A.weight", ".lora_B.weight", &v, 0);
    add_pair(&f, "transformer.transformer_blocks.0.attn.add_k_proj", ".lora_A.weight", ".lora_B.weight", &ak, 0);
    add_pair(&f, "transformer.transformer_blocks.0.attn.to_out.0", ".lora_A.weight", ".lora_B.weight", &o, 0);
    add_pair(&f, "transformer.single_transformer_blocks.0.attn.to_q", ".lora_A.weight", ".lora_B.weight", &sq, 0);
    add_pair(&f, "transformer.single_transformer_blocks.0.attn.to_v", ".lora_A.weight", ".lora_B.weight", &sv, 0);
    add_pair(&f, "transformer.single_transformer_blocks.0.proj_mlp", ".lora_A.weight", ".lora_B.weight", &smlp, 0);
    const char *dpath = scratch_path("diffusers_flux.safetensors");
    write_lora(dpath, &f, NULL);
    const char *paths[1] = {dpath};
    float scales[1] = {0.9f};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) == QD_OK) {
        /* alpha = rank here, so each factor is the scale */
        slice s1[] = {{&q, 0.9, 0, 0, D}, {&k, 0.9, D, 0, D}, {&v, 0.9, 2 * D, 0, D}};
        expect_slices(ctx, set, "diffusers to_q/to_k/to_v into BFL img_attn.qkv rows", NULL,
                      "model.diffusion_model.double_blocks.0.img_attn.qkv.weight", 3 * D, D, s1, 3, 3);
        slice s2[] = {{&ak, 0.9, D, 0, D}};
        expect_slices(ctx, set, "diffusers add_k_proj into BFL txt_attn.qkv rows D..2D", NULL,
                      "double_blocks.0.txt_attn.qkv.weight", 3 * D, D, s2, 1, 1);
        slice s3[] = {{&o, 0.9, 0, 0, D}};
        expect_slices(ctx, set, "diffusers to_out.0 onto BFL img_attn.proj", NULL,
                      "model.diffusion_model.double_blocks.0.img_attn.proj.weight", D, D, s3, 1, 1);
        slice s4[] = {{&sq, 0.9, 0, 0, D}, {&sv, 0.9, 2 * D, 0, D}, {&smlp, 0.9, 3 * D, 0, MLP}};
        expect_slices(ctx, set, "diffusers single to_q/to_v/proj_mlp into BFL linear1 rows", NULL,
                      "single_blocks.0.linear1.weight", 3 * D + MLP, D, s4, 3, 3);
        /* a part whose size is not the weight's part: clear error naming both */
        float wbad[3 * 7 * 7];
        int64_t shb[2] = {21, 7};
        check(qd_lora_apply(ctx, set, NULL, "double_blocks.0.img_attn.qkv.weight", wbad, shb, 2) < 0 &&
                  strstr(qd_last_error(ctx), "does not fit") && strstr(qd_last_error(ctx), "img_attn.qkv") &&
                  strstr(qd_last_error(ctx), "[21,7]"),
              "fused qkv of another size: %s", qd_last_error(ctx));
        qd_lora_set_free(set);
    } else {
        check(0, "open diffusers FLUX LoRA: %s", qd_last_error(ctx));
    }
    /* the reverse: kohya/BFL fused LoRA into diffusers' separate layers */
    pair qkv = make_pair(3 * D, D, 2, 1, 1), l1 = make_pair(3 * D + MLP, D, 3, 1, 1);
    memset(&f, 0, sizeof f);
    add_pair(&f, "lora_unet_double_blocks_0_img_attn_qkv", ".lora_down.weight", ".lora_up.weight", &qkv, 1.0f);
    add_pair(&f, "lora_unet_single_blocks_0_linear1", ".lora_down.weight", ".lora_up.weight", &l1, 6.0f);
    const char *bpath = scratch_path("bfl_flux.safetensors");
    write_lora(bpath, &f, NULL);
    paths[0] = bpath;
    if (qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) == QD_OK) {
        const char *qn[3] = {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_k.weight",
                             "transformer_blocks.0.attn.to_v.weight"};
        const double fq = 0.9 * 1.0 / 2, fl = 0.9 * 6.0 / 3;
        for (int i = 0; i < 3; i++) {
            char what[128];
            snprintf(what, sizeof what, "BFL fused qkv up rows %d..%d onto diffusers %s", (int)(i * D), (int)((i + 1) * D),
                     qn[i] + 21);
            slice s[] = {{&qkv, fq, 0, i * D, D}};
            expect_slices(ctx, set, what, "transformer", qn[i], D, D, s, 1, 1);
        }
        const char *sn[4] = {"single_transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_k.weight",
                             "single_transformer_blocks.0.attn.to_v.weight", "single_transformer_blocks.0.proj_mlp.weight"};
        for (int i = 0; i < 4; i++) {
            char what[128];
            snprintf(what, sizeof what, "BFL linear1 up rows from %d onto diffusers %s", (int)(i * D), sn[i]);
            slice s[] = {{&l1, fl, 0, i * D, i == 3 ? MLP : D}};
            expect_slices(ctx, set, what, "transformer", sn[i], i == 3 ? MLP : D, D, s, 1, 1);
        }
        int64_t matched = 0, total = 0;
        qd_lora_set_report(set, &matched, &total);
        check(matched == 2 && total == 2, "report counts the fused layers once: %lld of %lld", (long long)matched,
              (long long)total);
        float wbad[7 * 7];
        int64_t shb[2] = {7, 7};
        check(qd_lora_apply(ctx, set, "transformer", "transformer_blocks.0.attn.to_k.weight", wbad, shb, 2) < 0 &&
                  strstr(qd_last_error(ctx), "does not fit") && strstr(qd_last_error(ctx), "lora_unet_double_blocks_0_img_attn_qkv"),
              "fused up split onto a to_k of another size: %s", qd_last_error(ctx));
        qd_lora_set_free(set);
    } else {
        check(0, "open BFL FLUX LoRA: %s", qd_last_error(ctx));
    }
    pair *all[] = {&q, &k, &v, &ak, &o, &sq, &sv, &smlp, &qkv, &l1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free_pair(all[i]);
}

/* SDXL kohya LoRAs name UNet layers by the original (LDM) module path with '.' -> '_'.
 * The expected diffusers names are written out by hand from the SDXL layout (2 resnets per
 * level, a downsampler after each but the last level, 3 layers + upsampler per up level). */
static void test_ldm_names(qd_ctx *ctx) {
    static const struct { const char *kohya, *diffusers; int64_t out, in, k; } c[] = {
        {"input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 8, 8, 1},
        {"input_blocks_7_1_transformer_blocks_9_attn2_to_out_0", "down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_out.0", 8, 8, 1},
        {"middle_block_1_transformer_blocks_1_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj", 12, 6, 1},
        {"middle_block_1_proj_in", "mid_block.attentions.0.proj_in", 6, 6, 1},
        {"output_blocks_2_0_in_layers_2", "up_blocks.0.resnets.2.conv1", 6, 4, 3},
        {"output_blocks_8_0_skip_connection", "up_blocks.2.resnets.2.conv_shortcut", 6, 4, 1},
        {"input_blocks_8_0_emb_layers_1", "down_blocks.2.resnets.1.time_emb_proj", 6, 10, 1},
        {"output_blocks_5_2_conv", "up_blocks.1.upsamplers.0.conv", 4, 4, 3},
        {"input_blocks_6_0_op", "down_blocks.1.downsamplers.0.conv", 4, 4, 3},
        {"input_blocks_0_0", "conv_in", 6, 4, 3},
        {"time_embed_2", "time_embedding.linear_2", 10, 10, 1},
        {"label_emb_0_0", "add_embedding.linear_1", 10, 9, 1},
        {"out_2", "conv_out", 4, 6, 3},
    };
    enum { N = sizeof c / sizeof c[0] };
    pair ps[N];
    lora_file f;
    memset(&f, 0, sizeof f);
    for (int i = 0; i < N; i++) {
        char base[160];
        ps[i] = make_pair(c[i].out, c[i].in, 2 + i % 2, c[i].k, c[i].k);
        snprintf(base, sizeof base, "lora_unet_%s", c[i].kohya);
        add_pair(&f, base, ".lora_down.weight", ".lora_up.weight", &ps[i], 1.0f + (float)i);
    }
    pair bogus = make_pair(8, 8, 2, 1, 1);
    add_pair(&f, "lora_unet_input_blocks_4_1_bogus_layer", ".lora_down.weight", ".lora_up.weight", &bogus, 1.0f);
    const char *path = scratch_path("sdxl_ldm.safetensors");
    write_lora(path, &f, NULL);
    const char *paths[1] = {path};
    float scales[1] = {0.7f};
    qd_lora_set *set = NULL;
    if (qd_lora_set_open(ctx, paths, scales, 1, 1.0f, &set) != QD_OK) {
        check(0, "open SDXL LDM-named LoRA: %s", qd_last_error(ctx));
    } else {
        for (int i = 0; i < N; i++) {
            char what[200], name[200];
            /* "conv ..." makes expect_merge pass a 4-D weight (the 1x1 conv_shortcut too) */
            snprintf(what, sizeof what, "%s%s -> %s", strstr(c[i].diffusers, "conv") ? "conv " : "", c[i].kohya,
                     c[i].diffusers);
            snprintf(name, sizeof name, "%s.weight", c[i].diffusers);
            const pair *pp[1] = {&ps[i]};
            double fac[1] = {0.7 * (1.0 + i) / (double)ps[i].r};
            expect_merge(ctx, set, what, "unet", name, c[i].out, c[i].in, c[i].k, c[i].k, pp, fac, 1);
        }
        /* the same pairs still match an LDM single-file checkpoint's own names */
        const pair *pp[1] = {&ps[0]};
        double fac[1] = {0.7 * 1.0 / (double)ps[0].r};
        expect_merge(ctx, set, "LDM single-file name", NULL,
                     "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", 8, 8, 1, 1, pp, fac, 1);
        int64_t matched = 0, total = 0;
        qd_lora_set_report(set, &matched, &total);
        check(matched == N && total == N + 1, "LDM names: %lld of %lld matched (the unknown 'bogus_layer' not)",
              (long long)matched, (long long)total);
        qd_lora_set_free(set);
    }
    for (int i = 0; i < N; i++) free_pair(&ps[i]);
    free_pair(&bogus);
}

int main(void) {
    if (!scratch_make("lora_test")) return test_summary();
    qd_ctx *ctx = test_ctx_new(2);
    test_conventions(ctx);
    test_dampening(ctx);
    test_peft_config(ctx);
    test_fused(ctx);
    test_ldm_names(ctx);
    test_errors(ctx);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
