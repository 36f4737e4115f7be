#include "pipeline/prompt.h"
#include "base/ctx.h"

#include <stdlib.h>
#include <string.h>

#define CLIP_LEN 77

/* One CLIP encoder on one text: `hidden` gets the last (SD1.5) or penultimate
 * (SDXL, SD3) hidden states [77, D]; `pooled` the projected (WithProjection) or
 * pooler output. Either may be NULL. */
static qd_status clip_encode(qd_ctx *ctx, qd_model *m, int i, const char *text, int penultimate,
                             float *hidden, float *pooled) {
    int32_t ids[CLIP_LEN];
    int truncated = 0;
    QD_TRY(qd_clip_encode_padded(ctx, m->tokenizer[i], text, ids, CLIP_LEN, &truncated));
    if (truncated && i == 0)
        qd_warn(ctx, "the prompt is longer than %d CLIP tokens: %d tokens were truncated", CLIP_LEN, truncated);
    int proj = qd_clip_text_get_info(m->text_encoder[i])->projection_dim > 0;
    return qd_clip_text_forward(ctx, m->text_encoder[i], ids, 1, CLIP_LEN, penultimate ? NULL : hidden,
                                penultimate ? hidden : NULL, proj ? NULL : pooled, proj ? pooled : NULL);
}

/* T5 on one text into rows [L, D] of context (zeros when the model has no T5). */
static qd_status t5_encode(qd_ctx *ctx, qd_model *m, const char *text, int64_t L, float *context) {
    if (!m->t5) return QD_OK;   /* left zero, as diffusers without text_encoder_3 */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)L);
    if (!ids) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    int truncated = 0;
    qd_status st = qd_t5_encode_padded(ctx, m->t5_tokenizer, text, ids, (int)L, &truncated);
    if (st == QD_OK && truncated)
        qd_warn(ctx, "the prompt is longer than %lld T5 tokens: %d tokens were truncated", (long long)L, truncated);
    if (st == QD_OK) st = qd_t5_encoder_forward(ctx, m->t5, ids, 1, L, context);
    free(ids);
    return st;
}

/* Everything one text contributes: context [L, D] and pooled [P]. */
static qd_status encode_text(qd_ctx *ctx, qd_model *m, const qd_cond *c, const char *text, float *context,
                             float *pooled) {
    float *h = NULL;
    qd_status st = QD_OK;
    switch (m->family) {
    case QD_FAMILY_SD15:
        return clip_encode(ctx, m, 0, text, 0, context, NULL);
    case QD_FAMILY_SDXL:
    case QD_FAMILY_SD3: {
        /* CLIP-L and CLIP-G penultimate states side by side; SDXL pools from the
         * second encoder only, SD3 concatenates both projections. SD3 then zero-pads
         * the CLIP features to the T5 width and appends the T5 tokens. */
        int64_t off = 0, poff = 0;
        for (int i = 0; i < 2 && st == QD_OK; i++) {
            const qd_clip_text_info *ci = qd_clip_text_get_info(m->text_encoder[i]);
            int64_t Di = ci->hidden_size;
            h = malloc(sizeof(float) * (size_t)(CLIP_LEN * Di));
            if (!h) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
            int want_pool = m->family == QD_FAMILY_SD3 || i == 1;
            st = clip_encode(ctx, m, i, text, 1, h, want_pool ? pooled + poff : NULL);
            if (st == QD_OK)
                for (int64_t t = 0; t < CLIP_LEN; t++)
                    memcpy(context + t * c->D + off, h + t * Di, sizeof(float) * (size_t)Di);
            free(h);
            off += Di;
            if (m->family == QD_FAMILY_SD3) poff += ci->projection_dim;
        }
        if (st == QD_OK && m->family == QD_FAMILY_SD3) st = t5_encode(ctx, m, text, c->L - CLIP_LEN, context + CLIP_LEN * c->D);
        return st;
    }
    case QD_FAMILY_FLUX:
        st = clip_encode(ctx, m, 0, text, 0, NULL, pooled);
        if (st == QD_OK) st = t5_encode(ctx, m, text, c->L, context);
        return st;
    }
    return QD_OK;
}

