/* Single-file checkpoints as diffusers components (see single_file.h): family
 * recognition, dispatch of every key to its component's key map, the converted
 * tensor sets, component configs, and completing an output folder. */
#include "convert/single_file_map.h"
#include "convert/fs_tree.h"
#include "io/file.h"
#include "io/json.h"
#include "io/safetensors_stream.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

typedef struct {
    void *p;
    size_t len;
} sf_map;

struct qd_single_file {
    char path[4096];
    char config_from[4096];     /* "" when none */
    qd_sf_family fam;
    qd_st_set file;
    int file_open;
    qd_sf_component comps[QD_SF_MAX_COMPONENTS];
    int64_t cap[QD_SF_MAX_COMPONENTS];
    int n_comps;
    char **names;               /* converted names (owned) */
    int64_t n_names, cap_names;
    sf_map *maps;               /* rebuilt tensors (own pages) */
    int n_maps, cap_maps;
};

struct sf_build {
    qd_ctx *ctx;
    qd_single_file *sf;
    int unet_layers, vae_levels;
    char *name_out;             /* name-only mode (qd_sf_ldm_unet_name): the mapped name goes here */
    size_t name_size;
};

int qd_sf_is_file(const char *path) {
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ---- builder ---- */

qd_ctx *sf_ctx(sf_build *b) { return b->ctx; }
const char *sf_file(sf_build *b) { return b->sf->path; }
const qd_st_tensor *sf_src(sf_build *b, const char *key) { return qd_st_find(&b->sf->file, key); }
void sf_ldm_set_layout(sf_build *b, int unet_layers_per_block, int vae_levels) {
    b->unet_layers = unet_layers_per_block;
    b->vae_levels = vae_levels;
}
int sf_ldm_unet_layers(sf_build *b) { return b->unet_layers; }
int sf_ldm_vae_levels(sf_build *b) { return b->vae_levels; }

int sf_comp(sf_build *b, const char *name, const char *cls, const char *weights_name) {
    qd_single_file *sf = b->sf;
    for (int i = 0; i < sf->n_comps; i++)
        if (!strcmp(sf->comps[i].name, name)) return i;
    if (sf->n_comps == QD_SF_MAX_COMPONENTS) return -1;
    qd_sf_component *c = &sf->comps[sf->n_comps];
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->cls, sizeof c->cls, "%s", cls);
    snprintf(c->weights_name, sizeof c->weights_name, "%s", weights_name);
    return sf->n_comps++;
}

static char *keep_name(sf_build *b, const char *name) {
    qd_single_file *sf = b->sf;
    if (sf->n_names == sf->cap_names) {
        int64_t cap = sf->cap_names ? 2 * sf->cap_names : 1024;
        char **n = realloc(sf->names, sizeof *n * (size_t)cap);
        if (!n) return NULL;
        sf->names = n;
        sf->cap_names = cap;
    }
    char *s = strdup(name);
    if (s) sf->names[sf->n_names++] = s;
    return s;
}

/* A page-aligned buffer of its own for a rebuilt tensor. */
static void *new_map(sf_build *b, size_t len) {
    qd_single_file *sf = b->sf;
    if (sf->n_maps == sf->cap_maps) {
        int cap = sf->cap_maps ? 2 * sf->cap_maps : 16;
        sf_map *m = realloc(sf->maps, sizeof *m * (size_t)cap);
        if (!m) return NULL;
        sf->maps = m;
        sf->cap_maps = cap;
    }
    if (!len) len = 1;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    sf->maps[sf->n_maps].p = p;
    sf->maps[sf->n_maps].len = len;
    sf->n_maps++;
    return p;
}

