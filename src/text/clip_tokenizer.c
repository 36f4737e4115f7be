/* CLIP BPE tokenizer, translated from transformers' tokenization_clip.py
 * (Apache-2.0) and the parts of PreTrainedTokenizer.tokenize and ftfy.fix_text
 * (ftfy 6.x) it runs through. Comments cite the Python behaviour being copied. */
#include "text/clip_tokenizer.h"
#include "text/unicode_tables.h"
#include "io/file.h"
#include "io/json.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Growable buffers with a sticky out-of-memory flag, checked once at the end */

typedef struct { uint32_t *v; size_t n, cap; int oom; } cpbuf;
typedef struct { int32_t *v; size_t n, cap; int oom; } ibuf;

/* pp points at any object pointer (T **); memcpy keeps this free of aliasing games. */
static int grow(void *pp, size_t *cap, size_t need, size_t elem, int *oom) {
    if (need <= *cap) return 1;
    if (*oom) return 0;
    size_t nc = *cap ? *cap : 32;
    while (nc < need) nc *= 2;
    void *v;
    memcpy(&v, pp, sizeof v);
    void *nv = nc <= SIZE_MAX / elem ? realloc(v, nc * elem) : NULL;
    if (!nv) { *oom = 1; return 0; }
    memcpy(pp, &nv, sizeof nv);
    *cap = nc;
    return 1;
}

static void cb_push(cpbuf *b, uint32_t c) {
    if (grow(&b->v, &b->cap, b->n + 1, sizeof *b->v, &b->oom)) b->v[b->n++] = c;
}

static void cb_append(cpbuf *b, const uint32_t *s, size_t n) {
    if (!n) return;
    if (grow(&b->v, &b->cap, b->n + n, sizeof *b->v, &b->oom)) {
        memcpy(b->v + b->n, s, n * sizeof *s);
        b->n += n;
    }
}

static void cb_swap(cpbuf *a, cpbuf *b) { cpbuf t = *a; *a = *b; *b = t; }

static void ib_push(ibuf *b, int32_t x) {
    if (grow(&b->v, &b->cap, b->n + 1, sizeof *b->v, &b->oom)) b->v[b->n++] = x;
}

/* ------------------------------------------------------------------------ */
/* UTF-8 */

/* Like Python's bytes.decode("utf-8", "replace"): one U+FFFD per maximal
 * ill-formed subsequence, so arbitrary bytes never crash and stay sane. */
static void utf8_decode(const unsigned char *s, size_t n, cpbuf *out) {
    size_t i = 0;
    while (i < n) {
        unsigned b = s[i];
        if (b < 0x80) { cb_push(out, b); i++; continue; }
        int need;
        uint32_t cp;
        unsigned lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) { need = 1; cp = b & 0x1F; }
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2; cp = b & 0x0F;
            if (b == 0xE0) lo = 0xA0;
            else if (b == 0xED) hi = 0x9F;      /* no surrogates */
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3; cp = b & 0x07;
            if (b == 0xF0) lo = 0x90;
            else if (b == 0xF4) hi = 0x8F;
        } else { cb_push(out, 0xFFFD); i++; continue; }
        size_t j = i + 1;
        int k;
        for (k = 0; k < need && j < n; k++, j++) {
            unsigned c = s[j];
            if (c < lo || c > hi) break;
            cp = (cp << 6) | (c & 0x3F);
            lo = 0x80; hi = 0xBF;
        }
        cb_push(out, k == need ? cp : 0xFFFD);
        i = j;
    }
}

static size_t utf8_put(uint32_t c, unsigned char *o) {
    if (c < 0x80) { o[0] = (unsigned char)c; return 1; }
    if (c < 0x800) { o[0] = (unsigned char)(0xC0 | (c >> 6)); o[1] = (unsigned char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12)); o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18)); o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ------------------------------------------------------------------------ */
/* Table lookups */

static const uint32_t *map3_find(const qd_uc_map3 *t, int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t[mid].cp == cp) return t[mid].to;
        if (t[mid].cp < cp) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

static const qd_uc_pair *pair_find(const qd_uc_pair *t, int n, uint32_t from) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t[mid].from == from) return &t[mid];
        if (t[mid].from < from) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

static void push_map3(cpbuf *out, const uint32_t *to) {
    for (int k = 0; k < 3 && to[k]; k++) cb_push(out, to[k]);
}

static int ccc_of(uint32_t c) { return c < 0x300 ? 0 : qd_uc_get(c)->ccc; }
static int flags_of(uint32_t c) { return qd_uc_get(c)->flags; }

/* ------------------------------------------------------------------------ */
/* Unicode NFC (unicodedata.normalize("NFC")), which ftfy applies last */

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
       L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = 588, S_COUNT = 11172 };

static void decompose_push(cpbuf *out, uint32_t c) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) {
        uint32_t s = c - S_BASE;
        cb_push(out, L_BASE + s / N_COUNT);
        cb_push(out, V_BASE + (s % N_COUNT) / T_COUNT);
        if (s % T_COUNT) cb_push(out, T_BASE + s % T_COUNT);
        return;
    }
    int lo = 0, hi = qd_uc_decomp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const qd_uc_decomp_entry *e = &qd_uc_decomp_table[mid];
        if (e->cp == c) { cb_append(out, qd_uc_decomp_pool + e->off, e->len); return; }
        if (e->cp < c) lo = mid + 1; else hi = mid - 1;
    }
    cb_push(out, c);
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    int lo = 0, hi = qd_uc_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const qd_uc_comp_entry *e = &qd_uc_comp_table[mid];
        if (e->a == a && e->b == b) return e->composite;
        if (e->a < a || (e->a == a && e->b < b)) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

