#include "text/clip_text.h"
#include "io/file.h"
#include "io/json.h"
#include "models/params.h"
#include "tensor/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { ACT_QUICK_GELU, ACT_GELU, ACT_GELU_TANH } clip_act;

typedef struct {
    qd_norm_p ln1, ln2;
    qd_linear_p q, k, v, o, fc1, fc2;
} clip_layer;

struct qd_clip_text {
    qd_clip_text_info info;
    float eps;
    clip_act act;
    qd_params p;
    qd_weight tok_emb, pos_emb;     /* tables; SDNQ-quantized ones decode row by row */
    clip_layer *layers;
    qd_norm_p final_ln;
    qd_linear_p proj;
};

const qd_clip_text_info *qd_clip_text_get_info(const qd_clip_text *m) { return &m->info; }

void qd_clip_text_free(qd_clip_text *m) {
    if (!m) return;
    qd_params_close(&m->p);
    free(m->layers);
    free(m);
}

static qd_status parse_config(qd_ctx *ctx, const char *dir, qd_clip_text *m) {
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, path, &cfg));
    qd_status st = QD_OK;
    const char *arch[2] = {0};
    int na = qd_json_strs(cfg, "architectures", arch, 2);
    int with_proj = 0;
    if (na >= 1 && strcmp(arch[0], "CLIPTextModelWithProjection") == 0) with_proj = 1;
    else if (na >= 1 && strcmp(arch[0], "CLIPTextModel") != 0)
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: architecture '%s' is not a CLIP text model", path, arch[0]);
    qd_clip_text_info *in = &m->info;
    in->hidden_size = qd_json_int(cfg, "hidden_size", 512);
    in->num_layers = qd_json_int(cfg, "num_hidden_layers", 12);
    in->num_heads = qd_json_int(cfg, "num_attention_heads", 8);
    in->intermediate_size = qd_json_int(cfg, "intermediate_size", 2048);
    in->max_positions = qd_json_int(cfg, "max_position_embeddings", 77);
    in->vocab_size = qd_json_int(cfg, "vocab_size", 49408);
    in->eos_token_id = qd_json_int(cfg, "eos_token_id", 2);
    in->projection_dim = with_proj ? qd_json_int(cfg, "projection_dim", 512) : 0;
    m->eps = (float)qd_json_num(cfg, "layer_norm_eps", 1e-5);
    const char *act = qd_json_str(cfg, "hidden_act", "quick_gelu");
    if (strcmp(act, "quick_gelu") == 0) m->act = ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) m->act = ACT_GELU;
    else if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0) m->act = ACT_GELU_TANH;
    else if (st == QD_OK) st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported", path, act);
    if (st == QD_OK && (in->hidden_size <= 0 || in->num_layers <= 0 || in->num_heads <= 0 ||
                        in->hidden_size % in->num_heads || in->intermediate_size <= 0 ||
                        in->max_positions <= 0 || in->vocab_size <= 0 || in->num_layers > 1000))
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: inconsistent sizes (hidden_size %d, heads %d, layers %d)",
                     path, in->hidden_size, in->num_heads, in->num_layers);
    cJSON_Delete(cfg);
    return st;
}

qd_status qd_clip_text_load(qd_ctx *ctx, const char *dir, qd_clip_text **out) {
    *out = NULL;
    qd_clip_text *m = calloc(1, sizeof *m);
    if (!m) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_status st = parse_config(ctx, dir, m);
    if (st == QD_OK) st = qd_params_open(ctx, dir, "text encoder", &m->p);
    if (st != QD_OK) { qd_clip_text_free(m); return st; }
    snprintf(m->p.name, sizeof m->p.name, "%s", dir);
    const qd_clip_text_info *in = &m->info;
    int64_t D = in->hidden_size, F = in->intermediate_size;
    m->layers = calloc((size_t)in->num_layers, sizeof *m->layers);
    if (!m->layers) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    qd_params *p = &m->p;
    const char *pre = "text_model.";
    if (st == QD_OK) st = qd_p_embedding(p, &m->tok_emb, in->vocab_size, D, "%sembeddings.token_embedding", pre);
    if (st == QD_OK) st = qd_p_embedding(p, &m->pos_emb, in->max_positions, D, "%sembeddings.position_embedding", pre);
    for (int i = 0; st == QD_OK && i < in->num_layers; i++) {
        clip_layer *l = &m->layers[i];
        char lp[128];
        snprintf(lp, sizeof lp, "%sencoder.layers.%d", pre, i);
        if (st == QD_OK) st = qd_p_norm(p, &l->ln1, D, QD_BIAS, "%s.layer_norm1", lp);
        if (st == QD_OK) st = qd_p_norm(p, &l->ln2, D, QD_BIAS, "%s.layer_norm2", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->q, D, D, QD_BIAS, "%s.self_attn.q_proj", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->k, D, D, QD_BIAS, "%s.self_attn.k_proj", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->v, D, D, QD_BIAS, "%s.self_attn.v_proj", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->o, D, D, QD_BIAS, "%s.self_attn.out_proj", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->fc1, F, D, QD_BIAS, "%s.mlp.fc1", lp);
        if (st == QD_OK) st = qd_p_linear(p, &l->fc2, D, F, QD_BIAS, "%s.mlp.fc2", lp);
    }
    if (st == QD_OK) st = qd_p_norm(p, &m->final_ln, D, QD_BIAS, "%sfinal_layer_norm", pre);
    if (st == QD_OK && in->projection_dim)
        st = qd_p_linear(p, &m->proj, in->projection_dim, D, QD_NO_BIAS, "text_projection");
    if (st != QD_OK) { qd_clip_text_free(m); return st; }
    *out = m;
    return QD_OK;
}

