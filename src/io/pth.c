/* torch.save zip archives: the zip central directory, a pickle VM restricted to
 * state dicts, and tensor views over the stored storages. Every offset and
 * length read from the file is checked before use; nothing in the pickle is
 * ever called, the few known callables are re-implemented here as data. */
#include "io/pth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int qd_pth_sniff(const void *head, size_t n) {
    const uint8_t *b = head;
    return n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4;
}

static uint64_t rd(const uint8_t *p, int n) {   /* little-endian */
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ---- zip ------------------------------------------------------------------------ */

typedef struct { const char *name; size_t name_len; uint64_t off, size; } zentry;
typedef struct { zentry *e; uint64_t n; } zdir;

/* Data of a stored (uncompressed) entry, located through its local header. */
static qd_status zip_entry_data(qd_ctx *ctx, const qd_pth *p, const zentry *z, uint64_t *data_off) {
    const uint8_t *m = p->map;
    if (z->off > p->size || p->size - z->off < 30 || rd(m + z->off, 4) != 0x04034b50)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip entry '%.*s' has a bad local header (truncated file?)",
                       p->path, (int)z->name_len, z->name);
    uint64_t start = z->off + 30 + rd(m + z->off + 26, 2) + rd(m + z->off + 28, 2);
    if (start > p->size || p->size - start < z->size)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip entry '%.*s' ends at byte %llu but the file has %zu (truncated file?)",
                       p->path, (int)z->name_len, z->name, (unsigned long long)(start + z->size), p->size);
    *data_off = start;
    return QD_OK;
}

/* The zip64 extended-information extra field replaces the 0xffffffff fields in order. */
static void zip64_extra(const uint8_t *x, uint64_t len, uint64_t *usize, uint64_t *csize, uint64_t *off) {
    while (len >= 4) {
        uint64_t id = rd(x, 2), n = rd(x + 2, 2);
        if (n > len - 4) return;
        if (id == 1) {
            const uint8_t *q = x + 4;
            uint64_t left = n;
            if (*usize == 0xffffffffu && left >= 8) { *usize = rd(q, 8); q += 8; left -= 8; }
            if (*csize == 0xffffffffu && left >= 8) { *csize = rd(q, 8); q += 8; left -= 8; }
            if (*off == 0xffffffffu && left >= 8) { *off = rd(q, 8); }
            return;
        }
        x += 4 + n;
        len -= 4 + n;
    }
}

static qd_status zip_read_dir(qd_ctx *ctx, const qd_pth *p, zdir *d) {
    const uint8_t *m = p->map;
    size_t size = p->size;
    memset(d, 0, sizeof *d);
    if (size < 22) return qd_fail(ctx, QD_ERR_FORMAT, "%s: too short for a zip archive (truncated file?)", p->path);
    /* end of central directory: 22 bytes plus a comment of up to 65535 */
    int64_t eocd = -1;
    for (int64_t i = (int64_t)size - 22; i >= 0 && i >= (int64_t)size - 22 - 65535; i--)
        if (rd(m + i, 4) == 0x06054b50 && (uint64_t)i + 22 + rd(m + i + 20, 2) == size) { eocd = i; break; }
    if (eocd < 0)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: no zip end-of-central-directory record (truncated or not a torch.save file)",
                       p->path);
    uint64_t n = rd(m + eocd + 10, 2), cd_size = rd(m + eocd + 12, 4), cd_off = rd(m + eocd + 16, 4);
    if (n == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        /* zip64: locator just before the record points at the zip64 record */
        if (eocd < 20 || rd(m + eocd - 20, 4) != 0x07064b50)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip64 locator missing", p->path);
        uint64_t z64 = rd(m + eocd - 20 + 8, 8);
        if (z64 > size || size - z64 < 56 || rd(m + z64, 4) != 0x06064b50)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: bad zip64 end-of-central-directory record", p->path);
        n = rd(m + z64 + 32, 8);
        cd_size = rd(m + z64 + 40, 8);
        cd_off = rd(m + z64 + 48, 8);
    }
    if (cd_off > size || size - cd_off < cd_size || n > cd_size / 46)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip central directory (%llu entries at byte %llu) lies outside the file",
                       p->path, (unsigned long long)n, (unsigned long long)cd_off);
    d->e = calloc(n ? n : 1, sizeof *d->e);
    if (!d->e) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    uint64_t pos = cd_off, end = cd_off + cd_size;
    for (uint64_t i = 0; i < n; i++) {
        if (end - pos < 46 || rd(m + pos, 4) != 0x02014b50)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip central directory entry %llu is malformed", p->path, (unsigned long long)i);
        uint64_t flags = rd(m + pos + 8, 2), method = rd(m + pos + 10, 2);
        uint64_t csize = rd(m + pos + 20, 4), usize = rd(m + pos + 24, 4);
        uint64_t nl = rd(m + pos + 28, 2), xl = rd(m + pos + 30, 2), cl = rd(m + pos + 32, 2);
        uint64_t off = rd(m + pos + 42, 4);
        if (end - pos - 46 < nl + xl + cl)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: zip central directory entry %llu overruns the directory",
                           p->path, (unsigned long long)i);
        zentry *z = &d->e[d->n++];
        z->name = (const char *)m + pos + 46;
        z->name_len = nl;
        zip64_extra(m + pos + 46 + nl, xl, &usize, &csize, &off);
        if (flags & 1)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: zip entry '%.*s' is encrypted", p->path, (int)nl, z->name);
        if (method != 0 || csize != usize)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: zip entry '%.*s' is compressed (method %llu); torch.save stores "
                           "entries uncompressed", p->path, (int)nl, z->name, (unsigned long long)method);
        z->off = off;
        z->size = usize;
        pos += 46 + nl + xl + cl;
    }
    return QD_OK;
}

