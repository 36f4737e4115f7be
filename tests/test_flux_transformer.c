/* FluxTransformer2DModel against the diffusers 0.32.2 golden (flux-tiny: guidance
 * embedding, 2 double + 2 single blocks, 24 image tokens, 512 text tokens), the
 * timestep convention, batch independence, cancellation, bad forward arguments, the
 * SDNQ-quantized copy of the model, the RoPE helpers, and bad input: unsupported or
 * malformed configs, misshapen and missing tensors must fail with a clear message
 * naming config.json or the file and tensor. */
#include "testutil.h"
#include "models/flux_transformer.h"
#include "io/safetensors.h"
#include "base/ctx.h"
#include "tensor/rope.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "models/flux-tiny/transformer"
#define GOLDEN "goldens/flux-tiny/transformer.safetensors"

static char tmpdir[256];

typedef struct {
    float *x, *t, *g, *pooled, *c, *img_ids, *txt_ids, *ref;
    int64_t xs[3], cs[3];
    size_t n;
} golden_io;

static int load_golden(golden_io *g) {
    const char *path = fixture(GOLDEN);
    memset(g, 0, sizeof *g);
    g->x = load_f32(path, "hidden_states", g->xs, NULL, &g->n);
    g->t = load_f32(path, "timestep", NULL, NULL, NULL);
    g->g = load_f32(path, "guidance", NULL, NULL, NULL);
    g->pooled = load_f32(path, "pooled_projections", NULL, NULL, NULL);
    g->c = load_f32(path, "encoder_hidden_states", g->cs, NULL, NULL);
    g->img_ids = load_f32(path, "img_ids", NULL, NULL, NULL);
    g->txt_ids = load_f32(path, "txt_ids", NULL, NULL, NULL);
    g->ref = load_f32(path, "out", NULL, NULL, NULL);
    return g->x && g->t && g->g && g->pooled && g->c && g->img_ids && g->txt_ids && g->ref;
}

static void free_golden(golden_io *g) {
    free(g->x); free(g->t); free(g->g); free(g->pooled); free(g->c); free(g->img_ids); free(g->txt_ids);
    free(g->ref);
}

static qd_status fwd(qd_ctx *ctx, qd_flux *m, const golden_io *g, const float *t, const float *gd, float *out) {
    return qd_flux_forward(ctx, m, g->x, 1, g->xs[1], t, gd, g->pooled, g->c, g->cs[1], g->img_ids, g->txt_ids, out);
}

/* Load the model in `dir` and run it on the golden inputs (guidance iff the model wants it). */
static qd_status run(qd_ctx *ctx, const char *dir, const golden_io *g, float *out) {
    qd_flux *m;
    qd_status st = qd_flux_load(ctx, dir, &m);
    if (st != QD_OK) return st;
    st = fwd(ctx, m, g, g->t, qd_flux_get_info(m)->guidance_embeds ? g->g : NULL, out);
    qd_flux_free(m);
    return st;
}

static int finite_nonzero(const float *x, size_t n, double *mx) {
    int finite = 1;
    *mx = 0;
    for (size_t i = 0; i < n; i++) {
        finite &= isfinite(x[i]) != 0;
        if (fabs(x[i]) > *mx) *mx = fabs(x[i]);
    }
    return finite && *mx > 0;
}

