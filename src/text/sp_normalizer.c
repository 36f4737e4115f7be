/* Translated from sentencepiece's normalizer.cc, util.cc (UTF-8) and
 * darts-clone's commonPrefixSearch (all Apache-2.0 / BSD). */
#include "text/sp_normalizer.h"

#include <stdlib.h>
#include <string.h>

#define SPACE_SYMBOL "\xe2\x96\x81"     /* U+2581 */
#define MAX_TRIE_RESULTS 32            /* sentencepiece keeps at most 32 prefix matches */

int qd_sp_normalizer_init(qd_sp_normalizer *nz, const void *blob, size_t len) {
    memset(nz, 0, sizeof *nz);
    nz->remove_extra_whitespaces = 1;
    nz->escape_whitespaces = 1;
    if (len == 0) return 0;
    const unsigned char *b = blob;
    if (len <= 4) return -1;
    uint32_t trie_bytes = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    if (trie_bytes > len - 4 || trie_bytes < 4) return -1;
    nz->n_units = trie_bytes / 4;
    nz->n_strs = len - 4 - trie_bytes;
    nz->units = malloc(nz->n_units * sizeof *nz->units);
    nz->strs = malloc(nz->n_strs + 1);
    if (!nz->units || !nz->strs) { qd_sp_normalizer_free(nz); return -2; }
    for (size_t i = 0; i < nz->n_units; i++) {
        const unsigned char *u = b + 4 + 4 * i;
        nz->units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
    }
    memcpy(nz->strs, b + 4 + trie_bytes, nz->n_strs);
    nz->strs[nz->n_strs] = 0;      /* a last string without its NUL still ends */
    return 0;
}

void qd_sp_normalizer_free(qd_sp_normalizer *nz) {
    free(nz->units);
    free(nz->strs);
    nz->units = NULL;
    nz->strs = NULL;
    nz->n_units = nz->n_strs = 0;
}

/* ---- darts-clone unit fields ---- */
static inline int unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t unit_value(uint32_t u) { return u & 0x7FFFFFFFu; }
static inline uint32_t unit_label(uint32_t u) { return u & (0x80000000u | 0xFFu); }
static inline uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

/* Longest charsmap rule that is a prefix of s[0..n) among the first 32 matches
 * (matches come shortest first). Returns its byte length (0: none) and sets
 * *repl to the replacement. */
static size_t longest_rule(const qd_sp_normalizer *nz, const unsigned char *s, size_t n, const char **repl) {
    if (!nz->units) return 0;
    size_t best = 0;
    int found = 0;
    uint32_t node = unit_offset(nz->units[0]);
    for (size_t i = 0; i < n && found < MAX_TRIE_RESULTS; i++) {
        node ^= s[i];
        if (node >= nz->n_units) break;
        uint32_t u = nz->units[node];
        if (unit_label(u) != s[i]) break;
        node ^= unit_offset(u);
        if (unit_has_leaf(u)) {
            if (node >= nz->n_units) break;
            uint32_t v = unit_value(nz->units[node]);
            found++;
            if (v < nz->n_strs) { best = i + 1; *repl = nz->strs + v; }
        }
    }
    return best;
}

/* sentencepiece's DecodeUTF8 validity: shortest form, no surrogates, <= U+10FFFF.
 * Returns the length of a valid character at s, or 0. */
static size_t valid_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    uint32_t cp;
    if (n >= 2 && (c & 0xE0) == 0xC0) {
        if ((s[1] & 0xC0) != 0x80) return 0;
        cp = (c & 0x1Fu) << 6 | (s[1] & 0x3Fu);
        return cp >= 0x80 ? 2 : 0;
    }
    if (n >= 3 && (c & 0xF0) == 0xE0) {
        if ((s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        cp = (c & 0x0Fu) << 12 | (s[1] & 0x3Fu) << 6 | (s[2] & 0x3Fu);
        return cp >= 0x800 && (cp < 0xD800 || cp >= 0xE000) ? 3 : 0;
    }
    if (n >= 4 && (c & 0xF8) == 0xF0) {
        if ((s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        cp = (c & 0x07u) << 18 | (s[1] & 0x3Fu) << 12 | (s[2] & 0x3Fu) << 6 | (s[3] & 0x3Fu);
        return cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
    }
    return 0;
}

size_t qd_sp_char_len(const char *s, size_t n) {
    static const unsigned char len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    size_t l = len[(unsigned char)s[0] >> 4];
    return l < n ? l : n;
}

/* One normalization step: the replacement for the longest rule at s, or the
 * character itself, or U+FFFD for one malformed byte. Returns bytes consumed. */
static size_t normalize_prefix(const qd_sp_normalizer *nz, const unsigned char *s, size_t n,
                               const char **out, size_t *out_len) {
    const char *repl = NULL;
    size_t m = longest_rule(nz, s, n, &repl);
    if (m) { *out = repl; *out_len = strlen(repl); return m; }
    size_t l = valid_utf8_len(s, n);
    if (!l) { *out = "\xEF\xBF\xBD"; *out_len = 3; return 1; }
    *out = (const char *)s;
    *out_len = l;
    return l;
}

typedef struct { char *p; size_t n, cap; int oom; } sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void put_ws(const qd_sp_normalizer *nz, sbuf *b) {
    if (nz->escape_whitespaces) put(b, SPACE_SYMBOL, 3);
    else put(b, " ", 1);
}

int qd_sp_normalize(const qd_sp_normalizer *nz, const char *text, size_t n, qd_sp_prefix_mode mode,
                    char **out, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)text;
    sbuf b = {0};
    put(&b, "", 0);
    const char *r;
    size_t rn;
    int had_leading = 0;
    /* leading whitespace: only whole replacements equal to " " are skipped here */
    if (nz->remove_extra_whitespaces) {
        while (n) {
            size_t m = normalize_prefix(nz, s, n, &r, &rn);
            if (rn != 1 || r[0] != ' ') break;
            had_leading = 1;
            s += m;
            n -= m;
        }
    }
    if (n) {
        if (mode == QD_SP_PREFIX || (mode == QD_SP_KEEP_LEADING && had_leading)) put_ws(nz, &b);
        int prev_space = nz->remove_extra_whitespaces;
        while (n) {
            size_t m = normalize_prefix(nz, s, n, &r, &rn);
            /* a replacement's own leading spaces are dropped after a space */
            while (prev_space && rn && r[0] == ' ') { r++; rn--; }
            if (rn) {
                for (size_t i = 0; i < rn; i++) {
                    if (r[i] == ' ' && nz->escape_whitespaces) put(&b, SPACE_SYMBOL, 3);
                    else put(&b, r + i, 1);
                }
                prev_space = r[rn - 1] == ' ';
            }
            s += m;
            n -= m;
            if (!nz->remove_extra_whitespaces) prev_space = 0;
        }
        if (nz->remove_extra_whitespaces) {
            const char *ws = nz->escape_whitespaces ? SPACE_SYMBOL : " ";
            size_t wn = strlen(ws);
            while (b.n >= wn && !memcmp(b.p + b.n - wn, ws, wn)) b.n -= wn;
            if (b.p) b.p[b.n] = 0;
        }
    }
    if (b.oom) { free(b.p); return -2; }
    *out = b.p;
    *out_len = b.n;
    return 0;
}