static const zentry *zip_find(const zdir *d, const char *prefix, size_t plen, const char *name, size_t nlen) {
    for (uint64_t i = 0; i < d->n; i++) {
        const zentry *z = &d->e[i];
        if (z->name_len == plen + nlen && !memcmp(z->name, prefix, plen) && !memcmp(z->name + plen, name, nlen))
            return z;
    }
    return NULL;
}

/* ---- pickle values -------------------------------------------------------------- */

typedef enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR } vtype;

/* The only globals a state dict needs. Nothing else is accepted. */
enum { G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_STORAGE };
static const struct { const char *module, *name; int kind; qd_dtype dtype; } GLOBALS[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, QD_F32},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2, QD_F32},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, QD_F32},
    {"torch", "FloatStorage", G_STORAGE, QD_F32},      {"torch", "HalfStorage", G_STORAGE, QD_F16},
    {"torch", "BFloat16Storage", G_STORAGE, QD_BF16},  {"torch", "DoubleStorage", G_STORAGE, QD_F64},
    {"torch", "LongStorage", G_STORAGE, QD_I64},       {"torch", "IntStorage", G_STORAGE, QD_I32},
    {"torch", "ShortStorage", G_STORAGE, QD_I16},      {"torch", "CharStorage", G_STORAGE, QD_I8},
    {"torch", "ByteStorage", G_STORAGE, QD_U8},        {"torch", "BoolStorage", G_STORAGE, QD_BOOL},
};

typedef struct val val;

/* What a storage reference or a rebuilt tensor carries (allocated for those values only,
 * so the common values stay small). */
typedef struct {
    qd_dtype dtype;             /* storage */
    const char *key;
    size_t key_len;
    int64_t numel;
    const val *storage;         /* tensor */
    int64_t offset;
    int ndim;
    int64_t shape[QD_MAX_DIMS], stride[QD_MAX_DIMS];
} tinfo;

struct val {
    vtype type;
    int visited;                /* walk(): a dict is flattened once */
    int64_t i;                  /* V_INT, V_BOOL; V_GLOBAL: index into GLOBALS */
    double f;
    const char *s;              /* V_STR: bytes inside the pickle (not NUL-terminated) */
    size_t len;
    val **items;                /* V_TUPLE, V_LIST; V_DICT: key, value, key, value, ... */
    int64_t n, cap;
    tinfo *ti;                  /* V_STORAGE, V_TENSOR */
};

/* A real state dict needs ~20 values per tensor; beyond this the pickle is not one. */
#define MAX_VALUES (1 << 22)

typedef struct {
    qd_ctx *ctx;
    const char *path;
    const uint8_t *b;
    size_t n, pos;
    val **all;                  /* every value, freed at the end */
    int64_t n_all, cap_all;
    val **stack;
    int64_t sp, cap_stack;
    int64_t *marks;
    int64_t n_marks, cap_marks;
    val **memo;
    int64_t n_memo;
} vm;

#define GROW(ptr, count, cap, min) ((count) < (cap) ? 0 : grow_array(&(ptr), &(cap), (min), sizeof *(ptr)))

/* Double the capacity of the array whose pointer is at `pptr` (any T**). */
static int grow_array(void *pptr, int64_t *cap, int64_t min, size_t elem) {
    void *ptr;
    memcpy(&ptr, pptr, sizeof ptr);
    int64_t c = *cap ? *cap * 2 : min;
    void *q = realloc(ptr, (size_t)c * elem);
    if (!q) return -1;
    memcpy(pptr, &q, sizeof q);
    *cap = c;
    return 0;
}