static void golden(qd_ctx *ctx, const golden_io *g) {
    qd_flux *m;
    if (qd_flux_load(ctx, fixture(MODEL), &m) != QD_OK) {
        check(0, "load: %s", qd_last_error(ctx));
        return;
    }
    const qd_flux_info *info = qd_flux_get_info(m);
    check(info->in_channels == 64 && info->out_channels == 64 && info->joint_attention_dim == 48 &&
          info->pooled_projection_dim == 32 && info->num_layers == 2 && info->num_single_layers == 2 &&
          info->inner_dim == 64 && info->guidance_embeds == 1 && info->axes_dims_rope[0] == 4 &&
          info->axes_dims_rope[1] == 6 && info->axes_dims_rope[2] == 6,
          "info: in %d out %d joint %d pooled %d layers %d+%d inner %d guidance %d axes [%d %d %d]",
          info->in_channels, info->out_channels, info->joint_attention_dim, info->pooled_projection_dim,
          info->num_layers, info->num_single_layers, info->inner_dim, info->guidance_embeds,
          info->axes_dims_rope[0], info->axes_dims_rope[1], info->axes_dims_rope[2]);
    const int64_t N = g->xs[1], L = g->cs[1];
    float *out = malloc(sizeof(float) * g->n);
    qd_status st = fwd(ctx, m, g, g->t, g->g, out);
    check(st == QD_OK, "forward: %s", st ? qd_last_error(ctx) : "ok");
    char what[160];
    snprintf(what, sizeof what, "flux-tiny transformer (%lld image + %lld text tokens, t = %g, guidance %g) vs diffusers",
             (long long)N, (long long)L, g->t[0], g->g[0]);
    check_close(what, out, g->ref, g->n, 1e-4, 1e-3);
    setenv("QD_ISA", "generic", 1);   /* the scalar GELU (the GEMM keeps its first choice) */
    st = fwd(ctx, m, g, g->t, g->g, out);
    unsetenv("QD_ISA");
    check(st == QD_OK, "forward, QD_ISA=generic: %s", st ? qd_last_error(ctx) : "ok");
    check_close("flux-tiny, scalar GELU", out, g->ref, g->n, 1e-4, 1e-3);

    /* The golden's timestep is the pipeline's t / 1000 (0.75 here): the model scales it by 1000.
     * Feeding the already-scaled value must give something else entirely. */
    check(g->t[0] > 0 && g->t[0] <= 1, "golden timestep %g is in the pipeline's [0, 1] convention", g->t[0]);
    float t1000 = g->t[0] * 1000.0f;
    st = fwd(ctx, m, g, &t1000, g->g, out);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-2, "timestep * 1000 changes the output (rel L2 %.3g)", d);
    float g2 = g->g[0] + 1.0f;
    st = fwd(ctx, m, g, g->t, &g2, out);
    d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-3, "guidance %g changes the output (rel L2 %.3g)", g2, d);

    /* batch of 2: the golden, and an altered second item that must match its own B=1 run */
    {
        const int64_t Cin = 64, J = 48, P = 32;
        float *x2 = malloc(sizeof(float) * 2 * N * Cin), *c2 = malloc(sizeof(float) * 2 * L * J);
        float *p2 = malloc(sizeof(float) * 2 * P), *o2 = malloc(sizeof(float) * 2 * g->n);
        float t2[2] = {g->t[0], 0.3f}, gd2[2] = {g->g[0], 2.0f};
        memcpy(x2, g->x, sizeof(float) * N * Cin);
        memcpy(c2, g->c, sizeof(float) * L * J);
        memcpy(p2, g->pooled, sizeof(float) * P);
        for (int64_t i = 0; i < N * Cin; i++) x2[N * Cin + i] = 0.5f * g->x[(i + 7) % (N * Cin)];
        for (int64_t i = 0; i < L * J; i++) c2[L * J + i] = -0.7f * g->c[i];
        for (int64_t i = 0; i < P; i++) p2[P + i] = g->pooled[P - 1 - i];
        st = qd_flux_forward(ctx, m, x2, 2, N, t2, gd2, p2, c2, L, g->img_ids, g->txt_ids, o2);
        check(st == QD_OK, "forward batch 2: %s", st ? qd_last_error(ctx) : "ok");
        check_close("batch 2, item 0 = golden", o2, g->ref, g->n, 1e-4, 1e-3);
        st = qd_flux_forward(ctx, m, x2 + N * Cin, 1, N, t2 + 1, gd2 + 1, p2 + P, c2 + L * J, L, g->img_ids,
                             g->txt_ids, out);
        check(st == QD_OK, "forward item 1 alone: %s", st ? qd_last_error(ctx) : "ok");
        check_close("batch 2, item 1 = its own B=1 run", o2 + g->n, out, g->n, 1e-5, 1e-4);
        d = rel_l2(o2 + g->n, g->ref, g->n);
        check(d > 1e-2, "the two batch items differ (rel L2 %.3g)", d);
        free(x2); free(c2); free(p2); free(o2);
    }

    /* fewer tokens of both kinds (no golden: finite, non-zero) */
    double mx = 0;
    st = qd_flux_forward(ctx, m, g->x, 1, 5, g->t, g->g, g->pooled, g->c, 7, g->img_ids, g->txt_ids, out);
    int good = st == QD_OK && finite_nonzero(out, 5 * 64, &mx);
    check(good, "5 image tokens, 7 text tokens: %s, max|out| %.3g", st ? qd_last_error(ctx) : "ok", mx);

    /* text positions enter through RoPE: moving the text ids must change the output */
    float *ids = malloc(sizeof(float) * (size_t)L * 3);
    for (int64_t i = 0; i < L * 3; i++) ids[i] = (float)(i % 5);
    st = qd_flux_forward(ctx, m, g->x, 1, N, g->t, g->g, g->pooled, g->c, L, g->img_ids, ids, out);
    d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-3, "other txt_ids change the output (rel L2 %.3g)", d);
    free(ids);

    /* bad arguments */
    st = qd_flux_forward(ctx, m, g->x, 1, N, g->t, NULL, g->pooled, g->c, L, g->img_ids, g->txt_ids, out);
    check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "guidance"), "missing guidance: %s", qd_last_error(ctx));
    st = qd_flux_forward(ctx, m, g->x, 1, N, g->t, g->g, NULL, g->c, L, g->img_ids, g->txt_ids, out);
    check(st == QD_ERR_ARG, "missing pooled projections: %s", qd_last_error(ctx));
    st = qd_flux_forward(ctx, m, g->x, 1, N, g->t, g->g, g->pooled, g->c, 0, g->img_ids, g->txt_ids, out);
    check(st == QD_ERR_ARG, "zero text tokens: %s", qd_last_error(ctx));
    st = qd_flux_forward(ctx, m, g->x, 1, N, g->t, g->g, g->pooled, g->c, L, NULL, g->txt_ids, out);
    check(st == QD_ERR_ARG, "missing img_ids: %s", qd_last_error(ctx));
    st = qd_flux_forward(ctx, m, g->x, 0, N, g->t, g->g, g->pooled, g->c, L, g->img_ids, g->txt_ids, out);
    check(st == QD_ERR_ARG, "batch 0: %s", qd_last_error(ctx));
    st = qd_flux_forward(ctx, m, g->x, 1, (int64_t)1 << 40, g->t, g->g, g->pooled, g->c, L, g->img_ids, g->txt_ids,
                         out);
    check(st == QD_ERR_ARG, "2^40 image tokens: %s", qd_last_error(ctx));

    /* cancellation frees everything (ASan checks) and says so */
    qd_cancel(ctx);
    st = fwd(ctx, m, g, g->t, g->g, out);
    check(st == QD_ERR_CANCELLED, "cancelled forward returns QD_ERR_CANCELLED (%d)", st);
    ctx->cancel = 0;
    free(out);
    qd_flux_free(m);
}

