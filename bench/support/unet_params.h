/* The parameter list of a diffusers UNet2DConditionModel (SD1.x / SDXL options), derived
 * from its config.json the way diffusers names the state dict, independently of the
 * library's loader (so a bench that loads what it wrote checks both). */
#ifndef QD_BENCH_UNET_PARAMS_H
#define QD_BENCH_UNET_PARAMS_H

#include "bench_util.h"
#include "io/json.h"

/* Appends every parameter, in UNet2DConditionModel.__init__ order (diffusers 0.32).
 * Dies naming the key on a config this generator does not support. */
void unet_params(const cJSON *cfg, plist *l);

/* Dies unless cfg is an SD1.x UNet (no addition_embed_type): for the benches whose
 * forward passes no SDXL conditioning. */
void unet_require_sd1(const cJSON *cfg);

#endif
