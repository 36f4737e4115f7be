/* Opening a diffusers folder: model_index.json names the pipeline class and each
 * component's library and class; each component folder has its own config. */
#include "pipeline/model.h"
#include "base/ctx.h"
#include "io/file.h"
#include "io/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *cls; qd_family family; int n_text; } pipelines[] = {
    {"StableDiffusionPipeline", QD_FAMILY_SD15, 1},
    {"StableDiffusionImg2ImgPipeline", QD_FAMILY_SD15, 1},
    {"StableDiffusionXLPipeline", QD_FAMILY_SDXL, 2},
    {"StableDiffusionXLImg2ImgPipeline", QD_FAMILY_SDXL, 2},
};

/* model_index.json entry "name": ["library", "Class"]; returns the class or NULL. */
static const char *component_class(const cJSON *index, const char *name) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(index, name);
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2) return NULL;
    const cJSON *cls = cJSON_GetArrayItem(it, 1);
    return cJSON_IsString(cls) ? cls->valuestring : NULL;
}

static qd_status need_component(qd_ctx *ctx, const char *index_path, const cJSON *index, const char *name,
                                const char *const *accepted, const char *dir, char *sub, size_t sub_size) {
    const char *cls = component_class(index, name);
    if (!cls) return qd_fail(ctx, QD_ERR_FORMAT, "%s: component '%s' is missing", index_path, name);
    int ok = 0;
    for (int i = 0; accepted[i]; i++) if (strcmp(cls, accepted[i]) == 0) ok = 1;
    if (!ok) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: component '%s' has class '%s', which is not supported (expected %s)",
                            index_path, name, cls, accepted[0]);
    qd_path_join(sub, sub_size, dir, name);
    if (!qd_dir_exists(sub)) return qd_fail(ctx, QD_ERR_IO, "%s: component folder is missing", sub);
    return QD_OK;
}

void qd_model_free(qd_model *m) {
    if (!m) return;
    for (int i = 0; i < 2; i++) {
        qd_clip_tokenizer_free(m->tokenizer[i]);
        qd_clip_text_free(m->text_encoder[i]);
    }
    qd_unet_free(m->unet);
    qd_vae_free(m->vae);
    cJSON_Delete(m->scheduler_config);
    free(m);
}

