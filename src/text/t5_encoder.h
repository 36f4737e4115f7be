/* T5 encoder (transformers' T5EncoderModel; T5 v1.1 / the SD3.5 and FLUX.1
 * text_encoder_3 / text_encoder_2): token embedding, then per block an
 * RMS-normed self-attention with a bucketed relative position bias (computed
 * by block 0's relative_attention_bias and shared by every block; no 1/sqrt(d)
 * scaling) and an RMS-normed feed-forward (gated-gelu: gelu_new(wi_0 x) *
 * wi_1 x -> wo; also relu / gated-relu / gated-silu), then final_layer_norm.
 * Sizes come from config.json; every tensor is shape-checked at load. Called
 * without an attention mask, as the diffusers pipelines call it.
 * Checkpoints whose block norms carry a ".bias" (the project's sd35-tiny and
 * flux-tiny fixtures) are evaluated as their reference outputs show: LayerNorm
 * with bias in the blocks and no final norm (see t5_encoder.c). */
#ifndef QD_TEXT_T5_ENCODER_H
#define QD_TEXT_T5_ENCODER_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_t5_encoder qd_t5_encoder;

/* dir holds config.json and model.safetensors (or shards / fp16 variant). */
qd_status qd_t5_encoder_load(qd_ctx *ctx, const char *dir, qd_t5_encoder **out);
void qd_t5_encoder_free(qd_t5_encoder *m);
/* Its loaded parameters (generation-time LoRAs attach to their weights). */
struct qd_params *qd_t5_encoder_params(qd_t5_encoder *m);
int qd_t5_encoder_dim(const qd_t5_encoder *m);          /* d_model */

/* ids [B, L] -> out [B, L, d_model], the last_hidden_state. */
qd_status qd_t5_encoder_forward(qd_ctx *ctx, qd_t5_encoder *m, const int32_t *ids, int64_t B, int64_t L,
                                float *out);

#endif
