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
 * 4 ms tick, then shared the caller's CPU) would otherwise serialise the call.
 *
 * Bounded spinning: waking a thread whose (virtual) CPU has halted costs ~25-30 us
 * here, more than a whole small pass. So after a job a worker polls for the next one
 * for a short window (QD_THREAD_SPIN_US, qd_set_thread_spin) before it blocks, and
 * the caller polls for the workers' end the same way: jobs issued back to back hand
 * off through memory, with no system call. An idle pool (a server between requests)
 * burns at most one window per thread; a window that runs out halves the next one
 * (down to 1/8; a job found while polling doubles it back). A thread that finds it
 * was descheduled while polling (a gap in its clock readings: another process wants
 * that CPU) blocks at once and stops polling for 2 ms, doubling the pause (to 256 ms)
 * while such cuts come less than a second apart: on a busy machine the pool falls
 * back to blocking, and spinning never takes CPU time other processes need for long. */
#define _GNU_SOURCE
#include "base/threads.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define DEFAULT_SPIN_US 200
#define MAX_SPIN_US 100000
#define GAP_NS 50000LL                 /* a longer gap between two polls: we were descheduled */
#define BACKOFF_MIN_NS 2000000LL       /* first pause of polling after that: 2 ms ... */
#define BACKOFF_MAX_NS 256000000LL     /* ... doubling up to 256 ms while cuts come */
#define REPEAT_NS 1000000000LL         /* less than 1 s apart (after the pause) */
#define MAX_SHRINK 3                   /* windows that run out shrink down to 1/8 */

/* One thread's polling state: only its own thread touches it. */
typedef struct {
    int64_t quiet_until;   /* ns: no polling before this time */
    int64_t backoff;       /* ns: the last pause */
    int64_t last_cut;      /* ns: when polling was last cut short */
    int shrink;            /* the window is spin_ns >> shrink: +1 per window that ran out */
} spin_state;

typedef struct {
    qd_pool *pool;
    int slot;              /* 1 + worker index */
    pthread_t thread;
    spin_state spin;
    char pad[64];          /* keep the workers' states off each other's cache lines */
} worker;

struct qd_pool {
    int n;                      /* workers, excluding the calling thread */
    worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    int away_from;              /* the CPU the workers were last kept off, -1: none */
    spin_state caller_spin;     /* the caller's polling for the workers' end */
    /* shared state, all atomic */
    int64_t spin_ns;            /* polling window, 0 = block at once */
    int64_t default_spin_ns;    /* the window the pool was created with (environment) */
    uint64_t generation;        /* bumped per job */
    uint64_t open;              /* generation of the job that still takes workers; 0: none */
    int active;                 /* workers inside (or checking) a job */
    int sleepers;               /* workers blocked, or about to block, on wake */
    int caller_waiting;         /* the caller blocked, or about to block, on done */
    int quit;
    qd_pool_stats stats;
    /* the current job (written before generation is bumped) */
    qd_range_fn fn;
    void *arg;
    int64_t total;
    int parts;                  /* static mode: parts of [0, total) */
    int64_t grain;              /* dynamic mode: indices per claim (guided: at most); 0 = static mode */
    int64_t align;              /* guided mode: claims shrink towards the end, multiples of align; 0: not guided */
    int64_t next;               /* atomic: next part (static) or next index (dynamic) */
};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)
#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_SEQ_CST)
#define COUNT(p, field) __atomic_add_fetch(&(p)->stats.field, 1, __ATOMIC_RELAXED)

/* Polls until done(p, ref) holds or the window ends. Returns 1 when it holds. Cut
 * short when the thread finds it was descheduled: then polling pauses (spin_state),
 * the longer the more often it happens: a poller that is descheduled is not woken by
 * the next job, so under sustained contention blocking (woken with a wake-up
 * preemption) hands off sooner, and the pause grows until polling is all but off. */
static int spin_until(qd_pool *p, spin_state *s, int (*done)(qd_pool *, uint64_t), uint64_t ref) {
    int64_t window = __atomic_load_n(&p->spin_ns, __ATOMIC_RELAXED) >> s->shrink;
    if (window <= 0) return 0;
    int64_t t0 = now_ns(), last = t0;
    if (t0 < s->quiet_until) {
        COUNT(p, spins_skipped);
        return 0;
    }
    for (;;) {
        int hit = 0;
        for (int k = 0; k < 16 && !(hit = done(p, ref)); k++) cpu_relax();
        int64_t t = now_ns();
        if (t - last > GAP_NS) {
            /* descheduled while polling (also when the job was there on return: a
             * runnable thread that is not running is not woken by the next job) */
            s->backoff = s->backoff && t - s->last_cut < REPEAT_NS
                             ? (2 * s->backoff < BACKOFF_MAX_NS ? 2 * s->backoff : BACKOFF_MAX_NS)
                             : BACKOFF_MIN_NS;
            s->last_cut = t;
            s->quiet_until = t + s->backoff;
            COUNT(p, spins_preempted);
            return hit || done(p, ref);
        }
        if (hit) {
            if (s->shrink > 0) s->shrink--;
            return 1;
        }
        if (t - t0 > window) {
            /* jobs are not coming back to back: poll less next time */
            if (s->shrink < MAX_SHRINK) s->shrink++;
            COUNT(p, spins_timed_out);
            return done(p, ref);
        }
        last = t;
    }
}

