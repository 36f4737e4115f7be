#include "io/protobuf.h"

#include <string.h>

/* A varint is at most 10 bytes; the 10th may only carry the top bit. */
static int read_varint(qd_pb_reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        if (i == 9 && b > 1) return -1;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) { *out = v; return 0; }
    }
    return -1;
}

static uint64_t read_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int qd_pb_next(qd_pb_reader *r, qd_pb_field *f) {
    if (r->p >= r->end) return 0;
    memset(f, 0, sizeof *f);
    uint64_t key;
    if (read_varint(r, &key) != 0) return -1;
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) return -1;
    f->number = (uint32_t)(key >> 3);
    f->wire = (int)(key & 7);
    size_t left;
    switch (f->wire) {
    case QD_PB_VARINT:
        return read_varint(r, &f->u) == 0 ? 1 : -1;
    case QD_PB_I64:
    case QD_PB_I32: {
        size_t n = f->wire == QD_PB_I64 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n) return -1;
        f->u = read_le(r->p, (int)n);
        r->p += n;
        return 1;
    }
    case QD_PB_LEN:
        if (read_varint(r, &f->u) != 0) return -1;
        left = (size_t)(r->end - r->p);
        if (f->u > left) return -1;
        f->data = r->p;
        f->len = (size_t)f->u;
        r->p += f->len;
        return 1;
    default:            /* 3/4 are deprecated groups, 6/7 do not exist */
        return -1;
    }
}

float qd_pb_float(const qd_pb_field *f) {
    uint32_t bits = (uint32_t)f->u;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}
