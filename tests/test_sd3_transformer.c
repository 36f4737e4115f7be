/* SD3Transformer2DModel against the diffusers 0.32.2 golden (sd35-tiny: qk_norm rms_norm,
 * a context_pre_only last block, a non-square 8x12 latent, 333 context tokens), batch
 * independence, cancellation, bad forward arguments, dual attention (SD3.5 Medium layout)
 * on doctored weights, the computed position table, and bad input: unsupported or
 * malformed configs, misshapen and missing tensors must fail with a clear message. */
#include "testutil.h"
#include "models/sd3_transformer.h"
#include "io/safetensors.h"
#include "base/ctx.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "models/sd35-tiny/transformer"
#define GOLDEN "goldens/sd35-tiny/transformer.safetensors"

static char tmpdir[256];

typedef struct {
    float *x, *t, *c, *pooled, *ref;
    int64_t xs[4], cs[3];
    size_t n;
} golden_io;

static int load_golden(golden_io *g) {
    const char *path = fixture(GOLDEN);
    memset(g, 0, sizeof *g);
    g->x = load_f32(path, "hidden_states", g->xs, NULL, &g->n);
    g->t = load_f32(path, "timestep", NULL, NULL, NULL);
    g->c = load_f32(path, "encoder_hidden_states", g->cs, NULL, NULL);
    g->pooled = load_f32(path, "pooled_projections", NULL, NULL, NULL);
    g->ref = load_f32(path, "out", NULL, NULL, NULL);
    return g->x && g->t && g->c && g->pooled && g->ref;
}

static void free_golden(golden_io *g) {
    free(g->x); free(g->t); free(g->c); free(g->pooled); free(g->ref);
}

/* Run the model in `dir` on the golden inputs; out gets the result. */
static qd_status run(qd_ctx *ctx, const char *dir, const golden_io *g, float *out, qd_sd3 **keep) {
    qd_sd3 *m;
    qd_status st = qd_sd3_load(ctx, dir, &m);
    if (st != QD_OK) return st;
    st = qd_sd3_forward(ctx, m, g->x, g->xs[0], g->xs[2], g->xs[3], g->t, g->c, g->cs[1], g->pooled, out);
    if (keep && st == QD_OK) *keep = m;
    else qd_sd3_free(m);
    return st;
}

static void golden(qd_ctx *ctx, const golden_io *g) {
    qd_sd3 *m;
    if (qd_sd3_load(ctx, fixture(MODEL), &m) != QD_OK) {
        check(0, "load: %s", qd_last_error(ctx));
        return;
    }
    const qd_sd3_info *info = qd_sd3_get_info(m);
    check(info->in_channels == 16 && info->out_channels == 16 && info->patch_size == 2 && info->sample_size == 8 &&
          info->joint_attention_dim == 96 && info->pooled_projection_dim == 80 && info->num_layers == 2 &&
          info->inner_dim == 64, "info: in %d out %d patch %d sample %d joint %d pooled %d layers %d inner %d",
          info->in_channels, info->out_channels, info->patch_size, info->sample_size, info->joint_attention_dim,
          info->pooled_projection_dim, info->num_layers, info->inner_dim);
    float *out = malloc(sizeof(float) * g->n);
    int64_t B = g->xs[0], H = g->xs[2], W = g->xs[3], L = g->cs[1];
    qd_status st = qd_sd3_forward(ctx, m, g->x, B, H, W, g->t, g->c, L, g->pooled, out);
    check(st == QD_OK, "forward: %s", st ? qd_last_error(ctx) : "ok");
    char what[128];
    snprintf(what, sizeof what, "sd35-tiny transformer %lldx%lld vs diffusers (t = %g, %g)", (long long)H,
             (long long)W, g->t[0], g->t[1]);
    check_close(what, out, g->ref, g->n, 1e-4, 1e-3);

    /* batch item 1 alone gives the same answer: no cross-batch indexing mistakes */
    size_t per = g->n / (size_t)B;
    st = qd_sd3_forward(ctx, m, g->x + per, 1, H, W, g->t + 1, g->c + L * g->cs[2], L, g->pooled + 80, out);
    check(st == QD_OK, "forward batch item 1: %s", st ? qd_last_error(ctx) : "ok");
    check_close("batch item 1 alone", out, g->ref + per, per, 1e-4, 1e-3);

    /* fewer context tokens and a smaller latent run (no golden: finite, non-zero) */
    st = qd_sd3_forward(ctx, m, g->x, 1, 4, 6, g->t, g->c, 7, g->pooled, out);
    int finite = 1;
    double mx = 0;
    for (int64_t i = 0; i < 16 * 4 * 6; i++) {
        finite &= isfinite(out[i]) != 0;
        if (fabs(out[i]) > mx) mx = fabs(out[i]);
    }
    check(st == QD_OK && finite && mx > 0, "4x6 latent, 7 context tokens: %s, max|out| %.3g",
          st ? qd_last_error(ctx) : "ok", mx);

    /* bad arguments */
    st = qd_sd3_forward(ctx, m, g->x, 1, 9, 12, g->t, g->c, L, g->pooled, out);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "patch_size"), "odd latent height: %s", qd_last_error(ctx));
    st = qd_sd3_forward(ctx, m, g->x, 1, 34, 2, g->t, g->c, L, g->pooled, out);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "pos_embed_max_size"), "latent past the position table: %s",
          qd_last_error(ctx));
    st = qd_sd3_forward(ctx, m, g->x, 1, H, W, g->t, g->c, L, NULL, out);
    check(st == QD_ERR_ARG, "missing pooled projections: %s", qd_last_error(ctx));
    st = qd_sd3_forward(ctx, m, g->x, 1, H, W, g->t, g->c, 0, g->pooled, out);
    check(st == QD_ERR_ARG, "zero context tokens: %s", qd_last_error(ctx));

    /* cancellation frees everything (ASan checks) and says so */
    qd_cancel(ctx);
    st = qd_sd3_forward(ctx, m, g->x, B, H, W, g->t, g->c, L, g->pooled, out);
    check(st == QD_ERR_CANCELLED, "cancelled forward returns QD_ERR_CANCELLED (%d)", st);
    ctx->cancel = 0;
    free(out);
    qd_sd3_free(m);
}

