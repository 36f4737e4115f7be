/* Translated from sentencepiece's unigram_model.cc / model_interface.cc and the
 * unknown-run merging in sentencepiece_processor.cc (Apache-2.0). */
#include "text/unigram.h"
#include "text/sp_normalizer.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qd_unigram_init(qd_unigram *u, int n, size_t total_bytes) {
    memset(u, 0, sizeof *u);
    if (n <= 0) return -1;
    u->n = n;
    u->text_cap = total_bytes + (size_t)n;
    u->text = malloc(u->text_cap);
    u->off = calloc((size_t)n, sizeof *u->off);
    u->score = calloc((size_t)n, sizeof *u->score);
    u->type = calloc((size_t)n, sizeof *u->type);
    if (!u->text || !u->off || !u->score || !u->type) { qd_unigram_free(u); return -2; }
    return 0;
}

void qd_unigram_free(qd_unigram *u) {
    free(u->text); free(u->off); free(u->score); free(u->type);
    free(u->node_piece); free(u->edge_key); free(u->edge_child);
    memset(u, 0, sizeof *u);
}

int qd_unigram_set(qd_unigram *u, int id, const char *piece, size_t len, float score, qd_piece_type type) {
    if (id < 0 || id >= u->n || u->type[id] || len == 0 || memchr(piece, 0, len) ||
        type < QD_PIECE_NORMAL || type > QD_PIECE_BYTE) return -1;
    if (len + 1 > u->text_cap - u->text_len) return -1;
    size_t at = u->text_len;
    memcpy(u->text + at, piece, len);
    u->text[at + len] = 0;
    u->text_len += len + 1;
    u->off[id] = at;
    u->score[id] = score;
    u->type[id] = (uint8_t)type;
    return 0;
}

static uint64_t hash_key(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
    return k;
}

/* Child of `node` by byte c, or -1. */
static int32_t child(const qd_unigram *u, int64_t node, unsigned c) {
    uint64_t key = ((uint64_t)node << 8 | c) + 1;
    for (uint64_t h = hash_key(key) & u->edge_mask;; h = (h + 1) & u->edge_mask) {
        if (u->edge_key[h] == key) return u->edge_child[h];
        if (!u->edge_key[h]) return -1;
    }
}

static int32_t add_child(qd_unigram *u, int64_t node, unsigned c) {
    uint64_t key = ((uint64_t)node << 8 | c) + 1;
    uint64_t h = hash_key(key) & u->edge_mask;
    for (; u->edge_key[h]; h = (h + 1) & u->edge_mask)
        if (u->edge_key[h] == key) return u->edge_child[h];
    int32_t nn = (int32_t)u->n_nodes++;
    u->edge_key[h] = key;
    u->edge_child[h] = nn;
    u->node_piece[nn] = -1;
    return nn;
}

/* Pieces the Viterbi search may produce (sentencepiece's trie holds NORMAL,
 * USER_DEFINED and UNUSED pieces and then skips UNUSED ones). */
static int in_trie(int type) { return type == QD_PIECE_NORMAL || type == QD_PIECE_USER_DEFINED; }

int qd_unigram_build(qd_unigram *u, int unk_id, int byte_fallback, int *bad_id) {
    *bad_id = -1;
    if (unk_id < 0 || unk_id >= u->n) return -1;
    u->unk_id = unk_id;
    u->byte_fallback = byte_fallback;
    size_t total = 0;
    u->min_score = FLT_MAX;
    u->max_score = FLT_MIN;
    for (int i = 0; i < u->n; i++) {
        if (!u->type[i]) { *bad_id = i; return -5; }
        if (!in_trie(u->type[i])) continue;
        total += strlen(qd_unigram_piece(u, i));
        if (u->type[i] == QD_PIECE_NORMAL) {
            if (u->score[i] < u->min_score) u->min_score = u->score[i];
            if (u->score[i] > u->max_score) u->max_score = u->score[i];
        }
    }
    size_t cap = 16;
    while (cap < 2 * (total + 1)) cap *= 2;
    u->node_piece = malloc(sizeof *u->node_piece * (total + 1));
    u->edge_key = calloc(cap, sizeof *u->edge_key);
    u->edge_child = malloc(sizeof *u->edge_child * cap);
    if (!u->node_piece || !u->edge_key || !u->edge_child) return -2;
    u->edge_mask = cap - 1;
    u->n_nodes = 1;
    u->node_piece[0] = -1;
    for (int i = 0; i < u->n; i++) {
        if (!in_trie(u->type[i])) continue;
        const unsigned char *p = (const unsigned char *)qd_unigram_piece(u, i);
        int64_t node = 0;
        for (; *p; p++) node = add_child(u, node, *p);
        if (u->node_piece[node] >= 0) { *bad_id = i; return -3; }
        u->node_piece[node] = i;
    }
    if (byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            int id = qd_unigram_find(u, name, 6);
            if (id < 0 || u->type[id] != QD_PIECE_BYTE) { *bad_id = b; return -4; }
            u->byte_id[b] = id;
        }
    }
    return 0;
}

