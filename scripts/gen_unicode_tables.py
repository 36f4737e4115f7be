#!/usr/bin/env python3
"""Generate src/text/unicode_tables.c: the Unicode data the CLIP tokenizer needs.

The CLIP tokenizer (transformers' CLIPTokenizer with ftfy) runs Python code:
ftfy.fix_text, str.lower(), unicodedata.normalize('NFC') and a `regex`-module
pattern with IGNORECASE. Rather than re-deriving those behaviours from the UCD,
this script asks the same Python machinery, codepoint by codepoint, so the C side
reproduces what Python does (including quirks such as U+0345 matching none of the
CLIP regex classes under IGNORECASE).

Needs Python 3 and the `regex` module (pip `regex`, or Debian python3-regex).
Usage: python3 scripts/gen_unicode_tables.py > src/text/unicode_tables.c
"""
import html
import html.entities
import sys
import unicodedata

import regex

MAXCP = 0x110000
BLOCK = 128


def c_str(s):
    """UTF-8 bytes of s as a C string literal."""
    out = []
    for b in s.encode("utf-8"):
        if 0x20 <= b < 0x7F and b not in (0x22, 0x5C, 0x3F):
            out.append(chr(b))
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


def sigma_flags(c):
    """Python's str.lower() final-sigma context uses Cased / Case_Ignorable, which
    unicodedata does not expose: recover them from lower() itself."""
    # ignorable or cased -> preceding context seen through / accepted
    a = ("A" + c + "\u03a3").lower()[-1] == "\u03c2"
    # not ignorable and cased
    b = (c + "\u03a3").lower()[-1] == "\u03c2"
    ignorable = a and not b
    cased = b
    return cased, ignorable


