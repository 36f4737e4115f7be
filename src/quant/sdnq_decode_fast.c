/* AVX-512 dequantization of SDNQ rows (§1.8 without Hadamard and codebook): what
 * the GEMM's packers call for each small K tile of a weight, so it must cost a few
 * cycles per element, not the scalar path's tens.
 *
 * Per row: codes -> values 16 at a time (native 8-bit ints, 4/2/1-bit packed ints
 * by duplicating bytes and shifting lanes, float codes of <= 8 bits through a
 * 256-entry table, fp16/bf16 by conversion; other packed widths unpack scalar and
 * convert here), then q*scale (+ zero point) over runs of one group (Conv: the scale
 * pattern of a group expanded once per row), then + up.down summed over the rank in
 * registers. Every element, tails included, goes through the same vector code, so
 * any rectangle decodes to the same bits as the whole matrix. */
#include "quant/sdnq_decode_fast.h"
#include "quant/sdnq_unpack.h"
#include "base/half.h"
#include "tensor/bf16_pairs.h"

#include <immintrin.h>
#include <string.h>

#define PIECE 256   /* columns per step (stack buffers) */

static int cpu_ok(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") ? 1 : 0;
    }
    return has;
}

void qd_sdnq_fast_init(qd_sdnq_state *s) {
    const qd_sdnq_layout *l = &s->l;
    const qd_sdnq_dtype *d = &l->dtype;
    s->fast = 0;
    s->has_lut8 = 0;
    /* sdnq's quantized-matmul layout: int8/uint8 codes [cols, out], one scale per output */
    s->kmajor = l->transposed && !d->packed && (d->family == QD_SQ_INT || d->family == QD_SQ_UINT) && d->bits == 8 &&
                !l->svd && !l->hadamard && !l->codebook;
    if (l->hadamard || l->codebook || l->transposed) return;
    if (l->ksize > 1 && l->ksize <= 16)   /* conv_next's tables: lane positions / channel offsets per phase */
        for (int ph = 0; ph < l->ksize; ph++) {
            for (int ln = 0; ln < 16; ln++) {
                s->conv_pos[ph][ln] = (int32_t)((ph + ln) % l->ksize);
                s->conv_ch[ph][ln] = (int32_t)((ph + ln) / l->ksize);
            }
            s->conv_nph[ph] = (int)((ph + 16) % l->ksize);
            s->conv_nst[ph] = (int)((ph + 16) / l->ksize);
        }
    if ((d->family == QD_SQ_FLOAT || d->family == QD_SQ_CFLOAT) && d->bits <= 8) {
        /* value of every raw code: the scalar unpacker's own numbers */
        int n = 1 << d->bits;
        for (int c = 0; c < 256; c++) s->lut8[c] = 0;
        for (int c = 0; c < n; c++) {
            if (d->family == QD_SQ_CFLOAT) s->lut8[c] = qd_sdnq_cfloat_value(d, (uint32_t)c);
            else if (d->storage == QD_F8_E4M3) s->lut8[c] = qd_f8e4m3_to_f32((uint8_t)c);
            else s->lut8[c] = qd_f8e5m2_to_f32((uint8_t)c);
        }
        s->has_lut8 = 1;
    }
    /* packed 4-bit ints without a table: the 64-codes-at-a-time path */
    s->u4 = d->packed && d->bits == 4 && (d->family == QD_SQ_INT || d->family == QD_SQ_UINT);
    s->fast = 1;
}

/* ---- codes -> values ---- */

/* How values() finishes each vector: the code's value q, q * scale, q * scale + zero, or
 * the zero point alone (an all-zero group, §1.10). */
enum { AS_Q, AS_QS, AS_QSZ, AS_Z, AS_VEC, AS_CONV };   /* AS_VEC: per-lane scale / zero point from arrays;
                                                        AS_CONV: generated per vector (conv_scales) */

/* Conv scales (index o*so + group*sg + kernel_pos, sp = 1) for 16 consecutive columns,
 * made in registers: the ksize scales of the vector's group (and of the next one, when
 * the vector crosses into it) picked per lane with one permute. Per phase (position of
 * the first lane in its channel) the lanes' positions and channel offsets, and the next
 * vector's phase, come from the layer's tables (qd_sdnq_fast_init). ks <= 16. */
typedef struct {
    const float *scale, *zp;    /* at the row's first group */
    int64_t sg, groups;
    int ks, gs;
    int ph, cg;                 /* first lane: position in its channel, channel in its group */
    int64_t g;                  /* first lane's group */
    const qd_sdnq_state *st;    /* its conv_pos / conv_ch / conv_nph / conv_nst tables, per phase */
} conv_scales;

/* The running state of conv_next, in locals of values() so it stays in registers (through
 * the struct, each vector's phase would wait on the previous one's store). */
