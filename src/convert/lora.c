/* LoRA files -> normalized pairs (key, component, down, up, alpha), then the merge
 * W += factor * up . down through the library GEMM. See lora.h for the conventions. */
#include "convert/lora.h"
#include "io/safetensors.h"
#include "io/safetensors_meta.h"
#include "tensor/gemm.h"
#include "models/params.h"
#include "io/file.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { COMP_ANY, COMP_DENOISER, COMP_TE1, COMP_TE2, COMP_TE3 };
static const char *const comp_names[] = {"any component", "the denoiser", "text_encoder", "text_encoder_2",
                                         "text_encoder_3"};

typedef struct {
    char *key;                  /* normalized weight name */
    const char *base;           /* the file's spelling (points into the down tensor's name copy) */
    int comp, file;
    const qd_st_tensor *down, *up;
    float alpha;
    int64_t rank, applied;
    int planned;                /* qd_lora_set_plan found its weight */
} lora_pair;

struct qd_lora_set {
    qd_st_set *files;
    char **paths;
    int n_files;
    float *scales;
    float dampen;
    lora_pair *pairs;
    int64_t n_pairs;
};

/* ---- names ---- */

/* Prefixes that say which component a name belongs to; stripped before matching.
 * Order matters: longer spellings first. */
static const struct { const char *prefix; int comp; } lora_prefixes[] = {
    {"lora_unet_", COMP_DENOISER},       {"lora_transformer_", COMP_DENOISER},
    {"lora_te1_", COMP_TE1},             {"lora_te2_", COMP_TE2},
    {"lora_te3_", COMP_TE3},             {"lora_te_", COMP_TE1},
    {"lycoris_", COMP_ANY},              {"base_model.model.", COMP_ANY},
    {"model.diffusion_model.", COMP_DENOISER}, {"diffusion_model.", COMP_DENOISER},
    {"unet.", COMP_DENOISER},            {"transformer.", COMP_DENOISER},
    {"text_encoder_2.", COMP_TE2},       {"text_encoder_3.", COMP_TE3},
    {"text_encoder.", COMP_TE1},
};

/* Single-file checkpoint prefixes (model side, component NULL). */
static const struct { const char *prefix; int comp; } ckpt_prefixes[] = {
    {"model.diffusion_model.", COMP_DENOISER},
    {"diffusion_model.", COMP_DENOISER},
    {"cond_stage_model.transformer.", COMP_TE1},
    {"conditioner.embedders.0.transformer.", COMP_TE1},
    {"conditioner.embedders.1.model.", COMP_TE2},
    {"text_encoders.clip_l.transformer.", COMP_TE1},
    {"text_encoders.clip_g.transformer.", COMP_TE2},
    {"text_encoders.t5xxl.transformer.", COMP_TE3},
};

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* '.' -> '_', lower case: kohya's underscore spelling and everyone else's dots meet here. */
static char *normalize(const char *s, size_t n) {
    char *k = malloc(n + 1);
    if (!k) return NULL;
    for (size_t i = 0; i < n; i++) k[i] = s[i] == '.' ? '_' : (char)tolower((unsigned char)s[i]);
    k[n] = 0;
    return k;
}

static int component_of(const char *component) {
    if (!component) return -1;
    if (!strcmp(component, "unet") || !strcmp(component, "transformer")) return COMP_DENOISER;
    if (!strcmp(component, "text_encoder")) return COMP_TE1;
    if (!strcmp(component, "text_encoder_2")) return COMP_TE2;
    if (!strcmp(component, "text_encoder_3")) return COMP_TE3;
    return COMP_ANY;   /* an unknown component matches only untagged pairs */
}

/* The model weight's normalized key and component; NULL key when it is no ".weight". */
static char *model_key(const char *component, const char *name, int *comp) {
    size_t n = strlen(name);
    if (n <= 7 || strcmp(name + n - 7, ".weight") != 0) return NULL;
    n -= 7;
    *comp = component_of(component);
    if (*comp < 0) {
        *comp = COMP_DENOISER;
        for (size_t i = 0; i < sizeof ckpt_prefixes / sizeof ckpt_prefixes[0]; i++)
            if (starts(name, ckpt_prefixes[i].prefix)) {
                *comp = ckpt_prefixes[i].comp;
                size_t pl = strlen(ckpt_prefixes[i].prefix);
                name += pl;
                n -= pl;
                break;
            }
    }
    return normalize(name, n);
}

