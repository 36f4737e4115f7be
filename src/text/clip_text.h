/* CLIP text encoder (transformers' CLIPTextModel / CLIPTextModelWithProjection). */
#ifndef QD_TEXT_CLIP_TEXT_H
#define QD_TEXT_CLIP_TEXT_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_clip_text qd_clip_text;

typedef struct {
    int hidden_size, num_layers, num_heads, intermediate_size, max_positions, vocab_size;
    int projection_dim;     /* 0 without a text projection */
    int eos_token_id;
} qd_clip_text_info;

/* dir = the text_encoder folder (config.json + model.safetensors). */
qd_status qd_clip_text_load(qd_ctx *ctx, const char *dir, qd_clip_text **out);
void qd_clip_text_free(qd_clip_text *m);
/* Its loaded parameters (generation-time LoRAs attach to their weights). */
struct qd_params *qd_clip_text_params(qd_clip_text *m);
const qd_clip_text_info *qd_clip_text_get_info(const qd_clip_text *m);

/* ids [B, L]. Outputs may be NULL when not wanted:
 *   last   [B, L, D]  last_hidden_state (after the final LayerNorm)
 *   penult [B, L, D]  hidden_states[-2] (output of the second-to-last layer, no final norm)
 *   pooled [B, D]     last_hidden_state at the first EOS token
 *   proj   [B, P]     text_embeds = pooled . text_projection^T (WithProjection only) */
qd_status qd_clip_text_forward(qd_ctx *ctx, qd_clip_text *m, const int32_t *ids, int64_t B, int64_t L,
                               float *last, float *penult, float *pooled, float *proj);

#endif
