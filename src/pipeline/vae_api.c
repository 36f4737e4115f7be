/* The public VAE API (include/qdiff.h, "autoencoders on their own"): opens a
 * diffusers vae folder or TAESD weight files, converts between the public image
 * layouts and the models' NCHW floats, and applies each family's latent
 * convention, so callers always see the latents the diffusion model uses. */
#include "qdiff.h"
#include "base/ctx.h"
#include "io/file.h"
#include "io/json.h"
#include "io/pth.h"
#include "io/safetensors.h"
#include "quant/comfy_quant.h"
#include "models/taesd.h"
#include "models/vae.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SOURCES 2

struct qd_vae_model {
    qd_vae *kl;                 /* AutoencoderKL, or */
    qd_taesd *tiny;             /* a TAESD-family model over the sources below */
    qd_st_set st[MAX_SOURCES];
    qd_pth *pth[MAX_SOURCES];
    int n_st, n_pth;
    float scale, shift;         /* AutoencoderKL latent convention */
    qd_vae_model_info info;
};

/* ---- opening -------------------------------------------------------------------- */

/* Tensors of one weight file (safetensors or torch zip, told apart by content) into the TAESD model. */
static qd_status add_tiny_file(qd_ctx *ctx, qd_vae_model *m, const char *path) {
    if (m->n_st + m->n_pth >= MAX_SOURCES)
        return qd_fail(ctx, QD_ERR_ARG, "%s: at most an encoder and a decoder file can be combined", path);
    unsigned char head[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (qd_pth_sniff(head, n)) {
        qd_pth *p;
        QD_TRY(qd_pth_open(ctx, path, &p));
        m->pth[m->n_pth++] = p;
        return qd_taesd_add(ctx, m->tiny, p->tensors, p->n_tensors, path);
    }
    qd_st_set *s = &m->st[m->n_st];
    QD_TRY(qd_st_open(ctx, path, s));
    m->n_st++;
    return qd_taesd_add(ctx, m->tiny, s->tensors, s->n_tensors, path);
}

/* "dir/taef2_encoder.pth" -> "dir/taef2_decoder.pth" (and back): the last "encoder" or
 * "decoder" in the file name swapped. 0 when the name has neither. */
static int sibling(const char *path, char *out, size_t n) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *hit = NULL, *from = NULL, *to = NULL;
    for (const char *p = base; (p = strstr(p, "coder")) != NULL; p++)
        if (p - base >= 2 && (!strncmp(p - 2, "encoder", 7) || !strncmp(p - 2, "decoder", 7))) {
            hit = p - 2;
            from = !strncmp(hit, "en", 2) ? "en" : "de";
        }
    if (!hit || strlen(path) + 1 > n) return 0;
    to = from[0] == 'e' ? "de" : "en";
    snprintf(out, n, "%s", path);
    memcpy(out + (hit - path), to, 2);
    return 1;
}

static void set_tiny_info(qd_vae_model *m) {
    const qd_taesd_info *ti = qd_taesd_get_info(m->tiny);
    m->info.latent_channels = ti->latent_channels;
    m->info.downscale = ti->downscale;
    m->info.can_encode = ti->has_encoder;
    m->info.can_decode = ti->has_decoder;
    m->info.kind = ti->variant;
}

static qd_status new_model(qd_ctx *ctx, qd_vae_model **out) {
    *out = qd_calloc(ctx, 1, sizeof **out);
    return *out ? QD_OK : QD_ERR_NOMEM;
}

static qd_status open_tiny(qd_ctx *ctx, qd_vae_model *m, const char *a, const char *b) {
    if (!(m->tiny = qd_taesd_new(ctx))) return QD_ERR_NOMEM;
    if (a) QD_TRY(add_tiny_file(ctx, m, a));
    if (b) QD_TRY(add_tiny_file(ctx, m, b));
    set_tiny_info(m);
    return QD_OK;
}