void qd_cond_free(qd_cond *c) {
    free(c->context);
    free(c->pooled);
    free(c->time_ids);
    memset(c, 0, sizeof *c);
}

static void shapes(const qd_model *m, int max_seq, qd_cond *c) {
    switch (m->family) {
    case QD_FAMILY_SD15:
    case QD_FAMILY_SDXL:
        c->L = CLIP_LEN;
        for (int i = 0; i < m->n_clip; i++) c->D += qd_clip_text_get_info(m->text_encoder[i])->hidden_size;
        c->P = m->family == QD_FAMILY_SDXL ? qd_clip_text_get_info(m->text_encoder[1])->projection_dim : 0;
        break;
    case QD_FAMILY_SD3:
        c->D = qd_sd3_get_info(m->sd3)->joint_attention_dim;
        c->L = CLIP_LEN + (m->t5 ? (max_seq > 0 ? max_seq : 256) : CLIP_LEN);
        c->P = qd_sd3_get_info(m->sd3)->pooled_projection_dim;
        break;
    case QD_FAMILY_FLUX:
        c->D = qd_flux_get_info(m->flux)->joint_attention_dim;
        c->L = max_seq > 0 ? max_seq : qd_flux_get_info(m->flux)->guidance_embeds ? 512 : 256;
        c->P = qd_flux_get_info(m->flux)->pooled_projection_dim;
        break;
    }
}

qd_status qd_encode_prompts(qd_ctx *ctx, qd_model *m, const char *prompt, const char *negative,
                            int batch, int guidance, int width, int height, int max_seq, qd_cond *c) {
    memset(c, 0, sizeof *c);
    if (max_seq < 0 || max_seq > 4096) return qd_fail(ctx, QD_ERR_ARG, "max sequence length %d out of range", max_seq);
    shapes(m, max_seq, c);
    int sdxl = m->family == QD_FAMILY_SDXL;
    c->rows = (int64_t)batch * (guidance ? 2 : 1);
    int64_t per = c->L * c->D;
    c->context = calloc((size_t)(c->rows * per), sizeof(float));
    c->pooled = c->P ? calloc((size_t)(c->rows * c->P), sizeof(float)) : NULL;
    c->time_ids = sdxl ? calloc((size_t)(c->rows * 6), sizeof(float)) : NULL;
    if (!c->context || (c->P && !c->pooled) || (sdxl && !c->time_ids)) {
        qd_cond_free(c);
        return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    int64_t cond_row = guidance ? batch : 0;
    qd_status st = encode_text(ctx, m, c, prompt ? prompt : "", c->context + cond_row * per,
                               c->P ? c->pooled + cond_row * c->P : NULL);
    if (st == QD_OK && guidance) {
        /* SDXL with force_zeros_for_empty_prompt: no negative prompt at all (NULL, as
         * diffusers' negative_prompt=None) gives all-zero embeddings (left from calloc);
         * an explicit "" is encoded like any text. */
        int zeros = sdxl && m->force_zeros_for_empty_prompt && !negative;
        if (!zeros) st = encode_text(ctx, m, c, negative ? negative : "", c->context, c->pooled);
    }
    if (st != QD_OK) { qd_cond_free(c); return st; }
    /* every image of the batch shares its half's embeddings */
    for (int64_t r = 0; r < c->rows; r++) {
        int64_t src = guidance && r >= batch ? batch : 0;
        if (r != src) {
            memcpy(c->context + r * per, c->context + src * per, sizeof(float) * (size_t)per);
            if (c->P) memcpy(c->pooled + r * c->P, c->pooled + src * c->P, sizeof(float) * (size_t)c->P);
        }
        if (sdxl) {
            /* add_time_ids: original size, crop top-left, target size */
            float ids[6] = {(float)height, (float)width, 0, 0, (float)height, (float)width};
            memcpy(c->time_ids + r * 6, ids, sizeof ids);
        }
    }
    return QD_OK;
}
