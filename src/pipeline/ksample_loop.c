/* The generation loop with a ComfyUI / k-diffusion sampler: the model becomes a
 * denoiser D(x, sigma) -> x0 for the sampler core (sample/ksampler.h), as
 * k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser and ComfyUI's
 * model_sampling do it:
 *   eps / v models: x = x0 + sigma * n; the model sees c_in * x with
 *     c_in = 1 / sqrt(sigma^2 + 1) and the timestep t(sigma) interpolated in log
 *     sigma over the training sigmas (k-diffusion's sigma_to_t; ComfyUI rounds
 *     to the nearest index instead); x0 = x - sigma * eps, or
 *     x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1);
 *   flow models: x = (1 - sigma) x0 + sigma n; the model sees x itself at
 *     t = 1000 sigma; x0 = x - sigma * v.
 * Classifier-free guidance combines the model outputs (as the diffusers path
 * does; it is the same as combining the x0 estimates, which are affine in the
 * output). */
#include "pipeline/ksample_loop.h"
#include "pipeline/img2img.h"
#include "pipeline/preview.h"
#include "base/rng.h"
#include "sample/ksampler.h"
#include "sample/ksampler_noise.h"
#include "sample/ksched.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* scheduler_options keys the k-sampler path reads itself. */
static const char *const ks_keys[] = {"eta",   "s_noise",     "s_churn",    "s_tmin",      "s_tmax",
                                      "order", "r",           "rtol",       "atol",        "h_init",
                                      "pcoeff", "icoeff",     "dcoeff",     "accept_safety", "sigma_min",
                                      "sigma_max", "rho",     "shift",      "threshold_noise", "linear_steps",
                                      "vp_beta_d", "vp_beta_min", "vp_eps_s", "predictor_order",
                                      "corrector_order", "sde_start_percent", "sde_end_percent",
                                      "thresholding", "dynamic_thresholding_ratio", "sample_max_value", NULL};

/* scheduler_config keys that describe the model's noise, passed to the
 * describing scheduler; the class's other keys only shape its own timesteps. */
static const char *const model_keys[] = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                         "trained_betas", "prediction_type", "rescale_betas_zero_snr",
                                         "timestep_spacing", "shift", "use_dynamic_shifting", "base_shift",
                                         "max_shift", "base_image_seq_len", "max_image_seq_len", NULL};

static int listed(const char *const *list, const char *key) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], key)) return 1;
    return 0;
}

static qd_status parse_options(qd_ctx *ctx, const qd_gen_params *p, cJSON **out) {
    *out = NULL;
    if (!p->scheduler_options || !*p->scheduler_options) return QD_OK;
    cJSON *o = cJSON_Parse(p->scheduler_options);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return qd_fail(ctx, QD_ERR_ARG, "scheduler options are not a JSON object: %s", p->scheduler_options);
    }
    *out = o;
    return QD_OK;
}

static qd_status unknown_name(qd_ctx *ctx, int what, const char *kind, const char *name) {
    char known[2048] = "";
    for (int i = 0; qd_list(what, i, NULL); i++) {
        if (i) strncat(known, ", ", sizeof known - strlen(known) - 1);
        strncat(known, qd_list(what, i, NULL), sizeof known - strlen(known) - 1);
    }
    return qd_fail(ctx, QD_ERR_ARG, "unknown %s '%s' (known: %s)", kind, name, known);
}

static const char *schedule_name(const qd_model *m, const qd_gen_params *p) {
    return p->schedule ? p->schedule : qd_family_is_flow(m->family) ? "simple" : "normal";
}

