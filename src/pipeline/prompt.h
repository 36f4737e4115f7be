/* Prompt conditioning as each diffusers pipeline's encode_prompt builds it. */
#ifndef QD_PIPELINE_PROMPT_H
#define QD_PIPELINE_PROMPT_H

#include "pipeline/model.h"

typedef struct {
    int64_t rows;           /* batch, or 2*batch with guidance: unconditional rows first */
    int64_t L, D;           /* context [rows, L, D] */
    float *context;
    int64_t P;              /* pooled [rows, P]: SDXL text_embeds, SD3 CLIP-L+G projections, FLUX CLIP pooler */
    float *pooled;
    float *time_ids;        /* SDXL [rows, 6], else NULL */
} qd_cond;

/* max_seq: T5 tokens (0: the family's default, 256 SD3, 512 FLUX with guidance embeds, else 256). */
qd_status qd_encode_prompts(qd_ctx *ctx, qd_model *m, const char *prompt, const char *negative,
                            int batch, int guidance, int width, int height, int max_seq, qd_cond *out);
void qd_cond_free(qd_cond *c);

#endif
