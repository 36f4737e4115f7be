/* An SDNQ layer as a qd_weight: decode() dequantizes exactly the rectangle the
 * GEMM asks for (spec sdnq.md §1.8: unpack, scale/zero-point or codebook, SVD,
 * Hadamard), so the weight stays quantized in the mapped file. */
#ifndef QD_QUANT_SDNQ_WEIGHT_H
#define QD_QUANT_SDNQ_WEIGHT_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"
#include "tensor/weight.h"
#include "quant/sdnq_config.h"
#include "quant/sdnq_layout.h"

/* What decode() reads. Float arrays point into the mapping when the file stores
 * them as aligned F32, else at converted copies in the same allocation. */
typedef struct {
    qd_sdnq_layout l;
    const uint8_t *codes;           /* the weight tensor's bytes */
    const float *scale;             /* scale, or the codebook LUT */
    const float *zero_point;        /* NULL when symmetric */
    const float *svd_up;            /* [out, r] */
    const float *svd_down;          /* [r, cols] */
    int64_t so, sg, sp;             /* scale index = o*so + group*sg + kernel_pos*sp */
    int64_t lut_size;               /* codebook levels (2^bits) */
    int fast;                       /* qd_sdnq_decode_fast handles this layout */
    int u4;                         /* ... and its codes are packed 4-bit ints (the 64-at-a-time path) */
    int kmajor;                     /* qd_sdnq_decode_kmajor handles it (transposed int8/uint8) */
    int has_lut8;                   /* lut8 holds the value of every raw code (float codes of <= 8 bits) */
    float lut8[256];
    int32_t conv_pos[16][16], conv_ch[16][16];   /* Conv (ksize <= 16): per phase, lane % ksize, lane / ksize */
    int conv_nph[16], conv_nst[16];              /* ... and the next 16 columns' phase and channel step */
    const uint32_t *svd_up_bf16;    /* [out, ceil(r/2)] bf16 pairs (t = 2p low), NULL without SVD */
    const uint32_t *svd_down_bf16;  /* [ceil(r/2), cols] bf16 pairs of rows 2p, 2p+1 */
} qd_sdnq_state;

/* Build the weight of one layer. `prefix` finds the tensors ("<prefix>.weight",
 * ".scale", ".zero_point", ".svd_up", ".svd_down"); `module` is the name the
 * config's lists match ("<module>.weight"; usually module == prefix). shape is the
 * logical weight shape: [out, in] (Linear/Embedding) or [out, in, k...] (Conv).
 * On success *w is ready and *state (release with free()) owns all it points to
 * apart from the mapped file. Errors name the layer and what was expected. */
qd_status qd_sdnq_weight_open(qd_ctx *ctx, const qd_sdnq_config *cfg, const qd_st_set *st, const char *prefix,
                              const char *module, qd_sdnq_class cls, int ndim, const int64_t *shape,
                              qd_weight *w, void **state);

/* w (cleared first) = the qd_weight of a prepared state: its size and the decode hooks the
 * layout allows (exact decode; bf16 low-rank decode with SVD; k-major for transposed
 * int8/uint8; 4-bit codes straight to bf16 pairs; the base plus the low-rank factors when
 * the GEMM may apply up.down itself). w->t is left NULL for the caller. What
 * qd_sdnq_weight_open ends with; tests and benches build states by hand and bind them here. */
void qd_sdnq_weight_bind(qd_weight *w, const qd_sdnq_state *s);

/* The SVD factors (up [out, r], down [r, cols]) as bf16 pairs along the rank: up_pairs
 * [out, ceil(r/2)], down_pairs [ceil(r/2), cols], pair p = (2p low, 2p+1 high; 0 past r). */
void qd_sdnq_svd_bf16_pairs(const float *up, const float *down, int64_t out, int64_t cols, int64_t r,
                            uint32_t *up_pairs, uint32_t *down_pairs);

/* The weight before SVD and Hadamard (q * scale + zero_point, or the codebook
 * level) for rows [r0, r0+nr) x cols [k0, k0+nk): what quantized matmul re-quantizes. */
void qd_sdnq_decode_base(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);

/* The full dequantized weight (§1.8: base, + SVD, . H) for the same rectangle:
 * what decode() of the layer's qd_weight gives. */
void qd_sdnq_decode(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld);

#endif
