/* SDNQ code streams: names (§1.5), packed bit layouts (§1.6), custom floats (§1.7).
 * Written from the spec's layout tables; every layout is a fixed block of K codes
 * in P words, so any element range is decoded block by block. */
#include "quant/sdnq_unpack.h"
#include "base/half.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---- */

static const struct { const char *alias, *target; } aliases[] = {
    {"fp32", "float32"}, {"bf16", "bfloat16"}, {"fp16", "float16"}, {"fp8", "float8_e4m3fn"},
    {"int1", "uint1"}, {"bool", "uint1"},
    {"fp15", "float15_e5m9fn"}, {"fp14", "float14_e5m8fn"}, {"fp13", "float13_e5m7fn"},
    {"fp12", "float12_e5m6fn"}, {"fp11", "float11_e5m5fn"}, {"fp10", "float10_e5m4fn"},
    {"fp9", "float9_e4m4fn"}, {"fp7", "float7_e3m3fn"}, {"fp6", "float6_e3m2fn"},
    {"fp5", "float5_e2m2fn"}, {"fp4", "float4_e2m1fn"}, {"fp3", "float3_e1m1fn"},
    {"fp2", "float2_e1m0fn"}, {"fp1", "float1_e1m0fnu"},
    {"ufp16", "float16_e5m11fnu"}, {"ufp15", "float15_e5m10fnu"}, {"ufp14", "float14_e5m9fnu"},
    {"ufp13", "float13_e5m8fnu"}, {"ufp12", "float12_e5m7fnu"}, {"ufp11", "float11_e5m6fnu"},
    {"ufp10", "float10_e5m5fnu"}, {"ufp9", "float9_e4m5fnu"}, {"ufp8", "float8_e4m4fnu"},
    {"ufp7", "float7_e3m4fnu"}, {"ufp6", "float6_e3m3fnu"}, {"ufp5", "float5_e2m3fnu"},
    {"ufp4", "float4_e2m2fnu"}, {"ufp3", "float3_e1m2fnu"}, {"ufp2", "float2_e1m1fnu"},
    {"ufp1", "float1_e1m0fnu"},
};

/* Packing blocks per bit width (§1.6): K codes -> P words. */
static const struct { int k, p; } blocks[17] = {
    {0, 0}, {8, 1}, {4, 1}, {8, 3}, {2, 1}, {8, 5}, {4, 3}, {8, 7}, {0, 0},
    {16, 9}, {8, 5}, {16, 11}, {4, 3}, {16, 13}, {8, 7}, {16, 15}, {0, 0},
};

static void set_packed(qd_sdnq_dtype *d, int n) {
    d->packed = 1;
    d->block_codes = blocks[n].k;
    d->block_words = blocks[n].p;
    d->word_bytes = n < 8 ? 1 : 2;
    d->storage = n == 1 ? QD_BOOL : n < 8 ? QD_U8 : QD_I16;
}

static void set_native(qd_sdnq_dtype *d, qd_sdnq_family fam, int bits, int is_signed, qd_dtype storage, double max) {
    d->family = fam;
    d->bits = bits;
    d->is_signed = is_signed;
    d->storage = storage;
    d->max = max;
}

