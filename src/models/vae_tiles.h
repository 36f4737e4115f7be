/* Running an image-to-image network over overlapping tiles with linear blending, so
 * memory is bounded by the tile size (the tiled AutoencoderKL decode and encode). */
#ifndef QD_MODELS_VAE_TILES_H
#define QD_MODELS_VAE_TILES_H

#include <stdint.h>
#include "base/ctx.h"

/* One tile: in [B, cin, h, w] -> out0 (and out1 when the plan has two outputs)
 * [B, cout, h*num/den, w*num/den]. */
typedef qd_status (*qd_tile_fn)(qd_ctx *ctx, void *user, const float *in, int64_t h, int64_t w,
                                float *out0, float *out1);

typedef struct {
    int64_t B, cin, H, W;   /* the whole input [B, cin, H, W] */
    int64_t cout;           /* channels of each output [B, cout, H*num/den, W*num/den] (floor) */
    int nout;               /* 1 or 2 outputs */
    int num, den;           /* output pixels per input pixel: num/den (decode f/1, encode 1/f) */
    int64_t tile, overlap;  /* input pixels, multiples of den; 0 < 2*overlap <= tile */
} qd_tile_plan;

/* Tiles start at multiples of tile - overlap (the last one flush with the far edge, at
 * a multiple of den); where tiles overlap, each output pixel is the weighted mean of
 * the tiles covering it, a tile's weight ramping linearly from 0 at its inner edge to
 * 1 at `overlap` pixels in (edges on the image border keep weight 1). */
qd_status qd_tiles_run(qd_ctx *ctx, const qd_tile_plan *p, const float *in, qd_tile_fn fn, void *user,
                       float *out0, float *out1);

#endif