qd_status qd_ksample_scheduler(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, qd_scheduler **out) {
    *out = NULL;
    if (!qd_ksampler_find(p->sampler)) return unknown_name(ctx, QD_LIST_SAMPLERS, "sampler", p->sampler);
    if (!qd_ksched_about(schedule_name(m, p))) return unknown_name(ctx, QD_LIST_SCHEDULES, "schedule", p->schedule);
    if (p->noise_mode != QD_NOISE_COMFYUI && p->noise_mode != QD_NOISE_DIFFUSERS)
        return qd_fail(ctx, QD_ERR_ARG, "unknown noise_mode %d", p->noise_mode);
    cJSON *opts;
    QD_TRY(parse_options(ctx, p, &opts));
    int flow = qd_family_is_flow(m->family);
    const qd_sched_class *cls = flow ? &qd_sched_flow_euler : &qd_sched_euler;
    cJSON *over = cJSON_CreateObject();
    for (const cJSON *it = opts ? opts->child : NULL; over && it; it = it->next) {
        if (!it->string || listed(ks_keys, it->string)) continue;
        if (listed(model_keys, it->string) && listed(cls->keys, it->string))
            cJSON_AddItemToObject(over, it->string, cJSON_Duplicate(it, 1));
        else if (listed(cls->keys, it->string))
            qd_warn(ctx, "sampler %s: option '%s' has no effect (the schedule is --schedule's)", p->sampler,
                    it->string);
        else
            qd_warn(ctx, "sampler %s: ignoring option '%s' (neither a sampler/schedule parameter nor a key of %s)",
                    p->sampler, it->string, cls->name);
    }
    qd_status st = over ? qd_scheduler_new(ctx, m->scheduler_config, cls->name, over, out)
                        : qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    cJSON_Delete(over);
    cJSON_Delete(opts);
    return st;
}

/* ------------------------------------------------------------------ loop */

typedef struct {
    qd_ctx *ctx;
    const qd_model *m;
    const qd_gen_params *p;
    const qd_scheduler *s;
    qd_ks_model_fn model;
    void *model_user;
    qd_model_sampling ms;
    int pred;                   /* QD_PRED_* */
    int64_t B, per, n, rows, C, h, w;
    int flux, guidance, comfy;
    float *model_in, *model_out, *pred_f, *fnoise, *ftmp;
    int previews;               /* p asks for previews */
    int calls, total;
    double t0;
    qd_rng rng_init, rng_step;  /* ComfyUI: seed and seed + 1; diffusers: rng_init for all */
    qd_brownian *brownian;      /* SDE samplers */
    qd_sched_config thr;        /* dynamic thresholding of x0 (diffusers' keys), when .thresholding */
    const float *mask, *init;   /* inpainting: ComfyUI's noise mask and the latent image */
    double *noise0, *xmix;      /* inpainting: the initial noise (unscaled), the blended model input */
} ks_loop;

/* FLUX's 2x2 latent packing [C, h, w] -> [(h/2)*(w/2), 4C] (unpack: the reverse), per item. */
static void flux_pack(const float *x, int64_t C, int64_t h, int64_t w, float *y, int unpack) {
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) {
                int64_t tok = (i / 2) * (w / 2) + j / 2, ch = c * 4 + (i % 2) * 2 + (j % 2);
                int64_t a = (c * h + i) * w + j, b = tok * 4 * C + ch;
                if (unpack) y[a] = x[b];
                else y[b] = x[a];
            }
}

/* torch.randn of the batch's latents from r, in [B, C, h, w] order (packed
 * afterwards for FLUX when pack is set), as doubles. */
static void draw(ks_loop *L, qd_rng *r, int pack, double *out) {
    qd_rng_randn(r, L->fnoise, L->n);
    for (int64_t b = 0; b < L->B; b++) {
        const float *src = L->fnoise + b * L->per;
        if (pack && L->flux) {
            flux_pack(src, L->C, L->h, L->w, L->ftmp, 0);
            src = L->ftmp;
        }
        for (int64_t j = 0; j < L->per; j++) out[b * L->per + j] = src[j];
    }
}

static qd_status step_randn(void *user, double *out) {
    ks_loop *L = user;
    draw(L, L->comfy ? &L->rng_step : &L->rng_init, L->comfy, out);
    return QD_OK;
}

