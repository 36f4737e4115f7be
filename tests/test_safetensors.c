/* safetensors reader: real fixture files load; shards load through their index;
 * malformed files (truncated, offsets past the end, sizes that disagree with the
 * shape, bad JSON, duplicate names) fail with a message naming the file. */
#include "testutil.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "base/half.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static const char *tmp(const char *name) {
    static char buf[4][256];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 256, "%s/%s", tmpdir, name);
    return b;
}

/* Write a raw file: 8-byte little-endian header length, header, data. */
static void write_raw(const char *path, const char *header, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    uint64_t len = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)((len >> (8 * i)) & 0xff), f);
    fputs(header, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void expect_bad(qd_ctx *ctx, const char *what, const char *path, const char *want) {
    qd_st_set set;
    qd_status st = qd_st_open(ctx, path, &set);
    check(st != QD_OK && strstr(qd_last_error(ctx), path) && strstr(qd_last_error(ctx), want),
          "%s: %s", what, qd_last_error(ctx));
    if (st == QD_OK) qd_st_close(&set);
}

static void test_fixture(qd_ctx *ctx) {
    qd_st_set set;
    const char *te = fixture("models/sd15-tiny/text_encoder/model.safetensors");
    check(qd_st_open(ctx, te, &set) == QD_OK, "open %s", te);
    const qd_st_tensor *t = qd_st_find(&set, "text_model.embeddings.token_embedding.weight");
    check(t && t->dtype == QD_F16 && t->ndim == 2 && t->shape[0] == 49408 && t->shape[1] == 32,
          "token_embedding is F16 [49408, 32]");
    const qd_st_tensor *g;
    int64_t want[2] = {49408, 33};
    check(qd_st_get(ctx, &set, "text_model.embeddings.token_embedding.weight", 2, want, &g) != QD_OK &&
              strstr(qd_last_error(ctx), "token_embedding") && strstr(qd_last_error(ctx), "[49408, 32]"),
          "shape mismatch names tensor and shape: %s", qd_last_error(ctx));
    check(qd_st_get(ctx, &set, "no.such.tensor", 0, NULL, &g) != QD_OK && strstr(qd_last_error(ctx), "no.such.tensor"),
          "missing tensor named: %s", qd_last_error(ctx));
    qd_st_close(&set);
}

static void test_shards_and_dtypes(qd_ctx *ctx) {
    float a[6] = {1, -2, 3.5f, 0.25f, 1e-3f, -7};
    uint16_t b16[3] = {qd_f32_to_bf16(1.5f), qd_f32_to_bf16(-0.75f), qd_f32_to_bf16(2.0f)};
    uint16_t h16[2] = {qd_f32_to_f16(0.1f), qd_f32_to_f16(-3.0f)};
    uint8_t f8[2] = {0x38, 0xb8};   /* e4m3: +1.0, -1.0 */
    int64_t i64[2] = {-5, 123456789};
    qd_st_out s1[2] = {{"a", QD_F32, 2, {2, 3}, a}, {"b", QD_BF16, 1, {3}, b16}};
    qd_st_out s2[3] = {{"h", QD_F16, 1, {2}, h16}, {"f8", QD_F8_E4M3, 1, {2}, f8}, {"i", QD_I64, 1, {2}, i64}};
    check(qd_st_write(ctx, tmp("m-00001-of-00002.safetensors"), s1, 2, "\"format\":\"pt\"") == QD_OK, "write shard 1");
    check(qd_st_write(ctx, tmp("m-00002-of-00002.safetensors"), s2, 3, NULL) == QD_OK, "write shard 2");
    FILE *f = fopen(tmp("m.safetensors.index.json"), "w");
    fprintf(f, "{\"metadata\":{\"total_size\":64},\"weight_map\":{\"a\":\"m-00001-of-00002.safetensors\","
               "\"b\":\"m-00001-of-00002.safetensors\",\"h\":\"m-00002-of-00002.safetensors\","
               "\"f8\":\"m-00002-of-00002.safetensors\",\"i\":\"m-00002-of-00002.safetensors\"}}");
    fclose(f);
    qd_st_set set;
    check(qd_st_open(ctx, tmp("m.safetensors.index.json"), &set) == QD_OK, "open sharded index: %s", qd_last_error(ctx));
    check(set.n_files == 2 && set.n_tensors == 5, "two shards, five tensors");
    float v[6];
    const qd_st_tensor *t = qd_st_find(&set, "a");
    if (t) qd_st_to_f32(t, 0, 6, v);
    check(t && memcmp(v, a, sizeof a) == 0, "F32 round trip");
    t = qd_st_find(&set, "b");
    if (t) qd_st_to_f32(t, 0, 3, v);
    check(t && v[0] == 1.5f && v[1] == -0.75f && v[2] == 2.0f, "BF16 values");
    t = qd_st_find(&set, "h");
    if (t) qd_st_to_f32(t, 0, 2, v);
    check(t && v[0] == qd_f16_to_f32(qd_f32_to_f16(0.1f)) && v[1] == -3.0f, "F16 values");
    t = qd_st_find(&set, "f8");
    if (t) qd_st_to_f32(t, 0, 2, v);
    check(t && v[0] == 1.0f && v[1] == -1.0f, "F8_E4M3 values");
    t = qd_st_find(&set, "i");
    if (t) qd_st_to_f32(t, 0, 2, v);
    check(t && v[0] == -5.0f && v[1] == 123456792.0f, "I64 values (as float)");
    qd_st_close(&set);

    f = fopen(tmp("bad.safetensors.index.json"), "w");
    fprintf(f, "{\"weight_map\":{\"a\":\"missing-shard.safetensors\"}}");
    fclose(f);
    expect_bad(ctx, "index naming a missing shard", tmp("missing-shard.safetensors"), "cannot open");
    qd_st_set s;
    check(qd_st_open(ctx, tmp("bad.safetensors.index.json"), &s) != QD_OK && strstr(qd_last_error(ctx), "missing-shard"),
          "index with missing shard fails: %s", qd_last_error(ctx));
    f = fopen(tmp("bad2.safetensors.index.json"), "w");
    fprintf(f, "{\"weight_map\":{\"a\":\"../escape.safetensors\"}}");
    fclose(f);
    check(qd_st_open(ctx, tmp("bad2.safetensors.index.json"), &s) != QD_OK && strstr(qd_last_error(ctx), "bad shard name"),
          "shard names may not leave the folder: %s", qd_last_error(ctx));
}

static void test_malformed(qd_ctx *ctx) {
    float d[4] = {0};
    write_raw(tmp("short.safetensors"), "", NULL, 0);
    truncate(tmp("short.safetensors"), 3);
    expect_bad(ctx, "shorter than 8 bytes", tmp("short.safetensors"), "truncated");
    write_raw(tmp("hlen.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4);
    truncate(tmp("hlen.safetensors"), 20);
    expect_bad(ctx, "header longer than the file", tmp("hlen.safetensors"), "exceeds the file");
    write_raw(tmp("past.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 8);
    expect_bad(ctx, "data past the end", tmp("past.safetensors"), "truncated");
    write_raw(tmp("size.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", d, 16);
    expect_bad(ctx, "size disagrees with shape", tmp("size.safetensors"), "need 12");
    write_raw(tmp("neg.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", d, 4);
    expect_bad(ctx, "negative dimension", tmp("neg.safetensors"), "invalid shape");
    write_raw(tmp("huge.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", d, 4);
    expect_bad(ctx, "overflowing element count", tmp("huge.safetensors"), "invalid shape");
    write_raw(tmp("rev.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", d, 16);
    expect_bad(ctx, "reversed offsets", tmp("rev.safetensors"), "data_offsets");
    write_raw(tmp("dtype.safetensors"), "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", d, 16);
    expect_bad(ctx, "unknown dtype", tmp("dtype.safetensors"), "F128");
    write_raw(tmp("json.safetensors"), "{\"a\":{\"dtype\":\"F32\",", d, 4);
    expect_bad(ctx, "invalid JSON header", tmp("json.safetensors"), "JSON");
    write_raw(tmp("entry.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", d, 4);
    expect_bad(ctx, "entry without offsets", tmp("entry.safetensors"), "malformed");
    write_raw(tmp("dup.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", d, 8);
    expect_bad(ctx, "duplicate tensor name", tmp("dup.safetensors"), "twice");
    expect_bad(ctx, "missing file", tmp("nope.safetensors"), "cannot open");
}

/* Tensor names come from input files and go into written headers: quotes,
 * backslashes and control characters must be escaped, by both writers. */
static void test_name_escaping(qd_ctx *ctx) {
    static const char name[] = "odd \"name\" \\ with\ta\nnewline";
    float v[2] = {1.0f, -2.0f}, back[2] = {0, 0};
    qd_st_out t[1] = {{name, QD_F32, 1, {2}, v}};
    int64_t shape[1] = {2};
    qd_st_stream *s = NULL;
    qd_status st = qd_st_write(ctx, tmp("esc1.safetensors"), t, 1, NULL);
    if (st == QD_OK) st = qd_st_stream_open(ctx, tmp("esc2.safetensors"), &s);
    if (st == QD_OK) st = qd_st_stream_add(ctx, s, name, QD_F32, 1, shape, v);
    if (st == QD_OK) st = qd_st_stream_finish(ctx, s, NULL);
    check(st == QD_OK, "write a tensor with quotes, a backslash, a tab and a newline in its name: %s",
          st ? qd_last_error(ctx) : "ok");
    for (int w = 0; w < 2; w++) {
        qd_st_set set;
        qd_status so = qd_st_open(ctx, tmp(w ? "esc2.safetensors" : "esc1.safetensors"), &set);
        const qd_st_tensor *f = so == QD_OK ? qd_st_find(&set, name) : NULL;
        if (f) qd_st_to_f32(f, 0, 2, back);
        check(f && back[0] == 1.0f && back[1] == -2.0f, "%s writer: the name reads back intact: %s",
              w ? "streaming" : "one-shot", so ? qd_last_error(ctx) : "ok");
        if (so == QD_OK) qd_st_close(&set);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_st_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    qd_ctx *ctx = test_ctx_new(1);
    test_fixture(ctx);
    test_shards_and_dtypes(ctx);
    test_malformed(ctx);
    test_name_escaping(ctx);
    qd_ctx_free(ctx);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