def main():
    p_l = regex.compile(r"[\p{L}]", regex.IGNORECASE)
    p_n = regex.compile(r"[\p{N}]", regex.IGNORECASE)
    p_o = regex.compile(r"[^\s\p{L}\p{N}]", regex.IGNORECASE)
    p_s = regex.compile(r"\s")

    records = {}
    rec_list = []
    per_cp = []
    for cp in range(MAXCP):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000:
            per_cp.append(0)
            continue
        cls = 0
        if p_l.match(c):
            cls = 1
        elif p_n.match(c):
            cls = 2
        elif p_o.match(c):
            cls = 3
        flags = 0
        if p_s.match(c):
            flags |= 1
        if c.isspace():
            flags |= 2
        cased, ignorable = sigma_flags(c)
        if cased:
            flags |= 4
        if ignorable:
            flags |= 8
        if c.isdecimal():
            flags |= 16
        ccc = unicodedata.combining(c)
        key = (cls, flags, ccc)
        if key not in records:
            records[key] = len(rec_list)
            rec_list.append(key)
        per_cp.append(records[key])
    # Surrogates never reach the tables (the UTF-8 decoder replaces them), so
    # record 0, whatever it is, is fine for them.

    blocks = {}
    block_list = []
    stage1 = []
    for start in range(0, MAXCP, BLOCK):
        blk = tuple(per_cp[start:start + BLOCK])
        if blk not in blocks:
            blocks[blk] = len(block_list)
            block_list.append(blk)
        stage1.append(blocks[blk])

    # str.lower() per character (final sigma handled in C).
    lower = []
    for cp in range(MAXCP):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        lo = c.lower()
        if lo != c:
            assert len(lo) <= 3
            lower.append((cp, [ord(x) for x in lo]))

    # Canonical decomposition (full, recursive) for non-Hangul characters.
    decomp = []
    pool = []
    for cp in range(MAXCP):
        if 0xD800 <= cp < 0xE000 or 0xAC00 <= cp <= 0xD7A3:
            continue
        c = chr(cp)
        d = unicodedata.normalize("NFD", c)
        if d != c:
            decomp.append((cp, len(pool), len(d)))
            pool.extend(ord(x) for x in d)
    # Primary composites: canonical pair decompositions that NFC keeps.
    comp = []
    for cp in range(MAXCP):
        if 0xD800 <= cp < 0xE000 or 0xAC00 <= cp <= 0xD7A3:
            continue
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        if len(parts) != 2:
            continue
        if unicodedata.normalize("NFC", chr(cp)) != chr(cp):
            continue
        comp.append((parts[0], parts[1], cp))
    comp.sort()

    # ftfy's WIDTH_MAP (chardata._build_width_map).
    width = [(0x3000, [0x20])]
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            assert len(alt) <= 3
            width.append((i, [ord(x) for x in alt]))
    width.sort()

    # ftfy's HTML_ENTITIES (chardata._build_html_entities).
    ents = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            ents["&" + name] = char
            if name == name.lower():
                up = "&" + name.upper()
                if html.unescape(up) == up:
                    ents[up] = char.upper()
    ent_items = sorted((k.encode("utf-8"), v) for k, v in ents.items())

    # html.unescape's numeric character reference fix-ups.
    invalid_charrefs = sorted(html._invalid_charrefs.items())
    invalid_codepoints = sorted(html._invalid_codepoints)

    # Characters that the regex module matches case-insensitively against an
    # ASCII letter of the CLIP pattern's literals, other than the letter itself
    # and its uppercase (e.g. U+017F LONG S for 's').
    letters = sorted(set("startofextndsrvml"))
    fold = []
    for cp in range(0x80, MAXCP):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        for L in letters:
            if regex.fullmatch("(?i)" + L, c):
                fold.append((cp, L))

    # cp1252 for C1 controls (ftfy's sloppy-windows-1252: undefined bytes map to themselves).
    c1 = []
    for b in range(0x80, 0xA0):
        try:
            c1.append(ord(bytes([b]).decode("cp1252")))
        except UnicodeDecodeError:
            c1.append(b)

    w = sys.stdout.write
    w("/* Generated by scripts/gen_unicode_tables.py -- do not edit.\n")
    w(" * Python %s (unicodedata %s), regex %s. */\n" % (
        sys.version.split()[0], unicodedata.unidata_version, regex.__version__))
    w('#include "text/unicode_tables.h"\n\n')

    w("const qd_uc_record qd_uc_records[%d] = {\n" % len(rec_list))
    for cls, flags, ccc in rec_list:
        w("    {%d, %d, %d},\n" % (cls, flags, ccc))
    w("};\n\n")
    w("const uint16_t qd_uc_stage1[%d] = {\n" % len(stage1))
    for i in range(0, len(stage1), 16):
        w("    " + ",".join(str(x) for x in stage1[i:i + 16]) + ",\n")
    w("};\n\n")
    w("const uint8_t qd_uc_stage2[%d][%d] = {\n" % (len(block_list), BLOCK))
    assert len(rec_list) < 256
    for blk in block_list:
        w("    {" + ",".join(str(x) for x in blk) + "},\n")
    w("};\n\n")

    w("const qd_uc_map3 qd_uc_lower_table[%d] = {\n" % len(lower))
    for cp, lo in lower:
        lo = lo + [0] * (3 - len(lo))
        w("    {0x%X, {0x%X, 0x%X, 0x%X}},\n" % (cp, lo[0], lo[1], lo[2]))
    w("};\nconst int qd_uc_lower_count = %d;\n\n" % len(lower))

    w("const uint32_t qd_uc_decomp_pool[%d] = {\n" % len(pool))
    for i in range(0, len(pool), 12):
        w("    " + ",".join("0x%X" % x for x in pool[i:i + 12]) + ",\n")
    w("};\n")
    w("const qd_uc_decomp_entry qd_uc_decomp_table[%d] = {\n" % len(decomp))
    for cp, off, n in decomp:
        w("    {0x%X, %d, %d},\n" % (cp, off, n))
    w("};\nconst int qd_uc_decomp_count = %d;\n\n" % len(decomp))

    w("const qd_uc_comp_entry qd_uc_comp_table[%d] = {\n" % len(comp))
    for a, b, c in comp:
        w("    {0x%X, 0x%X, 0x%X},\n" % (a, b, c))
    w("};\nconst int qd_uc_comp_count = %d;\n\n" % len(comp))

    w("const qd_uc_map3 qd_uc_width_table[%d] = {\n" % len(width))
    for a, b in width:
        b = b + [0] * (3 - len(b))
        w("    {0x%X, {0x%X, 0x%X, 0x%X}},\n" % (a, b[0], b[1], b[2]))
    w("};\nconst int qd_uc_width_count = %d;\n\n" % len(width))

    w("const qd_uc_entity qd_uc_entities[%d] = {\n" % len(ent_items))
    for k, v in ent_items:
        w("    {%s, %s},\n" % (c_str(k.decode("utf-8")), c_str(v)))
    w("};\nconst int qd_uc_entity_count = %d;\n\n" % len(ent_items))

    w("const qd_uc_pair qd_uc_invalid_charrefs[%d] = {\n" % len(invalid_charrefs))
    for k, v in invalid_charrefs:
        assert len(v) == 1
        w("    {0x%X, 0x%X},\n" % (k, ord(v)))
    w("};\nconst int qd_uc_invalid_charref_count = %d;\n\n" % len(invalid_charrefs))
    w("const uint32_t qd_uc_invalid_codepoints[%d] = {\n" % len(invalid_codepoints))
    for i in range(0, len(invalid_codepoints), 12):
        w("    " + ",".join("0x%X" % x for x in invalid_codepoints[i:i + 12]) + ",\n")
    w("};\nconst int qd_uc_invalid_codepoint_count = %d;\n\n" % len(invalid_codepoints))

    w("const qd_uc_pair qd_uc_fold_ascii[%d] = {\n" % max(len(fold), 1))
    for cp, L in fold:
        w("    {0x%X, '%s'},\n" % (cp, L))
    if not fold:
        w("    {0, 0},\n")
    w("};\nconst int qd_uc_fold_ascii_count = %d;\n\n" % len(fold))

    w("const uint16_t qd_uc_cp1252_c1[32] = {\n    ")
    w(",".join("0x%X" % x for x in c1))
    w("\n};\n")


if __name__ == "__main__":
    main()