static qd_status ks_noise(void *user, int kind, double sigma, double sigma_next, double *out) {
    ks_loop *L = user;
    if (kind == QD_KS_NOISE_CHURN) {   /* ComfyUI: randn_like on the global generator, i.e. the seed's */
        draw(L, &L->rng_init, L->comfy, out);
        return QD_OK;
    }
    if (L->brownian) return qd_brownian_noise(L->ctx, L->brownian, sigma, sigma_next, out);
    return step_randn(L, out);
}

/* diffusers' rescale_noise_cfg on the guided prediction, per item (torch.std is unbiased). */
static void rescale_guided(float *cfg, const float *text, int64_t batch, int64_t per, float phi) {
    for (int64_t b = 0; b < batch; b++) {
        float *x = cfg + b * per;
        const float *t = text + b * per;
        double sx = 0, st = 0, qx = 0, qt = 0;
        for (int64_t i = 0; i < per; i++) { sx += x[i]; st += t[i]; }
        double mx = sx / per, mt = st / per;
        for (int64_t i = 0; i < per; i++) { qx += (x[i] - mx) * (x[i] - mx); qt += (t[i] - mt) * (t[i] - mt); }
        float f = (float)(sqrt(qt / (per - 1)) / sqrt(qx / (per - 1)));
        for (int64_t i = 0; i < per; i++) x[i] = phi * (x[i] * f) + (1 - phi) * x[i];
    }
}

/* x0 from a model output at sigma (model_in holds c_in * x in the rows). */
static void to_x0(const ks_loop *L, const double *x, double sigma, const float *out, double *x0) {
    double a = 1 / (sigma * sigma + 1), b = sigma / sqrt(sigma * sigma + 1);
    for (int64_t k = 0; k < L->n; k++) {
        if (L->pred == QD_PRED_V) x0[k] = x[k] * a - out[k] * b;
        else if (L->pred == QD_PRED_SAMPLE) x0[k] = out[k];
        else x0[k] = x[k] - sigma * out[k];
    }
}

static qd_status send_preview(ks_loop *L, const double *x0) {
    for (int64_t j = 0; j < L->per; j++) L->ftmp[j] = (float)x0[j];
    const float *z = L->ftmp;
    if (L->flux) {
        flux_pack(L->ftmp, L->C, L->h, L->w, L->fnoise, 1);
        z = L->fnoise;
    }
    return qd_send_preview(L->ctx, L->p, z, L->C, L->h, L->w, L->calls, L->total);
}