static int add_tensor(sf_build *b, int comp, const qd_st_tensor *t) {
    qd_single_file *sf = b->sf;
    qd_sf_component *c = &sf->comps[comp];
    if (c->view.n_tensors == sf->cap[comp]) {
        int64_t cap = sf->cap[comp] ? 2 * sf->cap[comp] : 256;
        qd_st_tensor *n = realloc(c->view.tensors, sizeof *n * (size_t)cap);
        if (!n) { qd_fail(b->ctx, QD_ERR_NOMEM, "out of memory"); return SF_FAILED; }
        c->view.tensors = n;
        sf->cap[comp] = cap;
    }
    c->view.tensors[c->view.n_tensors++] = *t;
    return SF_MAPPED;
}

int sf_add(sf_build *b, int comp, const char *name, const qd_st_tensor *src, int64_t row0, int64_t rows, int op) {
    if (b->name_out) {   /* name-only: no tensor, no file */
        int n = snprintf(b->name_out, b->name_size, "%s", name);
        return n > 0 && (size_t)n < b->name_size ? SF_MAPPED : SF_UNKNOWN;
    }
    qd_ctx *ctx = b->ctx;
    if (comp < 0) { qd_fail(ctx, QD_ERR_FORMAT, "%s: too many components", b->sf->path); return SF_FAILED; }
    qd_st_tensor t = *src;
    size_t es = qd_dtype_size(src->dtype);
    if (rows >= 0) {
        /* a row slice: rows [row0, row0 + rows) of dim 0 */
        if (src->ndim < 1 || row0 < 0 || rows < 0 || row0 > src->shape[0] || rows > src->shape[0] - row0) {
            qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s': rows %lld..%lld are outside its %lld rows", b->sf->path, src->name,
                    (long long)row0, (long long)(row0 + rows), src->ndim ? (long long)src->shape[0] : 0LL);
            return SF_FAILED;
        }
        int64_t row_elems = src->shape[0] ? src->numel / src->shape[0] : 0;
        t.shape[0] = rows;
        t.numel = rows * row_elems;
        t.nbytes = (size_t)t.numel * es;
        t.data = (const char *)src->data + (size_t)(row0 * row_elems) * es;
    }
    if (op == SF_LINEAR) {
        if (t.ndim == 4 && t.shape[2] == 1 && t.shape[3] == 1) t.ndim = 2;
        else if (t.ndim != 2) {
            qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' is not a 1x1 convolution or Linear weight (%d dims)", b->sf->path, src->name, t.ndim);
            return SF_FAILED;
        }
    } else if (op == SF_SWAP || op == SF_TRANSPOSE) {
        if ((op == SF_SWAP && (t.ndim < 1 || t.shape[0] % 2)) || (op == SF_TRANSPOSE && t.ndim != 2)) {
            qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' has the wrong shape for its conversion (%s)", b->sf->path, src->name,
                    op == SF_SWAP ? "an even number of rows" : "2 dimensions");
            return SF_FAILED;
        }
        char *dst = new_map(b, t.nbytes);
        if (!dst) { qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); return SF_FAILED; }
        const char *s = t.data;
        if (op == SF_SWAP) {
            size_t half = t.nbytes / 2;
            memcpy(dst, s + half, half);
            memcpy(dst + half, s, half);
        } else {
            int64_t a = t.shape[0], c = t.shape[1];
            for (int64_t i = 0; i < a; i++)
                for (int64_t j = 0; j < c; j++) memcpy(dst + (size_t)(j * a + i) * es, s + (size_t)(i * c + j) * es, es);
            t.shape[0] = c;
            t.shape[1] = a;
        }
        t.data = dst;
    }
    t.name = keep_name(b, name);
    if (!t.name) { qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); return SF_FAILED; }
    return add_tensor(b, comp, &t);
}

int sf_add_fmt(sf_build *b, int comp, const qd_st_tensor *src, int op, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) return SF_UNKNOWN;
    return sf_add(b, comp, name, src, 0, -1, op);
}

