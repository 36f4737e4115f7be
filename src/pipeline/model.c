/* Opening a diffusers folder: model_index.json names the pipeline class and each
 * component's library and class; each component folder has its own config. */
#include "pipeline/model.h"
#include "convert/single_file.h"
#include "pipeline/model_lora.h"
#include "base/ctx.h"
#include "io/file.h"
#include "io/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *cls; qd_family family; } pipelines[] = {
    {"StableDiffusionPipeline", QD_FAMILY_SD15},
    {"StableDiffusionImg2ImgPipeline", QD_FAMILY_SD15},
    {"StableDiffusionInpaintPipeline", QD_FAMILY_SD15},
    {"StableDiffusionXLPipeline", QD_FAMILY_SDXL},
    {"StableDiffusionXLInpaintPipeline", QD_FAMILY_SDXL},
    {"StableDiffusionXLImg2ImgPipeline", QD_FAMILY_SDXL},
    {"StableDiffusion3Pipeline", QD_FAMILY_SD3},
    {"StableDiffusion3Img2ImgPipeline", QD_FAMILY_SD3},
    {"FluxPipeline", QD_FAMILY_FLUX},
    {"FluxImg2ImgPipeline", QD_FAMILY_FLUX},
};

static const char *const clip_tokenizers[] = {"CLIPTokenizer", "CLIPTokenizerFast", NULL};
static const char *const clip_encoders[] = {"CLIPTextModel", "CLIPTextModelWithProjection", NULL};
static const char *const t5_tokenizers[] = {"T5TokenizerFast", "T5Tokenizer", NULL};
static const char *const t5_encoders[] = {"T5EncoderModel", NULL};
static const char *const unets[] = {"UNet2DConditionModel", NULL};
static const char *const sd3s[] = {"SD3Transformer2DModel", NULL};
static const char *const fluxes[] = {"FluxTransformer2DModel", NULL};
static const char *const vaes[] = {"AutoencoderKL", NULL};

/* model_index.json entry "name": ["library", "Class"]; NULL when absent or [null, null]. */
static const char *component_class(const cJSON *index, const char *name) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(index, name);
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2) return NULL;
    const cJSON *cls = cJSON_GetArrayItem(it, 1);
    return cJSON_IsString(cls) ? cls->valuestring : NULL;
}

/* The component's folder, after checking its class is one we load. */
static qd_status component(qd_ctx *ctx, const char *index_path, const cJSON *index, const char *dir,
                           const char *name, const char *const *accepted, char *sub, size_t sub_size) {
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
    qd_model_lora_clear(m);   /* the deltas live on the components' weights */
    for (int i = 0; i < 2; i++) {
        qd_clip_tokenizer_free(m->tokenizer[i]);
        qd_clip_text_free(m->text_encoder[i]);
    }
    qd_t5_tokenizer_free(m->t5_tokenizer);
    qd_t5_encoder_free(m->t5);
    qd_unet_free(m->unet);
    qd_sd3_free(m->sd3);
    qd_flux_free(m->flux);
    qd_vae_free(m->vae);
    cJSON_Delete(m->scheduler_config);
    qd_sf_close(m->sf);   /* after the components: their weights point into it */
    free(m);
}

static qd_status load_clip(qd_ctx *ctx, const char *ip, const cJSON *index, const char *dir, qd_model *m, int i,
                           const char *tok_name, const char *enc_name) {
    char sub[4096];
    QD_TRY(component(ctx, ip, index, dir, tok_name, clip_tokenizers, sub, sizeof sub));
    QD_TRY(qd_clip_tokenizer_load(ctx, sub, &m->tokenizer[i]));
    QD_TRY(component(ctx, ip, index, dir, enc_name, clip_encoders, sub, sizeof sub));
    return qd_clip_text_load(ctx, sub, &m->text_encoder[i]);
}

static qd_status load_t5(qd_ctx *ctx, const char *ip, const cJSON *index, const char *dir, qd_model *m,
                         const char *tok_name, const char *enc_name) {
    char sub[4096];
    QD_TRY(component(ctx, ip, index, dir, tok_name, t5_tokenizers, sub, sizeof sub));
    QD_TRY(qd_t5_tokenizer_load(ctx, sub, &m->t5_tokenizer));
    QD_TRY(component(ctx, ip, index, dir, enc_name, t5_encoders, sub, sizeof sub));
    return qd_t5_encoder_load(ctx, sub, &m->t5);
}

