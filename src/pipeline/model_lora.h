/* Generation-time LoRAs on a loaded model: low-rank deltas attached to the weights
 * (tensor/lora_path.h) of the denoiser and text encoders, changed per call without
 * reloading anything. */
#ifndef QD_PIPELINE_MODEL_LORA_H
#define QD_PIPELINE_MODEL_LORA_H

#include "pipeline/model.h"

/* Make exactly these LoRAs (scale 0 ones dropped) active on the model. The same list as
 * the active one (paths, scales, and each file's size and modification time) costs
 * nothing; another list detaches the old deltas and attaches the new ones; n == 0
 * detaches everything, leaving the model as loaded. On failure the model has none. */
qd_status qd_model_use_loras(qd_ctx *ctx, qd_model *m, const char *const *paths, const float *scales, int n);
/* Detach and free every delta (before the model's components are freed). */
void qd_model_lora_clear(qd_model *m);

#endif