/* A diffusers folder: AutoencoderKL through models/vae.c, AutoencoderTiny from its weights. */
static qd_status open_dir(qd_ctx *ctx, qd_vae_model *m, const char *dir) {
    char path[4096];
    qd_path_join(path, sizeof path, dir, "config.json");
    if (!qd_file_exists(path))
        return qd_fail(ctx, QD_ERR_IO, "%s: no config.json (expected a diffusers vae folder or a TAESD weight file)", dir);
    cJSON *cfg;
    QD_TRY(qd_json_load(ctx, path, &cfg));
    const char *cls = qd_json_str(cfg, "_class_name", "AutoencoderKL");
    int tiny = !strcmp(cls, "AutoencoderTiny");
    cJSON_Delete(cfg);
    if (!tiny) {
        QD_TRY(qd_vae_load(ctx, dir, &m->kl));
        const qd_vae_info *vi = qd_vae_get_info(m->kl);
        if (vi->in_channels != 3 || vi->out_channels != 3)
            return qd_fail(ctx, QD_ERR_UNSUPPORTED, "%s: a VAE with %d input / %d output channels is not an RGB VAE",
                           path, vi->in_channels, vi->out_channels);
        m->scale = vi->scaling_factor;
        m->shift = vi->shift_factor;
        m->info.latent_channels = vi->latent_channels;
        m->info.downscale = vi->downscale;
        m->info.can_encode = m->info.can_decode = 1;
        m->info.kind = "AutoencoderKL";
        return QD_OK;
    }
    static const char *names[] = {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                                  "diffusion_pytorch_model.bin"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        qd_path_join(path, sizeof path, dir, names[i]);
        if (qd_file_exists(path)) return open_tiny(ctx, m, path, NULL);
    }
    return qd_fail(ctx, QD_ERR_IO, "%s: no weights file (expected %s)", dir, names[0]);
}

qd_status qd_vae_open(qd_ctx *ctx, const char *path, qd_vae_model **out) {
    if (!out || !path) return qd_fail(ctx, QD_ERR_ARG, "vae open: bad arguments");
    *out = NULL;
    qd_vae_model *m;
    QD_TRY(new_model(ctx, &m));
    qd_status st;
    char other[4096];
    if (qd_dir_exists(path)) st = open_dir(ctx, m, path);
    else if (!qd_file_exists(path)) st = qd_fail(ctx, QD_ERR_IO, "%s: no such file or folder", path);
    else st = open_tiny(ctx, m, path, sibling(path, other, sizeof other) && qd_file_exists(other) ? other : NULL);
    if (st != QD_OK) { qd_vae_close(m); return st; }
    *out = m;
    return QD_OK;
}

qd_status qd_vae_open_pair(qd_ctx *ctx, const char *encoder_path, const char *decoder_path, qd_vae_model **out) {
    if (!out || (!encoder_path && !decoder_path)) return qd_fail(ctx, QD_ERR_ARG, "vae open: no file given");
    *out = NULL;
    qd_vae_model *m;
    QD_TRY(new_model(ctx, &m));
    qd_status st = open_tiny(ctx, m, encoder_path, decoder_path);
    if (st == QD_OK && encoder_path && !m->info.can_encode)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: holds no TAESD encoder", encoder_path);
    if (st == QD_OK && decoder_path && !m->info.can_decode)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: holds no TAESD decoder", decoder_path);
    if (st != QD_OK) { qd_vae_close(m); return st; }
    *out = m;
    return QD_OK;
}

void qd_vae_close(qd_vae_model *m) {
    if (!m) return;
    qd_vae_free(m->kl);
    qd_taesd_free(m->tiny);
    for (int i = 0; i < m->n_st; i++) qd_st_close(&m->st[i]);
    for (int i = 0; i < m->n_pth; i++) qd_pth_close(m->pth[i]);
    free(m);
}

const qd_vae_model_info *qd_vae_describe(const qd_vae_model *m) { return &m->info; }

/* ---- encode / decode ------------------------------------------------------------ */

