/* qdiff serve: the AUTOMATIC1111-compatible API (/sdapi/v1/...): what scripts and
 * tools written for A1111's --api send and read. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void timestamp(long long t, char *buf, size_t n) {
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, n, "%Y%m%d%H%M%S", &tm);
}

/* The "info" string of a finished job, as A1111 writes it (a JSON document in a string). */
static char *job_info(const srv_job *j) {
    cJSON *o = cJSON_CreateObject(), *a;
    int n = j->n_images;
    cJSON_AddStringToObject(o, "prompt", j->prompt);
    a = cJSON_AddArrayToObject(o, "all_prompts");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(j->prompt));
    cJSON_AddStringToObject(o, "negative_prompt", j->negative ? j->negative : "");
    a = cJSON_AddArrayToObject(o, "all_negative_prompts");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(j->negative ? j->negative : ""));
    cJSON_AddNumberToObject(o, "seed", (double)j->p.seed);
    a = cJSON_AddArrayToObject(o, "all_seeds");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)j->seeds[i]));
    cJSON_AddNumberToObject(o, "subseed", -1);
    cJSON_AddNumberToObject(o, "subseed_strength", 0);
    cJSON_AddNumberToObject(o, "width", j->p.width);
    cJSON_AddNumberToObject(o, "height", j->p.height);
    cJSON_AddStringToObject(o, "sampler_name", j->sampler_label);
    cJSON_AddStringToObject(o, "scheduler", j->schedule_label);
    cJSON_AddNumberToObject(o, "cfg_scale", j->p.cfg_scale);
    cJSON_AddNumberToObject(o, "steps", j->p.steps);
    cJSON_AddNumberToObject(o, "batch_size", j->p.batch);
    cJSON_AddNumberToObject(o, "n_iter", j->n_iter);
    cJSON_AddFalseToObject(o, "restore_faces");
    cJSON_AddStringToObject(o, "sd_model_name", j->model->name);
    cJSON_AddNullToObject(o, "sd_model_hash");
    cJSON *extra = cJSON_AddObjectToObject(o, "extra_generation_params");
    if (j->p.sampler) cJSON_AddStringToObject(extra, "Sampler", j->p.sampler);
    if (j->p.sampler) cJSON_AddStringToObject(extra, "Schedule type", cli_schedule_label(j->model->model, &j->p));
    else cJSON_AddStringToObject(extra, "Scheduler class", j->p.scheduler ? j->p.scheduler : j->model->scheduler);
    if (j->p.init_image) cJSON_AddNumberToObject(o, "denoising_strength", j->p.strength);
    cJSON_AddNumberToObject(o, "index_of_first_image", 0);
    a = cJSON_AddArrayToObject(o, "infotexts");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(j->infotexts[i]));
    cJSON_AddArrayToObject(o, "styles");
    char ts[32];
    timestamp(j->created, ts, sizeof ts);
    cJSON_AddStringToObject(o, "job_timestamp", ts);
    cJSON_AddNumberToObject(o, "clip_skip", 1);
    cJSON_AddStringToObject(o, "version", "qdiff " QDIFF_VERSION);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static int bad_field(srv_error *err, const char *param, const char *msg) {
    snprintf(err->param, sizeof err->param, "%s", param);
    snprintf(err->message, sizeof err->message, "%s: %s", param, msg);
    err->status = 400;
    return -1;
}

/* img2img's fields: init_images (base64 PNG/JPEG; the first is used, as one image serves
 * the batch), denoising_strength (A1111's default 0.75), resize_mode (0 just resize, 1
 * crop and resize, 2 resize and fill: the picture and mask to width x height; 3, the
 * latent upscale, refused), and for inpainting mask (base64
 * PNG/JPEG: white, or opaque where it has transparency, = repaint), mask_blur (default 4,
 * as A1111's mask_blur_x/y), inpainting_mask_invert (0/1), inpainting_fill (0 fill,
 * 1 original, 2 latent noise, 3 latent nothing: qd_gen_params.masked_content; absent means
 * 1, the image itself),
 * inpaint_full_res ("Only masked": the mask's box, grown by inpaint_full_res_padding
 * pixels, generated at width x height and pasted back into the picture at its own size;
 * absent means false: the whole picture). As A1111, the init image is pasted back over
 * the kept area of the results (its overlay). */