typedef struct {
    int ph, cg;
    int64_t g, loaded;
    __m512 a, za, b, zb;
} conv_run;

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) void conv_next(const conv_scales *c, conv_run *r, __m512 *sc, __m512 *z) {
    if (r->loaded != r->g) {   /* once per group */
        __mmask16 km = (__mmask16)((1u << c->ks) - 1);
        const float *s0 = c->scale + r->g * c->sg;
        int more = r->g + 1 < c->groups;
        r->a = _mm512_maskz_loadu_ps(km, s0);
        r->b = more ? _mm512_maskz_loadu_ps(km, s0 + c->sg) : r->a;
        r->za = c->zp ? _mm512_maskz_loadu_ps(km, c->zp + r->g * c->sg) : _mm512_setzero_ps();
        r->zb = c->zp && more ? _mm512_maskz_loadu_ps(km, c->zp + (r->g + 1) * c->sg) : r->za;
        r->loaded = r->g;
    }
    __m512i pos = _mm512_loadu_si512(c->st->conv_pos[r->ph]), ch = _mm512_loadu_si512(c->st->conv_ch[r->ph]);
    __mmask16 next = _mm512_cmpge_epi32_mask(_mm512_add_epi32(ch, _mm512_set1_epi32(r->cg)), _mm512_set1_epi32(c->gs));
    __m512i idx = _mm512_mask_add_epi32(pos, next, pos, _mm512_set1_epi32(16));
    *sc = _mm512_permutex2var_ps(r->a, idx, r->b);
    *z = c->zp ? _mm512_permutex2var_ps(r->za, idx, r->zb) : _mm512_setzero_ps();
    r->cg += c->st->conv_nst[r->ph];
    r->ph = c->st->conv_nph[r->ph];
    if (r->cg >= c->gs) { r->cg -= c->gs; r->g++; }   /* once per group: predictable */
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512 finish(__m512 v, __m512 sc, __m512 z, int how) {
    return how == AS_Q ? v : how == AS_QS ? _mm512_mul_ps(v, sc) : how == AS_QSZ ? _mm512_add_ps(_mm512_mul_ps(v, sc), z) : z;
}

/* AS_VEC: q * sv[i] (+ zv[i]), or zv[i] where sv[i] == 0. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512 finish_vec(__m512 v, __mmask16 m, const float *sv, const float *zv) {
    __m512 sc = _mm512_maskz_loadu_ps(m, sv), z = zv ? _mm512_maskz_loadu_ps(m, zv) : _mm512_setzero_ps();
    __m512 r = zv ? _mm512_add_ps(_mm512_mul_ps(v, sc), z) : _mm512_mul_ps(v, sc);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sc, _mm512_setzero_ps(), _CMP_EQ_OQ), r, z);
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512 finish_conv(__m512 v, const conv_scales *cs, conv_run *r) {
    __m512 sc, z;
    conv_next(cs, r, &sc, &z);
    __m512 o = cs->zp ? _mm512_add_ps(_mm512_mul_ps(v, sc), z) : _mm512_mul_ps(v, sc);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sc, _mm512_setzero_ps(), _CMP_EQ_OQ), o, z);
}

/* n <= PIECE codes [start, start + n) as values into q, finished as `how` says (sc, z:
 * one scale and zero point for the whole run; AS_VEC: per element from sv, zv). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void values(const qd_sdnq_state *s, int64_t start, int64_t n, float *q, __m512 sc, __m512 z, int how,
                   const float *sv, const float *zv, const conv_scales *cs) {
    conv_run run = {cs ? cs->ph : 0, cs ? cs->cg : 0, cs ? cs->g : 0, -1, _mm512_setzero_ps(), _mm512_setzero_ps(),
                    _mm512_setzero_ps(), _mm512_setzero_ps()};
#define FIN(v) (how == AS_CONV ? finish_conv((v), cs, &run) : how == AS_VEC ? finish_vec((v), m, sv + i, zv ? zv + i : NULL) \
                               : finish((v), sc, z, how))
    const qd_sdnq_dtype *d = &s->l.dtype;
    const uint8_t *data = s->codes;
    const float *lut = s->has_lut8 ? s->lut8 : NULL;
    if (!d->packed && qd_dtype_size(d->storage) == 1) {   /* int8, uint8, fp8 (torch or sdnq's e4m3 as U8) */
        int sgn = !lut && d->family == QD_SQ_INT;
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
            __m128i b = _mm_maskz_loadu_epi8(m, data + start + i);
            __m512 v = lut ? _mm512_i32gather_ps(_mm512_cvtepu8_epi32(b), lut, 4)
                     : sgn ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)) : _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
            _mm512_mask_storeu_ps(q + i, m, FIN(v));
        }
        return;
    }
    if (!d->packed && (d->storage == QD_F16 || d->storage == QD_BF16)) {
        const uint16_t *h = (const uint16_t *)data + start;
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
            __m256i v = _mm256_maskz_loadu_epi16(m, h + i);
            __m512 f = d->storage == QD_F16 ? _mm512_cvtph_ps(v)
                                            : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
            _mm512_mask_storeu_ps(q + i, m, FIN(f));
        }
        return;
    }
    if (d->packed && (d->bits == 4 || d->bits == 2 || d->bits == 1)) {
        /* 16 codes per step; 16 is a multiple of the codes per byte, so each lane's byte
         * and shift are the same in every step */
        int bits = d->bits, shift = bits == 4 ? 1 : bits == 2 ? 2 : 3, per = 8 / bits, first = (int)(start & (per - 1));
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32(first));
        __m512i byte_i = _mm512_srli_epi32(idx, shift);
        __m512i sh = _mm512_mullo_epi32(_mm512_and_si512(idx, _mm512_set1_epi32(per - 1)), _mm512_set1_epi32(bits));
        __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
        __m512i off = _mm512_set1_epi32(d->family == QD_SQ_INT ? 1 << (bits - 1) : 0);   /* offset-binary ints */
        const uint8_t *p = data + (start >> shift);
        for (int64_t i = 0; i < n; i += 16, p += 16 / per) {
            int count = n - i >= 16 ? 16 : (int)(n - i), nbytes = ((first + count - 1) >> shift) + 1;   /* <= 9 */
            __mmask16 m = count == 16 ? 0xffff : (__mmask16)((1u << count) - 1);
            __m128i raw = _mm_maskz_loadu_epi8((__mmask16)((1u << nbytes) - 1), p);
            __m512i bytes = _mm512_permutexvar_epi32(byte_i, _mm512_cvtepu8_epi32(raw));
            __m512i c = _mm512_and_si512(_mm512_srlv_epi32(bytes, sh), mask);
            __m512 v = lut ? _mm512_i32gather_ps(c, lut, 4) : _mm512_cvtepi32_ps(_mm512_sub_epi32(c, off));
            _mm512_mask_storeu_ps(q + i, m, FIN(v));
        }
        return;
    }
    /* other packed widths and 16/32-bit ints: the scalar unpacker (-0 as +0 included) */
    qd_sdnq_unpack_f32(d, data, start, n, q);
    if (how != AS_Q)
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(q + i, m, FIN(_mm512_maskz_loadu_ps(m, q + i)));
        }