int sf_split(sf_build *b, int comp, const char *const *names, const int64_t *rows, int n, const qd_st_tensor *src) {
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        int r = sf_add(b, comp, names[i], src, at, rows[i], SF_VIEW);
        if (r != SF_MAPPED) return r;
        at += rows[i];
    }
    if (src->ndim < 1 || at != src->shape[0]) {
        qd_fail(b->ctx, QD_ERR_FORMAT, "%s: tensor '%s': its parts do not add up to its rows", b->sf->path, src->name);
        return SF_FAILED;
    }
    return SF_MAPPED;
}

int qd_sf_ldm_unet_name(int layers_per_block, const char *ldm_key, char *out, size_t size) {
    if (!out || size == 0) return 0;
    out[0] = 0;
    sf_build b = {0};
    b.unet_layers = layers_per_block;
    b.name_out = out;
    b.name_size = size;
    qd_st_tensor none = {0};
    if (sf_map_ldm_unet(&b, 0, "", ldm_key, &none) == SF_MAPPED && out[0]) return 1;
    out[0] = 0;
    return 0;
}

/* ---- family and layout ---- */

/* LDM buffers a checkpoint may carry that have no place in diffusers (the DDPM
 * schedule, EMA bookkeeping). */
static int ldm_dropped(const char *k) {
    static const char *names[] = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                                  "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                                  "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                                  "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                                  "logvar", "model_ema.decay", "model_ema.num_updates", NULL};
    for (int i = 0; names[i]; i++)
        if (!strcmp(k, names[i])) return 1;
    return 0;
}

static int has(const qd_single_file *sf, const char *k) { return qd_st_find(&sf->file, k) != NULL; }

static int has_fmt(const qd_single_file *sf, const char *fmt, const char *p, long i) {
    char k[600];
    snprintf(k, sizeof k, fmt, p, i);
    return has(sf, k);
}

static const char *diffusers_w = "diffusion_pytorch_model.safetensors";
static const char *transformers_w = "model.safetensors";

