/* qdiff serve: the OpenAI-compatible POST /v1/images/generations. Fields: prompt
 * (required), n, size ("WxH" or "auto"), response_format (b64_json only: there is no
 * image store to point a url at), model (a name from /sdapi/v1/sd-models), and
 * qdiff's additions negative_prompt, steps, cfg_scale, seed, sampler_name, scheduler,
 * force_task_id (the A1111 meanings).
 * POST /v1/images/edits: the same fields as multipart/form-data with the picture in
 * "image" (PNG/JPEG; image-to-image), an optional "mask" (PNG with transparency: the
 * fully transparent pixels are repainted, as OpenAI's edits; resized to the image) and
 * qdiff's "strength" (default: the pipeline's, see README "Image-to-image" and
 * "Inpainting"). */
#include "server.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* Both endpoints: body holds the fields; image (n bytes) the edit's picture or NULL. */
static void openai_run(srv *s, cJSON *body, const uint8_t *image, size_t image_len, const uint8_t *mask, size_t mask_len,
                       double strength, srv_reply *rp) {
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
        } else if (image && srv_init_image(s, m, image, image_len, "image", "image", strength, j, &err)) {
            rename_param(&err, "width", "size");
            srv_job_release(s, j);
            j = NULL;
        } else if (mask && srv_mask(mask, mask_len, "mask", "mask", 1, 0, 0, j, &err)) {
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

void openai_generations(srv *s, const srv_request *rq, srv_reply *rp) {
    cJSON *body = srv_parse_body(rq, rp);
    if (body) openai_run(s, body, NULL, 0, NULL, 0, 0, rp);
}

/* ---- multipart/form-data (RFC 7578) for /v1/images/edits ---- */

static const char *find(const char *hay, size_t n, const char *needle, size_t m) {
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (hay[i] == needle[0] && !memcmp(hay + i, needle, m)) return hay + i;
    return NULL;
}

/* The value of `key="..."` in a part's Content-Disposition header (h..e), into out. */
static int disposition(const char *h, const char *e, const char *key, char *out, size_t cap) {
    char pat[32];
    snprintf(pat, sizeof pat, " %s=\"", key);
    const char *p = find(h, (size_t)(e - h), pat, strlen(pat));
    if (!p) return 0;
    p += strlen(pat);
    const char *q = memchr(p, '"', (size_t)(e - p));
    if (!q || (size_t)(q - p) >= cap) return 0;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = 0;
    return 1;
}

void openai_edits(srv *s, const srv_request *rq, srv_reply *rp) {
    const char *ct = MHD_lookup_connection_value((struct MHD_Connection *)rq->conn, MHD_HEADER_KIND, "Content-Type");
    const char *b = ct && !strncasecmp(ct, "multipart/form-data", 19) ? strstr(ct, "boundary=") : NULL;
    if (!b) {
        srv_reply_error(rp, 400, NULL, "/v1/images/edits takes multipart/form-data (fields image, prompt, n, size, ...)");
        return;
    }
    char delim[200];
    b += 9;
    size_t bl = strcspn(b, "; ");
    if (*b == '"') { b++; bl = strcspn(b, "\""); }
    if (bl == 0 || bl > 150) { srv_reply_error(rp, 400, NULL, "multipart/form-data: bad boundary"); return; }
    int dl = snprintf(delim, sizeof delim, "\r\n--%.*s", (int)bl, b);
    cJSON *body = cJSON_CreateObject();
    const uint8_t *image = NULL, *mask = NULL;
    size_t image_len = 0, mask_len = 0;
    double strength = 0;
    const char *end = rq->body + rq->body_len;
    /* the first delimiter has no CRLF before it */
    const char *p = rq->body_len >= (size_t)dl - 2 && !memcmp(rq->body, delim + 2, (size_t)dl - 2) ? rq->body + dl - 2 : NULL;
    const char *bad = p ? NULL : "multipart/form-data: the body does not start with the boundary";
    while (!bad && p && end - p >= 2 && memcmp(p, "--", 2)) {
        if (end - p < 2 || memcmp(p, "\r\n", 2)) { bad = "multipart/form-data: malformed part"; break; }
        const char *h = p + 2, *he = find(h, (size_t)(end - h), "\r\n\r\n", 4);
        if (!he) { bad = "multipart/form-data: a part without headers' end"; break; }
        const char *c = he + 4, *ce = find(c, (size_t)(end - c), delim, (size_t)dl);
        if (!ce) { bad = "multipart/form-data: a part without a closing boundary"; break; }
        char name[64], value[4096];
        if (!disposition(h, he, "name", name, sizeof name)) { bad = "multipart/form-data: a part without a name"; break; }
        size_t n = (size_t)(ce - c);
        if (!strcmp(name, "image") || !strcmp(name, "image[]")) {
            if (!image) { image = (const uint8_t *)c; image_len = n; }
        } else if (!strcmp(name, "mask")) {
            if (!mask) { mask = (const uint8_t *)c; mask_len = n; }
        } else if (n >= sizeof value) {
            bad = "multipart/form-data: a text field over 4 KiB";
        } else {
            memcpy(value, c, n);
            value[n] = 0;
            char *num_end;
            double v = strtod(value, &num_end);
            int numeric = n && !*num_end && (!strcmp(name, "n") || !strcmp(name, "steps") || !strcmp(name, "seed") ||
                                              !strcmp(name, "cfg_scale") || !strcmp(name, "strength"));
            if (!strcmp(name, "strength")) {
                if (!numeric || !(v > 0 && v <= 1)) {
                    srv_reply_error(rp, 400, "strength", "strength: expected a number in (0, 1]");
                    cJSON_Delete(body);
                    return;
                }
                strength = v;
            } else if (!cJSON_GetObjectItemCaseSensitive(body, name)) {
                cJSON_AddItemToObject(body, name, numeric ? cJSON_CreateNumber(v) : cJSON_CreateString(value));
            }
        }
        p = ce + dl;
    }
    if (!bad && !image) bad = "image: required, a PNG or JPEG file";
    if (bad) {
        srv_reply_error(rp, 400, !strncmp(bad, "image", 5) ? "image" : !strncmp(bad, "mask", 4) ? "mask" : NULL, bad);
        cJSON_Delete(body);
        return;
    }
    openai_run(s, body, image, image_len, mask, mask_len, strength, rp);
}
