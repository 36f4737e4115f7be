/* Streaming safetensors writer: scratch data file, then header + ordered copy. */
#include "io/safetensors_stream.h"
#include "io/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    int64_t offset, nbytes;     /* in the scratch file */
} entry;

struct qd_st_stream {
    char path[4096], scratch[4200];
    FILE *fp;
    entry *e;
    int64_t n, cap, bytes;
};

qd_status qd_st_stream_open(qd_ctx *ctx, const char *path, qd_st_stream **out) {
    *out = NULL;
    qd_st_stream *s = calloc(1, sizeof *s);
    if (!s) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (strlen(path) + 40 >= sizeof s->path) { free(s); return qd_fail(ctx, QD_ERR_ARG, "%s: path too long", path); }
    snprintf(s->path, sizeof s->path, "%s", path);
    snprintf(s->scratch, sizeof s->scratch, "%s.data-tmp", path);
    s->fp = fopen(s->scratch, "w+b");
    if (!s->fp) {
        qd_status st = qd_fail(ctx, QD_ERR_IO, "%s: cannot write: %s", s->scratch, strerror(errno));
        free(s);
        return st;
    }
    *out = s;
    return QD_OK;
}

int64_t qd_st_stream_bytes(const qd_st_stream *s) { return s->bytes; }

qd_status qd_st_stream_add(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                           const int64_t *shape, const void *data) {
    if (ndim < 0 || ndim > QD_MAX_DIMS) return qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' has rank %d", s->path, name, ndim);
    if (s->n == s->cap) {
        int64_t c = s->cap ? 2 * s->cap : 256;
        entry *e = realloc(s->e, sizeof *e * (size_t)c);
        if (!e) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        s->e = e;
        s->cap = c;
    }
    entry *e = &s->e[s->n];
    memset(e, 0, sizeof *e);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) { e->shape[i] = shape[i]; numel *= shape[i]; }
    e->name = strdup(name);
    if (!e->name) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    e->offset = s->bytes;
    e->nbytes = numel * (int64_t)qd_dtype_size(dtype);
    if (e->nbytes && fwrite(data, 1, (size_t)e->nbytes, s->fp) != (size_t)e->nbytes) {
        free(e->name);
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", s->scratch, strerror(errno));
    }
    s->bytes += e->nbytes;
    s->n++;
    return QD_OK;
}

static void release(qd_st_stream *s) {
    if (s->fp) fclose(s->fp);
    remove(s->scratch);
    for (int64_t i = 0; i < s->n; i++) free(s->e[i].name);
    free(s->e);
    free(s);
}

void qd_st_stream_abort(qd_st_stream *s) {
    if (s) release(s);
}

static int by_alignment(const void *a, const void *b) {
    const entry *x = a, *y = b;
    size_t sx = qd_dtype_size(x->dtype), sy = qd_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

qd_status qd_st_stream_finish(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json) {
    qsort(s->e, (size_t)s->n, sizeof *s->e, by_alignment);
    size_t cap = 256 + (metadata_json ? strlen(metadata_json) : 0), len = 0;
    for (int64_t i = 0; i < s->n; i++) cap += strlen(s->e[i].name) + 96 + 24 * (size_t)s->e[i].ndim;
    char *h = malloc(cap);
    if (!h) { release(s); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    len += (size_t)snprintf(h + len, cap - len, "{");
    if (metadata_json) len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":{%s}", metadata_json);
    uint64_t off = 0;
    for (int64_t i = 0; i < s->n; i++) {
        const entry *e = &s->e[i];
        len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", (i || metadata_json) ? "," : "",
                                e->name, qd_dtype_name(e->dtype));
        for (int d = 0; d < e->ndim; d++) len += (size_t)snprintf(h + len, cap - len, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + (uint64_t)e->nbytes));
        off += (uint64_t)e->nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    qd_outfile out;
    qd_status st = qd_outfile_open(ctx, &out, s->path);
    if (st != QD_OK) { free(h); release(s); return st; }
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (uint8_t)((uint64_t)len >> (8 * i));
    FILE *fo = out.fp;
    int bad = fwrite(lenbytes, 1, 8, fo) != 8 || fwrite(h, 1, len, fo) != len;
    free(h);
    size_t bufsz = (size_t)4 << 20;
    uint8_t *buf = malloc(bufsz);
    if (!buf) bad = 1;
    if (fflush(s->fp) != 0) bad = 1;
    for (int64_t i = 0; i < s->n && !bad; i++) {
        const entry *e = &s->e[i];
        if (fseeko(s->fp, (off_t)e->offset, SEEK_SET) != 0) { bad = 1; break; }
        for (int64_t left = e->nbytes; left > 0 && !bad;) {
            size_t k = left < (int64_t)bufsz ? (size_t)left : bufsz;
            if (fread(buf, 1, k, s->fp) != k || fwrite(buf, 1, k, fo) != k) bad = 1;
            left -= (int64_t)k;
        }
    }
    free(buf);
    if (bad) {
        int e = errno;
        qd_outfile_abort(&out);
        release(s);
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", out.path, strerror(e));
    }
    st = qd_outfile_commit(ctx, &out);
    release(s);
    return st;
}
