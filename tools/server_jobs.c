/* qdiff serve: the models (each loaded once and kept) and their job queues. Every
 * model has one worker thread: it loads the model, then runs the model's jobs one
 * after the other, so requests queue instead of failing. One mutex (srv.mu) guards
 * the models' states, the queues and every job's progress. */
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEEP_FINISHED 16   /* finished jobs kept for /sdapi/v1/progress?id_task= */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- models ---- */

static int is_model_folder(const char *dir) {
    char path[4300];
    struct stat st;
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A single-file checkpoint the server may serve: a regular *.safetensors file, and only
 * with --config-from (its configs, tokenizers and scheduler come from there). */
static int is_single_file(const srv *s, const char *path) {
    struct stat st;
    size_t n = strlen(path);
    return s->opt.config_from && n > 12 && !strcmp(path + n - 12, ".safetensors") && stat(path, &st) == 0 &&
           S_ISREG(st.st_mode);
}

static int add_model(srv *s, const char *name, const char *path) {
    for (int i = 0; i < s->n_models; i++)
        if (!strcmp(s->models[i].name, name)) return 0;   /* the first of a name wins (-m first) */
    srv_model *ms = realloc(s->models, sizeof *ms * (size_t)(s->n_models + 1));
    if (!ms) return -1;
    s->models = ms;
    srv_model *m = &ms[s->n_models];
    memset(m, 0, sizeof *m);
    m->srv = s;
    m->name = strdup(name);
    m->path = strdup(path);
    if (!m->name || !m->path) { free(m->name); free(m->path); return -1; }
    pthread_cond_init(&m->cv_work, NULL);
    s->n_models++;
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Each sub-folder of dir holding a model_index.json (and, with --config-from, each
 * .safetensors file), sorted by name. */
static int scan_models(srv *s, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "qdiff: --models %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!is_model_folder(path) && !is_single_file(s, path)) continue;
        char **nn = realloc(names, sizeof *nn * (n + 1));
        if (!nn || !(nn[n] = strdup(e->d_name))) { free(nn ? nn : names); names = NULL; rc = -1; break; }
        names = nn;
        n++;
    }
    closedir(d);
    if (rc == 0) {
        qsort(names, n, sizeof *names, cmp_names);
        for (size_t i = 0; i < n && rc == 0; i++) {
            char path[4300];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            rc = add_model(s, names[i], path);
        }
    }
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    if (rc) fprintf(stderr, "qdiff: out of memory\n");
    return rc;
}

int srv_init(srv *s, const srv_options *opt) {
    memset(s, 0, sizeof *s);
    s->opt = *opt;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_done, NULL);
    if (!is_model_folder(opt->model_dir) && !is_single_file(s, opt->model_dir)) {
        fprintf(stderr, "qdiff: -m %s: not a diffusers folder (no model_index.json)%s\n", opt->model_dir,
                opt->config_from ? " nor a .safetensors file" : " (a single-file checkpoint needs --config-from DIR)");
        return -1;
    }
    if (add_model(s, cli_model_name(opt->model_dir), opt->model_dir)) {
        fprintf(stderr, "qdiff: out of memory\n");
        return -1;
    }
    if (opt->models_dir && scan_models(s, opt->models_dir)) return -1;
    return 0;
}

srv_model *srv_find_model(srv *s, const char *name) {
    for (int i = 0; i < s->n_models; i++) {
        const char *n = s->models[i].name;
        size_t len = strlen(n);
        /* A1111 titles are "name [hash]"; ours have no hash but clients send titles back */
        if (!strcmp(n, name) || (!strncmp(n, name, len) && name[len] == ' ' && name[len + 1] == '['))
            return &s->models[i];
    }
    return NULL;
}

/* Latent channels of a family, to pair it with the --preview-vae (0: unknown). */
static int family_latent_channels(const char *family) {
    if (!strcmp(family, "sd15") || !strcmp(family, "sdxl")) return 4;
    if (!strcmp(family, "sd3") || !strcmp(family, "flux")) return 16;
    return 0;
}