static void nfc(const uint32_t *in, size_t n, cpbuf *out, cpbuf *tmp) {
    out->n = 0;
    size_t i;
    for (i = 0; i < n && in[i] < 0x300; i++) {}
    if (i == n) { cb_append(out, in, n); return; }   /* nothing below U+0300 decomposes or combines */
    tmp->n = 0;
    for (i = 0; i < n; i++) decompose_push(tmp, in[i]);
    if (tmp->oom) { out->oom = 1; return; }
    uint32_t *d = tmp->v;
    /* canonical ordering: stable sort of each run of non-starters by ccc */
    for (i = 1; i < tmp->n; i++) {
        int c = ccc_of(d[i]);
        if (!c) continue;
        for (size_t j = i; j > 0 && ccc_of(d[j - 1]) > c; j--) {
            uint32_t x = d[j]; d[j] = d[j - 1]; d[j - 1] = x;
        }
    }
    /* canonical composition */
    long starter = -1;
    int prev_cc = 0;
    for (i = 0; i < tmp->n; i++) {
        uint32_t c = d[i];
        int cc = ccc_of(c);
        if (starter >= 0) {
            int adjacent = (long)out->n - 1 == starter;
            if (adjacent || (prev_cc != 0 && prev_cc < cc)) {
                uint32_t comp = compose(out->v[starter], c);
                if (comp) { out->v[starter] = comp; continue; }
            }
        }
        if (cc == 0) starter = (long)out->n;
        cb_push(out, c);
        if (out->oom) return;
        prev_cc = cc;
    }
}

/* ------------------------------------------------------------------------ */
/* ftfy fixers (ftfy/fixes.py, ftfy/chardata.py) */

static int is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static int is_hex(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static void push_utf8_str(cpbuf *out, const char *s) {
    cpbuf tmp = {0};
    utf8_decode((const unsigned char *)s, strlen(s), &tmp);
    if (tmp.oom) out->oom = 1; else cb_append(out, tmp.v, tmp.n);
    free(tmp.v);
}

static const char *entity_find(const char *name) {
    int lo = 0, hi = qd_uc_entity_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(qd_uc_entities[mid].name, name);
        if (!c) return qd_uc_entities[mid].value;
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

/* html.unescape of "&#...;" where body is the part after "&#". Returns 1 and
 * sets *cp (UINT32_MAX: empty result) when the whole reference is consumed. */
static int numeric_charref(const uint32_t *body, size_t n, uint32_t *cp) {
    uint32_t num = 0;
    size_t k = 0;
    int base = 10;
    if (n && (body[0] == 'x' || body[0] == 'X')) { base = 16; k = 1; }
    if (k >= n) return 0;
    for (; k < n; k++) {
        uint32_t c = body[k], dv;
        if (base == 16 && !is_hex(c)) return 0;
        if (base == 10 && !(c >= '0' && c <= '9')) return 0;
        dv = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        num = num > 0x10FFFF ? 0x110000 : num * (uint32_t)base + dv;   /* saturate: > 0x10FFFF */
    }
    if (num > 0x10FFFF) num = 0x110000;
    const qd_uc_pair *p = pair_find(qd_uc_invalid_charrefs, qd_uc_invalid_charref_count, num);
    if (p) *cp = p->to;
    else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) *cp = 0xFFFD;
    else {
        int lo = 0, hi = qd_uc_invalid_codepoint_count - 1, bad = 0;
        while (lo <= hi) {
            int mid = (lo + hi) / 2;
            if (qd_uc_invalid_codepoints[mid] == num) { bad = 1; break; }
            if (qd_uc_invalid_codepoints[mid] < num) lo = mid + 1; else hi = mid - 1;
        }
        *cp = bad ? UINT32_MAX : num;
    }
    return 1;
}

/* HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24};  with _unescape_fixup. */
static void fx_unescape_html(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    size_t i = 0;
    while (i < n) {
        if (s[i] == '&') {
            size_t j = i + 1;
            int hash = j < n && s[j] == '#';
            if (hash) j++;
            size_t k = j;
            while (k < n && k - j < 25 && is_ascii_alnum(s[k])) k++;
            size_t nal = k - j;
            if (nal >= 1 && nal <= 24 && k < n && s[k] == ';') {
                char name[32];
                size_t m = 0;
                for (size_t q = i; q <= k; q++) name[m++] = (char)s[q];
                name[m] = 0;
                const char *val = entity_find(name);
                uint32_t cp;
                if (val) push_utf8_str(out, val);
                else if (hash && numeric_charref(s + j, nal, &cp) && cp != ';') {
                    /* html.unescape leaving a ';' means it consumed only part: keep the text */
                    if (cp != UINT32_MAX) cb_push(out, cp);
                } else cb_append(out, s + i, k + 1 - i);
                i = k + 1;
                continue;
            }
        }
        cb_push(out, s[i++]);
    }
}

static void fx_c1_controls(uint32_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x80 && s[i] <= 0x9F) s[i] = qd_uc_cp1252_c1[s[i] - 0x80];
}

static void fx_latin_ligatures(const uint32_t *s, size_t n, cpbuf *out) {
    static const qd_uc_map3 lig[] = {
        {0x132, {'I', 'J', 0}}, {0x133, {'i', 'j', 0}}, {0x149, {0x2BC, 'n', 0}},
        {0x1C4, {'D', 0x17D, 0}}, {0x1C5, {'D', 0x17E, 0}}, {0x1C6, {'d', 0x17E, 0}},
        {0x1C7, {'L', 'J', 0}}, {0x1C8, {'L', 'j', 0}}, {0x1C9, {'l', 'j', 0}},
        {0x1CA, {'N', 'J', 0}}, {0x1CB, {'N', 'j', 0}}, {0x1CC, {'n', 'j', 0}},
        {0x1F1, {'D', 'Z', 0}}, {0x1F2, {'D', 'z', 0}}, {0x1F3, {'d', 'z', 0}},
        {0xFB00, {'f', 'f', 0}}, {0xFB01, {'f', 'i', 0}}, {0xFB02, {'f', 'l', 0}},
        {0xFB03, {'f', 'f', 'i'}}, {0xFB04, {'f', 'f', 'l'}}, {0xFB05, {0x17F, 't', 0}},
        {0xFB06, {'s', 't', 0}},
    };
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t *to = s[i] >= 0x132 ? map3_find(lig, (int)(sizeof lig / sizeof lig[0]), s[i]) : NULL;
        if (to) push_map3(out, to); else cb_push(out, s[i]);
    }
}

