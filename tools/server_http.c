/* qdiff serve: the HTTP side on libmicrohttpd. One thread per connection, so a
 * generation request simply blocks its thread until its job is done. Bodies are
 * collected up to --max-body (413 beyond, refused before reading when the
 * Content-Length says so), then routed by exact path; a known path with the wrong
 * method is a 405, an unknown one a 404. Every error is JSON:
 * {"error": {"message", "type", "param", "code"}}. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void health(srv *s, const srv_request *rq, srv_reply *rp);
static void web_index(srv *s, const srv_request *rq, srv_reply *rp);

typedef struct { const char *method, *path; srv_handler fn; } route;

static const route routes[] = {
    {"GET", "/", web_index},
    {"GET", "/health", health},
    {"POST", "/sdapi/v1/txt2img", a1111_txt2img},
    {"POST", "/sdapi/v1/img2img", a1111_img2img},
    {"GET", "/sdapi/v1/progress", a1111_progress},
    {"POST", "/sdapi/v1/interrupt", a1111_interrupt},
    {"GET", "/sdapi/v1/samplers", a1111_samplers},
    {"GET", "/sdapi/v1/schedulers", a1111_schedulers},
    {"GET", "/sdapi/v1/sd-models", a1111_sd_models},
    {"GET", "/sdapi/v1/options", a1111_options},
    {"GET", "/sdapi/v1/loras", a1111_loras},
    {"POST", "/v1/images/generations", openai_generations},
    {"POST", "/v1/images/edits", openai_edits},
};

/* ---- replies ---- */

static const char *status_type(int status) {
    switch (status) {
    case 400: return "invalid_request_error";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "interrupted";
    case 413: return "request_too_large";
    case 503: return "unavailable";
    default: return "server_error";
    }
}

void srv_reply_json(srv_reply *rp, int status, cJSON *doc) {
    char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    free(rp->body);
    rp->body = NULL;
    rp->static_body = NULL;
    if (!text) {   /* out of memory while building the reply */
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":500}}";
        rp->status = 500;
        rp->static_body = oom;
        rp->body_len = sizeof oom - 1;
    } else {
        rp->status = status;
        rp->body = text;
        rp->body_len = strlen(text);
    }
    rp->content_type = "application/json";
}

