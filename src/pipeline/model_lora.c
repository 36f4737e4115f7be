/* Generation-time LoRAs: match the LoRA files against every weight the model's denoiser
 * and text encoders loaded (their qd_params registries), build each matched weight's
 * low-rank factors with the merge code's matching and scaling (convert/lora.c), and
 * attach them to the weight (tensor/lora_path.c). */
#include "pipeline/model_lora.h"
#include "convert/lora.h"
#include "models/params.h"
#include "tensor/lora_path.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct { char *path; float scale; long long size, mtime_ns, ino; } lora_id;

struct qd_model_lora {
    lora_id *ids;
    int n_ids;
    qd_weight **attached;
    int64_t n_attached, cap_attached;
};

static void free_ids(struct qd_model_lora *L) {
    for (int i = 0; i < L->n_ids; i++) free(L->ids[i].path);
    free(L->ids);
    L->ids = NULL;
    L->n_ids = 0;
}

void qd_model_lora_clear(qd_model *m) {
    struct qd_model_lora *L = m->lora;
    if (!L) return;
    for (int64_t i = 0; i < L->n_attached; i++) qd_lora_delta_detach(L->attached[i]);
    free(L->attached);
    free_ids(L);
    free(L);
    m->lora = NULL;
}

static void stat_id(const char *path, lora_id *id) {
    struct stat s;
    if (stat(path, &s) == 0) {
        id->size = (long long)s.st_size;
        id->mtime_ns = (long long)s.st_mtim.tv_sec * 1000000000LL + s.st_mtim.tv_nsec;
        id->ino = (long long)s.st_ino;
    } else {
        id->size = id->mtime_ns = id->ino = -1;
    }
}

/* The components LoRAs can name, with the names convert/lora.c matches them under. */
static int components(qd_model *m, qd_params **params, const char **names) {
    int n = 0;
    if (m->unet) { params[n] = qd_unet_params(m->unet); names[n++] = "unet"; }
    if (m->sd3) { params[n] = qd_sd3_params(m->sd3); names[n++] = "transformer"; }
    if (m->flux) { params[n] = qd_flux_params(m->flux); names[n++] = "transformer"; }
    for (int i = 0; i < 2; i++)
        if (m->text_encoder[i]) { params[n] = qd_clip_text_params(m->text_encoder[i]); names[n++] = i ? "text_encoder_2" : "text_encoder"; }
    if (m->t5) {   /* text_encoder_2 in FLUX folders, text_encoder_3 in SD3 ones */
        params[n] = qd_t5_encoder_params(m->t5);
        names[n++] = m->family == QD_FAMILY_FLUX ? "text_encoder_2" : "text_encoder_3";
    }
    return n;
}

static qd_status attach_all(qd_ctx *ctx, qd_model *m, struct qd_model_lora *L, qd_lora_set *set) {
    qd_params *params[6];
    const char *names[6];
    int nc = components(m, params, names);
    for (int c = 0; c < nc; c++) {
        qd_params *p = params[c];
        for (int i = 0; i < p->n_weights; i++) {
            qd_weight *w = p->weights[i].w;
            int64_t shape[2] = {w->rows, w->cols};
            float *A, *B;
            int64_t rank;
            int k = qd_lora_factors(ctx, set, names[c], p->weights[i].name, shape, 2, &A, &B, &rank);
            if (k < 0) return qd_fail_prefix(ctx, QD_ERR_ARG, "%s", names[c]);   /* a LoRA for another model */
            if (k == 0) continue;
            if (L->n_attached == L->cap_attached) {
                int64_t cap = L->cap_attached ? 2 * L->cap_attached : 256;
                qd_weight **g = realloc(L->attached, sizeof *g * (size_t)cap);
                if (!g) { free(A); free(B); return qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); }
                L->attached = g;
                L->cap_attached = cap;
            }
            QD_TRY(qd_lora_delta_attach(ctx, w, A, B, rank));
            L->attached[L->n_attached++] = w;
        }
    }
    /* 0 matched: error (the caller's LoRA does not belong to this model); some unmatched: a warning */
    if (qd_lora_set_check(ctx, set) != QD_OK) return qd_fail_prefix(ctx, QD_ERR_ARG, "LoRA");
    return QD_OK;
}

qd_status qd_model_use_loras(qd_ctx *ctx, qd_model *m, const char *const *paths, const float *scales, int n) {
    if (n < 0 || (n > 0 && !paths)) return qd_fail(ctx, QD_ERR_ARG, "LoRAs: %d files but no paths", n);
    lora_id *ids = n ? calloc((size_t)n, sizeof *ids) : NULL;
    if (n && !ids) return qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    int k = 0;
    qd_status st = QD_OK;
    for (int i = 0; i < n && st == QD_OK; i++) {
        float s = scales ? scales[i] : 1.0f;
        if (!paths[i]) { st = qd_fail(ctx, QD_ERR_ARG, "LoRA %d: no path", i + 1); break; }
        if (!isfinite(s)) { st = qd_fail(ctx, QD_ERR_ARG, "%s: LoRA scale is not a finite number", paths[i]); break; }
        if (s == 0.0f) continue;   /* scale 0: as if absent, the weights untouched */
        if (!(ids[k].path = strdup(paths[i]))) { st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); break; }
        ids[k].scale = s;
        stat_id(paths[i], &ids[k]);
        k++;
    }
    /* the active list already? */
    struct qd_model_lora *cur = m->lora;
    int same = st == QD_OK && cur && cur->n_ids == k;
    for (int i = 0; same && i < k; i++)
        same = !strcmp(cur->ids[i].path, ids[i].path) && cur->ids[i].scale == ids[i].scale &&
               cur->ids[i].size == ids[i].size && cur->ids[i].mtime_ns == ids[i].mtime_ns && cur->ids[i].ino == ids[i].ino;
    if (same || (st == QD_OK && k == 0 && !cur)) {
        for (int i = 0; i < k; i++) free(ids[i].path);
        free(ids);
        return QD_OK;
    }
    qd_model_lora_clear(m);
    if (st != QD_OK || k == 0) {
        for (int i = 0; i < k; i++) free(ids[i].path);
        free(ids);
        return st;
    }
    const char **ps = malloc(sizeof *ps * (size_t)k);
    float *ss = malloc(sizeof *ss * (size_t)k);
    struct qd_model_lora *L = calloc(1, sizeof *L);
    qd_lora_set *set = NULL;
    if (!ps || !ss || !L) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    for (int i = 0; st == QD_OK && i < k; i++) { ps[i] = ids[i].path; ss[i] = ids[i].scale; }
    if (st == QD_OK) st = qd_lora_set_open(ctx, ps, ss, k, 1.0f, &set);
    if (st == QD_OK) {
        L->ids = ids;
        L->n_ids = k;
        ids = NULL;
        m->lora = L;
        L = NULL;
        st = attach_all(ctx, m, m->lora, set);
        if (st != QD_OK) qd_model_lora_clear(m);
    }
    qd_lora_set_free(set);
    free(ps);
    free(ss);
    free(L);
    if (ids) {
        for (int i = 0; i < k; i++) free(ids[i].path);
        free(ids);
    }
    return st;
}
