/* Argument parsing and output checks shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_parse_int(const char *s, const char *opt, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "qdiff: %s expects an integer in %ld..%ld, got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, const char *opt, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || v != v) {
        fprintf(stderr, "qdiff: %s expects a number, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_precision(const char *s, const char *opt, int *out) {
    if (!strcmp(s, "fp32")) *out = QD_PRECISION_FP32;
    else if (!strcmp(s, "bf16")) *out = QD_PRECISION_BF16;
    else if (!strcmp(s, "auto")) *out = QD_PRECISION_AUTO;
    else {
        fprintf(stderr, "qdiff: %s expects fp32, bf16 or auto, got '%s'\n", opt, s);
        return -1;
    }
    return 0;
}

int cli_default_precision(int *out) {
    const char *env = getenv("QD_PRECISION");
    *out = QD_PRECISION_AUTO;
    return env && *env ? cli_parse_precision(env, "$QD_PRECISION", out) : 0;
}

const char *cli_precision_name(const qd_ctx *ctx) {
    return qd_ctx_precision(ctx) == QD_PRECISION_BF16 ? "bf16" : "fp32";
}

/* Fail before the long run, not after it, when the output cannot be created. */
int cli_check_writable(const char *path) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "qdiff: %s: cannot write: %s\n", path, strerror(errno));
        return -1;
    }
    fclose(f);
    remove(tmp);
    return 0;
}


double cli_jnum(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

const char *cli_jstr(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

int cli_parse_lora(const char *v, const char *opt, char **path, float *scale) {
    *scale = 1.0f;
    const char *colon = strrchr(v, ':');
    char *end = NULL;
    if (colon && colon[1]) {
        float s = strtof(colon + 1, &end);
        if (end && !*end && isfinite(s)) *scale = s;
        else colon = NULL;
    } else {
        colon = NULL;
    }
    size_t len = colon ? (size_t)(colon - v) : strlen(v);
    if (len == 0) { fprintf(stderr, "qdiff: %s needs FILE[:SCALE], got '%s'\n", opt, v); return -1; }
    *path = malloc(len + 1);
    if (!*path) { fprintf(stderr, "qdiff: out of memory\n"); return -1; }
    memcpy(*path, v, len);
    (*path)[len] = 0;
    return 0;
}
