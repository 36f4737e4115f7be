/* The parameter list of a diffusers AutoencoderKL (Encoder, Decoder, quant convs), derived
 * from its config.json the way diffusers names the state dict, independently of the
 * library's loader (so a bench that loads what it wrote checks both). */
#ifndef QD_BENCH_VAE_PARAMS_H
#define QD_BENCH_VAE_PARAMS_H

#include "bench_util.h"
#include "io/json.h"

/* Appends every parameter of AutoencoderKL(config) (diffusers 0.32 names; mid-block
 * attention, quant_conv and post_quant_conv as the config says). Dies on a config
 * this generator does not support. */
void vae_params(const cJSON *cfg, plist *l);

#endif