/* ---- doctored model folders ---- */

/* tmpdir/config.json = the fixture config with `key` set to the JSON `value` (NULL
 * value: key removed). */
static void write_config(const char *key, const char *value) {
    write_config_with(fixture(MODEL "/config.json"), tmpdir, key, value);
}

static void link_weights(void) {
    link_fixture(fixture(MODEL "/diffusion_pytorch_model.safetensors"), tmpdir, "diffusion_pytorch_model.safetensors");
}

static qd_status load(qd_ctx *ctx, const char *dir, int *cleared) {
    qd_sd3 *m = (qd_sd3 *)1;
    qd_status st = qd_sd3_load(ctx, dir, &m);
    *cleared = m == NULL;
    if (st == QD_OK) qd_sd3_free(m);
    return st;
}

static void expect_fail(qd_ctx *ctx, const char *what, qd_status want, const char *needle1, const char *needle2) {
    expect_load_fail(ctx, load, tmpdir, what, want, needle1, needle2);
}

static void configs(qd_ctx *ctx, const golden_io *g) {
    link_weights();
    static const char *const unsupported[][3] = {
        {"_class_name", "\"FluxTransformer2DModel\"", "_class_name"},
        {"qk_norm", "\"layer_norm\"", "qk_norm"},
        {"qk_norm", "\"rms_norm_across_heads\"", "qk_norm"},
        {"pos_embed_max_size", "null", "pos_embed_max_size"},
    };
    check_config_cases(ctx, load, fixture(MODEL "/config.json"), tmpdir, unsupported,
                       sizeof unsupported / sizeof *unsupported, QD_ERR_UNSUPPORTED);
    static const char *const malformed[][3] = {
        {"dual_attention_layers", "[0, 2]", "dual_attention_layers"},
        {"dual_attention_layers", "[-1]", "dual_attention_layers"},
        {"dual_attention_layers", "3", "dual_attention_layers"},
        {"dual_attention_layers", "[\"0\"]", "dual_attention_layers"},
        {"caption_projection_dim", "96", "caption_projection_dim"},
        {"num_layers", "0", "num_layers"},
        {"attention_head_dim", "-16", "attention_head_dim"},
        {"patch_size", "2.5", "patch_size"},
        {"in_channels", "\"16\"", "in_channels"},
    };
    check_config_cases(ctx, load, fixture(MODEL "/config.json"), tmpdir, malformed, sizeof malformed / sizeof *malformed,
                       QD_ERR_FORMAT);
    /* valid configs that disagree with the weights: the error names the file and tensor */
    write_config("num_layers", "3");
    expect_fail(ctx, "num_layers 3 with 2 blocks of weights", QD_ERR_FORMAT, "transformer_blocks.1.",
                "diffusion_pytorch_model.safetensors");
    write_config("dual_attention_layers", "[0]");
    expect_fail(ctx, "dual_attention_layers [0] without attn2 weights", QD_ERR_FORMAT,
                "transformer_blocks.0.norm1.linear.weight", "diffusion_pytorch_model.safetensors");
    write_config("joint_attention_dim", "4096");
    expect_fail(ctx, "joint_attention_dim vs weights", QD_ERR_FORMAT, "context_embedder.weight", NULL);
    write_config("attention_head_dim", "32");
    expect_fail(ctx, "attention_head_dim vs weights", QD_ERR_FORMAT, "config.json", "caption_projection_dim");

    /* spellings diffusers treats the same as the fixture's config give the same output */
    static const char *same[][2] = {
        {"out_channels", "null"}, {"dual_attention_layers", "null"}, {"dual_attention_layers", NULL},
        {"_class_name", NULL},
    };
    float *out = malloc(sizeof(float) * g->n);
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        write_config(same[i][0], same[i][1]);
        qd_status st = run(ctx, tmpdir, g, out, NULL);
        char what[128];
        snprintf(what, sizeof what, "config %s %s %s", same[i][0], same[i][1] ? "=" : "removed",
                 same[i][1] ? same[i][1] : "");
        check(st == QD_OK, "%s: %s", what, st ? qd_last_error(ctx) : "ok");
        if (st == QD_OK) check_close(what, out, g->ref, g->n, 1e-4, 1e-3);
    }
    /* qk_norm null: the norm weights are then unused, and the output must change */
    write_config("qk_norm", "null");
    qd_status st = run(ctx, tmpdir, g, out, NULL);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-3, "qk_norm null loads and changes the output (rel L2 %.3g): %s", d,
          st ? qd_last_error(ctx) : "ok");
    free(out);
}