static qd_status ks_denoise(void *user, const double *x, double sigma, double *x0, double *uncond_x0) {
    ks_loop *L = user;
    qd_ctx *ctx = L->ctx;
    const qd_gen_params *p = L->p;
    if (ctx->cancel) return qd_fail(ctx, QD_ERR_CANCELLED, "cancelled at step %d of %d", L->calls, L->total);
    int flow = L->ms.kind == QD_MS_FLOW;
    if (L->mask) {   /* ComfyUI's KSamplerX0Inpaint: kept cells see the latent noised to this sigma */
        for (int64_t k = 0; k < L->n; k++) {
            double mk = L->mask[k], noised = flow ? sigma * L->noise0[k] + (1.0 - sigma) * L->init[k]
                                                  : L->init[k] + L->noise0[k] * sigma;
            L->xmix[k] = x[k] * mk + noised * (1.0 - mk);
        }
        x = L->xmix;
    }
    double c_in = flow ? 1 : 1 / sqrt(sigma * sigma + 1);
    float t = flow ? (float)sigma * 1000.0f : (float)qd_sigma_to_t(sigma, L->ms.log_sigmas_f, L->ms.n);
    for (int64_t r = 0; r < L->rows; r++) {
        const double *src = x + (r % L->B) * L->per;
        float *dst = L->model_in + r * L->per;
        for (int64_t j = 0; j < L->per; j++) dst[j] = (float)(src[j] * c_in);
    }
    QD_TRY(L->model(ctx, L->model_user, L->model_in, t, L->model_out));
    QD_TRY(qd_op_status(ctx));
    const float *un = L->model_out, *tx = L->model_out + L->n;
    if (L->guidance) {
        float cfg = p->cfg_scale;
        for (int64_t k = 0; k < L->n; k++) L->pred_f[k] = un[k] + cfg * (tx[k] - un[k]);
        if (p->guidance_rescale > 0) rescale_guided(L->pred_f, tx, L->B, L->per, p->guidance_rescale);
    } else {
        memcpy(L->pred_f, L->model_out, sizeof(float) * (size_t)L->n);
    }
    to_x0(L, x, sigma, L->pred_f, x0);
    if (L->thr.thresholding)   /* diffusers' _threshold_sample on the guided x0, per image */
        for (int64_t b = 0; b < L->B; b++) {
            double *xb = x0 + b * L->per;
            for (int64_t j = 0; j < L->per; j++) L->ftmp[j] = (float)xb[j];
            QD_TRY(qd_sched_threshold(ctx, &L->thr, L->ftmp, 1, L->per));
            for (int64_t j = 0; j < L->per; j++) xb[j] = L->ftmp[j];
        }
    if (L->mask)   /* ... and the denoised output keeps the latent there */
        for (int64_t k = 0; k < L->n; k++) x0[k] = x0[k] * L->mask[k] + L->init[k] * (1.0 - L->mask[k]);
    if (uncond_x0) {   /* CFG++; without guidance the only estimate there is */
        if (L->guidance) to_x0(L, x, sigma, un, uncond_x0);
        else memcpy(uncond_x0, x0, sizeof(double) * (size_t)L->n);
    }
    L->calls++;
    int total = L->total > 0 ? L->total : L->calls;   /* dpm_adaptive: not known in advance */
    if (L->previews && (L->calls % p->preview_every == 0 || L->calls == total))
        QD_TRY(send_preview(L, x0));
    if (p->progress && p->progress(p->progress_user, L->calls, total, qd_now() - L->t0)) ctx->cancel = 1;
    if (ctx->cancel) return qd_fail(ctx, QD_ERR_CANCELLED, "cancelled at step %d of %d", L->calls, total);
    return QD_OK;
}