/* ---- opening ---- */

typedef struct { const char *suffix; int up; } lora_suffix;
static const lora_suffix suffixes[] = {
    {".lora_down.weight", 0}, {".lora_up.weight", 1},
    {".lora.down.weight", 0}, {".lora.up.weight", 1},
    {".lora_A.weight", 0},    {".lora_B.weight", 1},
    {"_lora.down.weight", 0}, {"_lora.up.weight", 1},   /* old attention processors: to_q_lora.down */
};

static int cmp_pair(const void *a, const void *b) {
    const lora_pair *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    return x->file - y->file;
}

static int has_suffix(const char *s, size_t n, const char *suf) {
    size_t m = strlen(suf);
    return n >= m && memcmp(s + n - m, suf, m) == 0;
}

/* Read the pairs of file f into set->pairs. */
static qd_status open_file(qd_ctx *ctx, qd_lora_set *set, int f, int64_t *cap) {
    const char *path = set->paths[f];
    qd_st_set *st = &set->files[f];
    cJSON *meta = NULL;
    QD_TRY(qd_st_read_metadata(ctx, path, &meta));
    qd_status status = QD_OK;
    int64_t found = 0, ignored = 0;
    for (int64_t i = 0; i < st->n_tensors && status == QD_OK; i++) {
        const qd_st_tensor *t = &st->tensors[i];
        const char *name = t->name;
        size_t n = strlen(name);
        if (strstr(name, "hada_w") || strstr(name, "lokr_w") || strstr(name, "dora_scale") || strstr(name, "lora_mid")) {
            status = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: tensor '%s': LoHa, LoKr, DoRA and Tucker (lora_mid) "
                             "adapters are not supported; only plain LoRA (down/up pairs)", path, name);
            break;
        }
        const lora_suffix *sx = NULL;
        for (size_t k = 0; k < sizeof suffixes / sizeof suffixes[0] && !sx; k++)
            if (has_suffix(name, n, suffixes[k].suffix)) sx = &suffixes[k];
        if (!sx) {
            if (!has_suffix(name, n, ".alpha")) ignored++;
            continue;
        }
        if (sx->up) continue;   /* found from its down half */
        found++;
        size_t bl = n - strlen(sx->suffix);
        /* the up half: same base, the matching "up" suffix */
        char upname[1280];
        if (bl + 32 >= sizeof upname) { ignored++; continue; }
        memcpy(upname, name, bl);
        snprintf(upname + bl, sizeof upname - bl, "%s", (sx + 1)->suffix);
        const qd_st_tensor *up = qd_st_find(st, upname);
        if (!up) {
            status = qd_fail(ctx, QD_ERR_FORMAT, "%s: '%s' has no matching '%s'", path, name, upname);
            break;
        }
        /* shapes: down [r, in] or [r, in, kh, kw]; up [out, r] or [out, r, 1, 1] */
        int dtype_ok = 1;
        const qd_st_tensor *tt[2] = {t, up};
        for (int j = 0; j < 2; j++)
            if (tt[j]->dtype != QD_F32 && tt[j]->dtype != QD_F16 && tt[j]->dtype != QD_BF16 && tt[j]->dtype != QD_F64)
                dtype_ok = 0;
        int64_t r = t->ndim >= 1 ? t->shape[0] : 0;
        int up_ok = (up->ndim == 2 || (up->ndim == 4 && up->shape[2] == 1 && up->shape[3] == 1)) && up->shape[1] == r;
        if (!dtype_ok || !(t->ndim == 2 || t->ndim == 4) || r <= 0 || !up_ok || t->numel == 0 || up->numel == 0) {
            status = qd_fail(ctx, QD_ERR_FORMAT, "%s: LoRA pair '%s' / '%s': expected float down [r, in(, kh, kw)] and "
                             "up [out, r(, 1, 1)] with r > 0", path, name, upname);
            break;
        }
        /* component and normalized key from the base */
        const char *b = name;
        size_t blen = bl;
        int comp = COMP_ANY;
        for (int pass = 0; pass < 2; pass++)   /* "base_model.model.unet.x": two prefixes */
            for (size_t k = 0; k < sizeof lora_prefixes / sizeof lora_prefixes[0]; k++)
                if (blen > strlen(lora_prefixes[k].prefix) && starts(b, lora_prefixes[k].prefix)) {
                    if (lora_prefixes[k].comp != COMP_ANY) comp = lora_prefixes[k].comp;
                    b += strlen(lora_prefixes[k].prefix);
                    blen -= strlen(lora_prefixes[k].prefix);
                    break;
                }
        /* old attention processors: "...attn1.processor.to_q" -> "...attn1.to_q" */
        char tmp[1280];
        memcpy(tmp, b, blen);
        tmp[blen] = 0;
        char *proc = strstr(tmp, ".processor.");
        if (proc) memmove(proc, proc + 10, strlen(proc + 10) + 1);
        /* alpha: tensor, else the header key the fork reads, else the rank */
        float alpha = (float)r;
        char akey[1300];
        memcpy(akey, name, bl);
        snprintf(akey + bl, sizeof akey - bl, ".alpha");
        const qd_st_tensor *at = qd_st_find(st, akey);
        if (at) {
            if (at->numel != 1 || at->dtype == QD_BOOL) {
                status = qd_fail(ctx, QD_ERR_FORMAT, "%s: '%s' must hold one number", path, akey);
                break;
            }
            qd_st_to_f32(at, 0, 1, &alpha);
        } else if (meta) {
            for (size_t k = 0; k < bl; k++) akey[k] = name[k] == '.' ? '_' : name[k];
            snprintf(akey + bl, sizeof akey - bl, "_alpha");
            const cJSON *ma = cJSON_GetObjectItemCaseSensitive(meta, akey);
            if (cJSON_IsString(ma)) alpha = strtof(ma->valuestring, NULL);
            else if (cJSON_IsNumber(ma)) alpha = (float)ma->valuedouble;
        }
        if (!isfinite(alpha)) {
            status = qd_fail(ctx, QD_ERR_FORMAT, "%s: alpha of '%.*s' is not a finite number", path, (int)bl, name);
            break;
        }
        if (set->n_pairs == *cap) {
            int64_t nc = *cap ? *cap * 2 : 256;
            lora_pair *g = realloc(set->pairs, sizeof *g * (size_t)nc);
            if (!g) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
            set->pairs = g;
            *cap = nc;
        }
        lora_pair *p = &set->pairs[set->n_pairs];
        memset(p, 0, sizeof *p);
        if (!(p->key = normalize(tmp, strlen(tmp)))) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        set->n_pairs++;
        p->base = name;
        p->comp = comp;
        p->file = f;
        p->down = t;
        p->up = up;
        p->alpha = alpha;
        p->rank = r;
    }
    cJSON_Delete(meta);
    if (status == QD_OK && found == 0)
        status = qd_fail(ctx, QD_ERR_FORMAT, "%s: no LoRA pairs found (expected keys ending in .lora_down.weight/"
                         ".lora_up.weight, .lora.down.weight/.lora.up.weight or .lora_A.weight/.lora_B.weight)", path);
    if (status == QD_OK && ignored)
        qd_info(ctx, "%s: %lld tensors are not LoRA down/up/alpha and were ignored", path, (long long)ignored);
    return status;
}

