/* Python-style JSON printing and key insertion into a config's text. */
#include "convert/pyjson.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *p; size_t n, cap; int oom; } sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }
static void indent(sbuf *b, int level) { for (int i = 0; i < level; i++) put(b, "  ", 2); }

void qd_pyjson_float(double v, char *buf, size_t n) {
    if (isnan(v)) { snprintf(buf, n, "NaN"); return; }
    if (isinf(v)) { snprintf(buf, n, v > 0 ? "Infinity" : "-Infinity"); return; }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    /* Python: exponent form only below 1e-4 or from 1e16; always a '.' or 'e' */
    double a = fabs(v);
    if (strchr(buf, 'e') && a >= 1e-4 && a < 1e16) {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, n, "%.*f", prec, v);
            if (strtod(buf, NULL) == v) break;
        }
    }
    char *e = strchr(buf, 'e');
    if (e) {   /* "1e-05": Python pads the exponent to two digits, as printf does */
        return;
    }
    if (!strchr(buf, '.')) {
        size_t k = strlen(buf);
        if (k + 2 < n) { buf[k] = '.'; buf[k + 1] = '0'; buf[k + 2] = 0; }
    }
}

static void put_string(sbuf *b, const char *s) {
    put(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    char tmp[16];
    while (*u) {
        unsigned c = *u;
        if (c == '"' || c == '\\') { tmp[0] = '\\'; tmp[1] = (char)c; put(b, tmp, 2); u++; continue; }
        if (c == '\n') { puts_(b, "\\n"); u++; continue; }
        if (c == '\r') { puts_(b, "\\r"); u++; continue; }
        if (c == '\t') { puts_(b, "\\t"); u++; continue; }
        if (c == '\b') { puts_(b, "\\b"); u++; continue; }
        if (c == '\f') { puts_(b, "\\f"); u++; continue; }
        if (c < 0x20) { snprintf(tmp, sizeof tmp, "\\u%04x", c); puts_(b, tmp); u++; continue; }
        if (c < 0x80) { put(b, (const char *)u, 1); u++; continue; }
        /* ensure_ascii: a UTF-8 sequence as \uXXXX (surrogate pairs above the BMP) */
        unsigned cp = 0, len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        cp = len == 1 ? c : c & (0x3fu >> (len - 1));
        for (unsigned i = 1; i < len; i++) {
            if ((u[i] & 0xc0) != 0x80) { len = i; break; }
            cp = cp << 6 | (u[i] & 0x3fu);
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        } else {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
        }
        puts_(b, tmp);
        u += len;
    }
    put(b, "\"", 1);
}

static int by_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static void print(sbuf *b, const cJSON *v, int level) {
    char num[64];
    if (cJSON_IsRaw(v)) { puts_(b, v->valuestring); return; }
    if (cJSON_IsNull(v)) { puts_(b, "null"); return; }
    if (cJSON_IsTrue(v)) { puts_(b, "true"); return; }
    if (cJSON_IsFalse(v)) { puts_(b, "false"); return; }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) < 1e15) snprintf(num, sizeof num, "%.0f", d);
        else qd_pyjson_float(d, num, sizeof num);
        puts_(b, num);
        return;
    }
    if (cJSON_IsString(v)) { put_string(b, v->valuestring); return; }
    int n = cJSON_GetArraySize(v);
    int obj = cJSON_IsObject(v);
    if (n == 0) { puts_(b, obj ? "{}" : "[]"); return; }
    const cJSON **items = malloc(sizeof *items * (size_t)n);
    if (!items) { b->oom = 1; return; }
    int k = 0;
    for (const cJSON *c = v->child; c && k < n; c = c->next) items[k++] = c;
    if (obj) qsort(items, (size_t)k, sizeof *items, by_key);
    puts_(b, obj ? "{\n" : "[\n");
    for (int i = 0; i < k; i++) {
        indent(b, level + 1);
        if (obj) { put_string(b, items[i]->string); puts_(b, ": "); }
        print(b, items[i], level + 1);
        puts_(b, i + 1 < k ? ",\n" : "\n");
    }
    indent(b, level);
    puts_(b, obj ? "}" : "]");
    free(items);
}

