#include "io/safetensors_seqwrite.h"
#include "io/file.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qd_st_writer {
    qd_outfile out;
    uint64_t *sizes;      /* bytes of each tensor, header order */
    int n, next;          /* tensors in the header; the one being written */
    uint64_t done;        /* bytes of tensor `next` written so far */
};

static uint64_t tensor_bytes(const qd_st_out *t) {
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (uint64_t)t->shape[d];
    return numel * qd_dtype_size(t->dtype);
}

static qd_status build_header(qd_ctx *ctx, const char *path, const qd_st_out *specs, int n,
                              const cJSON *metadata, uint64_t *sizes, char **out) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (metadata) {
        for (const cJSON *it = metadata->child; it; it = it->next)
            if (!cJSON_IsString(it)) {
                cJSON_Delete(root);
                return qd_fail(ctx, QD_ERR_ARG, "%s: metadata value '%s' is not a string", path, it->string);
            }
        cJSON *m = cJSON_Duplicate(metadata, 1);
        if (!m) { cJSON_Delete(root); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
        cJSON_AddItemToObject(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const qd_st_out *t = &specs[i];
        if (t->ndim < 0 || t->ndim > QD_MAX_DIMS || (unsigned)t->dtype >= QD_DTYPE_COUNT) {
            cJSON_Delete(root);
            return qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' has a bad rank or dtype", path, t->name);
        }
        sizes[i] = tensor_bytes(t);
        cJSON *e = cJSON_CreateObject();
        cJSON *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        for (int d = 0; d < t->ndim && shape; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        if (offs) {
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + sizes[i])));
        }
        if (!e || !shape || !offs) {
            cJSON_Delete(e); cJSON_Delete(shape); cJSON_Delete(offs); cJSON_Delete(root);
            return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        }
        cJSON_AddStringToObject(e, "dtype", qd_dtype_name(t->dtype));
        cJSON_AddItemToObject(e, "shape", shape);
        cJSON_AddItemToObject(e, "data_offsets", offs);
        if (cJSON_GetObjectItemCaseSensitive(root, t->name)) {
            cJSON_Delete(e); cJSON_Delete(root);
            return qd_fail(ctx, QD_ERR_ARG, "%s: tensor '%s' listed twice", path, t->name);
        }
        cJSON_AddItemToObject(root, t->name, e);
        off += sizes[i];
    }
    /* offsets beyond 2^53 would not survive the double in cJSON: no real file is that big */
    if (off > ((uint64_t)1 << 53)) { cJSON_Delete(root); return qd_fail(ctx, QD_ERR_ARG, "%s: output too large", path); }
    char *h = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!h) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    *out = h;
    return QD_OK;
}

qd_status qd_st_writer_open(qd_ctx *ctx, const char *path, const qd_st_out *specs, int n,
                            const cJSON *metadata, qd_st_writer **out) {
    *out = NULL;
    qd_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->sizes = calloc((size_t)(n > 0 ? n : 1), sizeof *w->sizes))) {
        free(w);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    w->n = n;
    char *h = NULL;
    qd_status st = build_header(ctx, path, specs, n, metadata, w->sizes, &h);
    if (st == QD_OK) st = qd_outfile_open(ctx, &w->out, path);
    if (st != QD_OK) { free(h); free(w->sizes); free(w); return st; }
    size_t len = strlen(h), padded = (len + 7) / 8 * 8;   /* data section 8-byte aligned */
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    FILE *fp = w->out.fp;
    int ok = fwrite(lb, 1, 8, fp) == 8 && fwrite(h, 1, len, fp) == len;
    for (size_t i = len; i < padded && ok; i++) ok = fputc(' ', fp) != EOF;
    free(h);
    if (!ok) {
        qd_st_writer_abort(w);
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed", path);
    }
    *out = w;
    return QD_OK;
}

qd_status qd_st_writer_put_part(qd_ctx *ctx, qd_st_writer *w, const void *data, size_t nbytes) {
    while (w->next < w->n && w->done == w->sizes[w->next]) { w->next++; w->done = 0; }
    if (w->next >= w->n || w->done + nbytes > w->sizes[w->next])
        return qd_fail(ctx, QD_ERR_ARG, "%s: more data than the header announces", w->out.path);
    if (nbytes && fwrite(data, 1, nbytes, w->out.fp) != nbytes)
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed", w->out.path);
    w->done += nbytes;
    return QD_OK;
}

qd_status qd_st_writer_put(qd_ctx *ctx, qd_st_writer *w, const void *data, size_t nbytes) {
    while (w->next < w->n && w->done == w->sizes[w->next] && w->sizes[w->next]) { w->next++; w->done = 0; }
    if (w->next >= w->n || w->done != 0 || nbytes != w->sizes[w->next])
        return qd_fail(ctx, QD_ERR_ARG, "%s: tensor %d: %zu bytes given, the header announces %llu", w->out.path,
                       w->next, nbytes, w->next < w->n ? (unsigned long long)w->sizes[w->next] : 0ull);
    QD_TRY(qd_st_writer_put_part(ctx, w, data, nbytes));
    w->next++;
    w->done = 0;
    return QD_OK;
}

qd_status qd_st_writer_commit(qd_ctx *ctx, qd_st_writer *w) {
    while (w->next < w->n && w->done == w->sizes[w->next]) { w->next++; w->done = 0; }
    if (w->next < w->n) {
        qd_status st = qd_fail(ctx, QD_ERR_ARG, "%s: only %d of %d tensors written", w->out.path, w->next, w->n);
        qd_st_writer_abort(w);
        return st;
    }
    qd_status st = qd_outfile_commit(ctx, &w->out);
    free(w->sizes);
    free(w);
    return st;
}

void qd_st_writer_abort(qd_st_writer *w) {
    if (!w) return;
    qd_outfile_abort(&w->out);
    free(w->sizes);
    free(w);
}
