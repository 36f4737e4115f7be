/* Streaming safetensors writer: planned (header first, data in place) or
 * unplanned (scratch data file, then header + ordered copy). */
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
    int64_t nbytes;
    int64_t scratch;            /* unplanned: offset in the scratch file */
    int64_t offset;             /* planned: offset in the data section */
    int written;
} entry;

struct qd_st_stream {
    char path[4096], scratch_path[4200];
    FILE *scratch;
    qd_outfile out;             /* the target's tmp file (planned: from layout(); unplanned: at finish) */
    int planned, laid_out;
    int64_t data_start;         /* planned: 8 + header length */
    entry *e;
    int64_t n, cap, bytes;
    struct name_idx { const char *name; int64_t idx; } *by_name;   /* planned: entries sorted by name */
};

qd_status qd_st_stream_open(qd_ctx *ctx, const char *path, qd_st_stream **out) {
    *out = NULL;
    qd_st_stream *s = calloc(1, sizeof *s);
    if (!s) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (strlen(path) + 40 >= sizeof s->path) { free(s); return qd_fail(ctx, QD_ERR_ARG, "%s: path too long", path); }
    snprintf(s->path, sizeof s->path, "%s", path);
    snprintf(s->scratch_path, sizeof s->scratch_path, "%s.data-tmp", path);
    *out = s;
    return QD_OK;
}

static void release(qd_st_stream *s) {
    if (s->scratch) { fclose(s->scratch); remove(s->scratch_path); }
    qd_outfile_abort(&s->out);
    for (int64_t i = 0; i < s->n; i++) free(s->e[i].name);
    free(s->e);
    free(s->by_name);
    free(s);
}

void qd_st_stream_abort(qd_st_stream *s) {
    if (s) release(s);
}

