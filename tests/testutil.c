#include "testutil.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int n_pass, n_fail;

const char *fixture(const char *rel) {
    static char bufs[8][4096];
    static int slot;
    const char *root = getenv("QD_FIXTURES");
    if (!root) root = "tests/fixtures";
    char *b = bufs[slot++ % 8];
    snprintf(b, 4096, "%s/%s", root, rel);
    return b;
}

qd_model *test_open_model(qd_ctx *ctx, const char *rel) {
    qd_model *m = NULL;
    qd_status st = qd_model_open(ctx, fixture(rel), &m);
    check(st == QD_OK, "open %s: %s", rel, st ? qd_last_error(ctx) : "ok");
    return st == QD_OK ? m : NULL;
}

static const qd_st_tensor *open_tensor(qd_ctx *ctx, qd_st_set *set, const char *path, const char *name) {
    if (qd_st_open(ctx, path, set) != QD_OK) {
        fprintf(stderr, "load: %s\n", qd_last_error(ctx));
        return NULL;
    }
    const qd_st_tensor *t = qd_st_find(set, name);
    if (!t) fprintf(stderr, "load: %s has no tensor '%s'\n", path, name);
    return t;
}

float *load_f32(const char *path, const char *name, int64_t *shape, int *ndim, size_t *numel) {
    qd_ctx *ctx = qd_ctx_new(1);
    qd_st_set set;
    float *out = NULL;
    const qd_st_tensor *t = open_tensor(ctx, &set, path, name);
    if (t) {
        out = malloc((size_t)t->numel * sizeof(float) + 1);
        qd_st_to_f32(t, 0, t->numel, out);
        if (shape) memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        if (ndim) *ndim = t->ndim;
        if (numel) *numel = (size_t)t->numel;
    }
    if (set.n_files || t) qd_st_close(&set);
    qd_ctx_free(ctx);
    return out;
}

void *load_raw(const char *path, const char *name, size_t *nbytes) {
    qd_ctx *ctx = qd_ctx_new(1);
    qd_st_set set;
    void *out = NULL;
    const qd_st_tensor *t = open_tensor(ctx, &set, path, name);
    if (t) {
        out = malloc(t->nbytes + 1);
        memcpy(out, t->data, t->nbytes);
        if (nbytes) *nbytes = t->nbytes;
    }
    if (set.n_files || t) qd_st_close(&set);
    qd_ctx_free(ctx);
    return out;
}

double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

double max_abs_diff(const float *a, const float *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= m)) m = d;   /* NaN propagates as a failure */
    }
    return m;
}

double max_abs(const float *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(ref[i]) > m) m = fabs(ref[i]);
    return m;
}

void check(int cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", cond ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (cond) n_pass++; else n_fail++;
}

void check_close(const char *what, const float *got, const float *ref, size_t n,
                 double rel_tol, double abs_frac) {
    if (!got || !ref) { check(0, "%s: missing data", what); return; }
    double r = rel_l2(got, ref, n), m = max_abs_diff(got, ref, n), scale = max_abs(ref, n);
    check(r <= rel_tol && m <= abs_frac * scale,
          "%s: rel_l2 %.3g (tol %.1g), max_abs %.3g (tol %.3g)", what, r, rel_tol, m, abs_frac * scale);
}

