/* SentencePiece text normalization, as sentencepiece's normalizer.cc does it:
 * a "precompiled charsmap" (a Darts-clone double-array trie over UTF-8 byte
 * strings plus a blob of NUL-terminated replacements; for T5 it encodes
 * nmt_nfkc) is applied by longest-prefix match, then whitespace is cleaned
 * (leading/trailing removed, runs collapsed) and escaped as U+2581 "▁", with
 * an optional dummy "▁" prefix. Malformed UTF-8 becomes U+FFFD, one byte at a
 * time. The blob comes from untrusted files: every trie index and string
 * offset is bounds-checked. */
#ifndef QD_TEXT_SP_NORMALIZER_H
#define QD_TEXT_SP_NORMALIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t *units;        /* double-array units (NULL: no charsmap, identity) */
    size_t n_units;
    char *strs;             /* replacement strings, NUL-separated */
    size_t n_strs;
    int remove_extra_whitespaces;
    int escape_whitespaces;
} qd_sp_normalizer;

/* How the start of a text is treated. */
typedef enum {
    QD_SP_PREFIX,           /* add "▁" (sentencepiece add_dummy_prefix) */
    QD_SP_NO_PREFIX,        /* sentencepiece without the dummy prefix: leading spaces dropped */
    QD_SP_KEEP_LEADING      /* HF Metaspace on a later segment: leading spaces become one "▁", nothing added */
} qd_sp_prefix_mode;

/* Decode a precompiled charsmap blob (<u32 trie bytes><trie><strings>) into
 * nz (copies it). len 0 means no charsmap. Returns 0, -1 when malformed, -2
 * when out of memory. The whitespace flags default to 1. */
int qd_sp_normalizer_init(qd_sp_normalizer *nz, const void *blob, size_t len);
void qd_sp_normalizer_free(qd_sp_normalizer *nz);

/* Normalize text[0..n) into a malloc'd NUL-terminated string (*out, *out_len).
 * Returns 0, or -2 when out of memory. */
int qd_sp_normalize(const qd_sp_normalizer *nz, const char *text, size_t n, qd_sp_prefix_mode mode,
                    char **out, size_t *out_len);

/* Byte length of the UTF-8 character at s (sentencepiece's OneCharLen: from
 * the lead byte only), clamped to n. */
size_t qd_sp_char_len(const char *s, size_t n);

#endif