qd_status qd_vae_encode_image(qd_ctx *ctx, qd_vae_model *m, qd_image_format fmt, const void *image,
                              int batch, int width, int height, float *latent) {
    if (!m || !image || !latent || batch < 1 || (fmt != QD_IMAGE_F32 && fmt != QD_IMAGE_RGB8))
        return qd_fail(ctx, QD_ERR_ARG, "vae encode: bad arguments");
    int f = m->info.downscale;
    if (width < f || height < f || width % f || height % f)
        return qd_fail(ctx, QD_ERR_ARG, "vae encode: image %d x %d: both sides must be positive multiples of %d",
                       width, height, f);
    if (!m->info.can_encode) return qd_fail(ctx, QD_ERR_ARG, "vae encode: this %s holds no encoder", m->info.kind);
    qd_op_status(ctx);   /* a stale op failure from an earlier call is not this one's */
    int64_t S = (int64_t)width * height, n = (int64_t)batch * 3 * S;
    float *x = qd_malloc(ctx, sizeof(float) * (size_t)n);
    if (!x) return QD_ERR_NOMEM;
    /* NHWC in [0,1] -> NCHW: [0,1] for TAESD, [-1,1] for AutoencoderKL */
    float mul = m->kl ? 2.0f : 1.0f, add = m->kl ? -1.0f : 0.0f;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < S; i++)
            for (int c = 0; c < 3; c++) {
                int64_t src = (b * S + i) * 3 + c;
                float v = fmt == QD_IMAGE_RGB8 ? ((const uint8_t *)image)[src] / 255.0f : ((const float *)image)[src];
                x[(b * 3 + c) * S + i] = v * mul + add;
            }
    qd_status st;
    if (m->tiny) {
        st = qd_taesd_encode(ctx, m->tiny, x, batch, height, width, latent);
    } else {
        int64_t nl = (int64_t)batch * m->info.latent_channels * (S / f / f);
        float *logvar = qd_malloc(ctx, sizeof(float) * (size_t)nl);
        st = logvar ? qd_vae_encode(ctx, m->kl, x, batch, height, width, latent, logvar) : QD_ERR_NOMEM;
        free(logvar);
        if (st == QD_OK)
            for (int64_t i = 0; i < nl; i++) latent[i] = (latent[i] - m->shift) * m->scale;
    }
    if (st == QD_OK) st = qd_op_status(ctx);   /* a conv that could not allocate its scratch */
    free(x);
    return st;
}

/* clear: forget an earlier op failure first (a top-level call; a preview runs inside
 * qd_generate, whose own failures must stay reported). */
static qd_status decode(qd_ctx *ctx, qd_vae_model *m, const float *latent, int batch, int latent_width,
                        int latent_height, qd_image_format fmt, void *image, int clear) {
    if (!m || !latent || !image || batch < 1 || latent_width < 1 || latent_height < 1 ||
        (fmt != QD_IMAGE_F32 && fmt != QD_IMAGE_RGB8))
        return qd_fail(ctx, QD_ERR_ARG, "vae decode: bad arguments");
    if (!m->info.can_decode) return qd_fail(ctx, QD_ERR_ARG, "vae decode: this %s holds no decoder", m->info.kind);
    int f = m->info.downscale;
    if (latent_width > 65536 / f || latent_height > 65536 / f)
        return qd_fail(ctx, QD_ERR_ARG, "vae decode: latent %d x %d is too large", latent_width, latent_height);
    if (clear) qd_op_status(ctx);
    int64_t H = (int64_t)latent_height * f, W = (int64_t)latent_width * f, S = H * W;
    int64_t nl = (int64_t)batch * m->info.latent_channels * latent_width * latent_height;
    float *x = qd_malloc(ctx, sizeof(float) * (size_t)(batch * 3 * S)), *z = NULL;
    if (!x) return QD_ERR_NOMEM;
    qd_status st;
    if (m->tiny) {
        st = qd_taesd_decode(ctx, m->tiny, latent, batch, latent_height, latent_width, x);
    } else if (!(z = qd_malloc(ctx, sizeof(float) * (size_t)nl))) {
        st = QD_ERR_NOMEM;
    } else {
        for (int64_t i = 0; i < nl; i++) z[i] = latent[i] / m->scale + m->shift;
        st = qd_vae_decode(ctx, m->kl, z, batch, latent_height, latent_width, x);
    }
    free(z);
    if (st == QD_OK) st = qd_op_status(ctx);
    if (st == QD_OK) {
        /* NCHW -> NHWC, clamped to [0,1] ((x+1)/2 first for AutoencoderKL, as diffusers postprocesses) */
        float mul = m->kl ? 0.5f : 1.0f, add = m->kl ? 0.5f : 0.0f;
        for (int64_t b = 0; b < batch; b++)
            for (int c = 0; c < 3; c++)
                for (int64_t i = 0; i < S; i++) {
                    float v = x[(b * 3 + c) * S + i] * mul + add;
                    v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;    /* NaN -> 0 */
                    int64_t dst = (b * S + i) * 3 + c;
                    if (fmt == QD_IMAGE_RGB8) ((uint8_t *)image)[dst] = (uint8_t)lrintf(v * 255.0f);
                    else ((float *)image)[dst] = v;
                }
    }
    free(x);
    return st;
}