/* Write tmpdir's weights: every fixture tensor except `victim`, which is dropped or given
 * the same bytes under a wrong shape; `extra` tensors are appended. */
static qd_status write_weights(qd_ctx *ctx, const char *victim, int drop, const qd_st_out *extra, int n_extra,
                               const char *const *skip, int n_skip) {
    qd_st_set set;
    qd_status st = qd_st_open(ctx, fixture(MODEL "/diffusion_pytorch_model.safetensors"), &set);
    if (st != QD_OK) return st;
    qd_st_out *t = calloc((size_t)(set.n_tensors + n_extra), sizeof *t);
    int n = 0;
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *s = &set.tensors[i];
        int skipped = 0;
        for (int k = 0; k < n_skip; k++) skipped |= !strcmp(s->name, skip[k]);
        if (skipped || (drop && victim && !strcmp(s->name, victim))) continue;
        t[n].name = s->name;
        t[n].dtype = s->dtype;
        t[n].ndim = s->ndim;
        memcpy(t[n].shape, s->shape, sizeof s->shape);
        t[n].data = s->data;
        if (victim && !strcmp(s->name, victim)) {   /* same bytes, wrong shape */
            t[n].shape[s->ndim - 1] *= 2;
            t[n].shape[s->ndim - 2] /= 2;
        }
        n++;
    }
    for (int k = 0; k < n_extra; k++) t[n++] = extra[k];
    char path[512];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", tmpdir);
    unlink(path);
    st = qd_st_write(ctx, path, t, n, NULL);
    free(t);
    qd_st_close(&set);
    return st;
}

static void bad_weights(qd_ctx *ctx, const char *victim, int drop) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    if (symlink(fixture(MODEL "/config.json"), path) != 0) check(0, "symlink %s", path);
    qd_status st = write_weights(ctx, victim, drop, NULL, 0, NULL, 0);
    check(st == QD_OK, "write modified weights: %s", st ? qd_last_error(ctx) : "ok");
    char what[160];
    snprintf(what, sizeof what, "weights with %s %s", victim, drop ? "missing" : "misshapen");
    expect_fail(ctx, what, QD_ERR_FORMAT, victim, "diffusion_pytorch_model.safetensors");
}

static int n_warn;
static char last_warn[1024];

static void log_sink(void *user, int level, const char *msg) {
    if (level != QD_LOG_WARN) return;
    n_warn++;
    snprintf(last_warn, sizeof last_warn, "%s", msg);
}

/* The position table: computed from the config (the goldens match the exact float32
 * table); the checkpoint's copy is used only when it is not a rounding of that table. */