qd_status qd_lora_set_open(qd_ctx *ctx, const char *const *paths, const float *scales, int n, float dampen,
                           qd_lora_set **out) {
    *out = NULL;
    if (n <= 0 || !paths) return qd_fail(ctx, QD_ERR_ARG, "LoRA merge: no files given");
    if (!(dampen > 0 && dampen <= 1)) return qd_fail(ctx, QD_ERR_ARG, "LoRA dampening %g is not in (0, 1]", (double)dampen);
    for (int i = 0; scales && i < n; i++)
        if (!isfinite(scales[i])) return qd_fail(ctx, QD_ERR_ARG, "%s: LoRA scale is not a finite number", paths[i]);
    qd_lora_set *s = calloc(1, sizeof *s);
    if (!s || !(s->files = calloc((size_t)n, sizeof *s->files)) || !(s->paths = calloc((size_t)n, sizeof *s->paths)) ||
        !(s->scales = calloc((size_t)n, sizeof *s->scales))) {
        if (s) { free(s->files); free(s->paths); free(s); }
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    s->dampen = dampen;
    qd_status st = QD_OK;
    int64_t cap = 0;
    for (int i = 0; i < n && st == QD_OK; i++) {
        s->scales[i] = scales ? scales[i] : 1.0f;
        if (!(s->paths[i] = strdup(paths[i]))) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        st = qd_st_open(ctx, paths[i], &s->files[i]);
        if (st != QD_OK) break;
        s->n_files = i + 1;
        st = open_file(ctx, s, i, &cap);
    }
    if (st != QD_OK) {
        /* files[] past n_files were never opened (or failed to); their paths are freed here */
        for (int i = s->n_files; i < n; i++) { free(s->paths[i]); s->paths[i] = NULL; }
        qd_lora_set_free(s);
        return st;
    }
    qsort(s->pairs, (size_t)s->n_pairs, sizeof *s->pairs, cmp_pair);
    *out = s;
    return QD_OK;
}

void qd_lora_set_free(qd_lora_set *s) {
    if (!s) return;
    for (int64_t i = 0; i < s->n_pairs; i++) free(s->pairs[i].key);
    for (int i = 0; i < s->n_files; i++) { qd_st_close(&s->files[i]); free(s->paths[i]); }
    free(s->pairs);
    free(s->files);
    free(s->paths);
    free(s->scales);
    free(s);
}

/* ---- lookup and merge ---- */

/* First pair with this key, or -1. */
static int64_t first_pair(const qd_lora_set *s, const char *key) {
    int64_t lo = 0, hi = s->n_pairs;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (strcmp(s->pairs[mid].key, key) < 0) lo = mid + 1; else hi = mid;
    }
    return lo < s->n_pairs && strcmp(s->pairs[lo].key, key) == 0 ? lo : -1;
}