static void fx_character_width(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t *to = s[i] >= 0x3000 ? map3_find(qd_uc_width_table, qd_uc_width_count, s[i]) : NULL;
        if (to) push_map3(out, to); else cb_push(out, s[i]);
    }
}

static void fx_uncurl_quotes(uint32_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] == 0x2BC || (s[i] >= 0x2018 && s[i] <= 0x201B)) s[i] = '\'';
        else if (s[i] >= 0x201C && s[i] <= 0x201F) s[i] = '"';
    }
}

static void fx_line_breaks(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c == '\r' && i + 1 < n && s[i + 1] == '\n') continue;   /* \r\n -> \n */
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        cb_push(out, c);
    }
}

/* ANSI_RE = \033\[((?:\d|;)*)([a-zA-Z])  (\d: any Unicode decimal digit) */
static void fx_terminal_escapes(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    size_t i = 0;
    while (i < n) {
        if (s[i] == 0x1B && i + 1 < n && s[i + 1] == '[') {
            size_t j = i + 2;
            while (j < n && (s[j] == ';' || (s[j] >= '0' && s[j] <= '9') ||
                             (s[j] >= 0x80 && (flags_of(s[j]) & QD_UC_F_DECIMAL))))
                j++;
            if (j < n && ((s[j] | 0x20) >= 'a' && (s[j] | 0x20) <= 'z')) { i = j + 1; continue; }
        }
        cb_push(out, s[i++]);
    }
}

static int is_removed_control(uint32_t c) {
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

static size_t fx_remove_control_chars(uint32_t *s, size_t n) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!is_removed_control(s[i])) s[m++] = s[i];
    return m;
}

typedef struct { cpbuf a, b, c, orig; } scratch;

static void scratch_free(scratch *w) { free(w->a.v); free(w->b.v); free(w->c.v); free(w->orig.v); }
static int scratch_oom(const scratch *w) { return w->a.oom | w->b.oom | w->c.oom | w->orig.oom; }

/* ftfy.fix_and_explain on one segment, without fix_encoding (see header).
 * Result in w->a. */
static void fix_segment(scratch *w, const uint32_t *s, size_t n, int unescape) {
    w->a.n = 0;
    cb_append(&w->a, s, n);
    /* "if text == origtext: return"; the cap only guards against a fixer cycle */
    for (int iter = 0; iter < 64 && !scratch_oom(w); iter++) {
        w->orig.n = 0;
        cb_append(&w->orig, w->a.v, w->a.n);
        if (unescape) { fx_unescape_html(w->a.v, w->a.n, &w->b); cb_swap(&w->a, &w->b); }
        fx_c1_controls(w->a.v, w->a.n);
        fx_latin_ligatures(w->a.v, w->a.n, &w->b); cb_swap(&w->a, &w->b);
        fx_character_width(w->a.v, w->a.n, &w->b); cb_swap(&w->a, &w->b);
        fx_uncurl_quotes(w->a.v, w->a.n);
        fx_line_breaks(w->a.v, w->a.n, &w->b); cb_swap(&w->a, &w->b);
        fx_terminal_escapes(w->a.v, w->a.n, &w->b); cb_swap(&w->a, &w->b);
        w->a.n = fx_remove_control_chars(w->a.v, w->a.n);
        nfc(w->a.v, w->a.n, &w->b, &w->c); cb_swap(&w->a, &w->b);
        if (scratch_oom(w)) return;
        if (w->a.n == w->orig.n && (!w->a.n || !memcmp(w->a.v, w->orig.v, w->a.n * sizeof(uint32_t)))) return;
    }
}

/* ftfy.fix_text: line by line (segments end after '\n', at most 1e6 chars);
 * HTML unescaping stops for good at the first segment containing '<'. */
static void fix_text(scratch *w, const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    int unescape = 1;
    size_t pos = 0;
    while (pos < n) {
        size_t end = pos;
        while (end < n && s[end] != '\n') end++;
        end = end < n ? end + 1 : n;
        if (end - pos > 1000000) end = pos + 1000000;
        for (size_t i = pos; i < end && unescape; i++)
            if (s[i] == '<') unescape = 0;
        fix_segment(w, s + pos, end - pos, unescape);
        cb_append(out, w->a.v, w->a.n);
        pos = end;
    }
}

/* whitespace_clean: regex \s+ -> " ", then str.strip(). */
static void whitespace_clean(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    int in_ws = 0;
    for (size_t i = 0; i < n; i++) {
        if (flags_of(s[i]) & QD_UC_F_WS) {
            if (!in_ws) cb_push(out, ' ');
            in_ws = 1;
        } else {
            cb_push(out, s[i]);
            in_ws = 0;
        }
    }
    if (out->oom) return;
    size_t a = 0, b = out->n;
    while (a < b && (flags_of(out->v[a]) & QD_UC_F_PYSPACE)) a++;
    while (b > a && (flags_of(out->v[b - 1]) & QD_UC_F_PYSPACE)) b--;
    if (a && b > a) memmove(out->v, out->v + a, (b - a) * sizeof(uint32_t));
    out->n = b - a;
}

/* str.lower(), including the Final_Sigma rule for U+03A3. */
static int final_sigma(const uint32_t *s, size_t n, size_t i) {
    size_t j = i;
    int found = 0;
    while (j > 0) {
        if (!(flags_of(s[--j]) & QD_UC_F_CASE_IGNORABLE)) { found = 1; break; }
    }
    if (!found || !(flags_of(s[j]) & QD_UC_F_CASED)) return 0;
    for (j = i + 1; j < n; j++)
        if (!(flags_of(s[j]) & QD_UC_F_CASE_IGNORABLE)) break;
    return j == n || !(flags_of(s[j]) & QD_UC_F_CASED);
}

