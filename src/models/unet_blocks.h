/* The layers UNet2DConditionModel is made of (diffusers 0.32.2 semantics):
 * ResnetBlock2D and Transformer2DModel with its BasicTransformerBlocks. Private to
 * unet.c. Activations are NCHW float32 from the context's step arena (base/act_pool.h);
 * forward functions return new arena buffers (release with qd_act_free) or work in
 * place as documented, and release their temporaries before returning. */
#ifndef QD_MODELS_UNET_BLOCKS_H
#define QD_MODELS_UNET_BLOCKS_H

#include <stdint.h>
#include "base/ctx.h"
#include "models/params.h"

/* ResnetBlock2D with time_embedding_norm "default". */
typedef struct {
    int64_t cin, cout;
    int groups;
    float eps, out_scale;       /* output = (shortcut + h) / out_scale */
    qd_norm_p norm1, norm2;
    qd_conv_p conv1, conv2;
    qd_linear_p temb_proj;
    int has_shortcut;           /* 1x1 conv_shortcut when cin != cout */
    qd_conv_p shortcut;
} qd_unet_resnet;

/* BasicTransformerBlock: self-attn, cross-attn, GEGLU feed-forward, pre-LayerNorm each. */
typedef struct {
    qd_norm_p norm1, norm2, norm3;
    qd_linear_p q1, k1, v1, o1;     /* attn1 (self) */
    qd_linear_p q2, k2, v2, o2;     /* attn2 (cross) */
    qd_linear_p ff1, ff2;           /* ff.net.0.proj [2F, D], ff.net.2 [D, F] */
} qd_unet_tblock;

/* Transformer2DModel (continuous input). proj_in/proj_out are Linear or 1x1 Conv: the
 * same matrix either way, applied per pixel. */
typedef struct {
    int64_t C, inner, dh, cross_dim, ff;
    int heads, groups, depth;
    qd_norm_p norm;             /* GroupNorm(groups, C, eps=1e-6) */
    qd_linear_p proj_in, proj_out;
    qd_unet_tblock *blocks;
} qd_unet_xformer;

/* Loaders: every tensor shape-checked, names as "<prefix>.<sub>". */
qd_status qd_unet_resnet_load(qd_params *p, qd_unet_resnet *r, int64_t cin, int64_t cout, int64_t temb_dim,
                              int groups, float eps, float out_scale, const char *prefix);
qd_status qd_unet_xformer_load(qd_params *p, qd_unet_xformer *t, int64_t C, int heads, int depth,
                               int64_t cross_dim, int groups, int linear_proj, const char *prefix);
void qd_unet_xformer_free(qd_unet_xformer *t);

/* x [B, cin, H, W] -> *out [B, cout, H, W] (new buffer). temb [B, temb_dim] is the time
 * embedding after the resnets' activation (silu, unless resnet_skip_time_act). */
qd_status qd_unet_resnet_fwd(qd_ctx *ctx, const qd_unet_resnet *r, const float *x, int64_t B, int64_t H,
                             int64_t W, const float *temb, float **out);

/* x [B, C, H, W] updated in place; context [B, L, cross_dim]. */
qd_status qd_unet_xformer_fwd(qd_ctx *ctx, const qd_unet_xformer *t, float *x, int64_t B, int64_t H, int64_t W,
                              const float *context, int64_t L);

/* Parallel elementwise helpers. */
void qd_unet_add_scaled(qd_ctx *ctx, float *y, const float *x, int64_t n, float scale); /* y = (y + x) / scale */

#endif
