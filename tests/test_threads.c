/* The thread pool (src/base/threads.c): qd_parallel_for's static split gives part i
 * the range [n*i/parts, n*(i+1)/parts) with thread index i exactly once, and
 * qd_parallel_for_dyn covers every index exactly once in grain-aligned ranges with a
 * thread index no other running call has (qd_parallel_for_guided likewise, in ranges of
 * multiples of align of at most grain that shrink to one index at the end), for many thread counts (more threads
 * than cores), sizes and grains, over thousands of back-to-back jobs (workers that
 * wake late skip finished jobs). A worker slowed down on purpose must not hold a
 * dynamic job back: the other threads take its share.
 *
 * Polling (qd_set_thread_spin): both hand-off paths (workers polling, workers woken
 * from a block) cover every job exactly once, also with the window changed between
 * jobs; back-to-back jobs are found by polling, none with polling off; an idle pool
 * stops polling after its window (the process uses little CPU while it sleeps); a
 * worker that shares its CPU with busy threads cuts its polling short and pauses it;
 * QD_THREAD_SPIN_US=0 turns polling off and a bad value is reported; without it the
 * window is 200 us, or 0 with more threads than CPUs. */
#define _GNU_SOURCE
#include "testutil.h"
#include "base/ctx.h"
#include "base/threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXN 5000
#define MAXT 16

typedef struct {
    int64_t n, grain;
    int parts;
    int hits[MAXN];          /* atomic: times each index was covered */
    int part_calls[MAXT];    /* atomic: static mode, calls per part index */
    int busy[MAXT];          /* atomic: a call with this thread index is running */
    int bad;                 /* atomic: wrong range/index seen */
    int slow_index;          /* dynamic: calls from this thread index sleep (-1: none) */
    int calls_by[MAXT];      /* atomic: dynamic, calls per thread index */
    int64_t align, last_len; /* guided: claim alignment; length of the range ending at n */
} job;

static void cover(job *j, int64_t b, int64_t e, int thread) {
    if (thread < 0 || thread >= MAXT || b < 0 || e > j->n || b >= e) { __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED); return; }
    if (__atomic_exchange_n(&j->busy[thread], 1, __ATOMIC_ACQ_REL)) __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    for (int64_t i = b; i < e; i++) __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&j->calls_by[thread], 1, __ATOMIC_RELAXED);
    if (thread == j->slow_index) {
        struct timespec d = {0, 2000000};   /* 2 ms */
        nanosleep(&d, NULL);
    }
    __atomic_store_n(&j->busy[thread], 0, __ATOMIC_RELEASE);
}

static void static_fn(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    int parts = j->n < 2 ? 1 : j->parts;   /* inline: fn(arg, 0, n, 0) */
    if (thread < 0 || thread >= parts || b != j->n * thread / parts || e != j->n * (thread + 1) / parts)
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&j->part_calls[thread], 1, __ATOMIC_RELAXED);
    cover(j, b, e, thread);
}

static void dyn_fn(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    if (b % j->grain != 0 || (e - b != j->grain && e != j->n)) __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    cover(j, b, e, thread);
}

/* guided: ranges start and (but for the last) end on multiples of align, at most grain
 * (rounded down to align, at least align) long; the range ending at n is remembered */
static void guided_fn(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    int64_t g = j->grain < j->align ? j->align : j->grain / j->align * j->align;
    if (b % j->align != 0 || (e != j->n && (e - b) % j->align != 0) || e - b > g)
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    if (e == j->n) j->last_len = e - b;
    cover(j, b, e, thread);
}