/* The sampler and schedule parameters of scheduler_options. */
static qd_status read_options(qd_ctx *ctx, const qd_gen_params *p, qd_ks_opts *ko, qd_ksched_opts *so,
                              double *shift, double sde_percent[2], qd_sched_config *thr) {
    cJSON *o;
    QD_TRY(parse_options(ctx, p, &o));
    qd_status st = QD_OK;
    thr->dynamic_thresholding_ratio = 0.995;   /* diffusers' defaults */
    thr->sample_max_value = 1.0;
    for (const cJSON *it = o ? o->child : NULL; it && st == QD_OK; it = it->next) {
        if (!it->string || !listed(ks_keys, it->string)) continue;
        if (!strcmp(it->string, "thresholding")) {
            if (!cJSON_IsBool(it)) st = qd_fail(ctx, QD_ERR_ARG, "sampler option 'thresholding' must be true or false");
            thr->thresholding = cJSON_IsTrue(it);
            continue;
        }
        if (!cJSON_IsNumber(it)) {
            st = qd_fail(ctx, QD_ERR_ARG, "sampler option '%s' must be a number", it->string);
            break;
        }
        double v = it->valuedouble;
        const char *k = it->string;
#define KEY(name, field) else if (!strcmp(k, name)) field = v
        if (0) {}
        KEY("eta", ko->eta); KEY("s_noise", ko->s_noise); KEY("s_churn", ko->s_churn); KEY("s_tmin", ko->s_tmin);
        KEY("s_tmax", ko->s_tmax); KEY("order", ko->order); KEY("r", ko->r); KEY("rtol", ko->rtol);
        KEY("atol", ko->atol); KEY("h_init", ko->h_init); KEY("pcoeff", ko->pcoeff); KEY("icoeff", ko->icoeff);
        KEY("dcoeff", ko->dcoeff); KEY("accept_safety", ko->accept_safety); KEY("sigma_min", so->sigma_min);
        KEY("sigma_max", so->sigma_max); KEY("rho", so->rho); KEY("shift", *shift);
        KEY("threshold_noise", so->threshold_noise); KEY("linear_steps", so->linear_steps);
        KEY("vp_beta_d", so->vp_beta_d); KEY("vp_beta_min", so->vp_beta_min); KEY("vp_eps_s", so->vp_eps_s);
        KEY("predictor_order", ko->sa_predictor_order); KEY("corrector_order", ko->sa_corrector_order);
        KEY("sde_start_percent", sde_percent[0]); KEY("sde_end_percent", sde_percent[1]);
        KEY("dynamic_thresholding_ratio", thr->dynamic_thresholding_ratio);
        KEY("sample_max_value", thr->sample_max_value);
#undef KEY
    }
    cJSON_Delete(o);
    if (st == QD_OK && !(sde_percent[0] >= 0 && sde_percent[0] <= sde_percent[1] && sde_percent[1] <= 1))
        st = qd_fail(ctx, QD_ERR_ARG, "sde_start_percent and sde_end_percent must satisfy 0 <= start <= end <= 1 (got %g, %g)",
                     sde_percent[0], sde_percent[1]);
    if (st == QD_OK && !(thr->dynamic_thresholding_ratio > 0 && thr->dynamic_thresholding_ratio <= 1 &&
                         thr->sample_max_value >= 1))
        st = qd_fail(ctx, QD_ERR_ARG, "thresholding needs 0 < dynamic_thresholding_ratio <= 1 and sample_max_value >= 1 "
                     "(got %g, %g)", thr->dynamic_thresholding_ratio, thr->sample_max_value);
    if (st == QD_OK && (!(ko->r > 0) || !(ko->s_noise >= 0) || ko->order < 0 || ko->order > 16))
        st = qd_fail(ctx, QD_ERR_ARG, "sampler options out of range (r %g, s_noise %g, order %d)", ko->r, ko->s_noise,
                     ko->order);
    return st;
}

/* The model sampling the scheduler describes (flow: the shift as diffusers'
 * pipelines compute it, dynamic from the image token count for FLUX). */
static qd_status model_sampling(qd_ctx *ctx, const qd_scheduler *s, int64_t image_tokens, double shift_opt,
                                qd_model_sampling *ms) {
    int dynamic, base_seq, max_seq;
    double base_shift, max_shift;
    if (qd_scheduler_is_flow(s, &dynamic, &base_seq, &max_seq, &base_shift, &max_shift)) {
        double shift = s->cfg.shift;
        if (dynamic) {   /* calculate_shift: mu linear in the image token count */
            double slope = (max_shift - base_shift) / (max_seq - base_seq);
            shift = (double)image_tokens * slope + (base_shift - slope * base_seq);
        }
        if (!isnan(shift_opt)) shift = shift_opt;
        return qd_model_sampling_flow(ctx, ms, dynamic, shift);
    }
    int n;
    const float *ac = qd_scheduler_alphas_cumprod(s, &n);
    return qd_model_sampling_discrete(ctx, ms, ac, n, s->cfg.prediction_type == QD_PRED_V);
}

/* The sigmas the sampler runs over: ComfyUI's KSampler.calculate_sigmas (discard-penultimate
 * samplers: steps + 1 sigmas, the penultimate dropped) and set_steps (img2img with
 * denoise < 1: the schedule of int(steps / denoise) steps, its last steps + 1 sigmas). */
