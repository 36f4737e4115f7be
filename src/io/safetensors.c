#include "io/safetensors.h"
#include "io/file.h"
#include "base/half.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct qd_st_file {
    char *path;
    void *map;
    size_t size;
};

static const struct { const char *name; size_t size; } dtypes[QD_DTYPE_COUNT] = {
    [QD_F32] = {"F32", 4},      [QD_F16] = {"F16", 2},     [QD_BF16] = {"BF16", 2},
    [QD_F64] = {"F64", 8},      [QD_F8_E4M3] = {"F8_E4M3", 1}, [QD_F8_E5M2] = {"F8_E5M2", 1},
    [QD_I64] = {"I64", 8},      [QD_I32] = {"I32", 4},     [QD_I16] = {"I16", 2},
    [QD_I8] = {"I8", 1},        [QD_U64] = {"U64", 8},     [QD_U32] = {"U32", 4},
    [QD_U16] = {"U16", 2},      [QD_U8] = {"U8", 1},       [QD_BOOL] = {"BOOL", 1},
    [QD_F8_E8M0] = {"F8_E8M0", 1},
};

const char *qd_dtype_name(qd_dtype t) { return (unsigned)t < QD_DTYPE_COUNT ? dtypes[t].name : "?"; }
size_t qd_dtype_size(qd_dtype t) { return (unsigned)t < QD_DTYPE_COUNT ? dtypes[t].size : 0; }

int qd_dtype_from_name(const char *s, qd_dtype *out) {
    for (int i = 0; i < QD_DTYPE_COUNT; i++)
        if (strcmp(s, dtypes[i].name) == 0) { *out = (qd_dtype)i; return 0; }
    return -1;
}

static void file_close(qd_st_file *f) {
    if (!f) return;
    if (f->map && f->size) munmap(f->map, f->size);
    free(f->path);
    free(f);
}

static qd_status file_map(qd_ctx *ctx, const char *path, qd_st_file **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qd_fail(ctx, QD_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: truncated safetensors file (%lld bytes, the header length alone needs 8)",
                       path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return qd_fail(ctx, QD_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    qd_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        munmap(map, (size_t)st.st_size);
        free(f);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    f->map = map;
    f->size = (size_t)st.st_size;
    *out = f;
    return QD_OK;
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const qd_st_tensor *)a)->name, ((const qd_st_tensor *)b)->name);
}

/* Parse the header of a mapped file and append its tensors to the set. */
static qd_status parse_header(qd_ctx *ctx, qd_st_file *f, qd_st_set *set) {
    const uint8_t *p = f->map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > f->size - 8 || hlen > (100u << 20))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes): truncated or not a safetensors file",
                       f->path, (unsigned long long)hlen, f->size);
    char *json = malloc(hlen + 1);
    if (!json) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    memcpy(json, p + 8, hlen);
    json[hlen] = 0;
    cJSON *root = cJSON_Parse(json);
    free(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }
    const uint8_t *data = p + 8 + hlen;
    size_t data_size = f->size - 8 - hlen;
    int count = cJSON_GetArraySize(root);
    qd_st_tensor *grown = realloc(set->tensors, (size_t)(set->n_tensors + count) * sizeof *grown);
    if (!grown && count) { cJSON_Delete(root); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    if (grown) set->tensors = grown;
    qd_status st = QD_OK;
    for (cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        const char *name = it->string;
        cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        qd_st_tensor t = {0};
        if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has a malformed header entry", f->path, name);
            break;
        }
        if (qd_dtype_from_name(jd->valuestring, &t.dtype) != 0) {
            st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown dtype '%s'", f->path, name, jd->valuestring);
            break;
        }
        t.ndim = cJSON_GetArraySize(js);
        if (t.ndim > QD_MAX_DIMS) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has %d dimensions (max %d)", f->path, name, t.ndim, QD_MAX_DIMS);
            break;
        }
        /* numel with overflow checks: every dim a non-negative integer. */
        uint64_t numel = 1;
        int i = 0, bad = 0;
        for (cJSON *d = js->child; d; d = d->next, i++) {
            double v = cJSON_IsNumber(d) ? d->valuedouble : -1;
            if (v < 0 || v > 9.0e15 || v != (double)(int64_t)v) { bad = 1; break; }
            t.shape[i] = (int64_t)v;
            if (t.shape[i] && numel > (UINT64_MAX / 16) / (uint64_t)t.shape[i]) { bad = 1; break; }
            numel *= (uint64_t)t.shape[i];
        }
        double b0 = cJSON_IsNumber(jo->child) ? jo->child->valuedouble : -1;
        double b1 = cJSON_IsNumber(jo->child->next) ? jo->child->next->valuedouble : -1;
        if (bad || b0 < 0 || b1 < b0) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has an invalid shape or data_offsets", f->path, name);
            break;
        }
        uint64_t begin = (uint64_t)b0, end = (uint64_t)b1;
        if (end > data_size) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' ends at byte %llu of the data section but the file has only %zu: truncated file",
                         f->path, name, (unsigned long long)end, data_size);
            break;
        }
        if (end - begin != numel * qd_dtype_size(t.dtype)) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' holds %llu bytes but its shape and dtype %s need %llu",
                         f->path, name, (unsigned long long)(end - begin), qd_dtype_name(t.dtype),
                         (unsigned long long)(numel * qd_dtype_size(t.dtype)));
            break;
        }
        t.numel = (int64_t)numel;
        t.nbytes = (size_t)(end - begin);
        t.data = data + begin;
        t.file = f->path;
        t.name = strdup(name);
        if (!t.name) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        set->tensors[set->n_tensors++] = t;
    }
    cJSON_Delete(root);
    return st;
}

