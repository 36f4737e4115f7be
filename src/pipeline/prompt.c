#include "pipeline/prompt.h"
#include "base/ctx.h"

#include <stdlib.h>
#include <string.h>

#define CLIP_LEN 77

/* One text through every encoder: SD1.5 takes the last hidden state; SDXL takes
 * hidden_states[-2] of both encoders side by side, and the projected pooled
 * output of the second. */
static qd_status encode_text(qd_ctx *ctx, qd_model *m, const char *text, float *context, float *pooled) {
    int64_t D = 0;
    for (int i = 0; i < m->n_text; i++) D += qd_clip_text_get_info(m->text_encoder[i])->hidden_size;
    int64_t off = 0;
    for (int i = 0; i < m->n_text; i++) {
        int32_t ids[CLIP_LEN];
        int truncated = 0;
        QD_TRY(qd_clip_encode_padded(ctx, m->tokenizer[i], text, ids, CLIP_LEN, &truncated));
        if (truncated && i == 0)
            qd_warn(ctx, "the prompt is longer than %d tokens: %d tokens were truncated", CLIP_LEN, truncated);
        int64_t Di = qd_clip_text_get_info(m->text_encoder[i])->hidden_size;
        float *h = malloc(sizeof(float) * (size_t)(CLIP_LEN * Di));
        if (!h) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        int sdxl = m->family == QD_FAMILY_SDXL;
        qd_status st = qd_clip_text_forward(ctx, m->text_encoder[i], ids, 1, CLIP_LEN,
                                            sdxl ? NULL : h, sdxl ? h : NULL, NULL,
                                            sdxl && i == m->n_text - 1 ? pooled : NULL);
        if (st == QD_OK)
            for (int64_t t = 0; t < CLIP_LEN; t++)
                memcpy(context + t * D + off, h + t * Di, sizeof(float) * (size_t)Di);
        free(h);
        QD_TRY(st);
        off += Di;
    }
    return QD_OK;
}

void qd_cond_free(qd_cond *c) {
    free(c->context);
    free(c->text_embeds);
    free(c->time_ids);
    memset(c, 0, sizeof *c);
}

qd_status qd_encode_prompts(qd_ctx *ctx, qd_model *m, const char *prompt, const char *negative,
                            int batch, int guidance, int width, int height, qd_cond *c) {
    memset(c, 0, sizeof *c);
    int sdxl = m->family == QD_FAMILY_SDXL;
    c->L = CLIP_LEN;
    for (int i = 0; i < m->n_text; i++) c->D += qd_clip_text_get_info(m->text_encoder[i])->hidden_size;
    c->P = sdxl ? qd_clip_text_get_info(m->text_encoder[1])->projection_dim : 0;
    c->rows = (int64_t)batch * (guidance ? 2 : 1);
    int64_t per = c->L * c->D;
    c->context = calloc((size_t)(c->rows * per), sizeof(float));
    if (sdxl) {
        c->text_embeds = calloc((size_t)(c->rows * c->P), sizeof(float));
        c->time_ids = calloc((size_t)(c->rows * 6), sizeof(float));
    }
    if (!c->context || (sdxl && (!c->text_embeds || !c->time_ids))) {
        qd_cond_free(c);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    int64_t cond_row = guidance ? batch : 0;
    qd_status st = encode_text(ctx, m, prompt ? prompt : "", c->context + cond_row * per,
                               sdxl ? c->text_embeds + cond_row * c->P : NULL);
    if (st == QD_OK && guidance) {
        /* SDXL with force_zeros_for_empty_prompt: no negative prompt at all (NULL, as
         * diffusers' negative_prompt=None) gives all-zero embeddings (left from calloc);
         * an explicit "" is encoded like any text. */
        int zeros = sdxl && m->force_zeros_for_empty_prompt && !negative;
        if (!zeros) st = encode_text(ctx, m, negative ? negative : "", c->context, sdxl ? c->text_embeds : NULL);
    }
    if (st != QD_OK) { qd_cond_free(c); return st; }
    /* every image of the batch shares its half's embeddings */
    for (int64_t r = 0; r < c->rows; r++) {
        int64_t src = guidance && r >= batch ? batch : 0;
        if (r != src) {
            memcpy(c->context + r * per, c->context + src * per, sizeof(float) * (size_t)per);
            if (sdxl) memcpy(c->text_embeds + r * c->P, c->text_embeds + src * c->P, sizeof(float) * (size_t)c->P);
        }
        if (sdxl) {
            /* add_time_ids: original size, crop top-left, target size */
            float ids[6] = {(float)height, (float)width, 0, 0, (float)height, (float)width};
            memcpy(c->time_ids + r * 6, ids, sizeof ids);
        }
    }
    return QD_OK;
}
