/* T5 tokenizer: exact ids for every T5 case in tokenizers/cases.json (made by
 * transformers' T5Tokenizer on spiece.model) from both spiece.model and
 * tokenizer.json, the padded pipeline form, the model folders' tokenizers,
 * special tokens, truncation, and bad files / bad text that must never crash. */
#include "testutil.h"
#include "text/t5_tokenizer.h"
#include "io/json.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXIDS 4096

static void dump(const char *what, const int32_t *v, int n) {
    fprintf(stderr, "  %s:", what);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, "\n");
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) { if (n) fwrite(data, 1, n, f); fclose(f); }
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) buf[len] = 0;
    *n = (size_t)len;
    return buf;
}

static unsigned rng_state = 12345;
static unsigned rnd(void) { rng_state = rng_state * 1103515245u + 12345u; return rng_state >> 8; }

/* Every case, every t5_* key, for one tokenizer. */
static void test_cases(qd_ctx *ctx, const qd_t5_tokenizer *tok, const char *name) {
    cJSON *root = NULL;
    const char *path = fixture("tokenizers/cases.json");
    check(qd_json_load(ctx, path, &root) == QD_OK, "load %s", path);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    int n_cases = 0, n_checked = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next) {
        const char *text = qd_json_str(c, "text", qd_json_str(c, "prompt", NULL));
        if (!text) continue;
        n_cases++;
        int32_t want[MAXIDS], got[MAXIDS];
        for (const cJSON *kv = c->child; kv; kv = kv->next) {
            if (strncmp(kv->string, "t5", 2) != 0) continue;
            int nw = json_ids(kv, want, MAXIDS), ng = -1;
            if (!strcmp(kv->string, "t5_ids")) {
                ng = qd_t5_encode(ctx, tok, text, got, MAXIDS);
                check(nw > 0 && ids_eq(got, ng, want, nw),
                      "%s %s: %d ids for \"%s\"", name, kv->string, nw, text_label(text));
            } else if (!strncmp(kv->string, "t5_ids_padded", 13)) {
                int len = atoi(kv->string + 13), trunc = -1;
                qd_status st = len > 0 && len <= MAXIDS ? qd_t5_encode_padded(ctx, tok, text, got, len, &trunc) : QD_ERR_ARG;
                ng = st == QD_OK ? len : -1;
                check(st == QD_OK && nw == len && ids_eq(got, len, want, nw),
                      "%s %s for \"%s\"", name, kv->string, text_label(text));
            } else {
                check(0, "unknown T5 key %s in cases.json", kv->string);
                continue;
            }
            n_checked++;
            if (ng != nw || (ng > 0 && !ids_eq(got, ng, want, nw))) {
                dump("got", got, ng);
                dump("want", want, nw);
            }
        }
    }
    check(n_cases >= 13 && n_checked >= 2 * n_cases, "%s: %d cases, %d T5 id lists checked", name, n_cases, n_checked);
    cJSON_Delete(root);
}

