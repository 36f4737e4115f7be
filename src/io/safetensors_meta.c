#include "io/safetensors_meta.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

qd_status qd_st_read_metadata(qd_ctx *ctx, const char *path, cJSON **out) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t lb[8];
    uint64_t hlen = 0;
    qd_status st = QD_OK;
    if (fread(lb, 1, 8, fp) != 8) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: truncated safetensors file", path);
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)lb[i] << (8 * i);
    if (st == QD_OK && hlen > (100u << 20))
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: header length %llu is implausible", path, (unsigned long long)hlen);
    char *json = st == QD_OK ? malloc(hlen + 1) : NULL;
    if (st == QD_OK && !json) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    if (st == QD_OK && fread(json, 1, hlen, fp) != hlen)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: header length %llu exceeds the file", path, (unsigned long long)hlen);
    fclose(fp);
    if (st != QD_OK) { free(json); return st; }
    json[hlen] = 0;
    cJSON *root = cJSON_Parse(json);
    free(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    cJSON *meta = cJSON_DetachItemFromObjectCaseSensitive(root, "__metadata__");
    cJSON_Delete(root);
    if (meta && !cJSON_IsObject(meta)) {
        cJSON_Delete(meta);
        return qd_fail(ctx, QD_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    }
    *out = meta;
    return QD_OK;
}
