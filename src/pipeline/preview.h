/* Live previews during sampling, shared by the diffusers-scheduler loop and the
 * k-sampler loop. */
#ifndef QD_PIPELINE_PREVIEW_H
#define QD_PIPELINE_PREVIEW_H

#include <stdint.h>
#include "qdiff.h"

/* Decode z, the clean-image estimate of one image as latents [C, h, w] (FLUX's
 * unpacked), with p->preview_vae and hand the picture to p->preview(step, total).
 * When the image would exceed p->preview_max_size pixels on its longer side, the
 * latents are first box-averaged by the smallest integer factor that fits: a
 * TAESD decode at 512x512 is ~140 GFLOP, 13-16% of an SD1.5 cfg step, at 256x256
 * a quarter of that (bench_preview). */
qd_status qd_send_preview(qd_ctx *ctx, const qd_gen_params *p, const float *z, int64_t C, int64_t h, int64_t w,
                          int step, int total);

#endif
