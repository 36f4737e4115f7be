/* Prompt conditioning as diffusers' StableDiffusion(XL)Pipeline.encode_prompt builds it. */
#ifndef QD_PIPELINE_PROMPT_H
#define QD_PIPELINE_PROMPT_H

#include "pipeline/model.h"

typedef struct {
    int64_t rows;           /* batch, or 2*batch with guidance: unconditional rows first */
    int64_t L, D;           /* context [rows, L, D] */
    float *context;
    int64_t P;              /* SDXL: text_embeds [rows, P] and time_ids [rows, 6]; else NULL */
    float *text_embeds;
    float *time_ids;
} qd_cond;

qd_status qd_encode_prompts(qd_ctx *ctx, qd_model *m, const char *prompt, const char *negative,
                            int batch, int guidance, int width, int height, qd_cond *out);
void qd_cond_free(qd_cond *c);

#endif
