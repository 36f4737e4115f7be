/* A loaded diffusers pipeline folder: its components, ready to generate. */
#ifndef QD_PIPELINE_MODEL_H
#define QD_PIPELINE_MODEL_H

#include <cjson/cJSON.h>
#include "qdiff.h"
#include "models/unet.h"
#include "models/vae.h"
#include "text/clip_text.h"
#include "text/clip_tokenizer.h"

typedef enum { QD_FAMILY_SD15, QD_FAMILY_SDXL } qd_family;

struct qd_model {
    char dir[4096];
    char pipeline_class[96];
    qd_family family;
    int n_text;                     /* 1 (SD1.5) or 2 (SDXL) */
    qd_clip_tokenizer *tokenizer[2];
    qd_clip_text *text_encoder[2];
    qd_unet *unet;
    qd_vae *vae;
    cJSON *scheduler_config;        /* scheduler/scheduler_config.json */
    char scheduler_class[96];
    int force_zeros_for_empty_prompt;
    int vae_scale;                  /* pixels per latent cell */
};

#endif