static void lower(const uint32_t *s, size_t n, cpbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c < 0x80) { cb_push(out, c >= 'A' && c <= 'Z' ? c + 32 : c); continue; }
        if (c == 0x3A3) { cb_push(out, final_sigma(s, n, i) ? 0x3C2 : 0x3C3); continue; }
        const uint32_t *to = map3_find(qd_uc_lower_table, qd_uc_lower_count, c);
        if (to) push_map3(out, to); else cb_push(out, c);
    }
}

/* ------------------------------------------------------------------------ */
/* String hash map: vocab (token -> id) and merge ranks ("a b" -> rank) */

typedef struct { uint64_t hash; uint32_t off, len; int32_t val; } hslot;
typedef struct { hslot *slots; size_t cap, n; char *keys; size_t kused, kcap; int oom; } strmap;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h | 1;                           /* 0 marks an empty slot */
}

static int sm_init(strmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = 64;
    while (m->cap < expect * 2) m->cap *= 2;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots != NULL;
}

static void sm_free(strmap *m) { free(m->slots); free(m->keys); }

static hslot *sm_slot(const strmap *m, const char *k, size_t n, uint64_t h) {
    size_t i = (size_t)h & (m->cap - 1);
    for (;;) {
        hslot *s = &m->slots[i];
        if (!s->hash) return s;
        if (s->hash == h && s->len == n && !memcmp(m->keys + s->off, k, n)) return s;
        i = (i + 1) & (m->cap - 1);
    }
}

static int32_t sm_get(const strmap *m, const char *k, size_t n) {
    const hslot *s = sm_slot(m, k, n, hash_bytes(k, n));
    return s->hash ? s->val : -1;
}

/* Insert or overwrite (Python dicts keep the last value for a repeated key). */
static int sm_put(strmap *m, const char *k, size_t n, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t nc = m->cap * 2;
        hslot *ns = calloc(nc, sizeof *ns);
        if (!ns) return 0;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].hash) continue;
            size_t j = (size_t)m->slots[i].hash & (nc - 1);
            while (ns[j].hash) j = (j + 1) & (nc - 1);
            ns[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = ns;
        m->cap = nc;
    }
    uint64_t h = hash_bytes(k, n);
    hslot *s = sm_slot(m, k, n, h);
    if (s->hash) { s->val = val; return 1; }
    if (n > UINT32_MAX || !grow(&m->keys, &m->kcap, m->kused + n + 1, 1, &m->oom)) return 0;
    memcpy(m->keys + m->kused, k, n);
    s->hash = h;
    s->off = (uint32_t)m->kused;
    s->len = (uint32_t)n;
    s->val = val;
    m->kused += n;
    m->n++;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Tokenizer object */

typedef struct { uint32_t *cps; size_t n; char *content; int id; int lstrip, rstrip, single_word, no_split; } added_tok;

struct qd_clip_tokenizer {
    strmap vocab, ranks;
    int n_vocab;
    int bos_id, eos_id, unk_id, pad_id, max_len;
    added_tok *added;
    int n_added;
    char byte_enc[256][3];      /* GPT-2 bytes_to_unicode, as UTF-8 */
    unsigned char byte_enc_len[256];
};

void qd_clip_tokenizer_free(qd_clip_tokenizer *t) {
    if (!t) return;
    sm_free(&t->vocab);
    sm_free(&t->ranks);
    for (int i = 0; i < t->n_added; i++) { free(t->added[i].cps); free(t->added[i].content); }
    free(t->added);
    free(t);
}

int qd_clip_bos_id(const qd_clip_tokenizer *t) { return t->bos_id; }
int qd_clip_eos_id(const qd_clip_tokenizer *t) { return t->eos_id; }
int qd_clip_pad_id(const qd_clip_tokenizer *t) { return t->pad_id; }
int qd_clip_model_max_length(const qd_clip_tokenizer *t) { return t->max_len; }

static void build_byte_encoder(qd_clip_tokenizer *t) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        unsigned char u[4];
        size_t k = utf8_put(cp, u);
        memcpy(t->byte_enc[b], u, k);
        t->byte_enc_len[b] = (unsigned char)k;
    }
}

static int is_ascii_space(unsigned char c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
}

/* merges.txt as CLIPTokenizer reads it: read().strip().split("\n")[1:49152-256-2+1],
 * each line split on whitespace into a pair; a later duplicate wins. */
