/* T5 encoder against transformers' T5EncoderModel (sd35-tiny text_encoder_3
 * golden: input_ids [2, 256] -> last_hidden_state), FLUX's text_encoder_2 on the
 * tokenized prompt, and bad configs / weights / ids. */
#include "testutil.h"
#include "text/t5_encoder.h"
#include "text/t5_tokenizer.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_golden(qd_ctx *ctx) {
    const char *model = "models/sd35-tiny/text_encoder_3";
    char gpath[512];
    snprintf(gpath, sizeof gpath, "%s", fixture("goldens/sd35-tiny/text_encoder_3.safetensors"));
    qd_t5_encoder *m = NULL;
    qd_status st = qd_t5_encoder_load(ctx, fixture(model), &m);
    check(st == QD_OK, "load %s: %s", model, st ? qd_last_error(ctx) : "ok");
    if (st) return;
    check(qd_t5_encoder_dim(m) == 96, "d_model %d", qd_t5_encoder_dim(m));
    int64_t shape[4] = {0};
    size_t n_ids = 0, n_ref = 0;
    float *idf = load_f32(gpath, "input_ids", shape, NULL, &n_ids);
    float *ref = load_f32(gpath, "last_hidden_state", NULL, NULL, &n_ref);
    if (!idf || !ref) { check(0, "golden tensors"); free(idf); free(ref); qd_t5_encoder_free(m); return; }
    int64_t B = shape[0], L = shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * n_ids);
    for (size_t i = 0; i < n_ids; i++) ids[i] = (int32_t)idf[i];
    float *out = malloc(sizeof(float) * n_ref);
    st = qd_t5_encoder_forward(ctx, m, ids, B, L, out);
    check(st == QD_OK && n_ref == (size_t)(B * L * 96), "forward [%lld, %lld]", (long long)B, (long long)L);
    check_close("sd35-tiny text_encoder_3 last_hidden_state", out, ref, n_ref, 1e-4, 1e-3);

    /* each batch item alone gives the same rows (no cross-talk in the batched attention) */
    float *one = malloc(sizeof(float) * (size_t)(L * 96));
    st = qd_t5_encoder_forward(ctx, m, ids + L, 1, L, one);
    check(st == QD_OK && max_abs_diff(one, out + L * 96, (size_t)(L * 96)) < 1e-5, "batch item 1 alone matches");

    /* the golden's ids are the tokenizer's: check the pipeline glue end to end */
    qd_t5_tokenizer *tok = NULL;
    if (qd_t5_tokenizer_load(ctx, fixture("models/sd35-tiny/tokenizer_3"), &tok) == QD_OK) {
        int32_t mine[256];
        qd_t5_encode_padded(ctx, tok, "A photo of a cat wearing a tiny hat, 4k, highly detailed!", mine, 256, NULL);
        check(L == 256 && !memcmp(mine, ids + L, sizeof mine), "golden's second prompt = our tokenization");
        qd_t5_tokenizer_free(tok);
    }

    /* bad ids and shapes */
    ids[3] = 32128;
    check(qd_t5_encoder_forward(ctx, m, ids, 1, L, one) == QD_ERR_ARG && strstr(qd_last_error(ctx), "32128"),
          "id 32128 refused: %s", qd_last_error(ctx));
    ids[3] = -1;
    check(qd_t5_encoder_forward(ctx, m, ids, 1, L, one) == QD_ERR_ARG, "id -1 refused");
    check(qd_t5_encoder_forward(ctx, m, ids, 1, 0, one) == QD_ERR_ARG, "empty sequence refused");
    ids[3] = 0;
    /* short sequence: position buckets below max_exact only */
    st = qd_t5_encoder_forward(ctx, m, ids, 1, 5, one);
    int finite = st == QD_OK;
    for (int i = 0; i < 5 * 96 && finite; i++) finite = isfinite(one[i]);
    check(finite, "5-token sequence: finite output");
    free(idf); free(ref); free(ids); free(out); free(one);
    qd_t5_encoder_free(m);
}