#undef FIN
}

/* ---- 4-bit codes, 64 at a time ----
 * The common SDNQ layout (uint4/int4 with groups, Linear and 3x3 Conv): 32 bytes widen
 * to 16-bit lanes, the two nibbles of each go to the low and high byte, which puts the 64
 * codes in order in one register; each 16-code quarter then widens to int32 and converts.
 * Scales as finish()/finish_conv() apply them (the same operations in the same order, so
 * any rectangle still decodes to the same bits as through values()). */

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512i u4_codes64(const uint8_t *p, int sgn) {
    __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    __m512i c = _mm512_or_si512(_mm512_and_si512(w, _mm512_set1_epi16(0x0F)), _mm512_slli_epi16(_mm512_srli_epi16(w, 4), 8));
    return sgn ? _mm512_sub_epi8(c, _mm512_set1_epi8(8)) : c;   /* offset-binary ints */
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512 u4_quarter(__m128i b, int sgn) {
    return _mm512_cvtepi32_ps(sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b));
}

#define U4_QUARTERS(c, sgn, BODY)                                                          \
    do {                                                                                   \
        __m512 v_;                                                                         \
        v_ = u4_quarter(_mm512_castsi512_si128(c), sgn); { const int q_ = 0; BODY; }       \
        v_ = u4_quarter(_mm512_extracti32x4_epi32(c, 1), sgn); { const int q_ = 1; BODY; } \
        v_ = u4_quarter(_mm512_extracti32x4_epi32(c, 2), sgn); { const int q_ = 2; BODY; } \
        v_ = u4_quarter(_mm512_extracti32x4_epi32(c, 3), sgn); { const int q_ = 3; BODY; } \
    } while (0)

/* Packed 4-bit ints without a table, codes [start, start + n) with start even: the value
 * of each, times sc (+ z) as `how` says (AS_QS, AS_QSZ), into q; returns how many were
 * done (a multiple of 64; the caller does the rest through values()). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static int64_t u4_run(const qd_sdnq_state *s, int64_t start, int64_t n, float *q, __m512 sc, __m512 z, int how) {
    int sgn = s->l.dtype.family == QD_SQ_INT;
    const uint8_t *p = s->codes + start / 2;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64, p += 32) {
        __m512i c = u4_codes64(p, sgn);
        if (how == AS_QSZ) U4_QUARTERS(c, sgn, _mm512_storeu_ps(q + i + 16 * q_, _mm512_add_ps(_mm512_mul_ps(v_, sc), z)));
        else U4_QUARTERS(c, sgn, _mm512_storeu_ps(q + i + 16 * q_, _mm512_mul_ps(v_, sc)));
    }
    return i;
}

/* A Conv row's scales along its columns for u4_conv_run(_bf16): the current group's ksize
 * scales (and zero points), and the phase of the next vector within the kernel taps. */
typedef struct {
    const float *scale, *zp;     /* the row's */
    int64_t gcols, g, gend;      /* columns per group; the loaded group, its end column */
    int ph, zero;                /* phase; the group has a zero scale */
    __mmask16 km;
    __m512 gs, gz;
} group_scales;