char *qd_pyjson_print(const cJSON *v, int level) {
    sbuf b = {0};
    print(&b, v, level);
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}

/* End of the JSON string starting at s[i] == '"': index just past the closing quote. */
static size_t skip_string(const char *s, size_t i) {
    for (i++; s[i] && s[i] != '"'; i++)
        if (s[i] == '\\' && s[i + 1]) i++;
    return s[i] ? i + 1 : i;
}

char *qd_pyjson_set_key(const char *text, const char *key, const cJSON *value) {
    char *val = qd_pyjson_print(value, 1);
    if (!val) return NULL;
    /* top-level keys: name, start of the line holding it, and the span of its value */
    size_t i = 0, n = strlen(text);
    while (i < n && text[i] != '{') i++;
    size_t open = i, close = 0, ins = 0, vstart = 0, vend = 0, last_end = 0;
    int depth = 0, found = 0, inserted_before = 0;
    int expect_key = 1;
    for (; i < n; i++) {
        char c = text[i];
        if (c == '"') {
            size_t e = skip_string(text, i);
            if (depth == 1 && expect_key) {
                size_t klen = e - i - 2;
                int cmp = strncmp(text + i + 1, key, klen);
                if (cmp == 0 && strlen(key) != klen) cmp = klen < strlen(key) ? -1 : 1;
                size_t j = e;
                while (j < n && text[j] != ':') j++;
                j++;
                while (j < n && (text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) j++;
                if (cmp == 0) { found = 1; vstart = j; }
                else if (cmp > 0 && !inserted_before && !found) {
                    size_t ls = i;
                    while (ls > open + 1 && text[ls - 1] != '\n') ls--;
                    ins = ls;
                    inserted_before = 1;
                }
                expect_key = 0;
                i = j - 1;
                continue;
            }
            i = e - 1;
            continue;
        }
        if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') {
            if (depth == 1) {
                close = i;
                size_t t = i;
                while (t > open && (text[t - 1] == ' ' || text[t - 1] == '\n' || text[t - 1] == '\t' || text[t - 1] == '\r')) t--;
                if (found && !vend) vend = t;
                last_end = t;
            }
            depth--;
            if (depth == 0) break;
        } else if (c == ',' && depth == 1) {
            if (found && !vend) {
                size_t t = i;
                while (t > vstart && (text[t - 1] == ' ' || text[t - 1] == '\n')) t--;
                vend = t;
            }
            expect_key = 1;
        }
    }
    sbuf b = {0};
    if (!close) {   /* not an object we understand: print the key alone into a fresh object */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, key, cJSON_Duplicate(value, 1));
        char *t = qd_pyjson_print(o, 0);
        cJSON_Delete(o);
        free(val);
        return t;
    }
    if (found) {
        put(&b, text, vstart);
        puts_(&b, val);
        puts_(&b, text + vend);
    } else if (inserted_before) {
        put(&b, text, ins);
        puts_(&b, "  ");
        put_string(&b, key);
        puts_(&b, ": ");
        puts_(&b, val);
        puts_(&b, ",\n");
        puts_(&b, text + ins);
    } else if (last_end > open + 1) {
        put(&b, text, last_end);
        puts_(&b, ",\n  ");
        put_string(&b, key);
        puts_(&b, ": ");
        puts_(&b, val);
        puts_(&b, text + last_end);
    } else {   /* empty object */
        put(&b, text, open + 1);
        puts_(&b, "\n  ");
        put_string(&b, key);
        puts_(&b, ": ");
        puts_(&b, val);
        puts_(&b, "\n");
        puts_(&b, text + close);
    }
    free(val);
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