static int img2img_params(srv *s, srv_model *m, const cJSON *body, srv_job *j, srv_error *err) {
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(body, "init_images");
    const cJSON *first = cJSON_IsArray(imgs) ? cJSON_GetArrayItem(imgs, 0) : NULL;
    if (!cJSON_IsString(first)) return bad_field(err, "init_images", "expected a list holding a base64 PNG or JPEG");
    double strength = 0.75;
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(body, "denoising_strength");
    if (ds && !cJSON_IsNull(ds)) {
        if (!cJSON_IsNumber(ds) || !(ds->valuedouble > 0 && ds->valuedouble <= 1))
            return bad_field(err, "denoising_strength", "expected a number in (0, 1]");
        strength = ds->valuedouble;
    }
    const cJSON *mask = cJSON_GetObjectItemCaseSensitive(body, "mask");
    const cJSON *fill = cJSON_GetObjectItemCaseSensitive(body, "inpainting_fill");
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(body, "inpaint_full_res");
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(body, "inpaint_full_res_padding");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(body, "inpainting_mask_invert");
    const cJSON *blur = cJSON_GetObjectItemCaseSensitive(body, "mask_blur");
    int masked = mask && !cJSON_IsNull(mask), full_res = 0, px = 4, padding = 0;
    if (masked) {
        if (!cJSON_IsString(mask)) return bad_field(err, "mask", "expected a base64 PNG or JPEG");
        if (fill && !cJSON_IsNull(fill)) {
            if (!cJSON_IsNumber(fill) || fill->valuedouble != (int)fill->valuedouble || fill->valuedouble < 0 ||
                fill->valuedouble > 3)
                return bad_field(err, "inpainting_fill", "expected 0 (fill), 1 (original), 2 (latent noise) or 3 "
                                 "(latent nothing)");
            static const int content[] = {QD_MASKED_FILL, QD_MASKED_ORIGINAL, QD_MASKED_LATENT_NOISE,
                                          QD_MASKED_LATENT_NOTHING};
            j->p.masked_content = content[(int)fill->valuedouble];
        }
        if (full && !cJSON_IsNull(full)) {
            if (!cJSON_IsBool(full) && !(cJSON_IsNumber(full) && (full->valuedouble == 0 || full->valuedouble == 1)))
                return bad_field(err, "inpaint_full_res", "expected true or false");
            full_res = cJSON_IsTrue(full) || (cJSON_IsNumber(full) && full->valuedouble == 1);
        }
        if (pad && !cJSON_IsNull(pad)) {
            if (!cJSON_IsNumber(pad) || pad->valuedouble != (int)pad->valuedouble || pad->valuedouble < 0 ||
                pad->valuedouble > 4096)
                return bad_field(err, "inpaint_full_res_padding", "expected whole pixels 0..4096");
            padding = (int)pad->valuedouble;
        }
        if (inv && !cJSON_IsNull(inv) && !(cJSON_IsNumber(inv) && (inv->valuedouble == 0 || inv->valuedouble == 1)) &&
            !cJSON_IsBool(inv))
            return bad_field(err, "inpainting_mask_invert", "expected 0 or 1");
        if (blur && !cJSON_IsNull(blur)) {
            if (!cJSON_IsNumber(blur) || blur->valuedouble != (int)blur->valuedouble || blur->valuedouble < 0 ||
                blur->valuedouble > 64)
                return bad_field(err, "mask_blur", "expected whole pixels 0..64");
            px = (int)blur->valuedouble;
        }
    }
    int invert = masked && inv && (cJSON_IsTrue(inv) || (cJSON_IsNumber(inv) && inv->valuedouble == 1));
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(body, "resize_mode");
    if (rm && !cJSON_IsNull(rm)) {
        if (!cJSON_IsNumber(rm) || rm->valuedouble != (int)rm->valuedouble || rm->valuedouble < 0 || rm->valuedouble > 3)
            return bad_field(err, "resize_mode", "expected 0 (just resize), 1 (crop and resize), 2 (resize and fill)");
        if (rm->valuedouble == 3)
            return bad_field(err, "resize_mode", "3 (just resize, latent upscale) is not supported: use 0, 1 or 2");
        j->resize_mode = (int)rm->valuedouble;   /* CLI_RESIZE_* use A1111's numbers */
    }
    uint8_t *bytes = NULL, *mbytes = NULL;
    size_t n = 0, mn = 0;
    if (srv_base64_decode(first->valuestring, &bytes, &n)) {
        snprintf(err->param, sizeof err->param, "init_images");
        snprintf(err->message, sizeof err->message, "init_images[0]: not valid base64");   /* names the item */
        err->status = 400;
        return -1;
    }
    if (masked && srv_base64_decode(mask->valuestring, &mbytes, &mn)) {   /* data: prefix too */
        free(bytes);
        return bad_field(err, "mask", "not valid base64");
    }
    int rc = full_res ? srv_inpaint_crop(s, m, bytes, n, mbytes, mn, invert, px, padding, strength, j, err) : 1;
    if (rc == 1) {   /* whole picture; also A1111's fallback when the mask is empty: no mask */
        if (full_res) j->p.masked_content = QD_MASKED_ORIGINAL;
        rc = srv_init_image(s, m, bytes, n, "init_images", "init_images[0]", strength, j, err);
        if (!rc && masked && !full_res) {
            rc = srv_mask(mbytes, mn, "mask", "mask", 0, invert, px, j, err);
            j->mask_overlay = !rc;   /* A1111 always pastes the original back over the kept area */
        }
    }
    free(bytes);
    free(mbytes);
    return rc;
}