static qd_status load_merges(qd_ctx *ctx, qd_clip_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    QD_TRY(qd_read_file(ctx, path, &text, &len));
    if (!sm_init(&t->ranks, 49152)) { free(text); return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path); }
    size_t a = 0, b = len;
    while (a < b && is_ascii_space((unsigned char)text[a])) a++;
    while (b > a && is_ascii_space((unsigned char)text[b - 1])) b--;
    const int max_merges = 49152 - 256 - 2;
    int line = 0, rank = 0;
    char *key = NULL;
    size_t key_cap = 0;
    int key_oom = 0;
    qd_status st = QD_OK;
    size_t p = a;
    while (p < b && rank < max_merges) {
        size_t e = p;
        while (e < b && text[e] != '\n') e++;
        line++;
        if (line > 1) {
            size_t ps[3], pe[3];
            int parts = 0;
            size_t q = p;
            while (q < e) {
                while (q < e && is_ascii_space((unsigned char)text[q])) q++;
                if (q >= e) break;
                size_t s0 = q;
                while (q < e && !is_ascii_space((unsigned char)text[q])) q++;
                if (parts < 3) { ps[parts] = s0; pe[parts] = q; }
                parts++;
            }
            if (parts != 2) {
                st = qd_fail(ctx, QD_ERR_FORMAT, "%s: line %d: expected two symbols, found %d", path, line, parts);
                break;
            }
            size_t l0 = pe[0] - ps[0], l1 = pe[1] - ps[1];
            if (!grow(&key, &key_cap, l0 + l1 + 1, 1, &key_oom)) {
                st = qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            memcpy(key, text + ps[0], l0);
            key[l0] = ' ';
            memcpy(key + l0 + 1, text + ps[1], l1);
            if (!sm_put(&t->ranks, key, l0 + l1 + 1, rank++)) {
                st = qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
        }
        p = e + 1;
    }
    free(key);
    free(text);
    return st;
}

static qd_status load_vocab(qd_ctx *ctx, qd_clip_tokenizer *t, const char *path) {
    cJSON *root;
    QD_TRY(qd_json_load(ctx, path, &root));
    int n = cJSON_GetArraySize(root);
    qd_status st = QD_OK;
    if (n <= 0) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: empty vocabulary", path);
    else if (!sm_init(&t->vocab, (size_t)n)) st = qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    for (const cJSON *it = root->child; it && st == QD_OK; it = it->next) {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v < 0 || v > INT_MAX || v != (double)(int)v) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: token \"%.60s\" has no integer id", path,
                         it->string ? it->string : "");
            break;
        }
        if (!sm_put(&t->vocab, it->string, strlen(it->string), (int32_t)v))
            st = qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    t->n_vocab = n;
    cJSON_Delete(root);
    return st;
}

/* A special-token value: "text" or {"content": "text", "lstrip": ..., ...}. */
typedef struct { const char *content; int lstrip, rstrip, single_word; } tokspec;

static int read_tokspec(const cJSON *v, tokspec *out) {
    if (cJSON_IsString(v)) {
        out->content = v->valuestring;
        out->lstrip = out->rstrip = out->single_word = 0;
        return 1;
    }
    if (cJSON_IsObject(v) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(v, "content"))) {
        out->content = qd_json_str(v, "content", "");
        out->lstrip = qd_json_bool(v, "lstrip", 0);
        out->rstrip = qd_json_bool(v, "rstrip", 0);
        out->single_word = qd_json_bool(v, "single_word", 0);
        return 1;
    }
    return 0;
}

static int find_added(const qd_clip_tokenizer *t, const char *content) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, content)) return i;
    return -1;
}

/* PreTrainedTokenizer._add_tokens: an added token keeps its vocab id, else gets the next free one. */
static int add_token(qd_clip_tokenizer *t, const tokspec *sp, int id) {
    if (!sp->content[0]) return -1;
    int k = find_added(t, sp->content);
    if (k >= 0) return k;
    if (id < 0) {
        id = sm_get(&t->vocab, sp->content, strlen(sp->content));
        if (id < 0) {
            id = t->n_vocab;
            for (int i = 0; i < t->n_added; i++)
                if (t->added[i].id >= id) id = t->added[i].id + 1;
        }
    }
    added_tok *na = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *na);
    if (!na) return -2;
    t->added = na;
    added_tok *a = &t->added[t->n_added];
    memset(a, 0, sizeof *a);
    a->content = strdup(sp->content);
    cpbuf cps = {0};
    utf8_decode((const unsigned char *)sp->content, strlen(sp->content), &cps);
    if (!a->content || cps.oom) { free(a->content); free(cps.v); return -2; }
    a->cps = cps.v;
    a->n = cps.n;
    a->id = id;
    a->lstrip = sp->lstrip;
    a->rstrip = sp->rstrip;
    a->single_word = sp->single_word;
    return t->n_added++;
}

static qd_status load_specials(qd_ctx *ctx, qd_clip_tokenizer *t, const char *dir) {
    char cfg_path[4096], map_path[4096];
    qd_path_join(cfg_path, sizeof cfg_path, dir, "tokenizer_config.json");
    qd_path_join(map_path, sizeof map_path, dir, "special_tokens_map.json");
    cJSON *cfg = NULL, *map = NULL;
    qd_status st = QD_OK;
    if (qd_file_exists(cfg_path)) QD_TRY(qd_json_load(ctx, cfg_path, &cfg));
    if (qd_file_exists(map_path) && (st = qd_json_load(ctx, map_path, &map)) != QD_OK) {
        cJSON_Delete(cfg);
        return st;
    }
    /* CLIPTokenizer defaults, then tokenizer_config.json, then special_tokens_map.json
     * (from_pretrained lets the map override the config). */
    static const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    tokspec sp[4] = {{"<|startoftext|>", 0, 0, 0}, {"<|endoftext|>", 0, 0, 0},
                     {"<|endoftext|>", 0, 0, 0}, {"<|endoftext|>", 0, 0, 0}};
    for (int k = 0; k < 4; k++) {
        if (cfg) read_tokspec(cJSON_GetObjectItemCaseSensitive(cfg, keys[k]), &sp[k]);
        if (map) read_tokspec(cJSON_GetObjectItemCaseSensitive(map, keys[k]), &sp[k]);
    }
    double mml = qd_json_num(cfg, "model_max_length", 77);
    t->max_len = mml >= 2 && mml <= 1 << 20 ? (int)mml : 77;

    /* added_tokens_decoder first: it fixes ids and strip flags. */
    const cJSON *dec = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder") : NULL;
    for (const cJSON *it = cJSON_IsObject(dec) ? dec->child : NULL; it && st == QD_OK; it = it->next) {
        tokspec ts;
        char *endp;
        long id = strtol(it->string, &endp, 10);
        if (!read_tokspec(it, &ts) || *endp || id < 0 || id > INT_MAX) {
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: bad added_tokens_decoder entry \"%.40s\"", cfg_path, it->string);
            break;
        }
        if (add_token(t, &ts, (int)id) == -2) st = qd_fail(ctx, QD_ERR_NOMEM, "CLIP tokenizer: out of memory");
    }
    int idx[4];
    for (int k = 0; k < 4 && st == QD_OK; k++) {
        idx[k] = add_token(t, &sp[k], -1);
        if (idx[k] == -2) st = qd_fail(ctx, QD_ERR_NOMEM, "CLIP tokenizer: out of memory");
    }
    for (int pass = 0; pass < 2 && st == QD_OK; pass++) {
        const cJSON *extra = cJSON_GetObjectItemCaseSensitive(pass ? map : cfg, "additional_special_tokens");
        for (const cJSON *it = cJSON_IsArray(extra) ? extra->child : NULL; it && st == QD_OK; it = it->next) {
            tokspec ts;
            if (read_tokspec(it, &ts) && add_token(t, &ts, -1) == -2)
                st = qd_fail(ctx, QD_ERR_NOMEM, "CLIP tokenizer: out of memory");
        }
    }
    if (st == QD_OK) {
        int *ids[4] = {&t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id};
        for (int k = 0; k < 4; k++) *ids[k] = idx[k] >= 0 ? t->added[idx[k]].id : -1;
        /* A pad token that is an ordinary word (SDXL's tokenizer_2 pads with "!") stays
         * an ordinary word inside prompts: "detailed!" keeps its "!</w>" token. This is
         * what the reference stack produced for the sdxl-tiny pipeline goldens. */
        if (idx[3] >= 0 && idx[3] != idx[0] && idx[3] != idx[1] && idx[3] != idx[2])
            t->added[idx[3]].no_split = 1;
        if (t->bos_id < 0 || t->eos_id < 0)
            st = qd_fail(ctx, QD_ERR_FORMAT, "%s: empty bos/eos token", dir);
    }
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return st;
}