static void pos_embed(qd_ctx *ctx, const golden_io *g) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    if (symlink(fixture(MODEL "/config.json"), path) != 0) check(0, "symlink %s", path);
    float *out = malloc(sizeof(float) * g->n);
    qd_set_log(ctx, log_sink, NULL);

    const char *skip[] = {"pos_embed.pos_embed"};
    qd_status st = write_weights(ctx, NULL, 0, NULL, 0, skip, 1);
    if (st == QD_OK) st = run(ctx, tmpdir, g, out, NULL);
    check(st == QD_OK, "weights without pos_embed.pos_embed: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) check_close("no stored position table", out, g->ref, g->n, 1e-4, 1e-3);

    /* a stored table that is not the config's: used as stored, with a warning */
    static float zeros[256 * 64];
    qd_st_out z = {"pos_embed.pos_embed", QD_F32, 3, {1, 256, 64}, zeros};
    n_warn = 0;
    st = write_weights(ctx, NULL, 0, &z, 1, skip, 1);
    if (st == QD_OK) st = run(ctx, tmpdir, g, out, NULL);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && n_warn == 1 && strstr(last_warn, "pos_embed.pos_embed") && d > 1e-3,
          "zeroed stored table is used, with a warning (rel L2 %.3g): %s", d, n_warn ? last_warn : "no warning");

    /* the fixture's bf16 table under a config implying another grid scale: the stored one wins */
    link_weights();
    write_config("sample_size", "16");
    n_warn = 0;
    st = run(ctx, tmpdir, g, out, NULL);
    check(st == QD_OK && n_warn == 1, "sample_size 16 vs the stored table warns: %s",
          st ? qd_last_error(ctx) : n_warn ? last_warn : "no warning");
    if (st == QD_OK) check_close("stored bf16 table", out, g->ref, g->n, 1e-3, 2e-3);
    qd_set_log(ctx, NULL, NULL);
    free(out);
}

/* SD3.5 Medium's dual attention on doctored weights: block 0 gets a 9-chunk norm1 (the
 * fixture's 6 chunks + shift/scale/gate for attn2) and attn2 = a copy of its attn's
 * image projections. A zero attn2 gate must reproduce the golden exactly (the 6 original
 * chunks are still read in the right places); a non-zero gate must change the output,
 * deterministically per batch item. */
