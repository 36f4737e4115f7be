/* Vectorised SDNQ dequantization for the GEMM's per-tile weight decode (AVX-512):
 * the same numbers as qd_sdnq_decode's scalar path (§1.8 base, + SVD), for layouts
 * without Hadamard rotation, codebook or transposed storage. */
#ifndef QD_QUANT_SDNQ_DECODE_FAST_H
#define QD_QUANT_SDNQ_DECODE_FAST_H

#include <stdint.h>
#include "quant/sdnq_weight.h"

/* Set s->fast / s->lut8 for the layout (at open). */
void qd_sdnq_fast_init(qd_sdnq_state *s);

/* Rows [r0, r0+nr) x cols [k0, k0+nk) into dst (row stride ld). Returns 0 (dst
 * untouched) when the layout or the CPU has no fast path. */
int qd_sdnq_decode_fast(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                        int64_t ld);

/* The same for a bf16 GEMM: the SVD term from bf16 products of bf16-rounded factors
 * (fp32 sums), when the CPU has AVX512_BF16; otherwise exactly qd_sdnq_decode_fast. */
int qd_sdnq_decode_fast_lowp(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld);

/* The base weight (no SVD term), as qd_sdnq_decode_base. 0 when there is no fast path. */
int qd_sdnq_decode_fast_base(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld);

/* The base weight (as qd_sdnq_decode_fast_base) times alpha, rounded to bf16 pairs for the
 * bf16 GEMM's A strips: row r at dst + r*ldw, word p = columns k0+2p (low half), k0+2p+1
 * (high half, 0 past nk); the same bits as rounding qd_sdnq_decode_fast_base's floats
 * (times alpha) to nearest even. For packed 4-bit ints only (the 64-codes-at-a-time path);
 * 0 (nothing written) for other layouts, an odd k0, or without AVX512_BF16. */
int qd_sdnq_decode_base_bf16(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                             int64_t ldw, float alpha);

/* The values q of codes [start, start + n) of the flat stream (as qd_sdnq_unpack_f32).
 * 0 when there is no fast path. */
int qd_sdnq_codes_fast(const qd_sdnq_state *s, int64_t start, int64_t n, float *q);

/* sdnq's transposed int8/uint8 layout (codes [cols, out], no SVD) k-major:
 * panel[k*ld + r] = W[r0+r, k0+k], lanes nr..ld-1 zero; ld a multiple of 16. 0 when
 * the layout or the CPU has no such path. */
int qd_sdnq_decode_kmajor(const qd_sdnq_state *s, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel, int64_t ld);

/* The scalar path (the reference the fast one is tested against). */
void qd_sdnq_decode_scalar(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                           int64_t ld);

#endif
