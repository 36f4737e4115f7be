/* Persistent worker threads woken per parallel_for: creating threads per call
 * would cost more than the small ops it runs. */
#include "base/threads.h"

#include <pthread.h>
#include <stdlib.h>

struct qd_pool {
    int n;                      /* workers, excluding the calling thread */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;        /* bumped per job */
    int pending;                /* workers still running the current job */
    int quit;
    qd_range_fn fn;
    void *arg;
    int64_t total;
    int parts;
};

typedef struct { qd_pool *pool; int index; } worker_arg;

static void run_part(qd_pool *p, int part) {
    int64_t b = p->total * part / p->parts, e = p->total * (part + 1) / p->parts;
    if (b < e) p->fn(p->arg, b, e, part);
}

static void *worker_main(void *a) {
    worker_arg *wa = a;
    qd_pool *p = wa->pool;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) { pthread_mutex_unlock(&p->mu); return NULL; }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_part(p, index + 1);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static qd_pool *pool_create(int workers) {
    qd_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = calloc((size_t)workers, sizeof *p->threads);
    if (!p->threads) { free(p); return NULL; }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < workers; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->pool = p; wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) { free(wa); break; }
        p->n++;
    }
    return p;
}

void qd_pool_destroy(qd_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int qd_threads(const qd_ctx *ctx) { return ctx && ctx->n_threads > 1 ? ctx->n_threads : 1; }

void qd_parallel_for(qd_ctx *ctx, int64_t n, qd_range_fn fn, void *arg) {
    int t = qd_threads(ctx);
    if (n <= 0) return;
    if (t > n) t = (int)n;
    if (t <= 1) { fn(arg, 0, n, 0); return; }
    if (!ctx->pool) ctx->pool = pool_create(ctx->n_threads - 1);
    qd_pool *p = ctx->pool;
    if (!p || p->n == 0) { fn(arg, 0, n, 0); return; }
    if (t > p->n + 1) t = p->n + 1;
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->arg = arg; p->total = n; p->parts = p->n + 1;
    p->pending = p->n;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_part(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
