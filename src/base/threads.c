/* Persistent worker threads woken per parallel_for: creating threads per call
 * would cost more than the small ops it runs.
 *
 * Work is claimed, not assigned: the caller and the workers take parts (static
 * mode) or grains of indices (dynamic mode) from an atomic counter, so a worker that
 * wakes late or shares its CPU with another process cannot hold the call back: the
 * caller takes what is left, and it never waits for a worker that has not started
 * (a job is closed once its work is all claimed; a late worker skips it).
 *
 * Workers are kept off the caller's CPU (Linux): a scheduler that packs a woken
 * thread onto the waker's CPU (seen in KVM guests: the worker waited for the next
 * 4 ms tick, then shared the caller's CPU) would otherwise serialise the call. */
#define _GNU_SOURCE
#include "base/threads.h"

#include <pthread.h>
#include <stdlib.h>
#ifdef __linux__
#include <sched.h>
#endif

struct qd_pool {
    int n;                      /* workers, excluding the calling thread */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;        /* bumped per job */
    int open;                   /* the current job still takes workers */
    int active;                 /* workers inside the current job */
    int quit;
    int away_from;              /* the CPU the workers were last kept off, -1: none */
    /* the current job */
    qd_range_fn fn;
    void *arg;
    int64_t total;
    int parts;                  /* static mode: parts of [0, total) */
    int64_t grain;              /* dynamic mode: indices per claim; 0 = static mode */
    int64_t next;               /* atomic: next part (static) or next index (dynamic) */
};

typedef struct { qd_pool *pool; int index; } worker_arg;

/* Claims and runs work of the current job until none is left. slot: the running
 * thread (0 = caller, i + 1 = worker i). */
static void run_claims(qd_pool *p, int slot) {
    if (p->grain == 0) {
        for (int64_t i; (i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED)) < p->parts;) {
            int64_t b = p->total * i / p->parts, e = p->total * (i + 1) / p->parts;
            if (b < e) p->fn(p->arg, b, e, (int)i);
        }
        return;
    }
    for (int64_t b; (b = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED)) < p->total;)
        p->fn(p->arg, b, b + p->grain < p->total ? b + p->grain : p->total, slot);
}

static void *worker_main(void *a) {
    worker_arg *wa = a;
    qd_pool *p = wa->pool;
    int slot = wa->index + 1;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        if (!p->open) continue;    /* woke after the job's work was all claimed */
        p->active++;
        pthread_mutex_unlock(&p->mu);
        run_claims(p, slot);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0 && !p->open) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static qd_pool *pool_create(int workers) {
    qd_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = calloc((size_t)workers, sizeof *p->threads);
    if (!p->threads) { free(p); return NULL; }
    p->away_from = -1;
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

/* Lets the workers run on every CPU the caller may use except the one it runs on now
 * (only re-set when the caller has moved). Nothing when the caller has one CPU. */
static void keep_off_caller_cpu(qd_pool *p) {
#ifdef __linux__
    int c = sched_getcpu();
    if (c < 0 || c == p->away_from || c >= CPU_SETSIZE) return;
    p->away_from = c;
    cpu_set_t s;
    if (pthread_getaffinity_np(pthread_self(), sizeof s, &s) != 0) return;
    CPU_CLR(c, &s);
    if (CPU_COUNT(&s) == 0) return;
    for (int i = 0; i < p->n; i++) pthread_setaffinity_np(p->threads[i], sizeof s, &s);
#else
    (void)p;
#endif
}

int qd_threads(const qd_ctx *ctx) { return ctx && ctx->n_threads > 1 ? ctx->n_threads : 1; }

/* The pool to run a job of n items on, or NULL: run it inline. */
static qd_pool *job_pool(qd_ctx *ctx, int64_t n) {
    if (n <= 1 || qd_threads(ctx) <= 1) return NULL;
    if (!ctx->pool) ctx->pool = pool_create(ctx->n_threads - 1);
    return ctx->pool && ctx->pool->n > 0 ? ctx->pool : NULL;
}

static void run_job(qd_pool *p, qd_range_fn fn, void *arg, int64_t n, int64_t grain) {
    keep_off_caller_cpu(p);
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->arg = arg; p->total = n; p->parts = p->n + 1; p->grain = grain;
    p->next = 0;
    p->open = 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_claims(p, 0);
    pthread_mutex_lock(&p->mu);
    p->open = 0;
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void qd_parallel_for(qd_ctx *ctx, int64_t n, qd_range_fn fn, void *arg) {
    if (n <= 0) return;
    qd_pool *p = job_pool(ctx, n);
    if (!p) { fn(arg, 0, n, 0); return; }
    run_job(p, fn, arg, n, 0);
}

void qd_parallel_for_dyn(qd_ctx *ctx, int64_t n, int64_t grain, qd_range_fn fn, void *arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    qd_pool *p = job_pool(ctx, n > grain ? 2 : 1);
    if (!p) {
        for (int64_t b = 0; b < n; b += grain) fn(arg, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    run_job(p, fn, arg, n, grain);
}