static qd_status bad(vm *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static qd_status bad(vm *v, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qd_fail(v->ctx, QD_ERR_FORMAT, "%s: data.pkl at byte %zu: %s", v->path, v->pos, msg);
}

static val *new_val(vm *v, vtype t) {
    if (v->n_all >= MAX_VALUES || GROW(v->all, v->n_all, v->cap_all, 256)) return NULL;
    val *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    if ((t == V_STORAGE || t == V_TENSOR) && !(x->ti = calloc(1, sizeof *x->ti))) { free(x); return NULL; }
    x->type = t;
    v->all[v->n_all++] = x;
    return x;
}

static int push(vm *v, val *x) {
    if (!x || GROW(v->stack, v->sp, v->cap_stack, 64)) return -1;
    v->stack[v->sp++] = x;
    return 0;
}

static int add_item(val *c, val *x) {
    if (GROW(c->items, c->n, c->cap, 8)) return -1;
    c->items[c->n++] = x;
    return 0;
}

/* ---- pickle VM ------------------------------------------------------------------ */

static int take(vm *v, size_t k, const uint8_t **out) {
    if (v->n - v->pos < k) return -1;
    *out = v->b + v->pos;
    v->pos += k;
    return 0;
}

static qd_status pop(vm *v, val **out) {
    int64_t floor_ = v->n_marks ? v->marks[v->n_marks - 1] : 0;
    if (v->sp <= floor_) return bad(v, "stack underflow");
    *out = v->stack[--v->sp];
    return QD_OK;
}

static qd_status top(vm *v, val **out) {
    int64_t floor_ = v->n_marks ? v->marks[v->n_marks - 1] : 0;
    if (v->sp <= floor_) return bad(v, "stack underflow");
    *out = v->stack[v->sp - 1];
    return QD_OK;
}

/* Items since the last MARK: [*first, sp); the mark is removed. */
static qd_status pop_mark(vm *v, int64_t *first) {
    if (!v->n_marks) return bad(v, "no MARK on the stack");
    *first = v->marks[--v->n_marks];
    return QD_OK;
}

static qd_status nomem(vm *v) {
    if (v->n_all >= MAX_VALUES)
        return qd_fail(v->ctx, QD_ERR_UNSUPPORTED, "%s: the pickle holds more than %d values: not a state dict", v->path,
                       MAX_VALUES);
    return qd_fail(v->ctx, QD_ERR_NOMEM, "%s: out of memory reading the pickle", v->path);
}

/* A name from the file made safe to print: at most 80 bytes, control bytes as '?'. */
static const char *printable(const char *s, size_t n, char *buf) {
    size_t k = n < 80 ? n : 80;
    for (size_t i = 0; i < k; i++) buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    snprintf(buf + k, 5, "%s", n > k ? "..." : "");
    return buf;
}

static qd_status refuse(vm *v, const char *module, size_t ml, const char *name, size_t nl) {
    char a[96], b[96];
    return qd_fail(v->ctx, QD_ERR_UNSUPPORTED,
                   "%s: refusing to load: the pickle refers to %s.%s, which a weights file has no need of "
                   "(only tensors and plain containers are accepted; nothing was executed)",
                   v->path, printable(module, ml, a), printable(name, nl, b));
}

static qd_status make_global(vm *v, const char *mod, size_t ml, const char *name, size_t nl) {
    for (size_t g = 0; g < sizeof GLOBALS / sizeof *GLOBALS; g++)
        if (strlen(GLOBALS[g].module) == ml && !memcmp(GLOBALS[g].module, mod, ml) &&
            strlen(GLOBALS[g].name) == nl && !memcmp(GLOBALS[g].name, name, nl)) {
            val *x = new_val(v, V_GLOBAL);
            if (!x) return nomem(v);
            x->i = (int64_t)g;
            return push(v, x) ? nomem(v) : QD_OK;
        }
    return refuse(v, mod, ml, name, nl);
}

static const char *global_name(const val *g, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", GLOBALS[g->i].module, GLOBALS[g->i].name);
    return buf;
}

static int is_int(const val *x) { return x->type == V_INT; }

static qd_status int_tuple(vm *v, const val *t, const char *what, int64_t *out, int *n) {
    if (t->type != V_TUPLE) return bad(v, "tensor %s is not a tuple", what);
    if (t->n > QD_MAX_DIMS) return bad(v, "tensor has %lld dimensions (max %d)", (long long)t->n, QD_MAX_DIMS);
    for (int64_t i = 0; i < t->n; i++) {
        if (!is_int(t->items[i]) || t->items[i]->i < 0 || t->items[i]->i > ((int64_t)1 << 48))
            return bad(v, "tensor %s[%lld] is not a valid integer", what, (long long)i);
        out[i] = t->items[i]->i;
    }
    *n = (int)t->n;
    return QD_OK;
}

/* REDUCE: the callable is one of the allowed globals; build its result as data. */
static qd_status reduce(vm *v) {
    val *args = NULL, *fn = NULL, *r = NULL;
    QD_TRY(pop(v, &args));
    QD_TRY(pop(v, &fn));
    char name[96];
    if (fn->type != V_GLOBAL) return bad(v, "REDUCE on a value that is not a callable");
    if (args->type != V_TUPLE) return bad(v, "REDUCE arguments are not a tuple");
    switch (GLOBALS[fn->i].kind) {
    case G_ORDERED_DICT:
        if (args->n != 0) return bad(v, "collections.OrderedDict called with arguments");
        if (!(r = new_val(v, V_DICT))) return nomem(v);
        break;
    case G_REBUILD_TENSOR_V2: {
        /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
        if (args->n < 4 || args->n > 7) return bad(v, "_rebuild_tensor_v2 with %lld arguments", (long long)args->n);
        val **a = args->items;
        if (a[0]->type != V_STORAGE) return bad(v, "_rebuild_tensor_v2: first argument is not a storage");
        if (!is_int(a[1]) || a[1]->i < 0) return bad(v, "_rebuild_tensor_v2: bad storage offset");
        if (!(r = new_val(v, V_TENSOR))) return nomem(v);
        r->ti->storage = a[0];
        r->ti->offset = a[1]->i;
        int ns, nt;
        QD_TRY(int_tuple(v, a[2], "size", r->ti->shape, &ns));
        QD_TRY(int_tuple(v, a[3], "stride", r->ti->stride, &nt));
        if (ns != nt) return bad(v, "tensor size and stride differ in length");
        r->ti->ndim = ns;
        break;
    }
    case G_REBUILD_PARAMETER:   /* (data, requires_grad, backward_hooks): the tensor itself */
        if (args->n < 1 || args->items[0]->type != V_TENSOR) return bad(v, "_rebuild_parameter without a tensor");
        r = args->items[0];
        break;
    default:
        return qd_fail(v->ctx, QD_ERR_UNSUPPORTED, "%s: refusing to load: the pickle calls %s (nothing was executed)",
                       v->path, global_name(fn, name, sizeof name));
    }
    return push(v, r) ? nomem(v) : QD_OK;
}

/* BINPERSID: ('storage', torch.<T>Storage, key, location, numel) */
static qd_status persistent(vm *v) {
    val *pid = NULL;
    QD_TRY(pop(v, &pid));
    if (pid->type != V_TUPLE || pid->n != 5) return bad(v, "persistent id is not a 5-tuple");
    val **a = pid->items;
    if (a[0]->type != V_STR || a[0]->len != 7 || memcmp(a[0]->s, "storage", 7))
        return bad(v, "persistent id is not a storage reference");
    if (a[1]->type != V_GLOBAL || GLOBALS[a[1]->i].kind != G_STORAGE) return bad(v, "storage type is not a torch storage class");
    if (a[2]->type != V_STR || a[2]->len == 0 || a[2]->len > 64) return bad(v, "bad storage key");
    if (!is_int(a[4]) || a[4]->i < 0) return bad(v, "bad storage size");
    val *s = new_val(v, V_STORAGE);
    if (!s) return nomem(v);
    s->ti->dtype = GLOBALS[a[1]->i].dtype;
    s->ti->key = a[2]->s;
    s->ti->key_len = a[2]->len;
    s->ti->numel = a[4]->i;
    return push(v, s) ? nomem(v) : QD_OK;
}

static qd_status memo_put(vm *v, uint64_t idx, val *x) {
    /* the pickler numbers memoized objects in order, so a valid index is below the
     * count of values made so far (this also bounds the memo table) */
    if (idx > (uint64_t)v->n_all) return bad(v, "memo index %llu out of range", (unsigned long long)idx);
    if ((int64_t)idx >= v->n_memo) {
        val **m = realloc(v->memo, sizeof *m * (size_t)(idx + 1));
        if (!m) return nomem(v);
        memset(m + v->n_memo, 0, sizeof *m * (size_t)(idx + 1 - (uint64_t)v->n_memo));
        v->memo = m;
        v->n_memo = (int64_t)idx + 1;
    }
    v->memo[idx] = x;
    return QD_OK;
}

static qd_status memo_get(vm *v, uint64_t idx) {
    if ((int64_t)idx >= v->n_memo || !v->memo[idx]) return bad(v, "memo index %llu was never stored", (unsigned long long)idx);
    return push(v, v->memo[idx]) ? nomem(v) : QD_OK;
}

static qd_status push_str(vm *v, size_t len) {
    const uint8_t *s;
    if (take(v, len, &s)) return bad(v, "string runs past the end");
    val *x = new_val(v, V_STR);
    if (!x) return nomem(v);
    x->s = (const char *)s;
    x->len = len;
    return push(v, x) ? nomem(v) : QD_OK;
}

static qd_status push_int(vm *v, int64_t i, vtype t) {
    val *x = new_val(v, t);
    if (!x) return nomem(v);
    x->i = i;
    return push(v, x) ? nomem(v) : QD_OK;
}

/* A container from the items above the last MARK. */
static qd_status from_mark(vm *v, vtype t) {
    int64_t first = 0;
    QD_TRY(pop_mark(v, &first));
    if (t == V_DICT && (v->sp - first) % 2) return bad(v, "DICT with an odd number of items");
    val *c = new_val(v, t);
    if (!c) return nomem(v);
    for (int64_t i = first; i < v->sp; i++)
        if (add_item(c, v->stack[i])) return nomem(v);
    v->sp = first;
    return push(v, c) ? nomem(v) : QD_OK;
}

static qd_status tuple_n(vm *v, int k) {
    val *c = new_val(v, V_TUPLE), *items[3];
    if (!c) return nomem(v);
    for (int i = k - 1; i >= 0; i--) QD_TRY(pop(v, &items[i]));
    for (int i = 0; i < k; i++)
        if (add_item(c, items[i])) return nomem(v);
    return push(v, c) ? nomem(v) : QD_OK;
}

/* APPEND(S) / SETITEM(S): items from `first` go into the container below them. */
static qd_status fill(vm *v, int64_t first, int dict) {
    if (first < 1 || first > v->sp) return bad(v, "no container below the items");
    int64_t floor_ = v->n_marks ? v->marks[v->n_marks - 1] : 0;
    if (first - 1 < floor_) return bad(v, "no container below the items");
    val *c = v->stack[first - 1];
    if (c->type != (dict ? V_DICT : V_LIST)) return bad(v, "%s on a value that is not a %s", dict ? "SETITEM" : "APPEND",
                                                        dict ? "dict" : "list");
    if (dict && (v->sp - first) % 2) return bad(v, "SETITEMS with an odd number of items");
    for (int64_t i = first; i < v->sp; i++)
        if (add_item(c, v->stack[i])) return nomem(v);
    v->sp = first;
    return QD_OK;
}

static qd_status run_pickle(vm *v, val **result) {
    const uint8_t *a;
    for (;;) {
        size_t at = v->pos;
        if (take(v, 1, &a)) return bad(v, "pickle ends without STOP (truncated?)");
        uint8_t op = a[0];
        val *x = NULL, *y = NULL;
        int64_t first = 0;
        switch (op) {
        case 0x80:  /* PROTO */
            if (take(v, 1, &a)) return bad(v, "truncated");
            if (a[0] > 5) return bad(v, "pickle protocol %d", a[0]);
            break;
        case 0x95:  /* FRAME: framing only */
            if (take(v, 8, &a)) return bad(v, "truncated");
            break;
        case '.':   /* STOP */
            QD_TRY(pop(v, result));
            return QD_OK;
        case '(':   /* MARK */
            if (GROW(v->marks, v->n_marks, v->cap_marks, 16)) return nomem(v);
            v->marks[v->n_marks++] = v->sp;
            break;
        case '1':   /* POP_MARK */
            QD_TRY(pop_mark(v, &first));
            v->sp = first;
            break;
        case '0':   /* POP */
            QD_TRY(pop(v, &x));
            break;
        case '2':   /* DUP */
            QD_TRY(top(v, &x));
            if (push(v, x)) return nomem(v);
            break;
        case '}': if (push(v, new_val(v, V_DICT))) return nomem(v); break;
        case ']': if (push(v, new_val(v, V_LIST))) return nomem(v); break;
        case ')': if (push(v, new_val(v, V_TUPLE))) return nomem(v); break;
        case 't': QD_TRY(from_mark(v, V_TUPLE)); break;
        case 'l': QD_TRY(from_mark(v, V_LIST)); break;
        case 'd': QD_TRY(from_mark(v, V_DICT)); break;
        case 0x85: QD_TRY(tuple_n(v, 1)); break;
        case 0x86: QD_TRY(tuple_n(v, 2)); break;
        case 0x87: QD_TRY(tuple_n(v, 3)); break;
        case 'a': QD_TRY(fill(v, v->sp - 1, 0)); break;
        case 's': QD_TRY(fill(v, v->sp - 2, 1)); break;
        case 'e': QD_TRY(pop_mark(v, &first)); QD_TRY(fill(v, first, 0)); break;
        case 'u': QD_TRY(pop_mark(v, &first)); QD_TRY(fill(v, first, 1)); break;
        case 'N': if (push(v, new_val(v, V_NONE))) return nomem(v); break;
        case 0x88: QD_TRY(push_int(v, 1, V_BOOL)); break;
        case 0x89: QD_TRY(push_int(v, 0, V_BOOL)); break;
        case 'J':   /* BININT */
            if (take(v, 4, &a)) return bad(v, "truncated");
            QD_TRY(push_int(v, (int32_t)(uint32_t)rd(a, 4), V_INT));
            break;
        case 'K':
            if (take(v, 1, &a)) return bad(v, "truncated");
            QD_TRY(push_int(v, a[0], V_INT));
            break;
        case 'M':
            if (take(v, 2, &a)) return bad(v, "truncated");
            QD_TRY(push_int(v, (int64_t)rd(a, 2), V_INT));
            break;
        case 0x8a: {  /* LONG1: n little-endian two's complement bytes */
            if (take(v, 1, &a)) return bad(v, "truncated");
            int k = a[0];
            if (k > 8) return bad(v, "integer of %d bytes is too large", k);
            if (take(v, (size_t)k, &a)) return bad(v, "truncated");
            uint64_t u = k ? rd(a, k) : 0;
            if (k && k < 8 && (a[k - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * k);   /* sign-extend */
            QD_TRY(push_int(v, (int64_t)u, V_INT));
            break;
        }
        case 'G': {  /* BINFLOAT: big-endian double */
            if (take(v, 8, &a)) return bad(v, "truncated");
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = (u << 8) | a[i];
            if (!(x = new_val(v, V_FLOAT))) return nomem(v);
            memcpy(&x->f, &u, 8);
            if (push(v, x)) return nomem(v);
            break;
        }
        case 'X': case 'B':   /* BINUNICODE, BINBYTES: 4-byte length */
            if (take(v, 4, &a)) return bad(v, "truncated");
            QD_TRY(push_str(v, (size_t)rd(a, 4)));
            break;
        case 0x8c: case 'C': case 'U':   /* SHORT_BINUNICODE, SHORT_BINBYTES, SHORT_BINSTRING */
            if (take(v, 1, &a)) return bad(v, "truncated");
            QD_TRY(push_str(v, a[0]));
            break;
        case 'T':   /* BINSTRING: signed 4-byte length */
            if (take(v, 4, &a)) return bad(v, "truncated");
            if (rd(a, 4) > 0x7fffffffu) return bad(v, "negative string length");
            QD_TRY(push_str(v, (size_t)rd(a, 4)));
            break;
        case 0x8d: {  /* BINUNICODE8 */
            if (take(v, 8, &a)) return bad(v, "truncated");
            uint64_t len = rd(a, 8);
            if (len > v->n) return bad(v, "string runs past the end");
            QD_TRY(push_str(v, (size_t)len));
            break;
        }
        case 'c': {  /* GLOBAL "module\nname\n" */
            const char *s = (const char *)v->b + v->pos;
            size_t left = v->n - v->pos;
            const char *nl1 = memchr(s, '\n', left);
            const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', left - (size_t)(nl1 + 1 - s)) : NULL;
            if (!nl2) return bad(v, "GLOBAL runs past the end");
            v->pos += (size_t)(nl2 + 1 - s);
            QD_TRY(make_global(v, s, (size_t)(nl1 - s), nl1 + 1, (size_t)(nl2 - nl1 - 1)));
            break;
        }
        case 0x93:  /* STACK_GLOBAL: module, name on the stack */
            QD_TRY(pop(v, &y));
            QD_TRY(pop(v, &x));
            if (x->type != V_STR || y->type != V_STR) return bad(v, "STACK_GLOBAL without strings");
            QD_TRY(make_global(v, x->s, x->len, y->s, y->len));
            break;
        case 'q':   /* BINPUT */
            if (take(v, 1, &a)) return bad(v, "truncated");
            QD_TRY(top(v, &x));
            QD_TRY(memo_put(v, a[0], x));
            break;
        case 'r':   /* LONG_BINPUT */
            if (take(v, 4, &a)) return bad(v, "truncated");
            QD_TRY(top(v, &x));
            QD_TRY(memo_put(v, rd(a, 4), x));
            break;
        case 0x94:  /* MEMOIZE */
            QD_TRY(top(v, &x));
            QD_TRY(memo_put(v, (uint64_t)v->n_memo, x));
            break;
        case 'h':
            if (take(v, 1, &a)) return bad(v, "truncated");
            QD_TRY(memo_get(v, a[0]));
            break;
        case 'j':
            if (take(v, 4, &a)) return bad(v, "truncated");
            QD_TRY(memo_get(v, rd(a, 4)));
            break;
        case 'Q': QD_TRY(persistent(v)); break;
        case 'R': QD_TRY(reduce(v)); break;
        case 'b':   /* BUILD: only a dict's attribute state (OrderedDict._metadata) */
            QD_TRY(pop(v, &y));
            QD_TRY(top(v, &x));
            if (x->type != V_DICT || (y->type != V_DICT && y->type != V_NONE))
                return bad(v, "BUILD (object state) on something other than a dict");
            break;
        default:
            v->pos = at;
            return qd_fail(v->ctx, QD_ERR_UNSUPPORTED,
                           "%s: data.pkl at byte %zu: pickle opcode 0x%02x ('%c') is not accepted in a state dict "
                           "(nothing was executed)", v->path, at, op, op >= 32 && op < 127 ? op : '?');
        }
    }
}

static void vm_free(vm *v) {
    for (int64_t i = 0; i < v->n_all; i++) { free(v->all[i]->items); free(v->all[i]->ti); free(v->all[i]); }
    free(v->all);
    free(v->stack);
    free(v->marks);
    free(v->memo);
}

/* ---- tensors -------------------------------------------------------------------- */

typedef struct {
    qd_ctx *ctx;
    qd_pth *p;
    const zdir *dir;
    const char *prefix;         /* "<archive>/" */
    size_t plen;
    int64_t cap;
} collect;

static void *own(qd_pth *p, void *x) {
    if (!x) return NULL;
    if (p->n_owned == p->cap_owned && grow_array(&p->owned, &p->cap_owned, 64, sizeof *p->owned)) {
        free(x);
        return NULL;
    }
    p->owned[p->n_owned++] = x;
    return x;
}

/* Gather a strided tensor into a contiguous copy (elements of `es` bytes). */
static void gather(uint8_t *dst, const uint8_t *base, const tinfo *t, size_t es) {
    int64_t idx[QD_MAX_DIMS] = {0}, numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
    for (int64_t i = 0; i < numel; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        memcpy(dst + (size_t)i * es, base + (size_t)off * es, es);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
}

static qd_status add_tensor(collect *c, const char *name, const val *tv) {
    qd_pth *p = c->p;
    const tinfo *t = tv->ti, *s = t->storage->ti;
    size_t es = qd_dtype_size(s->dtype);
    char key[80];
    snprintf(key, sizeof key, "data/%.*s", (int)s->key_len, s->key);
    const zentry *z = zip_find(c->dir, c->prefix, c->plen, key, strlen(key));
    if (!z) return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s': storage '%s%s' is not in the archive", p->path, name,
                           c->prefix, key);
    uint64_t data;
    QD_TRY(zip_entry_data(c->ctx, p, z, &data));
    if ((uint64_t)s->numel > z->size / es)
        return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s': storage of %lld %s elements needs %llu bytes but '%s%s' has %llu",
                       p->path, name, (long long)s->numel, qd_dtype_name(s->dtype), (unsigned long long)s->numel * es,
                       c->prefix, key, (unsigned long long)z->size);
    /* numel, the last element's index and contiguity, all below 2^62 (dims and strides < 2^48, ndim <= 8) */
    int64_t numel = 1, last = t->offset, expect = 1;
    int contiguous = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] && numel > ((int64_t)1 << 62) / t->shape[d])
            return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s' is too large", p->path, name);
        numel *= t->shape[d];
        if (t->shape[d] > 1 && t->stride[d] != expect) contiguous = 0;
        expect *= t->shape[d] ? t->shape[d] : 1;
    }
    for (int d = 0; d < t->ndim && numel; d++) {
        if (t->stride[d] && t->shape[d] - 1 > (((int64_t)1 << 62) - last) / t->stride[d])
            return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s' is too large", p->path, name);
        last += (t->shape[d] - 1) * t->stride[d];
    }
    if (numel && last >= s->numel)
        return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s' reaches element %lld of a storage of %lld",
                       p->path, name, (long long)last, (long long)s->numel);
    if (!numel && t->offset > s->numel)
        return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: tensor '%s' starts past its storage", p->path, name);
    if (p->n_tensors == c->cap && grow_array(&p->tensors, &c->cap, 64, sizeof *p->tensors))
        return qd_fail(c->ctx, QD_ERR_NOMEM, "out of memory");
    qd_st_tensor *o = &p->tensors[p->n_tensors];
    memset(o, 0, sizeof *o);
    const uint8_t *base = (const uint8_t *)p->map + data;
    o->dtype = s->dtype;
    o->ndim = t->ndim;
    memcpy(o->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    o->numel = numel;
    o->nbytes = (size_t)numel * es;
    o->file = p->path;
    if (contiguous) {
        o->data = base + (size_t)t->offset * es;
    } else {
        uint8_t *copy = own(p, malloc(o->nbytes ? o->nbytes : 1));
        if (!copy) return qd_fail(c->ctx, QD_ERR_NOMEM, "out of memory");
        gather(copy, base + (size_t)t->offset * es, t, es);
        o->data = copy;
        o->nbytes = (size_t)numel * es;
    }
    if (!(o->name = own(p, strdup(name)))) return qd_fail(c->ctx, QD_ERR_NOMEM, "out of memory");
    p->n_tensors++;
    return QD_OK;
}

