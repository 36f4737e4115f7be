/* The "__metadata__" object of a safetensors header (string values only, per the
 * format), which the tensor reader skips. Read again from the file on demand. */
#ifndef QD_IO_SAFETENSORS_META_H
#define QD_IO_SAFETENSORS_META_H

#include <cjson/cJSON.h>
#include "base/ctx.h"

/* *out = a copy of the header's __metadata__ object (cJSON_Delete it), or NULL when the
 * header has none. Errors name the file (unreadable, truncated, malformed header). */
qd_status qd_st_read_metadata(qd_ctx *ctx, const char *path, cJSON **out);

#endif
