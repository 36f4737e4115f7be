/* JSON config access (cJSON underneath): load with a clear error, and typed
 * getters with defaults, the way diffusers fills missing config keys. */
#ifndef QD_IO_JSON_H
#define QD_IO_JSON_H

#include <cjson/cJSON.h>
#include "base/ctx.h"

/* Parse a JSON file; error names the file. */
qd_status qd_json_load(qd_ctx *ctx, const char *path, cJSON **out);

/* Getters: the default when the key is absent or null. */
double qd_json_num(const cJSON *obj, const char *key, double def);
int qd_json_int(const cJSON *obj, const char *key, int def);
int qd_json_bool(const cJSON *obj, const char *key, int def);
const char *qd_json_str(const cJSON *obj, const char *key, const char *def);
/* An int or a list of ints: fills out[0..n) (a scalar is repeated). Returns the
 * count read (n when a scalar), 0 when absent/null, -1 when malformed. */
int qd_json_ints(const cJSON *obj, const char *key, int *out, int n);
/* List of strings: count, or -1. out[i] point into the cJSON tree. */
int qd_json_strs(const cJSON *obj, const char *key, const char **out, int n);

#endif
