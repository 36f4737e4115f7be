/* A loaded diffusers pipeline folder: its components, ready to generate. */
#ifndef QD_PIPELINE_MODEL_H
#define QD_PIPELINE_MODEL_H

#include <cjson/cJSON.h>
#include "qdiff.h"
#include "models/flux_transformer.h"
#include "models/sd3_transformer.h"
#include "models/unet.h"
#include "models/vae.h"
#include "text/clip_text.h"
#include "text/clip_tokenizer.h"
#include "text/t5_encoder.h"
#include "text/t5_tokenizer.h"

typedef enum { QD_FAMILY_SD15, QD_FAMILY_SDXL, QD_FAMILY_SD3, QD_FAMILY_FLUX } qd_family;

struct qd_model {
    char dir[4096];
    char pipeline_class[96];
    qd_family family;
    int n_clip;                     /* CLIP tokenizer/encoder pairs: 1 (SD1.5, FLUX) or 2 */
    qd_clip_tokenizer *tokenizer[2];
    qd_clip_text *text_encoder[2];
    qd_t5_tokenizer *t5_tokenizer;  /* SD3 (optional), FLUX */
    qd_t5_encoder *t5;
    qd_unet *unet;                  /* exactly one denoiser */
    qd_sd3 *sd3;
    qd_flux *flux;
    qd_vae *vae;
    cJSON *scheduler_config;        /* scheduler/scheduler_config.json */
    char scheduler_class[96];
    int force_zeros_for_empty_prompt;
    int vae_scale;                  /* pixels per latent cell */
    int latent_channels;
    int default_size;               /* native image side in pixels */
    struct qd_single_file *sf;      /* opened from a single-file checkpoint: its mapping, kept while the model lives */
    struct qd_model_lora *lora;     /* generation-time LoRAs attached (model_lora.c), or NULL */
};

/* Whether the family predicts flow velocity (SD3, FLUX) rather than noise. */
static inline int qd_family_is_flow(qd_family f) { return f == QD_FAMILY_SD3 || f == QD_FAMILY_FLUX; }

#endif