qd_status qd_vae_decode_latent(qd_ctx *ctx, qd_vae_model *m, const float *latent, int batch,
                               int latent_width, int latent_height, qd_image_format fmt, void *image) {
    return decode(ctx, m, latent, batch, latent_width, latent_height, fmt, image, 1);
}

qd_status qd_preview_decode(qd_ctx *ctx, qd_vae_model *m, const float *latents, int batch, int channels,
                            int latent_width, int latent_height, uint8_t *rgb) {
    if (m && channels != m->info.latent_channels)
        return qd_fail(ctx, QD_ERR_ARG, "preview: latents have %d channels but the preview VAE (%s) expects %d: "
                       "it belongs to another model family", channels, m->info.kind, m->info.latent_channels);
    return decode(ctx, m, latents, batch, latent_width, latent_height, QD_IMAGE_RGB8, rgb, 0);
}

/* ---- tensors -------------------------------------------------------------------- */

qd_status qd_read_tensor(qd_ctx *ctx, const char *path, const char *name, float **data, int64_t shape[8], int *ndim) {
    if (!path || !data || !shape || !ndim) return qd_fail(ctx, QD_ERR_ARG, "read tensor: bad arguments");
    *data = NULL;
    qd_st_set set;
    QD_TRY(qd_st_open(ctx, path, &set));
    const qd_st_tensor *t = NULL;
    qd_status st = QD_OK;
    if (name) {
        /* a comfy_quant layer ("X" or "X.weight") reads back dequantized; a file without
         * .comfy_quant tensors or _quantization_metadata opens with no layers */
        qd_cq_model cq;
        st = qd_cq_open(ctx, &set, path, &cq);
        if (st != QD_OK) { qd_st_close(&set); return st; }
        const qd_cq_layer *l = qd_cq_find(&cq, name);
        if (l && (st = qd_cq_dequantize(ctx, l, data)) == QD_OK) {
            *ndim = 2;
            shape[0] = l->rows;
            shape[1] = l->cols;
        }
        qd_cq_close(&cq);
        if (l) { qd_st_close(&set); return st; }
    }
    if (name) {
        t = qd_st_find(&set, name);
        if (!t) st = qd_fail(ctx, QD_ERR_FORMAT, "%s: no tensor named '%s'", path, name);
    } else if (set.n_tensors != 1) {
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: holds %lld tensors; name the one to read", path, (long long)set.n_tensors);
    } else {
        t = &set.tensors[0];
    }
    if (st == QD_OK && t->dtype == QD_BOOL)
        st = qd_fail(ctx, QD_ERR_FORMAT, "%s: tensor '%s' is boolean", path, t->name);
    if (st == QD_OK && (*data = qd_malloc(ctx, sizeof(float) * (size_t)(t->numel ? t->numel : 1))) == NULL)
        st = QD_ERR_NOMEM;
    if (st == QD_OK) {
        qd_st_to_f32(t, 0, t->numel, *data);
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    qd_st_close(&set);
    return st;
}