int qd_unigram_find(const qd_unigram *u, const char *piece, size_t len) {
    if (u->edge_key) {
        int64_t node = 0;
        for (size_t i = 0; i < len && node >= 0; i++) node = child(u, node, (unsigned char)piece[i]);
        if (node >= 0 && u->node_piece[node] >= 0) return u->node_piece[node];
    }
    /* pieces outside the trie (control, unknown, byte, unused): linear scan */
    for (int i = 0; i < u->n; i++) {
        if (in_trie(u->type[i]) && u->edge_key) continue;
        const char *p = qd_unigram_piece(u, i);
        if (strlen(p) == len && !memcmp(p, piece, len)) return i;
    }
    return -1;
}

typedef struct { float score; int32_t start; int32_t id; } best_t;

int64_t qd_unigram_encode(const qd_unigram *u, const char *s, size_t n, int32_t *out, size_t cap) {
    if (n == 0) return 0;
    if (n > INT32_MAX - 1) return -2;
    best_t *best = malloc(sizeof *best * (n + 1));
    if (!best) return -2;
    for (size_t i = 0; i <= n; i++) { best[i].score = 0; best[i].start = -1; best[i].id = -1; }
    const float unk_score = u->min_score - 10.0f;
    const unsigned char *b = (const unsigned char *)s;
    size_t pos = 0;
    while (pos < n) {
        const float here = best[pos].score;
        size_t mblen = qd_sp_char_len(s + pos, n - pos);
        int single = 0;
        int64_t node = 0;
        for (size_t k = pos; k < n; k++) {
            node = child(u, node, b[k]);
            if (node < 0) break;
            int id = u->node_piece[node];
            if (id < 0) continue;
            size_t len = k + 1 - pos;
            /* user-defined symbols get a bonus so they always win */
            float sc = u->type[id] == QD_PIECE_USER_DEFINED ? (float)len * u->max_score - 0.1f : u->score[id];
            float cand = sc + here;
            best_t *t = &best[k + 1];
            if (t->start < 0 || cand > t->score) { t->score = cand; t->start = (int32_t)pos; t->id = id; }
            if (len == mblen) single = 1;
        }
        if (!single) {
            best_t *t = &best[pos + mblen];
            float cand = unk_score + here;
            if (t->start < 0 || cand > t->score) { t->score = cand; t->start = (int32_t)pos; t->id = u->unk_id; }
        }
        pos += mblen;
    }
    /* backtrack: count pieces, then emit them in order */
    int64_t count = 0;
    for (int64_t e = (int64_t)n; e > 0; e = best[e].start) count++;
    int32_t *path = malloc(sizeof *path * (size_t)count);
    if (!path) { free(best); return -2; }
    int64_t k = count;
    for (int64_t e = (int64_t)n; e > 0; e = best[e].start) path[--k] = (int32_t)e;
    int64_t n_out = 0;
    int prev_unk = 0;
    for (int64_t i = 0; i < count; i++) {
        int32_t e = path[i], st = best[e].start, id = best[e].id;
        int is_unk = id == u->unk_id;
        if (is_unk && u->byte_fallback) {
            for (int32_t j = st; j < e; j++) {
                if ((size_t)n_out < cap) out[n_out] = u->byte_id[b[j]];
                n_out++;
            }
        } else if (!(is_unk && prev_unk)) {     /* a run of unknowns is one <unk> */
            if ((size_t)n_out < cap) out[n_out] = id;
            n_out++;
        }
        prev_unk = is_unk;
    }
    free(path);
    free(best);
    return n_out;
}