static void test_flux(qd_ctx *ctx) {
    qd_t5_tokenizer *tok = NULL;
    qd_t5_encoder *m = NULL;
    qd_status st = qd_t5_tokenizer_load(ctx, fixture("models/flux-tiny/tokenizer_2"), &tok);
    if (st == QD_OK) st = qd_t5_encoder_load(ctx, fixture("models/flux-tiny/text_encoder_2"), &m);
    check(st == QD_OK, "load flux-tiny tokenizer_2 + text_encoder_2: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        enum { L = 512 };   /* FLUX.1-dev's max_sequence_length */
        int32_t ids[L];
        qd_t5_encode_padded(ctx, tok, "a photograph of an astronaut riding a horse", ids, L, NULL);
        int D = qd_t5_encoder_dim(m);
        float *out = malloc(sizeof(float) * (size_t)(L * D));
        st = qd_t5_encoder_forward(ctx, m, ids, 1, L, out);
        int finite = st == QD_OK;
        double mx = 0;
        for (int i = 0; i < L * D && finite; i++) { finite = isfinite(out[i]); if (fabs(out[i]) > mx) mx = fabs(out[i]); }
        check(D == 48 && finite && mx > 0, "flux-tiny text_encoder_2: [1, %d, %d] finite, max |x| %.3g", L, D, mx);
        free(out);
    }
    qd_t5_encoder_free(m);
    /* the same T5 with its projections SDNQ uint4 (group 16): qd_p_linear decodes them.
     * This random tiny model turns 6% weight noise into ~40-85% output change, so
     * only "runs and is finite" is checked here; SDNQ math is tested per layer. */
    st = qd_t5_encoder_load(ctx, fixture("models/flux-tiny-sdnq-int8-qmm/text_encoder_2"), &m);
    check(st == QD_OK, "load flux-tiny-sdnq-int8-qmm text_encoder_2: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK && tok) {
        enum { L = 64 };
        int32_t ids[L];
        qd_t5_encode_padded(ctx, tok, "a photograph of an astronaut riding a horse", ids, L, NULL);
        float *out = malloc(sizeof(float) * (size_t)(L * qd_t5_encoder_dim(m)));
        st = qd_t5_encoder_forward(ctx, m, ids, 1, L, out);
        int finite = st == QD_OK;
        for (int i = 0; i < L * qd_t5_encoder_dim(m) && finite; i++) finite = isfinite(out[i]);
        check(finite, "SDNQ uint4 T5: finite output");
        free(out);
    }
    qd_t5_encoder_free(m);
    qd_t5_tokenizer_free(tok);
}

/* ---- bad folders ---- */

static void write_config(const char *dir, const char *arch, const char *ff) {
    char path[4096], cfg[2048];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"d_ff\": 64, \"d_kv\": 16, \"d_model\": 96, \"feed_forward_proj\": \"%s\","
             " \"layer_norm_epsilon\": 1e-06, \"model_type\": \"t5\", \"num_heads\": 3, \"num_layers\": 2,"
             " \"relative_attention_max_distance\": 128, \"relative_attention_num_buckets\": 32, \"vocab_size\": 32128}",
             arch, ff);
    write_text_file(path, cfg);
}

/* dir/model.safetensors = the sd35-tiny T5 weights without the tensors whose
 * names contain `victim`. */
static int write_weights_without(qd_ctx *ctx, const char *dir, const char *victim) {
    qd_st_set set;
    if (qd_st_open(ctx, fixture("models/sd35-tiny/text_encoder_3/model.safetensors"), &set) != QD_OK) return -1;
    qd_st_out *out = calloc((size_t)set.n_tensors, sizeof *out);
    int n = 0;
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *t = &set.tensors[i];
        if (strstr(t->name, victim)) continue;
        qd_st_out *o = &out[n++];
        o->name = t->name;
        o->dtype = t->dtype;
        o->ndim = t->ndim;
        memcpy(o->shape, t->shape, sizeof o->shape);
        o->data = t->data;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = qd_st_write(ctx, path, out, n, NULL) == QD_OK ? 0 : -1;
    free(out);
    qd_st_close(&set);
    return rc;
}