/* Runs one job; returns 1 when every index was covered once and nothing bad was seen. */
static int run(qd_ctx *ctx, int dyn, int64_t n, int64_t grain, int slow_index, job *j) {
    memset(j, 0, sizeof *j);
    j->n = n;
    j->grain = grain;
    j->parts = qd_threads(ctx);
    j->slow_index = slow_index;
    j->align = dyn == 2 ? 1 + (grain + n) % 5 : 1;   /* guided: align 1..5 */
    if (dyn == 2) qd_parallel_for_guided(ctx, n, grain, j->align, guided_fn, j);
    else if (dyn) qd_parallel_for_dyn(ctx, n, grain, dyn_fn, j);
    else qd_parallel_for(ctx, n, static_fn, j);
    int ok = !j->bad;
    for (int64_t i = 0; i < n; i++) ok = ok && j->hits[i] == 1;
    if (!dyn && n >= 2)
        for (int p = 0; p < j->parts; p++) {
            int nonempty = n * (p + 1) / j->parts > n * p / j->parts;
            ok = ok && j->part_calls[p] == nonempty;
        }
    return ok;
}


static double proc_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void sleep_ms(int ms) {
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&d, NULL);
}

static uint64_t polled(qd_ctx *ctx) {
    qd_pool_stats s = {0};
    qd_pool_get_stats(ctx, &s);
    return s.jobs_polled;
}

static volatile int hog_stop;
static int ncpu = 1;   /* CPUs this process may use */

static void *hog(void *unused) {
    (void)unused;
    for (volatile uint64_t x = 1; !hog_stop;) x = x * 6364136223846793005ULL + 1;
    return NULL;
}

/* The polling window's behaviour (see the file comment). */
static void test_polling(job *j) {
    qd_ctx *c = test_ctx_new(2);
    /* both paths, and the window changed between jobs, keep exact coverage */
    int ok = 1;
    for (int r = 0; r < 3000 && ok; r++) {
        if (r % 500 == 0) qd_set_thread_spin(c, (int[]){0, 200, 1, 0, 5000, -1}[r / 500]);
        ok = run(c, r % 2, 2 + r % 29, 1 + r % 4, -1, j);
        if (r % 97 == 0) sleep_ms(1);   /* let the window run out now and then */
    }
    check(ok, "2 threads: 3000 jobs with polling off, on, and changed between jobs each covered exactly once");

    /* back to back with polling on: the worker finds jobs by polling; off: never */
    qd_set_thread_spin(c, 1000);
    uint64_t p0 = polled(c), on = 0;
    double t0 = qd_now();
    do {   /* on a busy machine polling may pause (descheduled): give it up to 2 s */
        for (int r = 0; r < 2000; r++) run(c, 0, 64, 1, -1, j);
        on = polled(c) - p0;
    } while (on < 20 && qd_now() - t0 < 2);
    qd_set_thread_spin(c, 0);
    sleep_ms(20);   /* a window that started before the change has ended */
    p0 = polled(c);
    for (int r = 0; r < 2000; r++) run(c, 0, 64, 1, -1, j);
    uint64_t off = polled(c) - p0;
    /* (one CPU: the worker can only poll while the caller is descheduled) */
    check((on >= 20 || ncpu < 2) && off == 0, "back-to-back jobs on %d CPUs: the worker found %llu by polling with a "
          "1 ms window (>= 20 within 2 s with 2+ CPUs), %llu of 2000 with polling off (0)", ncpu,
          (unsigned long long)on, (unsigned long long)off);

    /* idle: a 1 ms window, then 300 ms without jobs: at most one window of polling,
     * then the worker blocks (a scheduler tick is 1-10 ms: polling until descheduled
     * would show) */
    qd_ctx_free(c);
    c = test_ctx_new(2);   /* a new pool: no pause from polling cut short above */
    qd_set_thread_spin(c, 1000);
    for (int r = 0; r < 100; r++) run(c, 0, 64, 1, -1, j);
    double c0 = proc_cpu_s();
    sleep_ms(300);
    double idle_ms = 1e3 * (proc_cpu_s() - c0);
    qd_pool_stats st = {0};
    qd_pool_get_stats(c, &st);
    check(idle_ms < 3 && st.workers_blocked == 1, "idle pool with a 1 ms window: %.1f ms of CPU time over 300 ms "
          "asleep (< 3), %d of 1 workers blocked", idle_ms, st.workers_blocked);
    qd_ctx_free(c);

    /* a busy machine: as many spinning threads as CPUs (the worker's CPU is one of
     * them), a 20 ms window and a job every 30 ms: the scheduler deschedules the
     * polling worker, which must notice, stop polling and pause it */
    int nwant = ncpu < 64 ? ncpu : 64;
    pthread_t hogs[64];
    int nh = 0;
    hog_stop = 0;
    for (int i = 0; i < nwant; i++) if (pthread_create(&hogs[nh], NULL, hog, NULL) == 0) nh++;
    c = test_ctx_new(2);
    qd_set_thread_spin(c, 20000);
    qd_pool_stats s0 = {0}, s1 = {0};
    qd_pool_get_stats(c, &s0);
    ok = 1;
    for (int r = 0; r < 60 && ok; r++) {
        ok = run(c, 0, 64, 1, -1, j);
        sleep_ms(30);
        qd_pool_get_stats(c, &s1);
        if (s1.spins_preempted > s0.spins_preempted && s1.spins_skipped > s0.spins_skipped && r >= 10) break;
    }
    hog_stop = 1;
    for (int i = 0; i < nh; i++) pthread_join(hogs[i], NULL);
    qd_pool_get_stats(c, &s1);
    check(ok && nh == nwant && s1.spins_preempted > s0.spins_preempted && s1.spins_skipped > s0.spins_skipped,
          "%d busy threads on %d CPUs: polling cut short %llu times (descheduled), then paused %llu times (both >= 1)",
          nh, ncpu, (unsigned long long)(s1.spins_preempted - s0.spins_preempted),
          (unsigned long long)(s1.spins_skipped - s0.spins_skipped));
    qd_ctx_free(c);
}

