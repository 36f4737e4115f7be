/* qdiff serve: the OpenAI-compatible POST /v1/images/generations. Fields: prompt
 * (required), n, size ("WxH" or "auto"), response_format (b64_json only: there is no
 * image store to point a url at), model (a name from /sdapi/v1/sd-models), and
 * qdiff's additions negative_prompt, steps, cfg_scale, seed, sampler_name, scheduler,
 * force_task_id (the A1111 meanings). */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A1111-only fields that must not slip in through this endpoint. */
static const char *const a1111_only[] = {"width", "height", "batch_size", "n_iter", "override_settings",
                                         "sampler_index", "enable_hr", "restore_faces", "tiling", "subseed_strength"};

static void rename_param(srv_error *err, const char *from, const char *to) {
    if (strcmp(err->param, from)) return;
    char msg[sizeof err->message];
    size_t fl = strlen(from);
    const char *rest = !strncmp(err->message, from, fl) && err->message[fl] == ':' ? err->message + fl + 1 : err->message;
    snprintf(msg, sizeof msg, "%s:%s", to, rest);
    memcpy(err->message, msg, sizeof msg);
    snprintf(err->param, sizeof err->param, "%s", to);
}

void openai_generations(srv *s, const srv_request *rq, srv_reply *rp) {
    cJSON *body = srv_parse_body(rq, rp);
    if (!body) return;
    srv_job *j = NULL;
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(body, "n");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(body, "size");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(body, "response_format");
    const cJSON *ofmt = cJSON_GetObjectItemCaseSensitive(body, "output_format");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (!cJSON_IsString(prompt) || !prompt->valuestring[0]) {
        srv_reply_error(rp, 400, "prompt", "prompt: required, a non-empty string");
        goto done;
    }
    if (fmt && !cJSON_IsNull(fmt) && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "b64_json"))) {
        if (cJSON_IsString(fmt) && !strcmp(fmt->valuestring, "url"))
            srv_reply_error(rp, 400, "response_format", "response_format: 'url' is not supported: qdiff serve does "
                            "not store images to link to; use 'b64_json'");
        else
            srv_reply_error(rp, 400, "response_format", "response_format: expected 'b64_json'");
        goto done;
    }
    if (ofmt && !cJSON_IsNull(ofmt) && (!cJSON_IsString(ofmt) || strcmp(ofmt->valuestring, "png"))) {
        srv_reply_error(rp, 400, "output_format", "output_format: only 'png' is supported");
        goto done;
    }
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) {
        srv_reply_error(rp, 400, "model", "model: expected a model name (GET /sdapi/v1/sd-models)");
        goto done;
    }
    /* n and size become A1111's batch_size, width and height */
    cJSON *req = cJSON_Duplicate(body, 1);
    for (size_t i = 0; req && i < sizeof a1111_only / sizeof a1111_only[0]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(req, a1111_only[i]);
    if (!req) { srv_reply_error(rp, 500, NULL, "out of memory"); goto done; }
    if (n && !cJSON_IsNull(n)) cJSON_AddItemToObject(req, "batch_size", cJSON_Duplicate(n, 0));
    if (size && !cJSON_IsNull(size) && !(cJSON_IsString(size) && !strcmp(size->valuestring, "auto"))) {
        int w = 0, h = 0, used = 0;
        if (!cJSON_IsString(size) || sscanf(size->valuestring, "%dx%d%n", &w, &h, &used) != 2 ||
            size->valuestring[used]) {
            srv_reply_error(rp, 400, "size", "size: expected \"WIDTHxHEIGHT\" (e.g. \"512x512\") or \"auto\"");
            cJSON_Delete(req);
            goto done;
        }
        cJSON_AddNumberToObject(req, "width", w);
        cJSON_AddNumberToObject(req, "height", h);
    }
    srv_error err = {0};
    srv_model *m = srv_model_for_request(s, cJSON_IsString(model) ? model->valuestring : NULL, "model", &err);
    if (m && !(j = srv_job_new())) err = (srv_error){.status = 500, .message = "out of memory"};
    if (j) {
        j->model = m;
        if (srv_params_from_json(s, m, req, j, &err)) {
            rename_param(&err, "width", "size");
            rename_param(&err, "height", "size");
            rename_param(&err, "batch_size", "n");
            srv_job_release(s, j);
            j = NULL;
        }
    }
    cJSON_Delete(req);
    if (!j) { srv_reply_srv_error(rp, &err); goto done; }

    srv_job_submit(s, j);
    srv_job_wait(s, j);
    if (!srv_job_error(s, j, rp)) {
        cJSON *doc = cJSON_CreateObject(), *data;
        cJSON_AddNumberToObject(doc, "created", (double)time(NULL));
        data = cJSON_AddArrayToObject(doc, "data");
        for (int i = 0; i < j->n_images; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(o, "b64_json", cJSON_CreateStringReference(j->images_b64[i]));
            cJSON_AddItemToObject(o, "revised_prompt", cJSON_CreateStringReference(j->prompt));
            cJSON_AddItemToArray(data, o);
        }
        srv_reply_json(rp, 200, doc);
    }
    srv_job_release(s, j);
done:
    cJSON_Delete(body);
}