/* Tensors of a dict, nested dicts flattened as "outer.inner"; cycles stop at the depth limit. */
static qd_status walk(collect *c, val *d, const char *prefix, int depth) {
    /* a dict reached twice (memo references) could multiply the work without bound */
    if (depth > 8 || d->visited) return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: dicts nested too deeply or shared", c->p->path);
    d->visited = 1;
    for (int64_t i = 0; i + 1 < d->n; i += 2) {
        const val *k = d->items[i];
        val *x = d->items[i + 1];
        if (x->type != V_TENSOR && x->type != V_DICT) continue;
        int ctl = k->type != V_STR;
        for (size_t j = 0; !ctl && j < k->len; j++) ctl = (unsigned char)k->s[j] < 0x20 || k->s[j] == 0x7f;
        if (ctl || k->len > 1000)
            return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: a state dict key is not a plain string", c->p->path);
        char name[2048];
        snprintf(name, sizeof name, "%s%.*s", prefix, (int)k->len, k->s);
        if (x->type == V_TENSOR) {
            QD_TRY(add_tensor(c, name, x));
        } else {
            size_t nl = strlen(name);
            if (nl + 2 >= sizeof name) return qd_fail(c->ctx, QD_ERR_FORMAT, "%s: key too long", c->p->path);
            name[nl] = '.';
            name[nl + 1] = 0;
            QD_TRY(walk(c, x, name, depth + 1));
        }
    }
    return QD_OK;
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const qd_st_tensor *)a)->name, ((const qd_st_tensor *)b)->name);
}