static qd_status run_sigmas(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_ksampler *ks,
                            const qd_model_sampling *ms, const qd_ksched_opts *so, int img2img, double **sig,
                            int *n_sig) {
    int discard = (ks->flags & QD_KS_DISCARD_PENULTIMATE) != 0;
    int total = img2img ? qd_img2img_comfy_steps(p->steps, qd_img2img_strength(m, p)) : p->steps;
    QD_TRY(qd_ksched_sigmas(ctx, schedule_name(m, p), ms, total + discard, so, sig, n_sig));
    double *s = *sig;
    if (discard && *n_sig >= 2) {
        s[*n_sig - 2] = s[*n_sig - 1];
        (*n_sig)--;
    }
    if (*n_sig > p->steps + 1) {
        memmove(s, s + (*n_sig - (p->steps + 1)), sizeof(double) * (size_t)(p->steps + 1));
        *n_sig = p->steps + 1;
    }
    for (int i = 0; i < *n_sig; i++) s[i] = (float)s[i];   /* ComfyUI's FloatTensor */
    return QD_OK;
}

qd_status qd_ksample_sigmas(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_scheduler *s,
                            int img2img, double **sig, int *n_sig) {
    *sig = NULL;
    *n_sig = 0;
    const qd_ksampler *ks = qd_ksampler_find(p->sampler);
    if (!ks) return unknown_name(ctx, QD_LIST_SAMPLERS, "sampler", p->sampler);
    qd_ks_opts ko;
    qd_ks_opts_default(&ko);
    qd_ksched_opts so;
    qd_ksched_opts_default(&so);
    qd_sched_config thr = {0};
    double shift = NAN, sde_percent[2] = {0.2, 0.8};
    qd_model_sampling ms = {0};
    int h = p->height / m->vae_scale, w = p->width / m->vae_scale;
    qd_status st = read_options(ctx, p, &ko, &so, &shift, sde_percent, &thr);
    if (st == QD_OK) st = model_sampling(ctx, s, (h / 2) * (w / 2), shift, &ms);
    if (st == QD_OK) st = run_sigmas(ctx, m, p, ks, &ms, &so, img2img, sig, n_sig);
    qd_model_sampling_free(&ms);
    return st;
}

