/* Unicode data for the CLIP tokenizer, generated from Python's own unicodedata,
 * str.lower(), html and `regex` modules by scripts/gen_unicode_tables.py, so the
 * C code reproduces what the reference Python stack does. */
#ifndef QD_TEXT_UNICODE_TABLES_H
#define QD_TEXT_UNICODE_TABLES_H

#include <stdint.h>

/* Class of a codepoint in the CLIP regex (with IGNORECASE). */
enum { QD_UC_NONE = 0, QD_UC_LETTER = 1, QD_UC_NUMBER = 2, QD_UC_OTHER = 3 };

enum {
    QD_UC_F_WS = 1,             /* regex-module \s (White_Space) */
    QD_UC_F_PYSPACE = 2,        /* str.isspace() */
    QD_UC_F_CASED = 4,          /* Cased and not Case_Ignorable (final-sigma rule) */
    QD_UC_F_CASE_IGNORABLE = 8,
    QD_UC_F_DECIMAL = 16        /* str.isdecimal(): Python re's \d */
};

typedef struct { uint8_t cls, flags, ccc; } qd_uc_record;
typedef struct { uint32_t cp; uint32_t to[3]; } qd_uc_map3;          /* cp -> 1..3 cps, 0-padded */
typedef struct { uint32_t cp; uint16_t off, len; } qd_uc_decomp_entry;
typedef struct { uint32_t a, b, composite; } qd_uc_comp_entry;
typedef struct { uint32_t from, to; } qd_uc_pair;
typedef struct { const char *name, *value; } qd_uc_entity;   /* "&name;" -> UTF-8 */

#define QD_UC_BLOCK 128
extern const qd_uc_record qd_uc_records[];
extern const uint16_t qd_uc_stage1[];
extern const uint8_t qd_uc_stage2[][QD_UC_BLOCK];

/* Sorted by cp / (a, b) / from / name: looked up by binary search. */
extern const qd_uc_map3 qd_uc_lower_table[];           /* str.lower() per character */
extern const int qd_uc_lower_count;
extern const uint32_t qd_uc_decomp_pool[];
extern const qd_uc_decomp_entry qd_uc_decomp_table[];   /* full canonical decomposition, Hangul excluded */
extern const int qd_uc_decomp_count;
extern const qd_uc_comp_entry qd_uc_comp_table[];       /* primary composites, Hangul excluded */
extern const int qd_uc_comp_count;
extern const qd_uc_map3 qd_uc_width_table[];            /* ftfy WIDTH_MAP */
extern const int qd_uc_width_count;
extern const qd_uc_entity qd_uc_entities[];             /* ftfy HTML_ENTITIES */
extern const int qd_uc_entity_count;
extern const qd_uc_pair qd_uc_invalid_charrefs[];       /* html.unescape numeric fix-ups */
extern const int qd_uc_invalid_charref_count;
extern const uint32_t qd_uc_invalid_codepoints[];       /* html.unescape drops these */
extern const int qd_uc_invalid_codepoint_count;
extern const qd_uc_pair qd_uc_fold_ascii[];             /* non-ASCII cp matching an ASCII letter under (?i) */
extern const int qd_uc_fold_ascii_count;
extern const uint16_t qd_uc_cp1252_c1[32];              /* bytes 0x80..0x9F in sloppy-windows-1252 */

static inline const qd_uc_record *qd_uc_get(uint32_t cp)
{
    if (cp >= 0x110000) cp = 0xFFFD;
    return &qd_uc_records[qd_uc_stage2[qd_uc_stage1[cp / QD_UC_BLOCK]][cp % QD_UC_BLOCK]];
}

#endif