static int new_job(qd_pool *p, uint64_t seen) {
    return __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) != seen || __atomic_load_n(&p->quit, __ATOMIC_RELAXED);
}

static int workers_out(qd_pool *p, uint64_t unused) {
    (void)unused;
    return __atomic_load_n(&p->active, __ATOMIC_ACQUIRE) == 0;
}

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
    if (p->align) {   /* guided: about 1/(2*threads) of what is left, at most grain */
        int64_t b = __atomic_load_n(&p->next, __ATOMIC_RELAXED);
        while (b < p->total) {
            int64_t left = p->total - b, n = (left + 2 * p->parts - 1) / (2 * p->parts);
            n = (n + p->align - 1) / p->align * p->align;
            if (n > p->grain) n = p->grain;
            if (!__atomic_compare_exchange_n(&p->next, &b, b + n, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) continue;
            p->fn(p->arg, b, b + n < p->total ? b + n : p->total, slot);
            b = __atomic_load_n(&p->next, __ATOMIC_RELAXED);
        }
        return;
    }
    for (int64_t b; (b = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED)) < p->total;)
        p->fn(p->arg, b, b + p->grain < p->total ? b + p->grain : p->total, slot);
}

/* Waits for a job newer than `seen` (or quit): polls, then blocks. Returns its generation. */
static uint64_t await_job(qd_pool *p, worker *w, uint64_t seen) {
    /* no polling before the first job: a new thread may still share the caller's CPU */
    if (seen && spin_until(p, &w->spin, new_job, seen)) {
        COUNT(p, jobs_polled);
        return LOAD(p->generation);
    }
    pthread_mutex_lock(&p->mu);
    ADD(p->sleepers, 1);   /* then re-check: the caller bumps generation, then reads sleepers */
    while (!new_job(p, seen)) pthread_cond_wait(&p->wake, &p->mu);
    ADD(p->sleepers, -1);
    pthread_mutex_unlock(&p->mu);
    COUNT(p, jobs_woken);
    return LOAD(p->generation);
}

