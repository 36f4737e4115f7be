/* SDNQ quantization_config: loading, per-layer resolution and sdnq's name matching. */
#include "quant/sdnq_config.h"
#include "quant/sdnq_unpack.h"
#include "io/file.h"
#include "io/json.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- name matching (§1.3) ---- */

enum { TOK_LIT, TOK_ANY, TOK_STAR };
#define MAX_NAME 1024

/* sdnq turns an entry with '*' into a regex (".*" -> "\..*", then "*" -> ".*") and
 * calls re.match, which anchors at the start only. Other '.' stay regex wildcards.
 * Matched with a DP over (pattern token, name position): linear in both, so a
 * hostile config cannot make it backtrack exponentially. */
static int pattern_match(const char *entry, const char *s) {
    size_t S = strlen(s), E = strlen(entry);
    if (S > MAX_NAME || E > MAX_NAME) return 0;
    unsigned char cur[MAX_NAME + 1], nxt[MAX_NAME + 1];
    memset(cur, 0, S + 1);
    cur[0] = 1;
    for (size_t i = 0; i < E;) {
        int tok;
        char c = 0;
        if (entry[i] == '.' && entry[i + 1] == '*') {      /* literal dot, then a star */
            memset(nxt, 0, S + 1);
            for (size_t j = 0; j < S; j++) nxt[j + 1] = cur[j] && s[j] == '.';
            memcpy(cur, nxt, S + 1);
            tok = TOK_STAR;
            i += 2;
        } else if (entry[i] == '*') { tok = TOK_STAR; i++; }
        else if (entry[i] == '.') { tok = TOK_ANY; i++; }
        else { tok = TOK_LIT; c = entry[i]; i++; }
        memset(nxt, 0, S + 1);
        if (tok == TOK_STAR) {
            unsigned char any = 0;
            for (size_t j = 0; j <= S; j++) { any |= cur[j]; nxt[j] = any; }
        } else {
            for (size_t j = 0; j < S; j++)
                nxt[j + 1] = cur[j] && (tok == TOK_ANY ? s[j] != '\n' : s[j] == c);
        }
        memcpy(cur, nxt, S + 1);
    }
    for (size_t j = 0; j <= S; j++)
        if (cur[j]) return 1;
    return 0;
}

int qd_sdnq_name_matches(const char *entry, const char *param) {
    if (!entry || !param || !*entry) return 0;
    if (entry[0] == '.') return strncmp(param, entry + 1, strlen(entry + 1)) == 0;
    if (strchr(entry, '*')) return pattern_match(entry, param);
    if (strcmp(entry, param) == 0) return 1;
    size_t n = strlen(entry);
    for (const char *p = param;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == n && memcmp(p, entry, n) == 0) return 1;
        if (!dot) return 0;
        p = dot + 1;
    }
}

int qd_sdnq_name_in(const cJSON *list, const char *param) {
    if (!cJSON_IsArray(list)) return 0;
    for (const cJSON *e = list->child; e; e = e->next)
        if (cJSON_IsString(e) && qd_sdnq_name_matches(e->valuestring, param)) return 1;
    return 0;
}

int qd_sdnq_skips(const qd_sdnq_config *cfg, const char *param) { return qd_sdnq_name_in(cfg->not_convert, param); }
int qd_sdnq_no_matmul(const qd_sdnq_config *cfg, const char *param) { return qd_sdnq_name_in(cfg->not_use_matmul, param); }

/* ---- argument parsing ---- */

static const cJSON *field(const cJSON *obj, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(it) ? NULL : it;
}

/* Apply the quantizer arguments present in `obj` onto kw; `where` names the
 * object in errors. Integers must be whole numbers of sane size (configs are untrusted). */