qd_status qd_clip_tokenizer_load(qd_ctx *ctx, const char *dir, qd_clip_tokenizer **out) {
    *out = NULL;
    if (!dir) return qd_fail(ctx, QD_ERR_ARG, "CLIP tokenizer: no directory given");
    qd_clip_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qd_fail(ctx, QD_ERR_NOMEM, "CLIP tokenizer: out of memory");
    build_byte_encoder(t);
    char path[4096];
    qd_path_join(path, sizeof path, dir, "vocab.json");
    qd_status st = load_vocab(ctx, t, path);
    if (st == QD_OK) {
        qd_path_join(path, sizeof path, dir, "merges.txt");
        st = load_merges(ctx, t, path);
    }
    if (st == QD_OK) st = load_specials(ctx, t, dir);
    if (st != QD_OK) { qd_clip_tokenizer_free(t); return st; }
    *out = t;
    return QD_OK;
}

/* ------------------------------------------------------------------------ */
/* BPE */

typedef struct { int32_t rank; uint32_t pos; int left; uint32_t llen, rlen; } bpe_ent;

static int ent_less(const bpe_ent *a, const bpe_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_ent *h, size_t *n, bpe_ent e) {
    size_t i = (*n)++;
    h[i] = e;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&h[i], &h[p])) break;
        bpe_ent x = h[i]; h[i] = h[p]; h[p] = x;
        i = p;
    }
}

static bpe_ent heap_pop(bpe_ent *h, size_t *n) {
    bpe_ent top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && ent_less(&h[l], &h[m])) m = l;
        if (r < *n && ent_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        bpe_ent x = h[i]; h[i] = h[m]; h[m] = x;
        i = m;
    }
    return top;
}

typedef struct { uint32_t start, len; int next, prev; } bpe_sym;   /* len 0: merged away */

typedef struct {
    char *word; size_t wcap;        /* byte-encoded token + "</w>" */
    char *key; size_t kcap;         /* "left right" lookup key */
    bpe_sym *sy; size_t scap;
    bpe_ent *heap; size_t hcap;
    bpe_ent *pend; size_t pcap;
    int oom;
} bpe_work;

static void bpe_work_free(bpe_work *b) {
    free(b->word); free(b->key); free(b->sy); free(b->heap); free(b->pend);
}

static int32_t pair_rank(const qd_clip_tokenizer *t, bpe_work *b, int l, int r) {
    const bpe_sym *L = &b->sy[l], *R = &b->sy[r];
    size_t n = (size_t)L->len + 1 + R->len;
    if (!grow(&b->key, &b->kcap, n, 1, &b->oom)) return -1;
    memcpy(b->key, b->word + L->start, L->len);
    b->key[L->len] = ' ';
    memcpy(b->key + L->len + 1, b->word + R->start, R->len);
    return sm_get(&t->ranks, b->key, n);
}

static int emit_symbol(const qd_clip_tokenizer *t, const char *s, size_t n, ibuf *out, int *missing) {
    int32_t id = sm_get(&t->vocab, s, n);
    if (id < 0) id = t->unk_id;
    if (id < 0) { *missing = 1; return 0; }
    ib_push(out, id);
    return 1;
}

/* CLIPTokenizer.bpe: repeatedly merge every occurrence (left to right) of the
 * lowest-ranked adjacent pair. A heap keyed by (rank, position) does the same
 * in O(n log n): all occurrences of one rank are merged before any pair created
 * by those merges is considered, exactly as the Python loop does (a merge can
 * never create another pair of the rank being merged). */