qd_status qd_ksample_loop(qd_ctx *ctx, const qd_model *m, const qd_gen_params *p, const qd_scheduler *s,
                          qd_ks_model_fn model, void *model_user, const float *init, const float *mask,
                          float *latents, int64_t batch, int64_t per, int64_t rows) {
    const qd_ksampler *ks = qd_ksampler_find(p->sampler);
    if (!ks) return unknown_name(ctx, QD_LIST_SAMPLERS, "sampler", p->sampler);
    ks_loop L = {0};
    L.ctx = ctx;
    L.m = m;
    L.p = p;
    L.s = s;
    L.model = model;
    L.model_user = model_user;
    L.mask = init ? mask : NULL;
    L.init = init;
    L.B = batch;
    L.per = per;
    L.n = batch * per;
    L.rows = rows;
    L.guidance = rows > batch;
    L.C = m->latent_channels;
    L.h = p->height / m->vae_scale;
    L.w = p->width / m->vae_scale;
    L.flux = m->family == QD_FAMILY_FLUX;
    L.comfy = p->noise_mode == QD_NOISE_COMFYUI;
    L.pred = s->cfg.prediction_type;
    if (qd_family_is_flow(m->family)) L.pred = QD_PRED_EPSILON;   /* x0 = x - sigma * v, as eps */
    qd_ks_opts ko;
    qd_ks_opts_default(&ko);
    qd_ksched_opts so;
    qd_ksched_opts_default(&so);
    double shift = NAN, *sig = NULL, *x = NULL;
    int n_sig = 0;
    double sde_percent[2] = {0.2, 0.8};   /* ComfyUI's SA-Solver defaults */
    qd_status st = read_options(ctx, p, &ko, &so, &shift, sde_percent, &L.thr);
    if (st == QD_OK) st = model_sampling(ctx, s, (L.h / 2) * (L.w / 2), shift, &L.ms);
    if (st == QD_OK) {
        ko.sde_sigma_hi = qd_ms_percent_to_sigma(&L.ms, sde_percent[0]);
        ko.sde_sigma_lo = qd_ms_percent_to_sigma(&L.ms, sde_percent[1]);
    }
    if (st == QD_OK) st = run_sigmas(ctx, m, p, ks, &L.ms, &so, init != NULL, &sig, &n_sig);
    if (st == QD_OK) {
        L.model_in = malloc(sizeof(float) * (size_t)(rows * per));
        L.model_out = malloc(sizeof(float) * (size_t)(rows * per));
        L.pred_f = malloc(sizeof(float) * (size_t)L.n);
        L.fnoise = malloc(sizeof(float) * (size_t)L.n);
        L.ftmp = malloc(sizeof(float) * (size_t)per);
        L.previews = p->preview && p->preview_vae && p->preview_every > 0;
        x = malloc(sizeof(double) * (size_t)L.n);
        if (L.mask) {
            L.noise0 = malloc(sizeof(double) * (size_t)L.n);
            L.xmix = malloc(sizeof(double) * (size_t)L.n);
            if (!L.noise0 || !L.xmix) st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
        }
        if (!L.model_in || !L.model_out || !L.pred_f || !L.fnoise || !L.ftmp || !x)
            st = qd_fail(ctx, QD_ERR_NOMEM, "out of memory");
    }
    if (st == QD_OK) {
        int flow = L.ms.kind == QD_MS_FLOW;
        ko.flow = flow;
        ko.flow_sigma_start = qd_ms_percent_to_sigma(&L.ms, 1e-4);
        qd_rng_seed(&L.rng_init, p->seed);
        qd_rng_seed(&L.rng_step, p->seed + 1);
        /* initial noise: torch.randn(latent shape) from the seed, packed for FLUX */
        draw(&L, &L.rng_init, 1, x);
        if (L.mask) memcpy(L.noise0, x, sizeof(double) * (size_t)L.n);
        double s0 = sig[0], scale = s0;
        if (!flow) {
            double smax = qd_ms_sigma_max(&L.ms);
            int full = L.comfy ? fabs(smax - s0) <= 1e-5 * fmax(smax, s0) || s0 > smax   /* ComfyUI's max_denoise */
                               : s->cfg.timestep_spacing == QD_SPACING_LEADING;         /* diffusers' init_noise_sigma */
            if (full) scale = sqrt(s0 * s0 + 1);
        }
        /* ComfyUI's model_sampling.noise_scaling with the init latent (zero for txt2img):
         * eps/v latent + noise * scale, flow sigma0 * noise + (1 - sigma0) * latent */
        for (int64_t k = 0; k < L.n; k++) {
            if (flow) x[k] = init ? s0 * x[k] + (1.0 - s0) * init[k] : x[k] * scale;
            else x[k] = init ? x[k] * scale + init[k] : x[k] * scale;
        }
        if (ks->flags & QD_KS_BROWNIAN) {
            double smin = INFINITY;
            for (int i = 0; i < n_sig; i++)
                if (sig[i] > 0 && sig[i] < smin) smin = sig[i];
            st = qd_brownian_new(ctx, L.n, smin, step_randn, &L, &L.brownian);
        }
    }
    if (st == QD_OK) {
        L.total = qd_ksampler_calls(ks, sig, n_sig);
        L.t0 = qd_now();
        qd_ks_io io = {ks_denoise, ks_noise, &L};
        st = qd_ksample(ctx, ks, &ko, sig, n_sig, x, L.n, &io);
    }
    if (st == QD_OK)
        for (int64_t k = 0; k < L.n; k++) latents[k] = (float)x[k];
    qd_brownian_free(L.brownian);
    qd_model_sampling_free(&L.ms);
    free(sig);
    free(x);
    free(L.model_in);
    free(L.model_out);
    free(L.pred_f);
    free(L.fnoise);
    free(L.ftmp);
    free(L.noise0);
    free(L.xmix);
    return st;
}
