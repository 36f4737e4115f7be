/* LoRA merge (src/convert/lora.c): LoRA files written here in every supported naming
 * convention with known down (A), up (B) and alpha; the merged weight must equal
 * W + scale * dampen^i * alpha/rank * B.A computed by a plain double loop (rel L2 <= 1e-6,
 * max abs <= 1e-5 of max |W'|). Then dampening across two files, the matched/total
 * report, and errors: a LoRA matching no weight (says 0 of N), shape mismatch, LoHa,
 * a missing up half, a missing file. */
#include "testutil.h"
#include "convert/lora.h"
#include "io/safetensors.h"
#include "base/half.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    add_pair(&f, "diffusion_model.double_blocks.0.img_attn.qkv", ".lora_A.weight", ".lora_B.weight", &bfl, 0);
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
    ONE("BFL diffusion_model. on a single-file name", NULL, "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
        bfl, 2.0, 1, 1);
    ONE("BFL diffusion_model. on a bare name", NULL, "double_blocks.0.img_attn.qkv.weight", bfl, 2.0, 1, 1);
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
    check(qd_lora_touches(set, "text_encoder", "down_blocks.0.attentions.0.proj_in.weight") == 0 &&
              qd_lora_touches(set, "unet", "down_blocks.0.attentions.0.proj_in.weight") == 1,
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

int main(void) {
    if (!scratch_make("lora_test")) return test_summary();
    qd_ctx *ctx = test_ctx_new(2);
    test_conventions(ctx);
    test_dampening(ctx);
    test_errors(ctx);
    qd_ctx_free(ctx);
    scratch_remove();
    return test_summary();
}