static void dual_attention(qd_ctx *ctx, const golden_io *g) {
    qd_st_set set;
    if (qd_st_open(ctx, fixture(MODEL "/diffusion_pytorch_model.safetensors"), &set) != QD_OK) {
        check(0, "open weights: %s", qd_last_error(ctx));
        return;
    }
    const int64_t D = 64;
    const qd_st_tensor *nw = qd_st_find(&set, "transformer_blocks.0.norm1.linear.weight");
    const qd_st_tensor *nb = qd_st_find(&set, "transformer_blocks.0.norm1.linear.bias");
    float *w9 = calloc((size_t)(9 * D * D), sizeof(float)), *b9 = calloc((size_t)(9 * D), sizeof(float));
    qd_st_to_f32(nw, 0, 6 * D * D, w9);
    qd_st_to_f32(nb, 0, 6 * D, b9);
    /* attn2's shift and scale: the msa ones, slightly perturbed so attn2 sees its own input */
    for (int64_t i = 0; i < 2 * D * D; i++) w9[6 * D * D + i] = w9[i] * 0.5f;
    for (int64_t i = 0; i < 2 * D; i++) b9[6 * D + i] = b9[i] + 0.1f;
    static const char *names[][2] = {
        {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn2.to_q.weight"},
        {"transformer_blocks.0.attn.to_q.bias", "transformer_blocks.0.attn2.to_q.bias"},
        {"transformer_blocks.0.attn.to_k.weight", "transformer_blocks.0.attn2.to_k.weight"},
        {"transformer_blocks.0.attn.to_k.bias", "transformer_blocks.0.attn2.to_k.bias"},
        {"transformer_blocks.0.attn.to_v.weight", "transformer_blocks.0.attn2.to_v.weight"},
        {"transformer_blocks.0.attn.to_v.bias", "transformer_blocks.0.attn2.to_v.bias"},
        {"transformer_blocks.0.attn.to_out.0.weight", "transformer_blocks.0.attn2.to_out.0.weight"},
        {"transformer_blocks.0.attn.to_out.0.bias", "transformer_blocks.0.attn2.to_out.0.bias"},
        {"transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.attn2.norm_q.weight"},
        {"transformer_blocks.0.attn.norm_k.weight", "transformer_blocks.0.attn2.norm_k.weight"},
    };
    enum { NX = sizeof names / sizeof *names };
    qd_st_out extra[NX + 2];
    for (int i = 0; i < NX; i++) {
        const qd_st_tensor *s = qd_st_find(&set, names[i][0]);
        extra[i] = (qd_st_out){names[i][1], s->dtype, s->ndim, {0}, s->data};
        memcpy(extra[i].shape, s->shape, sizeof s->shape);
    }
    extra[NX] = (qd_st_out){"transformer_blocks.0.norm1.linear.weight", QD_F32, 2, {9 * D, D}, w9};
    extra[NX + 1] = (qd_st_out){"transformer_blocks.0.norm1.linear.bias", QD_F32, 1, {9 * D}, b9};
    const char *skip[] = {"transformer_blocks.0.norm1.linear.weight", "transformer_blocks.0.norm1.linear.bias"};
    write_config("dual_attention_layers", "[0]");

    float *out = malloc(sizeof(float) * g->n), *out1 = malloc(sizeof(float) * g->n);
    qd_status st = write_weights(ctx, NULL, 0, extra, NX + 2, skip, 2);   /* gate rows 8D..9D are zero */
    if (st == QD_OK) st = run(ctx, tmpdir, g, out, NULL);
    check(st == QD_OK, "dual attention, zero attn2 gate: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) check_close("dual attention with a zero attn2 gate = golden", out, g->ref, g->n, 1e-5, 1e-4);

    for (int64_t i = 0; i < D * D; i++) w9[8 * D * D + i] = w9[2 * D * D + i];   /* gate2 = gate_msa */
    for (int64_t i = 0; i < D; i++) b9[8 * D + i] = b9[2 * D + i];
    qd_sd3 *m = NULL;
    st = write_weights(ctx, NULL, 0, extra, NX + 2, skip, 2);
    if (st == QD_OK) st = run(ctx, tmpdir, g, out, &m);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    int finite = 1;
    for (size_t i = 0; st == QD_OK && i < g->n; i++) finite &= isfinite(out[i]) != 0;
    check(st == QD_OK && finite && d > 1e-3, "dual attention with a gate changes the output (rel L2 %.3g): %s", d,
          st ? qd_last_error(ctx) : "ok");
    if (m) {
        size_t per = g->n / (size_t)g->xs[0];
        int64_t L = g->cs[1];
        st = qd_sd3_forward(ctx, m, g->x + per, 1, g->xs[2], g->xs[3], g->t + 1, g->c + L * g->cs[2], L,
                            g->pooled + 80, out1);
        check(st == QD_OK, "dual attention batch item 1: %s", st ? qd_last_error(ctx) : "ok");
        check_close("dual attention batch item 1 alone", out1, out + per, per, 1e-5, 1e-4);
        qd_sd3_free(m);
    }
    free(out);
    free(out1);
    free(w9);
    free(b9);
    qd_st_close(&set);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(2);
    golden_io g;
    if (!load_golden(&g)) {
        check(0, "load golden %s", GOLDEN);
        free_golden(&g);
        qd_ctx_free(ctx);
        return test_summary();
    }
    check(g.xs[2] == 8 && g.xs[3] == 12 && g.cs[1] == 333, "golden: latent %lldx%lld, %lld context tokens",
          (long long)g.xs[2], (long long)g.xs[3], (long long)g.cs[1]);
    golden(ctx, &g);

    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_test_sd3_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        check(0, "mkdtemp");
    } else {
        configs(ctx, &g);
        bad_weights(ctx, "pos_embed.proj.weight", 0);
        bad_weights(ctx, "transformer_blocks.1.attn.to_k.weight", 0);
        bad_weights(ctx, "transformer_blocks.0.norm1_context.linear.weight", 0);
        bad_weights(ctx, "pos_embed.pos_embed", 0);
        bad_weights(ctx, "transformer_blocks.0.attn.norm_added_k.weight", 1);
        bad_weights(ctx, "transformer_blocks.0.ff_context.net.2.bias", 1);
        bad_weights(ctx, "proj_out.weight", 1);
        pos_embed(ctx, &g);
        dual_attention(ctx, &g);
        char path[512];
        snprintf(path, sizeof path, "%s/config.json", tmpdir);
        unlink(path);
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", tmpdir);
        unlink(path);
        rmdir(tmpdir);
    }
    free_golden(&g);
    qd_ctx_free(ctx);
    return test_summary();
}
