/* qdiff serve: the generation fields of the A1111 and OpenAI requests, checked and
 * turned into qd_gen_params; and the A1111 sampler and scheduler names mapped onto
 * qdiff's k-samplers and schedules (plain qdiff names and diffusers scheduler
 * classes are accepted too). */
#include "server.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A1111's sampler names, their old aliases, and the schedule each uses under "Automatic". */
typedef struct { const char *name, *alias, *sampler, *schedule; } a1111_sampler;

static const a1111_sampler sampler_names[] = {
    {"DPM++ 2M", "k_dpmpp_2m", "dpmpp_2m", "karras"},
    {"DPM++ SDE", "k_dpmpp_sde", "dpmpp_sde", "karras"},
    {"DPM++ 2M SDE", "k_dpmpp_2m_sde", "dpmpp_2m_sde", "exponential"},
    {"DPM++ 2M SDE Heun", "k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun", "exponential"},
    {"DPM++ 2S a", "k_dpmpp_2s_a", "dpmpp_2s_ancestral", "karras"},
    {"DPM++ 3M SDE", "k_dpmpp_3m_sde", "dpmpp_3m_sde", "exponential"},
    {"Euler a", "k_euler_a", "euler_ancestral", NULL},
    {"Euler", "k_euler", "euler", NULL},
    {"LMS", "k_lms", "lms", NULL},
    {"Heun", "k_heun", "heun", NULL},
    {"DPM2", "k_dpm_2", "dpm_2", "karras"},
    {"DPM2 a", "k_dpm_2_a", "dpm_2_ancestral", "karras"},
    {"DPM fast", "k_dpm_fast", "dpm_fast", NULL},
    {"DPM adaptive", "k_dpm_ad", "dpm_adaptive", NULL},
    {"DDIM", "ddim", "ddim", "ddim_uniform"},
    {"DDPM", "ddpm", "ddpm", NULL},
    {"UniPC", "unipc", "uni_pc", NULL},
    {"LCM", "k_lcm", "lcm", NULL},
};
#define N_SAMPLER_NAMES (int)(sizeof sampler_names / sizeof sampler_names[0])

/* A1111's scheduler names and labels; schedule NULL: the sampler's own ("Automatic"). */
typedef struct { const char *name, *label, *schedule; } a1111_scheduler;

static const a1111_scheduler scheduler_names[] = {
    {"automatic", "Automatic", NULL},
    {"uniform", "Uniform", "normal"},
    {"karras", "Karras", "karras"},
    {"exponential", "Exponential", "exponential"},
    {"polyexponential", "Polyexponential", "polyexponential"},
    {"sgm_uniform", "SGM Uniform", "sgm_uniform"},
    {"kl_optimal", "KL Optimal", "kl_optimal"},
    {"simple", "Simple", "simple"},
    {"normal", "Normal", "normal"},
    {"ddim", "DDIM", "ddim_uniform"},
    {"beta", "Beta", "beta"},
};
#define N_SCHEDULER_NAMES (int)(sizeof scheduler_names / sizeof scheduler_names[0])

static int in_list(int what, const char *name) {
    const char *n;
    for (int i = 0; (n = qd_list(what, i, NULL)); i++)
        if (!strcmp(n, name)) return 1;
    return 0;
}

static const a1111_sampler *find_a1111_sampler(const char *name, size_t len) {
    for (int i = 0; i < N_SAMPLER_NAMES; i++) {
        const a1111_sampler *a = &sampler_names[i];
        if ((strlen(a->name) == len && !strncasecmp(a->name, name, len)) ||
            (strlen(a->alias) == len && !strncmp(a->alias, name, len)))
            return in_list(QD_LIST_SAMPLERS, a->sampler) ? a : NULL;
    }
    return NULL;
}