static int bpe_ids(const qd_clip_tokenizer *t, bpe_work *b, const unsigned char *bytes, size_t nb, ibuf *out,
                   int *missing) {
    size_t wl = 0;
    for (size_t i = 0; i < nb; i++) wl += t->byte_enc_len[bytes[i]];
    if (!nb || !grow(&b->word, &b->wcap, wl + 4, 1, &b->oom) || !grow(&b->sy, &b->scap, nb, sizeof *b->sy, &b->oom))
        return 0;
    size_t w = 0;
    for (size_t i = 0; i < nb; i++) {   /* one symbol per byte */
        bpe_sym *y = &b->sy[i];
        y->start = (uint32_t)w;
        y->len = t->byte_enc_len[bytes[i]];
        memcpy(b->word + w, t->byte_enc[bytes[i]], y->len);
        w += y->len;
        y->next = i + 1 < nb ? (int)i + 1 : -1;
        y->prev = (int)i - 1;
    }
    /* The bpe cache maps the two special strings to themselves, without "</w>". */
    if ((w == 15 && !memcmp(b->word, "<|startoftext|>", 15)) || (w == 13 && !memcmp(b->word, "<|endoftext|>", 13)))
        return emit_symbol(t, b->word, w, out, missing);
    memcpy(b->word + w, "</w>", 4);
    b->sy[nb - 1].len += 4;

    size_t hneed = 3 * nb + 4;
    if (!grow(&b->heap, &b->hcap, hneed, sizeof *b->heap, &b->oom) ||
        !grow(&b->pend, &b->pcap, hneed, sizeof *b->pend, &b->oom))
        return 0;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < nb; i++) {
        int32_t r = pair_rank(t, b, (int)i, (int)i + 1);
        if (b->oom) return 0;
        if (r >= 0) heap_push(b->heap, &nh, (bpe_ent){r, b->sy[i].start, (int)i, b->sy[i].len, b->sy[i + 1].len});
    }
    while (nh) {
        int32_t rank = b->heap[0].rank;
        size_t np = 0;
        while (nh && b->heap[0].rank == rank) {
            bpe_ent e = heap_pop(b->heap, &nh);
            int L = e.left, R = b->sy[L].next;
            if (b->sy[L].len != e.llen || R < 0 || b->sy[R].len != e.rlen) continue;   /* stale */
            b->sy[L].len += b->sy[R].len;
            b->sy[R].len = 0;
            b->sy[L].next = b->sy[R].next;
            if (b->sy[L].next >= 0) b->sy[b->sy[L].next].prev = L;
            int P = b->sy[L].prev, N = b->sy[L].next;
            int32_t r;
            if (P >= 0 && (r = pair_rank(t, b, P, L)) >= 0)
                b->pend[np++] = (bpe_ent){r, b->sy[P].start, P, b->sy[P].len, b->sy[L].len};
            if (N >= 0 && (r = pair_rank(t, b, L, N)) >= 0)
                b->pend[np++] = (bpe_ent){r, b->sy[L].start, L, b->sy[L].len, b->sy[N].len};
            if (b->oom) return 0;
        }
        for (size_t i = 0; i < np; i++) heap_push(b->heap, &nh, b->pend[i]);
    }
    for (int i = 0; i >= 0; i = b->sy[i].next)
        if (!emit_symbol(t, b->word + b->sy[i].start, b->sy[i].len, out, missing)) return 0;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* CLIP regex:
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * with re.IGNORECASE (so U+017F LONG S matches 's'). */

static int ci_eq(uint32_t c, char lit) {
    uint32_t l = (unsigned char)lit;
    if (c == l) return 1;
    if (l >= 'a' && l <= 'z') {
        if (c == l - 32) return 1;
        if (c >= 0x80) {
            const qd_uc_pair *p = pair_find(qd_uc_fold_ascii, qd_uc_fold_ascii_count, c);
            return p && p->to == l;
        }
    }
    return 0;
}

static size_t match_lit(const uint32_t *s, size_t n, size_t i, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || !ci_eq(s[i + k], lit[k])) return 0;
    return k;
}

static size_t regex_match(const uint32_t *s, size_t n, size_t i) {
    static const char *lits[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        size_t m = match_lit(s, n, i, lits[k]);
        if (m) return m;
    }
    int cls = qd_uc_get(s[i])->cls;
    if (cls == QD_UC_NUMBER) return 1;
    if (cls == QD_UC_NONE) return 0;
    size_t j = i + 1;
    while (j < n && qd_uc_get(s[j])->cls == cls) j++;
    return j - i;
}

/* ------------------------------------------------------------------------ */
/* Encoding */

typedef struct { const qd_clip_tokenizer *t; scratch w; cpbuf fixed, clean, low; bpe_work bpe; int missing; } enc_state;

/* CLIPTokenizer._tokenize on one chunk of text between added tokens. */
static int tokenize_text(enc_state *es, const uint32_t *s, size_t n, ibuf *ids) {
    fix_text(&es->w, s, n, &es->fixed);
    whitespace_clean(es->fixed.v, es->fixed.n, &es->clean);
    lower(es->clean.v, es->clean.n, &es->low);
    if (scratch_oom(&es->w) || es->fixed.oom || es->clean.oom || es->low.oom) return 0;
    const uint32_t *c = es->low.v;
    size_t m = es->low.n, i = 0;
    unsigned char *bytes = NULL;
    size_t bcap = 0;
    int oom = 0, ok = 1;
    while (i < m && ok) {
        size_t len = regex_match(c, m, i);
        if (!len) { i++; continue; }
        if (!grow(&bytes, &bcap, len * 4, 1, &oom)) { ok = 0; break; }
        size_t nb = 0;
        for (size_t k = 0; k < len; k++) nb += utf8_put(c[i + k], bytes + nb);
        ok = bpe_ids(es->t, &es->bpe, bytes, nb, ids, &es->missing);
        i += len;
    }
    free(bytes);
    return ok;
}

typedef struct { cpbuf s; } chunk;   /* a piece of text or one added token */

static int chunk_is_token(const qd_clip_tokenizer *t, const cpbuf *s) {
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].n == s->n && s->n && !memcmp(t->added[k].cps, s->v, s->n * sizeof(uint32_t))) return k;
    return -1;
}

static int py_space(uint32_t c) { return (flags_of(c) & QD_UC_F_PYSPACE) != 0; }

/* PreTrainedTokenizer.tokenize: cut the text at added tokens (leftmost, longest),
 * apply their lstrip/rstrip/single_word rules to the neighbours, then tokenize
 * each remaining piece of text on its own. */