/* The first few keys, for an error about a file nobody recognises. */
static void first_keys(const qd_single_file *sf, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = 0;
    for (int64_t i = 0; i < sf->file.n_tensors && i < 5 && len + 8 < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s'%s'", i ? ", " : "", sf->file.tensors[i].name);
}

static qd_status map_all(sf_build *b) {
    qd_single_file *sf = b->sf;
    qd_ctx *ctx = b->ctx;
    const char *dp = NULL;      /* denoiser prefix */
    int is_flux = 0, is_ldm = 0, is_sd3 = 0;
    static const char *prefixes[] = {"model.diffusion_model.", ""};
    for (int i = 0; i < 2 && !dp; i++) {
        char k[128];
        snprintf(k, sizeof k, "%sdouble_blocks.0.img_attn.qkv.weight", prefixes[i]);
        if (has(sf, k)) { dp = prefixes[i]; is_flux = 1; break; }
        snprintf(k, sizeof k, "%sjoint_blocks.0.x_block.attn.qkv.weight", prefixes[i]);
        if (has(sf, k)) { dp = prefixes[i]; is_sd3 = 1; break; }
        snprintf(k, sizeof k, "%sinput_blocks.0.0.weight", prefixes[i]);
        if (has(sf, k)) { dp = prefixes[i]; is_ldm = 1; }
    }
    char keys[1024];
    if (!dp) {
        first_keys(sf, keys, sizeof keys);
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: not a checkpoint of a family qdiff converts (SD1.x, SDXL, FLUX.1, SD3: no "
                       "input_blocks.0.0.weight, double_blocks.0.img_attn.qkv.weight or joint_blocks.0.x_block.attn.qkv.weight, "
                       "with or without model.diffusion_model.); its first tensors: %s", sf->path, keys);
    }
    if (is_ldm) {
        char k[600];
        snprintf(k, sizeof k, "%slabel_emb.0.0.weight", dp);
        int xl = has(sf, k) || has(sf, "conditioner.embedders.1.model.ln_final.weight");
        snprintf(k, sizeof k, "%sinput_blocks.1.1.proj_in.weight", dp);
        const qd_st_tensor *pi = qd_st_find(&sf->file, k);
        if (has(sf, "cond_stage_model.model.ln_final.weight") || (!xl && pi && pi->ndim == 2))
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: an SD2.x checkpoint (OpenCLIP text encoder / linear projections); "
                           "qdiff converts SD1.x, SDXL, FLUX.1 and SD3 single files (use a diffusers folder for SD2.x)", sf->path);
        sf->fam = xl ? QD_SF_SDXL : QD_SF_SD1;
        int L = 0;
        for (long i = 1; i < 10000; i++) {
            if (has_fmt(sf, "%sinput_blocks.%ld.0.op.weight", dp, i)) { L = (int)i - 1; break; }
            if (!has_fmt(sf, "%sinput_blocks.%ld.0.in_layers.0.weight", dp, i)) { L = (int)i - 1; break; }
        }
        int levels = 0;
        const char *vp = has(sf, "first_stage_model.decoder.conv_in.weight") ? "first_stage_model." : "vae.";
        while (levels < 1000 && has_fmt(sf, "%sdecoder.up.%ld.block.0.conv1.weight", vp, levels)) levels++;
        sf_ldm_set_layout(b, L, levels);
    } else if (is_sd3) {
        sf->fam = QD_SF_SD3;
        int levels = 0;
        while (levels < 1000 && has_fmt(sf, "%sdecoder.up.%ld.block.0.conv1.weight", "first_stage_model.", levels)) levels++;
        sf_ldm_set_layout(b, 0, levels);
    } else {
        sf->fam = QD_SF_FLUX;
        int levels = 0;
        while (levels < 1000 && has_fmt(sf, "%sdecoder.up.%ld.block.0.conv1.weight", "vae.", levels)) levels++;
        sf_ldm_set_layout(b, 0, levels);
    }
    /* component prefixes, most specific first; the denoiser's last ("" catches all) */
    typedef struct { const char *prefix; const char *comp, *cls, *w; int kind; } route;
    route ldm_flux[] = {
        {"first_stage_model.", "vae", "AutoencoderKL", diffusers_w, 1},
        {"vae.", "vae", "AutoencoderKL", diffusers_w, 1},
        {"cond_stage_model.transformer.", "text_encoder", "CLIPTextModel", transformers_w, 2},
        {"conditioner.embedders.0.transformer.", "text_encoder", "CLIPTextModel", transformers_w, 2},
        {"conditioner.embedders.1.model.", "text_encoder_2", "CLIPTextModelWithProjection", transformers_w, 3},
        {"text_encoders.clip_l.transformer.", "text_encoder", "CLIPTextModel", transformers_w, 2},
        {"text_encoders.t5xxl.transformer.", "text_encoder_2", "T5EncoderModel", transformers_w, 4},
        {dp, is_flux ? "transformer" : "unet", is_flux ? "FluxTransformer2DModel" : "UNet2DConditionModel", diffusers_w, 0},
    };
    /* SD3 (Stability's and ComfyUI's full checkpoints): both CLIPs with projections, T5 third */
    route sd3[] = {
        {"first_stage_model.", "vae", "AutoencoderKL", diffusers_w, 1},
        {"text_encoders.clip_l.transformer.", "text_encoder", "CLIPTextModelWithProjection", transformers_w, 2},
        {"text_encoders.clip_g.transformer.", "text_encoder_2", "CLIPTextModelWithProjection", transformers_w, 2},
        {"text_encoders.t5xxl.transformer.", "text_encoder_3", "T5EncoderModel", transformers_w, 4},
        {dp, "transformer", "SD3Transformer2DModel", diffusers_w, 0},
    };
    const route *routes = is_sd3 ? sd3 : ldm_flux;
    int n_routes = is_sd3 ? (int)(sizeof sd3 / sizeof *sd3) : (int)(sizeof ldm_flux / sizeof *ldm_flux);
    int64_t unmapped = 0;
    size_t ulen = 0;
    keys[0] = 0;
    /* the denoiser first, so its component comes first */
    sf_comp(b, routes[n_routes - 1].comp, routes[n_routes - 1].cls, routes[n_routes - 1].w);
    for (int64_t i = 0; i < sf->file.n_tensors; i++) {
        const qd_st_tensor *t = &sf->file.tensors[i];
        if (ldm_dropped(t->name) || sf_after(t->name, "model_ema.")) continue;
        int r = SF_UNKNOWN;
        for (int k = 0; k < n_routes; k++) {
            const char *key = sf_after(t->name, routes[k].prefix);
            if (!key) continue;
            int c = sf_comp(b, routes[k].comp, routes[k].cls, routes[k].w);
            switch (routes[k].kind) {
            case 0: r = is_sd3 ? sf_map_sd3(b, c, dp, key, t) : is_flux ? sf_map_flux(b, c, dp, key, t) : sf_map_ldm_unet(b, c, dp, key, t); break;
            case 1: r = sf_map_ldm_vae(b, c, routes[k].prefix, key, t); break;
            case 2: r = sf_map_clip(b, c, key, t); break;
            case 3: r = sf_map_open_clip(b, c, routes[k].prefix, key, t); break;
            default: r = sf_map_t5(b, c, key, t); break;
            }
            break;
        }
        if (r == SF_FAILED) return QD_ERR_FORMAT;
        if (r == SF_UNKNOWN) {
            if (unmapped < 5 && ulen + 8 < sizeof keys) ulen += (size_t)snprintf(keys + ulen, sizeof keys - ulen, "%s'%s'", unmapped ? ", " : "", t->name);
            unmapped++;
        }
    }
    if (unmapped)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: %lld tensor%s of this %s checkpoint ha%s no diffusers name qdiff knows: %s%s",
                       sf->path, (long long)unmapped, unmapped == 1 ? "" : "s", qd_sf_family_name(sf), unmapped == 1 ? "s" : "ve", keys,
                       unmapped > 5 ? ", ..." : "");
    if (is_flux) QD_TRY(sf_check_flux(b, dp));
    if (is_sd3) QD_TRY(sf_check_sd3(b, dp));
    return QD_OK;
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const qd_st_tensor *)a)->name, ((const qd_st_tensor *)b)->name);
}

