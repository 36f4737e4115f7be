/* safetensors reader: the file is memory-mapped, the JSON header parsed and every
 * tensor's dtype, shape and byte range checked against the file before use.
 * A qd_st_set groups one file or the shards named by a *.safetensors.index.json. */
#ifndef QD_IO_SAFETENSORS_H
#define QD_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "base/ctx.h"

typedef enum {
    QD_F32, QD_F16, QD_BF16, QD_F64, QD_F8_E4M3, QD_F8_E5M2,
    QD_I64, QD_I32, QD_I16, QD_I8, QD_U64, QD_U32, QD_U16, QD_U8, QD_BOOL,
    QD_F8_E8M0,                 /* power-of-two scale byte (MXFP8 block scales): 2^(b-127), 255 NaN */
    QD_DTYPE_COUNT
} qd_dtype;

const char *qd_dtype_name(qd_dtype t);     /* safetensors spelling: "F32", "BF16", ... */
size_t qd_dtype_size(qd_dtype t);
int qd_dtype_from_name(const char *s, qd_dtype *out); /* 0 on success */

#define QD_MAX_DIMS 8

/* A tensor as stored in a file: read-only bytes inside the mapping. */
typedef struct {
    const char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
    const char *file;           /* path of the file holding it, for messages */
} qd_st_tensor;

typedef struct qd_st_file qd_st_file;

typedef struct {
    qd_st_file **files;
    int n_files;
    qd_st_tensor *tensors;      /* sorted by name */
    int64_t n_tensors;
} qd_st_set;

/* Open one .safetensors file, or a directory/index: `path` may be a .safetensors
 * file or a *.safetensors.index.json. */
qd_status qd_st_open(qd_ctx *ctx, const char *path, qd_st_set *out);
void qd_st_close(qd_st_set *set);

/* NULL when absent. */
const qd_st_tensor *qd_st_find(const qd_st_set *set, const char *name);

/* Find a tensor and check its shape (ndim dims; a dim of -1 matches anything).
 * On mismatch or absence: error naming the file, the tensor and both shapes. */
qd_status qd_st_get(qd_ctx *ctx, const qd_st_set *set, const char *name,
                    int ndim, const int64_t *shape, const qd_st_tensor **out);

/* Convert `n` elements starting at element `offset` of t to float. Float and
 * integer dtypes are accepted (integers converted by value). */
void qd_st_to_f32(const qd_st_tensor *t, int64_t offset, int64_t n, float *dst);

/* Tell the kernel a tensor's mapped pages are no longer needed (streaming passes
 * over a model keep the resident set to the tensors in hand); they are read
 * from the file again if touched later. */
void qd_st_release(const qd_st_tensor *t);

/* Write tensors to a safetensors file atomically (tmp + rename). */
typedef struct {
    const char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    const void *data;
} qd_st_out;
qd_status qd_st_write(qd_ctx *ctx, const char *path, const qd_st_out *t, int n,
                      const char *metadata_json /* may be NULL: {"k":"v",...} object body */);

/* Header bytes one tensor entry can take (name fully escaped, every dim 20 digits). */
size_t qd_st_header_entry_cap(const char *name, int ndim);
/* Append one tensor's header entry ("name":{"dtype":..,"shape":[..],"data_offsets":[b,e]},
 * preceded by a comma unless first) at h + len; the name is JSON-escaped (tensor names
 * come from input files). Returns the new length; the caller sized h with the cap above. */
size_t qd_st_header_entry(char *h, size_t len, size_t cap, int first, const char *name, qd_dtype dtype,
                          const int64_t *shape, int ndim, uint64_t begin, uint64_t end);

#endif