/* ---- open ----------------------------------------------------------------------- */

static qd_status map_file(qd_ctx *ctx, qd_pth *p, const char *path) {
    if (!(p->path = strdup(path))) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return qd_fail(ctx, QD_ERR_IO, "%s: not a regular file", path); }
    p->size = (size_t)st.st_size;
    if (p->size) {
        void *m = mmap(NULL, p->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) { close(fd); p->size = 0; return qd_fail(ctx, QD_ERR_IO, "%s: cannot map: %s", path, strerror(errno)); }
        p->map = m;
    }
    close(fd);
    if (!qd_pth_sniff(p->map, p->size))
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: not a zip archive as torch.save writes (files saved by PyTorch "
                       "before 1.6 or with _use_new_zipfile_serialization=False are not supported)", path);
    return QD_OK;
}

static qd_status load(qd_ctx *ctx, qd_pth *p) {
    zdir dir;
    qd_status st = zip_read_dir(ctx, p, &dir);
    const zentry *pkl = NULL;
    for (uint64_t i = 0; st == QD_OK && i < dir.n; i++) {
        const zentry *z = &dir.e[i];
        /* "<archive>/data.pkl": exactly one directory level, as torch writes */
        const char *slash = memchr(z->name, '/', z->name_len);
        if (slash && z->name_len - (size_t)(slash - z->name) == 9 && !memcmp(slash, "/data.pkl", 9)) { pkl = z; break; }
    }
    if (st == QD_OK && !pkl) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no <name>/data.pkl in the archive: not a torch.save file", p->path);
    uint64_t pkl_off = 0;
    if (st == QD_OK) st = zip_entry_data(ctx, p, pkl, &pkl_off);
    size_t plen = pkl ? pkl->name_len - 8 : 0;
    if (st == QD_OK) {
        const zentry *bo = zip_find(&dir, pkl->name, plen, "byteorder", 9);
        uint64_t off;
        if (bo && zip_entry_data(ctx, p, bo, &off) == QD_OK && bo->size == 3 && !memcmp((const char *)p->map + off, "big", 3))
            st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: big-endian tensor data is not supported", p->path);
    }
    if (st == QD_OK) {
        vm v = {.ctx = ctx, .path = p->path, .b = (const uint8_t *)p->map + pkl_off, .n = (size_t)pkl->size};
        val *root = NULL;
        st = run_pickle(&v, &root);
        if (st == QD_OK && root->type != V_DICT)
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: the pickle holds no dict of tensors (a state dict)", p->path);
        char prefix[4096];
        snprintf(prefix, sizeof prefix, "%.*s", (int)plen, pkl->name);
        collect c = {ctx, p, &dir, prefix, plen, 0};
        if (st == QD_OK) st = walk(&c, root, "", 0);
        vm_free(&v);
    }
    free(dir.e);
    if (st != QD_OK) return st;
    if (p->n_tensors) qsort(p->tensors, (size_t)p->n_tensors, sizeof *p->tensors, cmp_tensor);
    for (int64_t i = 1; i < p->n_tensors; i++)
        if (!strcmp(p->tensors[i].name, p->tensors[i - 1].name))
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' appears twice", p->path, p->tensors[i].name);
    return QD_OK;
}

qd_status qd_pth_open(qd_ctx *ctx, const char *path, qd_pth **out) {
    *out = NULL;
    qd_pth *p = qd_calloc(ctx, 1, sizeof *p);
    if (!p) return QD_ERR_NOMEM;
    qd_status st = map_file(ctx, p, path);
    if (st == QD_OK) st = load(ctx, p);
    if (st != QD_OK) { qd_pth_close(p); return st; }
    *out = p;
    return QD_OK;
}

void qd_pth_close(qd_pth *p) {
    if (!p) return;
    for (int64_t i = 0; i < p->n_owned; i++) free(p->owned[i]);
    free(p->owned);
    free(p->tensors);
    if (p->map) munmap(p->map, p->size);
    free(p->path);
    free(p);
}