static void a1111_generate(srv *s, const srv_request *rq, srv_reply *rp, int img2img) {
    cJSON *body = srv_parse_body(rq, rp);
    if (!body) return;
    const char *model_name = NULL;
    const cJSON *ov = cJSON_GetObjectItemCaseSensitive(body, "override_settings");
    if (ov && !cJSON_IsNull(ov)) {
        const cJSON *ck = cJSON_GetObjectItemCaseSensitive(ov, "sd_model_checkpoint");
        if (!cJSON_IsObject(ov) || (ck && !cJSON_IsString(ck))) {
            srv_reply_error(rp, 400, "override_settings", "override_settings: expected an object whose "
                            "sd_model_checkpoint is a model name (GET /sdapi/v1/sd-models)");
            cJSON_Delete(body);
            return;
        }
        if (ck) model_name = ck->valuestring;
    }
    srv_error err = {0};
    srv_model *m = srv_model_for_request(s, model_name, "override_settings.sd_model_checkpoint", &err);
    srv_job *j = m ? srv_job_new() : NULL;
    if (m && !j) srv_reply_error(rp, 500, NULL, "out of memory");
    if (!m) srv_reply_srv_error(rp, &err);
    if (!j) { cJSON_Delete(body); return; }
    j->model = m;
    if (srv_params_from_json(s, m, body, j, &err) || (img2img && img2img_params(s, m, body, j, &err))) {
        srv_reply_srv_error(rp, &err);
        srv_job_release(s, j);
        cJSON_Delete(body);
        return;
    }
    cJSON_Delete(body);
    srv_job_submit(s, j);
    srv_job_wait(s, j);
    if (srv_job_error(s, j, rp)) { srv_job_release(s, j); return; }

    cJSON *doc = cJSON_CreateObject(), *imgs = cJSON_AddArrayToObject(doc, "images");
    for (int i = 0; i < j->n_images; i++)   /* references: printed before the job lets them go */
        cJSON_AddItemToArray(imgs, cJSON_CreateStringReference(j->images_b64[i]));
    cJSON *par = cJSON_AddObjectToObject(doc, "parameters");
    cJSON_AddStringToObject(par, "prompt", j->prompt);
    cJSON_AddStringToObject(par, "negative_prompt", j->negative ? j->negative : "");
    cJSON_AddNumberToObject(par, "seed", j->seed_requested_random ? -1 : (double)j->p.seed);
    cJSON_AddNumberToObject(par, "steps", j->p.steps);
    cJSON_AddNumberToObject(par, "cfg_scale", j->p.cfg_scale);
    cJSON_AddNumberToObject(par, "width", j->p.width);
    cJSON_AddNumberToObject(par, "height", j->p.height);
    cJSON_AddStringToObject(par, "sampler_name", j->sampler_label);
    cJSON_AddStringToObject(par, "scheduler", j->schedule_label);
    cJSON_AddNumberToObject(par, "batch_size", j->p.batch);
    cJSON_AddNumberToObject(par, "n_iter", j->n_iter);
    cJSON_AddStringToObject(par, "sd_model_checkpoint", m->name);
    if (img2img) cJSON_AddNumberToObject(par, "denoising_strength", j->p.strength);
    char *info = job_info(j);
    if (info) cJSON_AddItemToObject(doc, "info", cJSON_CreateStringReference(info));
    srv_reply_json(rp, info ? 200 : 500, info ? doc : NULL);
    if (!info) cJSON_Delete(doc);
    free(info);
    srv_job_release(s, j);
}