static qd_status new_entry(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim, const int64_t *shape) {
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
    if (!(e->name = strdup(name))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    e->nbytes = numel * (int64_t)qd_dtype_size(dtype);
    s->n++;
    return QD_OK;
}

qd_status qd_st_stream_declare(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                               const int64_t *shape) {
    if (s->laid_out || (s->n && !s->planned)) return qd_fail(ctx, QD_ERR_ARG, "%s: declare after writing began", s->path);
    s->planned = 1;
    return new_entry(ctx, s, name, dtype, ndim, shape);
}

static int by_alignment(const void *a, const void *b) {
    const entry *x = a, *y = b;
    size_t sx = qd_dtype_size(x->dtype), sy = qd_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int by_name_idx(const void *a, const void *b) {
    return strcmp(((const struct name_idx *)a)->name, ((const struct name_idx *)b)->name);
}

/* Sort into file order, set offsets, and render the header (8-byte aligned). */
static char *header(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json, size_t *len_out) {
    qsort(s->e, (size_t)s->n, sizeof *s->e, by_alignment);
    size_t cap = 256 + (metadata_json ? strlen(metadata_json) : 0), len = 0;
    for (int64_t i = 0; i < s->n; i++) cap += qd_st_header_entry_cap(s->e[i].name, s->e[i].ndim);
    char *h = malloc(cap);
    if (!h) { qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); return NULL; }
    len += (size_t)snprintf(h + len, cap - len, "{");
    if (metadata_json) len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":{%s}", metadata_json);
    int64_t off = 0;
    for (int64_t i = 0; i < s->n; i++) {
        entry *e = &s->e[i];
        if (i && !strcmp(e->name, s->e[i - 1].name)) { free(h); qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' twice", s->path, e->name); return NULL; }
        e->offset = off;
        len = qd_st_header_entry(h, len, cap, !(i || metadata_json), e->name, e->dtype, e->shape, e->ndim, (uint64_t)off,
                                 (uint64_t)(off + e->nbytes));
        off += e->nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    *len_out = len;
    return h;
}

static int write_header(FILE *f, const char *h, size_t len) {
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (uint8_t)((uint64_t)len >> (8 * i));
    return fwrite(lenbytes, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
}

qd_status qd_st_stream_layout(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json) {
    if (!s->planned || s->laid_out) return qd_fail(ctx, QD_ERR_ARG, "%s: layout needs declared tensors, once", s->path);
    size_t len;
    char *h = header(ctx, s, metadata_json, &len);
    if (!h) return QD_ERR_NOMEM;
    s->by_name = malloc(sizeof *s->by_name * (size_t)(s->n ? s->n : 1));
    if (!s->by_name) { free(h); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    for (int64_t i = 0; i < s->n; i++) { s->by_name[i].name = s->e[i].name; s->by_name[i].idx = i; }
    qsort(s->by_name, (size_t)s->n, sizeof *s->by_name, by_name_idx);
    qd_status st = qd_outfile_open(ctx, &s->out, s->path);
    if (st != QD_OK) { free(h); return st; }
    int ok = write_header(s->out.fp, h, len);
    free(h);
    if (!ok) return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
    s->data_start = 8 + (int64_t)len;
    s->laid_out = 1;
    return QD_OK;
}

static entry *find(qd_st_stream *s, const char *name) {
    int64_t lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        int c = strcmp(s->by_name[mid].name, name);
        if (!c) return &s->e[s->by_name[mid].idx];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

qd_status qd_st_stream_add(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                           const int64_t *shape, const void *data) {
    if (s->planned) {
        if (!s->laid_out) return qd_fail(ctx, QD_ERR_ARG, "%s: add before layout", s->path);
        entry *e = find(s, name);
        int same = e && e->dtype == dtype && e->ndim == ndim && !e->written;
        for (int i = 0; same && i < ndim; i++) same = e->shape[i] == shape[i];
        if (!same) return qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' was %s", s->path, name,
                                  !e ? "not declared" : e->written ? "written twice" : "declared with another dtype or shape");
        if (fseeko(s->out.fp, (off_t)(s->data_start + e->offset), SEEK_SET) != 0 ||
            (e->nbytes && fwrite(data, 1, (size_t)e->nbytes, s->out.fp) != (size_t)e->nbytes))
            return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
        e->written = 1;
        s->bytes += e->nbytes;
        return QD_OK;
    }
    if (!s->scratch && !(s->scratch = fopen(s->scratch_path, "w+b")))
        return qd_fail(ctx, QD_ERR_IO, "%s: cannot write: %s", s->scratch_path, strerror(errno));
    QD_TRY(new_entry(ctx, s, name, dtype, ndim, shape));
    entry *e = &s->e[s->n - 1];
    e->scratch = s->bytes;
    if (e->nbytes && fwrite(data, 1, (size_t)e->nbytes, s->scratch) != (size_t)e->nbytes)
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", s->scratch_path, strerror(errno));
    s->bytes += e->nbytes;
    return QD_OK;
}

qd_status qd_st_stream_finish(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json) {
    qd_status st = QD_OK;
    if (s->planned) {
        for (int64_t i = 0; i < s->n && st == QD_OK; i++)
            if (!s->e[i].written) st = qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' was declared but not written", s->path, s->e[i].name);
        if (st == QD_OK && !s->laid_out) st = qd_fail(ctx, QD_ERR_ARG, "%s: never laid out", s->path);
        if (st == QD_OK) st = qd_outfile_commit(ctx, &s->out);
        release(s);
        return st;
    }
    size_t len;
    char *h = header(ctx, s, metadata_json, &len);
    if (!h) { release(s); return QD_ERR_NOMEM; }
    st = qd_outfile_open(ctx, &s->out, s->path);
    if (st != QD_OK) { free(h); release(s); return st; }
    int bad = !write_header(s->out.fp, h, len);
    free(h);
    size_t bufsz = (size_t)4 << 20;
    uint8_t *buf = malloc(bufsz);
    if (!buf || (s->scratch && fflush(s->scratch) != 0)) bad = 1;
    for (int64_t i = 0; i < s->n && !bad; i++) {
        const entry *e = &s->e[i];
        if (!e->nbytes) continue;
        if (fseeko(s->scratch, (off_t)e->scratch, SEEK_SET) != 0) { bad = 1; break; }
        for (int64_t left = e->nbytes; left > 0 && !bad;) {
            size_t k = left < (int64_t)bufsz ? (size_t)left : bufsz;
            if (fread(buf, 1, k, s->scratch) != k || fwrite(buf, 1, k, s->out.fp) != k) bad = 1;
            left -= (int64_t)k;
        }
    }
    free(buf);
    if (bad) {
        int e = errno;
        st = qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", s->path, strerror(e));
    } else {
        st = qd_outfile_commit(ctx, &s->out);
    }
    release(s);
    return st;
}