/* "<digits>" at s, all of it: the number, else -1. */
static int whole_number(const char *s) {
    if (!*s || strlen(s) > 3) return -1;
    int v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

static int parse_int_name(const char *name, qd_sdnq_dtype *d) {
    int is_unsigned = strncmp(name, "uint", 4) == 0;
    if (!is_unsigned && strncmp(name, "int", 3) != 0) return -1;
    int n = whole_number(name + (is_unsigned ? 4 : 3));
    if (n == 8 || n == 16 || n == 32) {
        static const qd_dtype s_st[] = {QD_I8, QD_I16, QD_I32}, u_st[] = {QD_U8, QD_U16, QD_U32};
        int i = n == 8 ? 0 : n == 16 ? 1 : 2;
        double max = is_unsigned ? (double)((1ull << n) - 1) : (double)((1ull << (n - 1)) - 1);
        set_native(d, is_unsigned ? QD_SQ_UINT : QD_SQ_INT, n, !is_unsigned, is_unsigned ? u_st[i] : s_st[i], max);
        return 0;
    }
    if (n < 1 || n > 15 || (n == 1 && !is_unsigned)) return -1;
    d->family = is_unsigned ? QD_SQ_UINT : QD_SQ_INT;
    d->bits = n;
    d->is_signed = !is_unsigned;
    d->custom = 1;
    d->max = is_unsigned ? (double)((1u << n) - 1) : (double)((1u << (n - 1)) - 1);
    set_packed(d, n);
    return 0;
}

/* floatN_eXmY{fn,fnu} (and float8_e4m3fn_sdnq, the custom twin of torch's e4m3fn). */
static int parse_custom_float(const char *name, qd_sdnq_dtype *d) {
    int n, e, m, used = 0;
    char suffix[16] = "";
    if (sscanf(name, "float%d_e%dm%d%n", &n, &e, &m, &used) != 3) return -1;
    snprintf(suffix, sizeof suffix, "%s", name + used);
    int is_signed;
    if (strcmp(suffix, "fn") == 0) is_signed = 1;
    else if (strcmp(suffix, "fnu") == 0) is_signed = 0;
    else if (strcmp(suffix, "fn_sdnq") == 0 && n == 8 && e == 4 && m == 3) is_signed = 1;
    else return -1;
    if (e < 1 || e > 5 || m < 0 || n != is_signed + e + m || n < 1 || n > 16) return -1;
    d->family = QD_SQ_CFLOAT;
    d->bits = n;
    d->is_signed = is_signed;
    d->exp_bits = e;
    d->man_bits = m;
    d->custom = 1;
    int bias = (1 << (e - 1)) - 1, top = (1 << e) - 1;   /* every exponent is finite ("fn") */
    d->max = (double)(1u << (top - bias)) * (2.0 - 1.0 / (double)(1u << m));
    if (n == 8 || n == 16) d->storage = n == 8 ? QD_U8 : QD_U16;   /* raw codes, not flattened */
    else set_packed(d, n);
    return 0;
}

int qd_sdnq_dtype_parse(const char *name, qd_sdnq_dtype *out) {
    qd_sdnq_dtype d;
    memset(&d, 0, sizeof d);
    memset(out, 0, sizeof *out);
    if (!name) return -1;
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (strcmp(name, aliases[i].alias) == 0) { name = aliases[i].target; break; }
    int st = -1;
    if (strcmp(name, "float32") == 0) { set_native(&d, QD_SQ_FLOAT, 32, 1, QD_F32, 3.4028234663852886e38); d.exp_bits = 8; d.man_bits = 23; st = 0; }
    else if (strcmp(name, "bfloat16") == 0) { set_native(&d, QD_SQ_FLOAT, 16, 1, QD_BF16, 3.3895313892515355e38); d.exp_bits = 8; d.man_bits = 7; st = 0; }
    else if (strcmp(name, "float16") == 0) { set_native(&d, QD_SQ_FLOAT, 16, 1, QD_F16, 65504.0); d.exp_bits = 5; d.man_bits = 10; st = 0; }
    else if (strcmp(name, "float8_e4m3fn") == 0) { set_native(&d, QD_SQ_FLOAT, 8, 1, QD_F8_E4M3, 448.0); d.exp_bits = 4; d.man_bits = 3; st = 0; }
    else if (strcmp(name, "float8_e5m2") == 0) { set_native(&d, QD_SQ_FLOAT, 8, 1, QD_F8_E5M2, 57344.0); d.exp_bits = 5; d.man_bits = 2; st = 0; }
    else if (strcmp(name, "float8_e8m0fnu") == 0 || strcmp(name, "float8_e4m3fnuz") == 0 ||
             strcmp(name, "float8_e5m2fnuz") == 0) st = -2;
    else if (strncmp(name, "int", 3) == 0 || strncmp(name, "uint", 4) == 0) st = parse_int_name(name, &d);
    else if (strncmp(name, "float", 5) == 0) st = parse_custom_float(name, &d);
    if (st != 0) return st;
    snprintf(d.name, sizeof d.name, "%s", name);
    *out = d;
    return 0;
}

int64_t qd_sdnq_storage_elems(const qd_sdnq_dtype *dt, int64_t n) {
    if (n < 0) return -1;
    if (!dt->packed) return n;
    if (n % dt->block_codes) return -1;
    return n / dt->block_codes * dt->block_words;
}

/* ---- packed blocks (§1.6): e[0..K) from the block's P words ---- */

static void unpack_block(int n, const uint8_t *b, uint32_t *e) {
    uint32_t w[16];
    if (n < 8) {
        for (int j = 0; j < blocks[n].p; j++) w[j] = b[j];
    } else {
        for (int j = 0; j < blocks[n].p; j++) w[j] = (uint32_t)b[2 * j] | (uint32_t)b[2 * j + 1] << 8;
    }
    switch (n) {
    case 1: for (int k = 0; k < 8; k++) e[k] = (w[0] >> k) & 1; break;
    case 2: for (int k = 0; k < 4; k++) e[k] = (w[0] >> (2 * k)) & 3; break;
    case 3:
        for (int j = 0; j < 3; j++) { e[j] = w[j] & 7; e[j + 3] = (w[j] >> 3) & 7; }
        e[6] = ((w[0] >> 6) & 3) | ((w[2] >> 6) & 1) << 2;
        e[7] = ((w[1] >> 6) & 3) | ((w[2] >> 7) & 1) << 2;
        break;
    case 4: e[0] = w[0] & 15; e[1] = w[0] >> 4; break;
    case 5:
        for (int j = 0; j < 5; j++) e[j] = w[j] & 31;
        e[5] = (w[0] >> 5) | ((w[3] >> 5) & 3) << 3;
        e[6] = (w[1] >> 5) | ((w[4] >> 5) & 3) << 3;
        e[7] = (w[2] >> 5) | ((w[4] >> 7) & 1) << 3 | ((w[3] >> 7) & 1) << 4;
        break;
    case 6:
        for (int j = 0; j < 3; j++) e[j] = w[j] & 63;
        e[3] = (w[0] >> 6) << 4 | (w[1] >> 6) << 2 | (w[2] >> 6);
        break;
    case 7:
        e[7] = 0;
        for (int j = 0; j < 7; j++) { e[j] = w[j] & 127; e[7] |= ((w[j] >> 7) & 1) << (6 - j); }
        break;
    case 9:
        for (int j = 0; j < 8; j++) {
            e[j] = w[j] & 511;
            e[8 + j] = ((w[j] >> 9) & 127) | ((w[8] >> (2 * j)) & 3) << 7;
        }
        break;
    case 10:
        for (int j = 0; j < 5; j++) e[j] = w[j] & 1023;
        e[5] = ((w[0] >> 10) & 63) | ((w[3] >> 10) & 15) << 6;
        e[6] = ((w[1] >> 10) & 63) | ((w[4] >> 10) & 15) << 6;
        e[7] = ((w[2] >> 10) & 63) | ((w[4] >> 14) & 3) << 6 | ((w[3] >> 14) & 3) << 8;
        break;
    case 11:
        for (int j = 0; j < 8; j++) { e[j] = w[j] & 2047; e[8 + j] = (w[j] >> 11) & 31; }
        e[8] |= (w[8] & 63) << 5;
        e[11] |= ((w[8] >> 6) & 63) << 5;
        e[14] |= ((w[8] >> 12) & 15) << 5 | ((w[10] >> 12) & 3) << 9;
        e[9] |= (w[9] & 63) << 5;
        e[12] |= ((w[9] >> 6) & 63) << 5;
        e[15] |= ((w[9] >> 12) & 15) << 5 | ((w[10] >> 14) & 3) << 9;
        e[10] |= (w[10] & 63) << 5;
        e[13] |= ((w[10] >> 6) & 63) << 5;
        break;
    case 12:
        for (int j = 0; j < 3; j++) e[j] = w[j] & 4095;
        e[3] = (w[0] >> 12) << 8 | (w[1] >> 12) << 4 | (w[2] >> 12);
        break;
    case 13:
        for (int j = 0; j < 13; j++) e[j] = w[j] & 8191;
        e[13] = e[14] = e[15] = 0;
        for (int j = 0; j < 12; j++) e[13 + j % 3] |= ((w[j] >> 13) & 7) << (3 * (j / 3));
        e[13] |= ((w[12] >> 13) & 1) << 12;
        e[14] |= ((w[12] >> 14) & 1) << 12;
        e[15] |= ((w[12] >> 15) & 1) << 12;
        break;
    case 14:
        e[7] = 0;
        for (int j = 0; j < 7; j++) { e[j] = w[j] & 16383; e[7] |= ((w[j] >> 14) & 3) << (12 - 2 * j); }
        break;
    case 15:
        e[15] = 0;
        for (int j = 0; j < 15; j++) { e[j] = w[j] & 32767; e[15] |= ((w[j] >> 15) & 1) << (14 - j); }
        break;
    default: break;
    }
}

/* Raw unsigned patterns of elements [start, start+count): packed codes, or the
 * stored elements' bits (1, 2 or 4 bytes, little-endian). */
static void raw_codes(const qd_sdnq_dtype *dt, const uint8_t *data, int64_t start, int64_t count, uint32_t *out) {
    if (!dt->packed) {
        size_t es = qd_dtype_size(dt->storage);
        const uint8_t *p = data + (size_t)start * es;
        if (es == 1) for (int64_t i = 0; i < count; i++) out[i] = p[i];
        else if (es == 2) for (int64_t i = 0; i < count; i++) out[i] = (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
        else for (int64_t i = 0; i < count; i++) { uint32_t v; memcpy(&v, p + 4 * i, 4); out[i] = v; }
        return;
    }
    int n = dt->bits;
    if (n == 4 || n == 2 || n == 1) {   /* one byte holds 8/n whole codes: index directly */
        int per = 8 / n, shift = n == 4 ? 1 : n == 2 ? 2 : 3;
        uint32_t mask = (1u << n) - 1;
        for (int64_t i = 0; i < count; i++) {
            int64_t e = start + i;
            out[i] = (uint32_t)(data[e >> shift] >> ((e & (per - 1)) * n)) & mask;
        }
        return;
    }
    int K = dt->block_codes;
    size_t block_bytes = (size_t)dt->block_words * (size_t)dt->word_bytes;
    int64_t blk = start / K;
    int off = (int)(start % K);
    uint32_t tmp[16];
    while (count > 0) {
        const uint8_t *b = data + (size_t)blk * block_bytes;
        int take = K - off;
        if (take > count) take = (int)count;
        if (take == K) unpack_block(n, b, out);
        else { unpack_block(n, b, tmp); memcpy(out, tmp + off, sizeof(uint32_t) * (size_t)take); }
        out += take;
        count -= take;
        blk++;
        off = 0;
    }
}

float qd_sdnq_cfloat_value(const qd_sdnq_dtype *dt, uint32_t code) {
    int e_bits = dt->exp_bits, m_bits = dt->man_bits;
    int bias = (1 << (e_bits - 1)) - 1;
    uint32_t m = code & ((1u << m_bits) - 1);
    uint32_t e = (code >> m_bits) & ((1u << e_bits) - 1);
    uint32_t sign = dt->is_signed ? (code >> (e_bits + m_bits)) & 1 : 0;
    float v;
    if (e == 0) {
        if (m == 0) return 0.0f;                   /* -0 decodes as +0 */
        /* subnormal: m * 2^(1 - bias - M), exact in fp32 for E <= 5, M <= 15 */
        v = (float)m * qd_bits_to_f32((uint32_t)(127 + 1 - bias - m_bits) << 23);
    } else {
        v = qd_bits_to_f32((uint32_t)((int)e - bias + 127) << 23 | m << (23 - m_bits));
    }
    return sign ? -v : v;
}

#define CHUNK 256

void qd_sdnq_unpack_f32(const qd_sdnq_dtype *dt, const void *data, int64_t start, int64_t count, float *dst) {
    uint32_t raw[CHUNK];
    while (count > 0) {
        int n = count < CHUNK ? (int)count : CHUNK;
        raw_codes(dt, data, start, n, raw);
        switch (dt->family) {
        case QD_SQ_INT:
            if (dt->packed) {
                int32_t lo = (int32_t)1 << (dt->bits - 1);   /* stored as q + 2^(N-1) */
                for (int i = 0; i < n; i++) dst[i] = (float)((int32_t)raw[i] - lo);
            } else if (dt->bits == 8) {
                for (int i = 0; i < n; i++) dst[i] = (float)(int8_t)(uint8_t)raw[i];
            } else if (dt->bits == 16) {
                for (int i = 0; i < n; i++) dst[i] = (float)(int16_t)(uint16_t)raw[i];
            } else {
                for (int i = 0; i < n; i++) dst[i] = (float)(int32_t)raw[i];
            }
            break;
        case QD_SQ_UINT:
            for (int i = 0; i < n; i++) dst[i] = (float)raw[i];
            break;
        case QD_SQ_FLOAT:
            switch (dt->storage) {
            case QD_F32: for (int i = 0; i < n; i++) dst[i] = qd_bits_to_f32(raw[i]); break;
            case QD_BF16: for (int i = 0; i < n; i++) dst[i] = qd_bf16_to_f32((uint16_t)raw[i]); break;
            case QD_F16: for (int i = 0; i < n; i++) dst[i] = qd_f16_to_f32((uint16_t)raw[i]); break;
            case QD_F8_E4M3: for (int i = 0; i < n; i++) dst[i] = qd_f8e4m3_to_f32((uint8_t)raw[i]); break;
            default: for (int i = 0; i < n; i++) dst[i] = qd_f8e5m2_to_f32((uint8_t)raw[i]); break;
            }
            break;
        case QD_SQ_CFLOAT:
            for (int i = 0; i < n; i++) dst[i] = qd_sdnq_cfloat_value(dt, raw[i]);
            break;
        }
        start += n;
        dst += n;
        count -= n;
    }
}

void qd_sdnq_unpack_int(const qd_sdnq_dtype *dt, const void *data, int64_t start, int64_t count, int32_t *dst) {
    uint32_t raw[CHUNK];
    while (count > 0) {
        int n = count < CHUNK ? (int)count : CHUNK;
        raw_codes(dt, data, start, n, raw);
        if (dt->family == QD_SQ_INT && dt->packed) {
            int32_t lo = (int32_t)1 << (dt->bits - 1);
            for (int i = 0; i < n; i++) dst[i] = (int32_t)raw[i] - lo;
        } else if (dt->family == QD_SQ_INT && dt->bits == 8) {
            for (int i = 0; i < n; i++) dst[i] = (int8_t)(uint8_t)raw[i];
        } else if (dt->family == QD_SQ_INT) {
            for (int i = 0; i < n; i++) dst[i] = (int16_t)(uint16_t)raw[i];
        } else {
            for (int i = 0; i < n; i++) dst[i] = (int32_t)raw[i];
        }
        start += n;
        dst += n;
        count -= n;
    }
}