__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) group_scales group_scales_init(const qd_sdnq_state *s, int64_t o, int64_t k0) {
    const qd_sdnq_layout *l = &s->l;
    group_scales cs = {s->scale + o * s->so, s->zero_point ? s->zero_point + o * s->so : NULL, l->group_size * l->ksize,
                      -1, 0, (int)(k0 % l->ksize), 0, (__mmask16)((1u << l->ksize) - 1), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};
    return cs;
}

/* 16 code values v of the vector at column col (the next one along the row) scaled as
 * finish_conv does: v * scale (+ zero point), the zero point alone where the scale is 0. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __attribute__((always_inline)) __m512 group_scale(const qd_sdnq_state *s, group_scales *cs, int64_t col,
                                                                 __m512 v) {
    if (col >= cs->gend) {   /* once per group */
        cs->g = col / cs->gcols;
        cs->gend = (cs->g + 1) * cs->gcols;
        cs->gs = _mm512_maskz_loadu_ps(cs->km, cs->scale + cs->g * s->sg);
        cs->gz = cs->zp ? _mm512_maskz_loadu_ps(cs->km, cs->zp + cs->g * s->sg) : _mm512_setzero_ps();
        cs->zero = _mm512_cmp_ps_mask(cs->gs, _mm512_setzero_ps(), _CMP_EQ_OQ) != 0;
    }
    __m512i idx = _mm512_loadu_si512(s->conv_pos[cs->ph]);
    __m512 sc = _mm512_permutexvar_ps(idx, cs->gs);
    __m512 zz = cs->zp ? _mm512_permutexvar_ps(idx, cs->gz) : _mm512_setzero_ps();
    __m512 r = cs->zp ? _mm512_add_ps(_mm512_mul_ps(v, sc), zz) : _mm512_mul_ps(v, sc);
    if (cs->zero) r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sc, _mm512_setzero_ps(), _CMP_EQ_OQ), r, zz);
    cs->ph = s->conv_nph[cs->ph];
    return r;
}

/* The same for a Conv row whose groups span whole vectors (group_size * ksize a multiple of
 * 16, k0 a multiple of 16): every vector lies in one group, so its scales are one permute
 * of the group's ksize scales by the lane positions of its phase (no per-vector carry into
 * the next group, unlike conv_next). Returns the columns done (a multiple of 64). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static int64_t u4_conv_run(const qd_sdnq_state *s, int64_t o, int64_t k0, int64_t n, float *q) {
    int sgn = s->l.dtype.family == QD_SQ_INT;
    const uint8_t *p = s->codes + (o * s->l.cols + k0) / 2;
    group_scales cs = group_scales_init(s, o, k0);
    int64_t i = 0;
    for (; i + 64 <= n; i += 64, p += 32) {
        __m512i c = u4_codes64(p, sgn);
        U4_QUARTERS(c, sgn, _mm512_storeu_ps(q + i + 16 * q_, group_scale(s, &cs, k0 + i + 16 * q_, v_)));
    }
    return i;
}

/* ---- one row piece: values, scale, SVD ---- */

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void row_piece(const qd_sdnq_state *s, int64_t o, int64_t k0, int64_t n, float *dst) {
    const qd_sdnq_layout *l = &s->l;
    const float *zp = s->zero_point;
    __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    if (l->ksize == 1) {   /* runs of one group (or the whole row): one pass each */
        int64_t gs = s->sg ? l->group_size : n + k0 + 1;
        for (int64_t i = 0; i < n;) {
            int64_t g = (k0 + i) / gs, end = (g + 1) * gs - k0;
            if (end > n) end = n;
            int64_t idx = o * s->so + g * s->sg;
            float sc = s->scale[idx], z = zp ? zp[idx] : 0.0f;
            int how = sc == 0 ? AS_Z : zp ? AS_QSZ : AS_QS;   /* all-zero group: codes are undefined (§1.10) */
            int64_t start = o * l->cols + k0 + i, done = 0;
            if (s->u4 && how != AS_Z && !(start & 1))
                done = u4_run(s, start, end - i, dst + i, _mm512_set1_ps(sc), _mm512_set1_ps(z), how);
            if (done < end - i)
                values(s, start + done, end - i - done, dst + i + done, _mm512_set1_ps(sc), _mm512_set1_ps(z), how, NULL,
                       NULL, NULL);
            i = end;
        }
    } else if (s->sp == 1 && l->ksize <= 16) {   /* Conv: scale per (group, kernel position), made per vector */
        int64_t done = 0;
        if (s->u4 && (l->group_size * l->ksize) % 16 == 0 && k0 % 16 == 0 && !((o * l->cols + k0) & 1))
            done = u4_conv_run(s, o, k0, n, dst);
        if (done == n) return;
        k0 += done;
        dst += done;
        n -= done;
        int64_t c = k0 / l->ksize;
        conv_scales cs;
        cs.scale = s->scale + o * s->so;
        cs.zp = zp ? zp + o * s->so : NULL;
        cs.sg = s->sg;
        cs.groups = l->groups;
        cs.ks = (int)l->ksize;
        cs.gs = (int)l->group_size;
        cs.ph = (int)(k0 % l->ksize);
        cs.cg = (int)(c % l->group_size);
        cs.g = c / l->group_size;
        cs.st = s;
        values(s, o * l->cols + k0, n, dst, one, zero, AS_CONV, NULL, NULL, &cs);
    } else {   /* Conv, other: expand the pattern, then one pass */
        float sv[PIECE], zv[PIECE];
        int64_t ks = l->ksize, gs = l->group_size, c = k0 / ks, p = k0 % ks;
        int64_t g = c / gs, cg = c % gs;   /* group and channel within it, stepped (no division per channel) */
        for (int64_t i = 0; i < n; p = 0) {   /* per channel: its ksize scales are contiguous (sp = 1) */
            int64_t idx = o * s->so + g * s->sg + p * s->sp, take = ks - p < n - i ? ks - p : n - i;
            if (++cg == gs) { cg = 0; g++; }
            if (s->sp == 1 && take <= 16) {   /* a masked copy: ksize is 9 or 1-ish, a call would cost more */
                __mmask16 tm = (__mmask16)((1u << take) - 1);
                _mm512_mask_storeu_ps(sv + i, tm, _mm512_maskz_loadu_ps(tm, s->scale + idx));
                if (zp) _mm512_mask_storeu_ps(zv + i, tm, _mm512_maskz_loadu_ps(tm, zp + idx));
            } else if (s->sp == 1) {
                memcpy(sv + i, s->scale + idx, sizeof(float) * (size_t)take);
                if (zp) memcpy(zv + i, zp + idx, sizeof(float) * (size_t)take);
            } else {   /* tensor-wise: one scale */
                for (int64_t t = 0; t < take; t++) { sv[i + t] = s->scale[idx]; zv[i + t] = zp ? zp[idx] : 0.0f; }
            }
            i += take;
        }
        values(s, o * l->cols + k0, n, dst, one, zero, AS_VEC, sv, zp ? zv : NULL, NULL);
    }
}