static qd_status open_model(qd_ctx *ctx, const char *dir, qd_model *m) {
    static const char *tokenizers[] = {"CLIPTokenizer", "CLIPTokenizerFast", NULL};
    static const char *encoders[] = {"CLIPTextModel", "CLIPTextModelWithProjection", NULL};
    static const char *unets[] = {"UNet2DConditionModel", NULL};
    static const char *vaes[] = {"AutoencoderKL", NULL};
    static const char *schedulers[] = {
        "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
        "DPMSolverMultistepScheduler", "LMSDiscreteScheduler", "DDPMScheduler", "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSinglestepScheduler",
        "DEISMultistepScheduler", "UniPCMultistepScheduler", NULL};
    char index_path[4096], sub[4096], path[4096];
    if (!qd_dir_exists(dir)) return qd_fail(ctx, QD_ERR_IO, "%s: not a folder", dir);
    qd_path_join(index_path, sizeof index_path, dir, "model_index.json");
    cJSON *index;
    QD_TRY(qd_json_load(ctx, index_path, &index));
    qd_status st = QD_OK;
    const char *cls = qd_json_str(index, "_class_name", NULL);
    int p = -1;
    for (size_t i = 0; cls && i < sizeof pipelines / sizeof *pipelines; i++)
        if (strcmp(cls, pipelines[i].cls) == 0) p = (int)i;
    if (!cls) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no \"_class_name\"", index_path);
    else if (p < 0) st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: pipeline class '%s' is not supported (supported: StableDiffusionPipeline, StableDiffusionXLPipeline)", index_path, cls);
    if (st == QD_OK) {
        snprintf(m->pipeline_class, sizeof m->pipeline_class, "%s", cls);
        m->family = pipelines[p].family;
        m->n_text = pipelines[p].n_text;
        m->force_zeros_for_empty_prompt = qd_json_bool(index, "force_zeros_for_empty_prompt", m->family == QD_FAMILY_SDXL);
    }
    static const char *tok_names[2] = {"tokenizer", "tokenizer_2"}, *te_names[2] = {"text_encoder", "text_encoder_2"};
    for (int i = 0; st == QD_OK && i < m->n_text; i++) {
        st = need_component(ctx, index_path, index, tok_names[i], tokenizers, dir, sub, sizeof sub);
        if (st == QD_OK) st = qd_clip_tokenizer_load(ctx, sub, &m->tokenizer[i]);
        if (st == QD_OK) st = need_component(ctx, index_path, index, te_names[i], encoders, dir, sub, sizeof sub);
        if (st == QD_OK) st = qd_clip_text_load(ctx, sub, &m->text_encoder[i]);
    }
    if (st == QD_OK) st = need_component(ctx, index_path, index, "unet", unets, dir, sub, sizeof sub);
    if (st == QD_OK) st = qd_unet_load(ctx, sub, &m->unet);
    if (st == QD_OK) st = need_component(ctx, index_path, index, "vae", vaes, dir, sub, sizeof sub);
    if (st == QD_OK) st = qd_vae_load(ctx, sub, &m->vae);
    if (st == QD_OK) st = need_component(ctx, index_path, index, "scheduler", schedulers, dir, sub, sizeof sub);
    if (st == QD_OK) {
        qd_path_join(path, sizeof path, sub, "scheduler_config.json");
        st = qd_json_load(ctx, path, &m->scheduler_config);
    }
    if (st == QD_OK) {
        snprintf(m->scheduler_class, sizeof m->scheduler_class, "%s",
                 qd_json_str(m->scheduler_config, "_class_name", component_class(index, "scheduler")));
        m->vae_scale = qd_vae_get_info(m->vae)->downscale;
        /* the conditioning the UNet expects must match what the text encoders give */
        const qd_unet_info *u = qd_unet_get_info(m->unet);
        int ctx_dim = 0;
        for (int i = 0; i < m->n_text; i++) ctx_dim += qd_clip_text_get_info(m->text_encoder[i])->hidden_size;
        if (u->cross_attention_dim != ctx_dim)
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: unet cross_attention_dim %d does not match the text encoders' width %d",
                         dir, u->cross_attention_dim, ctx_dim);
        if (st == QD_OK && m->family == QD_FAMILY_SDXL) {
            int pooled = qd_clip_text_get_info(m->text_encoder[1])->projection_dim;
            if (u->addition_time_embed_dim <= 0 ||
                u->projection_class_embeddings_input_dim != pooled + 6 * u->addition_time_embed_dim)
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: unet is not a text_time (SDXL) UNet matching text_encoder_2", dir);
        }
        if (st == QD_OK && qd_vae_get_info(m->vae)->latent_channels != u->in_channels)
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: vae latent_channels %d but unet in_channels %d", dir,
                         qd_vae_get_info(m->vae)->latent_channels, u->in_channels);
    }
    cJSON_Delete(index);
    return st;
}

qd_status qd_model_open(qd_ctx *ctx, const char *dir, qd_model **out) {
    *out = NULL;
    qd_model *m = calloc(1, sizeof *m);
    if (!m) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    qd_status st = open_model(ctx, dir, m);
    if (st != QD_OK) { qd_model_free(m); return st; }
    *out = m;
    return QD_OK;
}

const char *qd_model_family(const qd_model *m) { return m->family == QD_FAMILY_SDXL ? "sdxl" : "sd15"; }
const char *qd_model_scheduler(const qd_model *m) { return m->scheduler_class; }
int qd_model_default_size(const qd_model *m) { return qd_unet_get_info(m->unet)->sample_size * m->vae_scale; }