static qd_status encode_ids(qd_ctx *ctx, const qd_clip_tokenizer *t, const char *text, ibuf *ids) {
    if (!t) return qd_fail(ctx, QD_ERR_ARG, "CLIP tokenizer: NULL tokenizer");
    if (!text) text = "";
    cpbuf in = {0};
    utf8_decode((const unsigned char *)text, strlen(text), &in);
    chunk *ch = NULL;
    size_t nch = 0, chcap = 0;
    int oom = in.oom;
    size_t i = 0, seg = 0;
    while (i <= in.n && !oom) {
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_added && i < in.n; k++) {
            const added_tok *a = &t->added[k];
            if (a->no_split) continue;
            if (a->n > best_len && a->n <= in.n - i && !memcmp(a->cps, in.v + i, a->n * sizeof(uint32_t))) {
                best = k;
                best_len = a->n;
            }
        }
        if (best < 0 && i < in.n) { i++; continue; }
        /* text before the match (or the tail), then the match; empty pieces are dropped */
        for (int part = 0; part < 2 && !oom; part++) {
            size_t a = part ? i : seg, b = part ? i + best_len : i;
            if (b <= a) continue;
            if (!grow(&ch, &chcap, nch + 1, sizeof *ch, &oom)) break;
            memset(&ch[nch], 0, sizeof ch[nch]);
            cb_append(&ch[nch].s, in.v + a, b - a);
            oom |= ch[nch].s.oom;
            nch++;
        }
        if (best < 0) break;
        i += best_len;
        seg = i;
    }
    for (size_t k = 0; k < nch && !oom; k++) {
        int tk = chunk_is_token(t, &ch[k].s);
        if (tk < 0) continue;
        const added_tok *a = &t->added[tk];
        chunk *left = k > 0 && ch[k - 1].s.n ? &ch[k - 1] : NULL;
        chunk *right = k + 1 < nch && ch[k + 1].s.n ? &ch[k + 1] : NULL;
        if (a->rstrip && right) {
            size_t z = 0;
            while (z < right->s.n && py_space(right->s.v[z])) z++;
            memmove(right->s.v, right->s.v + z, (right->s.n - z) * sizeof(uint32_t));
            right->s.n -= z;
        }
        if (a->lstrip && left)
            while (left->s.n && py_space(left->s.v[left->s.n - 1])) left->s.n--;
        if (a->single_word && left && left->s.n && left->s.v[left->s.n - 1] != ' ') {
            cb_append(&left->s, ch[k].s.v, ch[k].s.n);
            oom |= left->s.oom;
            ch[k].s.n = 0;
        } else if (a->single_word && right && right->s.n && right->s.v[0] != ' ') {
            cb_append(&ch[k].s, right->s.v, right->s.n);
            oom |= ch[k].s.oom;
            right->s.n = 0;
        }
    }
    enc_state es;
    memset(&es, 0, sizeof es);
    es.t = t;
    int ok = !oom;
    ib_push(ids, t->bos_id);
    for (size_t k = 0; k < nch && ok; k++) {
        if (!ch[k].s.n) continue;
        int tk = chunk_is_token(t, &ch[k].s);
        if (tk >= 0) ib_push(ids, t->added[tk].id);
        else ok = tokenize_text(&es, ch[k].s.v, ch[k].s.n, ids);
    }
    ib_push(ids, t->eos_id);
    int missing = es.missing;
    for (size_t k = 0; k < nch; k++) free(ch[k].s.v);
    free(ch);
    free(in.v);
    scratch_free(&es.w);
    free(es.fixed.v); free(es.clean.v); free(es.low.v);
    bpe_work_free(&es.bpe);
    if (missing) return qd_fail(ctx, QD_ERR_FORMAT, "CLIP tokenizer: token not in vocabulary and no unk token");
    if (!ok || ids->oom) return qd_fail(ctx, QD_ERR_NOMEM, "CLIP tokenizer: out of memory");
    return QD_OK;
}

int qd_clip_encode(qd_ctx *ctx, const qd_clip_tokenizer *t, const char *text, int32_t *ids, int cap) {
    ibuf b = {0};
    if (encode_ids(ctx, t, text, &b) != QD_OK) { free(b.v); return -1; }
    if (b.n > (size_t)INT_MAX) { free(b.v); qd_fail(ctx, QD_ERR_ARG, "CLIP tokenizer: text too long"); return -1; }
    int n = (int)b.n;
    if (ids && n > cap) {
        free(b.v);
        qd_fail(ctx, QD_ERR_ARG, "CLIP tokenizer: text needs %d ids, buffer holds %d", n, cap);
        return -1;
    }
    if (ids) memcpy(ids, b.v, (size_t)n * sizeof *ids);
    free(b.v);
    return n;
}

qd_status qd_clip_encode_padded(qd_ctx *ctx, const qd_clip_tokenizer *t, const char *text,
                                int32_t *ids, int max_len, int *truncated) {
    if (truncated) *truncated = 0;
    if (!ids || max_len < 2) return qd_fail(ctx, QD_ERR_ARG, "CLIP tokenizer: max_len %d < 2", max_len);
    ibuf b = {0};
    qd_status st = encode_ids(ctx, t, text, &b);
    if (st != QD_OK) { free(b.v); return st; }
    /* truncation=True, max_length: drop content tokens from the end, then add BOS/EOS */
    size_t content = b.n - 2, keep = content;
    if (keep > (size_t)max_len - 2) keep = (size_t)max_len - 2;
    if (truncated) *truncated = (int)(content - keep);
    ids[0] = t->bos_id;
    memcpy(ids + 1, b.v + 1, keep * sizeof *ids);
    ids[keep + 1] = t->eos_id;
    int pad = t->pad_id >= 0 ? t->pad_id : t->eos_id;
    for (size_t i = keep + 2; i < (size_t)max_len; i++) ids[i] = pad;
    free(b.v);
    return QD_OK;
}
