/* The inverse of sdnq_unpack: numbers to SDNQ codes (spec sdnq.md §1.7 encode,
 * torch's round-to-nearest-even casts for native floats) and codes to the stored
 * word stream (§1.6). The bit layouts are not written out a second time: each
 * packed width's bit map is read off the unpacker itself, so what is written is
 * by construction what the reader decodes. */
#ifndef QD_QUANT_SDNQ_PACK_H
#define QD_QUANT_SDNQ_PACK_H

#include <stdint.h>
#include "base/ctx.h"
#include "quant/sdnq_unpack.h"

/* The code of a float value (already divided by the scale, not NaN) for a float
 * family: custom floats per §1.7 (clamped to the type's range first), native
 * F32/BF16/F16/F8 as torch casts them (round to nearest even, clamped to the
 * largest finite value). */
uint32_t qd_sdnq_float_code(const qd_sdnq_dtype *dt, float x);

/* Store n codes as the type's on-disk elements. codes[] are raw patterns: the
 * integer value for unsigned types, q + 2^(N-1) for packed signed ints, two's
 * complement bits for native signed ints, the bit pattern for floats. dst holds
 * qd_sdnq_storage_elems(dt, n) elements of dt->storage. n must be a whole number
 * of packing blocks (checked by the caller through qd_sdnq_storage_elems). */
qd_status qd_sdnq_pack(qd_ctx *ctx, const qd_sdnq_dtype *dt, const uint32_t *codes, int64_t n, void *dst);

#endif
