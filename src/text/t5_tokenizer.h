/* T5 tokenizer (SentencePiece Unigram), as the SD3/SD3.5 and FLUX.1 pipelines
 * use it: T5TokenizerFast with padding="max_length", truncation=True.
 *
 * Loads either file a tokenizer folder may hold:
 *  - tokenizer.json (Hugging Face tokenizers: Unigram model, Precompiled
 *    normalizer, Metaspace pre-tokenizer, TemplateProcessing appending </s>),
 *    preferred, as transformers' T5TokenizerFast does;
 *  - spiece.model (sentencepiece ModelProto), with tokenizer_config.json's
 *    extra_ids (default 100) for the <extra_id_N> tokens, as T5Tokenizer does.
 *
 * Text goes through: split on special tokens (<pad>, </s>, <unk>,
 * <extra_id_N>: they are matched in the raw text, as both tokenizers do);
 * per segment sentencepiece normalization (precompiled charsmap, nmt_nfkc for
 * T5; whitespace collapse, "▁" escaping, dummy prefix); Unigram Viterbi with
 * runs of unknown characters merged into one <unk>; then </s>.
 *
 * Known gap: the tokenizers library applies the Precompiled charsmap per
 * extended grapheme cluster (whole-cluster replacement by the shortest match),
 * sentencepiece by longest byte prefix; we do the latter, which is what the
 * reference ids (sentencepiece) show. They differ only for multi-codepoint
 * clusters that the charsmap rewrites (rare combining sequences). */
#ifndef QD_TEXT_T5_TOKENIZER_H
#define QD_TEXT_T5_TOKENIZER_H

#include <stdint.h>
#include "base/ctx.h"

typedef struct qd_t5_tokenizer qd_t5_tokenizer;

/* dir holds tokenizer.json and/or spiece.model; the error names the folder
 * when neither exists, or the file when it is malformed. */
qd_status qd_t5_tokenizer_load(qd_ctx *ctx, const char *dir, qd_t5_tokenizer **out);
/* One specific file: a path ending in ".json" is read as tokenizer.json,
 * anything else as a sentencepiece model. */
qd_status qd_t5_tokenizer_load_file(qd_ctx *ctx, const char *path, qd_t5_tokenizer **out);
void qd_t5_tokenizer_free(qd_t5_tokenizer *t);

/* Ids of text (NULL: empty) followed by </s>. Returns the count written (<= cap), or -1 on
 * error (also when cap is too small). With ids == NULL, returns the count needed. */
int qd_t5_encode(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *text, int32_t *ids, int cap);

/* Pipeline form: tokens truncated to max_len - 1, then </s>, then <pad> (id 0)
 * up to max_len. *truncated (may be NULL) gets the number of tokens dropped. */
qd_status qd_t5_encode_padded(qd_ctx *ctx, const qd_t5_tokenizer *t, const char *text, int32_t *ids,
                              int max_len, int *truncated);

int qd_t5_vocab_size(const qd_t5_tokenizer *t);   /* ids are < this (incl. extra ids) */
int qd_t5_eos_id(const qd_t5_tokenizer *t);
int qd_t5_pad_id(const qd_t5_tokenizer *t);

#endif
