/* A safetensors file written one tensor at a time, for outputs larger than memory:
 * tensor bytes go to a scratch file beside the target as they come, and finish()
 * writes header + data to the target atomically (tmp + rename), the data ordered
 * as Python's safetensors orders it (larger element sizes first, then by name) so
 * every tensor starts aligned to its element size. Memory: the tensor list only. */
#ifndef QD_IO_SAFETENSORS_STREAM_H
#define QD_IO_SAFETENSORS_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include "io/safetensors.h"

typedef struct qd_st_stream qd_st_stream;

qd_status qd_st_stream_open(qd_ctx *ctx, const char *path, qd_st_stream **out);
/* Append one tensor (data: numel * dtype size bytes). Names must be unique. */
qd_status qd_st_stream_add(qd_ctx *ctx, qd_st_stream *s, const char *name, qd_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);
/* Write the file (metadata_json: the body of the __metadata__ object, or NULL)
 * and release everything, also on failure. */
qd_status qd_st_stream_finish(qd_ctx *ctx, qd_st_stream *s, const char *metadata_json);
/* Drop everything written so far. */
void qd_st_stream_abort(qd_st_stream *s);

/* Bytes added so far. */
int64_t qd_st_stream_bytes(const qd_st_stream *s);

#endif