/* Both file formats give the same ids for text without special tokens. */
static void test_formats_agree(qd_ctx *ctx, const qd_t5_tokenizer *a, const qd_t5_tokenizer *b) {
    static const char *texts[] = {
        "  Leading and trailing  ", "\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3 fullwidth \xe3\x80\x80 ideographic space",
        "cafe\xcc\x81 e\xcc\x81t\xc3\xa9", "tab\tnew\nline\r\nreturn", "\xe2\x91\xa0\xe2\x91\xa1 \xe3\x8d\xbf \xef\xac\x81",
        "\xf0\x9f\x90\xb1\xe2\x80\x8d\xf0\x9f\x91\xa4 zwj", "x\xc2\xa0y\xe2\x80\x83z", "", " ", "\xe2\x96\x81 already escaped",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t x[MAXIDS], y[MAXIDS];
        int nx = qd_t5_encode(ctx, a, texts[i], x, MAXIDS), ny = qd_t5_encode(ctx, b, texts[i], y, MAXIDS);
        check(nx > 0 && ids_eq(x, nx, y, ny), "formats agree on \"%s\" (%d ids)", text_label(texts[i]), nx);
    }
    int ok = 1, n_rounds = 0;
    char buf[400];
    for (int round = 0; round < 300 && ok; round++, n_rounds++) {
        int len = (int)(rnd() % 300);
        for (int i = 0; i < len; i++) {
            unsigned r = rnd();
            /* a mix of ASCII, spaces and raw bytes; no '<' so no special tokens */
            buf[i] = (char)(r % 3 == 0 ? ' ' + (r >> 8) % 90 : r % 3 == 1 ? ' ' : (r >> 8) & 0xFF);
            if (!buf[i] || buf[i] == '<') buf[i] = 'q';
        }
        buf[len] = 0;
        int32_t x[MAXIDS], y[MAXIDS];
        int nx = qd_t5_encode(ctx, a, buf, x, MAXIDS), ny = qd_t5_encode(ctx, b, buf, y, MAXIDS);
        ok = nx >= 1 && ids_eq(x, nx, y, ny) && x[nx - 1] == 1;
        for (int i = 0; i < nx && ok; i++) ok = x[i] >= 0 && x[i] < qd_t5_vocab_size(a);
        if (!ok) { dump("spiece", x, nx); dump("json", y, ny); }
    }
    check(ok, "random text: both formats give the same in-range ids ending in </s> (%d texts)", n_rounds);
}

static void test_specials(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *name) {
    int32_t ids[64];
    int n = qd_t5_encode(ctx, t, "<extra_id_0><extra_id_99></s><pad><unk>", ids, 64);
    int32_t want[] = {32099, 32000, 1, 0, 2, 1};
    check(ids_eq(ids, n, want, 6), "%s: special tokens in text map to their ids", name);
    int32_t a[64], b[64];
    int na = qd_t5_encode(ctx, t, "a cat </s> a dog", a, 64);
    int nb1 = qd_t5_encode(ctx, t, "a cat", b, 64);
    int nb2 = qd_t5_encode(ctx, t, "a dog", b + nb1, 64 - nb1);
    check(na == nb1 + nb2 && ids_eq(a, na, b, nb1 + nb2),
          "%s: \"a cat </s> a dog\" = \"a cat\" </s> \"a dog\" </s>", name);
    check(qd_t5_eos_id(t) == 1 && qd_t5_pad_id(t) == 0 && qd_t5_vocab_size(t) == 32100,
          "%s: eos 1, pad 0, vocab 32100", name);
    check(qd_t5_encode(ctx, t, NULL, ids, 64) == 1 && ids[0] == 1, "%s: NULL text is empty", name);
}

static void test_truncation(qd_ctx *ctx, const qd_t5_tokenizer *t) {
    char text[8192];
    int p = snprintf(text, sizeof text, "a very long prompt");
    for (int i = 0; i < 120; i++) p += snprintf(text + p, sizeof text - (size_t)p, " word%d", i);
    int n = qd_t5_encode(ctx, t, text, NULL, 0);
    check(n == 247, "long prompt: %d ids unpadded (247 expected)", n);
    int32_t full[300], ids[300];
    qd_t5_encode(ctx, t, text, full, 300);
    int trunc = -1;
    qd_status st = qd_t5_encode_padded(ctx, t, text, ids, 77, &trunc);
    check(st == QD_OK && !memcmp(ids, full, 76 * sizeof *ids) && ids[76] == 1 && trunc == 246 - 76,
          "truncated to 77: first 76 tokens, </s> last, %d dropped", trunc);
    st = qd_t5_encode_padded(ctx, t, text, ids, 247, &trunc);
    check(st == QD_OK && ids_eq(ids, 247, full, 247) && trunc == 0, "exactly 247: nothing dropped");
    st = qd_t5_encode_padded(ctx, t, "a cat", ids, 1, &trunc);
    check(st == QD_OK && ids[0] == 1 && trunc == 3, "max_len 1 keeps only </s> (%d dropped)", trunc);
    check(qd_t5_encode_padded(ctx, t, "a cat", ids, 0, NULL) != QD_OK, "max_len 0 refused");
    int32_t small[8];
    check(qd_t5_encode(ctx, t, text, small, 8) == -1 && strstr(qd_last_error(ctx), "247"),
          "too-small buffer refused: %s", qd_last_error(ctx));
}