static void *worker_main(void *a) {
    worker *w = a;
    qd_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        seen = await_job(p, w, seen);
        if (LOAD(p->quit)) break;
        /* enter, then check the job is still open: the caller closes it, then reads
         * active, so either it waits for us or we see it closed and touch nothing */
        ADD(p->active, 1);
        if (LOAD(p->open) == seen) run_claims(p, w->slot);
        if (ADD(p->active, -1) == 0 && LOAD(p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* CPUs this thread may run on (1 when unknown). */
static int usable_cpus(void) {
#ifdef __linux__
    cpu_set_t s;
    if (pthread_getaffinity_np(pthread_self(), sizeof s, &s) == 0 && CPU_COUNT(&s) > 0) return CPU_COUNT(&s);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The default polling window: QD_THREAD_SPIN_US when set (a bad value is reported
 * through ctx's log and ignored), else DEFAULT_SPIN_US, or 0 when there are more
 * threads than CPUs (a polling thread would keep another one off its CPU). */
static int env_spin_us(qd_ctx *ctx, int threads) {
    int dflt = threads > usable_cpus() ? 0 : DEFAULT_SPIN_US;
    const char *e = getenv("QD_THREAD_SPIN_US");
    if (!e || !*e) return dflt;
    char *end;
    long v = strtol(e, &end, 10);
    if (*end || v < 0) {
        qd_warn(ctx, "QD_THREAD_SPIN_US=%s is not a number of microseconds (0 turns polling off): using %d", e, dflt);
        return dflt;
    }
    return v > MAX_SPIN_US ? MAX_SPIN_US : (int)v;
}

static qd_pool *pool_create(qd_ctx *ctx, int workers) {
    qd_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->workers = calloc((size_t)workers, sizeof *p->workers);
    if (!p->workers) { free(p); return NULL; }
    p->away_from = -1;
    p->spin_ns = p->default_spin_ns = 1000LL * env_spin_us(ctx, workers + 1);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < workers; i++) {
        worker *w = &p->workers[i];
        w->pool = p;
        w->slot = i + 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) break;
        p->n++;
    }
    return p;
}

void qd_pool_destroy(qd_pool *p) {
    if (!p) return;
    STORE(p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
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
    for (int i = 0; i < p->n; i++) pthread_setaffinity_np(p->workers[i].thread, sizeof s, &s);
#else
    (void)p;
#endif
}

int qd_threads(const qd_ctx *ctx) { return ctx && ctx->n_threads > 1 ? ctx->n_threads : 1; }

static qd_pool *ctx_pool(qd_ctx *ctx) {
    if (qd_threads(ctx) <= 1) return NULL;
    if (!ctx->pool) ctx->pool = pool_create(ctx, ctx->n_threads - 1);
    return ctx->pool && ctx->pool->n > 0 ? ctx->pool : NULL;
}

/* The pool to run a job of n items on, or NULL: run it inline. */
static qd_pool *job_pool(qd_ctx *ctx, int64_t n) { return n <= 1 ? NULL : ctx_pool(ctx); }

static void run_job(qd_pool *p, qd_range_fn fn, void *arg, int64_t n, int64_t grain, int64_t align) {
    keep_off_caller_cpu(p);
    p->fn = fn; p->arg = arg; p->total = n; p->parts = p->n + 1; p->grain = grain; p->align = align;
    __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
    uint64_t gen = p->generation + 1;
    STORE(p->open, gen);
    STORE(p->generation, gen);   /* publishes the fields above; then wake only sleepers */
    if (LOAD(p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    run_claims(p, 0);
    STORE(p->open, 0);           /* all work is claimed: no worker may enter any more */
    if (LOAD(p->active) == 0 || spin_until(p, &p->caller_spin, workers_out, 0)) return;
    pthread_mutex_lock(&p->mu);
    STORE(p->caller_waiting, 1);   /* then re-check: a leaving worker drops active, then reads this */
    while (LOAD(p->active) > 0) pthread_cond_wait(&p->done, &p->mu);
    STORE(p->caller_waiting, 0);
    pthread_mutex_unlock(&p->mu);
}

void qd_parallel_for(qd_ctx *ctx, int64_t n, qd_range_fn fn, void *arg) {
    if (n <= 0) return;
    qd_pool *p = job_pool(ctx, n);
    if (!p) { fn(arg, 0, n, 0); return; }
    run_job(p, fn, arg, n, 0, 0);
}

void qd_parallel_for_dyn(qd_ctx *ctx, int64_t n, int64_t grain, qd_range_fn fn, void *arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    qd_pool *p = job_pool(ctx, n > grain ? 2 : 1);
    if (!p) {
        for (int64_t b = 0; b < n; b += grain) fn(arg, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    run_job(p, fn, arg, n, grain, 0);
}

void qd_parallel_for_guided(qd_ctx *ctx, int64_t n, int64_t grain, int64_t align, qd_range_fn fn, void *arg) {
    if (n <= 0) return;
    if (align < 1) align = 1;
    grain = grain < align ? align : grain / align * align;
    qd_pool *p = job_pool(ctx, n > align ? 2 : 1);
    if (!p) {
        for (int64_t b = 0; b < n; b += grain) fn(arg, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    run_job(p, fn, arg, n, grain, align);
}

void qd_set_thread_spin(qd_ctx *ctx, int microseconds) {
    qd_pool *p = ctx_pool(ctx);
    if (!p) return;
    if (microseconds > MAX_SPIN_US) microseconds = MAX_SPIN_US;
    __atomic_store_n(&p->spin_ns, microseconds < 0 ? p->default_spin_ns : 1000LL * microseconds, __ATOMIC_RELAXED);
}

int qd_pool_get_stats(qd_ctx *ctx, qd_pool_stats *out) {
    qd_pool *p = ctx ? ctx->pool : NULL;
    if (!p) return 0;
    out->jobs_polled = __atomic_load_n(&p->stats.jobs_polled, __ATOMIC_RELAXED);
    out->jobs_woken = __atomic_load_n(&p->stats.jobs_woken, __ATOMIC_RELAXED);
    out->spins_preempted = __atomic_load_n(&p->stats.spins_preempted, __ATOMIC_RELAXED);
    out->spins_skipped = __atomic_load_n(&p->stats.spins_skipped, __ATOMIC_RELAXED);
    out->spins_timed_out = __atomic_load_n(&p->stats.spins_timed_out, __ATOMIC_RELAXED);
    out->workers_blocked = LOAD(p->sleepers);
    out->spin_us = (int)(__atomic_load_n(&p->spin_ns, __ATOMIC_RELAXED) / 1000);
    return 1;
}