/* The four 16-lane masks of a 64-column strip with `left` columns still to do. */
static inline void svd_masks(int64_t left, __mmask16 m[4]) {
    for (int q = 0; q < 4; q++) {
        int64_t l16 = left - 16 * q;
        m[q] = l16 >= 16 ? 0xffff : l16 > 0 ? (__mmask16)((1u << l16) - 1) : 0;
    }
}

/* dst rows [0, nb) (stride ld), columns of the strip's masks, += acc[row]. */
__attribute__((target("avx512f")))
static inline void svd_add_rows(float *dst, int64_t ld, int nb, const __mmask16 m[4], __m512 acc[4][4]) {
    for (int row = 0; row < nb; row++) {
        float *o = dst + row * ld;
        for (int q = 0; q < 4; q++)
            if (m[q]) _mm512_mask_storeu_ps(o + 16 * q, m[q], _mm512_add_ps(_mm512_maskz_loadu_ps(m[q], o + 16 * q), acc[row][q]));
    }
}

/* dst rows [0, nb) (nb <= 4, stride ld) += up[o0 + row, :] . down[:, k0 : k0+n]: the sum over
 * the rank first, then added (torch's W + up @ down). Four rows share each load of
 * down, and their 16 accumulators keep the FMA pipes busy (one row alone would wait
 * on its 4 chains' latency). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void svd_rows(const qd_sdnq_state *s, int64_t o0, int nb, int64_t k0, int64_t n, float *dst, int64_t ld) {
    int64_t r = s->l.svd_rank, cols = s->l.cols;
    const float *up0 = s->svd_up + o0 * r;
    const float *up1 = nb > 1 ? up0 + r : up0, *up2 = nb > 2 ? up0 + 2 * r : up0, *up3 = nb > 3 ? up0 + 3 * r : up0;
    for (int64_t i = 0; i < n; i += 64) {
        __mmask16 m[4];
        svd_masks(n - i, m);
        __m512 z = _mm512_setzero_ps();
        __m512 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
        __m512 a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
        const float *dp = s->svd_down + k0 + i;
        for (int64_t t = 0; t < r; t++, dp += cols) {
            __m512 d0 = _mm512_maskz_loadu_ps(m[0], dp), d1 = _mm512_maskz_loadu_ps(m[1], dp + 16);
            __m512 d2 = _mm512_maskz_loadu_ps(m[2], dp + 32), d3 = _mm512_maskz_loadu_ps(m[3], dp + 48);
            __m512 u = _mm512_set1_ps(up0[t]);
            a00 = _mm512_fmadd_ps(u, d0, a00); a01 = _mm512_fmadd_ps(u, d1, a01);
            a02 = _mm512_fmadd_ps(u, d2, a02); a03 = _mm512_fmadd_ps(u, d3, a03);
            u = _mm512_set1_ps(up1[t]);
            a10 = _mm512_fmadd_ps(u, d0, a10); a11 = _mm512_fmadd_ps(u, d1, a11);
            a12 = _mm512_fmadd_ps(u, d2, a12); a13 = _mm512_fmadd_ps(u, d3, a13);
            u = _mm512_set1_ps(up2[t]);
            a20 = _mm512_fmadd_ps(u, d0, a20); a21 = _mm512_fmadd_ps(u, d1, a21);
            a22 = _mm512_fmadd_ps(u, d2, a22); a23 = _mm512_fmadd_ps(u, d3, a23);
            u = _mm512_set1_ps(up3[t]);
            a30 = _mm512_fmadd_ps(u, d0, a30); a31 = _mm512_fmadd_ps(u, d1, a31);
            a32 = _mm512_fmadd_ps(u, d2, a32); a33 = _mm512_fmadd_ps(u, d3, a33);
        }
        __m512 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
        svd_add_rows(dst + i, ld, nb, m, acc);
    }
}

/* svd_rows with bf16 products (vdpbf16ps over pairs of the rank, fp32 sums): for the bf16
 * GEMM, which rounds the decoded weight to bf16 right after. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void svd_rows_bf16(const qd_sdnq_state *s, int64_t o0, int nb, int64_t k0, int64_t n, float *dst, int64_t ld) {
    int64_t rp = (s->l.svd_rank + 1) / 2, cols = s->l.cols;
    const uint32_t *up0 = s->svd_up_bf16 + o0 * rp;
    const uint32_t *up1 = nb > 1 ? up0 + rp : up0, *up2 = nb > 2 ? up0 + 2 * rp : up0, *up3 = nb > 3 ? up0 + 3 * rp : up0;
    for (int64_t i = 0; i < n; i += 64) {
        __mmask16 m[4];
        svd_masks(n - i, m);
        __m512 z = _mm512_setzero_ps();
        __m512 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
        __m512 a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
        const uint32_t *dp = s->svd_down_bf16 + k0 + i;
        for (int64_t p = 0; p < rp; p++, dp += cols) {
            __m512bh d0 = (__m512bh)_mm512_maskz_loadu_epi32(m[0], dp), d1 = (__m512bh)_mm512_maskz_loadu_epi32(m[1], dp + 16);
            __m512bh d2 = (__m512bh)_mm512_maskz_loadu_epi32(m[2], dp + 32), d3 = (__m512bh)_mm512_maskz_loadu_epi32(m[3], dp + 48);
            __m512bh u = (__m512bh)_mm512_set1_epi32((int)up0[p]);
            a00 = _mm512_dpbf16_ps(a00, u, d0); a01 = _mm512_dpbf16_ps(a01, u, d1);
            a02 = _mm512_dpbf16_ps(a02, u, d2); a03 = _mm512_dpbf16_ps(a03, u, d3);
            u = (__m512bh)_mm512_set1_epi32((int)up1[p]);
            a10 = _mm512_dpbf16_ps(a10, u, d0); a11 = _mm512_dpbf16_ps(a11, u, d1);
            a12 = _mm512_dpbf16_ps(a12, u, d2); a13 = _mm512_dpbf16_ps(a13, u, d3);
            u = (__m512bh)_mm512_set1_epi32((int)up2[p]);
            a20 = _mm512_dpbf16_ps(a20, u, d0); a21 = _mm512_dpbf16_ps(a21, u, d1);
            a22 = _mm512_dpbf16_ps(a22, u, d2); a23 = _mm512_dpbf16_ps(a23, u, d3);
            u = (__m512bh)_mm512_set1_epi32((int)up3[p]);
            a30 = _mm512_dpbf16_ps(a30, u, d0); a31 = _mm512_dpbf16_ps(a31, u, d1);
            a32 = _mm512_dpbf16_ps(a32, u, d2); a33 = _mm512_dpbf16_ps(a33, u, d3);
        }
        __m512 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
        svd_add_rows(dst + i, ld, nb, m, acc);
    }
}

static int cpu_bf16(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = cpu_ok() && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    return has;
}

/* The GEMM's packers decode a weight strip by strip (rows [r0, r0+nr), then the next nr
 * rows) in K blocks, each a short run of every row, rows a whole row apart: too short for
 * the hardware prefetcher, so every strip's codes and scales would arrive at DRAM (or L3)
 * latency (perf, 1280x11520 conv at 16x16: ~80% of the decode time in those two loads).
 * Ask for the next strip's runs of codes, scales and zero points while this one decodes. */