static void test_text_robustness(qd_ctx *ctx, const qd_t5_tokenizer *t) {
    /* sentencepiece turns each malformed byte into U+FFFD without normalizing it
     * further (nmt_nfkc would delete a real U+FFFD): an unknown, and a run of
     * them is one <unk> */
    int32_t x[MAXIDS];
    int32_t want[] = {3, 9, 2, 3, 115, 2, 1};
    int nx = qd_t5_encode(ctx, t, "a\xff b\xc3\xff\xe2\x82", x, MAXIDS);
    check(ids_eq(x, nx, want, 7), "invalid UTF-8: each bad byte unknown, runs merged into one <unk>");
    int ok = 1;
    char buf[600];
    for (int round = 0; round < 300 && ok; round++) {
        int len = (int)(rnd() % 500);
        for (int i = 0; i < len; i++) { buf[i] = (char)(rnd() & 0xFF); if (!buf[i]) buf[i] = '<'; }
        buf[len] = 0;
        int n = qd_t5_encode(ctx, t, buf, x, MAXIDS);
        ok = n >= 1 && x[n - 1] == 1;
        for (int i = 0; i < n && ok; i++) ok = x[i] >= 0 && x[i] < qd_t5_vocab_size(t);
    }
    check(ok, "random bytes tokenize without error, ids in range");
    size_t big_n = 200000;
    char *big = malloc(big_n + 1);
    for (size_t i = 0; i < big_n; i++) big[i] = "ab \xe6\x97\xa5"[i % 6];
    big[big_n] = 0;
    clock_t c0 = clock();
    int n = qd_t5_encode(ctx, t, big, NULL, 0);
    double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
    check(n > 2 && secs < 5, "200000-byte text: %d ids in %.2f s", n, secs);
    free(big);
}

static void test_model_folders(qd_ctx *ctx, const qd_t5_tokenizer *ref) {
    static const char *dirs[] = {"models/flux-tiny/tokenizer_2", "models/sd35-tiny/tokenizer_3"};
    const char *prompt = "A photo of a cat wearing a tiny hat, 4k, highly detailed!";
    int32_t want[300], got[300];
    int nw = qd_t5_encode(ctx, ref, prompt, want, 300);
    for (int i = 0; i < 2; i++) {
        qd_t5_tokenizer *t = NULL;
        qd_status st = qd_t5_tokenizer_load(ctx, fixture(dirs[i]), &t);
        check(st == QD_OK, "load %s: %s", dirs[i], st ? qd_last_error(ctx) : "ok");
        if (st) continue;
        check(qd_t5_encode_padded(ctx, t, prompt, got, 256, NULL) == QD_OK && ids_eq(got, nw, want, nw) &&
                  got[255] == 0, "%s: fixture prompt, padded to 256", dirs[i]);
        qd_t5_tokenizer_free(t);
    }
}

/* Truncated, mutated and random files: a clear error naming the file, or (for
 * mutations that keep the structure valid) a tokenizer that still never crashes. */