static void load_model(srv *s, srv_model *m) {
    double t0 = now_seconds();
    qd_ctx *ctx = qd_ctx_new(s->opt.threads);
    if (ctx) qd_set_precision(ctx, s->opt.precision);
    qd_model *model = NULL;
    qd_vae_model *vae = NULL;
    char err[1024] = "";
    if (!ctx) {
        snprintf(err, sizeof err, "%s: out of memory", m->path);
    } else if ((is_single_file(s, m->path) ? qd_model_open_single_file(ctx, m->path, s->opt.config_from, &model)
                                           : qd_model_open(ctx, m->path, &model)) != QD_OK) {
        snprintf(err, sizeof err, "%s", qd_last_error(ctx));
    } else if (s->opt.preview_vae) {
        /* the --preview-vae serves the models of its latent space; the others go without */
        if (qd_vae_open(ctx, s->opt.preview_vae, &vae) != QD_OK) {
            snprintf(err, sizeof err, "--preview-vae: %s", qd_last_error(ctx));
        } else if (!qd_vae_describe(vae)->can_decode ||
                   qd_vae_describe(vae)->latent_channels != family_latent_channels(qd_model_family(model))) {
            if (!s->opt.quiet)
                fprintf(stderr, "qdiff serve: %s: no live previews (--preview-vae %s does not decode %s latents)\n",
                        m->name, s->opt.preview_vae, qd_model_family(model));
            qd_vae_close(vae);
            vae = NULL;
        }
    }
    pthread_mutex_lock(&s->mu);
    if (err[0]) {
        qd_vae_close(vae);
        qd_model_free(model);
        qd_ctx_free(ctx);
        snprintf(m->error, sizeof m->error, "%s", err);
        m->state = MODEL_FAILED;
        if (m == &s->models[0]) {   /* the -m model: the server has nothing to serve */
            s->load_failed_signal = 1;
            kill(getpid(), SIGUSR1);
        }
    } else {
        m->ctx = ctx;
        m->model = model;
        m->preview_vae = vae;
        m->family = qd_model_family(model);
        m->default_size = qd_model_default_size(model);
        m->size_unit = qd_model_size_unit(model);
        snprintf(m->scheduler, sizeof m->scheduler, "%s", qd_model_scheduler(model));
        m->state = MODEL_READY;
    }
    pthread_cond_broadcast(&s->cv_done);
    pthread_mutex_unlock(&s->mu);
    if (err[0]) fprintf(stderr, "qdiff serve: model %s failed to load: %s\n", m->name, err);
    else if (!s->opt.quiet)
        fprintf(stderr, "qdiff serve: model %s ready (%s, %s, %.1f s)\n", m->name, m->family,
                qd_ctx_precision(ctx) == QD_PRECISION_BF16 ? "bf16" : "fp32", now_seconds() - t0);
}

/* ---- running one job (worker thread) ---- */

typedef struct { srv *s; srv_job *j; } job_cb;

static int on_progress(void *user, int step, int total, double elapsed) {
    job_cb *cb = user;
    pthread_mutex_lock(&cb->s->mu);
    cb->j->step = step;
    cb->j->total = total;
    int stop = cb->j->cancel || cb->s->stopping;
    pthread_mutex_unlock(&cb->s->mu);
    return stop;
}

static void on_preview(void *user, int step, int total, const uint8_t *rgb, int width, int height) {
    job_cb *cb = user;
    uint8_t *png = NULL;
    size_t len = 0;
    if (qd_encode_png(cb->j->model->ctx, rgb, width, height, NULL, NULL, 0, &png, &len) != QD_OK) return;
    char *b64 = srv_base64(png, len);
    qd_free(png);
    if (!b64) return;
    pthread_mutex_lock(&cb->s->mu);
    char *old = cb->j->preview_b64;
    cb->j->preview_b64 = b64;
    pthread_mutex_unlock(&cb->s->mu);
    free(old);
}