/* The same model with SDNQ int8 weights (quantized matmul layout): the matrices load
 * through qd_p_linear like any other. No transformer golden exists for it; the bf16
 * golden bounds it loosely (int8 weights and activations: ~1.5% here), and it must
 * not equal the bf16 output (the quantized weights are really in use). */
static void sdnq(qd_ctx *ctx, const golden_io *g) {
    float *out = malloc(sizeof(float) * g->n);
    qd_status st = run(ctx, fixture("models/flux-tiny-sdnq-int8-qmm/transformer"), g, out);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-4 && d < 5e-2, "SDNQ int8-qmm transformer vs the bf16 golden: rel L2 %.3g: %s", d,
          st ? qd_last_error(ctx) : "ok");
    free(out);
}

/* ---- RoPE helpers ---- */

static void rope(qd_ctx *ctx) {
    const int axes[3] = {4, 6, 6};
    const float ids[2 * 3] = {0, 0, 0, 3, 17, 250};
    float c[2 * 8], s[2 * 8];
    qd_status st = qd_rope_table(ctx, ids, 2, 3, axes, 10000.0, c, s);
    check(st == QD_OK, "rope table: %s", st ? qd_last_error(ctx) : "ok");
    double worst = 0;
    int k = 0;
    for (int ax = 0; ax < 3; ax++)
        for (int j = 0; j < axes[ax] / 2; j++, k++) {
            double ang = ids[3 + ax] * (1.0 / pow(10000.0, 2.0 * j / axes[ax]));
            worst = fmax(worst, fabs(c[8 + k] - cos(ang)) + fabs(s[8 + k] - sin(ang)));
            worst = fmax(worst, fabs(c[k] - 1.0) + fabs(s[k]));
        }
    check(worst < 1e-7, "rope table = cos/sin(pos * 10000^(-2j/d)) per axis (max err %.3g)", worst);
    int odd[3] = {4, 5, 7};
    st = qd_rope_table(ctx, ids, 2, 3, odd, 10000.0, c, s);
    check(st == QD_ERR_ARG, "odd axis dimension refused: %s", qd_last_error(ctx));

    /* apply: two heads of one row at position 1 of a period-2 table, row 3 -> position 1 */
    float x[4 * 32], ref[32];
    for (int i = 0; i < 4 * 32; i++) x[i] = (float)sin(0.37 * i + 1.0);
    memcpy(ref, x + 3 * 32, sizeof ref);
    qd_rope_apply(ctx, x, 4, 32, 2, 8, c, s, 2);
    double err = 0, n0 = 0, n1 = 0;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 8; j++) {
            float a = ref[h * 16 + 2 * j], b = ref[h * 16 + 2 * j + 1];
            float ya = x[3 * 32 + h * 16 + 2 * j], yb = x[3 * 32 + h * 16 + 2 * j + 1];
            err = fmax(err, fabs(ya - (a * c[8 + j] - b * s[8 + j])) + fabs(yb - (b * c[8 + j] + a * s[8 + j])));
            n0 += a * a + b * b;
            n1 += ya * ya + yb * yb;
        }
    check(err < 1e-6 && fabs(n0 - n1) < 1e-4 * n0, "rope apply rotates adjacent pairs (err %.3g, |x|^2 %.6g -> %.6g)",
          err, n0, n1);
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
    qd_flux *m = (qd_flux *)1;
    qd_status st = qd_flux_load(ctx, dir, &m);
    *cleared = m == NULL;
    if (st == QD_OK) qd_flux_free(m);
    return st;
}

