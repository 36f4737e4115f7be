/* A1111's "Masked content: fill" for inpainting (inpaint_fill.c). */
#ifndef QD_PIPELINE_INPAINT_FILL_H
#define QD_PIPELINE_INPAINT_FILL_H

#include <stdint.h>
#include "base/ctx.h"

/* out (float NHWC [H, W, 3] in [0, 1], may not alias img) = img with the area of mask
 * ([H, W] in [0, 1], 1 = repaint) painted with blurred colours from around it, as A1111's
 * masking.fill computes it with Pillow on the 8-bit picture and mask (both rounded from
 * the floats: x * 255). */
qd_status qd_inpaint_fill(qd_ctx *ctx, const float *img, const float *mask, int64_t H, int64_t W, float *out);

#endif