int test_summary(void) {
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

qd_ctx *test_ctx_new(int n_threads) {
    qd_ctx *ctx = qd_ctx_new(n_threads);
    if (ctx) qd_set_precision(ctx, QD_PRECISION_FP32);
    return ctx;
}

char *golden_case_params(const qd_model *m, const cJSON *c, qd_gen_params *p) {
    qd_gen_params_default(p);
    p->prompt = qd_json_str(c, "prompt", "");
    p->negative_prompt = qd_json_str(c, "negative_prompt", NULL);
    p->steps = qd_json_int(c, "num_inference_steps", 20);
    p->cfg_scale = (float)qd_json_num(c, "guidance_scale", 7.5);
    p->guidance_rescale = (float)qd_json_num(c, "guidance_rescale", 0);
    p->seed = (uint64_t)qd_json_num(c, "seed", 0);
    p->width = qd_json_int(c, "width", 0);
    p->height = qd_json_int(c, "height", 0);
    p->max_sequence_length = qd_json_int(c, "max_sequence_length", 0);
    if (strcmp(qd_model_family(m), "flux") == 0) {   /* guidance-distilled: guidance_scale is embedded */
        p->guidance = p->cfg_scale;
        p->cfg_scale = -1;
    }
    /* "FlowMatchEulerDiscreteScheduler(shift=3.0)" describes the folder's own scheduler */
    p->scheduler = qd_json_str(c, "scheduler", NULL);
    if (p->scheduler && strchr(p->scheduler, '(')) p->scheduler = NULL;
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(c, "scheduler_kwargs");
    char *opts = kw && cJSON_GetArraySize(kw) ? cJSON_PrintUnformatted(kw) : NULL;
    p->scheduler_options = opts;
    return opts;
}

static char scratch[256];

const char *scratch_make(const char *tag) {
    snprintf(scratch, sizeof scratch, "/tmp/qd_%s_XXXXXX", tag);
    if (!mkdtemp(scratch)) {
        check(0, "create the scratch folder %s", scratch);
        return NULL;
    }
    return scratch;
}

const char *scratch_dir(void) { return scratch; }

const char *scratch_path(const char *name) {
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", scratch, name);
    return b;
}

void scratch_remove(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    if (scratch[0] && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", scratch);
}

void write_text_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

void write_config_with(const char *src, const char *dir, const char *key, const char *value) {
    char path[512];
    FILE *f = fopen(src, "r");
    char buf[8192];
    size_t len = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[len] = 0;
    cJSON *cfg = cJSON_Parse(buf);
    if (key && value) {
        cJSON *v = cJSON_Parse(value);
        if (!cJSON_ReplaceItemInObjectCaseSensitive(cfg, key, v)) cJSON_AddItemToObject(cfg, key, v);
    } else if (key) {
        cJSON_DeleteItemFromObjectCaseSensitive(cfg, key);
    }
    char *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    write_text_file(path, text);
    free(text);
    cJSON_Delete(cfg);
}

void link_fixture(const char *src, const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    if (symlink(src, path) != 0) check(0, "symlink %s", path);
}

void expect_load_fail(qd_ctx *ctx, test_load_fn load, const char *dir, const char *what, qd_status want,
                      const char *needle1, const char *needle2) {
    int cleared = 0;
    qd_status st = load(ctx, dir, &cleared);
    const char *e = qd_last_error(ctx);
    check(st == want && cleared && strstr(e, needle1) && (!needle2 || strstr(e, needle2)), "%s fails (%d): %s",
          what, st, e);
}

void check_config_cases(qd_ctx *ctx, test_load_fn load, const char *base_config, const char *dir,
                        const char *const (*cases)[3], size_t n, qd_status want) {
    for (size_t i = 0; i < n; i++) {
        write_config_with(base_config, dir, cases[i][0], cases[i][1]);
        char what[160];
        snprintf(what, sizeof what, "config %s = %s", cases[i][0], cases[i][1]);
        expect_load_fail(ctx, load, dir, what, want, "config.json", cases[i][2]);
    }
}

int json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *it = arr ? arr->child : NULL; it; it = it->next) {
        if (n >= cap || !cJSON_IsNumber(it)) return -1;
        out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

const char *text_label(const char *s) {
    static char buf[4][48];
    static int slot;
    char *b = buf[slot++ % 4];
    int n = (int)strlen(s);
    if (n > 40) {
        n = 40;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    }
    for (int i = 0; i < n; i++) b[i] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
    b[n] = 0;
    return b;
}

int ids_eq(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = 0;
            if (len) *len = (size_t)n;
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}
