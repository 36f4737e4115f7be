#include "io/json.h"
#include "io/file.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

qd_status qd_json_load(qd_ctx *ctx, const char *path, cJSON **out) {
    char *text;
    *out = NULL;
    QD_TRY(qd_read_file(ctx, path, &text, NULL));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        long off = end ? (long)(end - text) : -1;
        free(text);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: invalid JSON near byte %ld", path, off);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    *out = root;
    return QD_OK;
}

qd_status qd_json_fail(qd_ctx *ctx, qd_status code, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qd_fail(ctx, code, "%s: %s", path, msg);
}

const cJSON *qd_json_item(const cJSON *obj, const char *key) {
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsNull(it) ? NULL : it;
}

int qd_json_int_range(const cJSON *obj, const char *key, int lo, int hi, int def, int *out) {
    const cJSON *it = qd_json_item(obj, key);
    if (!it) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < lo ||
        it->valuedouble > hi)
        return -1;
    *out = (int)it->valuedouble;
    return 0;
}

double qd_json_num(const cJSON *obj, const char *key, double def) {
    const cJSON *it = qd_json_item(obj, key);
    return cJSON_IsNumber(it) ? it->valuedouble : def;
}

int qd_json_int(const cJSON *obj, const char *key, int def) {
    const cJSON *it = qd_json_item(obj, key);
    return cJSON_IsNumber(it) ? (int)it->valuedouble : def;
}

int qd_json_bool(const cJSON *obj, const char *key, int def) {
    const cJSON *it = qd_json_item(obj, key);
    if (cJSON_IsBool(it)) return cJSON_IsTrue(it);
    if (cJSON_IsNumber(it)) return it->valuedouble != 0;
    return def;
}

const char *qd_json_str(const cJSON *obj, const char *key, const char *def) {
    const cJSON *it = qd_json_item(obj, key);
    return cJSON_IsString(it) ? it->valuestring : def;
}

int qd_json_ints(const cJSON *obj, const char *key, int *out, int n) {
    const cJSON *it = qd_json_item(obj, key);
    if (!it) return 0;
    if (cJSON_IsNumber(it)) {
        for (int i = 0; i < n; i++) out[i] = (int)it->valuedouble;
        return n;
    }
    if (!cJSON_IsArray(it)) return -1;
    int k = 0;
    for (const cJSON *e = it->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || k >= n) return -1;
        out[k++] = (int)e->valuedouble;
    }
    return k;
}

int qd_json_strs(const cJSON *obj, const char *key, const char **out, int n) {
    const cJSON *it = qd_json_item(obj, key);
    if (!it) return 0;
    if (!cJSON_IsArray(it)) return -1;
    int k = 0;
    for (const cJSON *e = it->child; e; e = e->next) {
        if (!cJSON_IsString(e) || k >= n) return -1;
        out[k++] = e->valuestring;
    }
    return k;
}
