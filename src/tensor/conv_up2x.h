/* Nearest 2x upsampling followed by a 3x3 convolution (pad 1), without the upsampled
 * image: output pixel (2i+py, 2j+px) only sees input rows {i-1, i} (py = 0) or {i, i+1}
 * (py = 1), and likewise columns, so each of the four output phases is a 2x2 conv of the
 * small input whose taps are sums of the 3x3 taps: 4/9 of the multiply-adds and a
 * quarter-size phase buffer instead of a full-size copy. Used by the VAE's Upsample2D
 * and TAESD's Upsample + conv. */
#ifndef QD_TENSOR_CONV_UP2X_H
#define QD_TENSOR_CONV_UP2X_H

#include "tensor/ops.h"
#include "tensor/weight.h"

typedef struct {
    int64_t cout, cin;
    qd_st_tensor t[4];   /* phase p = 2 * py + px: [cout, cin * 4] fp32 */
    qd_weight w[4];
} qd_up2x_conv;

/* Fold the 3x3 weight w3 ([cout, cin * 9]) into u's four phase weights, stored in
 * `phases` (4 * cout * cin * 4 floats, owned by the caller and kept for u's life);
 * `scratch` holds cout * cin * 9 floats. `file` names the weights' file in errors. */
void qd_up2x_fold(const qd_weight *w3, int64_t cout, int64_t cin, float *scratch, float *phases, const char *file,
                  qd_up2x_conv *u);

/* y [B, cout, 2H, 2W] = conv3x3(upsample2x(x)) + bias, x [B, cin, H, W]; `phase` holds
 * B * cout * H * W floats. */
void qd_up2x_conv_run(qd_ctx *ctx, const qd_up2x_conv *u, const float *x, int64_t B, int64_t H, int64_t W,
                      const float *bias, float *phase, float *y);

#endif