static inline __attribute__((always_inline)) void prefetch_range(const void *base, int64_t b0, int64_t b1) {
    uintptr_t p = (uintptr_t)base;   /* addresses only: the first line may start before base */
    for (uintptr_t a = (p + (uintptr_t)b0) & ~(uintptr_t)63; a < p + (uintptr_t)b1; a += 64) _mm_prefetch((const char *)a, _MM_HINT_T0);
}

static void prefetch_next(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk) {
    const qd_sdnq_layout *l = &s->l;
    const qd_sdnq_dtype *d = &l->dtype;
    int64_t rs = r0 + nr, re = rs + nr < l->out ? rs + nr : l->out;   /* (two strips ahead measured no better) */
    int64_t bits = d->packed ? d->bits : 8 * (int64_t)qd_dtype_size(d->storage);
    int64_t gs = l->group_size > 0 ? l->group_size : l->in;
    int64_t g0 = k0 / l->ksize / gs, g1 = (k0 + nk - 1) / l->ksize / gs;
    int64_t s0 = g0 * s->sg, s1 = g1 * s->sg + (l->ksize - 1) * s->sp + 1;   /* scale floats of a row */
    if (s1 - s0 > 64) s1 = s0 + 64;   /* at most 4 lines of a row's scales (SD layers touch 1-2 per tile) */
    for (int64_t o = rs; o < re; o++) {
        prefetch_range(s->codes, (o * l->cols + k0) * bits / 8, ((o * l->cols + k0 + nk) * bits + 7) / 8);
        prefetch_range(s->scale, (o * s->so + s0) * 4, (o * s->so + s1) * 4);
        if (s->zero_point) prefetch_range(s->zero_point, (o * s->so + s0) * 4, (o * s->so + s1) * 4);
    }
}