cJSON *srv_samplers_json(void) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < N_SAMPLER_NAMES; i++) {
        const a1111_sampler *a = &sampler_names[i];
        if (!in_list(QD_LIST_SAMPLERS, a->sampler)) continue;
        cJSON *o = cJSON_CreateObject(), *al = cJSON_AddArrayToObject(o, "aliases"), *op;
        cJSON_AddStringToObject(o, "name", a->name);
        cJSON_AddItemToArray(al, cJSON_CreateString(a->alias));
        if (strcmp(a->alias, a->sampler)) cJSON_AddItemToArray(al, cJSON_CreateString(a->sampler));
        op = cJSON_AddObjectToObject(o, "options");
        if (a->schedule) cJSON_AddStringToObject(op, "scheduler", a->schedule);
        cJSON_AddItemToArray(arr, o);
    }
    /* qdiff's other k-samplers, then the diffusers scheduler classes, under their own names */
    const char *n, *about;
    for (int w = QD_LIST_SAMPLERS; w <= QD_LIST_SCHEDULER_CLASSES; w += QD_LIST_SCHEDULER_CLASSES - QD_LIST_SAMPLERS) {
        for (int i = 0; (n = qd_list(w, i, &about)); i++) {
            int mapped = 0;
            for (int k = 0; k < N_SAMPLER_NAMES && w == QD_LIST_SAMPLERS; k++) mapped |= !strcmp(sampler_names[k].sampler, n);
            if (mapped) continue;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", n);
            cJSON_AddArrayToObject(o, "aliases");
            cJSON *op = cJSON_AddObjectToObject(o, "options");
            if (about) cJSON_AddStringToObject(op, "description", about);
            if (w == QD_LIST_SCHEDULER_CLASSES) cJSON_AddStringToObject(op, "kind", "diffusers scheduler class");
            cJSON_AddItemToArray(arr, o);
        }
    }
    return arr;
}

cJSON *srv_schedulers_json(void) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < N_SCHEDULER_NAMES; i++) {
        const a1111_scheduler *a = &scheduler_names[i];
        if (a->schedule && !in_list(QD_LIST_SCHEDULES, a->schedule)) continue;
        cJSON *o = cJSON_CreateObject(), *al;
        cJSON_AddStringToObject(o, "name", a->name);
        cJSON_AddStringToObject(o, "label", a->label);
        if (a->schedule && strcmp(a->schedule, a->name)) {
            al = cJSON_AddArrayToObject(o, "aliases");
            cJSON_AddItemToArray(al, cJSON_CreateString(a->schedule));
        } else {
            cJSON_AddNullToObject(o, "aliases");
        }
        cJSON_AddItemToArray(arr, o);
    }
    const char *n;
    for (int i = 0; (n = qd_list(QD_LIST_SCHEDULES, i, NULL)); i++) {
        int mapped = 0;
        for (int k = 0; k < N_SCHEDULER_NAMES; k++)
            mapped |= scheduler_names[k].schedule && !strcmp(scheduler_names[k].schedule, n);
        if (mapped) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", n);
        cJSON_AddStringToObject(o, "label", n);
        cJSON_AddNullToObject(o, "aliases");
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* ---- field checks ---- */

static int fail(srv_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(srv_error *err, int status, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->status = status;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    return -1;
}

/* field absent or null: 0 (keep the default); bad: -1 with err; else 1 */
static int get_int(const cJSON *obj, const char *key, long lo, long hi, long *out, srv_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d)) return fail(err, 400, key, "%s: expected an integer", key);
    if (d < lo || d > hi) return fail(err, 400, key, "%s: %.0f is out of range %ld..%ld", key, d, lo, hi);
    *out = (long)d;
    return 1;
}

static int get_string(const cJSON *obj, const char *key, const char **out, srv_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return fail(err, 400, key, "%s: expected a string", key);
    *out = v->valuestring;
    return 1;
}

/* Flags of A1111 features qdiff does not have: refused when switched on, not ignored. */
static int refuse_true(const cJSON *obj, const char *key, const char *what, srv_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsTrue(v)) return fail(err, 400, key, "%s: %s is not supported by qdiff serve", key, what);
    return 0;
}

static int dup_into(char **dst, const char *src, srv_error *err) {
    *dst = strdup(src);
    return *dst ? 0 : fail(err, 500, NULL, "out of memory");
}

/* sampler_name: an A1111 name (optionally with " Karras"/" Exponential" as A1111 < 1.9
 * wrote them), a qdiff k-sampler, or a diffusers class. scheduler: an A1111 scheduler
 * name or label, or a qdiff schedule. */
