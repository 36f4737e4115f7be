/* FLUX transformer blocks (internal to flux_transformer.c): FluxTransformerBlock
 * (double stream) and FluxSingleTransformerBlock, diffusers 0.32.2 semantics.
 *
 * Layout: one residual stream h [B, S, D] with S = L + N rows per batch item, the L
 * text rows first, then the N image rows — the order diffusers concatenates them for
 * attention and for the single blocks. Double blocks apply their per-stream weights
 * to row ranges of it; RoPE, qk-norm, attention and the single blocks run over all
 * rows at once. So nothing is ever concatenated or split. */
#ifndef QD_MODELS_FLUX_BLOCKS_H
#define QD_MODELS_FLUX_BLOCKS_H

#include <stdint.h>
#include "base/ctx.h"
#include "models/params.h"

#define QD_FLUX_EPS 1e-6f      /* every LayerNorm and qk RMSNorm of the model */

typedef struct {
    qd_linear_p norm1, norm1_ctx;           /* AdaLayerNormZero linears [6D, D] (image, text) */
    qd_linear_p q, k, v, out;               /* attn.to_q/k/v, to_out.0 (image) */
    qd_linear_p aq, ak, av, aout;           /* attn.add_q/k/v_proj, to_add_out (text) */
    float *nq, *nk, *naq, *nak;             /* attn.norm_q/k, norm_added_q/k [head_dim] */
    qd_linear_p ff_in, ff_out;              /* ff.net.0.proj [F, D], ff.net.2 [D, F] */
    qd_linear_p ffc_in, ffc_out;            /* ff_context.* */
} qd_flux_double;

typedef struct {
    qd_linear_p norm;                       /* AdaLayerNormZeroSingle linear [3D, D] */
    qd_linear_p q, k, v;                    /* attn.to_q/k/v (no output projection) */
    float *nq, *nk;
    qd_linear_p mlp, out;                   /* proj_mlp [F, D], proj_out [D, D + F] */
} qd_flux_single;

/* Activations of one forward pass, allocated once and shared by every block. */
typedef struct {
    int64_t B, L, N, S, D, F;               /* F = MLP width (4 D) */
    int heads;
    int64_t dh;
    int64_t chunk;                          /* rows per MLP pass: bounds hid and cat */
    float *h;                               /* residual stream [B * S, D] */
    float *n;                               /* normalized + modulated input of a branch */
    float *q, *k, *v;                       /* [B * S, D]; q then holds branch outputs */
    float *att;                             /* attention output [B * S, D] */
    float *hid;                             /* MLP hidden [chunk, F] */
    float *cat;                             /* single blocks' proj_out input [chunk, D + F] */
    float *tact;                            /* silu(temb) [B, D] */
    float *mod, *cmod;                      /* modulation vectors [B, 6D] (image / single), [B, 6D] (text) */
    const float *cos_t, *sin_t;             /* RoPE tables [S, dh / 2] */
} qd_flux_ws;

qd_status qd_flux_double_load(qd_params *p, qd_flux_double *b, int i, int64_t D, int64_t F, int64_t dh);
qd_status qd_flux_single_load(qd_params *p, qd_flux_single *b, int i, int64_t D, int64_t F, int64_t dh);

void qd_flux_double_fwd(qd_ctx *ctx, const qd_flux_double *b, qd_flux_ws *w);
void qd_flux_single_fwd(qd_ctx *ctx, const qd_flux_single *b, qd_flux_ws *w);

/* norm_out (AdaLayerNormContinuous: chunks (scale, shift)) of the image rows of w->h
 * into the image rows of w->n; mod [B, 2D] is its linear's output. */
void qd_flux_norm_out(qd_ctx *ctx, qd_flux_ws *w, const float *mod);

#endif