static qd_status apply_kwargs(qd_ctx *ctx, const cJSON *obj, qd_sdnq_kwargs *kw, const char *where) {
    static const struct { const char *key; size_t off; } ints[] = {
        {"group_size", offsetof(qd_sdnq_kwargs, group_size)},
        {"hadamard_group_size", offsetof(qd_sdnq_kwargs, hadamard_group_size)},
        {"svd_rank", offsetof(qd_sdnq_kwargs, svd_rank)},
    };
    static const struct { const char *key; size_t off; } bools[] = {
        {"use_svd", offsetof(qd_sdnq_kwargs, use_svd)},
        {"use_hadamard", offsetof(qd_sdnq_kwargs, use_hadamard)},
        {"use_codebook", offsetof(qd_sdnq_kwargs, use_codebook)},
        {"use_quantized_matmul", offsetof(qd_sdnq_kwargs, use_quantized_matmul)},
        {"use_quantized_matmul_conv", offsetof(qd_sdnq_kwargs, use_quantized_matmul_conv)},
        {"dequantize_fp32", offsetof(qd_sdnq_kwargs, dequantize_fp32)},
    };
    const cJSON *it;
    if ((it = field(obj, "weights_dtype"))) {
        if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof kw->weights_dtype)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: weights_dtype must be a dtype name", where);
        snprintf(kw->weights_dtype, sizeof kw->weights_dtype, "%s", it->valuestring);
    }
    it = cJSON_GetObjectItemCaseSensitive(obj, "quantized_matmul_dtype");
    if (it) {
        if (cJSON_IsNull(it)) kw->matmul_dtype[0] = 0;
        else if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof kw->matmul_dtype)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: quantized_matmul_dtype must be a dtype name or null", where);
        else snprintf(kw->matmul_dtype, sizeof kw->matmul_dtype, "%s", it->valuestring);
    }
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        if (!(it = field(obj, ints[i].key))) continue;
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || !isfinite(v) || v != floor(v) || fabs(v) > 1e9)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: %s must be an integer", where, ints[i].key);
        *(long *)((char *)kw + ints[i].off) = (long)v;
    }
    for (size_t i = 0; i < sizeof bools / sizeof *bools; i++) {
        if (!(it = field(obj, bools[i].key))) continue;
        if (!cJSON_IsBool(it)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: %s must be true or false", where, bools[i].key);
        *(int *)((char *)kw + bools[i].off) = cJSON_IsTrue(it);
    }
    return QD_OK;
}

/* An optional list (array) or dict (object) field; a wrong type is an error. */
static qd_status container(qd_ctx *ctx, const cJSON *qc, const char *key, int want_array, const char *where,
                           const cJSON **out) {
    const cJSON *it = field(qc, key);
    *out = NULL;
    if (!it) return QD_OK;
    if (want_array ? !cJSON_IsArray(it) : !cJSON_IsObject(it))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: %s must be %s", where, key, want_array ? "a list" : "an object");
    *out = it;
    return QD_OK;
}

/* Take ownership of root; qc is the config object inside it. */
static qd_status build(qd_ctx *ctx, cJSON *root, const cJSON *qc, const char *path, qd_sdnq_config **out) {
    qd_sdnq_config *c = calloc(1, sizeof *c);
    if (!c) { cJSON_Delete(root); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    c->root = root;
    c->qc = qc;
    snprintf(c->path, sizeof c->path, "%s", path);
    snprintf(c->version, sizeof c->version, "%s", qd_json_str(qc, "sdnq_version", ""));
    qd_sdnq_kwargs *g = &c->global;
    snprintf(g->weights_dtype, sizeof g->weights_dtype, "int8");
    g->hadamard_group_size = 256;
    g->svd_rank = 32;
    g->dequantize_fp32 = strncmp(c->version, "0.1", 3) != 0;   /* the default changed in 0.2 */
    char where[4200];
    snprintf(where, sizeof where, "%s: quantization_config", path);
    qd_status st = apply_kwargs(ctx, qc, g, where);
    if (st == QD_OK) st = container(ctx, qc, "modules_to_not_convert", 1, where, &c->not_convert);
    if (st == QD_OK) st = container(ctx, qc, "modules_to_not_use_matmul", 1, where, &c->not_use_matmul);
    if (st == QD_OK) st = container(ctx, qc, "modules_dtype_dict", 0, where, &c->dtype_dict);
    if (st == QD_OK) st = container(ctx, qc, "modules_quant_config", 0, where, &c->quant_config);
    if (st != QD_OK) { qd_sdnq_config_free(c); return st; }
    c->quant_conv = qd_json_bool(qc, "quant_conv", 0);
    c->quant_embedding = qd_json_bool(qc, "quant_embedding", 0);
    *out = c;
    return QD_OK;
}

static int is_sdnq(const cJSON *qc) {
    const char *m = qd_json_str(qc, "quant_method", "");
    return strcmp(m, "sdnq") == 0 || strcmp(m, "sdnq_training") == 0;
}

/* Load `path`; *qc is root or root["quantization_config"] (NULL if neither is a config). */
static qd_status load(qd_ctx *ctx, const char *path, cJSON **root, const cJSON **qc) {
    QD_TRY(qd_json_load(ctx, path, root));
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(*root, "quantization_config");
    if (cJSON_IsObject(inner)) *qc = inner;
    else if (cJSON_GetObjectItemCaseSensitive(*root, "quant_method")) *qc = *root;
    else *qc = NULL;
    return QD_OK;
}

qd_status qd_sdnq_config_load_file(qd_ctx *ctx, const char *path, qd_sdnq_config **out) {
    cJSON *root;
    const cJSON *qc;
    *out = NULL;
    QD_TRY(load(ctx, path, &root, &qc));
    if (!qc || !is_sdnq(qc)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: not an SDNQ quantization_config (quant_method is not \"sdnq\")", path);
    }
    return build(ctx, root, qc, path, out);
}

qd_status qd_sdnq_config_load_dir(qd_ctx *ctx, const char *dir, qd_sdnq_config **out) {
    static const char *files[] = {"quantization_config.json", "config.json"};
    *out = NULL;
    for (int i = 0; i < 2; i++) {
        char path[4096];
        qd_path_join(path, sizeof path, dir, files[i]);
        if (!qd_file_exists(path)) continue;
        cJSON *root;
        const cJSON *qc;
        QD_TRY(load(ctx, path, &root, &qc));
        if (!qc) { cJSON_Delete(root); continue; }
        if (!is_sdnq(qc)) { cJSON_Delete(root); return QD_OK; }   /* another quantizer's config */
        return build(ctx, root, qc, path, out);
    }
    return QD_OK;
}

qd_status qd_sdnq_config_from_json(qd_ctx *ctx, cJSON *root, const char *label, qd_sdnq_config **out) {
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *qc = cJSON_IsObject(inner) ? inner : root;
    *out = NULL;
    if (!is_sdnq(qc)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: not an SDNQ quantization_config (quant_method is not \"sdnq\")", label);
    }
    return build(ctx, root, qc, label, out);
}

int qd_sdnq_embedding_name(const char *param) {
    char module[600];
    snprintf(module, sizeof module, "%s", param);
    size_t n = strlen(module);
    if (n > 7 && !strcmp(module + n - 7, ".weight")) module[n - 7] = 0;
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    static const char *names[] = {"embed_tokens", "shared", "wte", "wpe", "word_embeddings", "tok_embeddings",
                                  "relative_attention_bias"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(last, names[i])) return 1;
    size_t m = strlen(last);
    return (m >= 9 && !strcmp(last + m - 9, "embedding")) || (m >= 10 && !strcmp(last + m - 10, "embeddings"));
}

void qd_sdnq_config_free(qd_sdnq_config *cfg) {
    if (!cfg) return;
    cJSON_Delete(cfg->root);
    free(cfg);
}

/* ---- per-layer arguments ---- */

/* "minimum_6bit", "minimum_uint6bits", "6bit": the bit count, or -1 if the key is not one. */
static int minimum_bits(const char *key) {
    size_t n = strlen(key);
    int is_min = strncmp(key, "minimum", 7) == 0 || (n >= 3 && strcmp(key + n - 3, "bit") == 0) ||
                 (n >= 4 && strcmp(key + n - 4, "bits") == 0);
    if (!is_min) return -1;
    const char *last = NULL;   /* the last run of digits */
    for (const char *p = key; *p; p++)
        if (*p >= '0' && *p <= '9' && (p == key || p[-1] < '0' || p[-1] > '9')) last = p;
    if (!last) return -1;
    int v = 0;
    for (const char *p = last; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > 64) return -1;
    }
    return v;
}

