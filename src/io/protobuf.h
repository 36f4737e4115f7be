/* Protocol-buffers wire format, read-only: enough to walk a message field by
 * field (SentencePiece's .model files). The input is untrusted: every varint
 * and length is checked against the end of the buffer; nothing is allocated. */
#ifndef QD_IO_PROTOBUF_H
#define QD_IO_PROTOBUF_H

#include <stddef.h>
#include <stdint.h>

enum { QD_PB_VARINT = 0, QD_PB_I64 = 1, QD_PB_LEN = 2, QD_PB_I32 = 5 };

typedef struct {
    const uint8_t *p, *end;
} qd_pb_reader;

typedef struct {
    uint32_t number;        /* field number (>= 1) */
    int wire;               /* QD_PB_VARINT, QD_PB_I64, QD_PB_LEN or QD_PB_I32 */
    uint64_t u;             /* VARINT value, or the raw bits of I64 / I32 */
    const uint8_t *data;    /* LEN: the bytes (inside the reader's buffer) */
    size_t len;
} qd_pb_field;

static inline qd_pb_reader qd_pb_init(const void *data, size_t len) {
    qd_pb_reader r = {(const uint8_t *)data, (const uint8_t *)data + len};
    return r;
}

/* Next field: 1 when *f was filled, 0 at the clean end of the buffer, -1 when
 * the bytes are malformed (truncated varint or length, bad wire type, field 0,
 * groups). */
int qd_pb_next(qd_pb_reader *r, qd_pb_field *f);

/* An I32 field's bits as a float (proto `float`). */
float qd_pb_float(const qd_pb_field *f);

#endif
