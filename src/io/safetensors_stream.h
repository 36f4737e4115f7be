/* A safetensors file written one tensor at a time, for outputs larger than memory.
 * Data is laid out as Python's safetensors lays it out (larger element sizes
 * first, then by name) so every tensor starts aligned to its element size, and the
 * file appears atomically (tmp + rename) at finish(). Two ways to use it:
 *  - planned: declare() every tensor, layout() (writes the header), then add()
 *    each declared tensor in any order: its bytes go straight to their place;
 *  - unplanned: add() only: bytes go to a scratch file beside the target, and
 *    finish() writes header + data (the data is written twice).
 * Memory: the tensor list only. */
#ifndef QD_IO_SAFETENSORS_STREAM_H
#define QD_IO_SAFETENSORS_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include "io/safetensors.h"

typedef struct qd_st_stream qd_st_stream;

qd_status qd_st_stream_open(qd_ctx *ctx, const char *path, qd_st_stream **out);
/* Planned mode: one entry per tensor (names unique), then the layout. metadata_json:
 * the body of the __metadata__ object, or NULL. */
qd_status qd_st_stream_declare(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                               const int64_t *shape);
qd_status qd_st_stream_layout(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json);
/* Write one tensor (numel * dtype size bytes). Planned: it must be a declared one,
 * with the declared dtype and shape, written once. */
qd_status qd_st_stream_add(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);
/* Complete the file (unplanned: metadata_json as in layout(); planned: ignored,
 * and every declared tensor must have been written) and release everything, also
 * on failure. */
qd_status qd_st_stream_finish(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json);
/* Drop everything written so far. */
void qd_st_stream_abort(qd_st_stream *s);

#endif