void a1111_txt2img(srv *s, const srv_request *rq, srv_reply *rp) { a1111_generate(s, rq, rp, 0); }
void a1111_img2img(srv *s, const srv_request *rq, srv_reply *rp) { a1111_generate(s, rq, rp, 1); }

static const char *state_name(int state) {
    static const char *const names[] = {"queued", "running", "done", "failed", "cancelled"};
    return names[state];
}

void a1111_progress(srv *s, const srv_request *rq, srv_reply *rp) {
    const char *task = srv_query(rq, "id_task"), *skip = srv_query(rq, "skip_current_image");
    int skip_image = skip && (!strcmp(skip, "true") || !strcmp(skip, "1"));
    cJSON *doc = cJSON_CreateObject(), *st;
    pthread_mutex_lock(&s->mu);
    srv_job *j = NULL;
    if (task) {
        for (srv_job *q = s->jobs; q && !j; q = q->list_next)
            if (!strcmp(q->task, task)) j = q;
    } else {   /* A1111 reports the job being made; with several models, the first running */
        for (int i = 0; i < s->n_models && !j; i++) j = s->models[i].running;
    }
    double progress = 0, eta = 0;
    int queue_pos = 0;
    if (j && j->state == JOB_RUNNING) {
        double inner = j->total > 0 ? (double)j->step / j->total : 0;
        progress = (j->iter + inner) / j->n_iter;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double elapsed = (double)ts.tv_sec + ts.tv_nsec * 1e-9 - j->t_start;
        eta = progress > 0 ? elapsed / progress - elapsed : 0;
    } else if (j && j->state == JOB_DONE) {
        progress = 1;
    } else if (j && j->state == JOB_QUEUED) {
        for (srv_job *q = j->model->queue_head; q && q != j; q = q->next) queue_pos++;
    }
    cJSON_AddNumberToObject(doc, "progress", progress);
    cJSON_AddNumberToObject(doc, "eta_relative", eta);
    st = cJSON_AddObjectToObject(doc, "state");
    cJSON_AddFalseToObject(st, "skipped");
    cJSON_AddBoolToObject(st, "interrupted", j && (j->cancel || j->state == JOB_CANCELLED));
    cJSON_AddFalseToObject(st, "stopping_generation");
    cJSON_AddStringToObject(st, "job", j ? j->task : "");
    cJSON_AddNumberToObject(st, "job_count", j ? j->n_iter : 0);
    char ts[32] = "0";
    if (j) timestamp(j->created, ts, sizeof ts);
    cJSON_AddStringToObject(st, "job_timestamp", ts);
    cJSON_AddNumberToObject(st, "job_no", j ? j->iter : 0);
    cJSON_AddNumberToObject(st, "sampling_step", j ? j->step : 0);
    cJSON_AddNumberToObject(st, "sampling_steps", j ? j->total : 0);
    if (j && j->preview_b64 && !skip_image) cJSON_AddStringToObject(doc, "current_image", j->preview_b64);
    else cJSON_AddNullToObject(doc, "current_image");
    cJSON_AddNullToObject(doc, "textinfo");
    /* qdiff's additions: which job, and where it stands */
    if (j) {
        cJSON_AddStringToObject(doc, "id_task", j->task);
        cJSON_AddStringToObject(doc, "status", state_name(j->state));
        if (j->state == JOB_QUEUED) cJSON_AddNumberToObject(doc, "queue_position", queue_pos);
        if (j->state >= JOB_FAILED && j->error[0]) cJSON_AddStringToObject(doc, "error", j->error);
    } else {
        cJSON_AddNullToObject(doc, "id_task");
        cJSON_AddStringToObject(doc, "status", task ? "unknown" : "idle");
    }
    pthread_mutex_unlock(&s->mu);
    srv_reply_json(rp, 200, doc);
}

