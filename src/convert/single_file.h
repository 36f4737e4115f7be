/* Single-file checkpoints (one .safetensors holding a whole pipeline or just its
 * denoiser) seen as diffusers components: the family is recognised from the keys,
 * every tensor is given its diffusers component and name, and each component's
 * tensors are presented as a qd_st_set the SDNQ writer walks like a folder's file.
 *
 * Families: SD1.x and SDXL in the original LDM layout (model.diffusion_model.*
 * UNet, first_stage_model.* VAE, cond_stage_model.transformer.* /
 * conditioner.embedders.0/1.* text encoders), and FLUX.1 in the BFL/ComfyUI layout
 * (double_blocks/single_blocks, with or without model.diffusion_model., plus a full
 * ComfyUI checkpoint's vae.* and text_encoders.clip_l/t5xxl.*), whole checkpoints or
 * diffusion-model-only files; SD3/SD3.5 in the Stability layout (joint_blocks, with or
 * without model.diffusion_model.; a full checkpoint's first_stage_model.* VAE and
 * text_encoders.clip_l/clip_g/t5xxl.*). The mapping follows
 * diffusers' own single-file conversion (convert_ldm_unet_checkpoint,
 * convert_ldm_vae_checkpoint, convert_open_clip_checkpoint,
 * convert_flux_transformer_checkpoint_to_diffusers, convert_sd3_transformer_checkpoint_to_diffusers).
 *
 * Converted tensors are views of the mapped file: a renamed tensor, a reshaped one
 * (the VAE's 1x1-conv q/k/v/proj_out become Linear weights: same bytes) and a row
 * slice of a fused weight (FLUX qkv / linear1, OpenCLIP in_proj) point into the
 * file. Only two kinds of small tensors are rebuilt in memory: FLUX's and SD3's final
 * modulation and SD3's last context modulation (diffusers swaps their shift/scale halves) and OpenCLIP's
 * text_projection (diffusers stores its transpose); they get pages of their own
 * (qd_st_release on them is harmless). */
#ifndef QD_CONVERT_SINGLE_FILE_H
#define QD_CONVERT_SINGLE_FILE_H

#include "base/ctx.h"
#include "io/safetensors.h"

typedef enum { QD_SF_SD1, QD_SF_SDXL, QD_SF_FLUX, QD_SF_SD3 } qd_sf_family;

#define QD_SF_MAX_COMPONENTS 6

typedef struct {
    char name[32];              /* "unet", "vae", "text_encoder", "text_encoder_2", "transformer" */
    char cls[64];               /* diffusers / transformers class of the component */
    char weights_name[48];      /* file name in a diffusers folder */
    qd_st_set view;             /* its tensors under diffusers names, sorted; borrowed (never qd_st_close) */
    char *config;               /* config.json text: from --config-from, else inferred; NULL: unknown */
    int config_inferred;        /* 1: written by qdiff from the shapes and the family's defaults */
} qd_sf_component;

typedef struct qd_single_file qd_single_file;

/* 1 when path is a regular file (a checkpoint), 0 for a folder or nothing. */
int qd_sf_is_file(const char *path);

/* Open, recognise and map a checkpoint. config_from: a diffusers folder of the same
 * family whose component configs are used (NULL: infer them). Errors name the file,
 * the family and the first tensors that could not be mapped. */
qd_status qd_sf_open(qd_ctx *ctx, const char *path, const char *config_from, qd_single_file **out);
void qd_sf_close(qd_single_file *sf);

qd_sf_family qd_sf_family_of(const qd_single_file *sf);
const char *qd_sf_family_name(const qd_single_file *sf);
const char *qd_sf_path(const qd_single_file *sf);
const char *qd_sf_config_from(const qd_single_file *sf);   /* NULL when none */
int qd_sf_n_components(const qd_single_file *sf);
const qd_sf_component *qd_sf_component_at(const qd_single_file *sf, int i);
const qd_sf_component *qd_sf_find_component(const qd_single_file *sf, const char *name);
/* The family's denoiser component name: "unet" or "transformer". */
const char *qd_sf_denoiser(const qd_single_file *sf);

/* Complete a diffusers folder at dir (existing, holding the components already
 * written, named in `done`, n_done): the file's other components unquantized
 * (weights streamed, config.json), then from config_from everything the file does
 * not provide (model_index.json, tokenizers, scheduler, other components: hard
 * links or copies), or without it qdiff's model_index.json and the family's default
 * scheduler. *missing (malloc'd, may be NULL when nothing is): comma-separated
 * parts the folder still lacks (e.g. "tokenizer,tokenizer_2"). */
qd_status qd_sf_complete_folder(qd_ctx *ctx, const qd_single_file *sf, const char *dir, const char *const *done,
                                int n_done, char **missing);

/* The diffusers UNet2DConditionModel name of an original-SD (LDM) UNet tensor name given
 * without "model.diffusion_model.", by the same map qd_sf_open uses, for a UNet with
 * layers_per_block resnets per level: "input_blocks.4.1.proj_in.weight" ->
 * "down_blocks.1.attentions.0.proj_in.weight" (layers_per_block 2). 1 and the name in
 * out, or 0 (out "") when the key has no diffusers counterpart. For LoRA key names. */
int qd_sf_ldm_unet_name(int layers_per_block, const char *ldm_key, char *out, size_t size);

/* Parts neither the file nor config_from provides (malloc'd list as above, or NULL). */
char *qd_sf_missing(const qd_single_file *sf);

#endif