/* Each family's components, and the checks that they fit together. */
static qd_status load_components(qd_ctx *ctx, const char *ip, const cJSON *index, const char *dir, qd_model *m) {
    char sub[4096];
    int clip_width = 0;
    switch (m->family) {
    case QD_FAMILY_SD15:
        m->n_clip = 1;
        QD_TRY(load_clip(ctx, ip, index, dir, m, 0, "tokenizer", "text_encoder"));
        QD_TRY(component(ctx, ip, index, dir, "unet", unets, sub, sizeof sub));
        QD_TRY(qd_unet_load(ctx, sub, &m->unet));
        break;
    case QD_FAMILY_SDXL:
        m->n_clip = 2;
        QD_TRY(load_clip(ctx, ip, index, dir, m, 0, "tokenizer", "text_encoder"));
        QD_TRY(load_clip(ctx, ip, index, dir, m, 1, "tokenizer_2", "text_encoder_2"));
        QD_TRY(component(ctx, ip, index, dir, "unet", unets, sub, sizeof sub));
        QD_TRY(qd_unet_load(ctx, sub, &m->unet));
        break;
    case QD_FAMILY_SD3:
        m->n_clip = 2;
        QD_TRY(load_clip(ctx, ip, index, dir, m, 0, "tokenizer", "text_encoder"));
        QD_TRY(load_clip(ctx, ip, index, dir, m, 1, "tokenizer_2", "text_encoder_2"));
        /* the T5 encoder is optional for SD3 (diffusers then feeds zeros) */
        if (component_class(index, "text_encoder_3"))
            QD_TRY(load_t5(ctx, ip, index, dir, m, "tokenizer_3", "text_encoder_3"));
        QD_TRY(component(ctx, ip, index, dir, "transformer", sd3s, sub, sizeof sub));
        QD_TRY(qd_sd3_load(ctx, sub, &m->sd3));
        break;
    case QD_FAMILY_FLUX:
        m->n_clip = 1;
        QD_TRY(load_clip(ctx, ip, index, dir, m, 0, "tokenizer", "text_encoder"));
        QD_TRY(load_t5(ctx, ip, index, dir, m, "tokenizer_2", "text_encoder_2"));
        QD_TRY(component(ctx, ip, index, dir, "transformer", fluxes, sub, sizeof sub));
        QD_TRY(qd_flux_load(ctx, sub, &m->flux));
        break;
    }
    QD_TRY(component(ctx, ip, index, dir, "vae", vaes, sub, sizeof sub));
    QD_TRY(qd_vae_load(ctx, sub, &m->vae));
    const qd_vae_info *vi = qd_vae_get_info(m->vae);
    m->vae_scale = vi->downscale;
    m->latent_channels = vi->latent_channels;
    for (int i = 0; i < m->n_clip; i++) clip_width += qd_clip_text_get_info(m->text_encoder[i])->hidden_size;

    int in_ch = 0, out_ch = 0;
    if (m->unet) {
        const qd_unet_info *u = qd_unet_get_info(m->unet);
        in_ch = u->in_channels;
        out_ch = u->out_channels;
        m->default_size = u->sample_size * m->vae_scale;
        if (u->cross_attention_dim != clip_width)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: unet cross_attention_dim %d does not match the text encoders' width %d",
                           dir, u->cross_attention_dim, clip_width);
        if (m->family == QD_FAMILY_SDXL) {
            int pooled = qd_clip_text_get_info(m->text_encoder[1])->projection_dim;
            if (u->addition_time_embed_dim <= 0 || u->projection_class_embeddings_input_dim != pooled + 6 * u->addition_time_embed_dim)
                return qd_fail(ctx, QD_ERR_FORMAT, "%s: unet is not a text_time (SDXL) UNet matching text_encoder_2", dir);
        }
    } else if (m->sd3) {
        const qd_sd3_info *t = qd_sd3_get_info(m->sd3);
        in_ch = t->in_channels;
        out_ch = t->out_channels;
        m->default_size = t->sample_size * m->vae_scale;
        int pooled = 0;
        for (int i = 0; i < 2; i++) pooled += qd_clip_text_get_info(m->text_encoder[i])->projection_dim;
        if (pooled != t->pooled_projection_dim || clip_width > t->joint_attention_dim ||
            (m->t5 && qd_t5_encoder_dim(m->t5) != t->joint_attention_dim))
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: transformer (pooled %d, joint %d) does not match the text encoders "
                           "(pooled %d, CLIP %d, T5 %d)", dir, t->pooled_projection_dim, t->joint_attention_dim,
                           pooled, clip_width, m->t5 ? qd_t5_encoder_dim(m->t5) : 0);
    } else {
        const qd_flux_info *t = qd_flux_get_info(m->flux);
        in_ch = t->in_channels % 4 ? -1 : t->in_channels / 4;   /* 2x2 packed latents */
        out_ch = t->out_channels % 4 ? -1 : t->out_channels / 4;
        m->default_size = 1024;       /* FLUX has no sample_size; diffusers defaults to 128 * vae_scale */
        if (qd_clip_text_get_info(m->text_encoder[0])->hidden_size != t->pooled_projection_dim ||
            qd_t5_encoder_dim(m->t5) != t->joint_attention_dim)
            return qd_fail(ctx, QD_ERR_FORMAT, "%s: transformer (pooled %d, joint %d) does not match the text encoders "
                           "(CLIP %d, T5 %d)", dir, t->pooled_projection_dim, t->joint_attention_dim,
                           qd_clip_text_get_info(m->text_encoder[0])->hidden_size, qd_t5_encoder_dim(m->t5));
    }
    /* the samplers' buffers are latent-sized: a denoiser whose output is not (config and
     * weights consistent, e.g. a learned-variance UNet) would write past them */
    if (out_ch != m->latent_channels)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: vae latent_channels %d but the denoiser outputs %d channels", dir,
                       m->latent_channels, out_ch);
    /* 9-channel inpainting UNets (latents + mask + masked-image latents): inpaint.c */
    if (m->unet && in_ch == m->latent_channels * 2 + 1) return QD_OK;
    if (in_ch != m->latent_channels)
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: vae latent_channels %d but the denoiser takes %d", dir,
                       m->latent_channels, in_ch);
    return QD_OK;
}