static int comp_matches(int pair_comp, int model_comp) { return pair_comp == COMP_ANY || pair_comp == model_comp; }

int qd_lora_touches(const qd_lora_set *s, const char *component, const char *tensor_name) {
    int comp;
    char *key = model_key(component, tensor_name, &comp);
    if (!key) return 0;
    int count = 0;
    int64_t i = first_pair(s, key);
    for (; i >= 0 && i < s->n_pairs && !strcmp(s->pairs[i].key, key); i++) count += comp_matches(s->pairs[i].comp, comp);
    free(key);
    return count;
}

int qd_lora_apply(qd_ctx *ctx, qd_lora_set *s, const char *component, const char *tensor_name,
                  float *w, const int64_t *shape, int ndim) {
    int comp;
    char *key = model_key(component, tensor_name, &comp);
    if (!key) return 0;
    int64_t first = first_pair(s, key);
    free(key);
    if (first < 0) return 0;
    int applied = 0;
    for (int64_t i = first; i < s->n_pairs && !strcmp(s->pairs[i].key, s->pairs[first].key); i++) {
        lora_pair *p = &s->pairs[i];
        if (!comp_matches(p->comp, comp)) continue;
        int64_t out = ndim >= 1 ? shape[0] : 0, rest = 1;
        for (int d = 1; d < ndim; d++) rest *= shape[d];
        int64_t r = p->rank, dcols = p->down->numel / r;
        if (ndim < 2 || p->up->shape[0] != out || dcols != rest) {
            char ws[96];
            int len = snprintf(ws, sizeof ws, "[");
            for (int d = 0; d < ndim && len < (int)sizeof ws; d++) len += snprintf(ws + len, sizeof ws - (size_t)len, d ? ",%lld" : "%lld", (long long)shape[d]);
            if (len < (int)sizeof ws) snprintf(ws + len, sizeof ws - (size_t)len, "]");
            qd_fail(ctx, QD_ERR_FORMAT, "%s: LoRA '%s' (%s) does not fit weight '%s' %s: up has %lld outputs, down "
                    "%lld inputs", s->paths[p->file], p->base, comp_names[p->comp], tensor_name, ws,
                    (long long)p->up->shape[0], (long long)dcols);
            return -1;
        }
        float *up = qd_malloc(ctx, sizeof(float) * (size_t)(out * r));
        float *down = qd_malloc(ctx, sizeof(float) * (size_t)(r * rest));
        if (!up || !down) { free(up); free(down); return -1; }
        qd_st_to_f32(p->up, 0, out * r, up);
        qd_st_to_f32(p->down, 0, r * rest, down);
        float factor = s->scales[p->file] * powf(s->dampen, (float)applied) * p->alpha / (float)r;
        /* w[o, j] += factor * sum_k up[o, k] * down[k, j] */
        qd_gemm(ctx, out, rest, r, qd_rows(up, r), qd_cols(down, rest), w, rest, factor, 1.0f, NULL, NULL);
        free(up);
        free(down);
        if (qd_op_status(ctx) != QD_OK) return -1;
        p->applied++;
        applied++;
    }
    return applied;
}