static void run_job(srv *s, srv_model *m, srv_job *j) {
    job_cb cb = {s, j};
    qd_gen_params p = j->p;
    qd_gen_params_resolve(m->model, &p);
    p.progress = on_progress;
    p.progress_user = &cb;
    if (m->preview_vae) {
        p.preview_vae = m->preview_vae;
        p.preview = on_preview;
        p.preview_user = &cb;
        p.preview_every = s->opt.preview_every;
    }
    int batch = p.batch, n = batch * j->n_iter;
    uint8_t *rgb = malloc(qd_image_size(m->model, &p, QD_IMAGE_RGB8));
    char **images = calloc((size_t)n, sizeof *images), **texts = calloc((size_t)n, sizeof *texts);
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    qd_status st = QD_OK;
    char err[1024] = "";
    if (!rgb || !images || !texts || !seeds) {
        st = QD_ERR_NOMEM;
        snprintf(err, sizeof err, "out of memory for %d images of %dx%d", n, p.width, p.height);
    }
    uint64_t seed0 = p.seed;
    for (int it = 0; it < j->n_iter && st == QD_OK; it++) {
        p.seed = seed0 + (uint64_t)it;
        pthread_mutex_lock(&s->mu);
        j->iter = it;
        j->step = 0;
        pthread_mutex_unlock(&s->mu);
        st = qd_generate(m->ctx, m->model, &p, QD_IMAGE_RGB8, rgb, NULL);
        if (st != QD_OK) {
            snprintf(err, sizeof err, "%s", qd_last_error(m->ctx));
            break;
        }
        const uint8_t *out = rgb;
        int ow = p.width, oh = p.height;
        uint8_t *pasted = NULL;
        if (j->crop.orig) {   /* inpaint_full_res: the results go back into the init picture */
            if (cli_crop_paste(m->ctx, &j->crop, rgb, batch, p.width, p.height, &pasted, err, sizeof err)) {
                st = QD_ERR_NOMEM;
                break;
            }
            out = pasted;
            ow = j->crop.iw;
            oh = j->crop.ih;
        } else if (j->mask_overlay) {
            cli_mask_overlay(rgb, batch, p.width, p.height, &p);
        }
        for (int k = 0; k < batch && st == QD_OK; k++) {
            int idx = it * batch + k;
            char text[8192];
            cli_params_text(text, sizeof text, m->model, m->name, &p, k, j->mask_blur, j->crop.orig ? j->crop.pad : -1);
            const char *keys[] = {"parameters"}, *vals[] = {text};
            uint8_t *png = NULL;
            size_t len = 0;
            st = qd_encode_png(m->ctx, out + (size_t)k * (size_t)ow * oh * 3, ow, oh, keys, vals, 1, &png, &len);
            if (st != QD_OK) { snprintf(err, sizeof err, "%s", qd_last_error(m->ctx)); break; }
            images[idx] = srv_base64(png, len);
            qd_free(png);
            texts[idx] = strdup(text);
            seeds[idx] = p.seed;
            if (!images[idx] || !texts[idx]) { st = QD_ERR_NOMEM; snprintf(err, sizeof err, "out of memory"); }
        }
        free(pasted);
    }
    free(rgb);
    p.seed = seed0;
    pthread_mutex_lock(&s->mu);
    j->p.width = p.width;   /* resolved values, for the replies */
    j->p.height = p.height;
    j->p.steps = p.steps;
    j->p.cfg_scale = p.cfg_scale;
    j->status = st;
    snprintf(j->error, sizeof j->error, "%s", err);
    if (st == QD_OK) {
        j->images_b64 = images;
        j->infotexts = texts;
        j->seeds = seeds;
        j->n_images = n;
        images = texts = NULL;
        seeds = NULL;
    }
    j->state = st == QD_OK ? JOB_DONE : st == QD_ERR_CANCELLED ? JOB_CANCELLED : JOB_FAILED;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; images && i < n; i++) free(images[i]);
    for (int i = 0; texts && i < n; i++) free(texts[i]);
    free(images);
    free(texts);
    free(seeds);
}

