/* LoRA files -> normalized pairs (key, component, down, up, alpha), then the merge
 * W += factor * up . down through the library GEMM. See lora.h for the conventions. */
#include "convert/lora.h"
#include "convert/single_file.h"
#include "io/safetensors.h"
#include "io/safetensors_meta.h"
#include "tensor/gemm.h"
#include "models/params.h"
#include "io/file.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <regex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { COMP_ANY, COMP_DENOISER, COMP_TE1, COMP_TE2, COMP_TE3 };
static const char *const comp_names[] = {"any component", "the denoiser", "text_encoder", "text_encoder_2",
                                         "text_encoder_3"};

/* One entry per LoRA layer, or per part of a fused one (a BFL qkv / linear1 pair is split
 * into its to_q/to_k/to_v(/proj_mlp) parts, each with its rows of up and the shared down). */
typedef struct {
    char *key;                  /* canonical normalized weight name (see canon_parts) */
    const char *base;           /* the file's spelling (points into the down tensor's name copy) */
    int comp, file;
    int64_t layer;              /* the LoRA layer this entry belongs to (counted per file for reports) */
    const qd_st_tensor *down, *up;
    int64_t up_off, up_rows;    /* the rows of up this entry uses */
    float mult;                 /* alpha / rank, or alpha / sqrt(rank) (rsLoRA) */
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
    int64_t n_pairs, n_layers;
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

/* ---- FLUX: BFL (fused) and diffusers (separate) layer names meet in one namespace ----
 * Canonical names are diffusers' (normalized). A BFL/ComfyUI name is renamed, and a fused
 * layer (double_blocks.N.img_attn.qkv, txt_attn.qkv, single_blocks.N.linear1) is split into
 * its parts by rows: qkv into three equal thirds (to_q, to_k, to_v), linear1 into to_q, to_k,
 * to_v (cols rows each: the hidden size) and proj_mlp (the rest). The final adaLN is split
 * into its shift/scale halves, which BFL and diffusers store in opposite orders. Both the
 * model's weights and the LoRA's layers go through this, so every combination meets. */

typedef struct { char key[320]; int64_t off, rows; } canon_part;

enum { SPLIT_NONE, SPLIT_QKV, SPLIT_LINEAR1, SPLIT_HALVES };
static const struct { const char *bfl; const char *dif[4]; int split; } flux_names[] = {
    /* per block: "double_blocks_<N>_" + bfl  ->  "transformer_blocks_<N>_" + dif */
    {"img_attn_qkv", {"attn_to_q", "attn_to_k", "attn_to_v"}, SPLIT_QKV},
    {"txt_attn_qkv", {"attn_add_q_proj", "attn_add_k_proj", "attn_add_v_proj"}, SPLIT_QKV},
    {"img_attn_proj", {"attn_to_out_0"}, SPLIT_NONE},
    {"txt_attn_proj", {"attn_to_add_out"}, SPLIT_NONE},
    {"img_mlp_0", {"ff_net_0_proj"}, SPLIT_NONE},
    {"img_mlp_2", {"ff_net_2"}, SPLIT_NONE},
    {"txt_mlp_0", {"ff_context_net_0_proj"}, SPLIT_NONE},
    {"txt_mlp_2", {"ff_context_net_2"}, SPLIT_NONE},
    {"img_mod_lin", {"norm1_linear"}, SPLIT_NONE},
    {"txt_mod_lin", {"norm1_context_linear"}, SPLIT_NONE},
};
static const struct { const char *bfl; const char *dif[4]; int split; } flux_single_names[] = {
    /* "single_blocks_<N>_" + bfl  ->  "single_transformer_blocks_<N>_" + dif */
    {"linear1", {"attn_to_q", "attn_to_k", "attn_to_v", "proj_mlp"}, SPLIT_LINEAR1},
    {"linear2", {"proj_out"}, SPLIT_NONE},
    {"modulation_lin", {"norm_linear"}, SPLIT_NONE},
};
static const struct { const char *bfl, *dif; } flux_global_names[] = {
    {"img_in", "x_embedder"},
    {"txt_in", "context_embedder"},
    {"time_in_in_layer", "time_text_embed_timestep_embedder_linear_1"},
    {"time_in_out_layer", "time_text_embed_timestep_embedder_linear_2"},
    {"vector_in_in_layer", "time_text_embed_text_embedder_linear_1"},
    {"vector_in_out_layer", "time_text_embed_text_embedder_linear_2"},
    {"guidance_in_in_layer", "time_text_embed_guidance_embedder_linear_1"},
    {"guidance_in_out_layer", "time_text_embed_guidance_embedder_linear_2"},
    {"final_layer_linear", "proj_out"},
};

/* "<prefix><digits>_<rest>": the block number and rest, or NULL. */
static const char *block_rest(const char *key, const char *prefix, long *n) {
    if (!starts(key, prefix)) return NULL;
    const char *s = key + strlen(prefix);
    if (!isdigit((unsigned char)*s)) return NULL;
    char *e;
    *n = strtol(s, &e, 10);
    return *e == '_' ? e + 1 : NULL;
}

/* Split a matrix of `rows` x `cols` named key into canonical parts (at most 4). A layer
 * whose shape does not allow its split stays one part under its own name. */
static int canon_parts(const char *key, int64_t rows, int64_t cols, canon_part *out) {
    long n;
    const char *rest;
    const char *blk = NULL, *const *dif = NULL;
    int split = SPLIT_NONE;
    if ((rest = block_rest(key, "double_blocks_", &n))) {
        for (size_t i = 0; i < sizeof flux_names / sizeof flux_names[0]; i++)
            if (!strcmp(rest, flux_names[i].bfl)) { blk = "transformer_blocks"; dif = flux_names[i].dif; split = flux_names[i].split; }
    } else if ((rest = block_rest(key, "single_blocks_", &n))) {
        for (size_t i = 0; i < sizeof flux_single_names / sizeof flux_single_names[0]; i++)
            if (!strcmp(rest, flux_single_names[i].bfl)) {
                blk = "single_transformer_blocks"; dif = flux_single_names[i].dif; split = flux_single_names[i].split;
            }
    } else {
        for (size_t i = 0; i < sizeof flux_global_names / sizeof flux_global_names[0]; i++)
            if (!strcmp(key, flux_global_names[i].bfl)) {
                snprintf(out[0].key, sizeof out[0].key, "%s", flux_global_names[i].dif);
                out[0].off = 0; out[0].rows = rows;
                return 1;
            }
        /* the output modulation: BFL (shift, scale), diffusers (scale, shift) */
        int bfl = !strcmp(key, "final_layer_adaln_modulation_1"), dfs = !strcmp(key, "norm_out_linear");
        if ((bfl || dfs) && rows % 2 == 0) {
            snprintf(out[0].key, sizeof out[0].key, "norm_out_linear_%s", bfl ? "shift" : "scale");
            snprintf(out[1].key, sizeof out[1].key, "norm_out_linear_%s", bfl ? "scale" : "shift");
            out[0].off = 0; out[1].off = rows / 2;
            out[0].rows = out[1].rows = rows / 2;
            return 2;
        }
    }
    int np = 1;
    if (dif && split == SPLIT_QKV && rows % 3 == 0) np = 3;
    else if (dif && split == SPLIT_LINEAR1 && rows > 3 * cols) np = 4;
    else if (dif && split != SPLIT_NONE) dif = NULL;   /* not splittable: keep the fused name */
    if (!dif) {
        snprintf(out[0].key, sizeof out[0].key, "%s", key);
        out[0].off = 0; out[0].rows = rows;
        return 1;
    }
    int64_t part = np == 3 ? rows / 3 : np == 4 ? cols : rows;
    for (int i = 0; i < np; i++) {
        snprintf(out[i].key, sizeof out[i].key, "%s_%ld_%s", blk, n, dif[i]);
        out[i].off = i * part;
        out[i].rows = i == 3 ? rows - 3 * cols : part;
    }
    return np;
}

/* ---- SDXL kohya: original-SD (LDM) UNet module names ----
 * kohya sd-scripts names SDXL UNet layers by their LDM module path with '.' -> '_'
 * (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q, ..._middle_block_1_proj_in,
 * ..._output_blocks_2_0_in_layers_2, time_embed_0, label_emb_0_0, out_2). The dots are put
 * back from the small vocabulary of LDM module names, and the single-file converter's LDM ->
 * diffusers map (qd_sf_ldm_unet_name, convert/single_file_ldm.c) gives the diffusers name,
 * kept as a second key of the pair beside the LDM one (which matches an LDM single-file
 * model's own names). That map needs the UNet's resnets per level: 2, the value of every
 * SD1.x/SD2.x/SDXL UNet (the models kohya names this way), so it is fixed here; the
 * transformer depth and the levels with attention need no config (their indices are kept). */
static const char *const ldm_words[] = {
    "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "transformer_blocks",
    "proj_in", "proj_out", "in_layers", "emb_layers", "out_layers", "skip_connection", "to_out", "to_q",
    "to_k", "to_v", "attn1", "attn2", "norm1", "norm2", "norm3", "norm", "ff", "net", "proj", "op", "conv", "out",
};
enum { LDM_UNET_LAYERS_PER_BLOCK = 2 };

/* The dotted LDM module path of normalized key k ("input_blocks_4_1_proj_in" ->
 * "input_blocks.4.1.proj_in"); 0 unless every token is an LDM word or a number and the
 * first names a top-level LDM module. */
static int ldm_dotted(const char *k, char *out, size_t size) {
    static const char *const top[] = {"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"};
    size_t o = 0;
    for (int tok = 0; *k; tok++) {
        size_t len = 0;
        if (isdigit((unsigned char)*k)) {
            while (isdigit((unsigned char)k[len])) len++;
        } else {
            for (size_t i = 0; i < sizeof ldm_words / sizeof ldm_words[0]; i++) {
                size_t n = strlen(ldm_words[i]);
                if (n > len && strncmp(k, ldm_words[i], n) == 0 && (k[n] == '_' || k[n] == 0)) len = n;
            }
        }
        if (len == 0 || (k[len] != '_' && k[len] != 0) || o + len + 2 > size) return 0;
        if (tok == 0) {
            int ok = 0;
            for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) ok |= strlen(top[i]) == len && !strncmp(k, top[i], len);
            if (!ok) return 0;
        }
        if (o) out[o++] = '.';
        memcpy(out + o, k, len);
        o += len;
        k += len;
        if (*k == '_') {
            k++;
            if (!*k) return 0;
        }
    }
    out[o] = 0;
    return o > 0;
}