qd_status qd_lora_set_plan(qd_ctx *ctx, qd_lora_set *s, const char *weights, const char *component) {
    char path[4096];
    if (qd_dir_exists(weights)) {
        if (!qd_params_weights_path(weights, path, sizeof path))
            return qd_fail(ctx, QD_ERR_IO, "%s: no weights file to match LoRAs against", weights);
    } else {
        snprintf(path, sizeof path, "%s", weights);
    }
    qd_st_set st;
    QD_TRY(qd_st_open(ctx, path, &st));
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const qd_st_tensor *t = &st.tensors[i];
        if (t->ndim < 2 || !(t->dtype == QD_F32 || t->dtype == QD_F16 || t->dtype == QD_BF16 || t->dtype == QD_F64)) continue;
        qd_lora_set_plan_tensor(s, component, t->name);
    }
    qd_st_close(&st);
    return QD_OK;
}

void qd_lora_set_plan_tensor(qd_lora_set *s, const char *component, const char *tensor_name) {
    int comp;
    char *key = model_key(component, tensor_name, &comp);
    if (!key) return;
    for (int64_t j = first_pair(s, key); j >= 0 && j < s->n_pairs && !strcmp(s->pairs[j].key, key); j++)
        if (comp_matches(s->pairs[j].comp, comp)) s->pairs[j].planned = 1;
    free(key);
}

void qd_lora_set_report(const qd_lora_set *s, int64_t *matched, int64_t *total) {
    int64_t m = 0;
    for (int64_t i = 0; i < s->n_pairs; i++) m += s->pairs[i].applied > 0;
    if (matched) *matched = m;
    if (total) *total = s->n_pairs;
}

qd_status qd_lora_set_check(qd_ctx *ctx, const qd_lora_set *s) {
    for (int f = 0; f < s->n_files; f++) {
        int64_t m = 0, n = 0;
        const lora_pair *miss = NULL;
        for (int64_t i = 0; i < s->n_pairs; i++) {
            if (s->pairs[i].file != f) continue;
            n++;
            if (s->pairs[i].applied || s->pairs[i].planned) m++;
            else if (!miss) miss = &s->pairs[i];
        }
        if (m == 0)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: 0 of its %lld LoRA layers matched a weight of the model "
                           "(first: '%s' for %s); wrong model or naming convention?", s->paths[f], (long long)n,
                           miss ? miss->base : "?", miss ? comp_names[miss->comp] : "?");
        if (m < n)
            qd_warn(ctx, "%s: %lld of %lld LoRA layers matched a weight; not merged e.g. '%s' (%s)", s->paths[f],
                    (long long)m, (long long)n, miss->base, comp_names[miss->comp]);
    }
    return QD_OK;
}