static void test_bad_files(qd_ctx *ctx) {
    qd_t5_tokenizer *t = (qd_t5_tokenizer *)1;
    check(qd_t5_tokenizer_load(ctx, "/nonexistent/tokenizer_3", &t) != QD_OK && !t &&
              strstr(qd_last_error(ctx), "/nonexistent/tokenizer_3"), "missing folder named: %s", qd_last_error(ctx));
    char dir[] = "/tmp/qd_t5tok_XXXXXX";
    if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
    check(qd_t5_tokenizer_load(ctx, dir, &t) != QD_OK && strstr(qd_last_error(ctx), dir) &&
              strstr(qd_last_error(ctx), "spiece.model"), "empty folder: %s", qd_last_error(ctx));
    char sp[256], js[256];
    snprintf(sp, sizeof sp, "%s/spiece.model", dir);
    snprintf(js, sizeof js, "%s/tokenizer.json", dir);
    size_t n_model, n_json;
    char *model = read_all(fixture("tokenizers/t5/spiece.model"), &n_model);
    char *json = read_all(fixture("tokenizers/t5/tokenizer.json"), &n_json);
    if (!model || !json) { check(0, "read fixtures"); free(model); free(json); return; }

    /* truncated protobuf: cut in the pieces, and inside the normalizer spec at the end */
    size_t cuts[] = {1, 2, 100, n_model / 2, n_model - 1000, n_model - 7};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        write_bytes(sp, model, cuts[i]);
        t = NULL;
        qd_status st = qd_t5_tokenizer_load(ctx, dir, &t);
        check(st != QD_OK && !t && strstr(qd_last_error(ctx), sp), "spiece.model cut at %zu: %s", cuts[i], qd_last_error(ctx));
        qd_t5_tokenizer_free(t);
    }
    write_bytes(sp, "", 0);
    check(qd_t5_tokenizer_load(ctx, dir, &t) != QD_OK && strstr(qd_last_error(ctx), sp), "empty spiece.model: %s",
          qd_last_error(ctx));

    /* random bytes and random mutations (the tail holds the charsmap trie): no crash */
    char *buf = malloc(n_model);
    int loaded = 0, rejected = 0;
    for (int round = 0; round < 60; round++) {
        size_t n;
        if (round < 20) {
            n = rnd() % 4096;
            for (size_t i = 0; i < n; i++) buf[i] = (char)rnd();
        } else {
            n = n_model;
            memcpy(buf, model, n);
            int flips = 1 + (int)(rnd() % 8);
            for (int k = 0; k < flips; k++) {
                size_t at = round % 2 ? n - 1 - rnd() % 240000 : rnd() % n;   /* half in the charsmap */
                buf[at] = (char)rnd();
            }
        }
        write_bytes(sp, buf, n);
        t = NULL;
        if (qd_t5_tokenizer_load(ctx, dir, &t) == QD_OK) {
            loaded++;
            char text[200];
            for (int j = 0; j < 20; j++) {
                int len = (int)(rnd() % 199);
                for (int i = 0; i < len; i++) { text[i] = (char)rnd(); if (!text[i]) text[i] = 'a'; }
                text[len] = 0;
                int32_t ids[MAXIDS];
                qd_t5_encode(ctx, t, text, ids, MAXIDS);
            }
            qd_t5_tokenizer_free(t);
        } else {
            rejected++;
            if (!strstr(qd_last_error(ctx), sp)) { check(0, "error names the file: %s", qd_last_error(ctx)); break; }
        }
    }
    check(loaded + rejected == 60, "random/mutated spiece.model: %d rejected with the file named, %d still usable",
          rejected, loaded);
    free(buf);
    unlink(sp);

    /* tokenizer.json: invalid JSON, wrong model, wrong shapes */
    static const char *bad_json[] = {
        "{", "[]", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0]], \"unk_id\": 5}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [1, 2]], \"unk_id\": 0}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"a\", -1]], \"unk_id\": 0},"
        " \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"!!notbase64\"}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"a\", -1]], \"unk_id\": 0},"
        " \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAA\"}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"a\", -1], [\"a\", -2]], \"unk_id\": 0}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"a\", -1]], \"unk_id\": 0},"
        " \"normalizer\": {\"type\": \"Lowercase\"}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"a\", -1]], \"unk_id\": 0},"
        " \"added_tokens\": [{\"id\": -3, \"content\": \"x\"}]}",
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
        write_bytes(js, bad_json[i], strlen(bad_json[i]));
        t = NULL;
        qd_status st = qd_t5_tokenizer_load(ctx, dir, &t);
        check(st != QD_OK && !t && strstr(qd_last_error(ctx), js), "bad tokenizer.json #%zu: %s", i, qd_last_error(ctx));
        qd_t5_tokenizer_free(t);
    }
    /* a minimal valid one: no normalizer, no template */
    const char *tiny = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"<unk>\", 0], [\"\xe2\x96\x81" "a\", -1],"
                       " [\"</s>\", 0]], \"unk_id\": 0}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}";
    write_bytes(js, tiny, strlen(tiny));
    t = NULL;
    if (qd_t5_tokenizer_load(ctx, dir, &t) == QD_OK) {
        int32_t ids[8];
        int n = qd_t5_encode(ctx, t, "a  b a", ids, 8);
        check(n == 3 && ids[0] == 1 && ids[1] == 0 && ids[2] == 1, "minimal tokenizer.json: \"a  b a\" -> ▁a <unk> ▁a (%d ids)", n);
        qd_t5_tokenizer_free(t);
    } else {
        check(0, "minimal tokenizer.json loads: %s", qd_last_error(ctx));
    }
    /* truncated and byte-mutated real tokenizer.json: error or usable, never a crash */
    int ok = 1;
    for (int round = 0; round < 12 && ok; round++) {
        size_t n = round < 4 ? n_json / 5 * (size_t)(round + 1) : n_json;
        char *m = malloc(n_json);
        memcpy(m, json, n_json);
        if (round >= 4) for (int k = 0; k < 4; k++) m[n_json - 1 - rnd() % 330000] = (char)('A' + rnd() % 26);
        write_bytes(js, m, n);
        free(m);
        t = NULL;
        qd_status st = qd_t5_tokenizer_load(ctx, dir, &t);
        if (st == QD_OK) {
            int32_t ids[MAXIDS];
            ok = qd_t5_encode(ctx, t, "a photograph of an astronaut \xe2\x91\xa0 \xef\xbc\xa1", ids, MAXIDS) > 0;
            qd_t5_tokenizer_free(t);
        } else {
            ok = strstr(qd_last_error(ctx), js) != NULL;
        }
    }
    check(ok, "truncated/mutated tokenizer.json: clean error naming the file, or usable");
    unlink(js);
    rmdir(dir);
    free(model);
    free(json);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(1);
    qd_t5_tokenizer *sp = NULL, *js = NULL, *dir = NULL;
    qd_status st = qd_t5_tokenizer_load_file(ctx, fixture("tokenizers/t5/spiece.model"), &sp);
    check(st == QD_OK, "load spiece.model: %s", st ? qd_last_error(ctx) : "ok");
    st = qd_t5_tokenizer_load_file(ctx, fixture("tokenizers/t5/tokenizer.json"), &js);
    check(st == QD_OK, "load tokenizer.json: %s", st ? qd_last_error(ctx) : "ok");
    st = qd_t5_tokenizer_load(ctx, fixture("tokenizers/t5"), &dir);
    check(st == QD_OK, "load folder tokenizers/t5: %s", st ? qd_last_error(ctx) : "ok");
    if (sp) test_cases(ctx, sp, "spiece.model");
    if (js) test_cases(ctx, js, "tokenizer.json");
    if (dir) test_cases(ctx, dir, "folder");
    if (sp && js) test_formats_agree(ctx, sp, js);
    if (sp) test_specials(ctx, sp, "spiece.model");
    if (js) test_specials(ctx, js, "tokenizer.json");
    if (js) test_truncation(ctx, js);
    if (sp) test_text_robustness(ctx, sp);
    if (js) test_model_folders(ctx, js);
    test_bad_files(ctx);
    qd_t5_tokenizer_free(sp);
    qd_t5_tokenizer_free(js);
    qd_t5_tokenizer_free(dir);
    qd_ctx_free(ctx);
    return test_summary();
}