/* lowp: 0 exact, 1 bf16 SVD products, -1 no SVD term (the base weight) */
static int decode(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst, int64_t ld,
                  int lowp) {
    if (!s->fast || !cpu_ok()) return 0;
    if (nk > 0) prefetch_next(s, r0, nr, k0, nk);
    for (int64_t r = 0; r < nr; r++)
        for (int64_t k = 0; k < nk; k += PIECE)
            row_piece(s, r0 + r, k0 + k, nk - k < PIECE ? nk - k : PIECE, dst + r * ld + k);
    if (lowp < 0) return 1;
    lowp = lowp && s->svd_up_bf16 && cpu_bf16();
    if (s->l.svd)
        for (int64_t r = 0; r < nr; r += 4) {
            int nb = (int)(nr - r < 4 ? nr - r : 4);
            if (lowp) svd_rows_bf16(s, r0 + r, nb, k0, nk, dst + r * ld, ld);
            else svd_rows(s, r0 + r, nb, k0, nk, dst + r * ld, ld);
        }
    return 1;
}

int qd_sdnq_decode_fast(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                        int64_t ld) {
    return decode(s, r0, nr, k0, nk, dst, ld, 0);
}

int qd_sdnq_decode_fast_lowp(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    return decode(s, r0, nr, k0, nk, dst, ld, 1);
}

int qd_sdnq_decode_fast_base(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                             int64_t ld) {
    return decode(s, r0, nr, k0, nk, dst, ld, -1);
}

/* ---- 4-bit codes straight to bf16 pairs (the bf16 GEMM's A strips) ----
 * The same fp32 values as u4_run / u4_conv_run (same operations, same order), times alpha,
 * rounded to bf16 in registers: 64 codes give two 64-byte stores of pairs, with no fp32
 * tile written and read back by the packer in between. */