static void expect_fail(qd_ctx *ctx, const char *what, qd_status want, const char *needle1, const char *needle2) {
    expect_load_fail(ctx, load, tmpdir, what, want, needle1, needle2);
}

static void configs(qd_ctx *ctx, const golden_io *g) {
    link_weights();
    static const char *const unsupported[][3] = {
        {"_class_name", "\"SD3Transformer2DModel\"", "_class_name"},
        {"_class_name", "\"FluxTransformer3DModel\"", "_class_name"},
        {"patch_size", "2", "patch_size"},
        {"axes_dims_rope", "[8, 8]", "axes_dims_rope"},
        {"axes_dims_rope", "[4, 4, 4, 4]", "axes_dims_rope"},
    };
    check_config_cases(ctx, load, fixture(MODEL "/config.json"), tmpdir, unsupported,
                       sizeof unsupported / sizeof *unsupported, QD_ERR_UNSUPPORTED);
    static const char *const malformed[][3] = {
        {"axes_dims_rope", "[4, 6, 8]", "attention_head_dim"},
        {"axes_dims_rope", "[4, 5, 7]", "axes_dims_rope[1]"},
        {"axes_dims_rope", "[-4, 10, 10]", "axes_dims_rope[0]"},
        {"axes_dims_rope", "16", "axes_dims_rope"},
        {"axes_dims_rope", "[4, \"6\", 6]", "axes_dims_rope[1]"},
        {"num_single_layers", "-1", "num_single_layers"},
        {"num_layers", "1.5", "num_layers"},
        {"num_attention_heads", "0", "num_attention_heads"},
        {"attention_head_dim", "-16", "attention_head_dim"},
        {"in_channels", "\"64\"", "in_channels"},
        {"guidance_embeds", "\"yes\"", "guidance_embeds"},
        {"num_layers", "100000", "num_layers"},
    };
    check_config_cases(ctx, load, fixture(MODEL "/config.json"), tmpdir, malformed, sizeof malformed / sizeof *malformed,
                       QD_ERR_FORMAT);
    {   /* not JSON at all */
        char path[512];
        snprintf(path, sizeof path, "%s/config.json", tmpdir);
        unlink(path);
        write_text_file(path, "{\"num_layers\": 2,");
        expect_fail(ctx, "truncated config.json", QD_ERR_FORMAT, "config.json", NULL);
    }

    /* valid configs that disagree with the weights: the error names the file and tensor */
    write_config("num_layers", "3");
    expect_fail(ctx, "num_layers 3 with 2 blocks of weights", QD_ERR_FORMAT, "transformer_blocks.2.",
                "diffusion_pytorch_model.safetensors");
    write_config("num_single_layers", "5");
    expect_fail(ctx, "num_single_layers 5 with 2 blocks of weights", QD_ERR_FORMAT, "single_transformer_blocks.2.",
                "diffusion_pytorch_model.safetensors");
    write_config("joint_attention_dim", "4096");
    expect_fail(ctx, "joint_attention_dim vs weights", QD_ERR_FORMAT, "context_embedder.weight", NULL);
    write_config("pooled_projection_dim", "768");
    expect_fail(ctx, "pooled_projection_dim vs weights", QD_ERR_FORMAT, "time_text_embed.text_embedder.linear_1",
                NULL);
    write_config("in_channels", "16");
    expect_fail(ctx, "in_channels vs weights", QD_ERR_FORMAT, "x_embedder.weight", NULL);
    write_config("out_channels", "16");
    expect_fail(ctx, "out_channels vs weights", QD_ERR_FORMAT, "proj_out.weight", NULL);
    write_config("num_attention_heads", "2");   /* head_dim 16 -> inner 32 */
    expect_fail(ctx, "num_attention_heads vs weights", QD_ERR_FORMAT, "x_embedder.weight", NULL);

    /* spellings diffusers treats the same as the fixture's config give the same output */
    static const char *same[][2] = {
        {"out_channels", "64"}, {"out_channels", NULL}, {"_class_name", NULL}, {"patch_size", NULL},
        {"quantization_config", "null"},
    };
    float *out = malloc(sizeof(float) * g->n);
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        write_config(same[i][0], same[i][1]);
        qd_status st = run(ctx, tmpdir, g, out);
        char what[128];
        snprintf(what, sizeof what, "config %s %s %s", same[i][0], same[i][1] ? "=" : "removed",
                 same[i][1] ? same[i][1] : "");
        check(st == QD_OK, "%s: %s", what, st ? qd_last_error(ctx) : "ok");
        if (st == QD_OK) check_close(what, out, g->ref, g->n, 1e-4, 1e-3);
    }

    /* guidance_embeds false (FLUX.1 schnell's layout): guidance weights unused, none accepted */
    write_config("guidance_embeds", "false");
    qd_flux *m = NULL;
    qd_status st = qd_flux_load(ctx, tmpdir, &m);
    check(st == QD_OK, "guidance_embeds false loads: %s", st ? qd_last_error(ctx) : "ok");
    if (m) {
        st = fwd(ctx, m, g, g->t, g->g, out);
        check(st == QD_ERR_ARG && strstr(qd_last_error(ctx), "guidance"), "guidance given to a model without "
              "guidance embedding: %s", qd_last_error(ctx));
        st = fwd(ctx, m, g, g->t, NULL, out);
        double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0, mx = 0;
        int good = st == QD_OK && finite_nonzero(out, g->n, &mx);
        check(good && d > 1e-3,
              "no guidance embedding: runs, differs from the golden (rel L2 %.3g): %s", d,
              st ? qd_last_error(ctx) : "ok");
        qd_flux_free(m);
    }
    /* fewer blocks than the weights hold: extra weights unused, as diffusers */
    write_config("num_single_layers", "1");
    st = run(ctx, tmpdir, g, out);
    double d = st == QD_OK ? rel_l2(out, g->ref, g->n) : 0;
    check(st == QD_OK && d > 1e-3, "num_single_layers 1 runs and differs (rel L2 %.3g): %s", d,
          st ? qd_last_error(ctx) : "ok");
    free(out);
}

