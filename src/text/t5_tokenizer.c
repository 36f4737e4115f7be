/* T5 tokenizer: loading tokenizer.json or spiece.model into one Unigram model
 * and one normalizer, special-token splitting, </s>, truncation and padding.
 * The files are untrusted: every field is type-checked, every id range-checked. */
#include "text/t5_tokenizer.h"
#include "text/sp_normalizer.h"
#include "text/unigram.h"
#include "io/file.h"
#include "io/json.h"
#include "io/protobuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TEMPLATE 4          /* special ids a template may add before/after the text */
#define MAX_IDS (1 << 24)       /* sanity bound on vocabulary ids */

/* Where a segment between special tokens gets its leading "▁". */
typedef enum {
    SEG_SP,         /* sentencepiece: every segment as the model's add_dummy_prefix says */
    SEG_ALWAYS,     /* Metaspace prepend_scheme "always" */
    SEG_FIRST,      /* "first": only the segment at the start of the text */
    SEG_NEVER       /* "never" */
} seg_prefix;

typedef struct { char *text; size_t len; int32_t id; } special_tok;

struct qd_t5_tokenizer {
    qd_unigram model;
    qd_sp_normalizer norm;
    seg_prefix prefix;
    int add_dummy_prefix;       /* SEG_SP only */
    special_tok *special;       /* sorted longest first, so the first match is the longest */
    int n_special;
    uint8_t special_lead[256];  /* first bytes of special tokens: a quick filter */
    int32_t pre[MAX_TEMPLATE], post[MAX_TEMPLATE];
    int n_pre, n_post;
    int eos_id, pad_id, vocab_size;
};

int qd_t5_vocab_size(const qd_t5_tokenizer *t) { return t->vocab_size; }
int qd_t5_eos_id(const qd_t5_tokenizer *t) { return t->eos_id; }
int qd_t5_pad_id(const qd_t5_tokenizer *t) { return t->pad_id; }