static char logged[512];

static void log_fn(void *user, int level, const char *msg) {
    (void)user; (void)level;
    snprintf(logged, sizeof logged, "%s", msg);
}

/* QD_THREAD_SPIN_US sets a new pool's window: 0 turns polling off; a bad value is
 * reported through the context's log and the default is used. */
static void test_env(job *j) {
    static const char *vals[] = {"0", "350", "20x"};
    const int want[] = {0, 350, ncpu > 1 ? 200 : 0};   /* the default: 0 when 2 threads are too many */
    for (int k = 0; k < 3; k++) {
        setenv("QD_THREAD_SPIN_US", vals[k], 1);
        qd_ctx *c = test_ctx_new(2);
        logged[0] = 0;
        qd_set_log(c, log_fn, NULL);
        for (int r = 0; r < 50; r++) run(c, 0, 64, 1, -1, j);
        qd_pool_stats st = {0};
        qd_pool_get_stats(c, &st);
        uint64_t pol = st.jobs_polled;
        int warned = strstr(logged, "QD_THREAD_SPIN_US=") != NULL;
        check(st.spin_us == want[k] && warned == (k == 2) && (want[k] || pol == 0),
              "QD_THREAD_SPIN_US=%s: window %d us (%d)%s, %llu jobs found by polling%s", vals[k], st.spin_us, want[k],
              k == 2 ? ", warned" : "", (unsigned long long)pol, want[k] ? "" : " (0)");
        qd_set_thread_spin(c, 77);
        qd_pool_get_stats(c, &st);
        int set = st.spin_us;
        qd_set_thread_spin(c, -1);
        qd_pool_get_stats(c, &st);
        check(set == 77 && st.spin_us == want[k], "qd_set_thread_spin 77 then -1: window %d, then %d us (%d)", set,
              st.spin_us, want[k]);
        qd_ctx_free(c);
    }
    unsetenv("QD_THREAD_SPIN_US");
    /* no variable: 200 us, or 0 with more threads than CPUs */
    int got[2];
    for (int k = 0; k < 2; k++) {
        qd_ctx *c = test_ctx_new(k ? ncpu + 1 : (ncpu > 1 ? ncpu : 2));
        run(c, 0, 64, 1, -1, j);
        qd_pool_stats st = {0};
        qd_pool_get_stats(c, &st);
        got[k] = st.spin_us;
        qd_ctx_free(c);
    }
    int want0 = ncpu > 1 ? 200 : 0;   /* one CPU: 2 threads are already too many */
    check(got[0] == want0 && got[1] == 0, "default window: %d us with %d threads on %d CPUs (%d), %d us with %d (0)",
          got[0], ncpu > 1 ? ncpu : 2, ncpu, want0, got[1], ncpu + 1);
}

