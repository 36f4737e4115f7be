/* qdiff serve: the pieces of the HTTP server and how they talk.
 *
 *   cmd_serve.c      options, start-up, signals, shutdown
 *   server_http.c    libmicrohttpd glue: bodies and their limit, routing, replies
 *   server_jobs.c    models (load once, keep) and one job queue + worker thread per model
 *   server_params.c  the generation fields both APIs share, sampler/scheduler names
 *   server_a1111.c   /sdapi/v1/... (AUTOMATIC1111-compatible)
 *   server_openai.c  /v1/images/generations (OpenAI-compatible)
 *   server_lora.c    <lora:NAME:WEIGHT> prompt tags over --lora-dir, GET /sdapi/v1/loras
 *   web/index.html   the page at /, embedded at build time (web_page.c, generated)
 */
#ifndef QD_TOOLS_SERVER_H
#define QD_TOOLS_SERVER_H

#include "cli.h"

#include <cjson/cJSON.h>
#include <pthread.h>

typedef struct {
    const char *host;
    int port;
    const char *model_dir, *models_dir, *preview_vae;
    const char *lora_dir;       /* <lora:NAME:WEIGHT> prompt tags name files here; NULL: none */
    const char *config_from;    /* single-file checkpoints: the diffusers folder of their family; NULL: none */
    int threads, max_steps, max_batch, max_size, preview_every;
    int precision;              /* QD_PRECISION_* for every model's context */
    size_t max_body;
    int quiet;
} srv_options;

/* ---- models and jobs (server_jobs.c) ---- */

enum { MODEL_UNLOADED, MODEL_LOADING, MODEL_READY, MODEL_FAILED };
enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED };

typedef struct srv_job srv_job;
typedef struct srv srv;

enum { SRV_MAX_LORAS = 16 };    /* <lora:...> tags per prompt */

typedef struct {
    srv *srv;
    char *name, *path;
    int state;                  /* MODEL_*, under srv.mu */
    char error[1024];           /* why it failed to load */
    qd_ctx *ctx;                /* used only by the worker */
    qd_model *model;
    qd_vae_model *preview_vae;  /* NULL: no previews for this model */
    pthread_t worker;
    int worker_started;
    srv_job *queue_head, *queue_tail;
    srv_job *running;
    pthread_cond_t cv_work;
    const char *family;         /* after loading */
    int default_size;
    int size_unit;              /* width and height multiple (qd_model_size_unit) */
    char scheduler[128];        /* the folder's scheduler class */
} srv_model;

/* One request's generation. Filled by the API handlers, run by its model's worker. */
struct srv_job {
    srv_job *next;              /* in the model's queue */
    srv_job *list_next;         /* in srv.jobs (progress look-ups) */
    int id;
    char task[64];              /* A1111 force_task_id, or "job-<id>" */
    srv_model *model;
    /* request: strings owned by the job; p points into them */
    qd_gen_params p;
    char *prompt, *negative, *sampler, *schedule, *scheduler, *sampler_label, *schedule_label;
    int n_iter;                 /* A1111 n_iter: seeds seed, seed+1, ... */
    char *lora_paths[SRV_MAX_LORAS];   /* from the prompt's <lora:...> tags; p.loras points here */
    float lora_scales[SRV_MAX_LORAS];
    int n_loras;
    int seed_requested_random;
    float *init_image;          /* img2img: the decoded, resized init image p.init_image points at */
    float *mask;                /* inpainting: the mask p.mask points at */
    int mask_blur;              /* its blur (A1111's "Mask blur" of the infotext) */
    int mask_overlay;           /* A1111: paste the init image back over the kept area (cli_mask_overlay) */
    cli_crop crop;              /* A1111 inpaint_full_res: the box generated (crop.orig NULL: the whole picture) */
    int resize_mode;            /* A1111 resize_mode of the init image and mask (CLI_RESIZE_*) */
    /* progress, under srv.mu */
    int state, iter, step, total, cancel, refs;
    double t_queued, t_start, t_end;
    long long created;          /* wall clock (time()) when queued, for A1111's job_timestamp */
    char *preview_b64;          /* latest live preview as base64 PNG, or NULL */
    /* result */
    int n_images;
    char **images_b64;          /* n_images base64 PNGs with their "parameters" text */
    char **infotexts;           /* the parameters text of each */
    uint64_t *seeds;            /* each image's seed */
    qd_status status;
    char error[1024];
};

struct srv {
    srv_options opt;
    pthread_mutex_t mu;
    pthread_cond_t cv_done;     /* broadcast when any job ends or a model finishes loading */
    srv_model *models;
    int n_models;
    srv_job *jobs;              /* every live job, newest first */
    int next_job_id, stopping;
    int requests;               /* HTTP requests between their headers and their reply's end */
    int load_failed_signal;     /* the start-up model failed: the main thread exits */
};

int srv_init(srv *s, const srv_options *opt);   /* scans the model folders; prints why on failure */
void srv_stop_jobs(srv *s);                     /* shutting down: cancels every job, refuses new ones */
void srv_free(srv *s);                          /* after srv_stop_jobs and the HTTP stop: joins, frees */
srv_model *srv_find_model(srv *s, const char *name); /* by name or A1111 title; NULL: unknown */
/* Start loading m in its worker if it is not loaded yet (under mu). */
void srv_model_request_load(srv *s, srv_model *m);

srv_job *srv_job_new(void);
/* Queue the job on its model (which must be ready); returns with a reference held by
 * the caller. */
void srv_job_submit(srv *s, srv_job *j);
void srv_job_wait(srv *s, srv_job *j);          /* until done, failed or cancelled */
void srv_job_release(srv *s, srv_job *j);
/* Cancel jobs: task NULL = every running one (A1111 interrupt); else that task, queued
 * or running. Returns how many were cancelled. */
