/* Streaming safetensors writer: the header (every name, dtype and shape) is written
 * first, then each tensor's bytes in header order, one at a time, so a converter
 * holds only the tensor it is producing. Output goes to a temporary file beside the
 * destination and is renamed into place by commit; abort (or any error) removes it. */
#ifndef QD_IO_SAFETENSORS_SEQWRITE_H
#define QD_IO_SAFETENSORS_SEQWRITE_H

#include <stddef.h>
#include <cjson/cJSON.h>
#include "base/ctx.h"
#include "io/safetensors.h"

typedef struct qd_st_writer qd_st_writer;

/* specs[0..n): name, dtype, ndim, shape (data is ignored). metadata: NULL or an object
 * of string values, written as "__metadata__" (other value types are refused). */
qd_status qd_st_writer_open(qd_ctx *ctx, const char *path, const qd_st_out *specs, int n,
                            const cJSON *metadata, qd_st_writer **out);
/* The bytes of the next tensor in header order; nbytes must equal its size. */
qd_status qd_st_writer_put(qd_ctx *ctx, qd_st_writer *w, const void *data, size_t nbytes);
/* Part of the next tensor: call repeatedly; the tensor is complete once its size is reached. */
qd_status qd_st_writer_put_part(qd_ctx *ctx, qd_st_writer *w, const void *data, size_t nbytes);
/* All tensors written: close and rename into place; frees w. */
qd_status qd_st_writer_commit(qd_ctx *ctx, qd_st_writer *w);
/* Remove the temporary file and free w (NULL is fine). */
void qd_st_writer_abort(qd_st_writer *w);

#endif