/* The normalized diffusers key of an LDM-named UNet layer key, or 0. */
static int ldm_alias(const char *key, char *out, size_t size) {
    char dotted[320], name[400];
    if (!ldm_dotted(key, dotted, sizeof dotted - 8)) return 0;
    strcat(dotted, ".weight");
    if (!qd_sf_ldm_unet_name(LDM_UNET_LAYERS_PER_BLOCK, dotted, name, sizeof name)) return 0;
    size_t n = strlen(name);
    if (n <= 7 || strcmp(name + n - 7, ".weight") != 0 || n - 7 >= size) return 0;
    for (size_t i = 0; i < n - 7; i++) out[i] = name[i] == '.' ? '_' : name[i];
    out[n - 7] = 0;
    return 1;
}

/* ---- PEFT adapter_config.json ----
 * PEFT keeps alpha out of the weights: adapter_config.json beside adapter_model.safetensors
 * has r, lora_alpha, use_rslora and per-module rank_pattern / alpha_pattern. PEFT scales a
 * layer by alpha/r (alpha/sqrt(r) with use_rslora), r and alpha taken from the first
 * pattern key matching the module name as the regex "(.*\.)?(KEY)$". */
typedef struct {
    cJSON *json;
    int rslora;
    double r, alpha;
    const cJSON *rank_pattern, *alpha_pattern;
} peft_config;