static void activate(clip_act act, float *x, int64_t n) {
    if (act == ACT_QUICK_GELU) qd_quick_gelu(x, n);
    else if (act == ACT_GELU) qd_gelu(x, n);
    else qd_gelu_tanh(x, n);
}

qd_status qd_clip_text_forward(qd_ctx *ctx, qd_clip_text *m, const int32_t *ids, int64_t B, int64_t L,
                               float *last, float *penult, float *pooled, float *proj) {
    const qd_clip_text_info *in = &m->info;
    int64_t D = in->hidden_size, F = in->intermediate_size, M = B * L;
    if (L > in->max_positions)
        return qd_fail(ctx, QD_ERR_ARG, "text encoder: %lld tokens exceed max_position_embeddings %d", (long long)L, in->max_positions);
    for (int64_t i = 0; i < M; i++)
        if (ids[i] < 0 || ids[i] >= in->vocab_size)
            return qd_fail(ctx, QD_ERR_ARG, "text encoder: token id %d outside the vocabulary (%d)", ids[i], in->vocab_size);
    float *x = malloc(sizeof(float) * (size_t)(M * D));
    float *h = malloc(sizeof(float) * (size_t)(M * D));
    float *qkv = malloc(sizeof(float) * (size_t)(3 * M * D));
    float *ff = malloc(sizeof(float) * (size_t)(M * F));
    float *tmp = malloc(sizeof(float) * (size_t)D);
    if (!x || !h || !qkv || !ff || !tmp) {
        free(x); free(h); free(qkv); free(ff); free(tmp);
        return qd_fail(ctx, QD_ERR_NOMEM, "text encoder: out of memory");
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < L; t++) {
            float *row = x + (b * L + t) * D;
            m->tok_emb.decode(&m->tok_emb, ids[b * L + t], 1, 0, D, row, D);
            m->pos_emb.decode(&m->pos_emb, t, 1, 0, D, tmp, D);
            qd_add(row, tmp, D);
        }
    float *q = qkv, *k = qkv + M * D, *v = qkv + 2 * M * D;
    for (int i = 0; i < in->num_layers; i++) {
        if (ctx->cancel) break;
        const clip_layer *l = &m->layers[i];
        qd_layer_norm(ctx, x, M, D, m->eps, l->ln1.w, l->ln1.b, h);
        qd_linear(ctx, h, M, &l->q.w, l->q.b, q);
        qd_linear(ctx, h, M, &l->k.w, l->k.b, k);
        qd_linear(ctx, h, M, &l->v.w, l->v.b, v);
        qd_attention(ctx, q, D, k, D, v, D, B, L, L, in->num_heads, D / in->num_heads, 1, h);
        qd_linear(ctx, h, M, &l->o.w, l->o.b, q);
        qd_add(x, q, M * D);
        qd_layer_norm(ctx, x, M, D, m->eps, l->ln2.w, l->ln2.b, h);
        qd_linear(ctx, h, M, &l->fc1.w, l->fc1.b, ff);
        activate(m->act, ff, M * F);
        qd_linear(ctx, ff, M, &l->fc2.w, l->fc2.b, q);
        qd_add(x, q, M * D);
        if (i == in->num_layers - 2 && penult) memcpy(penult, x, sizeof(float) * (size_t)(M * D));
    }
    if (penult && in->num_layers == 1) {
        /* hidden_states[-2] of a one-layer model is the embedding output; recompute it */
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < L; t++) {
                float *row = penult + (b * L + t) * D;
                m->tok_emb.decode(&m->tok_emb, ids[b * L + t], 1, 0, D, row, D);
                m->pos_emb.decode(&m->pos_emb, t, 1, 0, D, tmp, D);
                qd_add(row, tmp, D);
            }
    }
    qd_status st = ctx->cancel ? qd_fail(ctx, QD_ERR_CANCELLED, "cancelled") : QD_OK;
    if (st == QD_OK) {
        qd_layer_norm(ctx, x, M, D, m->eps, m->final_ln.w, m->final_ln.b, h);
        if (last) memcpy(last, h, sizeof(float) * (size_t)(M * D));
        if (pooled || proj) {
            float *pool = pooled ? pooled : tmp;   /* tmp only suffices for B == 1 */
            float *pool_buf = NULL;
            if (!pooled && B > 1) pool = pool_buf = malloc(sizeof(float) * (size_t)(B * D));
            for (int64_t b = 0; b < B && pool; b++) {
                /* transformers: the first EOS when eos_token_id is set, argmax(ids) for legacy configs (id 2) */
                int64_t pos = 0;
                for (int64_t t = 0; t < L; t++) {
                    int32_t id = ids[b * L + t];
                    if (in->eos_token_id == 2) { if (id > ids[b * L + pos]) pos = t; }
                    else if (id == in->eos_token_id) { pos = t; break; }
                }
                memcpy(pool + b * D, h + (b * L + pos) * D, sizeof(float) * (size_t)D);
            }
            if (proj && in->projection_dim && pool) qd_linear(ctx, pool, B, &m->proj.w, NULL, proj);
            free(pool_buf);
        }
    }
    free(x); free(h); free(qkv); free(ff); free(tmp);
    return st;
}

struct qd_params *qd_clip_text_params(qd_clip_text *m) { return &m->p; }
