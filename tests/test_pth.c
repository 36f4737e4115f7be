/* The .pth reader against files torch.save wrote (tests/tools/make_pth_fixtures.py):
 * every dtype, strided and offset views, scalars, parameters, nested dicts; the
 * published TAESD layout (same bytes as the safetensors fixture); pickles that
 * call functions are refused and run nothing; truncated and corrupted archives
 * fail cleanly at every byte. */
#include "testutil.h"
#include "io/pth.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *PWNED = "/tmp/qd_pth_pwned";

static const qd_st_tensor *find(const qd_pth *p, const char *name) {
    for (int64_t i = 0; i < p->n_tensors; i++)
        if (!strcmp(p->tensors[i].name, name)) return &p->tensors[i];
    return NULL;
}

/* Tensor `name` has dtype, shape, and float values `want` (n of them). */
static void expect(const qd_pth *p, const char *name, qd_dtype dt, int ndim, const int64_t *shape,
                   const float *want, int64_t n) {
    const qd_st_tensor *t = find(p, name);
    if (!t) { check(0, "%s present", name); return; }
    int ok = t->dtype == dt && t->ndim == ndim && t->numel == n;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    float got[128];
    if (ok && n <= 128) {
        qd_st_to_f32(t, 0, n, got);
        for (int64_t i = 0; i < n; i++) ok &= got[i] == want[i];
    }
    check(ok, "%s: %s, %d dims, values as saved", name, qd_dtype_name(t->dtype), t->ndim);
}