static qd_status peft_config_load(qd_ctx *ctx, const char *lora_path, peft_config *pc, int *found) {
    memset(pc, 0, sizeof *pc);
    *found = 0;
    char dir[4096], cfg[4096];
    snprintf(dir, sizeof dir, "%s", lora_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    qd_path_join(cfg, sizeof cfg, dir, "adapter_config.json");
    if (!qd_file_exists(cfg)) return QD_OK;
    char *text = NULL;
    size_t len;
    QD_TRY(qd_read_file(ctx, cfg, &text, &len));
    pc->json = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(pc->json)) {
        cJSON_Delete(pc->json);
        pc->json = NULL;
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: not a JSON object", cfg);
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(pc->json, "r");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(pc->json, "lora_alpha");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(pc->json, "use_rslora");
    const cJSON *dora = cJSON_GetObjectItemCaseSensitive(pc->json, "use_dora");
    pc->rank_pattern = cJSON_GetObjectItemCaseSensitive(pc->json, "rank_pattern");
    pc->alpha_pattern = cJSON_GetObjectItemCaseSensitive(pc->json, "alpha_pattern");
    const char *bad = NULL;
    if (!cJSON_IsNumber(r) || !(r->valuedouble > 0)) bad = "\"r\" must be a positive number";
    else if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble)) bad = "\"lora_alpha\" must be a number";
    else if (rs && !cJSON_IsBool(rs)) bad = "\"use_rslora\" must be true or false";
    else if (pc->rank_pattern && !cJSON_IsNull(pc->rank_pattern) && !cJSON_IsObject(pc->rank_pattern))
        bad = "\"rank_pattern\" must be an object";
    else if (pc->alpha_pattern && !cJSON_IsNull(pc->alpha_pattern) && !cJSON_IsObject(pc->alpha_pattern))
        bad = "\"alpha_pattern\" must be an object";
    else if (cJSON_IsTrue(dora)) {
        cJSON_Delete(pc->json);
        pc->json = NULL;
        return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: use_dora is true: DoRA adapters are not supported", cfg);
    }
    if (bad) {
        cJSON_Delete(pc->json);
        pc->json = NULL;
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: %s", cfg, bad);
    }
    pc->r = r->valuedouble;
    pc->alpha = a->valuedouble;
    pc->rslora = cJSON_IsTrue(rs);
    if (!cJSON_IsObject(pc->rank_pattern)) pc->rank_pattern = NULL;
    if (!cJSON_IsObject(pc->alpha_pattern)) pc->alpha_pattern = NULL;
    *found = 1;
    return QD_OK;
}