void a1111_interrupt(srv *s, const srv_request *rq, srv_reply *rp) {
    /* A1111 stops the image being made; qdiff also takes one task (queued or running)
     * as ?id_task= or {"id_task": ...} */
    const char *task = srv_query(rq, "id_task");
    cJSON *body = NULL;
    if (!task && rq->body_len) {
        if (!(body = srv_parse_body(rq, rp))) return;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(body, "id_task");
        if (t && !cJSON_IsNull(t) && !cJSON_IsString(t)) {
            srv_reply_error(rp, 400, "id_task", "id_task: expected a string");
            cJSON_Delete(body);
            return;
        }
        if (cJSON_IsString(t)) task = t->valuestring;
    }
    int n = srv_cancel(s, task);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddNumberToObject(doc, "interrupted", n);
    cJSON_Delete(body);
    srv_reply_json(rp, 200, doc);
}

void a1111_samplers(srv *s, const srv_request *rq, srv_reply *rp) { srv_reply_json(rp, 200, srv_samplers_json()); }

void a1111_schedulers(srv *s, const srv_request *rq, srv_reply *rp) { srv_reply_json(rp, 200, srv_schedulers_json()); }

void a1111_sd_models(srv *s, const srv_request *rq, srv_reply *rp) {
    static const char *const states[] = {"unloaded", "loading", "ready", "failed"};
    cJSON *arr = cJSON_CreateArray();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_models; i++) {
        const srv_model *m = &s->models[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "title", m->name);
        cJSON_AddStringToObject(o, "model_name", m->name);
        cJSON_AddNullToObject(o, "hash");
        cJSON_AddNullToObject(o, "sha256");
        cJSON_AddStringToObject(o, "filename", m->path);
        cJSON_AddNullToObject(o, "config");
        cJSON_AddStringToObject(o, "state", states[m->state]);
        if (m->state == MODEL_READY) cJSON_AddStringToObject(o, "family", m->family);
        cJSON_AddBoolToObject(o, "default", i == 0);
        cJSON_AddItemToArray(arr, o);
    }
    pthread_mutex_unlock(&s->mu);
    srv_reply_json(rp, 200, arr);
}

void a1111_options(srv *s, const srv_request *rq, srv_reply *rp) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sd_model_checkpoint", s->models[0].name);
    cJSON_AddNumberToObject(o, "show_progress_every_n_steps", s->opt.preview_every);
    srv_reply_json(rp, 200, o);
}