void qd_t5_tokenizer_free(qd_t5_tokenizer *t) {
    if (!t) return;
    qd_unigram_free(&t->model);
    qd_sp_normalizer_free(&t->norm);
    for (int i = 0; i < t->n_special; i++) free(t->special[i].text);
    free(t->special);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Shared loading steps */

static qd_status add_special(qd_ctx *ctx, qd_t5_tokenizer *t, const char *s, size_t len, int32_t id, int *cap) {
    if (!len) return QD_OK;
    for (int i = 0; i < t->n_special; i++)
        if (t->special[i].len == len && !memcmp(t->special[i].text, s, len)) return QD_OK;
    if (t->n_special == *cap) {
        int nc = *cap ? 2 * *cap : 128;
        special_tok *p = realloc(t->special, sizeof *p * (size_t)nc);
        if (!p) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        t->special = p;
        *cap = nc;
    }
    char *c = malloc(len + 1);
    if (!c) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    memcpy(c, s, len);
    c[len] = 0;
    t->special[t->n_special++] = (special_tok){c, len, id};
    t->special_lead[(unsigned char)s[0]] = 1;
    return QD_OK;
}

static int by_len_desc(const void *a, const void *b) {
    const special_tok *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static qd_status build_model(qd_ctx *ctx, const char *path, qd_t5_tokenizer *t, int unk_id, int byte_fallback) {
    int bad;
    int r = qd_unigram_build(&t->model, unk_id, byte_fallback, &bad);
    switch (r) {
    case 0: break;
    case -1: return qd_fail(ctx, QD_ERR_FORMAT, "%s: no unknown piece (unk id %d)", path, unk_id);
    case -2: return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    case -3: return qd_fail(ctx, QD_ERR_FORMAT, "%s: piece %d ('%.40s') is defined twice", path, bad,
                            qd_unigram_piece(&t->model, bad));
    case -4: return qd_fail(ctx, QD_ERR_FORMAT, "%s: byte_fallback is set but piece <0x%02X> is missing", path, bad);
    default: return qd_fail(ctx, QD_ERR_FORMAT, "%s: piece %d is missing", path, bad);
    }
    if (t->n_special) qsort(t->special, (size_t)t->n_special, sizeof *t->special, by_len_desc);
    int pad = qd_unigram_find(&t->model, "<pad>", 5);
    t->pad_id = pad >= 0 ? pad : 0;
    return QD_OK;
}

/* ------------------------------------------------------------------------ */
/* spiece.model (sentencepiece ModelProto) */

enum { PB_PIECES = 1, PB_TRAINER = 2, PB_NORMALIZER = 3 };

typedef struct {
    int model_type, byte_fallback, ws_suffix;
    int eos_id;                 /* -2: not given */
    const uint8_t *eos_piece; size_t eos_len;
    const uint8_t *charsmap; size_t charsmap_len;
    int add_dummy_prefix, remove_extra_ws, escape_ws;
} sp_specs;

#define PB_BAD(what) qd_fail(ctx, QD_ERR_FORMAT, "%s: not a sentencepiece model (%s)", path, what)

/* A field we read must have the wire type we expect. */
static int wire_ok(const qd_pb_field *f, int wire) { return f->wire == wire; }

static qd_status parse_trainer(qd_ctx *ctx, const char *path, const qd_pb_field *msg, sp_specs *sp) {
    qd_pb_reader r = qd_pb_init(msg->data, msg->len);
    qd_pb_field f;
    int k;
    while ((k = qd_pb_next(&r, &f)) == 1) {
        switch (f.number) {
        case 3: if (!wire_ok(&f, QD_PB_VARINT)) return PB_BAD("trainer_spec.model_type"); sp->model_type = (int)f.u; break;
        case 24: if (!wire_ok(&f, QD_PB_VARINT)) return PB_BAD("treat_whitespace_as_suffix"); sp->ws_suffix = f.u != 0; break;
        case 35: if (!wire_ok(&f, QD_PB_VARINT)) return PB_BAD("byte_fallback"); sp->byte_fallback = f.u != 0; break;
        case 42: if (!wire_ok(&f, QD_PB_VARINT)) return PB_BAD("eos_id"); sp->eos_id = (int32_t)(uint32_t)f.u; break;
        case 47: if (!wire_ok(&f, QD_PB_LEN)) return PB_BAD("eos_piece"); sp->eos_piece = f.data; sp->eos_len = f.len; break;
        default: break;
        }
    }
    return k < 0 ? PB_BAD("truncated trainer_spec") : QD_OK;
}

static qd_status parse_normalizer(qd_ctx *ctx, const char *path, const qd_pb_field *msg, sp_specs *sp) {
    qd_pb_reader r = qd_pb_init(msg->data, msg->len);
    qd_pb_field f;
    int k;
    while ((k = qd_pb_next(&r, &f)) == 1) {
        if (f.number == 2) {
            if (!wire_ok(&f, QD_PB_LEN)) return PB_BAD("precompiled_charsmap");
            sp->charsmap = f.data;
            sp->charsmap_len = f.len;
        } else if (f.number >= 3 && f.number <= 5) {
            if (!wire_ok(&f, QD_PB_VARINT)) return PB_BAD("normalizer_spec flags");
            int v = f.u != 0;
            if (f.number == 3) sp->add_dummy_prefix = v;
            else if (f.number == 4) sp->remove_extra_ws = v;
            else sp->escape_ws = v;
        }
    }
    return k < 0 ? PB_BAD("truncated normalizer_spec") : QD_OK;
}

/* One SentencePiece message: piece (1), score (2), type (3). */
static qd_status parse_piece(qd_ctx *ctx, const char *path, const qd_pb_field *msg,
                             const uint8_t **piece, size_t *len, float *score, int *type) {
    qd_pb_reader r = qd_pb_init(msg->data, msg->len);
    qd_pb_field f;
    int k;
    *piece = NULL; *len = 0; *score = 0; *type = QD_PIECE_NORMAL;
    while ((k = qd_pb_next(&r, &f)) == 1) {
        if (f.number == 1) {
            if (!wire_ok(&f, QD_PB_LEN)) return PB_BAD("piece");
            *piece = f.data; *len = f.len;
        } else if (f.number == 2) {
            if (!wire_ok(&f, QD_PB_I32)) return PB_BAD("score");
            *score = qd_pb_float(&f);
        } else if (f.number == 3) {
            if (!wire_ok(&f, QD_PB_VARINT) || f.u < QD_PIECE_NORMAL || f.u > QD_PIECE_BYTE) return PB_BAD("piece type");
            *type = (int)f.u;
        }
    }
    if (k < 0) return PB_BAD("truncated piece");
    if (!*piece || !*len) return PB_BAD("empty piece");
    return QD_OK;
}

static qd_status load_spiece(qd_ctx *ctx, const char *path, qd_t5_tokenizer *t) {
    char *buf;
    size_t len;
    QD_TRY(qd_read_file(ctx, path, &buf, &len));
    sp_specs sp = {.model_type = 1, .eos_id = -2, .add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
    qd_status st = QD_OK;
    /* pass 1: specs, piece count and bytes */
    qd_pb_reader r = qd_pb_init(buf, len);
    qd_pb_field f;
    int k, n_pieces = 0;
    size_t bytes = 0;
    while (st == QD_OK && (k = qd_pb_next(&r, &f)) == 1) {
        if (f.number == PB_PIECES) {
            if (!wire_ok(&f, QD_PB_LEN) || n_pieces >= MAX_IDS) { st = PB_BAD("pieces"); break; }
            n_pieces++;
            bytes += f.len;
        } else if (f.number == PB_TRAINER) {
            st = wire_ok(&f, QD_PB_LEN) ? parse_trainer(ctx, path, &f, &sp) : PB_BAD("trainer_spec");
        } else if (f.number == PB_NORMALIZER) {
            st = wire_ok(&f, QD_PB_LEN) ? parse_normalizer(ctx, path, &f, &sp) : PB_BAD("normalizer_spec");
        }
    }
    if (st == QD_OK && k < 0) st = PB_BAD("truncated or corrupt protobuf");
    if (st == QD_OK && n_pieces == 0) st = PB_BAD("no pieces");
    if (st == QD_OK && sp.model_type != 1)
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: sentencepiece model type %d is not Unigram", path, sp.model_type);
    if (st == QD_OK && sp.ws_suffix)
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: treat_whitespace_as_suffix is not supported", path);
    if (st == QD_OK) {
        int r2 = qd_sp_normalizer_init(&t->norm, sp.charsmap, sp.charsmap_len);
        if (r2 == -2) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        else if (r2) st = PB_BAD("corrupt precompiled_charsmap");
        t->norm.remove_extra_whitespaces = sp.remove_extra_ws;
        t->norm.escape_whitespaces = sp.escape_ws;
    }
    if (st == QD_OK && qd_unigram_init(&t->model, n_pieces, bytes) != 0) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    /* pass 2: the pieces (pass 1 proved the framing sound) */
    int unk = -1, cap = 0;
    r = qd_pb_init(buf, len);
    for (int id = 0; st == QD_OK && qd_pb_next(&r, &f) == 1;) {
        if (f.number != PB_PIECES) continue;
        const uint8_t *p;
        size_t pl;
        float score;
        int type;
        st = parse_piece(ctx, path, &f, &p, &pl, &score, &type);
        if (st != QD_OK) break;
        if (qd_unigram_set(&t->model, id, (const char *)p, pl, score, (qd_piece_type)type) != 0) {
            st = PB_BAD("piece contains NUL");
            break;
        }
        if (type == QD_PIECE_UNKNOWN) {
            if (unk >= 0) { st = PB_BAD("two unknown pieces"); break; }
            unk = id;
        }
        /* T5Tokenizer registers <pad>, </s>, <unk> (and user symbols) as tokens split from the text */
        if (type == QD_PIECE_CONTROL || type == QD_PIECE_UNKNOWN || type == QD_PIECE_USER_DEFINED)
            st = add_special(ctx, t, (const char *)p, pl, id, &cap);
        id++;
    }
    if (st == QD_OK) st = build_model(ctx, path, t, unk, sp.byte_fallback);
    if (st == QD_OK) {
        char eos[64] = "</s>";
        if (sp.eos_piece && sp.eos_len && sp.eos_len < sizeof eos) { memcpy(eos, sp.eos_piece, sp.eos_len); eos[sp.eos_len] = 0; }
        t->eos_id = qd_unigram_find(&t->model, eos, strlen(eos));
        if (t->eos_id < 0 && sp.eos_id >= 0 && sp.eos_id < n_pieces) t->eos_id = sp.eos_id;
        if (t->eos_id < 0) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no end-of-sequence piece '%s'", path, eos);
    }
    /* the <extra_id_N> sentinels transformers appends after the pieces (T5Tokenizer extra_ids) */
    int extra = 100;
    if (st == QD_OK) {
        char dir[4096], cfg_path[4200];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
        qd_path_join(cfg_path, sizeof cfg_path, dir, "tokenizer_config.json");
        cJSON *cfg = NULL;
        if (qd_file_exists(cfg_path)) {
            st = qd_json_load(ctx, cfg_path, &cfg);
            if (st == QD_OK) extra = qd_json_int(cfg, "extra_ids", 100);
            cJSON_Delete(cfg);
            if (st == QD_OK && (extra < 0 || extra > 100000))
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: extra_ids %d out of range", cfg_path, extra);
        }
    }
    for (int i = 0; st == QD_OK && i < extra; i++) {
        char name[32];
        int n = snprintf(name, sizeof name, "<extra_id_%d>", i);
        st = add_special(ctx, t, name, (size_t)n, n_pieces + extra - 1 - i, &cap);
    }
    if (st == QD_OK && t->n_special) qsort(t->special, (size_t)t->n_special, sizeof *t->special, by_len_desc);
    if (st == QD_OK) {
        t->vocab_size = n_pieces + extra;
        t->prefix = SEG_SP;
        t->add_dummy_prefix = sp.add_dummy_prefix;
        t->post[0] = t->eos_id;
        t->n_post = 1;
    }
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* tokenizer.json (Hugging Face tokenizers) */

static int b64_val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with optional '=' padding. Returns a malloc'd buffer, NULL
 * with *len = 0 when invalid, NULL with *len = 1 when out of memory. */
static unsigned char *b64_decode(const char *s, size_t *len) {
    size_t n = strlen(s);
    while (n && s[n - 1] == '=') n--;
    unsigned char *out = malloc(n / 4 * 3 + 3);
    if (!out) { *len = 1; return NULL; }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_val((unsigned char)s[i]);
        if (v < 0) { free(out); *len = 0; return NULL; }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) { bits -= 8; out[o++] = (unsigned char)(acc >> bits); acc &= (1u << bits) - 1; }
    }
    if (bits >= 6) { free(out); *len = 0; return NULL; }   /* a lone trailing character */
    *len = o;
    return out;
}

static const cJSON *obj_get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static int type_is(const cJSON *o, const char *type) {
    const char *s = cJSON_IsObject(o) ? qd_json_str(o, "type", NULL) : NULL;
    return s && !strcmp(s, type);
}

/* Normalizer: Precompiled (optionally in a Sequence with the Strip-right and
 * Replace(" {2,}", "▁") steps transformers' converter adds, which are the
 * sentencepiece whitespace rules we apply anyway). */
static qd_status json_normalizer(qd_ctx *ctx, const char *path, const cJSON *n, qd_t5_tokenizer *t) {
    if (!n || cJSON_IsNull(n)) return qd_sp_normalizer_init(&t->norm, NULL, 0) ? qd_fail(ctx, QD_ERR_NOMEM, "out of memory") : QD_OK;
    const cJSON *list = n;
    int single = !type_is(n, "Sequence");
    if (!single) list = obj_get(n, "normalizers");
    if (!single && !cJSON_IsArray(list)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: normalizer.normalizers is not a list", path);
    const char *charsmap = NULL;
    for (const cJSON *it = single ? n : list->child; it; it = single ? NULL : it->next) {
        if (type_is(it, "Precompiled")) {
            const cJSON *c = obj_get(it, "precompiled_charsmap");
            if (cJSON_IsString(c)) charsmap = c->valuestring;
            else if (c && !cJSON_IsNull(c)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: precompiled_charsmap is not a string", path);
        } else if (!type_is(it, "Strip") && !type_is(it, "Replace")) {
            const char *ty = cJSON_IsObject(it) ? qd_json_str(it, "type", "?") : "?";
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported for a T5 tokenizer", path, ty);
        }
    }
    size_t blen = 0;
    unsigned char *blob = NULL;
    if (charsmap && *charsmap) {
        blob = b64_decode(charsmap, &blen);
        if (!blob) return blen ? qd_fail(ctx, QD_ERR_NOMEM, "out of memory")
                               : qd_fail(ctx, QD_ERR_FORMAT, "%s: precompiled_charsmap is not base64", path);
    }
    int r = qd_sp_normalizer_init(&t->norm, blob, blen);
    free(blob);
    if (r == -2) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (r) return qd_fail(ctx, QD_ERR_FORMAT, "%s: corrupt precompiled_charsmap", path);
    return QD_OK;
}

/* Pre-tokenizer: Metaspace (alone or in a Sequence, e.g. after WhitespaceSplit). */
static qd_status json_pretokenizer(qd_ctx *ctx, const char *path, const cJSON *p, qd_t5_tokenizer *t) {
    t->prefix = SEG_NEVER;
    if (!p || cJSON_IsNull(p)) return QD_OK;
    int single = !type_is(p, "Sequence");
    const cJSON *list = single ? p : obj_get(p, "pretokenizers");
    if (!single && !cJSON_IsArray(list)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: pre_tokenizer.pretokenizers is not a list", path);
    for (const cJSON *it = single ? p : list->child; it; it = single ? NULL : it->next) {
        if (type_is(it, "WhitespaceSplit")) continue;
        if (!type_is(it, "Metaspace")) {
            const char *ty = cJSON_IsObject(it) ? qd_json_str(it, "type", "?") : "?";
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: pre_tokenizer '%s' is not supported for a T5 tokenizer", path, ty);
        }
        const char *rep = qd_json_str(it, "replacement", "\xe2\x96\x81");
        if (strcmp(rep, "\xe2\x96\x81"))
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: Metaspace replacement '%s' is not supported", path, rep);
        const char *scheme = qd_json_str(it, "prepend_scheme", NULL);
        if (!scheme) t->prefix = qd_json_bool(it, "add_prefix_space", 1) ? SEG_ALWAYS : SEG_NEVER;
        else if (!strcmp(scheme, "always")) t->prefix = SEG_ALWAYS;
        else if (!strcmp(scheme, "first")) t->prefix = SEG_FIRST;
        else if (!strcmp(scheme, "never")) t->prefix = SEG_NEVER;
        else return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: Metaspace prepend_scheme '%s' is not supported", path, scheme);
    }
    return QD_OK;
}

/* Post-processor: TemplateProcessing "single" = [special...] A [special...]. */
static qd_status json_template(qd_ctx *ctx, const char *path, const cJSON *pp, qd_t5_tokenizer *t) {
    t->n_pre = t->n_post = 0;
    if (!pp || cJSON_IsNull(pp)) return QD_OK;
    if (!type_is(pp, "TemplateProcessing")) {
        const char *ty = cJSON_IsObject(pp) ? qd_json_str(pp, "type", "?") : "?";
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: post_processor '%s' is not supported for a T5 tokenizer", path, ty);
    }
    const cJSON *single = obj_get(pp, "single"), *specials = obj_get(pp, "special_tokens");
    if (!cJSON_IsArray(single)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: post_processor.single is not a list", path);
    int seen_seq = 0;
    for (const cJSON *it = single->child; it; it = it->next) {
        if (cJSON_IsObject(obj_get(it, "Sequence"))) { seen_seq = 1; continue; }
        const cJSON *sp = obj_get(it, "SpecialToken");
        const char *name = cJSON_IsObject(sp) ? qd_json_str(sp, "id", NULL) : NULL;
        const cJSON *def = name && cJSON_IsObject(specials) ? obj_get(specials, name) : NULL;
        const cJSON *ids = def ? obj_get(def, "ids") : NULL;
        if (!cJSON_IsArray(ids)) return qd_fail(ctx, QD_ERR_FORMAT, "%s: post_processor template item has no ids", path);
        for (const cJSON *id = ids->child; id; id = id->next) {
            int *n = seen_seq ? &t->n_post : &t->n_pre;
            int32_t *dst = seen_seq ? t->post : t->pre;
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= t->vocab_size || *n >= MAX_TEMPLATE)
                return qd_fail(ctx, QD_ERR_FORMAT, "%s: post_processor special token '%s' has a bad id", path, name);
            dst[(*n)++] = (int32_t)id->valuedouble;
        }
    }
    if (!seen_seq) return qd_fail(ctx, QD_ERR_FORMAT, "%s: post_processor.single has no sequence", path);
    return QD_OK;
}

static qd_status load_json(qd_ctx *ctx, const char *path, qd_t5_tokenizer *t) {
    cJSON *root;
    QD_TRY(qd_json_load(ctx, path, &root));
    qd_status st = QD_OK;
    const cJSON *model = obj_get(root, "model"), *vocab = model ? obj_get(model, "vocab") : NULL;
    const cJSON *added = obj_get(root, "added_tokens");
    const char *mtype = cJSON_IsObject(model) ? qd_json_str(model, "type", "?") : NULL;
    int n = cJSON_IsArray(vocab) ? cJSON_GetArraySize(vocab) : 0;
    if (!cJSON_IsObject(root) || !mtype)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no tokenizer model", path);
    else if (strcmp(mtype, "Unigram"))
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: model type '%s' is not Unigram (not a T5 tokenizer)", path, mtype);
    else if (n <= 0 || n > MAX_IDS)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: model.vocab is not a non-empty list", path);
    else if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: added_tokens is not a list", path);
    /* vocab entries are [piece, score] */
    size_t bytes = 0;
    int i = 0;
    for (const cJSON *e = st == QD_OK ? vocab->child : NULL; e; e = e->next, i++) {
        const cJSON *p = cJSON_GetArrayItem(e, 0), *s = cJSON_GetArrayItem(e, 1);
        if (!cJSON_IsArray(e) || !cJSON_IsString(p) || !cJSON_IsNumber(s) || !p->valuestring[0]) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: model.vocab[%d] is not [piece, score]", path, i);
            break;
        }
        bytes += strlen(p->valuestring);
    }
    const cJSON *unk_j = st == QD_OK ? obj_get(model, "unk_id") : NULL;
    int unk = cJSON_IsNumber(unk_j) ? (int)unk_j->valuedouble : -1;
    if (st == QD_OK && (unk < 0 || unk >= n))
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: model.unk_id is missing or outside the vocabulary", path);
    int byte_fallback = st == QD_OK ? qd_json_bool(model, "byte_fallback", 0) : 0;
    uint8_t *type = st == QD_OK ? malloc((size_t)n) : NULL;
    if (st == QD_OK && !type) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK) {
        memset(type, QD_PIECE_NORMAL, (size_t)n);
        type[unk] = QD_PIECE_UNKNOWN;
    }
    /* added tokens are split from the text before the model sees it; in the
     * vocabulary they are control pieces the Viterbi search never produces */
    int cap = 0, max_id = n - 1;
    int ai = 0;
    for (const cJSON *a = st == QD_OK && added ? added->child : NULL; a && st == QD_OK; a = a->next, ai++) {
        const cJSON *id = obj_get(a, "id"), *c = obj_get(a, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(c) || id->valuedouble < 0 || id->valuedouble >= MAX_IDS) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: added_tokens[%d] has no valid id and content", path, ai);
            break;
        }
        int v = (int)id->valuedouble;
        if (v > max_id) max_id = v;
        if (v < n && v != unk) type[v] = QD_PIECE_CONTROL;
        st = add_special(ctx, t, c->valuestring, strlen(c->valuestring), v, &cap);
    }
    if (st == QD_OK && qd_unigram_init(&t->model, n, bytes) != 0) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    i = 0;
    for (const cJSON *e = st == QD_OK ? vocab->child : NULL; e; e = e->next, i++) {
        const char *p = cJSON_GetArrayItem(e, 0)->valuestring;
        float score = (float)cJSON_GetArrayItem(e, 1)->valuedouble;
        if (qd_unigram_set(&t->model, i, p, strlen(p), score, (qd_piece_type)type[i]) != 0) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: model.vocab[%d] is not a valid piece", path, i);
            break;
        }
    }
    free(type);
    if (st == QD_OK) st = build_model(ctx, path, t, unk, byte_fallback);
    if (st == QD_OK) t->vocab_size = max_id + 1;
    if (st == QD_OK) st = json_normalizer(ctx, path, obj_get(root, "normalizer"), t);
    if (st == QD_OK) st = json_pretokenizer(ctx, path, obj_get(root, "pre_tokenizer"), t);
    if (st == QD_OK) st = json_template(ctx, path, obj_get(root, "post_processor"), t);
    if (st == QD_OK) {
        int eos = qd_unigram_find(&t->model, "</s>", 4);
        t->eos_id = eos >= 0 ? eos : t->n_post ? t->post[t->n_post - 1] : -1;
        if (t->eos_id < 0) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no </s> token", path);
    }
    cJSON_Delete(root);
    return st;
}

/* ------------------------------------------------------------------------ */

qd_status qd_t5_tokenizer_load_file(qd_ctx *ctx, const char *path, qd_t5_tokenizer **out) {
    *out = NULL;
    qd_t5_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    size_t n = strlen(path);
    qd_status st = n >= 5 && !strcmp(path + n - 5, ".json") ? load_json(ctx, path, t) : load_spiece(ctx, path, t);
    if (st != QD_OK) { qd_t5_tokenizer_free(t); return st; }
    *out = t;
    return QD_OK;
}

qd_status qd_t5_tokenizer_load(qd_ctx *ctx, const char *dir, qd_t5_tokenizer **out) {
    *out = NULL;
    char path[4096];
    qd_path_join(path, sizeof path, dir, "tokenizer.json");
    if (qd_file_exists(path)) return qd_t5_tokenizer_load_file(ctx, path, out);
    qd_path_join(path, sizeof path, dir, "spiece.model");
    if (qd_file_exists(path)) return qd_t5_tokenizer_load_file(ctx, path, out);
    return qd_fail(ctx, QD_ERR_IO, "%s: no T5 tokenizer (neither tokenizer.json nor spiece.model)", dir);
}

/* ------------------------------------------------------------------------ */
/* Encoding */

typedef struct { int32_t *v; size_t n, cap; } idbuf;

static int reserve(idbuf *b, size_t more) {
    if (b->n + more <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + more) cap *= 2;
    int32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return 0;
    b->v = v;
    b->cap = cap;
    return 1;
}

static qd_sp_prefix_mode segment_mode(const qd_t5_tokenizer *t, size_t start) {
    switch (t->prefix) {
    case SEG_SP: return t->add_dummy_prefix ? QD_SP_PREFIX : QD_SP_NO_PREFIX;
    case SEG_ALWAYS: return QD_SP_PREFIX;
    case SEG_FIRST: return start == 0 ? QD_SP_PREFIX : QD_SP_KEEP_LEADING;
    default: return QD_SP_KEEP_LEADING;
    }
}

static int encode_segment(const qd_t5_tokenizer *t, const char *s, size_t n, qd_sp_prefix_mode mode, idbuf *b) {
    if (!n) return 1;
    char *norm;
    size_t nl;
    if (qd_sp_normalize(&t->norm, s, n, mode, &norm, &nl) != 0) return 0;
    int ok = reserve(b, nl);    /* at most one id per normalized byte */
    if (ok) {
        int64_t k = qd_unigram_encode(&t->model, norm, nl, b->v + b->n, nl);
        if (k < 0) ok = 0;
        else b->n += (size_t)k;
    }
    free(norm);
    return ok;
}

/* Every id of text: template prefix, tokens, template suffix. *n_tokens gets
 * the token count alone. */
static qd_status encode_all(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *text, idbuf *b, size_t *n_tokens) {
    if (!text) text = "";
    size_t n = strlen(text), seg = 0;
    int ok = reserve(b, (size_t)t->n_pre);
    for (int i = 0; ok && i < t->n_pre; i++) b->v[b->n++] = t->pre[i];
    for (size_t i = 0; ok && i < n;) {
        const special_tok *hit = NULL;
        if (t->special_lead[(unsigned char)text[i]])
            for (int k = 0; k < t->n_special && !hit; k++)
                if (t->special[k].len <= n - i && !memcmp(text + i, t->special[k].text, t->special[k].len))
                    hit = &t->special[k];
        if (!hit) { i++; continue; }
        ok = encode_segment(t, text + seg, i - seg, segment_mode(t, seg), b) && reserve(b, 1);
        if (ok) b->v[b->n++] = hit->id;
        i += hit->len;
        seg = i;
    }
    if (ok) ok = encode_segment(t, text + seg, n - seg, segment_mode(t, seg), b);
    if (ok) *n_tokens = b->n - (size_t)t->n_pre;
    if (ok) ok = reserve(b, (size_t)t->n_post);
    for (int i = 0; ok && i < t->n_post; i++) b->v[b->n++] = t->post[i];
    if (!ok) return qd_fail(ctx, QD_ERR_NOMEM, "T5 tokenizer: out of memory");
    return QD_OK;
}

int qd_t5_encode(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *text, int32_t *ids, int cap) {
    idbuf b = {0};
    size_t nt;
    if (encode_all(ctx, t, text, &b, &nt) != QD_OK) { free(b.v); return -1; }
    if (b.n > (size_t)INT32_MAX) { free(b.v); qd_fail(ctx, QD_ERR_ARG, "T5 tokenizer: text too long"); return -1; }
    int n = (int)b.n;
    if (ids && n > cap) {
        free(b.v);
        qd_fail(ctx, QD_ERR_ARG, "T5 tokenizer: %d ids do not fit in %d", n, cap);
        return -1;
    }
    if (ids && n) memcpy(ids, b.v, sizeof *ids * (size_t)n);
    free(b.v);
    return n;
}

qd_status qd_t5_encode_padded(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *text, int32_t *ids,
                              int max_len, int *truncated) {
    if (truncated) *truncated = 0;
    int specials = t->n_pre + t->n_post;
    if (max_len < specials || max_len <= 0)
        return qd_fail(ctx, QD_ERR_ARG, "T5 tokenizer: max_len %d is too small", max_len);
    idbuf b = {0};
    size_t nt;
    QD_TRY(encode_all(ctx, t, text, &b, &nt));
    /* transformers truncates the text's tokens, keeping the template's specials */
    size_t keep = nt < (size_t)(max_len - specials) ? nt : (size_t)(max_len - specials);
    int o = 0;
    for (int i = 0; i < t->n_pre; i++) ids[o++] = b.v[i];
    for (size_t i = 0; i < keep; i++) ids[o++] = b.v[(size_t)t->n_pre + i];
    for (int i = 0; i < t->n_post; i++) ids[o++] = b.v[(size_t)t->n_pre + nt + (size_t)i];
    while (o < max_len) ids[o++] = t->pad_id;
    if (truncated) *truncated = (int)(nt - keep > (size_t)INT32_MAX ? INT32_MAX : nt - keep);
    free(b.v);
    return QD_OK;
}