/* The value of the first pattern matching module (PEFT's get_pattern_key); 0 none, -1 bad regex. */
static int peft_pattern(qd_ctx *ctx, const char *cfg_what, const cJSON *patterns, const char *module, double *value) {
    if (!patterns) return 0;
    for (const cJSON *e = patterns->child; e; e = e->next) {
        if (!cJSON_IsNumber(e)) {
            qd_fail(ctx, QD_ERR_FORMAT, "adapter_config.json: %s entry '%s' is not a number", cfg_what, e->string);
            return -1;
        }
        char re_text[1200];
        snprintf(re_text, sizeof re_text, "^(.*\\.)?(%s)$", e->string);
        regex_t re;
        if (regcomp(&re, re_text, REG_EXTENDED | REG_NOSUB) != 0) {
            qd_fail(ctx, QD_ERR_FORMAT, "adapter_config.json: %s key '%s' is not a regular expression qdiff can read",
                    cfg_what, e->string);
            return -1;
        }
        int hit = regexec(&re, module, 0, NULL, 0) == 0;
        regfree(&re);
        if (hit) { *value = e->valuedouble; return 1; }
    }
    return 0;
}

/* ---- opening ---- */

typedef struct { const char *suffix; int up; int peft; } lora_suffix;
static const lora_suffix suffixes[] = {
    {".lora_down.weight", 0, 0}, {".lora_up.weight", 1, 0},
    {".lora.down.weight", 0, 0}, {".lora.up.weight", 1, 0},
    {".lora_A.weight", 0, 1},    {".lora_B.weight", 1, 1},
    {"_lora.down.weight", 0, 0}, {"_lora.up.weight", 1, 0},   /* old attention processors: to_q_lora.down */
};

static int cmp_pair(const void *a, const void *b) {
    const lora_pair *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    if (x->file != y->file) return x->file - y->file;
    return x->layer < y->layer ? -1 : x->layer > y->layer;
}

static int has_suffix(const char *s, size_t n, const char *suf) {
    size_t m = strlen(suf);
    return n >= m && memcmp(s + n - m, suf, m) == 0;
}

static qd_status grow_pairs(qd_ctx *ctx, qd_lora_set *set, int64_t *cap) {
    if (set->n_pairs < *cap) return QD_OK;
    int64_t nc = *cap ? *cap * 2 : 256;
    lora_pair *g = realloc(set->pairs, sizeof *g * (size_t)nc);
    if (!g) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    set->pairs = g;
    *cap = nc;
    return QD_OK;
}