qd_status qd_sdnq_layer_kwargs(qd_ctx *ctx, const qd_sdnq_config *cfg, const char *param, qd_sdnq_kwargs *out) {
    *out = cfg->global;
    char where[4400];
    if (cfg->quant_config)
        for (const cJSON *e = cfg->quant_config->child; e; e = e->next) {
            if (!qd_sdnq_name_matches(e->string, param)) continue;
            snprintf(where, sizeof where, "layer '%s': %s: modules_quant_config['%s']", param, cfg->path, e->string);
            if (!cJSON_IsObject(e)) return qd_fail(ctx, QD_ERR_FORMAT, "%s is not an object", where);
            QD_TRY(apply_kwargs(ctx, e, out, where));
            break;
        }
    if (cfg->dtype_dict)
        for (const cJSON *e = cfg->dtype_dict->child; e; e = e->next) {
            if (!qd_sdnq_name_in(e, param)) continue;
            qd_sdnq_dtype d;
            if (qd_sdnq_dtype_parse(e->string, &d) == 0) {
                snprintf(out->weights_dtype, sizeof out->weights_dtype, "%s", d.name);
                break;
            }
            int bits = minimum_bits(e->string);
            if (bits < 1 || bits > 16)
                return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': %s: modules_dtype_dict key '%s' is neither a dtype nor a minimum-bits key",
                               param, cfg->path, e->string);
            qd_sdnq_dtype cur;
            if (qd_sdnq_dtype_parse(out->weights_dtype, &cur) != 0)
                return qd_fail(ctx, QD_ERR_FORMAT, "layer '%s': %s: unknown weights_dtype '%s'", param, cfg->path, out->weights_dtype);
            if (cur.bits < bits)
                snprintf(out->weights_dtype, sizeof out->weights_dtype, "%s%d",
                         strstr(e->string, "uint") || bits <= 4 ? "uint" : "int", bits);
            break;
        }
    return QD_OK;
}