int srv_cancel(srv *s, const char *task);

/* ---- HTTP (server_http.c) ---- */

typedef struct {
    const char *method, *path;
    const char *body;
    size_t body_len;
    void *conn;                 /* struct MHD_Connection */
} srv_request;

typedef struct {
    int status;
    char *body;                 /* malloc'd */
    size_t body_len;
    const char *content_type;
    const char *retry_after;    /* for 503 */
    const char *allow;          /* for 405 */
    const void *static_body;    /* instead of body: not freed */
} srv_reply;

typedef void (*srv_handler)(srv *s, const srv_request *rq, srv_reply *rp);

struct MHD_Daemon;
/* Listen on opt.host:opt.port (0: any free port; *port gets the bound one). */
struct MHD_Daemon *srv_http_start(srv *s, int *port);
/* After srv_stop_jobs: let the requests in flight send their replies (up to
 * timeout_s seconds), then close every connection and join their threads. */
void srv_http_stop(srv *s, struct MHD_Daemon *d, double timeout_s);

const char *srv_query(const srv_request *rq, const char *key);
void srv_reply_json(srv_reply *rp, int status, cJSON *doc);   /* takes doc */
/* {"error": {"message", "type", "param", "code": status}}; param may be NULL. */
void srv_reply_error(srv_reply *rp, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The body as a JSON object, or a 400 reply and NULL. */
cJSON *srv_parse_body(const srv_request *rq, srv_reply *rp);
char *srv_base64(const uint8_t *data, size_t n);
/* Standard base64 (whitespace skipped, an optional "data:...;base64," prefix) -> malloc'd
 * bytes in *out, *n of them; -1 on a character outside the alphabet or bad padding. */
int srv_base64_decode(const char *text, uint8_t **out, size_t *n);

/* ---- the generation fields (server_params.c) ---- */

typedef struct {
    int status;                 /* 0 ok, else HTTP status of the error */
    char param[64];
    char message[1024];
} srv_error;

/* Fill j's request from the A1111 fields of obj (prompt, negative_prompt, steps,
 * cfg_scale, seed, width, height, sampler_name, scheduler, batch_size, n_iter,
 * force_task_id). The model must be loaded (its family and size are used). */
int srv_params_from_json(srv *s, srv_model *m, const cJSON *obj, srv_job *j, srv_error *err);
/* The model a request names (NULL name: the -m model), ready to take jobs: else
 * err says why (400 unknown, 503 loading (and starts loading), 500 failed). */
srv_model *srv_model_for_request(srv *s, const char *name, const char *field, srv_error *err);
void srv_reply_srv_error(srv_reply *rp, const srv_error *err);
/* Take the <lora:NAME[:WEIGHT]> tags out of prompt (in place) into j's LoRAs (files in
 * o->lora_dir); -1 with a 400 err for a bad tag, an unknown name or no --lora-dir. */
int srv_lora_extract(const srv_options *o, char *prompt, srv_job *j, srv_error *err);
/* Image-to-image input of a request (server_params.c): PNG/JPEG bytes decoded and resized
 * to the job's width x height (unset: the picture's own size rounded down to the model's
 * multiple) into j->init_image; strength 0: the pipeline's default. Errors (400) name
 * param and, in the message, what (e.g. "init_images[0]"). */
int srv_init_image(srv *s, srv_model *m, const uint8_t *bytes, size_t n, const char *param, const char *what,
                   double strength, srv_job *j, srv_error *err);
/* Inpainting mask of a request (server_params.c), after srv_init_image: PNG/JPEG bytes
 * made into j->mask at the job's size by cli_mask_rgba (alpha_repaint: OpenAI's
 * transparent = repaint; else A1111's white / opaque = repaint, invert, blur). Errors
 * (400) name param and, in the message, what. */
/* A1111's inpaint_full_res ("Only masked"): the init image and mask bytes through
 * cli_crop_setup into j->crop, j->p.init_image and j->p.mask. 0 ok; 1 the mask is empty
 * (nothing set); -1 with err filled (400). */
int srv_inpaint_crop(srv *s, srv_model *m, const uint8_t *init, size_t init_len, const uint8_t *mask, size_t mask_len,
                     int invert, int blur, int pad, double strength, srv_job *j, srv_error *err);
int srv_mask(const uint8_t *bytes, size_t n, const char *param, const char *what, int alpha_repaint, int invert,
             int blur, srv_job *j, srv_error *err);
/* The reply of a finished job that did not succeed (cancelled, failed), or 0. */
int srv_job_error(srv *s, const srv_job *j, srv_reply *rp);

cJSON *srv_samplers_json(void);     /* A1111 GET /sdapi/v1/samplers */
cJSON *srv_schedulers_json(void);   /* A1111 GET /sdapi/v1/schedulers */

/* ---- API handlers ---- */

void a1111_txt2img(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_img2img(srv *s, const srv_request *rq, srv_reply *rp);
void openai_edits(srv *s, const srv_request *rq, srv_reply *rp);   /* multipart: image + the generations fields */   /* init_images[0] + denoising_strength */
void a1111_progress(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_interrupt(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_samplers(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_schedulers(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_sd_models(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_options(srv *s, const srv_request *rq, srv_reply *rp);
void a1111_loras(srv *s, const srv_request *rq, srv_reply *rp);
void openai_generations(srv *s, const srv_request *rq, srv_reply *rp);

/* The embedded web page (generated from tools/web/index.html at build time). */
extern const unsigned char qd_web_index_html[];
extern const size_t qd_web_index_html_len;

#endif