static void test_state(qd_ctx *ctx) {
    qd_pth *p;
    qd_status st = qd_pth_open(ctx, fixture("pth/state.pth"), &p);
    check(st == QD_OK, "state.pth opens%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st) return;
    check(p->n_tensors == 12, "12 tensors (non-tensor values skipped): %lld", (long long)p->n_tensors);
    int sorted = 1;
    for (int64_t i = 1; i < p->n_tensors; i++) sorted &= strcmp(p->tensors[i - 1].name, p->tensors[i].name) < 0;
    check(sorted, "tensors sorted by name");

    float w[108];
    for (int i = 0; i < 108; i++) w[i] = (float)i / 10.0f;
    expect(p, "conv.weight", QD_F32, 4, (int64_t[]){4, 3, 3, 3}, w, 108);
    expect(p, "conv.bias", QD_F16, 1, (int64_t[]){4}, (float[]){0.5f, -1.25f, 2.0f, 1024.0f}, 4);
    float nw[8];
    for (int i = 0; i < 8; i++) nw[i] = (float)i - 3.5f;
    expect(p, "norm.weight", QD_BF16, 1, (int64_t[]){8}, nw, 8);
    expect(p, "mask", QD_BOOL, 1, (int64_t[]){3}, (float[]){1, 0, 1}, 3);
    expect(p, "transposed", QD_F32, 2, (int64_t[]){3, 2}, (float[]){0, 3, 1, 4, 2, 5}, 6);
    expect(p, "view_a", QD_F32, 1, (int64_t[]){4}, (float[]){4, 6, 8, 10}, 4);
    expect(p, "view_b", QD_F32, 2, (int64_t[]){5, 1}, (float[]){10, 12, 14, 16, 18}, 5);
    expect(p, "scalar", QD_F32, 0, NULL, (float[]){7.5f}, 1);
    expect(p, "empty", QD_F32, 2, (int64_t[]){0, 4}, NULL, 0);
    expect(p, "param", QD_F32, 1, (int64_t[]){3}, (float[]){1, 2, 3}, 3);
    expect(p, "nested.inner.weight", QD_F64, 2, (int64_t[]){1, 2}, (float[]){1, -1}, 2);
    const qd_st_tensor *s = find(p, "steps");
    int64_t steps[5] = {0};
    if (s && s->dtype == QD_I64 && s->numel == 5) memcpy(steps, s->data, sizeof steps);
    check(steps[1] == 1 && steps[2] == -2 && steps[3] == 3000000000LL && steps[4] == -5, "int64 values exact");
    const qd_st_tensor *va = find(p, "view_a"), *vb = find(p, "view_b");
    check(va && vb && (const char *)vb->data - (const char *)va->data == 3 * 4,
          "views share their storage (no copy for contiguous tensors)");
    qd_pth_close(p);
}

/* module.state_dict() as torch saves it: OrderedDict + BUILD of its _metadata. */
static void test_module_state(qd_ctx *ctx) {
    qd_pth *p;
    qd_status st = qd_pth_open(ctx, fixture("pth/module_state.pth"), &p);
    check(st == QD_OK, "module_state.pth opens%s%s", st ? ": " : "", st ? qd_last_error(ctx) : "");
    if (st) return;
    check(p->n_tensors == 4 && find(p, "0.weight") && find(p, "1.bias"), "4 tensors: 0.weight, 0.bias, 1.weight, 1.bias");
    expect(p, "0.bias", QD_F32, 1, (int64_t[]){4}, (float[]){1, 2, 3, 4}, 4);
    const qd_st_tensor *w = find(p, "0.weight");
    check(w && w->ndim == 4 && w->shape[0] == 4 && w->shape[1] == 3 && w->shape[2] == 3, "0.weight [4, 3, 3, 3]");
    qd_pth_close(p);
}

/* The published taesd.py layout: the same tensors, byte for byte, as the safetensors fixture. */
static void test_taesd_layout(qd_ctx *ctx) {
    qd_pth *p;
    qd_st_set set;
    if (qd_pth_open(ctx, fixture("pth/taef2_decoder.pth"), &p) != QD_OK) {
        check(0, "taef2_decoder.pth opens: %s", qd_last_error(ctx));
        return;
    }
    if (qd_st_open(ctx, fixture("taesd/taef2_decoder.safetensors"), &set) != QD_OK) {
        check(0, "safetensors opens");
        qd_pth_close(p);
        return;
    }
    int same = p->n_tensors == set.n_tensors;
    for (int64_t i = 0; same && i < p->n_tensors; i++) {
        const qd_st_tensor *a = &p->tensors[i], *b = &set.tensors[i];
        same = !strcmp(a->name, b->name) && a->dtype == b->dtype && a->ndim == b->ndim &&
               a->nbytes == b->nbytes && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) &&
               !memcmp(a->data, b->data, a->nbytes);
    }
    check(same, "taef2_decoder.pth: %lld tensors identical to the safetensors file", (long long)p->n_tensors);
    qd_st_close(&set);
    qd_pth_close(p);
}

static void test_evil(qd_ctx *ctx, const char *file, const char *callable) {
    unlink(PWNED);
    qd_pth *p = (qd_pth *)1;
    qd_status st = qd_pth_open(ctx, fixture(file), &p);
    const char *err = qd_last_error(ctx);
    check(st == QD_ERR_UNSUPPORTED && p == NULL && strstr(err, file) && strstr(err, callable) &&
          strstr(err, "nothing was executed") && access(PWNED, F_OK) != 0,
          "%s refused, nothing ran: %s", file, err);
}