static int set_sampler(srv_model *m, const char *name, const char *sched, srv_job *j, srv_error *err) {
    const char *sampler = NULL, *schedule = NULL, *klass = NULL;
    if (name && *name) {
        size_t len = strlen(name);
        const a1111_sampler *a = find_a1111_sampler(name, len);
        const char *suffixes[][2] = {{" Karras", "karras"}, {" Exponential", "exponential"}};
        for (int i = 0; !a && i < 2; i++) {
            size_t sl = strlen(suffixes[i][0]);
            if (len > sl && !strcasecmp(name + len - sl, suffixes[i][0]) && (a = find_a1111_sampler(name, len - sl)))
                schedule = suffixes[i][1];
        }
        if (a) {
            sampler = a->sampler;
            if (!schedule) schedule = a->schedule;
        } else if (in_list(QD_LIST_SAMPLERS, name)) {
            sampler = name;
        } else if (in_list(QD_LIST_SCHEDULER_CLASSES, name)) {
            klass = name;
        } else {
            return fail(err, 400, "sampler_name",
                        "sampler_name: unknown sampler '%s' (GET /sdapi/v1/samplers lists them)", name);
        }
    }
    if (sched && *sched) {
        const char *chosen = NULL;
        int automatic = 0;
        for (int i = 0; i < N_SCHEDULER_NAMES && !chosen && !automatic; i++) {
            const a1111_scheduler *a = &scheduler_names[i];
            if (strcasecmp(sched, a->name) && strcasecmp(sched, a->label)) continue;
            if (a->schedule) chosen = a->schedule;
            else automatic = 1;
        }
        if (!chosen && !automatic && in_list(QD_LIST_SCHEDULES, sched)) chosen = sched;
        if (!chosen && !automatic)
            return fail(err, 400, "scheduler", "scheduler: unknown scheduler '%s' (GET /sdapi/v1/schedulers lists them)",
                        sched);
        if (chosen && !in_list(QD_LIST_SCHEDULES, chosen))
            return fail(err, 400, "scheduler", "scheduler: '%s' is not available in qdiff", sched);
        if (chosen && !sampler) {
            /* a diffusers class takes Karras sigmas as an option, nothing else */
            if (strcmp(chosen, "karras"))
                return fail(err, 400, "scheduler",
                            "scheduler: '%s' needs a k-sampler in sampler_name (the diffusers class %s only takes "
                            "Karras)", sched, klass ? klass : m->scheduler);
            j->p.karras = 1;
        } else if (chosen) {
            schedule = chosen;
        }
    }
    if ((sampler && dup_into(&j->sampler, sampler, err)) || (schedule && dup_into(&j->schedule, schedule, err)) ||
        (klass && dup_into(&j->scheduler, klass, err)))
        return -1;
    j->p.sampler = j->sampler;
    j->p.schedule = j->schedule;
    j->p.scheduler = j->scheduler;
    if (dup_into(&j->sampler_label, name && *name ? name : m->scheduler, err)) return -1;
    if (dup_into(&j->schedule_label, sched && *sched ? sched : "Automatic", err)) return -1;
    return 0;
}