static void *worker_main(void *arg) {
    srv_model *m = arg;
    srv *s = m->srv;
    load_model(s, m);
    pthread_mutex_lock(&s->mu);
    while (m->state == MODEL_READY) {
        while (!m->queue_head && !s->stopping) pthread_cond_wait(&m->cv_work, &s->mu);
        if (s->stopping) break;   /* queued jobs were cancelled by srv_stop_jobs */
        srv_job *j = m->queue_head;
        m->queue_head = j->next;
        if (!m->queue_head) m->queue_tail = NULL;
        j->next = NULL;
        j->state = JOB_RUNNING;
        j->t_start = now_seconds();
        m->running = j;
        pthread_mutex_unlock(&s->mu);
        if (!s->opt.quiet)
            fprintf(stderr, "qdiff serve: job %s started: %s, %d image(s), %d steps\n", j->task, m->name,
                    j->p.batch * j->n_iter, j->p.steps);
        run_job(s, m, j);
        pthread_mutex_lock(&s->mu);
        m->running = NULL;
        j->t_end = now_seconds();
        if (!s->opt.quiet)
            fprintf(stderr, "qdiff serve: job %s %s in %.2f s%s%s\n", j->task,
                    j->state == JOB_DONE ? "done" : j->state == JOB_CANCELLED ? "cancelled" : "failed",
                    j->t_end - j->t_start, j->error[0] ? ": " : "", j->error);
        pthread_cond_broadcast(&s->cv_done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

void srv_model_request_load(srv *s, srv_model *m) {
    if (m->state != MODEL_UNLOADED || s->stopping) return;
    m->state = MODEL_LOADING;
    int e = pthread_create(&m->worker, NULL, worker_main, m);
    if (e) {
        m->state = MODEL_FAILED;
        snprintf(m->error, sizeof m->error, "cannot start its worker thread: %s", strerror(e));
        if (m == &s->models[0]) { s->load_failed_signal = 1; kill(getpid(), SIGUSR1); }
        return;
    }
    m->worker_started = 1;
}

/* ---- jobs ---- */

srv_job *srv_job_new(void) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    qd_gen_params_default(&j->p);
    j->n_iter = 1;
    j->refs = 1;
    return j;
}

static void job_free(srv_job *j) {
    for (int i = 0; i < j->n_images; i++) {
        if (j->images_b64) free(j->images_b64[i]);
        if (j->infotexts) free(j->infotexts[i]);
    }
    free(j->images_b64);
    free(j->infotexts);
    free(j->seeds);
    free(j->preview_b64);
    free(j->prompt);
    free(j->init_image);
    free(j->mask);
    cli_crop_free(&j->crop);
    free(j->negative);
    for (int i = 0; i < j->n_loras; i++) free(j->lora_paths[i]);
    free(j->sampler);
    free(j->schedule);
    free(j->scheduler);
    free(j->sampler_label);
    free(j->schedule_label);
    free(j);
}

static void job_unref_locked(srv_job *j) {
    if (--j->refs == 0) job_free(j);
}

/* Drop finished jobs from srv.jobs beyond the newest KEEP_FINISHED. */
static void prune_jobs_locked(srv *s) {
    int kept = 0;
    for (srv_job **pp = &s->jobs; *pp;) {
        srv_job *j = *pp;
        if (j->state >= JOB_DONE && ++kept > KEEP_FINISHED) {
            *pp = j->list_next;
            job_unref_locked(j);
        } else {
            pp = &j->list_next;
        }
    }
}

void srv_job_submit(srv *s, srv_job *j) {
    pthread_mutex_lock(&s->mu);
    j->id = ++s->next_job_id;
    if (!j->task[0]) snprintf(j->task, sizeof j->task, "job-%d", j->id);
    j->state = JOB_QUEUED;
    j->t_queued = now_seconds();
    j->created = (long long)time(NULL);
    j->refs++;   /* the list's reference */
    j->list_next = s->jobs;
    s->jobs = j;
    prune_jobs_locked(s);
    if (s->stopping) {
        j->state = JOB_CANCELLED;
        j->status = QD_ERR_CANCELLED;
    } else {
        srv_model *m = j->model;
        if (m->queue_tail) m->queue_tail->next = j;
        else m->queue_head = j;
        m->queue_tail = j;
        pthread_cond_signal(&m->cv_work);
    }
    pthread_mutex_unlock(&s->mu);
}

void srv_job_wait(srv *s, srv_job *j) {
    pthread_mutex_lock(&s->mu);
    while (j->state < JOB_DONE) pthread_cond_wait(&s->cv_done, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

void srv_job_release(srv *s, srv_job *j) {
    pthread_mutex_lock(&s->mu);
    /* the images are the caller's to send; progress look-ups need only the state */
    for (int i = 0; i < j->n_images; i++) {
        if (j->images_b64) { free(j->images_b64[i]); j->images_b64[i] = NULL; }
    }
    free(j->preview_b64);
    j->preview_b64 = NULL;
    job_unref_locked(j);
    pthread_mutex_unlock(&s->mu);
}

static void cancel_queued_locked(srv *s, srv_model *m, srv_job *j) {
    for (srv_job **pp = &m->queue_head; *pp; pp = &(*pp)->next) {
        if (*pp != j) continue;
        *pp = j->next;
        if (m->queue_tail == j) {
            m->queue_tail = NULL;
            for (srv_job *q = m->queue_head; q; q = q->next) m->queue_tail = q;
        }
        j->next = NULL;
        j->state = JOB_CANCELLED;
        j->status = QD_ERR_CANCELLED;
        snprintf(j->error, sizeof j->error, "cancelled before it started");
        j->t_end = now_seconds();
        pthread_cond_broadcast(&s->cv_done);
        return;
    }
}

int srv_cancel(srv *s, const char *task) {
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_models; i++) {
        srv_model *m = &s->models[i];
        if (m->running && (!task || !strcmp(m->running->task, task))) {
            m->running->cancel = 1;
            qd_cancel(m->ctx);   /* also stops a run between its progress reports */
            n++;
        }
        if (!task) continue;
        for (srv_job *j = m->queue_head; j; j = j->next) {
            if (!strcmp(j->task, task)) {
                cancel_queued_locked(s, m, j);
                n++;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

void srv_stop_jobs(srv *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    for (int i = 0; i < s->n_models; i++) {
        srv_model *m = &s->models[i];
        while (m->queue_head) cancel_queued_locked(s, m, m->queue_head);
        if (m->running) {
            m->running->cancel = 1;
            qd_cancel(m->ctx);
        }
        pthread_cond_broadcast(&m->cv_work);
    }
    pthread_cond_broadcast(&s->cv_done);
    pthread_mutex_unlock(&s->mu);
}

void srv_free(srv *s) {
    for (int i = 0; i < s->n_models; i++)
        if (s->models[i].worker_started) pthread_join(s->models[i].worker, NULL);
    while (s->jobs) {
        srv_job *j = s->jobs;
        s->jobs = j->list_next;
        job_unref_locked(j);
    }
    for (int i = 0; i < s->n_models; i++) {
        srv_model *m = &s->models[i];
        qd_vae_close(m->preview_vae);
        qd_model_free(m->model);
        qd_ctx_free(m->ctx);
        pthread_cond_destroy(&m->cv_work);
        free(m->name);
        free(m->path);
    }
    free(s->models);
    pthread_cond_destroy(&s->cv_done);
    pthread_mutex_destroy(&s->mu);
}
