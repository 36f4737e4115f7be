/* SentencePiece Unigram segmentation: a vocabulary of pieces with log-prob
 * scores, a byte trie over them, and the Viterbi search sentencepiece runs
 * (unigram_model.cc EncodeOptimized): best-scoring split of a normalized
 * string, characters no piece covers become <unk> (score min - 10), runs of
 * <unk> merge into one id, or, with byte_fallback, into <0xXX> byte pieces. */
#ifndef QD_TEXT_UNIGRAM_H
#define QD_TEXT_UNIGRAM_H

#include <stddef.h>
#include <stdint.h>

/* sentencepiece ModelProto.SentencePiece.Type */
typedef enum {
    QD_PIECE_NORMAL = 1, QD_PIECE_UNKNOWN = 2, QD_PIECE_CONTROL = 3,
    QD_PIECE_USER_DEFINED = 4, QD_PIECE_UNUSED = 5, QD_PIECE_BYTE = 6
} qd_piece_type;

typedef struct {
    int n;                  /* pieces, ids 0..n-1 */
    char *text;             /* all pieces, each NUL-terminated */
    size_t text_len, text_cap;
    size_t *off;            /* piece i is text + off[i] */
    float *score;
    uint8_t *type;
    int unk_id;
    int byte_fallback;
    int32_t byte_id[256];   /* ids of <0x00>..<0xFF> when byte_fallback */
    float min_score, max_score;
    /* trie: node 0 is the root; edges in an open-addressing hash (node, byte) -> child */
    int32_t *node_piece;    /* piece id ending at a node, or -1 */
    int64_t n_nodes;
    uint64_t *edge_key;     /* 0 = empty slot */
    int32_t *edge_child;
    uint64_t edge_mask;
} qd_unigram;

/* Allocate room for n pieces of total_bytes bytes (without NULs). 0 or -2 (OOM). */
int qd_unigram_init(qd_unigram *u, int n, size_t total_bytes);
void qd_unigram_free(qd_unigram *u);

/* Set piece `id` (each id once). 0, or -1 when the id is out of range, the
 * piece is empty, contains NUL or exceeds the space given to init. */
int qd_unigram_set(qd_unigram *u, int id, const char *piece, size_t len, float score, qd_piece_type type);

/* After every piece is set: build the trie and scores. Returns 0; -1 when
 * there is no unknown piece (unk_id out of range); -2 out of memory; -3 when a
 * piece is defined twice (*bad_id says which); -4 when byte_fallback lacks
 * some <0xXX> piece (*bad_id = the byte); -5 when piece *bad_id was never set. */
int qd_unigram_build(qd_unigram *u, int unk_id, int byte_fallback, int *bad_id);

/* Id of a piece of any type, or -1. */
int qd_unigram_find(const qd_unigram *u, const char *piece, size_t len);
static inline const char *qd_unigram_piece(const qd_unigram *u, int id) { return u->text + u->off[id]; }

/* Segment normalized text s[0..n) and write up to cap ids to out. Returns the
 * number of ids (which may exceed cap; never exceeds n), or -2 out of memory. */
int64_t qd_unigram_encode(const qd_unigram *u, const char *s, size_t n, int32_t *out, size_t cap);

#endif