int srv_params_from_json(srv *s, srv_model *m, const cJSON *obj, srv_job *j, srv_error *err) {
    const srv_options *o = &s->opt;
    const char *prompt = "", *negative = NULL, *sampler = NULL, *sched = NULL, *task = NULL;
    long v;
    int r;
    if (get_string(obj, "prompt", &prompt, err) < 0 || get_string(obj, "negative_prompt", &negative, err) < 0 ||
        get_string(obj, "sampler_name", &sampler, err) < 0 || get_string(obj, "scheduler", &sched, err) < 0 ||
        get_string(obj, "force_task_id", &task, err) < 0)
        return -1;
    if (!sampler && get_string(obj, "sampler_index", &sampler, err) < 0) return -1;   /* older A1111 clients */
    if (refuse_true(obj, "enable_hr", "hires fix", err) || refuse_true(obj, "restore_faces", "face restoration", err) ||
        refuse_true(obj, "tiling", "tiling", err))
        return -1;
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(obj, "subseed_strength");
    if (cJSON_IsNumber(ss) && ss->valuedouble != 0)
        return fail(err, 400, "subseed_strength", "subseed_strength: variation seeds are not supported by qdiff serve");
    if (task && strlen(task) >= sizeof j->task)
        return fail(err, 400, "force_task_id", "force_task_id: at most %zu characters", sizeof j->task - 1);
    if (task) snprintf(j->task, sizeof j->task, "%s", task);

    /* no negative_prompt: none, as generate without -n (SDXL then uses zero embeddings) */
    if (dup_into(&j->prompt, prompt, err) || (negative && dup_into(&j->negative, negative, err))) return -1;
    if (srv_lora_extract(o, j->prompt, j, err)) return -1;
    j->p.prompt = j->prompt;
    j->p.negative_prompt = j->negative;

    if ((r = get_int(obj, "steps", 1, o->max_steps, &v, err)) < 0) return -1;
    if (r) j->p.steps = (int)v;
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(obj, "cfg_scale");
    if (cfg && !cJSON_IsNull(cfg)) {
        if (!cJSON_IsNumber(cfg) || !isfinite(cfg->valuedouble))
            return fail(err, 400, "cfg_scale", "cfg_scale: expected a number");
        if (cfg->valuedouble < 0 || cfg->valuedouble > 100)
            return fail(err, 400, "cfg_scale", "cfg_scale: %g is out of range 0..100", cfg->valuedouble);
        j->p.cfg_scale = (float)cfg->valuedouble;
    }
    /* seeds: -1 (or absent) draws one; A1111 seeds fit in 32 bits, JSON numbers hold 2^53 exactly */
    if ((r = get_int(obj, "seed", -1, 9007199254740991L, &v, err)) < 0) return -1;
    if (r && v >= 0) j->p.seed = (uint64_t)v;
    else { j->p.seed = cli_random_seed(); j->seed_requested_random = 1; }

    int unit = m->size_unit;
    const char *dims[2] = {"width", "height"};
    int *dst[2] = {&j->p.width, &j->p.height};
    for (int i = 0; i < 2; i++) {
        if ((r = get_int(obj, dims[i], unit, o->max_size, &v, err)) < 0) return -1;
        if (!r) continue;
        if (v % unit)
            return fail(err, 400, dims[i], "%s: %ld is not a multiple of %d (%s models)", dims[i], v, unit, m->family);
        *dst[i] = (int)v;
    }
    if (m->default_size > o->max_size && (!j->p.width || !j->p.height))
        return fail(err, 400, j->p.width ? "height" : "width",
                    "%s: the model's default %d px is over --max-size %d; ask for a smaller size",
                    j->p.width ? "height" : "width", m->default_size, o->max_size);
    long batch = 1, n_iter = 1;
    if (get_int(obj, "batch_size", 1, o->max_batch, &batch, err) < 0 || get_int(obj, "n_iter", 1, o->max_batch, &n_iter, err) < 0)
        return -1;
    if (batch * n_iter > o->max_batch)
        return fail(err, 400, "n_iter", "batch_size x n_iter = %ld images is over the limit of %d (--max-batch)",
                    batch * n_iter, o->max_batch);
    j->p.batch = (int)batch;
    j->n_iter = (int)n_iter;
    return set_sampler(m, sampler, sched, j, err);
}