static void test_bad_folders(qd_ctx *ctx) {
    qd_t5_encoder *m = (qd_t5_encoder *)1;
    check(qd_t5_encoder_load(ctx, "/nonexistent/text_encoder_3", &m) != QD_OK && !m &&
              strstr(qd_last_error(ctx), "/nonexistent/text_encoder_3/config.json"), "missing folder: %s", qd_last_error(ctx));
    char dir[] = "/tmp/qd_t5enc_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    static const char *bad_ff[] = {"gated-foo", "swiglu", "gated-gelu-x"};
    for (size_t i = 0; i < sizeof bad_ff / sizeof *bad_ff; i++) {
        write_config(dir, "T5EncoderModel", bad_ff[i]);
        qd_status st = qd_t5_encoder_load(ctx, dir, &m);
        check(st == QD_ERR_UNSUPPORTED && !m && strstr(qd_last_error(ctx), cfg) && strstr(qd_last_error(ctx), bad_ff[i]),
              "feed_forward_proj '%s': %s", bad_ff[i], qd_last_error(ctx));
    }
    write_config(dir, "BertModel", "gated-gelu");
    check(qd_t5_encoder_load(ctx, dir, &m) == QD_ERR_UNSUPPORTED && strstr(qd_last_error(ctx), cfg) &&
              strstr(qd_last_error(ctx), "BertModel"), "architecture BertModel: %s", qd_last_error(ctx));
    write_text_file(cfg, "{\"d_model\": 96, \"num_heads\": 0}");
    check(qd_t5_encoder_load(ctx, dir, &m) == QD_ERR_FORMAT && strstr(qd_last_error(ctx), cfg),
          "zero heads: %s", qd_last_error(ctx));
    write_text_file(cfg, "{\"d_model\": ");
    check(qd_t5_encoder_load(ctx, dir, &m) != QD_OK && strstr(qd_last_error(ctx), cfg), "truncated config: %s",
          qd_last_error(ctx));
    /* config fine, no weights */
    write_config(dir, "T5EncoderModel", "gated-gelu");
    check(qd_t5_encoder_load(ctx, dir, &m) == QD_ERR_IO && strstr(qd_last_error(ctx), dir), "no weights: %s",
          qd_last_error(ctx));
    /* a weights file missing one tensor, then missing the embedding */
    static const char *victims[] = {"encoder.block.1.layer.1.DenseReluDense.wo.weight",
                                    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                    "shared.weight", "encoder.final_layer_norm.weight"};
    for (size_t i = 0; i < sizeof victims / sizeof *victims; i++) {
        if (write_weights_without(ctx, dir, victims[i]) != 0) { check(0, "write weights: %s", qd_last_error(ctx)); continue; }
        m = NULL;
        qd_status st = qd_t5_encoder_load(ctx, dir, &m);
        check(st != QD_OK && !m && strstr(qd_last_error(ctx), victims[i]) && strstr(qd_last_error(ctx), "model.safetensors"),
              "without %s: %s", victims[i], qd_last_error(ctx));
    }
    /* d_model disagreeing with the weights: a shape error naming a tensor */
    write_weights_without(ctx, dir, "none");
    write_text_file(cfg, "{\"architectures\": [\"T5EncoderModel\"], \"d_model\": 64, \"d_kv\": 16, \"num_heads\": 3,"
                    " \"d_ff\": 64, \"num_layers\": 2, \"feed_forward_proj\": \"gated-gelu\"}");
    check(qd_t5_encoder_load(ctx, dir, &m) != QD_OK && strstr(qd_last_error(ctx), "shared.weight"),
          "d_model 64 vs weights 96: %s", qd_last_error(ctx));
    /* the original T5 ("relu", un-gated wi) needs DenseReluDense.wi */
    write_config(dir, "T5EncoderModel", "relu");
    check(qd_t5_encoder_load(ctx, dir, &m) != QD_OK && strstr(qd_last_error(ctx), "DenseReluDense.wi.weight"),
          "relu config asks for wi: %s", qd_last_error(ctx));
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    unlink(cfg);
    rmdir(dir);
}

/* Without the fixture's norm biases the checkpoint is a plain T5 v1.1 one:
 * T5LayerNorm (RMS) everywhere and final_layer_norm last, so every output row
 * divided by the final weight has a mean square of 1 (up to eps). */
static void test_rms_layout(qd_ctx *ctx) {
    char dir[] = "/tmp/qd_t5rms_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    char cmd[512], path[600];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'/", fixture("models/sd35-tiny/text_encoder_3/config.json"), dir);
    qd_t5_encoder *m = NULL;
    if (system(cmd) != 0 || write_weights_without(ctx, dir, "layer_norm.bias") != 0) { check(0, "setup"); return; }
    qd_status st = qd_t5_encoder_load(ctx, dir, &m);
    check(st == QD_OK, "T5LayerNorm layout loads: %s", st ? qd_last_error(ctx) : "ok");
    if (st == QD_OK) {
        enum { L = 40 };
        int32_t ids[L];
        for (int i = 0; i < L; i++) ids[i] = (i * 7919) % 32128;
        float *out = malloc(sizeof(float) * L * 96);
        float *w = load_f32(fixture("models/sd35-tiny/text_encoder_3/model.safetensors"), "encoder.final_layer_norm.weight",
                            NULL, NULL, NULL);
        st = qd_t5_encoder_forward(ctx, m, ids, 1, L, out);
        double worst = 0;
        for (int r = 0; r < L && w; r++) {
            double ms = 0;
            for (int c = 0; c < 96; c++) ms += (double)(out[r * 96 + c] / w[c]) * (out[r * 96 + c] / w[c]);
            ms /= 96;
            if (fabs(ms - 1) > worst) worst = fabs(ms - 1);
        }
        check(st == QD_OK && w && worst < 1e-4, "rows RMS-normalised by final_layer_norm (|ms - 1| <= %.2g)", worst);
        free(out);
        free(w);
    }
    qd_t5_encoder_free(m);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    test_golden(ctx);
    test_flux(ctx);
    test_rms_layout(ctx);
    test_bad_folders(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
