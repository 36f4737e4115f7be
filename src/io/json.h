/* JSON config access (cJSON underneath): load with a clear error, and typed
 * getters with defaults, the way diffusers fills missing config keys. */
#ifndef QD_IO_JSON_H
#define QD_IO_JSON_H

#include <cjson/cJSON.h>
#include "base/ctx.h"

/* Parse a JSON file; error names the file. */
qd_status qd_json_load(qd_ctx *ctx, const char *path, cJSON **out);

/* An error about a config file: "<path>: <formatted message>". Returns code. */
qd_status qd_json_fail(qd_ctx *ctx, qd_status code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The key's item, or NULL when it is absent or null (diffusers then takes the default). */
const cJSON *qd_json_item(const cJSON *obj, const char *key);
/* An integer key in [lo, hi]: *out = def when absent or null. Returns 0, or -1
 * (out untouched) when the value is not an integer in [lo, hi]; the caller
 * reports the error in its own words. */
int qd_json_int_range(const cJSON *obj, const char *key, int lo, int hi, int def, int *out);

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