srv_model *srv_model_for_request(srv *s, const char *name, const char *field, srv_error *err) {
    srv_model *m = name ? srv_find_model(s, name) : &s->models[0];
    if (!m) {
        char list[2048] = "";
        for (int i = 0; i < s->n_models; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", s->models[i].name);
        fail(err, 400, field, "%s: unknown model '%s' (available: %s)", field, name, list);
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    int state = m->state, stopping = s->stopping;
    if (state == MODEL_UNLOADED) srv_model_request_load(s, m);
    if (m->state == MODEL_FAILED) state = MODEL_FAILED;
    pthread_mutex_unlock(&s->mu);
    if (stopping) { fail(err, 503, NULL, "the server is shutting down"); return NULL; }
    if (state == MODEL_FAILED) { fail(err, 500, field, "model %s failed to load: %s", m->name, m->error); return NULL; }
    if (state != MODEL_READY) {
        fail(err, 503, NULL, "model %s is loading; retry in a moment", m->name);
        return NULL;
    }
    return m;
}

void srv_reply_srv_error(srv_reply *rp, const srv_error *err) {
    srv_reply_error(rp, err->status, err->param[0] ? err->param : NULL, "%s", err->message);
    if (err->status == 503) rp->retry_after = "1";
}

int srv_job_error(srv *s, const srv_job *j, srv_reply *rp) {
    if (j->state == JOB_DONE) return 0;
    if (j->state == JOB_CANCELLED) {
        if (s->stopping) {
            srv_reply_error(rp, 503, NULL, "the server is shutting down; job %s was cancelled", j->task);
            rp->retry_after = "1";
        } else {
            srv_reply_error(rp, 409, NULL, "job %s was interrupted (POST /sdapi/v1/interrupt): %s", j->task, j->error);
        }
        return 1;
    }
    /* what qd_generate refused is the request's fault; anything else is ours */
    int bad = j->status == QD_ERR_ARG || j->status == QD_ERR_UNSUPPORTED;
    srv_reply_error(rp, bad ? 400 : 500, NULL, "%s", j->error);
    return 1;
}

int srv_init_image(srv *s, srv_model *m, const uint8_t *bytes, size_t n, const char *param, const char *what,
                   double strength, srv_job *j, srv_error *err) {
    uint8_t *rgb = NULL;
    int w = 0, h = 0, rc = -1;
    qd_ctx *ctx = qd_ctx_new(1);   /* the model's context belongs to its worker */
    err->status = 400;
    snprintf(err->param, sizeof err->param, "%s", param);
    if (!ctx) snprintf(err->message, sizeof err->message, "out of memory");
    else if (qd_decode_image(ctx, what, bytes, n, &rgb, &w, &h) != QD_OK)
        snprintf(err->message, sizeof err->message, "%s", qd_last_error(ctx));
    else if (cli_init_image_rgb(ctx, m->model, what, rgb, w, h, j->resize_mode, &j->p, &j->init_image, err->message,
                                sizeof err->message) == 0) {
        if (j->p.width > s->opt.max_size || j->p.height > s->opt.max_size)
            snprintf(err->message, sizeof err->message, "%s: %dx%d is over --max-size %d: give a smaller size", what,
                     j->p.width, j->p.height, s->opt.max_size);
        else rc = 0;
    }
    if (rc == 0) {
        j->p.strength = strength;
        err->status = 0;
        err->param[0] = 0;
    }
    free(rgb);
    qd_ctx_free(ctx);
    return rc;
}

int srv_mask(const uint8_t *bytes, size_t n, const char *param, const char *what, int alpha_repaint, int invert,
             int blur, srv_job *j, srv_error *err) {
    uint8_t *rgba = NULL;
    int w = 0, h = 0, alpha = 0, rc = -1;
    qd_ctx *ctx = qd_ctx_new(1);
    err->status = 400;
    snprintf(err->param, sizeof err->param, "%s", param);
    if (!ctx) snprintf(err->message, sizeof err->message, "out of memory");
    else if (qd_decode_image_rgba(ctx, what, bytes, n, &rgba, &w, &h, &alpha) != QD_OK)
        snprintf(err->message, sizeof err->message, "%s", qd_last_error(ctx));
    else if (cli_mask_rgba(ctx, what, rgba, w, h, alpha, alpha_repaint, invert, blur, j->resize_mode, &j->p, &j->mask,
                           err->message, sizeof err->message) == 0)
        rc = 0;
    if (rc == 0) {
        j->mask_blur = blur;
        err->status = 0;
        err->param[0] = 0;
    }
    free(rgba);
    qd_ctx_free(ctx);
    return rc;
}

int srv_inpaint_crop(srv *s, srv_model *m, const uint8_t *init, size_t init_len, const uint8_t *mask, size_t mask_len,
                     int invert, int blur, int pad, double strength, srv_job *j, srv_error *err) {
    uint8_t *rgb = NULL, *rgba = NULL, *g = NULL;
    int w = 0, h = 0, mw = 0, mh = 0, alpha = 0, rc = -1;
    qd_ctx *ctx = qd_ctx_new(1);   /* the model's context belongs to its worker */
    err->status = 400;
    snprintf(err->param, sizeof err->param, "init_images");
    if (!ctx) snprintf(err->message, sizeof err->message, "out of memory");
    else if (qd_decode_image(ctx, "init_images[0]", init, init_len, &rgb, &w, &h) != QD_OK)
        snprintf(err->message, sizeof err->message, "%s", qd_last_error(ctx));
    else if (qd_decode_image_rgba(ctx, "mask", mask, mask_len, &rgba, &mw, &mh, &alpha) != QD_OK) {
        snprintf(err->param, sizeof err->param, "mask");
        snprintf(err->message, sizeof err->message, "%s", qd_last_error(ctx));
    } else if (!cli_mask8("mask", rgba, mw, mh, alpha, 0, invert, blur, &g, err->message, sizeof err->message)) {
        rc = cli_crop_setup(ctx, m->model, "init_images[0]", rgb, w, h, g, mw, mh, pad, &j->p, &j->crop, &j->init_image,
                            &j->mask, err->message, sizeof err->message);
        if (rc == 0 && (j->p.width > s->opt.max_size || j->p.height > s->opt.max_size)) {
            snprintf(err->message, sizeof err->message, "inpaint_full_res: %dx%d is over --max-size %d: give a smaller "
                     "width and height", j->p.width, j->p.height, s->opt.max_size);
            rc = -1;   /* what was set up goes with the job */
        }
    }
    if (rc != 0 && !j->crop.orig) free(rgb);
    if (rc == 0) {
        j->p.strength = strength;
        j->mask_blur = blur;
        err->status = 0;
        err->param[0] = 0;
    }
    free(rgba);
    free(g);
    qd_ctx_free(ctx);
    return rc;
}
