/* 16 x 16 transpose of 32-bit lanes in AVX-512 registers, shared by the GEMM's B-strip
 * packer (gemm_pack.c) and the int8 conv's NCHW <-> NHWC copies (sdnq_conv_i8.c). */
#ifndef QD_TENSOR_TRANSPOSE16_H
#define QD_TENSOR_TRANSPOSE16_H

#include <immintrin.h>

/* out[c] lane i = r[i] lane c: unpack 32-bit, then 64-bit pairs, then two 128-bit shuffles. */
__attribute__((target("avx512f")))
static inline void qd_transpose16(const __m512i r[16], __m512i out[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {   /* u[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3 */
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i v = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), w = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        __m512i v2 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee), w2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
        out[c] = _mm512_shuffle_i32x4(v, w, 0x88);
        out[4 + c] = _mm512_shuffle_i32x4(v, w, 0xdd);
        out[8 + c] = _mm512_shuffle_i32x4(v2, w2, 0x88);
        out[12 + c] = _mm512_shuffle_i32x4(v2, w2, 0xdd);
    }
}

#endif