static qd_status finish_components(sf_build *b) {
    qd_single_file *sf = b->sf;
    for (int i = 0; i < sf->n_comps; i++) {
        qd_sf_component *c = &sf->comps[i];
        if (!c->view.n_tensors)
            return qd_fail(b->ctx, QD_ERR_FORMAT, "%s: no tensors of the %s (%s) in this %s checkpoint", sf->path, c->name, c->cls,
                           qd_sf_family_name(sf));
        qsort(c->view.tensors, (size_t)c->view.n_tensors, sizeof *c->view.tensors, cmp_tensor);
        /* messages about the view name the checkpoint (borrowed: the view is never closed) */
        c->view.files = sf->file.files;
        c->view.n_files = sf->file.n_files;
        for (int64_t k = 1; k < c->view.n_tensors; k++)
            if (!strcmp(c->view.tensors[k - 1].name, c->view.tensors[k].name))
                return qd_fail(b->ctx, QD_ERR_FORMAT, "%s: two tensors become %s '%s'", sf->path, c->name, c->view.tensors[k].name);
    }
    return QD_OK;
}

/* ---- configs ---- */

static qd_status load_configs(qd_ctx *ctx, qd_single_file *sf) {
    if (sf->config_from[0]) {
        char idx[4200];
        qd_path_join(idx, sizeof idx, sf->config_from, "model_index.json");
        if (!qd_dir_exists(sf->config_from) || !qd_file_exists(idx))
            return qd_fail(ctx, QD_ERR_ARG, "%s: --config-from needs a diffusers folder (with model_index.json)", sf->config_from);
    }
    if (sf->config_from[0]) {
        /* the folder must be a pipeline of the checkpoint's family */
        static const char *want[] = {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline"};
        char idx[4200];
        qd_path_join(idx, sizeof idx, sf->config_from, "model_index.json");
        cJSON *mi;
        QD_TRY(qd_json_load(ctx, idx, &mi));
        const char *cls = qd_json_str(mi, "_class_name", "");
        int ok = !strcmp(cls, want[sf->fam]);
        char got[128];
        snprintf(got, sizeof got, "%s", cls);
        cJSON_Delete(mi);
        if (!ok)
            return qd_fail(ctx, QD_ERR_ARG, "%s: --config-from is a %s folder, the checkpoint %s is %s (%s)", sf->config_from,
                           got[0] ? got : "(no _class_name)", sf->path, qd_sf_family_name(sf), want[sf->fam]);
    }
    for (int i = 0; i < sf->n_comps; i++) {
        qd_sf_component *c = &sf->comps[i];
        if (!sf->config_from[0]) {
            c->config = sf_infer_config(ctx, sf, c);
            c->config_inferred = c->config != NULL;
            if (!c->config) qd_warn(ctx, "%s: %s", sf->path, ctx->err);
            continue;
        }
        char p[4300];
        snprintf(p, sizeof p, "%s/%s", sf->config_from, c->name);
        if (!qd_dir_exists(p))
            return qd_fail(ctx, QD_ERR_ARG, "%s: --config-from folder has no '%s' component (the checkpoint %s is %s)", sf->config_from,
                           c->name, sf->path, qd_sf_family_name(sf));
        snprintf(p, sizeof p, "%s/%s/config.json", sf->config_from, c->name);
        cJSON *root;
        QD_TRY(qd_json_load(ctx, p, &root));
        const char *cls = qd_json_str(root, "_class_name", NULL);
        const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
        if (!cls && cJSON_IsArray(arch) && cJSON_IsString(arch->child)) cls = arch->child->valuestring;
        int ok = cls && !strcmp(cls, c->cls);
        int quantized = cJSON_GetObjectItemCaseSensitive(root, "quantization_config") != NULL;
        cJSON_Delete(root);
        if (!ok) return qd_fail(ctx, QD_ERR_ARG, "%s: is a %s config, the checkpoint's %s is a %s", p, cls ? cls : "(no class)", c->name, c->cls);
        if (quantized) return qd_fail(ctx, QD_ERR_ARG, "%s: a quantized component's config; --config-from needs an unquantized folder", p);
        size_t len;
        QD_TRY(qd_read_file(ctx, p, &c->config, &len));
    }
    return QD_OK;
}

/* ---- open / close / queries ---- */

qd_status qd_sf_open(qd_ctx *ctx, const char *path, const char *config_from, qd_single_file **out) {
    *out = NULL;
    qd_single_file *sf = qd_calloc(ctx, 1, sizeof *sf);
    if (!sf) return QD_ERR_NOMEM;
    if (strlen(path) >= sizeof sf->path || (config_from && strlen(config_from) >= sizeof sf->config_from)) {
        free(sf);
        return qd_fail(ctx, QD_ERR_ARG, "%s: path too long", path);
    }
    snprintf(sf->path, sizeof sf->path, "%s", path);
    if (config_from) snprintf(sf->config_from, sizeof sf->config_from, "%s", config_from);
    qd_status st = qd_st_open(ctx, path, &sf->file);
    sf->file_open = st == QD_OK;
    sf_build b = {ctx, sf, 0, 0, NULL, 0};
    if (st == QD_OK) st = map_all(&b);
    if (st == QD_OK) st = finish_components(&b);
    if (st == QD_OK) st = load_configs(ctx, sf);
    if (st != QD_OK) { qd_sf_close(sf); return st; }
    *out = sf;
    return QD_OK;
}

void qd_sf_close(qd_single_file *sf) {
    if (!sf) return;
    for (int i = 0; i < sf->n_comps; i++) {
        free(sf->comps[i].view.tensors);
        free(sf->comps[i].config);
    }
    for (int64_t i = 0; i < sf->n_names; i++) free(sf->names[i]);
    free(sf->names);
    for (int i = 0; i < sf->n_maps; i++) munmap(sf->maps[i].p, sf->maps[i].len);
    free(sf->maps);
    if (sf->file_open) qd_st_close(&sf->file);
    free(sf);
}

qd_sf_family qd_sf_family_of(const qd_single_file *sf) { return sf->fam; }
const char *qd_sf_family_name(const qd_single_file *sf) {
    return sf->fam == QD_SF_SD1 ? "SD1.x" : sf->fam == QD_SF_SDXL ? "SDXL" : sf->fam == QD_SF_SD3 ? "SD3" : "FLUX.1";
}
const char *qd_sf_path(const qd_single_file *sf) { return sf->path; }
const char *qd_sf_config_from(const qd_single_file *sf) { return sf->config_from[0] ? sf->config_from : NULL; }
int qd_sf_n_components(const qd_single_file *sf) { return sf->n_comps; }
const qd_sf_component *qd_sf_component_at(const qd_single_file *sf, int i) {
    return i >= 0 && i < sf->n_comps ? &sf->comps[i] : NULL;
}
const qd_sf_component *qd_sf_find_component(const qd_single_file *sf, const char *name) {
    for (int i = 0; i < sf->n_comps; i++)
        if (!strcmp(sf->comps[i].name, name)) return &sf->comps[i];
    return NULL;
}
const char *qd_sf_denoiser(const qd_single_file *sf) { return sf->fam == QD_SF_FLUX || sf->fam == QD_SF_SD3 ? "transformer" : "unet"; }

/* ---- completing the output folder ---- */

/* Every part a diffusers folder of the family has. */
static const char *const *family_parts(qd_sf_family fam) {
    static const char *sd1[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler", NULL};
    static const char *xl[] = {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler", NULL};
    static const char *flux[] = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler", NULL};
    static const char *sd3[] = {"transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                                "tokenizer_2", "tokenizer_3", "scheduler", NULL};
    return fam == QD_SF_SD1 ? sd1 : fam == QD_SF_SDXL ? xl : fam == QD_SF_SD3 ? sd3 : flux;
}

static void append(char *buf, size_t size, const char *s) {
    size_t n = strlen(buf);
    snprintf(buf + n, size - n, "%s%s", n ? "," : "", s);
}

char *qd_sf_missing(const qd_single_file *sf) {
    char buf[512] = "";
    const char *const *parts = family_parts(sf->fam);
    for (int i = 0; parts[i]; i++) {
        const qd_sf_component *c = qd_sf_find_component(sf, parts[i]);
        if (c) {
            if (!c->config) { char s[64]; snprintf(s, sizeof s, "%s/config.json", c->name); append(buf, sizeof buf, s); }
            continue;
        }
        if (!strcmp(parts[i], "scheduler") && !sf->config_from[0]) continue;   /* the family's default is written */
        if (sf->config_from[0]) {
            char p[4300];
            snprintf(p, sizeof p, "%s/%s", sf->config_from, parts[i]);
            if (qd_dir_exists(p)) continue;
        }
        append(buf, sizeof buf, parts[i]);
    }
    return buf[0] ? strdup(buf) : NULL;
}

static qd_status write_text(qd_ctx *ctx, const char *path, const char *text) {
    qd_outfile f;
    QD_TRY(qd_outfile_open(ctx, &f, path));
    fputs(text, f.fp);
    return qd_outfile_commit(ctx, &f);
}

/* A component of the file stored unquantized: its tensors as they are (rebuilt ones
 * from memory), streamed, and its config. */
static qd_status write_component(qd_ctx *ctx, const qd_sf_component *c, const char *dir) {
    char cdir[4200], p[4300];
    qd_path_join(cdir, sizeof cdir, dir, c->name);
    if (mkdir(cdir, 0755) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", cdir, strerror(errno));
    qd_path_join(p, sizeof p, cdir, c->weights_name);
    qd_st_stream *out;
    QD_TRY(qd_st_stream_open(ctx, p, &out));
    qd_status st = QD_OK;
    for (int64_t i = 0; i < c->view.n_tensors && st == QD_OK; i++) {
        const qd_st_tensor *t = &c->view.tensors[i];
        st = qd_st_stream_declare(ctx, out, t->name, t->dtype, t->ndim, t->shape);
    }
    if (st == QD_OK) st = qd_st_stream_layout(ctx, out, "\"format\":\"pt\"");
    for (int64_t i = 0; i < c->view.n_tensors && st == QD_OK; i++) {
        const qd_st_tensor *t = &c->view.tensors[i];
        st = qd_st_stream_add(ctx, out, t->name, t->dtype, t->ndim, t->shape, t->data);
        qd_st_release(t);
    }
    if (st != QD_OK) { qd_st_stream_abort(out); return st; }
    QD_TRY(qd_st_stream_finish(ctx, out, "\"format\":\"pt\""));
    if (!c->config) return QD_OK;
    qd_path_join(p, sizeof p, cdir, "config.json");
    return write_text(ctx, p, c->config);
}

qd_status qd_sf_complete_folder(qd_ctx *ctx, const qd_single_file *sf, const char *dir, const char *const *done, int n_done,
                                char **missing) {
    *missing = NULL;
    if (sf->fam == QD_SF_SD3 && !sf->config_from[0])
        return qd_fail(ctx, QD_ERR_ARG, "%s: an SD3 checkpoint needs --config-from DIR (a diffusers SD3 folder): qdiff has no SD3 "
                       "transformer config, model_index.json or scheduler of its own", sf->path);
    for (int i = 0; i < sf->n_comps; i++) {
        int skip = 0;
        for (int k = 0; k < n_done; k++) skip |= !strcmp(done[k], sf->comps[i].name);
        if (!skip) QD_TRY(write_component(ctx, &sf->comps[i], dir));
    }
    char p[4300];
    if (sf->config_from[0]) {
        /* everything the file does not hold, as the folder has it */
        DIR *d = opendir(sf->config_from);
        if (!d) return qd_fail(ctx, QD_ERR_IO, "%s: cannot list: %s", sf->config_from, strerror(errno));
        struct dirent *e;
        qd_status st = QD_OK;
        while (st == QD_OK && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || qd_sf_find_component(sf, e->d_name)) continue;
            char a[4300];
            qd_path_join(a, sizeof a, sf->config_from, e->d_name);
            qd_path_join(p, sizeof p, dir, e->d_name);
            st = qd_tree_copy(ctx, a, p);
        }
        closedir(d);
        QD_TRY(st);
    } else {
        char *mi = sf_default_model_index(sf->fam, sf), *sch = sf_default_scheduler(sf->fam, sf);
        qd_status st = mi && sch ? QD_OK : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        if (st == QD_OK) {
            qd_path_join(p, sizeof p, dir, "model_index.json");
            st = write_text(ctx, p, mi);
        }
        if (st == QD_OK) {
            qd_path_join(p, sizeof p, dir, "scheduler");
            if (mkdir(p, 0755) != 0) st = qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
            else {
                qd_path_join(p, sizeof p, dir, "scheduler/scheduler_config.json");
                st = write_text(ctx, p, sch);
            }
        }
        free(mi);
        free(sch);
        QD_TRY(st);
    }
    *missing = qd_sf_missing(sf);
    return QD_OK;
}