static qd_status open_model(qd_ctx *ctx, const char *dir, qd_model *m) {
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
    else if (p < 0)
        st = qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: pipeline class '%s' is not supported (supported: "
                     "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline)",
                     index_path, cls);
    if (st == QD_OK) {
        snprintf(m->pipeline_class, sizeof m->pipeline_class, "%s", cls);
        m->family = pipelines[p].family;
        m->force_zeros_for_empty_prompt = qd_json_bool(index, "force_zeros_for_empty_prompt", m->family == QD_FAMILY_SDXL);
        st = load_components(ctx, index_path, index, dir, m);
    }
    if (st == QD_OK) {
        /* any class the scheduler registry knows; qd_scheduler_new reports unknown ones */
        const char *sc = component_class(index, "scheduler");
        qd_path_join(sub, sizeof sub, dir, "scheduler");
        if (!sc) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: component 'scheduler' is missing", index_path);
        else if (!qd_dir_exists(sub)) st = qd_fail(ctx, QD_ERR_IO, "%s: component folder is missing", sub);
        if (st == QD_OK) {
            qd_path_join(path, sizeof path, sub, "scheduler_config.json");
            st = qd_json_load(ctx, path, &m->scheduler_config);
        }
        if (st == QD_OK)
            snprintf(m->scheduler_class, sizeof m->scheduler_class, "%s", qd_json_str(m->scheduler_config, "_class_name", sc));
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

qd_status qd_model_open_single_file(qd_ctx *ctx, const char *file, const char *config_from, qd_model **out) {
    *out = NULL;
    if (!config_from) return qd_fail(ctx, QD_ERR_ARG, "%s: a single-file checkpoint needs a diffusers folder of its family for "
                                     "tokenizers, scheduler and configs (--config-from DIR)", file);
    if (!qd_sf_is_file(file)) return qd_fail(ctx, QD_ERR_IO, "%s: not a file", file);
    qd_model *m = calloc(1, sizeof *m);
    if (!m) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    snprintf(m->dir, sizeof m->dir, "%s", file);
    qd_status st = qd_sf_open(ctx, file, config_from, &m->sf);
    if (st == QD_OK) {
        /* the folder's pipeline, with the file's components' weights */
        ctx->weights_from = m->sf;
        st = open_model(ctx, config_from, m);
        ctx->weights_from = NULL;
    }
    if (st != QD_OK) { qd_model_free(m); return st; }
    *out = m;
    return QD_OK;
}

const char *qd_model_family(const qd_model *m) {
    static const char *names[] = {"sd15", "sdxl", "sd3", "flux"};
    return names[m->family];
}
const char *qd_model_scheduler(const qd_model *m) { return m->scheduler_class; }
int qd_model_default_size(const qd_model *m) { return m->default_size; }
/* the latent cell, times the 2x2 patch of the flow transformers */
int qd_model_size_unit(const qd_model *m) { return qd_family_is_flow(m->family) ? 2 * m->vae_scale : m->vae_scale; }