void srv_reply_error(srv_reply *rp, int status, const char *param, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *doc = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(doc, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", status_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    cJSON_AddNumberToObject(e, "code", status);
    srv_reply_json(rp, status, doc);
}

cJSON *srv_parse_body(const srv_request *rq, srv_reply *rp) {
    if (!rq->body_len) {
        srv_reply_error(rp, 400, NULL, "the request needs a JSON object body");
        return NULL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, 0);
    if (!doc) {
        srv_reply_error(rp, 400, NULL, "the request body is not valid JSON (error at byte %ld)",
                        end ? (long)(end - rq->body) : 0L);
        return NULL;
    }
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        srv_reply_error(rp, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return doc;
}

const char *srv_query(const srv_request *rq, const char *key) {
    return MHD_lookup_connection_value((struct MHD_Connection *)rq->conn, MHD_GET_ARGUMENT_KIND, key);
}

int srv_base64_decode(const char *text, uint8_t **out, size_t *n) {
    const char *comma = strncmp(text, "data:", 5) ? NULL : strchr(text, ',');
    if (comma) text = comma + 1;
    size_t len = strlen(text), k = 0;
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf) return -1;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (const char *c = text; *c; c++) {
        int v;
        if (*c == ' ' || *c == '\n' || *c == '\r' || *c == '\t') continue;
        if (*c == '=') { pad++; continue; }
        if (pad) { free(buf); return -1; }   /* data after padding */
        if (*c >= 'A' && *c <= 'Z') v = *c - 'A';
        else if (*c >= 'a' && *c <= 'z') v = *c - 'a' + 26;
        else if (*c >= '0' && *c <= '9') v = *c - '0' + 52;
        else if (*c == '+' || *c == '-') v = 62;
        else if (*c == '/' || *c == '_') v = 63;
        else { free(buf); return -1; }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[k++] = (uint8_t)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6) { free(buf); return -1; }
    *out = buf;
    *n = k;
    return 0;
}

char *srv_base64(const uint8_t *data, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < n ? (uint32_t)data[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

/* ---- built-in routes ---- */

static void health(srv *s, const srv_request *rq, srv_reply *rp) {
    pthread_mutex_lock(&s->mu);
    int state = s->models[0].state, stopping = s->stopping, queued = 0, running = 0;
    for (int i = 0; i < s->n_models; i++) {
        for (srv_job *j = s->models[i].queue_head; j; j = j->next) queued++;
        running += s->models[i].running != NULL;
    }
    cJSON *doc = cJSON_CreateObject();
    const char *status = stopping ? "stopping" : state == MODEL_READY ? "ok" : state == MODEL_FAILED ? "failed" : "loading";
    cJSON_AddStringToObject(doc, "status", status);
    cJSON_AddStringToObject(doc, "model", s->models[0].name);
    if (state == MODEL_READY) cJSON_AddStringToObject(doc, "family", s->models[0].family);
    cJSON_AddNumberToObject(doc, "queued", queued);
    cJSON_AddNumberToObject(doc, "running", running);
    cJSON_AddStringToObject(doc, "version", QDIFF_VERSION);
    pthread_mutex_unlock(&s->mu);
    srv_reply_json(rp, strcmp(status, "ok") ? 503 : 200, doc);
    if (rp->status == 503) rp->retry_after = "1";
}

static void web_index(srv *s, const srv_request *rq, srv_reply *rp) {
    rp->status = 200;
    rp->static_body = qd_web_index_html;
    rp->body_len = qd_web_index_html_len;
    rp->content_type = "text/html; charset=utf-8";
}

/* ---- libmicrohttpd glue ---- */

typedef struct {
    char *body;
    size_t len, cap;
    int too_big;
} conn_body;

static void dispatch(srv *s, const srv_request *rq, srv_reply *rp) {
    int path_known = 0;
    char allow[64] = "";
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(routes[i].path, rq->path)) continue;
        path_known = 1;
        /* HEAD is GET without the body (libmicrohttpd drops it) */
        if (!strcmp(routes[i].method, rq->method) || (!strcmp(rq->method, "HEAD") && !strcmp(routes[i].method, "GET"))) {
            routes[i].fn(s, rq, rp);
            return;
        }
        snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s", allow[0] ? ", " : "", routes[i].method);
    }
    if (path_known) {
        static __thread char allow_hdr[64];
        snprintf(allow_hdr, sizeof allow_hdr, "%s", allow);
        srv_reply_error(rp, 405, NULL, "%s %s: method not allowed (use %s)", rq->method, rq->path, allow);
        rp->allow = allow_hdr;
        return;
    }
    srv_reply_error(rp, 404, NULL, "no such endpoint: %s %s", rq->method, rq->path);
}

static void free_body(void *p) { free(p); }

static enum MHD_Result send_reply(struct MHD_Connection *c, srv_reply *rp) {
    struct MHD_Response *r;
    if (rp->static_body) {
        r = MHD_create_response_from_buffer(rp->body_len, (void *)rp->static_body, MHD_RESPMEM_PERSISTENT);
    } else {
        r = MHD_create_response_from_buffer_with_free_callback(rp->body_len, rp->body, free_body);
        if (r) rp->body = NULL;   /* libmicrohttpd frees it */
    }
    if (!r) {
        free(rp->body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", rp->content_type ? rp->content_type : "application/json");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (rp->retry_after) MHD_add_response_header(r, "Retry-After", rp->retry_after);
    if (rp->allow) MHD_add_response_header(r, "Allow", rp->allow);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)rp->status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    srv *s = cls;
    conn_body *b = *con_cls;
    srv_reply rp = {0};
    if (!b) {   /* headers only so far */
        b = calloc(1, sizeof *b);
        if (!b) return MHD_NO;
        *con_cls = b;
        pthread_mutex_lock(&s->mu);
        s->requests++;   /* until on_completed: the reply has been sent (or the client left) */
        pthread_mutex_unlock(&s->mu);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->opt.max_body) {
            b->too_big = 1;
            srv_reply_error(&rp, 413, NULL, "request body of %s bytes is over the limit of %zu bytes (--max-body)", cl,
                            s->opt.max_body);
            return send_reply(c, &rp);   /* before reading it: the connection is closed after */
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (b->too_big) return MHD_YES;
        if (n > s->opt.max_body - b->len) {   /* e.g. chunked: drain the rest, then answer 413 */
            b->too_big = 1;
            free(b->body);
            b->body = NULL;
            return MHD_YES;
        }
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap : 4096;
            while (cap < b->len + n + 1) cap *= 2;
            char *nb = realloc(b->body, cap);
            if (!nb) return MHD_NO;
            b->body = nb;
            b->cap = cap;
        }
        memcpy(b->body + b->len, upload_data, n);
        b->len += n;
        b->body[b->len] = 0;
        return MHD_YES;
    }
    if (b->too_big) {
        srv_reply_error(&rp, 413, NULL, "request body is over the limit of %zu bytes (--max-body)", s->opt.max_body);
        return send_reply(c, &rp);
    }
    srv_request rq = {method, url, b->body ? b->body : "", b->len, c};
    dispatch(s, &rq, &rp);
    return send_reply(c, &rp);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    srv *s = cls;
    conn_body *b = *con_cls;
    if (b) {
        free(b->body);
        free(b);
        *con_cls = NULL;
        pthread_mutex_lock(&s->mu);
        s->requests--;
        pthread_cond_broadcast(&s->cv_done);
        pthread_mutex_unlock(&s->mu);
    }
}

struct MHD_Daemon *srv_http_start(srv *s, int *port) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int e = getaddrinfo(s->opt.host, NULL, &hints, &ai);
    if (e || !ai) {
        fprintf(stderr, "qdiff: --host %s: %s\n", s->opt.host, e ? gai_strerror(e) : "no address");
        if (ai) freeaddrinfo(ai);
        return NULL;
    }
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    int v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (v6) ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)s->opt.port);
    else ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)s->opt.port);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)s->opt.port, NULL, NULL, on_request, s,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                            MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "qdiff: cannot listen on %s port %d: %s\n", s->opt.host, s->opt.port,
                errno ? strerror(errno) : "libmicrohttpd failed to start");
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : s->opt.port;
    return d;
}

void srv_http_stop(srv *s, struct MHD_Daemon *d, double timeout_s) {
    if (!d) return;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)timeout_s;
    pthread_mutex_lock(&s->mu);
    while (s->requests > 0 && pthread_cond_timedwait(&s->cv_done, &s->mu, &until) == 0) {}
    int left = s->requests;
    pthread_mutex_unlock(&s->mu);
    if (left && !s->opt.quiet) fprintf(stderr, "qdiff serve: closing %d unfinished request(s)\n", left);
    MHD_stop_daemon(d);
}
