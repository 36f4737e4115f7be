/* Hand-off cost of the thread pool (src/base/threads.c): a parallel step of W us of
 * arithmetic (1 thread) split into 64 items, called over and over with G us of the
 * caller's own serial work between calls (0: back to back, like a UNet step's passes;
 * large: like isolated calls), with 1 and 2 threads and each polling window:
 *
 *   bench_threads [--reps N] [--spin US,US..] [--work US,..] [--gap US,..] [--hogs K] [--grain G]
 *
 * --grain G: claim G of the 64 items at a time (qd_parallel_for_dyn) instead of the
 * static split into one part per thread (qd_parallel_for).
 *
 * Prints per call: 1-thread median, 2-thread median and best (wall), the speedup of
 * the medians, the process CPU time per 2-thread call (what polling costs), and how
 * the worker found its jobs (polled / woken / polling cut short because it had been
 * descheduled / polling paused after such a cut).
 * --hogs K starts K busy processes (a loaded machine: more runnable threads than
 * CPUs) and prints the CPU time they got per second of each configuration (hog CPUs,
 * from /proc/PID/schedstat), so a polling window that takes CPU time from other
 * processes shows up. */
#define _GNU_SOURCE
#include "base/ctx.h"
#include "base/threads.h"
#include "bench_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ITEMS 64
#define MAXL 16

static double units_per_us;   /* work units per microsecond of one thread */
static int grain;             /* 0: qd_parallel_for (static parts), else qd_parallel_for_dyn's grain */