/* Read the pairs of file f into set->pairs. */
static qd_status open_file(qd_ctx *ctx, qd_lora_set *set, int f, int64_t *cap) {
    const char *path = set->paths[f];
    qd_st_set *st = &set->files[f];
    cJSON *meta = NULL;
    peft_config pc;
    int have_pc = 0;
    QD_TRY(qd_st_read_metadata(ctx, path, &meta));
    qd_status status = peft_config_load(ctx, path, &pc, &have_pc);
    if (status != QD_OK) { cJSON_Delete(meta); return status; }
    int64_t found = 0, ignored = 0;
    for (int64_t i = 0; i < st->n_tensors && status == QD_OK; i++) {
        const qd_st_tensor *t = &st->tensors[i];
        const char *name = t->name;
        size_t n = strlen(name);
        if (strstr(name, "hada_w") || strstr(name, "lokr_w") || strstr(name, "dora_scale") || strstr(name, "lora_mid") ||
            strstr(name, "lora_magnitude_vector")) {
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
        /* alpha: tensor, else PEFT's adapter_config.json (lora_A/lora_B files), else the header
         * key the fork reads, else the rank */
        double alpha = (double)r, rank = (double)r;
        int rslora = 0;
        char akey[1300];
        memcpy(akey, name, bl);
        snprintf(akey + bl, sizeof akey - bl, ".alpha");
        const qd_st_tensor *at = qd_st_find(st, akey);
        if (at) {
            if (at->numel != 1 || at->dtype == QD_BOOL) {
                status = qd_fail(ctx, QD_ERR_FORMAT, "%s: '%s' must hold one number", path, akey);
                break;
            }
            float a;
            qd_st_to_f32(at, 0, 1, &a);
            alpha = a;
        } else if (have_pc && sx->peft) {
            double pr = pc.r, pa = pc.alpha;
            int hr = peft_pattern(ctx, "rank_pattern", pc.rank_pattern, tmp, &pr);
            int ha = hr < 0 ? -1 : peft_pattern(ctx, "alpha_pattern", pc.alpha_pattern, tmp, &pa);
            if (hr < 0 || ha < 0) { status = qd_fail_prefix(ctx, QD_ERR_FORMAT, "%s", path); break; }
            if (pr != (double)r) {
                status = qd_fail(ctx, QD_ERR_FORMAT, "%s: adapter_config.json gives r = %g for '%s' but its lora_A has "
                                 "rank %lld", path, pr, tmp, (long long)r);
                break;
            }
            alpha = pa;
            rank = pr;
            rslora = pc.rslora;
        } else if (meta) {
            for (size_t k = 0; k < bl; k++) akey[k] = name[k] == '.' ? '_' : name[k];
            snprintf(akey + bl, sizeof akey - bl, "_alpha");
            const cJSON *ma = cJSON_GetObjectItemCaseSensitive(meta, akey);
            if (cJSON_IsString(ma)) alpha = strtod(ma->valuestring, NULL);
            else if (cJSON_IsNumber(ma)) alpha = ma->valuedouble;
        }
        if (!isfinite(alpha)) {
            status = qd_fail(ctx, QD_ERR_FORMAT, "%s: alpha of '%.*s' is not a finite number", path, (int)bl, name);
            break;
        }
        char *key = normalize(tmp, strlen(tmp));
        if (!key) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        int64_t up_rows = up->shape[0], in = t->ndim == 2 ? t->shape[1] : t->shape[1] * t->shape[2] * t->shape[3];
        canon_part parts[5];
        int np = canon_parts(key, up_rows, t->ndim == 2 ? in : t->shape[1], parts);
        /* an LDM-named UNet layer (SDXL kohya) also under its diffusers name */
        if (np == 1 && (comp == COMP_DENOISER || comp == COMP_ANY) && ldm_alias(key, parts[1].key, sizeof parts[1].key)) {
            parts[1].off = 0;
            parts[1].rows = up_rows;
            np = 2;
        }
        free(key);
        for (int k = 0; k < np && status == QD_OK; k++) {
            if ((status = grow_pairs(ctx, set, cap)) != QD_OK) break;
            lora_pair *p = &set->pairs[set->n_pairs];
            memset(p, 0, sizeof *p);
            if (!(p->key = strdup(parts[k].key))) { status = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
            set->n_pairs++;
            p->base = name;
            p->comp = comp;
            p->file = f;
            p->layer = set->n_layers;
            p->down = t;
            p->up = up;
            p->up_off = parts[k].off;
            p->up_rows = parts[k].rows;
            p->mult = (float)(alpha / (rslora ? sqrt(rank) : rank));
            p->rank = r;
        }
        set->n_layers++;
    }
    cJSON_Delete(meta);
    cJSON_Delete(pc.json);
    if (status == QD_OK && found == 0)
        status = qd_fail(ctx, QD_ERR_FORMAT, "%s: no LoRA pairs found (expected keys ending in .lora_down.weight/"
                         ".lora_up.weight, .lora.down.weight/.lora.up.weight or .lora_A.weight/.lora_B.weight)", path);
    if (status == QD_OK && have_pc) qd_info(ctx, "%s: alpha and rank from adapter_config.json", path);
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

/* ---- lookup ---- */

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

/* The canonical parts of a model weight; 0 when it is no ".weight" or not a matrix. */
static int weight_parts(const char *component, const char *tensor_name, const int64_t *shape, int ndim, int *comp,
                        canon_part *parts) {
    if (ndim < 2) return 0;
    char *key = model_key(component, tensor_name, comp);
    if (!key) return 0;
    int64_t rest = 1;
    for (int d = 1; d < ndim; d++) rest *= shape[d];
    int np = canon_parts(key, shape[0], ndim == 2 ? rest : shape[1], parts);
    free(key);
    return np;
}

int qd_lora_touches(const qd_lora_set *s, const char *component, const char *tensor_name, const int64_t *shape,
                    int ndim) {
    int comp, count = 0;
    canon_part parts[4];
    int np = weight_parts(component, tensor_name, shape, ndim, &comp, parts);
    for (int k = 0; k < np; k++)
        for (int64_t i = first_pair(s, parts[k].key); i >= 0 && i < s->n_pairs && !strcmp(s->pairs[i].key, parts[k].key); i++)
            count += comp_matches(s->pairs[i].comp, comp);
    return count;
}

/* Every pair naming this weight, part by part: fn(user, pair, weight row offset, factor)
 * after checking the part fits. The factor is scale_f * dampen^i * alpha/rank, i counted
 * per part. Returns the number of pairs visited, or -1 with the error in ctx. */
typedef int (*pair_fn)(qd_ctx *ctx, void *user, const lora_pair *p, int64_t row_off, int64_t cols, float factor);

static int for_each_pair(qd_ctx *ctx, qd_lora_set *s, const char *component, const char *tensor_name,
                         const int64_t *shape, int ndim, pair_fn fn, void *user) {
    int comp;
    canon_part parts[4];
    int np = weight_parts(component, tensor_name, shape, ndim, &comp, parts);
    int applied = 0, n_seen = 0;
    int64_t cols = 1, seen_layer[64];
    for (int d = 1; d < ndim; d++) cols *= shape[d];
    for (int k = 0; k < np; k++) {
        int64_t first = first_pair(s, parts[k].key);
        int nth = 0;
        for (int64_t i = first; i >= 0 && i < s->n_pairs && !strcmp(s->pairs[i].key, parts[k].key); i++) {
            lora_pair *p = &s->pairs[i];
            if (!comp_matches(p->comp, comp)) continue;
            int64_t dcols = p->down->numel / p->rank;
            if (p->up_rows != parts[k].rows || dcols != cols) {
                char ws[96];
                int len = snprintf(ws, sizeof ws, "[");
                for (int d = 0; d < ndim && len < (int)sizeof ws; d++)
                    len += snprintf(ws + len, sizeof ws - (size_t)len, d ? ",%lld" : "%lld", (long long)shape[d]);
                if (len < (int)sizeof ws) snprintf(ws + len, sizeof ws - (size_t)len, "]");
                if (np > 1 || p->up_rows != p->up->shape[0])
                    qd_fail(ctx, QD_ERR_FORMAT, "%s: LoRA '%s' (%s) does not fit weight '%s' %s: its part %s has %lld "
                            "outputs and %lld inputs, the weight's part has rows %lld..%lld of %lld inputs",
                            s->paths[p->file], p->base, comp_names[p->comp], tensor_name, ws, parts[k].key,
                            (long long)p->up_rows, (long long)dcols, (long long)parts[k].off,
                            (long long)(parts[k].off + parts[k].rows), (long long)cols);
                else
                    qd_fail(ctx, QD_ERR_FORMAT, "%s: LoRA '%s' (%s) does not fit weight '%s' %s: up has %lld outputs, "
                            "down %lld inputs", s->paths[p->file], p->base, comp_names[p->comp], tensor_name, ws,
                            (long long)p->up_rows, (long long)dcols);
                return -1;
            }
            float factor = s->scales[p->file] * powf(s->dampen, (float)nth) * p->mult;
            if (fn(ctx, user, p, parts[k].off, cols, factor) < 0) return -1;
            p->applied++;
            nth++;
            /* count LoRA layers, not parts: a fused pair split over this weight's parts is one */
            int seen = 0;
            for (int q = 0; q < n_seen && !seen; q++) seen = seen_layer[q] == p->layer;
            if (!seen && n_seen < 64) seen_layer[n_seen++] = p->layer;
            applied += !seen;
        }
    }
    return applied;
}

/* The pair's up rows as float times factor, [up_rows, rank], and down as float [rank, cols]. */
static int pair_factors(qd_ctx *ctx, const lora_pair *p, int64_t cols, float factor, float **up, float **down) {
    int64_t r = p->rank;
    *up = qd_malloc(ctx, sizeof(float) * (size_t)(p->up_rows * r));
    *down = qd_malloc(ctx, sizeof(float) * (size_t)(r * cols));
    if (!*up || !*down) { free(*up); free(*down); return -1; }
    qd_st_to_f32(p->up, p->up_off * r, p->up_rows * r, *up);
    for (int64_t i = 0; i < p->up_rows * r; i++) (*up)[i] *= factor;
    qd_st_to_f32(p->down, 0, r * cols, *down);
    return 0;
}

typedef struct { float *w; } merge_arg;

static int merge_pair(qd_ctx *ctx, void *user, const lora_pair *p, int64_t row_off, int64_t cols, float factor) {
    merge_arg *a = user;
    float *up, *down;
    if (pair_factors(ctx, p, cols, 1.0f, &up, &down)) return -1;
    /* w[row_off + o, j] += factor * sum_k up[o, k] * down[k, j] */
    qd_gemm(ctx, p->up_rows, cols, p->rank, qd_rows(up, p->rank), qd_cols(down, cols), a->w + row_off * cols, cols,
            factor, 1.0f, NULL, NULL);
    free(up);
    free(down);
    return qd_op_status(ctx) != QD_OK ? -1 : 0;
}

int qd_lora_apply(qd_ctx *ctx, qd_lora_set *s, const char *component, const char *tensor_name,
                  float *w, const int64_t *shape, int ndim) {
    merge_arg a = {w};
    return for_each_pair(ctx, s, component, tensor_name, shape, ndim, merge_pair, &a);
}

/* ---- low-rank factors for generation-time LoRA ---- */

typedef struct { int64_t rows, cols, R, cap; float *A, *B; int pass; } factor_arg;

static int collect_pair(qd_ctx *ctx, void *user, const lora_pair *p, int64_t row_off, int64_t cols, float factor) {
    factor_arg *a = user;
    if (a->pass == 0) { a->cap += p->rank; return 0; }
    float *up, *down;
    if (pair_factors(ctx, p, cols, factor, &up, &down)) return -1;
    /* A rows [R, R + rank) = down; B columns [R, R + rank) = factor * up in rows [row_off, row_off + up_rows) */
    memcpy(a->A + a->R * cols, down, sizeof(float) * (size_t)(p->rank * cols));
    for (int64_t o = 0; o < p->up_rows; o++)
        memcpy(a->B + (row_off + o) * a->cap + a->R, up + o * p->rank, sizeof(float) * (size_t)p->rank);
    a->R += p->rank;
    free(up);
    free(down);
    return 0;
}

int qd_lora_factors(qd_ctx *ctx, qd_lora_set *s, const char *component, const char *tensor_name,
                    const int64_t *shape, int ndim, float **A, float **B, int64_t *rank) {
    *A = *B = NULL;
    *rank = 0;
    factor_arg a = {0};
    a.rows = shape[0];
    a.cols = 1;
    for (int d = 1; d < ndim; d++) a.cols *= shape[d];
    /* pass 0 counts the total rank (and checks shapes) without counting as applied */
    int64_t *saved = NULL;
    int n = 0;
    {
        int comp;
        canon_part parts[4];
        int np = weight_parts(component, tensor_name, shape, ndim, &comp, parts);
        if (np == 0) return 0;
        int64_t cnt = 0;
        for (int k = 0; k < np; k++)
            for (int64_t i = first_pair(s, parts[k].key); i >= 0 && i < s->n_pairs && !strcmp(s->pairs[i].key, parts[k].key); i++)
                cnt++;
        if (cnt == 0) return 0;
        saved = malloc(sizeof(int64_t) * (size_t)s->n_pairs);
        if (!saved) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"), -1;
        for (int64_t i = 0; i < s->n_pairs; i++) saved[i] = s->pairs[i].applied;
        n = for_each_pair(ctx, s, component, tensor_name, shape, ndim, collect_pair, &a);
        for (int64_t i = 0; i < s->n_pairs; i++) s->pairs[i].applied = saved[i];
        free(saved);
        if (n <= 0) return n;
    }
    a.A = qd_malloc(ctx, sizeof(float) * (size_t)(a.cap * a.cols));
    a.B = qd_calloc(ctx, (size_t)(a.rows * a.cap), sizeof(float));
    if (!a.A || !a.B) { free(a.A); free(a.B); return -1; }
    a.pass = 1;
    n = for_each_pair(ctx, s, component, tensor_name, shape, ndim, collect_pair, &a);
    if (n < 0) { free(a.A); free(a.B); return -1; }
    *A = a.A;
    *B = a.B;
    *rank = a.R;
    return n;
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
        qd_lora_set_plan_tensor(s, component, t->name, t->shape, t->ndim);
    }
    qd_st_close(&st);
    return QD_OK;
}

void qd_lora_set_plan_tensor(qd_lora_set *s, const char *component, const char *tensor_name, const int64_t *shape,
                             int ndim) {
    int comp;
    canon_part parts[4];
    int np = weight_parts(component, tensor_name, shape, ndim, &comp, parts);
    for (int k = 0; k < np; k++)
        for (int64_t j = first_pair(s, parts[k].key); j >= 0 && j < s->n_pairs && !strcmp(s->pairs[j].key, parts[k].key); j++)
            if (comp_matches(s->pairs[j].comp, comp)) s->pairs[j].planned = 1;
}

/* Per LoRA layer (all parts of a split one together): whether any part was applied or planned. */
static void layer_counts(const qd_lora_set *s, int f, int64_t *matched, int64_t *total, const lora_pair **miss) {
    int64_t m = 0, n = 0;
    *miss = NULL;
    /* entries are sorted by key; layers are numbered per set, so mark hits per layer */
    unsigned char *hit = calloc((size_t)(s->n_layers ? s->n_layers : 1), 2);
    if (!hit) { *matched = *total = 0; return; }
    for (int64_t i = 0; i < s->n_pairs; i++) {
        const lora_pair *p = &s->pairs[i];
        if (f >= 0 && p->file != f) continue;
        hit[2 * p->layer] = 1;
        if (p->applied || p->planned) hit[2 * p->layer + 1] = 1;
        else if (!*miss) *miss = p;
    }
    for (int64_t l = 0; l < s->n_layers; l++) { n += hit[2 * l]; m += hit[2 * l + 1]; }
    /* a layer with some parts matched is matched; report a layer none of whose parts matched */
    if (*miss && hit[2 * (*miss)->layer + 1]) {
        *miss = NULL;
        for (int64_t i = 0; i < s->n_pairs && !*miss; i++) {
            const lora_pair *p = &s->pairs[i];
            if ((f < 0 || p->file == f) && !hit[2 * p->layer + 1]) *miss = p;
        }
    }
    free(hit);
    *matched = m;
    *total = n;
}

void qd_lora_set_report(const qd_lora_set *s, int64_t *matched, int64_t *total) {
    const lora_pair *miss;
    int64_t m, n;
    layer_counts(s, -1, &m, &n, &miss);
    if (matched) *matched = m;
    if (total) *total = n;
}

qd_status qd_lora_set_check(qd_ctx *ctx, const qd_lora_set *s) {
    for (int f = 0; f < s->n_files; f++) {
        int64_t m = 0, n = 0;
        const lora_pair *miss = NULL;
        layer_counts(s, f, &m, &n, &miss);
        if (m == 0)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: 0 of its %lld LoRA layers matched a weight of the model "
                           "(first: '%s' for %s); wrong model or naming convention?", s->paths[f], (long long)n,
                           miss ? miss->base : "?", miss ? comp_names[miss->comp] : "?");
        if (m < n)
            qd_warn(ctx, "%s: %lld of %lld LoRA layers matched a weight; not applied e.g. '%s' (%s)", s->paths[f],
                    (long long)m, (long long)n, miss ? miss->base : "?", miss ? comp_names[miss->comp] : "?");
    }
    return QD_OK;
}