/* 64 values (4 vectors in column order) times alpha (al NULL: alpha 1) as 32 pair words at d */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static inline __attribute__((always_inline)) void store64_bf16(uint32_t *d, const __m512 v[4], const __m512 *al) {
    __m512 v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    if (al) { v0 = _mm512_mul_ps(v0, *al); v1 = _mm512_mul_ps(v1, *al); v2 = _mm512_mul_ps(v2, *al); v3 = _mm512_mul_ps(v3, *al); }
    _mm512_storeu_si512(d, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    _mm512_storeu_si512(d + 16, (__m512i)_mm512_cvtne2ps_pbh(v3, v2));
}

/* u4_run into pairs: n a multiple of 64, start even */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void u4_run_bf16(const qd_sdnq_state *s, int64_t start, int64_t n, uint32_t *d, __m512 sc, __m512 z, int how,
                        const __m512 *al) {
    int sgn = s->l.dtype.family == QD_SQ_INT;
    const uint8_t *p = s->codes + start / 2;
    for (int64_t i = 0; i < n; i += 64, p += 32) {
        __m512i c = u4_codes64(p, sgn);
        __m512 v[4];
        if (how == AS_QSZ) U4_QUARTERS(c, sgn, v[q_] = _mm512_add_ps(_mm512_mul_ps(v_, sc), z));
        else U4_QUARTERS(c, sgn, v[q_] = _mm512_mul_ps(v_, sc));
        store64_bf16(d + i / 2, v, al);
    }
}

/* u4_conv_run into pairs: n a multiple of 64 (same conditions as u4_conv_run) */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void u4_conv_run_bf16(const qd_sdnq_state *s, int64_t o, int64_t k0, int64_t n, uint32_t *d, const __m512 *al) {
    int sgn = s->l.dtype.family == QD_SQ_INT;
    const uint8_t *p = s->codes + (o * s->l.cols + k0) / 2;
    group_scales cs = group_scales_init(s, o, k0);
    for (int64_t i = 0; i < n; i += 64, p += 32) {
        __m512i c = u4_codes64(p, sgn);
        __m512 v[4];
        U4_QUARTERS(c, sgn, v[q_] = group_scale(s, &cs, k0 + i + 16 * q_, v_));
        store64_bf16(d + i / 2, v, al);
    }
}

/* One row piece (n <= PIECE columns from k0, k0 even) of the base weight into pairs: the
 * 64-at-a-time paths where the whole piece is made of them, else row_piece into floats. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void row_piece_bf16(const qd_sdnq_state *s, int64_t o, int64_t k0, int64_t n, uint32_t *d, float alpha) {
    const qd_sdnq_layout *l = &s->l;
    __m512 alv = _mm512_set1_ps(alpha);
    const __m512 *al = alpha != 1.0f ? &alv : NULL;   /* x * 1 is exact: skip it */
    int64_t start = o * l->cols + k0;
    if (n % 64 == 0 && !(start & 1)) {
        if (l->ksize == 1 && (!s->sg || l->group_size % 64 == 0) && k0 % 64 == 0) {
            int64_t gs = s->sg ? l->group_size : n + k0 + 1, i = 0;
            for (; i < n;) {   /* runs of one group, as row_piece */
                int64_t g = (k0 + i) / gs, end = (g + 1) * gs - k0;
                if (end > n) end = n;
                int64_t idx = o * s->so + g * s->sg;
                float sc = s->scale[idx], z = s->zero_point ? s->zero_point[idx] : 0.0f;
                if (sc == 0) break;   /* an all-zero group (§1.10): the general path */
                u4_run_bf16(s, start + i, end - i, d + i / 2, _mm512_set1_ps(sc), _mm512_set1_ps(z),
                            s->zero_point ? AS_QSZ : AS_QS, al);
                i = end;
            }
            if (i == n) return;
        } else if (l->ksize > 1 && s->sp == 1 && l->ksize <= 16 && (l->group_size * l->ksize) % 16 == 0 && k0 % 16 == 0) {
            u4_conv_run_bf16(s, o, k0, n, d, al);
            return;
        }
    }
    float f[PIECE];
    row_piece(s, o, k0, n, f);
    qd_floats_to_bf16_pairs(d, f, n, alpha);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void decode_bf16(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                        int64_t ldw, float alpha) {
    prefetch_next(s, r0, nr, k0, nk);
    for (int64_t r = 0; r < nr; r++)
        for (int64_t k = 0; k < nk; k += PIECE)
            row_piece_bf16(s, r0 + r, k0 + k, nk - k < PIECE ? nk - k : PIECE, dst + r * ldw + k / 2, alpha);
}

int qd_sdnq_decode_base_bf16(const qd_sdnq_state *s, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                             int64_t ldw, float alpha) {
    if (!s->fast || !s->u4 || !cpu_bf16() || (k0 & 1) || nk <= 0) return 0;
    decode_bf16(s, r0, nr, k0, nk, dst, ldw, alpha);
    return 1;
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void codes_fast(const qd_sdnq_state *s, int64_t start, int64_t n, float *q) {
    __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += PIECE) values(s, start + i, n - i < PIECE ? n - i : PIECE, q + i, one, zero, AS_Q, NULL, NULL, NULL);
}

int qd_sdnq_codes_fast(const qd_sdnq_state *s, int64_t start, int64_t n, float *q) {
    if (!s->fast || !cpu_ok()) return 0;
    codes_fast(s, start, n, q);
    return 1;
}

/* ---- input-major storage straight into k-major panels ---- */

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void kmajor(const qd_sdnq_state *s, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel, int64_t ld) {
    const qd_sdnq_layout *l = &s->l;
    int64_t out = l->out;
    int sgn = l->dtype.family == QD_SQ_INT;
    for (int h = 0; h < ld; h += 16) {   /* 16 outputs per vector; their scales stay in registers */
        int left = nr - h;
        __mmask16 m = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        const float *zp = s->zero_point;
        __m512 sc = _mm512_maskz_loadu_ps(m, s->scale + r0 + h);   /* so = 1 in this layout */
        __m512 z = zp ? _mm512_maskz_loadu_ps(m, zp + r0 + h) : _mm512_setzero_ps();
        __mmask16 zero = _mm512_cmp_ps_mask(sc, _mm512_setzero_ps(), _CMP_EQ_OQ);
        const uint8_t *c = s->codes + k0 * out + r0 + h;
        for (int64_t k = 0; k < nk; k++, c += out) {
            __m128i b = _mm_maskz_loadu_epi8(m, c);
            __m512 v = _mm512_cvtepi32_ps(sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b));
            v = zp ? _mm512_add_ps(_mm512_mul_ps(v, sc), z) : _mm512_mul_ps(v, sc);
            v = _mm512_mask_blend_ps(zero, v, z);   /* all-zero scale: the zero point (§1.10) */
            _mm512_storeu_ps(panel + k * ld + h, _mm512_maskz_mov_ps(m, v));
        }
    }
}

int qd_sdnq_decode_kmajor(const qd_sdnq_state *s, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel, int64_t ld) {
    if (!s->kmajor || !cpu_ok() || ld % 16) return 0;
    kmajor(s, r0, nr, k0, nk, panel, ld);
    return 1;
}
