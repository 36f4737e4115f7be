/* CLIP byte-level BPE tokenizer: transformers' CLIPTokenizer (slow) with ftfy
 * installed, as diffusers' Stable Diffusion pipelines use it.
 *
 * Text goes through the same steps as in Python: split on added/special tokens
 * (so SDXL's tokenizer_2, whose pad token is "!", turns every "!" into id 0),
 * ftfy.fix_text, whitespace collapse + strip, str.lower(), the CLIP regex,
 * GPT-2 byte-to-unicode mapping and BPE merges by rank.
 *
 * Known gap: ftfy's mojibake repair (fix_encoding: re-decoding text that was
 * UTF-8 read as Latin-1/Windows-125x/MacRoman/cp437) is not implemented; all the
 * other ftfy fixers are. Input that is not valid UTF-8 is decoded with U+FFFD
 * replacing each bad sequence, as Python's errors="replace" does. */
#ifndef QD_TEXT_CLIP_TOKENIZER_H
#define QD_TEXT_CLIP_TOKENIZER_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_clip_tokenizer qd_clip_tokenizer;

/* dir holds vocab.json, merges.txt and optionally special_tokens_map.json /
 * tokenizer_config.json. Errors (missing file, invalid JSON, malformed merges)
 * go through qd_fail() naming the file. */
qd_status qd_clip_tokenizer_load(qd_ctx *ctx, const char *dir, qd_clip_tokenizer **out);
void qd_clip_tokenizer_free(qd_clip_tokenizer *t);

/* Unpadded ids including BOS (49406) and EOS (49407). Returns the count written
 * (<= cap), or -1 on error (also when cap is too small: nothing is silently cut).
 * With ids == NULL, returns the count needed. */
int qd_clip_encode(qd_ctx *ctx, const qd_clip_tokenizer *t, const char *text, int32_t *ids, int cap);

/* Pipeline form: BOS + tokens + EOS, truncated to max_len (EOS kept last) and
 * padded to max_len with the pad token (49407 for SD1.5, id 0 = "!" for SDXL's
 * tokenizer_2). *truncated (may be NULL) gets the number of tokens dropped. */
qd_status qd_clip_encode_padded(qd_ctx *ctx, const qd_clip_tokenizer *t, const char *text,
                                int32_t *ids, int max_len, int *truncated);

/* Special token ids and tokenizer_config.json's model_max_length (77 if absent). */
int qd_clip_bos_id(const qd_clip_tokenizer *t);
int qd_clip_eos_id(const qd_clip_tokenizer *t);
int qd_clip_pad_id(const qd_clip_tokenizer *t);
int qd_clip_model_max_length(const qd_clip_tokenizer *t);

#endif