static void test_malformed(qd_ctx *ctx, const char *file, const char *want) {
    qd_pth *p = (qd_pth *)1;
    qd_status st = qd_pth_open(ctx, fixture(file), &p);
    const char *err = qd_last_error(ctx);
    check(st == QD_ERR_FORMAT && p == NULL && strstr(err, file) && strstr(err, want), "%s: %s", file, err);
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    if (fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int spit(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Replace the last occurrence of `from` by `to` (same length) in a copy of the file
 * (the last: a zip entry's name in the central directory, not its local header). */
static int patched(const unsigned char *b, size_t n, const char *from, const char *to, const char *out) {
    size_t k = strlen(from);
    unsigned char *c = malloc(n);
    memcpy(c, b, n);
    int ok = 0;
    for (size_t i = n - k + 1; i-- > 0;)
        if (!memcmp(c + i, from, k)) { memcpy(c + i, to, k); ok = spit(out, c, n); break; }
    free(c);
    return ok;
}

static void test_damaged(qd_ctx *ctx) {
    size_t n;
    unsigned char *b = slurp(fixture("pth/state.pth"), &n);
    if (!b) { check(0, "read state.pth"); return; }
    char tmp[] = "/tmp/qd_pth_XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0) { free(b); check(0, "mkstemp"); return; }
    close(fd);
    qd_pth *p;

    /* every truncation fails, naming the file */
    int all_fail = 1, named = 1;
    for (size_t len = 0; len < n; len++) {
        spit(tmp, b, len);
        if (qd_pth_open(ctx, tmp, &p) == QD_OK) { all_fail = 0; qd_pth_close(p); }
        else if (!strstr(qd_last_error(ctx), tmp)) named = 0;
    }
    check(all_fail && named, "all %zu truncations of state.pth fail with the file named", n);
    spit(tmp, b, n / 2);
    qd_pth_open(ctx, tmp, &p);
    check(strstr(qd_last_error(ctx), "truncated") != NULL, "truncated zip: %s", qd_last_error(ctx));

    /* every single-byte corruption either loads or fails cleanly (ASan watches) */
    int loaded = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char save = b[i];
        b[i] ^= 0xa5;
        spit(tmp, b, n);
        if (qd_pth_open(ctx, tmp, &p) == QD_OK) { loaded++; qd_pth_close(p); }
        b[i] = save;
    }
    check(1, "%zu single-byte corruptions: %d still load (data bytes), the rest fail cleanly", n, loaded);

    check(patched(b, n, "collections\nOrderedDict", "collections\nOrderedDicx", tmp) &&
          qd_pth_open(ctx, tmp, &p) == QD_ERR_UNSUPPORTED && strstr(qd_last_error(ctx), "collections.OrderedDicx"),
          "unknown global refused by name: %s", qd_last_error(ctx));
    check(patched(b, n, "torch\nFloatStorage", "torch\nFloatStorag_", tmp) &&
          qd_pth_open(ctx, tmp, &p) == QD_ERR_UNSUPPORTED && strstr(qd_last_error(ctx), "torch.FloatStorag_"),
          "unknown storage class refused: %s", qd_last_error(ctx));
    /* data/0 holds conv.weight's 108 floats: rename it so the storage is missing */
    check(patched(b, n, "state/data/0", "state/data/Z", tmp) && qd_pth_open(ctx, tmp, &p) != QD_OK &&
          strstr(qd_last_error(ctx), "conv.weight"), "missing storage names the tensor: %s", qd_last_error(ctx));

    spit(tmp, (const unsigned char *)"not a zip at all", 16);
    check(qd_pth_open(ctx, tmp, &p) == QD_ERR_FORMAT && strstr(qd_last_error(ctx), "not a zip archive"),
          "non-zip file: %s", qd_last_error(ctx));
    check(qd_pth_open(ctx, "/nonexistent/x.pth", &p) == QD_ERR_IO && strstr(qd_last_error(ctx), "/nonexistent/x.pth"),
          "missing file: %s", qd_last_error(ctx));
    unlink(tmp);
    free(b);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(1);
    test_state(ctx);
    test_module_state(ctx);
    test_taesd_layout(ctx);
    test_evil(ctx, "pth/evil_os_system.pth", "os.system");
    test_evil(ctx, "pth/evil_builtins_eval.pth", "builtins.eval");
    test_evil(ctx, "pth/evil_in_state_dict.pth", "posix.system");
    test_evil(ctx, "pth/evil_inst_opcode.pth", "opcode 0x69 ('i')");
    test_malformed(ctx, "pth/bad_memo_index.pth", "memo index 2147483647 out of range");
    test_malformed(ctx, "pth/bad_not_a_dict.pth", "no dict of tensors");
    test_damaged(ctx);
    qd_ctx_free(ctx);
    return test_summary();
}
