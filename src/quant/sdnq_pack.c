/* SDNQ encoders and the packer (the inverse of sdnq_unpack.c). */
#include "quant/sdnq_pack.h"
#include "base/half.h"
#include "base/threads.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Round |x| (finite, <= the largest finite value) to a float with E exponent bits,
 * M mantissa bits and the given bias, to nearest even: the code without sign. */
static uint32_t minifloat_rne(float a, int E, int M, int bias) {
    (void)E;
    if (a == 0.0f) return 0;
    double min_normal = ldexp(1.0, 1 - bias);
    if (a < min_normal) {   /* subnormal: units of 2^(1-bias-M); a carry gives the smallest normal */
        double u = ldexp((double)a, bias - 1 + M);
        return (uint32_t)nearbyint(u);   /* default rounding mode: to nearest even */
    }
    uint32_t bits = qd_f32_to_bits(a);
    int e = (int)(bits >> 23) - 127;
    uint32_t man = bits & 0x7fffff;
    int drop = 23 - M;
    uint32_t code = ((uint32_t)(e + bias) << M) | (man >> drop);
    uint32_t rem = man & ((1u << drop) - 1), half = 1u << (drop - 1);
    if (rem > half || (rem == half && (code & 1))) code++;
    return code;
}

/* §1.7: clamp, then round up by one code iff the top 4 dropped mantissa bits exceed
 * 0b1000. Below the smallest normal see the comment inside. */
static uint32_t cfloat_code(const qd_sdnq_dtype *dt, float x) {
    int E = dt->exp_bits, M = dt->man_bits, bias = (1 << (E - 1)) - 1;
    float mx = (float)dt->max;
    if (x > mx) x = mx;
    if (dt->is_signed ? x < -mx : x < 0.0f) x = dt->is_signed ? -mx : 0.0f;
    uint32_t sign = 0;
    if (dt->is_signed && signbit(x)) { sign = 1; x = -x; }
    uint32_t mag;
    double min_normal = ldexp(1.0, 1 - bias);
    int drop = 23 - M;
    if ((double)x < min_normal) {
        /* sdnq rounds at the value's own exponent first (the rule above), then to the
         * subnormal grid with ties up; found against sdnq's stored codes: it is not
         * a single RNE as the spec reads */
        uint32_t bits = qd_f32_to_bits(x);
        if (((bits >> (drop - 4)) & 15u) > 8u) bits += 1u << drop;
        bits &= ~((1u << drop) - 1);
        mag = (uint32_t)floor((double)qd_bits_to_f32(bits) / min_normal * ldexp(1.0, M) + 0.5);
    } else {
        uint32_t bits = qd_f32_to_bits(x);
        int e = (int)(bits >> 23) - 127;
        mag = ((uint32_t)(e + bias) << M) | ((bits & 0x7fffff) >> drop);
        if (((bits >> (drop - 4)) & 15u) > 8u) mag++;
    }
    return sign << (E + M) | mag;
}

uint32_t qd_sdnq_float_code(const qd_sdnq_dtype *dt, float x) {
    if (dt->family == QD_SQ_CFLOAT) return cfloat_code(dt, x);
    float mx = (float)dt->max;
    if (x > mx) x = mx;
    if (x < -mx) x = -mx;
    switch (dt->storage) {
    case QD_F32: return qd_f32_to_bits(x);
    case QD_BF16: return qd_f32_to_bf16(x);
    case QD_F16: return qd_f32_to_f16(x);
    case QD_F8_E4M3: return (signbit(x) ? 0x80u : 0u) | minifloat_rne(fabsf(x), 4, 3, 7);
    default: return (signbit(x) ? 0x80u : 0u) | minifloat_rne(fabsf(x), 5, 2, 15);
    }
}

/* Where code bit i of code j lives in a packing block: found by unpacking blocks
 * with one storage bit set. Returns 0, or -1 if the unpacker is not a bit
 * permutation for this width (would be a bug). */
static int bit_map(const qd_sdnq_dtype *dt, uint16_t *map) {
    int n = dt->bits, K = dt->block_codes, wbits = 8 * dt->word_bytes;
    int total = dt->block_words * wbits;
    if (total != K * n || total > 256) return -1;
    qd_sdnq_dtype raw = *dt;          /* the layout without any value mapping */
    raw.family = QD_SQ_UINT;
    raw.is_signed = 0;
    uint8_t block[32];
    int32_t e[16];
    uint8_t seen[256] = {0};
    for (int b = 0; b < total; b++) {
        memset(block, 0, sizeof block);
        block[b / 8] = (uint8_t)(1u << (b % 8));   /* words are little-endian */
        qd_sdnq_unpack_int(&raw, block, 0, K, e);
        int hits = 0;
        for (int j = 0; j < K; j++) {
            if (!e[j]) continue;
            uint32_t v = (uint32_t)e[j];
            if (v & (v - 1)) return -1;
            int i = 0;
            while (!(v >> i & 1)) i++;
            if (i >= n || seen[j * n + i]) return -1;
            seen[j * n + i] = 1;
            map[j * n + i] = (uint16_t)b;
            hits++;
        }
        if (hits != 1) return -1;
    }
    return 0;
}

typedef struct {
    const qd_sdnq_dtype *dt;
    const uint32_t *codes;
    uint8_t *out;
    const uint16_t *map;
    size_t block_bytes;
    uint32_t mask;
} pack_job;

static void pack_blocks(void *arg, int64_t b0, int64_t b1, int thread) {
    const pack_job *j = arg;
    int bits = j->dt->bits, K = j->dt->block_codes;
    (void)thread;
    for (int64_t blk = b0; blk < b1; blk++) {
        uint8_t *b = j->out + (size_t)blk * j->block_bytes;
        const uint32_t *c = j->codes + blk * K;
        for (int k = 0; k < K; k++) {
            uint32_t v = c[k] & j->mask;
            for (int i = 0; v; i++, v >>= 1)
                if (v & 1) { int p = j->map[k * bits + i]; b[p >> 3] |= (uint8_t)(1u << (p & 7)); }
        }
    }
}

qd_status qd_sdnq_pack(qd_ctx *ctx, const qd_sdnq_dtype *dt, const uint32_t *codes, int64_t n, void *dst) {
    uint8_t *out = dst;
    if (!dt->packed) {
        size_t es = qd_dtype_size(dt->storage);
        for (int64_t i = 0; i < n; i++) {
            uint32_t c = codes[i];
            if (es == 1) out[i] = (uint8_t)c;
            else if (es == 2) { out[2 * i] = (uint8_t)c; out[2 * i + 1] = (uint8_t)(c >> 8); }
            else memcpy(out + 4 * i, &c, 4);
        }
        return QD_OK;
    }
    int bits = dt->bits, K = dt->block_codes;
    if (n % K) return qd_fail(ctx, QD_ERR_ARG, "%lld %s codes are not a whole number of %d-code blocks",
                              (long long)n, dt->name, K);
    uint16_t map[256];
    if (bit_map(dt, map) != 0) return qd_fail(ctx, QD_ERR_UNSUPPORTED, "no packing layout for %s", dt->name);
    pack_job j = {dt, codes, out, map, (size_t)dt->block_words * (size_t)dt->word_bytes,
                  bits >= 32 ? 0xffffffffu : (1u << bits) - 1};
    memset(out, 0, (size_t)(n / K) * j.block_bytes);
    qd_parallel_for(ctx, n / K, pack_blocks, &j);
    return QD_OK;
}