static qd_status add_file(qd_ctx *ctx, qd_st_set *set, const char *path) {
    qd_st_file *f;
    QD_TRY(file_map(ctx, path, &f));
    qd_st_file **files = realloc(set->files, (size_t)(set->n_files + 1) * sizeof *files);
    if (!files) { file_close(f); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
    set->files = files;
    set->files[set->n_files++] = f;
    return parse_header(ctx, f, set);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A sharded checkpoint: the index maps tensor names to shard files in its folder. */
static qd_status open_index(qd_ctx *ctx, const char *path, qd_st_set *set) {
    char *text;
    QD_TRY(qd_read_file(ctx, path, &text, NULL));
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: invalid JSON or no \"weight_map\" object", path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    qd_status st = QD_OK;
    /* Open each distinct shard once, in order of first mention. */
    for (cJSON *it = map->child; it && st == QD_OK; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: bad shard name for tensor '%s'", path, it->string);
            break;
        }
        int seen = 0;
        for (cJSON *prev = map->child; prev != it; prev = prev->next)
            if (strcmp(prev->valuestring, it->valuestring) == 0) { seen = 1; break; }
        if (seen) continue;
        char shard[4096];
        qd_path_join(shard, sizeof shard, dir, it->valuestring);
        st = add_file(ctx, set, shard);
    }
    cJSON_Delete(root);
    return st;
}

qd_status qd_st_open(qd_ctx *ctx, const char *path, qd_st_set *out) {
    memset(out, 0, sizeof *out);
    qd_status st = ends_with(path, ".index.json") ? open_index(ctx, path, out) : add_file(ctx, out, path);
    if (st == QD_OK) {
        qsort(out->tensors, (size_t)out->n_tensors, sizeof *out->tensors, cmp_tensor);
        for (int64_t i = 1; i < out->n_tensors; i++)
            if (strcmp(out->tensors[i - 1].name, out->tensors[i].name) == 0) {
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' appears twice", out->tensors[i].file, out->tensors[i].name);
                break;
            }
    }
    if (st != QD_OK) qd_st_close(out);
    return st;
}

void qd_st_close(qd_st_set *set) {
    for (int64_t i = 0; i < set->n_tensors; i++) free((char *)set->tensors[i].name);
    free(set->tensors);
    for (int i = 0; i < set->n_files; i++) file_close(set->files[i]);
    free(set->files);
    memset(set, 0, sizeof *set);
}

const qd_st_tensor *qd_st_find(const qd_st_set *set, const char *name) {
    int64_t lo = 0, hi = set->n_tensors - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        int c = strcmp(set->tensors[mid].name, name);
        if (c == 0) return &set->tensors[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

qd_status qd_st_get(qd_ctx *ctx, const qd_st_set *set, const char *name,
                    int ndim, const int64_t *shape, const qd_st_tensor **out) {
    const qd_st_tensor *t = qd_st_find(set, name);
    *out = NULL;
    if (!t) {
        const char *file = set->n_files ? set->files[0]->path : "(no file)";
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' is missing", file, name);
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = 0;
    if (!ok) {
        char want[160], have[160];
        fmt_shape(want, sizeof want, ndim, shape);
        fmt_shape(have, sizeof have, t->ndim, t->shape);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", t->file, name, have, want);
    }
    switch (t->dtype) {
    case QD_F32: case QD_F16: case QD_BF16: case QD_F64: case QD_F8_E4M3: case QD_F8_E5M2: break;
    default:
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected a float type",
                       t->file, name, qd_dtype_name(t->dtype));
    }
    *out = t;
    return QD_OK;
}

void qd_st_to_f32(const qd_st_tensor *t, int64_t offset, int64_t n, float *dst) {
    const uint8_t *b = (const uint8_t *)t->data + (size_t)offset * qd_dtype_size(t->dtype);
    int64_t i;
    switch (t->dtype) {
    case QD_F32: memcpy(dst, b, (size_t)n * 4); break;
    case QD_F16: for (i = 0; i < n; i++) { uint16_t h; memcpy(&h, b + 2 * i, 2); dst[i] = qd_f16_to_f32(h); } break;
    case QD_BF16: for (i = 0; i < n; i++) { uint16_t h; memcpy(&h, b + 2 * i, 2); dst[i] = qd_bf16_to_f32(h); } break;
    case QD_F64: for (i = 0; i < n; i++) { double d; memcpy(&d, b + 8 * i, 8); dst[i] = (float)d; } break;
    case QD_F8_E4M3: for (i = 0; i < n; i++) dst[i] = qd_f8e4m3_to_f32(b[i]); break;
    case QD_F8_E5M2: for (i = 0; i < n; i++) dst[i] = qd_f8e5m2_to_f32(b[i]); break;
    case QD_I64: for (i = 0; i < n; i++) { int64_t v; memcpy(&v, b + 8 * i, 8); dst[i] = (float)v; } break;
    case QD_U64: for (i = 0; i < n; i++) { uint64_t v; memcpy(&v, b + 8 * i, 8); dst[i] = (float)v; } break;
    case QD_I32: for (i = 0; i < n; i++) { int32_t v; memcpy(&v, b + 4 * i, 4); dst[i] = (float)v; } break;
    case QD_U32: for (i = 0; i < n; i++) { uint32_t v; memcpy(&v, b + 4 * i, 4); dst[i] = (float)v; } break;
    case QD_I16: for (i = 0; i < n; i++) { int16_t v; memcpy(&v, b + 2 * i, 2); dst[i] = (float)v; } break;
    case QD_U16: for (i = 0; i < n; i++) { uint16_t v; memcpy(&v, b + 2 * i, 2); dst[i] = (float)v; } break;
    case QD_I8: for (i = 0; i < n; i++) dst[i] = (float)(int8_t)b[i]; break;
    case QD_U8: case QD_BOOL: for (i = 0; i < n; i++) dst[i] = (float)b[i]; break;
    case QD_F8_E8M0: for (i = 0; i < n; i++) dst[i] = b[i] == 255 ? __builtin_nanf("") : ldexpf(1.0f, (int)b[i] - 127); break;
    default: memset(dst, 0, (size_t)n * 4); break;
    }
}

void qd_st_release(const qd_st_tensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    if (!t || !t->data || !t->nbytes || page <= 0) return;
    uintptr_t a = (uintptr_t)t->data / (uintptr_t)page * (uintptr_t)page;
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    madvise((void *)a, b - a, MADV_DONTNEED);   /* read-only private file mapping: only drops clean pages */
}

size_t qd_st_header_entry_cap(const char *name, int ndim) { return 6 * strlen(name) + 96 + 24 * (size_t)ndim; }

size_t qd_st_header_entry(char *h, size_t len, size_t cap, int first, const char *name, qd_dtype dtype,
                          const int64_t *shape, int ndim, uint64_t begin, uint64_t end) {
    len += (size_t)snprintf(h + len, cap - len, "%s\"", first ? "" : ",");
    for (const unsigned char *c = (const unsigned char *)name; *c && len + 8 < cap; c++) {
        if (*c == '"' || *c == '\\') len += (size_t)snprintf(h + len, cap - len, "\\%c", *c);
        else if (*c < 0x20) len += (size_t)snprintf(h + len, cap - len, "\\u%04x", *c);
        else h[len++] = (char)*c;
    }
    len += (size_t)snprintf(h + len, cap - len, "\":{\"dtype\":\"%s\",\"shape\":[", qd_dtype_name(dtype));
    for (int d = 0; d < ndim; d++) len += (size_t)snprintf(h + len, cap - len, d ? ",%lld" : "%lld", (long long)shape[d]);
    len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)begin,
                            (unsigned long long)end);
    return len;
}

qd_status qd_st_write(qd_ctx *ctx, const char *path, const qd_st_out *t, int n, const char *metadata_json) {
    /* Header: {"__metadata__":{...},"name":{"dtype":..,"shape":[..],"data_offsets":[b,e]},...} */
    size_t cap = 256 + (metadata_json ? strlen(metadata_json) : 0), len = 0;
    for (int i = 0; i < n; i++) cap += qd_st_header_entry_cap(t[i].name, t[i].ndim);
    char *h = malloc(cap);
    if (!h) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    len += (size_t)snprintf(h + len, cap - len, "{");
    if (metadata_json) len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":{%s}", metadata_json);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
        uint64_t bytes = numel * qd_dtype_size(t[i].dtype);
        len = qd_st_header_entry(h, len, cap, !(i || metadata_json), t[i].name, t[i].dtype, t[i].shape, t[i].ndim, off,
                                 off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';   /* align the data section to 8 bytes */
    qd_outfile out;
    qd_status st = qd_outfile_open(ctx, &out, path);
    if (st != QD_OK) { free(h); return st; }
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (uint8_t)((uint64_t)len >> (8 * i));
    fwrite(lenbytes, 1, 8, out.fp);
    fwrite(h, 1, len, out.fp);
    free(h);
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
        fwrite(t[i].data, qd_dtype_size(t[i].dtype), numel, out.fp);
    }
    return qd_outfile_commit(ctx, &out);
}

qd_status qd_write_tensor(qd_ctx *ctx, const char *path, const char *name,
                          const float *data, const int64_t *shape, int ndim) {
    if (ndim < 0 || ndim > QD_MAX_DIMS) return qd_fail(ctx, QD_ERR_ARG, "%s: bad rank %d", path, ndim);
    qd_st_out t = {name, QD_F32, ndim, {0}, data};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return qd_st_write(ctx, path, &t, 1, NULL);
}