int main(void) {
    cpu_set_t cs;
    if (sched_getaffinity(0, sizeof cs, &cs) == 0 && CPU_COUNT(&cs) > 0) ncpu = CPU_COUNT(&cs);
    static const int threads[] = {1, 2, 3, 7, 16};
    static const int64_t sizes[] = {0, 1, 2, 3, 5, 16, 17, 100, 1000, MAXN};
    static const int64_t grains[] = {1, 3, 64, 10000};
    job *j = malloc(sizeof *j);
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        qd_ctx *ctx = test_ctx_new(threads[t]);
        if (t % 2) qd_set_thread_spin(ctx, 200);   /* polling also with more threads than CPUs */
        int ok_static = 1, ok_dyn = 1, ok_guided = 1;
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            ok_static = ok_static && run(ctx, 0, sizes[s], 1, -1, j);
            for (size_t g = 0; g < sizeof grains / sizeof *grains; g++) {
                ok_dyn = ok_dyn && run(ctx, 1, sizes[s], grains[g], -1, j);
                ok_guided = ok_guided && run(ctx, 2, sizes[s], grains[g], -1, j);
            }
        }
        check(ok_guided, "%d threads: guided split covers every index once in align-multiple ranges of at most grain, "
              "n = 0..%d, grain 1..10000, align 1..5", threads[t], MAXN);
        check(ok_static, "%d threads: static split, part i = [n*i/parts, n*(i+1)/parts) with index i once, n = 0..%d",
              threads[t], MAXN);
        check(ok_dyn, "%d threads: dynamic split covers every index once in grain-aligned ranges, distinct running "
              "thread indices, n = 0..%d, grain 1..10000", threads[t], MAXN);
        /* back-to-back small jobs: workers often wake after the job's work is all claimed */
        int ok_many = 1;
        for (int r = 0; r < 3000 && ok_many; r++) ok_many = run(ctx, r % 3, 2 + r % 29, 1 + r % 4, -1, j);
        check(ok_many, "%d threads: 3000 back-to-back small jobs (static, dynamic, guided) each covered exactly once",
              threads[t]);
        qd_ctx_free(ctx);
    }
    /* one slow thread (every call of thread index 1 sleeps 2 ms; 200 grains of no work):
     * under dynamic claiming the others take the rest, so index 1 runs few calls */
    qd_ctx *c2 = test_ctx_new(2);
    int ok = run(c2, 1, 200, 1, 1, j);
    check(ok && j->calls_by[1] <= 50 && j->calls_by[0] >= 150,
          "2 threads, a worker slowed to 2 ms per call: the caller ran %d of 200 grains, the worker %d (<= 50; a static split: 100)",
          j->calls_by[0], j->calls_by[1]);
    /* guided claims shrink to one index at the end (GroupNorm's 64 rows at grain 4): the
     * range ending at n is 1 long, where the plain dynamic split's is a whole grain */
    ok = 1;
    memset(j, 0, sizeof *j);
    j->n = 64; j->grain = 4; j->align = 1; j->slow_index = -1;
    qd_parallel_for_guided(c2, 64, 4, 1, guided_fn, j);
    for (int64_t i = 0; i < 64; i++) ok = ok && j->hits[i] == 1;
    check(ok && !j->bad && j->last_len == 1, "2 threads, 64 indices, grain 4: guided, the last range is %lld long (1)",
          (long long)j->last_len);
    qd_ctx_free(c2);
    test_polling(j);
    test_env(j);
    free(j);
    return test_summary();
}