/* Write tmpdir's weights: every fixture tensor except `victim`, which is dropped or given
 * the same bytes under a wrong 2-D shape. */
static qd_status write_weights(qd_ctx *ctx, const char *victim, int drop) {
    qd_st_set set;
    qd_status st = qd_st_open(ctx, fixture(MODEL "/diffusion_pytorch_model.safetensors"), &set);
    if (st != QD_OK) return st;
    qd_st_out *t = calloc((size_t)set.n_tensors, sizeof *t);
    int n = 0;
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *s = &set.tensors[i];
        int hit = victim && !strcmp(s->name, victim);
        if (hit && drop) continue;
        t[n].name = s->name;
        t[n].dtype = s->dtype;
        t[n].ndim = s->ndim;
        memcpy(t[n].shape, s->shape, sizeof s->shape);
        t[n].data = s->data;
        if (hit && s->ndim == 2) {   /* same bytes, wrong shape */
            t[n].shape[1] *= 2;
            t[n].shape[0] /= 2;
        }
        n++;
    }
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
    qd_status st = write_weights(ctx, victim, drop);
    check(st == QD_OK, "write modified weights: %s", st ? qd_last_error(ctx) : "ok");
    char what[160];
    snprintf(what, sizeof what, "weights with %s %s", victim, drop ? "missing" : "misshapen");
    expect_fail(ctx, what, QD_ERR_FORMAT, victim, "diffusion_pytorch_model.safetensors");
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
    check(g.xs[1] == 24 && g.xs[2] == 64 && g.cs[1] == 512, "golden: %lld image tokens x %lld, %lld text tokens",
          (long long)g.xs[1], (long long)g.xs[2], (long long)g.cs[1]);
    golden(ctx, &g);
    sdnq(ctx, &g);
    rope(ctx);

    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_test_flux_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        check(0, "mkdtemp");
    } else {
        configs(ctx, &g);
        bad_weights(ctx, "x_embedder.weight", 0);
        bad_weights(ctx, "context_embedder.weight", 0);
        bad_weights(ctx, "transformer_blocks.1.attn.to_k.weight", 0);
        bad_weights(ctx, "transformer_blocks.0.norm1_context.linear.weight", 0);
        bad_weights(ctx, "single_transformer_blocks.0.proj_out.weight", 0);
        bad_weights(ctx, "single_transformer_blocks.1.norm.linear.weight", 0);
        bad_weights(ctx, "norm_out.linear.weight", 0);
        bad_weights(ctx, "transformer_blocks.0.attn.norm_added_k.weight", 1);
        bad_weights(ctx, "transformer_blocks.1.ff_context.net.2.bias", 1);
        bad_weights(ctx, "single_transformer_blocks.1.attn.norm_q.weight", 1);
        bad_weights(ctx, "time_text_embed.guidance_embedder.linear_2.bias", 1);
        bad_weights(ctx, "proj_out.weight", 1);
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