static uint64_t spin_units(uint64_t n, uint64_t x) {
    for (uint64_t i = 0; i < n; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}

typedef struct { uint64_t units; volatile uint64_t sink; } job;

static void part(void *arg, int64_t b, int64_t e, int thread) {
    job *j = arg;
    (void)thread;
    j->sink += spin_units(j->units * (uint64_t)(e - b), (uint64_t)b);
}

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double proc_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void calibrate(void) {
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = thread_cpu();
        volatile uint64_t s = spin_units(20000000, 1);
        (void)s;
        double r_ = 20000000 / ((thread_cpu() - t0) * 1e6);
        if (r_ > best) best = r_;
    }
    units_per_us = best;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int parse_list(const char *s, double *v) {
    int n = 0;
    for (char *end; *s && n < MAXL; s = *end ? end + 1 : end) {
        v[n++] = strtod(s, &end);
        if (end == s || (*end && *end != ',')) die("bad list: %s", s);
    }
    return n;
}

/* CPU seconds the process has run (the first field of /proc/PID/schedstat, ns). */
static double pid_cpu_s(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long ns = 0;
    if (f) {
        if (fscanf(f, "%llu", &ns) != 1) ns = 0;
        fclose(f);
    }
    return 1e-9 * (double)ns;
}

static double hogs_cpu_s(const pid_t *pids, int hogs) {
    double s = 0;
    for (int h = 0; h < hogs; h++) s += pid_cpu_s(pids[h]);
    return s;
}

/* Median and best wall time per call over reps calls; *cpu = process CPU per call. */
static void call(qd_ctx *ctx, job *j) {
    if (grain) qd_parallel_for_dyn(ctx, ITEMS, grain, part, j);
    else qd_parallel_for(ctx, ITEMS, part, j);
}

static void measure(qd_ctx *ctx, double work_us, double gap_us, int reps, double *med, double *best, double *cpu) {
    job j = {(uint64_t)(work_us * units_per_us / ITEMS), 0};
    uint64_t gap_units = (uint64_t)(gap_us * units_per_us);
    double *t = xmalloc(sizeof(double) * reps);
    for (int r = 0; r < 3; r++) call(ctx, &j);   /* warm */
    double c0 = proc_cpu();
    for (int r = 0; r < reps; r++) {
        j.sink += spin_units(gap_units, j.sink);
        double t0 = qd_now();
        call(ctx, &j);
        t[r] = qd_now() - t0;
    }
    *cpu = (proc_cpu() - c0) / reps - gap_us * 1e-6;
    qsort(t, reps, sizeof *t, cmp);
    *med = t[reps / 2];
    *best = t[0];
    free(t);
}

int main(int argc, char **argv) {
    int reps = 400, hogs = 0;
    double spins[MAXL] = {0, 200}, works[MAXL] = {10, 20, 50, 100, 300, 1000}, gaps[MAXL] = {0, 50, 1000};
    int nspin = 2, nwork = 6, ngap = 3;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) die("usage: bench_threads [--reps N] [--spin US,..] [--work US,..] [--gap US,..] [--hogs K] [--grain G]");
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--spin")) nspin = parse_list(argv[i + 1], spins);
        else if (!strcmp(argv[i], "--work")) nwork = parse_list(argv[i + 1], works);
        else if (!strcmp(argv[i], "--gap")) ngap = parse_list(argv[i + 1], gaps);
        else if (!strcmp(argv[i], "--hogs")) hogs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--grain")) grain = atoi(argv[i + 1]);
        else die("unknown option %s", argv[i]);
    }
    if (reps < 1 || hogs < 0 || hogs > 64) die("bad --reps or --hogs");
    calibrate();
    pid_t pids[64];
    for (int h = 0; h < hogs; h++) {
        pids[h] = fork();
        if (pids[h] < 0) die("fork failed");
        if (pids[h] == 0) {
            for (volatile uint64_t x = (uint64_t)h;;) x = spin_units(10000, x);
        }
    }
    qd_ctx *c1 = qd_ctx_new(1), *c2 = qd_ctx_new(2);
    printf("%d calls per row, %d items per call (%s), %d busy processes; load average at start: ", reps, ITEMS,
           grain ? "dynamic grains" : "static parts", hogs);
    FILE *f = fopen("/proc/loadavg", "r");
    char la[128] = "?";
    if (f) { if (!fgets(la, sizeof la, f)) la[0] = 0; fclose(f); }
    printf("%s\n", la);
    printf("%6s %7s %7s %9s %9s %9s %8s %9s %7s %7s %7s %7s %10s\n", "spin", "work", "gap", "1T med", "2T med", "2T best",
           "speedup", "CPU/call", "polled", "woken", "cut", "paused", hogs ? "hog CPUs" : "");
    for (int g = 0; g < ngap; g++)
        for (int w = 0; w < nwork; w++) {
            double m1, b1, cpu1;
            measure(c1, works[w], gaps[g], reps, &m1, &b1, &cpu1);
            for (int s = 0; s < nspin; s++) {
                qd_set_thread_spin(c2, (int)spins[s]);
                qd_pool_stats a = {0}, b = {0};
                qd_pool_get_stats(c2, &a);
                double h0 = hogs_cpu_s(pids, hogs);
                double w0 = qd_now(), m2, b2, cpu2;
                measure(c2, works[w], gaps[g], reps, &m2, &b2, &cpu2);
                double wall = qd_now() - w0;
                double h1 = hogs_cpu_s(pids, hogs);
                qd_pool_get_stats(c2, &b);
                char hog[32] = "";
                if (hogs) snprintf(hog, sizeof hog, "%10.2f", (h1 - h0) / wall);
                printf("%6.0f %7.0f %7.0f %9.1f %9.1f %9.1f %7.2fx %9.1f %7llu %7llu %7llu %7llu %s\n", spins[s], works[w],
                       gaps[g], 1e6 * m1, 1e6 * m2, 1e6 * b2, m1 / m2, 1e6 * cpu2,
                       (unsigned long long)(b.jobs_polled - a.jobs_polled), (unsigned long long)(b.jobs_woken - a.jobs_woken),
                       (unsigned long long)(b.spins_preempted - a.spins_preempted),
                       (unsigned long long)(b.spins_skipped - a.spins_skipped), hog);
                fflush(stdout);
            }
        }
    for (int h = 0; h < hogs; h++) kill(pids[h], SIGKILL);
    for (int h = 0; h < hogs; h++) waitpid(pids[h], NULL, 0);
    qd_ctx_free(c1);
    qd_ctx_free(c2);
    return 0;
}
